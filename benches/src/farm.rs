//! Real Kiln processes for the benchmarks: the test kit's farm (`kiln-testkit`) with
//! its benchmarks preset, a real S3-compatible server, and what the comparisons
//! time on a farm ([`Timed`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use kiln_core::api::Status;
pub use kiln_testkit::Farm;
use kiln_testkit::{FarmSetup, S3Server};

pub const TOKEN: &str = "bench-cluster-token-0123456789";

/// What the benchmarks need to know to start members.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kiln: PathBuf,
    pub depset_cache: PathBuf,
    pub profile: String,
}

/// Starts `workers` members with `extra` options each, and waits until the
/// cluster is healthy. With `shared_build_root`, every member sees its own
/// directory at that one path (a private mount), as under `kiln up`; otherwise
/// each builds in `member-<i>/build`.
pub async fn start(
    setup: &Setup,
    workers: u32,
    shared_build_root: Option<PathBuf>,
    extra: &[String],
) -> anyhow::Result<Farm> {
    // The first farm of a run builds the dependency set in release.
    Ok(Farm::start_all(
        // The builder's `cargo finished` lines are comparison 1's trace.
        preset(setup, &setup.depset_cache, "warn,kiln_compiler_worker::builder=info"),
        workers,
        shared_build_root,
        extra,
        Duration::from_secs(900),
    )
    .await)
}

/// Starts `workers` members, member `i` pinned to CPU `cpus[i]` with cargo's jobs
/// at 1: a core per member, as `kiln up --cpus-per-member 1` runs them (and as a
/// pod gets a CPU request of 1).
pub async fn start_pinned(setup: &Setup, cpus: &[usize], extra: &[String]) -> anyhow::Result<Farm> {
    let mut preset = preset(setup, &setup.depset_cache, "warn,kiln_compiler_worker::builder=info");
    preset.pin = Some(cpus.iter().map(|cpu| vec![*cpu]).collect());
    let mut extra = extra.to_vec();
    extra.push("--build-jobs=1".to_owned());
    Ok(Farm::start_all(preset, cpus.len() as u32, None, &extra, Duration::from_secs(900)).await)
}

/// Starts member 0 (the leader) of a farm of `workers` and returns at once, for a
/// comparison that times the start itself or brings members of its own: its
/// prebuilt dependency sets in `depset_cache`, its build root privately mounted at
/// `build_root` when given, its log at `log` level (read back with
/// [`Farm::member_log`]).
pub fn spawn_leader(
    setup: &Setup,
    depset_cache: &Path,
    build_root: Option<PathBuf>,
    workers: u32,
    extra: &[String],
    log: &str,
) -> Farm {
    let mut farm = Farm::new(preset(setup, depset_cache, log), workers as usize);
    farm.shared_build_root = build_root;
    farm.start(kiln_testkit::Member { ordinal: 0, workers, extra: extra.to_vec() });
    farm
}

fn preset(setup: &Setup, depset_cache: &Path, log: &str) -> FarmSetup {
    FarmSetup::benchmarks(setup.kiln.clone(), depset_cache.to_path_buf(), TOKEN, &setup.profile, log)
}

/// What the comparisons time on a farm: submissions through the REST API and the
/// wait for their builds, failing with an error rather than a panic where a figure
/// is at stake.
pub trait Timed {
    /// Submits the program in `dir` as `name`; returns its id.
    async fn submit_program(&self, name: &str, dir: &Path) -> anyhow::Result<u64>;
    /// Submits the program in `dir` as `name`; returns the record the answer holds.
    async fn submit_record(&self, name: &str, dir: &Path) -> anyhow::Result<kiln_core::api::PipelineRecord>;
    /// Waits until pipeline `id` has finished, and returns its record; a build
    /// that did not succeed is an error.
    async fn wait_success(&self, id: u64) -> anyhow::Result<serde_json::Value>;
    /// The id the next new pipeline will get: ids are handed out in sequence.
    async fn next_id(&self) -> anyhow::Result<u64>;
}

impl Timed for Farm {
    async fn submit_program(&self, name: &str, dir: &Path) -> anyhow::Result<u64> {
        Ok(self.submit_record(name, dir).await?.id)
    }

    async fn submit_record(&self, name: &str, dir: &Path) -> anyhow::Result<kiln_core::api::PipelineRecord> {
        self.leader().submit_dir(name, dir).await
    }

    async fn wait_success(&self, id: u64) -> anyhow::Result<serde_json::Value> {
        // The figures come from the leader's own timestamps, so a slow poll costs no
        // precision, and keeps this process from competing with the builds.
        let finished = [Status::Success, Status::CompileError, Status::SystemError];
        let record = self
            .leader()
            .wait_status_every(&id.to_string(), &finished, Duration::from_secs(900), Duration::from_millis(100))
            .await;
        if record.status != Status::Success {
            bail!("pipeline {id} failed: {}", record.error.unwrap_or_default());
        }
        Ok(serde_json::to_value(record)?)
    }

    async fn next_id(&self) -> anyhow::Result<u64> {
        Ok(self.leader().pipelines().await.iter().map(|p| p.id).max().unwrap_or(0) + 1)
    }
}

/// A real S3-compatible server (s3s-fs) on loopback with one bucket.
#[derive(Debug)]
pub struct S3 {
    server: S3Server,
}

pub const S3_BUCKET: &str = "kiln-bench-cache";
const S3_SECRET: &str = "kiln-bench-secret-key";

impl S3 {
    pub fn start(dir: &Path) -> anyhow::Result<S3> {
        Ok(S3 { server: S3Server::start(dir, S3_BUCKET, "kiln-bench-access", S3_SECRET) })
    }

    /// The member options that build through sccache on this store.
    pub fn member_flags(&self) -> anyhow::Result<Vec<String>> {
        let sccache =
            kiln_process::find_tool("sccache").context("sccache is not installed: run scripts/install-deps")?;
        let mut flags = vec!["--sccache=auto".into(), format!("--sccache-binary={}", sccache.display())];
        flags.extend(self.server.flags(S3_BUCKET, S3_SECRET));
        Ok(flags)
    }
}
