//! `kiln download`: fetches a pipeline's binary, streaming it through SHA-256, and
//! keeps it only when it hashes to what the leader recorded (`kiln launch` fetches
//! the same way).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use kiln_core::api::PipelineRecord;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::config::leader::LeaderArgs;

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

/// `kiln download`: a pipeline's binary, verified, written to `--output`.
pub async fn run(args: DownloadArgs) -> anyhow::Result<ExitCode> {
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
