//! The leader's rules, as plain types and functions: pipeline records, which ordinal
//! builds what, and which status transitions a worker may report. Nothing here knows
//! about storage or the network, so every rule is tested without either.

use serde::{Deserialize, Serialize};

/// Where a pipeline is in its life. `pending → compiling → uploading → success`, or
/// one of the two error statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Compiling,
    Uploading,
    Success,
    CompileError,
    SystemError,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Compiling,
        Status::Uploading,
        Status::Success,
        Status::CompileError,
        Status::SystemError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Compiling => "compiling",
            Status::Uploading => "uploading",
            Status::Success => "success",
            Status::CompileError => "compile_error",
            Status::SystemError => "system_error",
        }
    }

    /// A worker holds the pipeline: it is being built or uploaded.
    pub fn in_flight(self) -> bool {
        matches!(self, Status::Compiling | Status::Uploading)
    }

    /// The build has ended, one way or the other.
    pub fn finished(self) -> bool {
        matches!(self, Status::Success | Status::CompileError | Status::SystemError)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ordinal that builds pipeline `id` in a set of `workers` members.
pub fn assigned_ordinal(id: u64, workers: u32) -> u32 {
    // The remainder is below `workers`, a u32.
    (id % u64::from(workers)) as u32
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
    /// The share of the build's compiler-call time that the cache served, in percent:
    /// `hit_read_ms / (hit_read_ms + miss_compile_ms)`; 0 with no calls.
    #[serde(default)]
    pub time_from_cache_percent: u32,
    /// Why the cache was not used, or anything odd about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One pipeline as the catalog keeps it.
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
}

/// A claim on one build: only the holder of the current claim may report on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimKey {
    pub pipeline_id: u64,
    pub version: u64,
    pub attempt: u64,
}

/// What a worker reports about its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Compiling,
    Uploading { compile_ms: u64, cache: CacheFigures },
    Success { binary_sha256: String, binary_size: u64, figures: Figures },
    CompileError { error: String, figures: Figures },
    SystemError { error: String, figures: Figures },
}

/// Timings and cache figures that come with a build's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub compile_ms: u64,
    pub upload_ms: u64,
    pub upload_retries: u32,
    pub cache: CacheFigures,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    #[error("claim on pipeline {pipeline_id} version {version} attempt {attempt} is no longer current: drop the build")]
    StaleClaim { pipeline_id: u64, version: u64, attempt: u64 },
    #[error("pipeline {id} cannot go from {from} to {to}")]
    BadTransition { id: u64, from: Status, to: Status },
}

impl CacheFigures {
    /// `hit_read_ms` as a percentage of all compiler-call time.
    pub fn percent_from_cache(hit_read_ms: u64, miss_compile_ms: u64) -> u32 {
        (hit_read_ms * 100).checked_div(hit_read_ms + miss_compile_ms).map_or(0, |p| p as u32)
    }
}

impl Report {
    pub fn status(&self) -> Status {
        match self {
            Report::Compiling => Status::Compiling,
            Report::Uploading { .. } => Status::Uploading,
            Report::Success { .. } => Status::Success,
            Report::CompileError { .. } => Status::CompileError,
            Report::SystemError { .. } => Status::SystemError,
        }
    }
}

impl PipelineRecord {
    /// A new pipeline, or a new version of one, waiting for its worker.
    pub fn new_version(&mut self, source_sha256: String, now_ms: u64) {
        self.version += 1;
        self.source_sha256 = source_sha256;
        self.reset_build(now_ms);
    }

    /// Back to `pending` for the same version (a retry, or its worker restarted).
    pub fn requeue(&mut self, now_ms: u64) {
        self.status = Status::Pending;
        self.started_at_ms = None;
        self.updated_at_ms = now_ms;
    }

    fn reset_build(&mut self, now_ms: u64) {
        self.status = Status::Pending;
        self.binary_sha256 = None;
        self.binary_size = None;
        self.error = None;
        self.attempt = 0;
        self.cache = None;
        self.submitted_at_ms = now_ms;
        self.started_at_ms = None;
        self.finished_at_ms = None;
        self.updated_at_ms = now_ms;
        self.compile_ms = None;
        self.upload_ms = None;
        self.upload_retries = 0;
    }

    /// Hands the pipeline to its worker: the claim that worker must quote.
    pub fn claim(&mut self, now_ms: u64) -> ClaimKey {
        self.status = Status::Compiling;
        self.attempt += 1;
        self.started_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.claim_key()
    }

    pub fn claim_key(&self) -> ClaimKey {
        ClaimKey { pipeline_id: self.id, version: self.version, attempt: self.attempt }
    }

