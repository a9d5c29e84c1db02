//! Counts the words of the input file named in the config and prints `word count`
//! lines sorted by word. Run alone (`wordcount --config-file sample/config.json`) it
//! reads the whole file; under `kiln launch --hosts H` each host counts its share
//! and the hosts exchange counts so that each word is summed on one host. Both give
//! the same output.

use kiln_pipeline_runtime::{Context, Error, Job};

#[derive(serde::Deserialize)]
struct Config {
    /// The text to count, relative to the config file.
    input: String,
}

struct WordCount;

impl Job for WordCount {
    type Config = Config;
    type Value = u64;

    fn map(&self, context: &Context<Config>, emit: &mut dyn FnMut(String, u64)) -> Result<(), Error> {
        context.for_each_line(&context.config().input, |line| {
            for word in line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                emit(word.to_lowercase(), 1);
            }
        })
    }

    fn combine(&self, into: &mut u64, other: u64) {
        *into += other;
    }
}

fn main() -> std::process::ExitCode {
    kiln_pipeline_runtime::run(WordCount)
}
