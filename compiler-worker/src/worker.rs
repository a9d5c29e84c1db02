//! The worker's life: heartbeats in the background; in the foreground, claim a
//! pipeline of this ordinal, build it, deliver the binary, report, repeat.
//!
//! A worker builds one pipeline at a time, so sccache's figures after a build are
//! that build's. The build in hand is cancelled (its whole process group killed)
//! when the leader says it is no longer wanted: a new version, a deletion.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kiln_proto::{self as pb, BuildStatus};
use tokio_util::sync::CancellationToken;

use kiln_core::api::CacheFigures;
use kiln_core::cluster::{self, Figures};
use kiln_core::identity::Identity;
use kiln_core::program::{Layout, Program};
use kiln_core::retry::{Disposition, Failure};
use kiln_core::scaling::ScalingGuard;

use crate::builder::{self, BuildOutcome, BuildSettings, Wrapper};
use crate::cache_store::{self, CacheStore, S3Settings};
use crate::client::{self, LeaderClient};
use crate::disk::{DiskState, DiskWatch};
use crate::sandbox::gateway::Scope;
use crate::sandbox::{self, Sandbox, SandboxMode, SandboxSettings, SandboxState};
use crate::sccache::{self, CompileCache, SandboxedSccache, Sccache};
use crate::upload::{self, DeliveryError, RetryPolicy, Shipment};

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

/// What the heartbeat task and the build loop share.
#[derive(Debug, Default)]
struct Shared {
    current: Mutex<Option<(pb::Claim, CancellationToken)>>,
    cache_state: Mutex<pb::CacheState>,
    preparing: std::sync::atomic::AtomicBool,
    /// The sandbox's state in words, and whether this member refuses to build.
    sandbox: Mutex<(String, bool)>,
    /// The build root's volume, as the last look before a claim found it.
    disk: Mutex<DiskState>,
    /// How far the build in hand has come.
    progress: Arc<builder::BuildProgress>,
}

impl Shared {
    fn set_cache_state(&self, healthy: bool, message: String) {
        *self.cache_state.lock().unwrap_or_else(|p| p.into_inner()) = pb::CacheState { healthy, message };
    }
}

struct Worker {
    config: WorkerConfig,
    member: pb::Member,
    client: LeaderClient,
    shared: Arc<Shared>,
    sccache: Option<CompileCache>,
    cache_note: String,
    /// What decides a binary besides its program and dependency set
    /// ([`builder::settings_fingerprint`]): sent with each success, it keys the
    /// leader's binary cache.
    build_settings: String,
}

