//! The leader's operations, shared by the REST and gRPC layers: they decode a
//! request, call one of these, and encode the answer. Blocking catalog work runs on
//! tokio's blocking pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kiln_core::cluster::MemberId;
use kiln_core::depset::DepSet;
use kiln_core::program::{self, Program, ProgramFile};
use kiln_core::scaling::{ScalingDetected, ScalingGuard};
use tokio::sync::watch;

use crate::artifacts::ArtifactStore;
use crate::catalog::{Catalog, Submitted};
use crate::error::ApiError;
use crate::health::{ClusterHealth, Expected, MemberReport, Members, cluster_health};
use crate::metrics::Metrics;
use crate::rules::{ClaimKey, Pipeline, Report};
use kiln_core::api::Change;

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
        let catalog =
            Catalog::open(&catalog_path).with_context(|| format!("opening the catalog {}", catalog_path.display()))?;
        let artifacts = ArtifactStore::open(&config.data_dir.join("artifacts"), config.max_artifact_bytes)
            .context("opening the artifact store")?;
        Ok(LeaderState {
            config,
            catalog: Arc::new(catalog),
            artifacts,
            members: Members::default(),
            guard,
            work: watch::Sender::new(0),
            metrics: Metrics::new(),
            started: Instant::now(),
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
        let submitted = {
            let name = name.clone();
            let sha = sha.clone();
            self.catalog(move |c| c.submit(&name, &sha, &files, workers, now_ms())).await?
        };
        let r = &submitted.record;
        match submitted.change {
            Change::Unchanged => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, "submitted again, unchanged")
            }
            change => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, ordinal = r.worker, source_sha256 = %sha, ?change, "pipeline pending");
                self.wake_workers();
            }
        }
        Ok(submitted)
    }

    pub async fn list(&self) -> Result<Vec<Pipeline>, ApiError> {
        self.catalog(|c| c.list()).await
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
        self.catalog(move |c| c.delete(id)).await?;
        tracing::info!(pipeline = %record.name, id, version = record.version, "pipeline deleted");
        Ok(record)
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
            Some(claim) => Ok(!self.catalog(move |c| c.is_current(&claim)).await?),
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
            // Mark the current generation seen before looking, so a submission that
            // lands after the look still wakes us.
            wakeups.borrow_and_update();
            let (ordinal, workers) = (member.ordinal, self.config.workers);
            let set = leader_set.clone();
            if let Some((record, source)) = self.catalog(move |c| c.claim(ordinal, workers, &set, now_ms())).await? {
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
        self.catalog(move |c| c.record_upload(&claim, holder, &sha256, size)).await.inspect_err(
            |e| tracing::warn!(ordinal = member.ordinal, id = claim.pipeline_id, error = %e, "upload refused"),
        )
    }

    /// Checks, before receiving its bytes, that `member` holds `claim`.
    pub async fn holds(&self, member: MemberId, claim: ClaimKey) -> Result<(), ApiError> {
        let holder = (member.ordinal, member.incarnation);
        self.catalog(move |c| c.check_holds(&claim, holder)).await
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
        health.all_healthy = health.members.iter().all(|m| m.healthy);
        health
    }

    /// A cheap check that this process can serve: the catalog answers.
    pub async fn self_check(&self) -> Result<(), ApiError> {
        self.catalog(|c| c.get(0)).await.map(|_| ())
    }
}
