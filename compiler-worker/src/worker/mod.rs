//! The worker's life: heartbeats in the background; in the foreground, claim a
//! pipeline of this ordinal, build it, deliver the binary, report, repeat.
//!
//! A worker builds one pipeline at a time, so sccache's figures after a build are
//! that build's. The build in hand is cancelled (its whole process group killed)
//! when the leader says it is no longer wanted: a new version, a deletion.
//!
//! This file wires a member's worker together ([`run`]: the sandbox, the build
//! root, the compile cache, the link to the leader). The pieces: `claim.rs` (the
//! claim loop and what a build's end means), `deliver.rs` (the binary delivered, a
//! final report retried until it lands), `heartbeat.rs` (the heartbeats and a
//! cancelled build), `cargo_builds.rs` (building with cargo and sccache),
//! `result.rs` (a build's result, and the `Builds` the loop builds with),
//! `shared.rs` (what the heartbeats and the loop share). The loop speaks to the
//! leader through a `crate::link::LeaderLink` only, and is unit-tested against a
//! scripted one (`tests.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use kiln_core::identity::Identity;
use kiln_core::scaling::ScalingGuard;

use crate::builder::{self, BuildSettings};
use crate::cache_store::{self, CacheStore, S3Settings};
use crate::disk::DiskWatch;
use crate::link::Member;
use crate::link::grpc::GrpcLink;
use crate::sandbox::{Sandbox, SandboxMode, SandboxSettings, SandboxState};
use crate::sccache::{self, CompileCache, SandboxedSccache, Sccache};
use crate::upload::RetryPolicy;

mod cargo_builds;
mod claim;
mod deliver;
mod heartbeat;
mod result;
mod shared;
#[cfg(test)]
mod tests;

use cargo_builds::CargoBuilds;
use claim::Worker;
use deliver::Delivery;
use heartbeat::{Beats, heartbeat_loop};
use shared::{Shared, lock};

/// Whether builds go through sccache.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    /// Never: plain cargo.
    Off,
    /// When sccache can be found (at `binary`, or on PATH) and started.
    Auto { binary: Option<PathBuf>, store: CacheStore },
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub identity: Identity,
    pub leader_url: String,
    /// The CA that signed the leader's certificate, for an `https://` leader URL.
    pub tls_ca: Option<PathBuf>,
    pub cluster_token: String,
    pub build: BuildSettings,
    pub cache: CacheChoice,
    pub upload: RetryPolicy,
    pub heartbeat_interval: Duration,
    pub version: String,
    pub sandbox: SandboxSettings,
    /// Above the high one the worker prunes its build root, above the critical one
    /// it takes no work.
    pub watermarks: kiln_core::disk::Watermarks,
}

/// The member's share of the machine's CPUs, in words, for health: the CPUs it
/// may run on (pinned to a set by `kiln up --cpus-per-member`, as a pod's CPU
/// request gives it a share; or all of them) and cargo's jobs.
pub fn cpu_share(jobs: Option<u32>) -> String {
    let usable = kiln_process::process::usable_cpus();
    let online = online_cpus().unwrap_or(usable.len());
    let list = usable.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let jobs = jobs.map_or_else(|| format!("cargo -j {} (its default)", usable.len()), |n| format!("cargo -j {n}"));
    if usable.len() < online {
        format!("{} of {online} CPUs: pinned to CPU set {list}; {jobs}", usable.len())
    } else {
        format!("all {online} CPUs (not pinned); {jobs}")
    }
}

/// How many CPUs the machine has online (`/sys/devices/system/cpu/online`, a
/// list such as `0-3,6`).
fn online_cpus() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut count = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(count)
}

