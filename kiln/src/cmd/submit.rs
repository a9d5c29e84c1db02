//! `kiln submit`: sends program directories to the farm and, with `--wait`, follows
//! each build with a progress line until it ends. `kiln up --submit` uses the same
//! steps (`submit_dirs`, `wait_for`, `report_failures`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiln_core::api::{PipelineRecord, Status};

use crate::client::{Client, default_name, read_program};
use crate::cmd::status::{print_table, progress_bar};
use crate::config::leader::LeaderArgs;
use crate::config::units::parse_duration;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Program directories, each holding one binary crate.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The pipeline's name (one directory only). Defaults to the directory's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The build profile (`dev` or `release`); the farm's (its `--profile`) when
    /// left out. The leader refuses one it does not know, naming those it does.
    #[arg(long, env = "KILN_SUBMIT_PROFILE")]
    pub profile: Option<String>,
    /// Show progress until every build ends; exit non-zero if any fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, env = "KILN_WAIT_TIMEOUT", default_value = "60m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// Submits every directory; returns the submitted pipelines.
pub async fn submit_dirs(
    client: &Client,
    dirs: &[PathBuf],
    name: Option<&str>,
    profile: Option<&str>,
) -> anyhow::Result<Vec<PipelineRecord>> {
    if name.is_some() && dirs.len() > 1 {
        bail!("--name names one pipeline, but {} directories were given", dirs.len());
    }
    let mut submitted = Vec::new();
    for dir in dirs {
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_name(dir)?,
        };
        let files = read_program(dir)?;
        let answer =
            client.submit(&name, files, profile).await.with_context(|| format!("submitting {}", dir.display()))?;
        let p = &answer.pipeline;
        match &p.binary_cache_hit {
            Some(hit) => println!(
                "{:<8} {} (id {}, version {}): success from the binary cache, built before as pipeline {} version {}",
                answer.change, p.name, p.id, p.version, hit.pipeline_id, hit.version
            ),
            None => {
                let profile = p.profile.as_deref().unwrap_or("the farm's profile");
                println!(
                    "{:<8} {} (id {}, version {}, worker {}, {profile})",
                    answer.change, p.name, p.id, p.version, p.worker
                )
            }
        }
        submitted.push(answer.pipeline);
    }
    Ok(submitted)
}

fn progress_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {prefix:<20} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn describe(p: &PipelineRecord) -> String {
    let mut text = format!("{} (worker {})", p.status, p.worker);
    if let Some(progress) = p.progress.filter(|_| p.status == Status::Compiling) {
        text.push_str(&format!(" {}", progress_bar(progress)));
    }
    if let Some(ms) = p.compile_ms.filter(|_| p.status.finished() || p.status == Status::Uploading) {
        text.push_str(&format!(", compiled in {:.1}s", ms as f64 / 1000.0));
    }
    if let Some(cache) = p.cache.as_ref().filter(|c| c.enabled) {
        text.push_str(&format!(", cache {} hits / {} misses", cache.hits, cache.misses));
        if cache.saved_ms > 0 {
            text.push_str(&format!(
                " ({:.1}s of compile saved, {} %)",
                cache.saved_ms as f64 / 1000.0,
                cache.time_from_cache_percent
            ));
        }
    }
    if let Some(hit) = &p.binary_cache_hit {
        text.push_str(&format!(", from the binary cache (pipeline {} version {})", hit.pipeline_id, hit.version));
    }
    text
}

/// Follows the pipelines until each build ends, with a progress line each (plain
/// lines when the output is not a terminal). Returns their final records.
pub async fn wait_for(
    client: &Client,
    pipelines: &[PipelineRecord],
    timeout: Duration,
) -> anyhow::Result<Vec<PipelineRecord>> {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let lines: Vec<indicatif::ProgressBar> = pipelines
        .iter()
        .map(|p| {
            let bar = bars.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(progress_style());
            bar.set_prefix(p.name.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    if !terminal {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Vec<Option<(Status, u64, Option<kiln_core::api::Progress>)>> = vec![None; pipelines.len()];
    let mut records: Vec<Option<PipelineRecord>> = vec![None; pipelines.len()];
    loop {
        for (i, p) in pipelines.iter().enumerate() {
            if records[i].as_ref().is_some_and(|r| r.status.finished()) {
                continue;
            }
            let now = client.get(&p.id.to_string()).await?;
            if now.version != p.version {
                bail!("pipeline {} changed to version {} while waiting for version {}", p.name, now.version, p.version);
            }
            if last[i] != Some((now.status, now.attempt, now.progress)) {
                last[i] = Some((now.status, now.attempt, now.progress));
                lines[i].set_message(describe(&now));
                if !terminal {
                    eprintln!("{:<20} {}", now.name, describe(&now));
                }
                if now.status.finished() {
                    lines[i].finish();
                }
            }
            records[i] = Some(now);
        }
        if records.iter().all(|r| r.as_ref().is_some_and(|r| r.status.finished())) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("gave up waiting after {}s: `kiln status` shows where the builds are", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every entry was filled in by the loop before it could break.
    Ok(records.into_iter().map(|r| r.expect("every pipeline was fetched")).collect())
}

/// Prints what went wrong with each failed build; returns whether all succeeded.
pub async fn report_failures(client: &Client, records: &[PipelineRecord]) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for r in records.iter().filter(|r| r.status != Status::Success) {
        all_ok = false;
        eprintln!(
            "\n{} (id {}, version {}) ended {}: {}",
            r.name,
            r.id,
            r.version,
            r.status,
            r.error.as_deref().unwrap_or("")
        );
        if r.status == Status::CompileError {
            eprintln!("{}", client.log(&r.id.to_string()).await?);
        }
    }
    Ok(all_ok)
}

/// `kiln submit`: submits every directory; with `--wait`, follows the builds to
/// their end and exits non-zero if any failed.
pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let submitted = submit_dirs(&client, &args.dirs, args.name.as_deref(), args.profile.as_deref()).await?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let records = wait_for(&client, &submitted, args.timeout).await?;
    print_table(&records);
    Ok(if report_failures(&client, &records).await? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
