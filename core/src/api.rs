//! The REST types of the leader's `/v0` API, shared by the leader (which serves
//! them) and every client (the `kiln` commands, the tests, the benchmarks).
//!
//! These are the API's shape only. The leader keeps its own record type in its
//! catalog and converts to [`PipelineRecord`] at the edge, so the database and the
//! API can change separately.

use serde::{Deserialize, Serialize};

/// The header that carries an artifact's SHA-256 on `GET /v0/pipelines/{id}/binary`.
pub const SHA256_HEADER: &str = "x-kiln-sha256";

/// Where a pipeline is in its life. `pending → compiling → uploading → success`, or
/// one of the two error statuses, or `cancelled` (`kiln cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Compiling,
    Uploading,
    Success,
    CompileError,
    SystemError,
    Cancelled,
}

impl Status {
    /// Every status. The catalog's indexes store a status as its position here, so
    /// a new status goes at the end.
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Compiling,
        Status::Uploading,
        Status::Success,
        Status::CompileError,
        Status::SystemError,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Compiling => "compiling",
            Status::Uploading => "uploading",
            Status::Success => "success",
            Status::CompileError => "compile_error",
            Status::SystemError => "system_error",
            Status::Cancelled => "cancelled",
        }
    }

    /// A worker holds the pipeline: it is being built or uploaded.
    pub fn in_flight(self) -> bool {
        matches!(self, Status::Compiling | Status::Uploading)
    }

    /// The build has ended, one way or the other.
    pub fn finished(self) -> bool {
        matches!(self, Status::Success | Status::CompileError | Status::SystemError | Status::Cancelled)
    }

    /// A user may stop it: it waits for a worker or is being built.
    pub fn cancellable(self) -> bool {
        matches!(self, Status::Pending | Status::Compiling | Status::Uploading)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The sccache figures of one build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFigures {
    pub enabled: bool,
    pub hits: u64,
    pub misses: u64,
    pub non_cacheable: u64,
    /// Time sccache spent serving hits from the store.
    #[serde(default)]
    pub hit_read_ms: u64,
    /// Time sccache spent compiling misses (and writing them to the store).
    #[serde(default)]
    pub miss_compile_ms: u64,
    /// Compile time the hits saved: what each of those compilations cost when it
    /// was a miss (on whichever worker), as recorded with its cache entry.
    #[serde(default)]
    pub saved_ms: u64,
    /// Hits whose entry has no recorded cost, so they are not in `saved_ms`
    /// (entries stored before costs were recorded, or by a member with
    /// `--sandbox=off`, whose cache does not pass the gateway).
    #[serde(default)]
    pub hits_without_cost: u64,
    /// The share of the build's compile time that the cache served, in percent:
    /// `saved_ms / (saved_ms + miss_compile_ms)`; 0 with nothing compiled.
    #[serde(default)]
    pub time_from_cache_percent: u32,
    /// Why the cache was not used, or anything odd about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl CacheFigures {
    /// The compile time the cache served (`saved_ms`) as a percentage of the
    /// compile time the build would have taken without it (`saved_ms` plus the
    /// time spent compiling misses).
    pub fn percent_from_cache(saved_ms: u64, miss_compile_ms: u64) -> u32 {
        let whole = u128::from(saved_ms) + u128::from(miss_compile_ms);
        (u128::from(saved_ms) * 100).checked_div(whole).map_or(0, |p| p as u32)
    }
}

/// One pipeline, as `GET /v0/pipelines/{key}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub id: u64,
    pub name: String,
    pub version: u64,
    pub status: Status,
    /// The ordinal that builds it: `id % N`.
    pub worker: u32,
    pub source_sha256: String,
    pub binary_sha256: Option<String>,
    pub binary_size: Option<u64>,
    pub error: Option<String>,
    /// How many times this version was handed to a worker. 1 for a build that went
    /// through without its worker restarting.
    pub attempt: u64,
    pub cache: Option<CacheFigures>,
    pub created_at_ms: u64,
    /// When this version was submitted.
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub updated_at_ms: u64,
    pub compile_ms: Option<u64>,
    pub upload_ms: Option<u64>,
    pub upload_retries: u32,
    /// The fingerprint of the dependency set it was built with.
    #[serde(default)]
    pub depset: Option<String>,
    /// Set while a version that had succeeded is built again because its stored
    /// binary failed its hash: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilding: Option<String>,
    /// What happened to the pipeline (submissions, claims, requeues and why, the
    /// end of each build), oldest first; the latest events only.
    #[serde(default)]
    pub history: Vec<HistoryEvent>,
    /// While compiling: crates done / crates to build, as its worker last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Set when this version's binary came from the leader's binary cache: the
    /// same source, dependency set and build settings were built before, by the
    /// pipeline version named here, so nothing was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_cache_hit: Option<BinaryCacheHit>,
    /// The build profile this version is built in (none: the farm's, for a
    /// record stored before profiles were per pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Set when another ordinal holds or built this version because `worker` was
    /// missing: "built by ordinal `built_by` for ordinal `worker` (failover)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_by: Option<u32>,
}

