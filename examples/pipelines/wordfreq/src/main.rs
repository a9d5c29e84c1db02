//! Counts the words of a built-in text and prints the most frequent ones, using the
//! same operator crate as `hello`.
const TEXT: &str = "the farm builds the pipelines; the workers share the cache, \
and what one worker compiled is a cache hit for every other worker";

fn main() {
    let mut counts: Vec<(String, usize)> = textops::count_words(TEXT).into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (word, count) in counts.iter().take(3) {
        println!("{word} {count}");
    }
}
