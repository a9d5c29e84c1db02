//! The leader's operations, shared by the REST and gRPC layers: they decode a
//! request, call one of these, and encode the answer. Blocking catalog work runs on
//! tokio's blocking pool.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kiln_core::cluster::MemberId;
use kiln_core::depset::DepSet;
use kiln_core::program::{self, Program, ProgramFile};
use kiln_core::scaling::{ScalingDetected, ScalingGuard};
use tokio::sync::watch;

use crate::artifacts::ArtifactStore;
use crate::catalog::{Catalog, Counts, Page, PageQuery, Submitted};
use crate::error::ApiError;
use crate::health::{ClusterHealth, Expected, MemberReport, Members, cluster_health};
use crate::metrics::Metrics;
use crate::rules::{ClaimKey, Pipeline, Report};
use kiln_core::api::{Change, Status};

/// How the leader is set up.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub data_dir: PathBuf,
    /// N: the number of members in the set, the leader included.
    pub workers: u32,
    pub version: String,
    pub cluster_token: String,
    /// When set, the `/v0` API wants `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// A member whose last heartbeat is older than this is unhealthy.
    pub heartbeat_window: Duration,
    pub max_artifact_bytes: u64,
    /// N comes from the Kubernetes API (`--kubernetes`), the only authority on it:
    /// a member that reports another N is refused, never believed.
    pub n_from_kubernetes: bool,
    /// `/metrics` wants the API token too.
    pub protect_metrics: bool,
    /// The dependency set programs are validated against; members with another
    /// get no work.
    pub depset: Arc<DepSet>,
    /// How long a source or artifact no pipeline version references is kept.
    pub retention: Duration,
    /// A claim its member has not reported (in a heartbeat, a report or an upload)
    /// for this long goes back to `pending` for the same ordinal.
    pub claim_lease: Duration,
    /// Above the critical watermark of its data volume, the leader hands out no
    /// work and reports it in `/healthz` and `/cluster_healthz`.
    pub watermarks: kiln_core::disk::Watermarks,
    /// What a CI job needs to share the farm's cache (`GET /v0/cache-settings`).
    pub cache_settings: kiln_core::api::CacheSettings,
    /// The leader answers over TLS: the page's session cookie is then `Secure`.
    pub serves_tls: bool,
    /// The binary cache: the build settings fingerprint of this farm's members
    /// (the leader's own worker's, see `kiln_compiler_worker::builder::settings_fingerprint`).
    /// A submission whose source, dependency set and these settings were built
    /// before is served that binary at once. None: the cache is off.
    pub binary_cache: Option<String>,
    /// The most connections the port serves at once (see [`crate::listener`]).
    pub max_connections: usize,
}

