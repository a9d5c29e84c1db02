//! The leader's operations, shared by the REST and gRPC layers: they decode a
//! request, call one of these, and encode the answer. Blocking catalog work runs on
//! tokio's blocking pool.
//!
//! One file per capability, each an `impl LeaderState` block: `pipelines.rs`
//! (what users do), `members.rs` (heartbeats, the scaling guard, health),
//! `claims.rs` (claims, reports, uploads and their leases), `retention.rs`
//! (collection and the housekeeping loop), `binaries.rs` (the binary cache and
//! serving binaries). This file holds the state they share.

mod binaries;
mod claims;
mod members;
mod pipelines;
mod retention;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kiln_core::cluster::MemberId;
use kiln_core::depset::DepSet;
use kiln_core::scaling::ScalingGuard;
use tokio::sync::watch;

use crate::artifacts::ArtifactStore;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::health::Members;
use crate::metrics::Metrics;
use crate::rules::ClaimKey;

/// How the leader is set up.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub data_dir: PathBuf,
    /// N as the leader was started with: the number of members in the set, the
    /// leader included. Under `--on-scaling=reshard` it follows the set
    /// ([`LeaderState::workers`]).
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
    /// A member silent for this long is missing: the healthy members build its
    /// pending pipelines and its claims (failover). Zero: never.
    pub failover_after: Duration,
    /// Above the critical watermark of its data volume, the leader hands out no
    /// work and reports it in `/healthz` and `/cluster_healthz`.
    pub watermarks: kiln_core::disk::Watermarks,
    /// What a CI job needs to share the farm's cache (`GET /v0/cache-settings`).
    pub cache_settings: kiln_core::api::CacheSettings,
    /// The leader answers over TLS: the page's session cookie is then `Secure`.
    pub serves_tls: bool,
    /// The profile a pipeline submitted without one is built in (`--profile`).
    pub default_profile: String,
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
    /// The members found missing at the last look, to say when one goes missing
    /// or comes back.
    missing: Mutex<Vec<u32>>,
    /// Incarnations that said they leave the set (`--on-scaling=reshard`): a late
    /// call of theirs is refused, and never read as news of N.
    left: Mutex<std::collections::HashSet<(u32, u64)>>,
    /// The N the pending pipelines were last spread over.
    sharded_for: std::sync::atomic::AtomicU32,
}

/// Wall-clock milliseconds since the epoch: the time the catalog's records and
/// the retention are kept in.
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
        let workers = config.workers;
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
            missing: Mutex::new(Vec::new()),
            left: Mutex::new(Default::default()),
            sharded_for: std::sync::atomic::AtomicU32::new(workers),
        })
    }

    /// Runs `f` on the catalog on tokio's blocking pool (redb blocks), its error
    /// mapped to the API's.
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

    /// `/metrics`: the Prometheus text, its gauges read now.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let counts = self.counts().await?;
        Ok(self.metrics.render(&counts, self.artifacts.usage(), self.data_disk_used(), &self.cluster_health()))
    }

    /// N now: as started, or as the set has become under `--on-scaling=reshard`.
    pub fn workers(&self) -> u32 {
        self.guard.workers()
    }

    /// How pipelines are spread over the members: `id % N` (the seed's), or
    /// rendezvous hashing under `--on-scaling=reshard`, so that a new N moves
    /// about 1/N of them.
    pub fn sharding(&self) -> crate::rules::Sharding {
        match self.guard.on_scaling() {
            kiln_core::scaling::OnScaling::Panic => crate::rules::Sharding::Modulo,
            kiln_core::scaling::OnScaling::Reshard => crate::rules::Sharding::Rendezvous,
        }
    }

    /// Wakes the members' long-polling claims: a pipeline became pending.
    fn wake_workers(&self) {
        self.work.send_modify(|generation| *generation += 1);
    }
}
