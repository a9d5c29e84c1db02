//! `kiln cache stats` and `kiln cache prune`: housekeeping of the shared S3
//! compile cache, with the same cache flags as the members (`CacheArgs`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::{Args, Subcommand};
use kiln_compiler_worker::cache_store;

use crate::config::cache::CacheArgs;
use crate::config::units::{parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct CacheCommandArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Objects, bytes, oldest and newest under the key prefix.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Deletes cached objects by age and total size (a dry run unless --yes).
    Prune {
        #[command(flatten)]
        cache: CacheArgs,
        /// Delete objects older than this (e.g. 30d, 12h).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Then delete the oldest objects until the rest fits (bytes; K, M, G suffixes).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// Really delete; without it the command only lists what it would delete.
        #[arg(long)]
        yes: bool,
    },
}

fn age(time: SystemTime) -> String {
    let seconds = SystemTime::now().duration_since(time).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// `kiln cache stats|prune`.
pub async fn run(args: CacheCommandArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CacheCommand::Stats { cache } => {
            let s3 = cache.require_s3("kiln cache stats")?;
            let objects = cache_store::list_objects(&s3).await?;
            let bytes: u64 = objects.iter().map(|o| o.size).sum();
            println!("store    {}", s3.describe());
            println!("objects  {}", objects.len());
            println!("bytes    {bytes}");
            if let (Some(oldest), Some(newest)) =
                (objects.iter().map(|o| o.modified).min(), objects.iter().map(|o| o.modified).max())
            {
                println!("oldest   {} ago", age(oldest));
                println!("newest   {} ago", age(newest));
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { cache, older_than, max_size, yes } => {
            if older_than.is_none() && max_size.is_none() {
                bail!("kiln cache prune needs a limit: --older-than, --max-size or both");
            }
            let s3 = cache.require_s3("kiln cache prune")?;
            let objects = cache_store::list_objects(&s3).await?;
            let selected = cache_store::select_for_pruning(&objects, SystemTime::now(), older_than, max_size);
            let bytes: u64 = selected.iter().map(|o| o.size).sum();
            for object in &selected {
                println!(
                    "{} {} ({} bytes, {} old)",
                    if yes { "delete" } else { "would delete" },
                    object.key,
                    object.size,
                    age(object.modified)
                );
            }
            if yes {
                let deleted = cache_store::delete_objects(&s3, &selected).await?;
                println!("deleted {deleted} of {} objects ({bytes} bytes)", objects.len());
            } else {
                println!(
                    "dry run: {} of {} objects ({bytes} bytes) would be deleted; pass --yes to delete",
                    selected.len(),
                    objects.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
