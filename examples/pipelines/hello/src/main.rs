//! The smallest pipeline: greets the farm through a shared operator crate.
fn main() {
    let greeting = textops::title_case("hello from the kiln farm");
    let words = textops::words(&greeting).count();
    println!("{greeting} ({words} words)");
}