#[derive(Debug)]
pub struct LeaderState {
    pub(crate) config: LeaderConfig,
    catalog: Arc<Catalog>,
    pub(crate) artifacts: ArtifactStore,
    members: Members,
    guard: ScalingGuard,
    /// Bumped whenever a pipeline becomes pending, to wake long-polling claims.
    work: watch::Sender<u64>,
    pub(crate) metrics: Metrics,
    /// When this leader started: until a heartbeat window has passed, a member it
    /// has not heard from yet counts as alive (it may be about to report).
    started: Instant,
    /// When each claim in flight was last reported by its member. A claim the
    /// leader has not seen yet (after its own restart) starts a full lease.
    leases: Mutex<HashMap<ClaimKey, Instant>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl LeaderState {
    pub fn open(config: LeaderConfig, guard: ScalingGuard) -> anyhow::Result<LeaderState> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the leader's data directory {}", config.data_dir.display()))?;
        let catalog_path = config.data_dir.join("catalog.redb");
        let catalog = Catalog::open(&catalog_path, now_ms())
            .with_context(|| format!("opening the catalog {}", catalog_path.display()))?;
        let artifacts = ArtifactStore::open(&config.data_dir.join("artifacts"), config.max_artifact_bytes)
            .context("opening the artifact store")?;
        // Files no record knows (a crash between upload and record, a catalog
        // restored from a backup) are collected like any other after the retention.
        let adopted = catalog.adopt_artifacts(&artifacts.stored()?, now_ms()).context("scheduling stray artifacts")?;
        if adopted > 0 {
            tracing::info!(artifacts = adopted, "artifacts no pipeline references: removed after the retention");
        }
        Ok(LeaderState {
            config,
            catalog: Arc::new(catalog),
            artifacts,
            members: Members::default(),
            guard,
            work: watch::Sender::new(0),
            metrics: Metrics::new(),
            started: Instant::now(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    async fn catalog<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Catalog) -> Result<T, crate::catalog::CatalogError> + Send + 'static,
    {
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || f(&catalog))
            .await
            .map_err(|e| ApiError::Internal(format!("catalog task failed: {e}")))?
            .map_err(ApiError::from)
    }

    fn wake_workers(&self) {
        self.work.send_modify(|generation| *generation += 1);
    }

    /// Validates a program and records it as a new pipeline or a new version.
    pub async fn submit(&self, name: String, files: Vec<ProgramFile>) -> Result<Submitted, ApiError> {
        program::validate_name(&name)?;
        let set = self.config.depset.clone();
        let (sha, files) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let sha = program::source_sha256(&files);
            Program::parse(files.clone(), &set)?;
            Ok((sha, files))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))??;
        let workers = self.config.workers;
        let cache =
            self.config.binary_cache.clone().map(|settings| (self.config.depset.fingerprint().to_owned(), settings));
        let submitted = {
            let name = name.clone();
            let sha = sha.clone();
            self.catalog(move |c| {
                let cache = cache.as_ref().map(|(depset, settings)| (depset.as_str(), settings.as_str()));
                c.submit(&name, &sha, &files, workers, cache, now_ms())
            })
            .await?
        };
        let r = &submitted.record;
        match submitted.change {
            Change::Unchanged => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, "submitted again, unchanged")
            }
            _ if r.binary_cache_hit.is_some() => {
                let hit =
                    r.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.version, h.saved_ms)).unwrap_or_default();
                self.metrics.binary_cache_hit(hit.2);
                tracing::info!(
                    pipeline = %r.name, id = r.id, version = r.version, source_sha256 = %sha,
                    binary_sha256 = r.binary_sha256.as_deref().unwrap_or(""), built_by = hit.0,
                    built_version = hit.1, saved_ms = hit.2, "success from the binary cache: nothing to build"
                );
            }
            change => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, ordinal = r.worker, source_sha256 = %sha, ?change, "pipeline pending");
                self.wake_workers();
            }
        }
        Ok(submitted)
    }

    /// A page of the pipelines, in id order.
    pub async fn page(&self, query: PageQuery) -> Result<Page, ApiError> {
        self.catalog(move |c| c.page(&query)).await
    }

    /// The catalog's counters, for `/metrics`.
    pub async fn counts(&self) -> Result<Counts, ApiError> {
        self.catalog(|c| c.counts()).await
    }

    /// Finds a pipeline by id, or by name when `key` is not a number.
    pub async fn find(&self, key: &str) -> Result<Pipeline, ApiError> {
        let key = key.to_owned();
        let found = self
            .catalog({
                let key = key.clone();
                move |c| match key.parse::<u64>() {
                    Ok(id) => c.get(id),
                    Err(_) => match c.id_of(&key)? {
                        Some(id) => c.get(id),
                        None => Ok(None),
                    },
                }
            })
            .await?;
        found.ok_or_else(|| ApiError::NotFound(format!("no pipeline {key:?}: `kiln status` lists them")))
    }

    pub async fn delete(&self, key: &str) -> Result<Pipeline, ApiError> {
        let record = self.find(key).await?;
        let id = record.id;
        self.catalog(move |c| c.delete(id, now_ms())).await?;
        tracing::info!(
            pipeline = %record.name, id, version = record.version,
            retention_s = self.config.retention.as_secs(),
            "pipeline deleted: its source and binary go after the retention unless another pipeline uses them"
        );
        Ok(record)
    }

    /// Stops a pipeline's build (`kiln cancel`): it ends `cancelled` at once; its
    /// worker learns it at its next heartbeat and kills the build.
    pub async fn cancel(&self, key: &str) -> Result<Pipeline, ApiError> {
        let found = self.find(key).await?;
        let id = found.id;
        let record = self
            .catalog(move |c| c.cancel(id, "by the API (kiln cancel)", now_ms()))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no pipeline {key:?}: `kiln status` lists them")))?;
        self.metrics.build_finished(&record);
        tracing::info!(
            pipeline = %record.name, id, version = record.version, ordinal = record.worker,
            attempt = record.attempt, "build cancelled"
        );
        Ok(record)
    }

    /// The API's view of a record: the catalog's, with the progress its worker last
    /// reported while it compiles.
    pub fn shown(&self, record: &Pipeline) -> kiln_core::api::PipelineRecord {
        let mut shown = record.to_api();
        if record.status == kiln_core::api::Status::Compiling {
            shown.progress = self.members.progress_of(record.worker, record.claim_key());
        }
        shown
    }

    pub async fn log(&self, key: &str) -> Result<(Pipeline, Option<String>), ApiError> {
        let record = self.find(key).await?;
        let id = record.id;
        let log = self.catalog(move |c| c.log(id)).await?;
        Ok((record, log))
    }

    /// Applies the scaling guard and notices restarts; called on every worker call.
    pub async fn member_seen(&self, member: MemberId) -> Result<(), ApiError> {
        if let Some(refused) = self.size_refusal(member) {
            return Err(refused);
        }
        if let Some(detected) = self.observe(member) {
            return Err(ApiError::Conflict(detected.to_string()));
        }
        let MemberId { ordinal, incarnation, .. } = member;
        // A second incarnation of an ordinal does not take over while the first one
        // still reports: the leader keeps the first until its heartbeats stop.
        let known = self.catalog(move |c| c.incarnation_of(ordinal)).await?;
        if let Some(known) = known.filter(|k| *k != incarnation)
            && self.reports_within_window(ordinal, known)
        {
            self.members.conflict(ordinal, incarnation, Instant::now());
            tracing::warn!(ordinal, incarnation, holder = known, "refused a second incarnation of a live member");
            return Err(ApiError::Conflict(format!(
                "ordinal {ordinal} is held by another incarnation that still reports; this one is refused until that one's heartbeats stop (within {}s)",
                self.config.heartbeat_window.as_secs()
            )));
        }
        let requeued = self.catalog(move |c| c.member_seen(ordinal, incarnation, now_ms())).await?;
        if !requeued.is_empty() {
            tracing::warn!(ordinal, ?requeued, "member restarted: its builds in flight are pending again");
            self.wake_workers();
        }
        Ok(())
    }

    /// Whether `incarnation` of `ordinal` reported within the heartbeat window (or
    /// the leader started too recently to know).
    fn reports_within_window(&self, ordinal: u32, incarnation: u64) -> bool {
        let window = self.config.heartbeat_window;
        match self.members.snapshot().get(&ordinal) {
            Some((at, report)) => report.incarnation == incarnation && at.elapsed() <= window,
            None => self.started.elapsed() <= window,
        }
    }

    /// Feeds the member's view of N to the scaling guard. With N from the Kubernetes
    /// API, the member's view is only checked (see [`LeaderState::size_refusal`]).
    fn observe(&self, member: MemberId) -> Option<ScalingDetected> {
        if !self.config.n_from_kubernetes {
            self.guard.observe_replicas(member.workers);
            self.guard.observe_ordinal(member.ordinal);
        }
        self.guard.detected()
    }

    /// With N from the Kubernetes API: the refusal of a member whose N or ordinal
    /// disagrees with the StatefulSet's. A caller with the cluster token must not be
    /// able to make the leader panic; its guard trips only when the API says so.
    fn size_refusal(&self, member: MemberId) -> Option<ApiError> {
        let workers = self.guard.workers();
        if !self.config.n_from_kubernetes || (member.workers == workers && member.ordinal < workers) {
            return None;
        }
        tracing::warn!(
            ordinal = member.ordinal,
            reported_workers = member.workers,
            workers,
            "refused a member whose N disagrees with the StatefulSet's"
        );
        Some(ApiError::Conflict(format!(
            "this member reports N = {} (ordinal {}), but the StatefulSet has {workers} replicas: refused (the leader takes N from the Kubernetes API)",
            member.workers, member.ordinal
        )))
    }

    /// A heartbeat: records the member's state, and says whether the build it holds
    /// is still wanted.
    pub async fn heartbeat(
        &self,
        member: MemberId,
        report: MemberReport,
        current: Option<ClaimKey>,
    ) -> Result<bool, ApiError> {
        if let Some(refused) = self.size_refusal(member) {
            return Err(refused);
        }
        if self.observe(member).is_some() {
            // Answer anyway: the reply carries the leader's N, from which the member
            // applies the scaling guard on its side too.
            return Ok(true);
        }
        self.member_seen(member).await?;
        self.members.record(member.ordinal, report, Instant::now());
        match current {
            None => Ok(false),
            Some(claim) => {
                // Only the holder's heartbeat renews a lease: another member naming
                // someone else's build is told to drop it, and renews nothing.
                let holder = (member.ordinal, member.incarnation);
                let current = match self.catalog(move |c| c.check_holds(&claim, holder)).await {
                    Ok(()) => true,
                    Err(ApiError::Conflict(_)) => false,
                    Err(other) => return Err(other),
                };
                if current {
                    self.renew_lease(claim);
                }
                Ok(!current)
            }
        }
    }

    /// The member holding `claim` just showed it is working on it.
    fn renew_lease(&self, claim: ClaimKey) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(claim, Instant::now());
    }

    /// Puts back to `pending` every claim whose member has not reported it for
    /// longer than the lease: a worker that hangs, or was cut off, does not hold
    /// its ordinal's queue. The requeued pipelines stay with their ordinal.
    pub async fn expire_leases(&self) -> Result<usize, ApiError> {
        let in_flight = self.catalog(|c| c.in_flight()).await?;
        let lease = self.config.claim_lease;
        let now = Instant::now();
        let expired: Vec<(ClaimKey, u32)> = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let live: HashSet<ClaimKey> = in_flight.iter().map(|(claim, _)| *claim).collect();
            leases.retain(|claim, _| live.contains(claim));
            in_flight
                .into_iter()
                .filter(|(claim, _)| now.duration_since(*leases.entry(*claim).or_insert(now)) > lease)
                .collect()
        };
        let mut requeued = 0;
        for (claim, ordinal) in expired {
            let reason = format!(
                "ordinal {ordinal} did not report this build for longer than the claim lease ({})",
                humantime::format_duration(lease)
            );
            if let Some(record) = self.catalog(move |c| c.requeue_claim(&claim, &reason, now_ms())).await? {
                tracing::warn!(
                    pipeline = %record.name, id = record.id, version = record.version, ordinal,
                    attempt = record.attempt, "claim lease ran out: the pipeline is pending again"
                );
                requeued += 1;
            }
            self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&claim);
        }
        if requeued > 0 {
            self.wake_workers();
        }
        Ok(requeued)
    }

    /// Removes the sources and artifacts no pipeline version has referenced for the
    /// retention.
    pub async fn collect(&self) -> Result<crate::catalog::Collected, ApiError> {
        let retention = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let artifacts = self.artifacts.clone();
        let collected = self.catalog(move |c| c.collect(now_ms(), retention, |sha| artifacts.remove(sha))).await?;
        if collected != crate::catalog::Collected::default() {
            tracing::info!(
                sources = collected.sources,
                artifacts = collected.artifacts,
                "unreferenced files collected"
            );
        }
        Ok(collected)
    }

    /// The leader's housekeeping until `shutdown`: claim leases and collection, each
    /// on a period a fraction of its setting.
    pub async fn maintain(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let period = |of: Duration, max: Duration| (of / 4).clamp(Duration::from_millis(100), max);
        let mut leases = tokio::time::interval(period(self.config.claim_lease, Duration::from_secs(5)));
        let mut collection = tokio::time::interval(period(self.config.retention, Duration::from_secs(60)));
        for timer in [&mut leases, &mut collection] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            let done = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = leases.tick() => self.expire_leases().await.map(|_| ()),
                _ = collection.tick() => self.collect().await.map(|_| ()),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "leader housekeeping failed; trying again");
            }
        }
    }

    /// Long poll: the next pending pipeline of this member, or None after `wait`.
    pub async fn claim(
        &self,
        member: MemberId,
        depset: &str,
        wait: Duration,
    ) -> Result<Option<(Pipeline, Vec<ProgramFile>)>, ApiError> {
        self.member_seen(member).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let leader_set = self.config.depset.fingerprint().to_owned();
        if depset != leader_set {
            // /cluster_healthz names it; the member asks again after the wait.
            tracing::info!(
                ordinal = member.ordinal,
                member_depset = depset,
                leader_depset = %leader_set,
                "no work for this member: its dependency set differs from the leader's"
            );
            tokio::time::sleep_until(deadline).await;
            return Ok(None);
        }
        let mut wakeups = self.work.subscribe();
        loop {
            if let Some(full) = self.data_disk_critical() {
                // Nothing built now could be stored: look again in a moment.
                tracing::debug!(ordinal = member.ordinal, "{full}");
                let again = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
                tokio::time::sleep_until(again).await;
                if again == deadline {
                    return Ok(None);
                }
                continue;
            }
            // Mark the current generation seen before looking, so a submission that
            // lands after the look still wakes us.
            wakeups.borrow_and_update();
            let ordinal = member.ordinal;
            let set = leader_set.clone();
            if let Some((record, source)) = self.catalog(move |c| c.claim(ordinal, &set, now_ms())).await? {
                self.renew_lease(record.claim_key());
                tracing::info!(pipeline = %record.name, id = record.id, version = record.version, ordinal, attempt = record.attempt, "pipeline claimed");
                return Ok(Some((record, source)));
            }
            tokio::select! {
                changed = wakeups.changed() => if changed.is_err() { return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    pub async fn report(
        &self,
        member: MemberId,
        claim: ClaimKey,
        report: Report,
        log: Option<String>,
    ) -> Result<Pipeline, ApiError> {
        self.member_seen(member).await?;
        if let Report::Success { binary_sha256, .. } = &report
            && !self.artifacts.contains(binary_sha256)
        {
            return Err(ApiError::NotFound(format!("the leader holds no artifact {binary_sha256}: upload it first")));
        }
        let holder = (member.ordinal, member.incarnation);
        let record =
            self.catalog(move |c| c.report(&claim, holder, report, log.as_deref(), now_ms())).await.inspect_err(
                |e| tracing::warn!(ordinal = member.ordinal, id = claim.pipeline_id, error = %e, "report refused"),
            )?;
        // Only once the catalog found the caller holds the claim: a stranger's
        // report must not keep a dead holder's lease alive.
        self.renew_lease(claim);
        if record.status.finished() {
            self.metrics.build_finished(&record);
            tracing::info!(
                pipeline = %record.name, id = record.id, version = record.version, ordinal = member.ordinal,
                status = %record.status, binary_sha256 = record.binary_sha256.as_deref().unwrap_or(""),
                error = record.error.as_deref().unwrap_or(""), "build finished"
            );
        } else {
            tracing::debug!(pipeline = %record.name, id = record.id, version = record.version, status = %record.status, "build status");
        }
        Ok(record)
    }

    /// Records a binary received (and measured) under `claim`; refused unless
    /// `member` holds the claim.
    pub async fn uploaded(&self, member: MemberId, claim: ClaimKey, sha256: String, size: u64) -> Result<(), ApiError> {
        let holder = (member.ordinal, member.incarnation);
        let artifacts = self.artifacts.clone();
        self.catalog(move |c| c.record_upload(&claim, holder, &sha256, size, || artifacts.contains(&sha256), now_ms()))
            .await
            .inspect_err(
                |e| tracing::warn!(ordinal = member.ordinal, id = claim.pipeline_id, error = %e, "upload refused"),
            )?;
        self.renew_lease(claim);
        Ok(())
    }

    /// Checks, before receiving its bytes, that `member` holds `claim`.
    pub async fn holds(&self, member: MemberId, claim: ClaimKey) -> Result<(), ApiError> {
        let holder = (member.ordinal, member.incarnation);
        self.catalog(move |c| c.check_holds(&claim, holder)).await?;
        self.renew_lease(claim);
        Ok(())
    }

    /// Opens the binary of a pipeline that succeeded, verified against its hash.
    /// A binary that fails it is removed and every pipeline that used it goes back
    /// to be rebuilt: the answer says so (503, "being rebuilt"), never a 404.
    pub async fn open_binary(&self, record: &Pipeline) -> Result<(String, tokio::fs::File, u64), ApiError> {
        let being_rebuilt = |why: &str| {
            ApiError::BeingRebuilt(format!(
                "pipeline {} version {} is being rebuilt ({why}): ask again when `kiln status` shows it success",
                record.id, record.version
            ))
        };
        let sha = match (&record.status, &record.binary_sha256) {
            (Status::Success, Some(sha)) => sha.clone(),
            (status, _) if !status.finished() && record.rebuilding.is_some() => {
                return Err(being_rebuilt(record.rebuilding.as_deref().unwrap_or_default()));
            }
            _ => {
                return Err(ApiError::Conflict(format!(
                    "pipeline {} version {} has no binary: its status is {}",
                    record.id, record.version, record.status
                )));
            }
        };
        let lost = match self.artifacts.open_verified(&sha).await {
            Ok(Some((file, size))) => return Ok((sha, file, size)),
            Ok(None) => format!("its stored binary {sha} was missing"),
            Err(crate::artifacts::ArtifactError::Corrupt { actual, .. }) => {
                format!("its stored binary {sha} failed its hash (the bytes hash to {actual}) and was removed")
            }
            Err(other) => return Err(other.into()),
        };
        let rebuilt = {
            let (sha, lost) = (sha.clone(), lost.clone());
            self.catalog(move |c| c.artifact_lost(&sha, &lost, now_ms())).await?
        };
        for r in &rebuilt {
            tracing::error!(pipeline = %r.name, id = r.id, version = r.version, ordinal = r.worker, sha256 = %sha, "stored binary lost: rebuilding");
        }
        self.wake_workers();
        Err(being_rebuilt(&lost))
    }

    pub fn cluster_health(&self) -> ClusterHealth {
        let now = Instant::now();
        let expected = Expected {
            workers: self.config.workers,
            version: &self.config.version,
            depset: self.config.depset.fingerprint(),
        };
        let mut health = cluster_health(
            &self.members.snapshot(),
            expected,
            self.config.heartbeat_window,
            now,
            humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        // A second live incarnation of an ordinal is a conflict to show, not to hide.
        for (ordinal, incarnation) in self.members.conflicts(self.config.heartbeat_window, now) {
            if let Some(member) = health.members.iter_mut().find(|m| m.ordinal == ordinal) {
                let conflict = format!("a second incarnation ({incarnation:x}) asked for this ordinal and was refused");
                member.message = if member.healthy { conflict } else { format!("{}; {conflict}", member.message) };
                member.healthy = false;
            }
        }
        if let Some(full) = self.data_disk_critical()
            && let Some(leader) = health.members.iter_mut().find(|m| m.ordinal == 0)
        {
            leader.message = if leader.healthy { full } else { format!("{}; {full}", leader.message) };
            leader.healthy = false;
        }
        health.all_healthy = health.members.iter().all(|m| m.healthy);
        health
    }

    /// A cheap check that this process can serve: the catalog answers and its
    /// data volume is below the critical watermark.
    pub async fn self_check(&self) -> Result<(), ApiError> {
        if let Some(full) = self.data_disk_critical() {
            return Err(ApiError::DiskFull(full));
        }
        self.catalog(|c| c.get(0)).await.map(|_| ())
    }

    /// How full the leader's data volume is, in percent.
    pub fn data_disk_used(&self) -> Option<f64> {
        kiln_core::disk::used_percent(&self.config.data_dir).ok()
    }

    /// The leader's data volume above the critical watermark, in words.
    fn data_disk_critical(&self) -> Option<String> {
        let used = self.data_disk_used()?;
        let marks = self.config.watermarks;
        (marks.pressure(used) == kiln_core::disk::Pressure::Critical).then(|| {
            format!(
                "the leader's data volume is {used:.0}% full (critical watermark {:.0}%): no work is handed out until space is freed in {}",
                marks.critical,
                self.config.data_dir.display()
            )
        })
    }
}