    /// Whether `claim` is the build the catalog is waiting for.
    pub fn is_current(&self, claim: &ClaimKey) -> bool {
        self.status.in_flight() && self.claim_key() == *claim
    }

    /// Applies a worker's report. Only the current claim may report, and only forward.
    pub fn apply(&mut self, claim: &ClaimKey, report: Report, now_ms: u64) -> Result<(), ReportRefused> {
        if !self.is_current(claim) {
            return Err(ReportRefused::StaleClaim {
                pipeline_id: claim.pipeline_id,
                version: claim.version,
                attempt: claim.attempt,
            });
        }
        let to = report.status();
        let allowed = match (self.status, to) {
            (Status::Compiling, _) => true,
            (Status::Uploading, to) => to != Status::Compiling && to != Status::CompileError,
            _ => false,
        };
        if !allowed {
            return Err(ReportRefused::BadTransition { id: self.id, from: self.status, to });
        }
        self.status = to;
        self.updated_at_ms = now_ms;
        match report {
            Report::Compiling => {}
            Report::Uploading { compile_ms, cache } => {
                self.compile_ms = Some(compile_ms);
                self.cache = Some(cache);
            }
            Report::Success { binary_sha256, binary_size, figures } => {
                self.binary_sha256 = Some(binary_sha256);
                self.binary_size = Some(binary_size);
                self.finish(figures, now_ms);
            }
            Report::CompileError { error, figures } | Report::SystemError { error, figures } => {
                self.error = Some(error);
                self.finish(figures, now_ms);
            }
        }
        Ok(())
    }

    fn finish(&mut self, figures: Figures, now_ms: u64) {
        self.finished_at_ms = Some(now_ms);
        self.compile_ms = Some(figures.compile_ms);
        self.upload_ms = Some(figures.upload_ms);
        self.upload_retries = figures.upload_retries;
        self.cache = Some(figures.cache);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: u64) -> PipelineRecord {
        PipelineRecord {
            id,
            name: format!("p{id}"),
            version: 1,
            status: Status::Pending,
            worker: assigned_ordinal(id, 3),
            source_sha256: "s".into(),
            binary_sha256: None,
            binary_size: None,
            error: None,
            attempt: 0,
            cache: None,
            created_at_ms: 0,
            submitted_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            updated_at_ms: 0,
            compile_ms: None,
            upload_ms: None,
            upload_retries: 0,
        }
    }

    fn success() -> Report {
        Report::Success { binary_sha256: "ab".into(), binary_size: 3, figures: Figures::default() }
    }

    #[test]
    fn ordinals_follow_the_modulus() {
        assert_eq!(assigned_ordinal(1, 3), 1);
        assert_eq!(assigned_ordinal(3, 3), 0);
        assert_eq!(assigned_ordinal(7, 1), 0);
    }

    #[test]
    fn a_build_goes_forward_under_its_claim() {
        let mut r = record(4);
        let claim = r.claim(10);
        assert_eq!((r.status, r.attempt), (Status::Compiling, 1));
        r.apply(&claim, Report::Uploading { compile_ms: 5, cache: CacheFigures::default() }, 11).unwrap();
        r.apply(&claim, success(), 12).unwrap();
        assert_eq!(r.status, Status::Success);
        assert_eq!(r.binary_sha256.as_deref(), Some("ab"));
        assert_eq!(r.finished_at_ms, Some(12));
        let again = r.apply(&claim, success(), 13);
        assert!(matches!(again, Err(ReportRefused::StaleClaim { .. })), "a finished build takes no more reports");
    }

    #[test]
    fn a_new_version_or_a_requeue_makes_old_claims_stale() {
        let mut r = record(2);
        let first = r.claim(1);
        r.requeue(2);
        let second = r.claim(3);
        assert_eq!(second.attempt, 2);
        assert!(matches!(r.apply(&first, success(), 4), Err(ReportRefused::StaleClaim { .. })));
        r.new_version("t".into(), 5);
        assert_eq!((r.version, r.status, r.attempt), (2, Status::Pending, 0));
        assert!(matches!(r.apply(&second, success(), 6), Err(ReportRefused::StaleClaim { .. })));
    }

    #[test]
    fn no_going_backwards() {
        let mut r = record(1);
        let claim = r.claim(1);
        r.apply(&claim, Report::Uploading { compile_ms: 1, cache: CacheFigures::default() }, 2).unwrap();
        let back = r.apply(&claim, Report::Compiling, 3);
        assert!(matches!(back, Err(ReportRefused::BadTransition { .. })));
    }
}
