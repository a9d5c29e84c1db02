//! The client commands: `submit`, `status`, `logs`, `download`, `cancel`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use kiln_core::api::{PipelineRecord, Status};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::LeaderArgs;
use crate::client::{Client, default_name, read_program};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Program directories, each holding one binary crate.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The pipeline's name (one directory only). Defaults to the directory's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Show progress until every build ends; exit non-zero if any fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, env = "KILN_WAIT_TIMEOUT", default_value = "60m", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

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

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A pipeline id or name.
    pub pipeline: String,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// A pipeline id or name.
    pub pipeline: String,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// A pipeline id or name.
    pub pipeline: String,
    /// Where to write the binary.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// Submits every directory; returns the submitted pipelines.
pub async fn submit_dirs(client: &Client, dirs: &[PathBuf], name: Option<&str>) -> anyhow::Result<Vec<PipelineRecord>> {
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
        let answer = client.submit(&name, files).await.with_context(|| format!("submitting {}", dir.display()))?;
        let p = &answer.pipeline;
        match &p.binary_cache_hit {
            Some(hit) => println!(
                "{:<8} {} (id {}, version {}): success from the binary cache, built before as pipeline {} version {}",
                answer.change, p.name, p.id, p.version, hit.pipeline_id, hit.version
            ),
            None => {
                println!("{:<8} {} (id {}, version {}, worker {})", answer.change, p.name, p.id, p.version, p.worker)
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

/// `[######----] 3/5 crates`: a build's progress as text, the same on a terminal
/// and in a log.
pub fn progress_bar(progress: kiln_core::api::Progress) -> String {
    const WIDTH: usize = 10;
    let filled = (progress.percent() as usize * WIDTH).div_ceil(100).min(WIDTH);
    format!("[{}{}] {progress}", "#".repeat(filled), "-".repeat(WIDTH - filled))
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

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let submitted = submit_dirs(&client, &args.dirs, args.name.as_deref()).await?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let records = wait_for(&client, &submitted, args.timeout).await?;
    print_table(&records);
    Ok(if report_failures(&client, &records).await? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn print_table(records: &[PipelineRecord]) {
    println!(
        "{:>4}  {:<20} {:>3}  {:<13} {:>6}  {:<13} {:<12} ERROR",
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
        println!(
            "{:>4}  {:<20} {:>3}  {:<13} {:>6}  {:<13} {:<12} {error}",
            r.id,
            r.name,
            r.version,
            r.status.as_str(),
            r.worker,
            cache,
            binary
        );
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
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

/// `kiln cancel`: the build stops; the pipeline ends `cancelled`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let record = client.cancel(&args.pipeline).await?;
    println!(
        "{} (id {}, version {}) cancelled; its worker stops the build at its next heartbeat. `kiln submit` builds it again",
        record.name, record.id, record.version
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    print!("{}", client.log(&args.pipeline).await?);
    Ok(ExitCode::SUCCESS)
}

pub async fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let (record, actual) = fetch_verified(&client, &args.pipeline, &args.output).await?;
    println!("{} version {} -> {} (sha256 {actual}, verified)", record.name, record.version, args.output.display());
    std::io::stdout().flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Fetches a pipeline's binary into `output` (executable), streaming it through
/// SHA-256: it is kept only when it hashes to what the leader recorded for the
/// pipeline, so a damaged or substituted binary is never written in place.
pub async fn fetch_verified(
    client: &Client,
    pipeline: &str,
    output: &std::path::Path,
) -> anyhow::Result<(PipelineRecord, String)> {
    let record = client.get(pipeline).await?;
    let expected = record
        .binary_sha256
        .clone()
        .with_context(|| format!("pipeline {} has no binary: its status is {}", record.name, record.status))?;
    let (response, declared) = client.binary(&record.id.to_string()).await?;
    if declared != expected {
        bail!("the leader serves {declared} but recorded {expected} for pipeline {}: nothing was written", record.name);
    }
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".kiln-download-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let (file, temp_path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("downloading the binary")?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        bail!(
            "the binary of pipeline {} hashes to {actual}, not {expected} as recorded: it was damaged or substituted on the way and was not kept; try again",
            record.name
        );
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temp_path, std::fs::Permissions::from_mode(0o755))?;
    }
    temp_path.persist(output).with_context(|| format!("writing {}", output.display()))?;
    Ok((record, actual))
}