impl PipelineRecord {
    /// Who builds it, in words: "ordinal 2", or "ordinal 1 for ordinal 2
    /// (failover)" when another member covers for its own.
    pub fn builder(&self) -> String {
        match self.built_by {
            Some(by) => format!("ordinal {by} for ordinal {} (failover)", self.worker),
            None => format!("ordinal {}", self.worker),
        }
    }
}

/// Where a binary served from the binary cache was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryCacheHit {
    pub pipeline_id: u64,
    pub version: u64,
    /// The compile time of that build: what this submission did not spend.
    pub saved_ms: u64,
}

/// How far a build has come: the program's crates cargo has finished, of all the
/// program's crates (its operators and its binary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub crates_done: u32,
    pub crates_total: u32,
}

impl Progress {
    /// Done as a share of the total, 0 to 100.
    pub fn percent(self) -> u32 {
        (u64::from(self.crates_done.min(self.crates_total)) * 100)
            .checked_div(u64::from(self.crates_total))
            .map_or(0, |p| p as u32)
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} crates", self.crates_done, self.crates_total)
    }
}

/// One event of a pipeline's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at_ms: u64,
    pub event: String,
}

/// How a submission changed the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A program as `POST /v0/pipelines` takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubmitRequest {
    pub name: String,
    pub files: Vec<SubmitFile>,
    /// The build profile (one of [`crate::profile::PROFILES`]); the farm's when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubmitFile {
    pub path: String,
    pub content_base64: String,
    #[serde(default)]
    pub executable: bool,
}

/// What `POST /v0/pipelines` answers.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubmitResponse {
    pub change: Change,
    pub pipeline: PipelineRecord,
}

/// What a CI job needs to share the farm's compile cache, as `GET /v0/cache-settings`
/// answers it (`kiln ci-env --leader`). Never credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CacheSettings {
    /// The S3 bucket of the shared cache; none when each member has a local cache
    /// (then a CI job cannot share it).
    pub bucket: Option<String>,
    pub region: String,
    pub key_prefix: String,
    pub endpoint: Option<String>,
    pub use_ssl: bool,
    pub server_side_encryption: bool,
    /// The absolute path every member builds in; a CI job builds there too.
    pub build_root: String,
    /// The cargo profile of the farm's builds.
    pub profile: String,
    /// The fingerprint of the farm's dependency set.
    pub depset: String,
}

/// The body of every error answer of the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong and how to fix it, in a sentence.
    pub error: String,
    /// A stable, machine-readable name of the kind of error.
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_from_cache_is_saved_time_over_the_time_without_the_cache() {
        assert_eq!(CacheFigures::percent_from_cache(0, 0), 0);
        assert_eq!(CacheFigures::percent_from_cache(29_000, 6_400), 81);
        assert_eq!(CacheFigures::percent_from_cache(5, 0), 100);
        assert_eq!(CacheFigures::percent_from_cache(u64::MAX, u64::MAX), 50, "no overflow on hostile figures");
    }

    #[test]
    fn statuses_read_as_they_are_written() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        }
    }
}
