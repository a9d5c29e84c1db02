//! `kiln status`: one pipeline, or all of them, as a table (shared with `kiln
//! submit --wait` and `kiln up`) or as JSON.

use std::process::ExitCode;

use clap::Args;
use kiln_core::api::{PipelineRecord, Status};

use crate::client::Client;
use crate::config::leader::LeaderArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A pipeline id or name; all pipelines when left out.
    pub pipeline: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// `[######----] 3/5 crates`: a build's progress as text, the same on a terminal
/// and in a log.
pub fn progress_bar(progress: kiln_core::api::Progress) -> String {
    const WIDTH: usize = 10;
    let filled = (progress.percent() as usize * WIDTH).div_ceil(100).min(WIDTH);
    format!("[{}{}] {progress}", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

pub fn print_table(records: &[PipelineRecord]) {
    println!(
        "{:>4}  {:<20} {:>3}  {:<13} {:>7}  {:<13} {:<12} ERROR",
        "ID", "NAME", "VER", "STATUS", "WORKER", "CACHE H/M", "BINARY"
    );
    for r in records {
        let cache = match &r.cache {
            Some(c) if c.enabled => format!("{}/{}", c.hits, c.misses),
            Some(_) => "off".to_owned(),
            None => "-".to_owned(),
        };
        let binary = r.binary_sha256.as_deref().map(|s| &s[..12]).unwrap_or("-");
        let mut error = r.error.as_deref().unwrap_or("").lines().next().unwrap_or("").to_owned();
        if let Some(progress) = r.progress.filter(|_| r.status == Status::Compiling) {
            error = progress_bar(progress);
        }
        // Built by another member for a missing one: "1 for 2", and the words
        // where there is nothing else to say.
        let worker = match r.built_by {
            Some(by) => format!("{by} for {}", r.worker),
            None => r.worker.to_string(),
        };
        if r.built_by.is_some() && error.is_empty() {
            error = format!("built by {}", r.builder());
        }
        println!(
            "{:>4}  {:<20} {:>3}  {:<13} {:>7}  {:<13} {:<12} {error}",
            r.id,
            r.name,
            r.version,
            r.status.as_str(),
            worker,
            cache,
            binary
        );
    }
}

/// `kiln status`: one pipeline, or all of them, as a table or JSON.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let records = match &args.pipeline {
        Some(key) => vec![client.get(key).await?],
        None => client.list().await?,
    };
    if args.json {
        let json = match &args.pipeline {
            Some(_) => serde_json::to_string_pretty(&records[0])?,
            None => serde_json::to_string_pretty(&records)?,
        };
        println!("{json}");
    } else {
        print_table(&records);
    }
    Ok(ExitCode::SUCCESS)
}