/// Runs the worker until `shutdown` is cancelled. Scaling is reported through `guard`.
pub async fn run(config: WorkerConfig, guard: ScalingGuard, shutdown: CancellationToken) -> anyhow::Result<()> {
    let member = Member {
        ordinal: config.identity.ordinal,
        workers: config.identity.workers,
        incarnation: rand::random(),
        version: config.version.clone(),
    };
    let link = Arc::new(
        GrpcLink::connect(
            &config.leader_url,
            &config.cluster_token,
            config.tls_ca.as_deref(),
            &member,
            config.heartbeat_interval,
        )?
        .following(guard.clone()),
    );
    let reshards = guard.on_scaling() == kiln_core::scaling::OnScaling::Reshard;
    let shared = Arc::new(Shared::default());
    *lock(&shared.cpus) = cpu_share(config.build.jobs);
    tracing::info!(ordinal = config.identity.ordinal, cpus = %lock(&shared.cpus), "this member's share of the CPUs");
    shared.set_preparing(true);
    shared.set_cache_state(true, "not started yet".into());
    let ordinal = config.identity.ordinal;
    let depset = config.build.depset.fingerprint().to_owned();
    let heartbeats = tokio::spawn(heartbeat_loop(
        link.clone(),
        Beats { ordinal, depset: depset.clone(), interval: config.heartbeat_interval },
        shared.clone(),
        guard,
        shutdown.clone(),
    ));

    let sandbox = sandbox_state(&config.sandbox).await;
    match &sandbox {
        SandboxState::Unavailable(_) => tracing::error!(ordinal, "{}", sandbox.describe()),
        SandboxState::Off => tracing::warn!(ordinal, "{}", sandbox.describe()),
        SandboxState::On(_) => tracing::info!(ordinal, "{}", sandbox.describe()),
    }
    *lock(&shared.sandbox) = (sandbox.describe(), !sandbox.ready());
    let mut config = config;
    if let SandboxState::On(sandbox) = &sandbox {
        config.build.sandbox = Some(sandbox.clone());
    }
    if !sandbox.ready() {
        // Stay up and say why (in every heartbeat, so in /cluster_healthz), but build nothing.
        shared.set_preparing(false);
        shutdown.cancelled().await;
        heartbeats.abort();
        return Ok(());
    }
    tracing::info!(ordinal, build_root = %config.build.build_root.display(), "preparing the build root");
    tokio::select! {
        prepared = prepare(&config) => prepared.context("preparing the build root")?,
        () = shutdown.cancelled() => return Ok(()),
    }
    let (sccache, cache_note) = start_cache(&config).await?;
    if let CacheChoice::Auto { store: CacheStore::S3(s3), .. } = &config.cache
        && sccache.is_some()
    {
        tokio::spawn(probe_store(s3.clone(), shared.clone(), shutdown.clone()));
    }
    match &sccache {
        Some(s) => shared.set_cache_state(true, s.describe()),
        None => shared.set_cache_state(true, cache_note.clone()),
    }
    shared.set_preparing(false);
    tracing::info!(ordinal, leader = %config.leader_url, "worker ready");

    let build_settings = builder::settings_fingerprint(&config.build).await?;
    let disk = DiskWatch {
        build_root: config.build.build_root.clone(),
        local_cache: match &config.cache {
            CacheChoice::Auto { store: CacheStore::LocalDisk { dir, .. }, .. } => Some(dir.clone()),
            _ => None,
        },
        marks: config.watermarks,
    };
    let mut worker = Worker {
        link,
        builds: CargoBuilds {
            settings: config.build,
            sccache,
            cache_note,
            shared: shared.clone(),
            disk,
            profiles_ready: Default::default(),
        },
        shared,
        ordinal,
        depset,
        delivery: Delivery { policy: config.upload, build_settings },
        disk_recheck: config.heartbeat_interval.max(Duration::from_secs(1)),
    };
    let result = worker.claim_loop(&shutdown).await;
    if let Some(sccache) = &worker.builds.sccache {
        sccache.stop().await;
    }
    heartbeats.abort();
    if reshards && shutdown.is_cancelled() {
        heartbeat::say_leaving(worker.link.as_ref(), &worker.shared, &worker.depset, ordinal).await;
    }
    result
}

/// Makes the sandbox, or says why not.
async fn sandbox_state(settings: &SandboxSettings) -> SandboxState {
    match settings.mode {
        SandboxMode::Off => SandboxState::Off,
        SandboxMode::Auto => match Sandbox::probe(settings).await {
            Ok(sandbox) => SandboxState::On(sandbox),
            Err(why) => SandboxState::Unavailable(why),
        },
    }
}

