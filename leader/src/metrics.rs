//! Prometheus metrics of the leader (`GET /metrics`). Counters and histograms move as
//! reports arrive; gauges (pipelines by status, queue depth, member health, what is
//! stored) are set at each scrape from the catalog's counters, the artifact store's
//! and the heartbeats: never stale, and never a scan of the catalog.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::catalog::Counts;
use crate::health::ClusterHealth;
use crate::rules::Pipeline;
use kiln_core::api::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrdinalLabel {
    ordinal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverLabel {
    /// The member that built it.
    ordinal: String,
    /// The missing member it built it for.
    for_ordinal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    builds_finished: Family<StatusLabel, Counter>,
    build_seconds: Histogram,
    upload_seconds: Histogram,
    upload_retries: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_hit_read_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    cache_miss_compile_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    cache_saved_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    binary_cache_hits: Counter,
    binary_cache_saved_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    crates_done: Family<OrdinalLabel, Gauge>,
    crates_total: Family<OrdinalLabel, Gauge>,
    pipelines: Family<StatusLabel, Gauge>,
    queue_depth: Family<OrdinalLabel, Gauge>,
    failover_claims: Family<FailoverLabel, Counter>,
    resharded: Counter,
    member_missing: Family<OrdinalLabel, Gauge>,
    member_healthy: Family<OrdinalLabel, Gauge>,
    stored_objects: Family<KindLabel, Gauge>,
    stored_bytes: Family<KindLabel, Gauge>,
    unreferenced: Family<KindLabel, Gauge>,
    disk_used: Family<OrdinalLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    data_disk_used: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let builds_finished = Family::<StatusLabel, Counter>::default();
        registry.register("builds_finished", "Builds that ended, by final status", builds_finished.clone());
        // 0.25 s to about 68 minutes.
        let build_seconds = Histogram::new(exponential_buckets(0.25, 2.0, 15));
        registry.register("build_duration_seconds", "Compile time of successful builds", build_seconds.clone());
        let upload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 18));
        registry.register("upload_duration_seconds", "Artifact upload time, retries included", upload_seconds.clone());
        let upload_retries = Counter::default();
        registry.register("upload_retries", "Upload attempts that were retried", upload_retries.clone());
        let cache_hits = Counter::default();
        registry.register("cache_hits", "sccache hits of finished builds", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("cache_misses", "sccache misses of finished builds", cache_misses.clone());
        let cache_hit_read_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cache_hit_read_seconds",
            "Time sccache spent serving hits from the store, in finished builds",
            cache_hit_read_seconds.clone(),
        );
        let cache_miss_compile_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cache_miss_compile_seconds",
            "Time sccache spent compiling misses, in finished builds",
            cache_miss_compile_seconds.clone(),
        );
        let cache_saved_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cache_saved_seconds",
            "Compile time the compile cache's hits saved in finished builds (what those compilations cost as misses)",
            cache_saved_seconds.clone(),
        );
        let binary_cache_hits = Counter::default();
        registry.register(
            "binary_cache_hits",
            "Submissions served a binary built before (same source, dependency set and build settings), without a build",
            binary_cache_hits.clone(),
        );
        let binary_cache_saved_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "binary_cache_saved_seconds",
            "Build time the binary cache's hits saved (the compile time of the build that made each binary)",
            binary_cache_saved_seconds.clone(),
        );
        let crates_done = Family::<OrdinalLabel, Gauge>::default();
        registry.register(
            "build_crates_done",
            "The program's crates finished by the build in flight on each ordinal",
            crates_done.clone(),
        );
        let crates_total = Family::<OrdinalLabel, Gauge>::default();
        registry.register(
            "build_crates_total",
            "The program's crates the build in flight on each ordinal has to build",
            crates_total.clone(),
        );
        let pipelines = Family::<StatusLabel, Gauge>::default();
        registry.register("pipelines", "Pipelines in the catalog, by status", pipelines.clone());
        let queue_depth = Family::<OrdinalLabel, Gauge>::default();
        registry.register("queue_depth", "Pending pipelines, by the ordinal that will build them", queue_depth.clone());
        let failover_claims = Family::<FailoverLabel, Counter>::default();
        registry.register(
            "failover_claims",
            "Pipelines built by ordinal `ordinal` for the missing ordinal `for_ordinal` (failover)",
            failover_claims.clone(),
        );
        let resharded = Counter::default();
        registry.register(
            "resharded_pipelines",
            "Pending pipelines moved to another ordinal because the set's size changed (--on-scaling=reshard)",
            resharded.clone(),
        );
        let member_missing = Family::<OrdinalLabel, Gauge>::default();
        registry.register(
            "member_missing",
            "1 while the member has been silent for longer than --failover-after: the healthy members build its pipelines",
            member_missing.clone(),
        );
        let member_healthy = Family::<OrdinalLabel, Gauge>::default();
        registry.register(
            "member_healthy",
            "1 when the member is healthy, as in /cluster_healthz",
            member_healthy.clone(),
        );
        let stored_objects = Family::<KindLabel, Gauge>::default();
        registry.register("stored_objects", "Sources and artifacts the leader stores, by kind", stored_objects.clone());
        let stored_bytes = Family::<KindLabel, Gauge>::default();
        registry.register(
            "stored_bytes",
            "Bytes of the sources and artifacts the leader stores, by kind",
            stored_bytes.clone(),
        );
        let unreferenced = Family::<KindLabel, Gauge>::default();
        registry.register(
            "unreferenced_objects",
            "Stored sources and artifacts no pipeline version references, removed after the retention, by kind",
            unreferenced.clone(),
        );
        let disk_used = Family::<OrdinalLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "disk_used_percent",
            "How full each member's build-root volume is, in percent, from its heartbeats",
            disk_used.clone(),
        );
        let data_disk_used = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "leader_data_disk_used_percent",
            "How full the leader's data volume (catalog and artifacts) is, in percent",
            data_disk_used.clone(),
        );
        Metrics {
            registry,
            disk_used,
            data_disk_used,
            stored_objects,
            stored_bytes,
            unreferenced,
            builds_finished,
            build_seconds,
            upload_seconds,
            upload_retries,
            cache_hits,
            cache_misses,
            cache_hit_read_seconds,
            cache_miss_compile_seconds,
            cache_saved_seconds,
            binary_cache_hits,
            binary_cache_saved_seconds,
            crates_done,
            crates_total,
            pipelines,
            queue_depth,
            failover_claims,
            resharded,
            member_missing,
            member_healthy,
        }
    }

    /// Counts a build that just ended.
    pub fn build_finished(&self, record: &Pipeline) {
        self.builds_finished.get_or_create(&StatusLabel { status: record.status.to_string() }).inc();
        if record.status == Status::Success {
            if let Some(ms) = record.compile_ms {
                self.build_seconds.observe(ms as f64 / 1000.0);
            }
            if let Some(ms) = record.upload_ms {
                self.upload_seconds.observe(ms as f64 / 1000.0);
            }
        }
        self.upload_retries.inc_by(u64::from(record.upload_retries));
        if let Some(cache) = &record.cache {
            self.cache_hits.inc_by(cache.hits);
            self.cache_misses.inc_by(cache.misses);
            self.cache_hit_read_seconds.inc_by(cache.hit_read_ms as f64 / 1000.0);
            self.cache_miss_compile_seconds.inc_by(cache.miss_compile_ms as f64 / 1000.0);
            self.cache_saved_seconds.inc_by(cache.saved_ms as f64 / 1000.0);
        }
    }

    /// Counts a pipeline of the missing ordinal `for_ordinal` claimed by `ordinal`.
    pub fn failover_claimed(&self, ordinal: u32, for_ordinal: u32) {
        let label = FailoverLabel { ordinal: ordinal.to_string(), for_ordinal: for_ordinal.to_string() };
        self.failover_claims.get_or_create(&label).inc();
    }

    /// Counts pending pipelines moved by a change of the set's size.
    pub fn resharded(&self, moved: u64) {
        self.resharded.inc_by(moved);
    }

    /// Counts a submission served from the binary cache, which saved `saved_ms`.
    pub fn binary_cache_hit(&self, saved_ms: u64) {
        self.binary_cache_hits.inc();
        self.binary_cache_saved_seconds.inc_by(saved_ms as f64 / 1000.0);
    }

    /// The Prometheus text exposition, with gauges from the catalog's `counts`, the
    /// artifact store's `artifacts` (count, bytes) and `health`.
    pub fn render(
        &self,
        counts: &Counts,
        artifacts: (u64, u64),
        data_disk_used: Option<f64>,
        health: &ClusterHealth,
    ) -> String {
        self.pipelines.clear();
        for (status, count) in &counts.by_status {
            self.pipelines.get_or_create(&StatusLabel { status: status.to_string() }).set(*count as i64);
        }
        self.queue_depth.clear();
        self.member_healthy.clear();
        self.member_missing.clear();
        self.disk_used.clear();
        self.crates_done.clear();
        self.crates_total.clear();
        for member in &health.members {
            let label = OrdinalLabel { ordinal: member.ordinal.to_string() };
            let depth = counts.pending_by_ordinal.get(&member.ordinal).copied().unwrap_or(0);
            self.queue_depth.get_or_create(&label).set(depth as i64);
            self.member_healthy.get_or_create(&label).set(i64::from(member.healthy));
            self.member_missing.get_or_create(&label).set(i64::from(member.missing));
            if let Some(used) = member.disk_used_percent {
                self.disk_used.get_or_create(&label).set(used);
            }
            let building = member.building.map_or((0, 0), |b| (b.crates_done, b.crates_total));
            self.crates_done.get_or_create(&label).set(i64::from(building.0));
            self.crates_total.get_or_create(&label).set(i64::from(building.1));
        }
        self.data_disk_used.set(data_disk_used.unwrap_or(0.0));
        let kind = |kind: &str| KindLabel { kind: kind.to_owned() };
        self.stored_objects.get_or_create(&kind("source")).set(counts.sources as i64);
        self.stored_bytes.get_or_create(&kind("source")).set(counts.source_bytes as i64);
        self.stored_objects.get_or_create(&kind("artifact")).set(artifacts.0 as i64);
        self.stored_bytes.get_or_create(&kind("artifact")).set(artifacts.1 as i64);
        for (name, count) in &counts.unreferenced {
            self.unreferenced.get_or_create(&kind(name)).set(*count as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encoding into a String");
        text
    }
}