/// Runs the worker until `shutdown` is cancelled. Scaling is reported through `guard`.
pub async fn run(config: WorkerConfig, guard: ScalingGuard, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = client::connect(&config.leader_url, &config.cluster_token, config.tls_ca.as_deref())?;
    let member = pb::Member {
        ordinal: config.identity.ordinal,
        workers: config.identity.workers,
        incarnation: rand::random(),
        version: config.version.clone(),
    };
    let shared = Arc::new(Shared::default());
    shared.preparing.store(true, std::sync::atomic::Ordering::SeqCst);
    shared.set_cache_state(true, "not started yet".into());
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        member.clone(),
        config.build.depset.fingerprint().to_owned(),
        shared.clone(),
        guard,
        config.heartbeat_interval,
        shutdown.clone(),
    ));

    let ordinal = config.identity.ordinal;
    let sandbox = sandbox_state(&config.sandbox).await;
    match &sandbox {
        SandboxState::Unavailable(_) => tracing::error!(ordinal, "{}", sandbox.describe()),
        SandboxState::Off => tracing::warn!(ordinal, "{}", sandbox.describe()),
        SandboxState::On(_) => tracing::info!(ordinal, "{}", sandbox.describe()),
    }
    *shared.sandbox.lock().unwrap_or_else(|p| p.into_inner()) = (sandbox.describe(), !sandbox.ready());
    let mut config = config;
    if let SandboxState::On(sandbox) = &sandbox {
        config.build.sandbox = Some(sandbox.clone());
    }
    if !sandbox.ready() {
        // Stay up and say why (in every heartbeat, so in /cluster_healthz), but build nothing.
        shared.preparing.store(false, std::sync::atomic::Ordering::SeqCst);
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
    shared.preparing.store(false, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(ordinal, leader = %config.leader_url, "worker ready");

    let build_settings = builder::settings_fingerprint(&config.build).await?;
    let mut worker = Worker { config, member, client, shared, sccache, cache_note, build_settings };
    let result = worker.claim_loop(&shutdown).await;
    if let Some(sccache) = &worker.sccache {
        sccache.stop().await;
    }
    heartbeats.abort();
    result
}

/// Starts sccache for the configured store. An S3 store is checked first: a
/// misconfigured bucket is a startup error in plain words. sccache itself failing
/// to start is not: builds go on without it, and say so.
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

/// The cache part of a build log: enough to explain a miss that should have been a hit.
fn cache_log(build_root: &std::path::Path, layout: &Layout, stats: &sccache::SccacheStats, describe: &str) -> String {
    let mut text = format!(
        "\n== compile cache ==\n{describe}\nhits {} ({} ms reading) / misses {} ({} ms compiling) / not cacheable {} / store errors {}\nbuild root {}\n",
        stats.hits,
        stats.hit_read_ms,
        stats.misses,
        stats.miss_compile_ms,
        stats.non_cacheable,
        stats.store_errors,
        build_root.display()
    );
    text.push_str(&format!(
        "compile time saved by hits {} ms: {} % of this build's compile time came from the cache",
        stats.saved_ms,
        CacheFigures::percent_from_cache(stats.saved_ms, stats.miss_compile_ms)
    ));
    if stats.hits_without_cost > 0 {
        text.push_str(&format!(" ({} hits have no recorded cost and are not counted)", stats.hits_without_cost));
    }
    text.push('\n');
    for (reason, count) in &stats.not_cached {
        text.push_str(&format!("not cached: {reason} x{count}\n"));
    }
    for krate in &layout.crates {
        text.push_str(&format!("crate {} at src/{}\n", krate.package, krate.dir_name));
    }
    text
}

async fn heartbeat_loop(
    mut client: LeaderClient,
    member: pb::Member,
    depset: String,
    shared: Arc<Shared>,
    guard: ScalingGuard,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut was_failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let current = shared.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cache = shared.cache_state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // One lock, released before the guard's statement ends: a second lock in the
        // same expression would wait for the first forever.
        let (sandbox, sandbox_unavailable) = shared.sandbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let disk = shared.disk.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut request = tonic::Request::new(pb::HeartbeatRequest {
            member: Some(member.clone()),
            cache: Some(cache),
            current: current.as_ref().map(|(claim, _)| *claim),
            preparing: shared.preparing.load(std::sync::atomic::Ordering::SeqCst),
            sandbox,
            sandbox_unavailable,
            depset: depset.clone(),
            disk_used_percent: disk.used_percent,
            disk_critical: disk.critical.unwrap_or_default(),
            progress: current.as_ref().map(|_| {
                let (crates_done, crates_total) = shared.progress.get();
                pb::BuildProgress { crates_done, crates_total }
            }),
        });
        request.set_timeout(interval.max(Duration::from_secs(5)));
        match client.heartbeat(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if was_failing {
                    tracing::info!(ordinal = member.ordinal, "leader reachable again");
                    was_failing = false;
                }
                guard.observe_replicas(response.leader_workers);
                let still_current = || {
                    let now = shared.current.lock().unwrap_or_else(|p| p.into_inner());
                    now.as_ref().map(|(c, _)| *c) == current.as_ref().map(|(c, _)| *c)
                };
                if response.cancel_current
                    && still_current()
                    && let Some((claim, cancel)) = current
                {
                    tracing::info!(
                        id = claim.pipeline_id,
                        version = claim.version,
                        ordinal = member.ordinal,
                        "the leader no longer wants this build: cancelling it"
                    );
                    cancel.cancel();
                }
            }
            Err(status) => {
                if !was_failing {
                    tracing::warn!(ordinal = member.ordinal, error = %kiln_core::retry::status_text(&status), code = ?status.code(), "heartbeat failed; will keep trying");
                    was_failing = true;
                }
                if status.code() == tonic::Code::Unauthenticated {
                    tracing::error!(
                        ordinal = member.ordinal,
                        "the leader refuses this member's cluster token: {}",
                        status.message()
                    );
                }
            }
        }
    }
}