/// Prepares the build root, compiling the dependency set through the compile cache:
/// a server of the worker's own, outside any sandbox (the set is the operator's,
/// trusted, and built unsandboxed), with the store's settings, stopped once the
/// set is built. A member whose set another member (or an earlier pod) compiled so
/// mostly reads hits. Without a usable cache, plain cargo.
async fn prepare(config: &WorkerConfig) -> anyhow::Result<()> {
    let server = match &config.cache {
        CacheChoice::Auto { binary, store } => match sccache::find(binary.as_deref()) {
            Some(binary) => {
                if let CacheStore::S3(s3) = store {
                    cache_store::preflight(s3, &config.identity.hostname).await?;
                }
                let dir = config.build.work_dir.join("sccache-prepare");
                match Sccache::start(binary, store.clone(), &dir).await {
                    Ok(server) => Some(server),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "compiling the dependency set without the compile cache");
                        None
                    }
                }
            }
            None => None,
        },
        CacheChoice::Off => None,
    };
    let wrapper = server.as_ref().map(Sccache::wrapper).unwrap_or_default();
    let prepared = builder::prepare_build_root(&config.build, &wrapper).await;
    if let Some(server) = server {
        if let Ok(stats) = server.stats().await {
            tracing::info!(
                ordinal = config.identity.ordinal,
                hits = stats.hits,
                misses = stats.misses,
                "the dependency set's compilations through the cache"
            );
        }
        server.stop().await;
    }
    prepared
}

/// Starts sccache for the configured store. An S3 store is checked first: a
/// misconfigured bucket is a startup error in plain words. sccache itself failing
/// to start is not: builds go on without it, and say so.
async fn start_cache(config: &WorkerConfig) -> anyhow::Result<(Option<CompileCache>, String)> {
    let member = &config.identity.hostname;
    let CacheChoice::Auto { binary, store } = &config.cache else {
        return Ok((None, "compile cache turned off: building with plain cargo".into()));
    };
    if let CacheStore::S3(s3) = store {
        tracing::info!(store = %s3.describe(), "checking the cache store");
        cache_store::preflight(s3, member).await?;
    }
    let Some(binary) = sccache::find(binary.as_deref()) else {
        let note = "sccache not found on PATH: building with plain cargo, without a compile cache".to_owned();
        tracing::warn!("{note}");
        return Ok((None, note));
    };
    let work_dir = &config.build.work_dir;
    let started = match &config.build.sandbox {
        Some(_) => match std::env::current_exe().context("finding the kiln binary, the sandbox's first program") {
            Ok(init) => SandboxedSccache::start(binary, store, work_dir, init).await.map(CompileCache::Sandboxed),
            Err(e) => Err(e),
        },
        None => Sccache::start(binary, store.clone(), &work_dir.join("sccache")).await.map(CompileCache::Server),
    };
    match started {
        Ok(sccache) => {
            tracing::info!(cache = %sccache.describe(), "compile cache ready");
            Ok((Some(sccache), String::new()))
        }
        Err(e) => {
            let note = format!("sccache could not start ({e:#}): building with plain cargo, without a compile cache");
            tracing::warn!("{note}");
            Ok((None, note))
        }
    }
}

/// Keeps the member's cache state current for `/cluster_healthz`.
async fn probe_store(s3: S3Settings, shared: Arc<Shared>, shutdown: CancellationToken) {
    let client = s3.client().await;
    let mut was_healthy = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = shutdown.cancelled() => return,
        }
        match cache_store::probe(&s3, &client).await {
            Ok(()) => {
                if !was_healthy {
                    tracing::info!(store = %s3.describe(), "the cache store answers again");
                }
                was_healthy = true;
                shared.set_cache_state(true, s3.describe());
            }
            Err(e) => {
                if was_healthy {
                    tracing::warn!(store = %s3.describe(), error = %e, "the cache store does not answer; builds go on without it");
                }
                was_healthy = false;
                shared.set_cache_state(false, format!("bucket {} at {}: {e}", s3.bucket, s3.endpoint_url()));
            }
        }
    }
}
