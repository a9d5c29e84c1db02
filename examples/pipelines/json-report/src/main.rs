//! Summarizes a series of measurements and prints the summary as JSON.
fn main() {
    let measurements = [12.5, 7.25, 30.0, 18.75];
    let summary = stats::summarize(&measurements);
    println!("{}", serde_json::to_string(&summary).expect("a summary serializes"));
}