/// How a build ended on this worker, before anything is sent to the leader.
#[derive(Debug)]
enum BuildResult {
    /// A binary, hashed, ready to deliver.
    Built(Built),
    /// The program does not compile: the submitter's to fix.
    CompileError { summary: String, log: String, figures: Figures },
    /// The farm failed (the program is fine, as far as anyone knows).
    SystemError { error: String, log: String, figures: Figures },
    /// The leader no longer wants this build, or the worker is stopping.
    Cancelled,
}

/// A built binary and what its build cost.
#[derive(Debug)]
struct Built {
    /// The binary as the member opened and hashed it (see `sandbox::target::take_binary`).
    executable: upload::Binary,
    sha256: String,
    size: u64,
    log: String,
    figures: Figures,
    /// Why the build ran code of its submitter, if it did.
    submitted_code: Option<String>,
}

/// A report that ends a build: sent, and retried, by [`Worker::send_final`].
#[derive(Debug)]
struct FinalReport {
    status: BuildStatus,
    error: String,
    log: String,
    figures: Figures,
}

/// The sccache side of one build: the wrapper cargo runs with, and the figures so far.
struct CacheRun {
    wrapper: Wrapper,
    figures: CacheFigures,
}

impl Worker {
    async fn claim_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut failures = 0u32;
        let watch = DiskWatch {
            build_root: self.config.build.build_root.clone(),
            local_cache: match &self.config.cache {
                CacheChoice::Auto { store: CacheStore::LocalDisk { dir, .. }, .. } => Some(dir.clone()),
                _ => None,
            },
            marks: self.config.watermarks,
        };
        let mut was_critical = false;
        loop {
            // Between builds: make room above the high watermark; above the
            // critical one, take no work until space is back.
            let state = {
                let watch = watch.clone();
                tokio::task::spawn_blocking(move || watch.make_room()).await.unwrap_or_default()
            };
            let critical = state.critical.clone();
            *self.shared.disk.lock().unwrap_or_else(|p| p.into_inner()) = state;
            if let Some(why) = critical {
                if !was_critical {
                    tracing::error!(ordinal = self.member.ordinal, "{why}");
                    was_critical = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(self.config.heartbeat_interval.max(Duration::from_secs(1))) => continue,
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            if was_critical {
                tracing::info!(
                    ordinal = self.member.ordinal,
                    "space is back on the build root's volume: taking work again"
                );
                was_critical = false;
            }
            let mut request = tonic::Request::new(pb::ClaimRequest {
                member: Some(self.member.clone()),
                wait_ms: 30_000,
                depset: self.config.build.depset.fingerprint().to_owned(),
            });
            request.set_timeout(Duration::from_secs(45));
            let response = tokio::select! {
                response = self.client.claim(request) => response,
                () = shutdown.cancelled() => return Ok(()),
            };
            match response {
                Ok(response) => {
                    failures = 0;
                    if let Some(assignment) = response.into_inner().assignment {
                        self.handle(assignment, shutdown).await;
                    }
                }
                Err(status) => {
                    let failure = Failure::of(&status);
                    if failure.disposition == Disposition::Permanent {
                        // A refused token, a malformed call: asking again changes nothing.
                        anyhow::bail!("the leader refuses this member: {failure}");
                    }
                    // Transient, or stale (the leader refused this member's view of the
                    // set; the scaling guard acts on that through the heartbeats).
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(ordinal = self.member.ordinal, error = %failure, "asking the leader for work failed; retrying");
                    }
                    let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, assignment: pb::Assignment, shutdown: &CancellationToken) {
        let Some(claim) = assignment.claim else { return };
        let cancel = shutdown.child_token();
        self.shared.progress.start(0);
        *self.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((claim, cancel.clone()));
        let span = tracing::info_span!("build", pipeline = %assignment.name, id = claim.pipeline_id, version = claim.version, ordinal = self.member.ordinal);
        let final_report = tracing::Instrument::instrument(
            async {
                let result = self.build(&assignment, &cancel).await;
                self.conclude(claim, result, &cancel).await
            },
            span.clone(),
        )
        .await;
        if let Some(report) = final_report {
            tracing::Instrument::instrument(self.send_final(claim, report, &cancel), span).await;
        }
        *self.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn report(&self, claim: pb::Claim, status: BuildStatus, figures: Figures) -> pb::StatusReport {
        pb::StatusReport {
            member: Some(self.member.clone()),
            claim: Some(claim),
            status: status as i32,
            figures: Some(figures.into()),
            ..Default::default()
        }
    }

    fn cache_off_figures(&self) -> CacheFigures {
        CacheFigures { enabled: false, note: self.cache_note.clone(), ..Default::default() }
    }

    /// Builds the assignment: lays the program out, runs cargo (through sccache when
    /// it runs), reads the cache's figures and hashes the binary.
    async fn build(&mut self, assignment: &pb::Assignment, cancel: &CancellationToken) -> BuildResult {
        tracing::info!("build started");
        let files = cluster::program_files(assignment.source.clone().unwrap_or_default());
        let layout = match Program::parse(files, &self.config.build.depset) {
            Ok(program) => program.layout(),
            Err(e) => {
                return BuildResult::SystemError {
                    error: format!("this worker cannot build the program: {e}"),
                    log: String::new(),
                    figures: Figures { cache: self.cache_off_figures(), ..Figures::default() },
                };
            }
        };
        let pipeline = assignment.claim.map_or(0, |c| c.pipeline_id);
        // Who may write what others read, decided here from the layout this worker
        // is about to write, before anything of the build runs.
        let submitted_code = layout.submitted_code();
        if let Some(sccache) = &self.sccache {
            sccache.set_scope(match &submitted_code {
                None => Scope::Shared,
                Some(why) => {
                    tracing::info!(reason = %why, "the build runs code of its submitter: its compile-cache entries stay its pipeline's");
                    let name = match kiln_core::program::validate_name(&assignment.name) {
                        Ok(()) => assignment.name.clone(),
                        Err(_) => format!("id-{pipeline}"),
                    };
                    Scope::Pipeline(name)
                }
            });
        }
        let mut cache = self.start_cache_run().await;
        let outcome =
            builder::build(&self.config.build, &cache.wrapper, &layout, pipeline, cancel, &self.shared.progress).await;
        let mut cache_section = self.finish_cache_run(&mut cache.figures, &layout).await;
        if let (Some(why), true) = (&submitted_code, cache.figures.enabled) {
            cache_section.push_str(&format!(
                "this build ran code of its submitter ({why}): the compile-cache entries it made are kept for pipeline {} alone, and its binary is served by the binary cache to this pipeline only\n",
                assignment.name
            ));
        }
        let figures = |elapsed: Duration, cache: CacheFigures| Figures {
            compile_ms: elapsed.as_millis() as u64,
            cache,
            ..Figures::default()
        };
        match outcome {
            Ok(BuildOutcome::Cancelled) => BuildResult::Cancelled,
            Ok(BuildOutcome::CompileError { summary, log, elapsed }) => BuildResult::CompileError {
                summary,
                log: log + &cache_section,
                figures: figures(elapsed, cache.figures),
            },
            Err(e) => BuildResult::SystemError {
                error: format!("{e:#}"),
                log: String::new(),
                figures: figures(Duration::ZERO, cache.figures),
            },
            Ok(BuildOutcome::Built { executable, log, elapsed }) => {
                let log = log + &cache_section;
                let figures = figures(elapsed, cache.figures);
                let settings = self.config.build.clone();
                let path = executable.clone();
                let taken =
                    tokio::task::spawn_blocking(move || sandbox::target::take_binary(&settings, &executable)).await;
                match taken {
                    Ok(Ok((file, sha256, size))) => {
                        let executable = upload::Binary::new(file, path);
                        BuildResult::Built(Built { executable, sha256, size, log, figures, submitted_code })
                    }
                    // The build left something else than its binary where cargo put
                    // it: the program's doing, so its error; the worker goes on.
                    Ok(Err(
                        refused @ (sandbox::files::Refused::NotRegular { .. }
                        | sandbox::files::Refused::TooLarge { .. }),
                    )) => {
                        tracing::warn!(error = %refused, "the build's binary was refused");
                        BuildResult::CompileError {
                            summary: format!("the binary was refused: {refused}"),
                            log,
                            figures,
                        }
                    }
                    Ok(Err(refused)) => BuildResult::SystemError { error: refused.to_string(), log, figures },
                    Err(e) => BuildResult::SystemError { error: format!("taking the binary: {e}"), log, figures },
                }
            }
        }
    }

    /// Zeroes sccache's statistics, so that after the build they are this build's.
    async fn start_cache_run(&self) -> CacheRun {
        let Some(sccache) = &self.sccache else {
            return CacheRun { wrapper: Wrapper::default(), figures: self.cache_off_figures() };
        };
        match sccache.before_build().await {
            Ok(wrapper) => CacheRun { wrapper, figures: CacheFigures { enabled: true, ..Default::default() } },
            Err(e) => {
                let note = format!("sccache failed before the build ({e:#}): built without the cache");
                tracing::warn!("{note}");
                self.shared.set_cache_state(false, format!("sccache does not answer: {e:#}"));
                CacheRun {
                    wrapper: Wrapper::default(),
                    figures: CacheFigures { enabled: false, note, ..Default::default() },
                }
            }
        }
    }

    /// Reads this build's cache figures into `cache`; returns the log's cache section.
    async fn finish_cache_run(&self, cache: &mut CacheFigures, layout: &Layout) -> String {
        let (true, Some(sccache)) = (cache.enabled, &self.sccache) else { return String::new() };
        match sccache.after_build().await {
            Ok(stats) => {
                cache.hits = stats.hits;
                cache.misses = stats.misses;
                cache.non_cacheable = stats.non_cacheable;
                cache.hit_read_ms = stats.hit_read_ms;
                cache.miss_compile_ms = stats.miss_compile_ms;
                cache.saved_ms = stats.saved_ms;
                cache.hits_without_cost = stats.hits_without_cost;
                cache.time_from_cache_percent = CacheFigures::percent_from_cache(stats.saved_ms, stats.miss_compile_ms);
                if stats.store_errors > 0 {
                    cache.note = format!(
                        "the cache store failed {} times during this build; those crates were compiled without the cache",
                        stats.store_errors
                    );
                    tracing::warn!(store_errors = stats.store_errors, "the cache store failed during the build");
                }
                cache_log(&self.config.build.build_root, layout, &stats, &sccache.describe())
            }
            Err(e) => {
                cache.note = format!("sccache statistics unavailable: {e:#}");
                String::new()
            }
        }
    }

    /// What a build's result means for the leader: delivered (nothing left to say),
    /// or a final report still to send.
    async fn conclude(
        &mut self,
        claim: pb::Claim,
        result: BuildResult,
        cancel: &CancellationToken,
    ) -> Option<FinalReport> {
        match result {
            BuildResult::Cancelled => {
                tracing::info!("build cancelled");
                None
            }
            BuildResult::CompileError { summary, log, figures } => {
                tracing::info!(error = %summary, "compile error");
                Some(FinalReport { status: BuildStatus::CompileError, error: summary, log, figures })
            }
            BuildResult::SystemError { error, log, figures } => {
                tracing::error!(error = %error, "build failed on this worker");
                Some(FinalReport { status: BuildStatus::SystemError, error, log, figures })
            }
            BuildResult::Built(built) => {
                let cache = &built.figures.cache;
                tracing::info!(
                    compile_ms = built.figures.compile_ms,
                    hits = cache.hits,
                    misses = cache.misses,
                    "compiled"
                );
                self.deliver(claim, built, cancel).await
            }
        }
    }

    /// Delivers a built binary (report uploading, upload, report success, retried as
    /// one unit). Returns the final report still to send when the budget ran out.
    async fn deliver(&mut self, claim: pb::Claim, built: Built, cancel: &CancellationToken) -> Option<FinalReport> {
        let Built { executable, sha256, size, log, figures, submitted_code } = built;
        let mut success = self.report(claim, BuildStatus::Success, figures.clone());
        success.binary_sha256 = sha256.clone();
        success.binary_size = size;
        success.log = log.clone();
        success.build_settings = self.build_settings.clone();
        success.ran_submitted_code = submitted_code.is_some();
        let shipment = Shipment {
            member: self.member.clone(),
            claim,
            binary: executable,
            sha256: sha256.clone(),
            size,
            success,
            uploading: self.report(claim, BuildStatus::Uploading, figures.clone()),
        };
        let started = std::time::Instant::now();
        let delivered = tokio::select! {
            delivered = upload::deliver(&self.client, &shipment, self.config.upload) => delivered,
            () = cancel.cancelled() => {
                tracing::info!("delivery cancelled");
                return None;
            }
        };
        match delivered {
            Ok(d) => {
                tracing::info!(binary_sha256 = %sha256, size, upload_ms = d.elapsed.as_millis() as u64, retries = d.retries, sent = d.sent_bytes, "delivered to the leader");
                None
            }
            Err(DeliveryError::Stale(reason)) => {
                tracing::info!(reason = %reason, "the leader dropped this build");
                None
            }
            Err(DeliveryError::Transient(cause) | DeliveryError::Permanent(cause)) => {
                tracing::error!(cause = %cause, budget_s = self.config.upload.budget.as_secs(), "Failed to upload binary");
                Some(FinalReport {
                    status: BuildStatus::SystemError,
                    error: format!("Failed to upload binary: {cause}"),
                    log,
                    figures: Figures { upload_ms: started.elapsed().as_millis() as u64, ..figures },
                })
            }
        }
    }

    /// Sends a build's final error report. The leader may be the very thing that is
    /// failing, so a transient failure is retried (with capped backoff) until the
    /// report lands, the claim goes stale, or the worker stops; a permanent one is
    /// logged and given up, since sending it again would fail the same way.
    async fn send_final(&mut self, claim: pb::Claim, report: FinalReport, cancel: &CancellationToken) {
        let mut message = self.report(claim, report.status, report.figures);
        message.error = report.error;
        message.log = report.log;
        let mut delay = Duration::from_millis(250);
        loop {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(Duration::from_secs(30));
            let failure = match self.client.report_status(request).await {
                Ok(_) => return,
                Err(status) => Failure::of(&status),
            };
            match failure.disposition {
                Disposition::Stale => {
                    tracing::info!(reason = %failure, "final report refused: the build was dropped");
                    return;
                }
                Disposition::Permanent => {
                    tracing::error!(error = %failure, "final report refused");
                    return;
                }
                Disposition::Transient | Disposition::Damaged => {
                    tracing::warn!(error = %failure, retry_in_ms = delay.as_millis() as u64, "final report not delivered; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
