//! The leader's rules, as plain types and functions: pipeline records, which ordinal
//! builds what, and which status transitions a worker may report. Nothing here knows
//! about storage or the network, so every rule is tested without either.

use kiln_core::api::{self, CacheFigures, Status};
pub use kiln_core::cluster::{ClaimKey, Figures};
use serde::{Deserialize, Serialize};

/// The ordinal that builds pipeline `id` in a set of `workers` members.
pub fn assigned_ordinal(id: u64, workers: u32) -> u32 {
    // The remainder is below `workers`, a u32.
    (id % u64::from(workers)) as u32
}

/// One pipeline as the leader keeps it: the catalog stores this type (in a
/// versioned envelope, see `catalog.rs`), and the API shows it as
/// [`api::PipelineRecord`]. A field added here needs `#[serde(default)]`, so that
/// records written before it still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
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
    /// The binary uploaded under the current claim, as the leader measured it: the
    /// only one a `success` of that claim may name.
    #[serde(default)]
    pub uploaded: Option<Uploaded>,
    /// The fingerprint of the dependency set the current version was handed out
    /// with (the leader's; a member with another gets no work).
    #[serde(default)]
    pub depset: Option<String>,
    /// Why the current version is being built again although it had succeeded
    /// (its artifact failed its hash): a download answers "being rebuilt".
    #[serde(default)]
    pub rebuilding: Option<String>,
    /// What happened to the pipeline, oldest first, at most [`HISTORY_LEN`] events.
    #[serde(default)]
    pub history: Vec<api::HistoryEvent>,
    /// For a `success`: the binary cache's key of this build ([`binary_key`]), when
    /// its worker said what it was built with. The catalog indexes the binary by it.
    #[serde(default)]
    pub binary_key: Option<String>,
    /// This version's binary came from the binary cache, built by that version.
    #[serde(default)]
    pub binary_cache_hit: Option<api::BinaryCacheHit>,
    /// How many times this version's build was in flight when its member
    /// restarted (a build that kills its member, its pod); at
    /// [`MAX_MEMBER_LOSSES`] the version ends `system_error` rather than going back
    /// to the queue for good.
    #[serde(default)]
    pub members_lost: u32,
}

/// How many of its member's restarts a version's builds may cause.
pub const MAX_MEMBER_LOSSES: u32 = 3;

/// The binary cache's key: everything that decides a binary. The program's source
/// checksum, the dependency set's fingerprint, and the build settings fingerprint
/// a worker reports (toolchain `rustc -vV`, which names the target, the profile,
/// the build root, cargo's home); and, for a binary whose build ran code of its
/// submitter, the one pipeline it may be served to (`only_for`): such a build
/// read compile-cache entries only its own pipeline's builds made. Each part is
/// length-prefixed, so no two different tuples hash alike.
pub fn binary_key(source_sha256: &str, depset: &str, build_settings: &str, only_for: Option<u64>) -> String {
    let scope = only_for.map(|id| format!("pipeline {id}")).unwrap_or_default();
    hex::encode(kiln_core::digest::sha256_of_parts([source_sha256, depset, build_settings, &scope]))
}

/// A binary the binary cache holds: what a submission of the same key is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedBinary {
    pub sha256: String,
    pub size: u64,
    pub pipeline_id: u64,
    pub version: u64,
    /// That build's compile time.
    pub compile_ms: u64,
}

/// Events a record keeps; older ones are dropped first.
pub const HISTORY_LEN: usize = 32;

/// A binary received under a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    pub attempt: u64,
    pub sha256: String,
    pub size: u64,
}

/// What a worker reports about its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Compiling,
    Uploading {
        compile_ms: u64,
        cache: CacheFigures,
    },
    /// `build_settings`: the worker's build settings fingerprint (empty: the
    /// binary is not offered to the binary cache).
    Success {
        binary_sha256: String,
        binary_size: u64,
        figures: Figures,
        build_settings: String,
        /// The build ran code of its submitter: its binary is served by the binary
        /// cache to this pipeline only.
        ran_submitted_code: bool,
    },
    CompileError {
        error: String,
        figures: Figures,
    },
    SystemError {
        error: String,
        figures: Figures,
    },
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    #[error("claim on pipeline {pipeline_id} version {version} attempt {attempt} is no longer current: drop the build")]
    StaleClaim { pipeline_id: u64, version: u64, attempt: u64 },
    #[error("pipeline {id} cannot go from {from} to {to}")]
    BadTransition { id: u64, from: Status, to: Status },
    #[error(
        "pipeline {id} is claimed by ordinal {holder}'s current incarnation, not by this member (ordinal {ordinal})"
    )]
    NotTheHolder { id: u64, holder: u32, ordinal: u32 },
    #[error("pipeline {id}: success must name the binary uploaded under this claim ({uploaded}), not {named}")]
    NotUploaded { id: u64, named: String, uploaded: String },
}

/// Why a cancellation was refused: the build has already ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pipeline {id} version {version} has already ended ({status}): there is nothing to cancel; submit it again to rebuild"
)]
pub struct NotCancellable {
    pub id: u64,
    pub version: u64,
    pub status: Status,
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

impl From<&Pipeline> for api::PipelineRecord {
    fn from(p: &Pipeline) -> Self {
        api::PipelineRecord {
            id: p.id,
            name: p.name.clone(),
            version: p.version,
            status: p.status,
            worker: p.worker,
            source_sha256: p.source_sha256.clone(),
            binary_sha256: p.binary_sha256.clone(),
            binary_size: p.binary_size,
            error: p.error.clone(),
            attempt: p.attempt,
            cache: p.cache.clone(),
            created_at_ms: p.created_at_ms,
            submitted_at_ms: p.submitted_at_ms,
            started_at_ms: p.started_at_ms,
            finished_at_ms: p.finished_at_ms,
            updated_at_ms: p.updated_at_ms,
            compile_ms: p.compile_ms,
            upload_ms: p.upload_ms,
            upload_retries: p.upload_retries,
            depset: p.depset.clone(),
            rebuilding: p.rebuilding.clone(),
            history: p.history.clone(),
            progress: None,
            binary_cache_hit: p.binary_cache_hit.clone(),
        }
    }
}

impl Pipeline {
    /// A new pipeline, version 1, waiting for its worker.
    pub fn new(id: u64, name: &str, source_sha256: &str, workers: u32, now_ms: u64) -> Pipeline {
        Pipeline {
            id,
            name: name.to_owned(),
            version: 1,
            status: Status::Pending,
            worker: assigned_ordinal(id, workers),
            source_sha256: source_sha256.to_owned(),
            binary_sha256: None,
            binary_size: None,
            error: None,
            attempt: 0,
            cache: None,
            created_at_ms: now_ms,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            updated_at_ms: now_ms,
            compile_ms: None,
            upload_ms: None,
            upload_retries: 0,
            uploaded: None,
            depset: None,
            rebuilding: None,
            history: vec![api::HistoryEvent { at_ms: now_ms, event: "submitted: version 1".into() }],
            binary_key: None,
            binary_cache_hit: None,
            members_lost: 0,
        }
    }

    /// Adds `event` to the history, dropping the oldest beyond [`HISTORY_LEN`].
    pub fn note(&mut self, at_ms: u64, event: String) {
        if self.history.len() >= HISTORY_LEN {
            self.history.drain(..=self.history.len() - HISTORY_LEN);
        }
        self.history.push(api::HistoryEvent { at_ms, event });
    }

    pub fn to_api(&self) -> api::PipelineRecord {
        self.into()
    }

    /// A new pipeline, or a new version of one, waiting for its worker.
    pub fn new_version(&mut self, source_sha256: String, now_ms: u64) {
        self.version += 1;
        self.source_sha256 = source_sha256;
        self.reset_build(now_ms);
        self.note(now_ms, format!("submitted: version {}", self.version));
    }

    /// Back to `pending` for the same version and ordinal (a retry, its worker
    /// restarted, its lease ran out), with the reason in the history. A version
    /// submitted again after a `system_error` starts counting member losses anew.
    pub fn requeue(&mut self, now_ms: u64, reason: &str) {
        if self.status == Status::SystemError {
            self.members_lost = 0;
        }
        let from = self.status;
        self.status = Status::Pending;
        self.started_at_ms = None;
        self.updated_at_ms = now_ms;
        self.note(now_ms, format!("back to pending from {from} (attempt {}): {reason}", self.attempt));
    }

    /// The stored binary failed its hash: build this version again. Until then a
    /// download says it is being rebuilt.
    pub fn rebuild(&mut self, now_ms: u64, reason: String) {
        self.requeue(now_ms, &reason);
        self.binary_sha256 = None;
        self.binary_size = None;
        self.finished_at_ms = None;
        self.uploaded = None;
        self.binary_key = None;
        self.binary_cache_hit = None;
        self.rebuilding = Some(reason);
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
        self.uploaded = None;
        self.rebuilding = None;
        self.binary_key = None;
        self.binary_cache_hit = None;
        self.members_lost = 0;
    }

    /// The member building this version restarted (`ordinal`, a new incarnation):
    /// back to `pending`, unless its builds have now stopped their member
    /// [`MAX_MEMBER_LOSSES`] times, when it ends `system_error` saying so (a
    /// submission of the same source tries again).
    pub fn member_lost(&mut self, ordinal: u32, now_ms: u64) {
        self.members_lost += 1;
        let reason = format!("its worker restarted (ordinal {ordinal} has a new incarnation)");
        if self.members_lost < MAX_MEMBER_LOSSES {
            self.requeue(now_ms, &reason);
            return;
        }
        self.status = Status::SystemError;
        self.error = Some(format!(
            "its builds stopped their member {} times ({reason} while building it each time): it is not built again until it is submitted again",
            self.members_lost
        ));
        self.updated_at_ms = now_ms;
        self.uploaded = None;
        self.finish(Figures::default(), now_ms);
    }

    /// This version is served `cached` from the binary cache under `key`: it ends
    /// `success` at once, without a claim or a build.
    pub fn serve_cached(&mut self, key: String, depset: &str, cached: &CachedBinary, now_ms: u64) {
        self.status = Status::Success;
        self.binary_sha256 = Some(cached.sha256.clone());
        self.binary_size = Some(cached.size);
        self.error = None;
        self.depset = Some(depset.to_owned());
        self.started_at_ms = Some(now_ms);
        self.finished_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.compile_ms = Some(0);
        self.upload_ms = Some(0);
        self.binary_key = Some(key);
        self.binary_cache_hit = Some(api::BinaryCacheHit {
            pipeline_id: cached.pipeline_id,
            version: cached.version,
            saved_ms: cached.compile_ms,
        });
        self.note(
            now_ms,
            format!(
                "success from the binary cache: built before as pipeline {} version {} ({} ms of build saved)",
                cached.pipeline_id, cached.version, cached.compile_ms
            ),
        );
    }

    /// Stops the pipeline where it is, pending or in flight: it ends `cancelled`.
    /// Its worker's claim is no longer current, so the worker's next heartbeat is
    /// told to drop the build (and every report of it is refused).
    pub fn cancel(&mut self, now_ms: u64, why: &str) -> Result<(), NotCancellable> {
        if !self.status.cancellable() {
            return Err(NotCancellable { id: self.id, version: self.version, status: self.status });
        }
        let from = self.status;
        self.status = Status::Cancelled;
        self.error = Some(format!("cancelled {why}"));
        self.finished_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.uploaded = None;
        self.rebuilding = None;
        self.note(now_ms, format!("cancelled while {from} (attempt {}): {why}", self.attempt));
        Ok(())
    }

    /// Hands the pipeline to its worker: the claim that worker must quote.
    pub fn claim(&mut self, now_ms: u64) -> ClaimKey {
        self.status = Status::Compiling;
        self.attempt += 1;
        self.uploaded = None;
        self.started_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.note(now_ms, format!("claimed by ordinal {} (attempt {})", self.worker, self.attempt));
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
        if let Report::Success { binary_sha256, .. } = &report {
            let uploaded = self.uploaded.as_ref().filter(|u| u.attempt == claim.attempt);
            if uploaded.is_none_or(|u| &u.sha256 != binary_sha256) {
                return Err(ReportRefused::NotUploaded {
                    id: self.id,
                    named: binary_sha256.clone(),
                    uploaded: uploaded.map_or_else(|| "none yet".to_owned(), |u| u.sha256.clone()),
                });
            }
        }
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
            Report::Success { binary_sha256, figures, build_settings, ran_submitted_code, .. } => {
                // The size is the leader's own measure, from the upload.
                let size = self.uploaded.as_ref().map_or(0, |u| u.size);
                self.binary_sha256 = Some(binary_sha256);
                self.binary_size = Some(size);
                self.binary_key = match (&self.depset, build_settings.is_empty()) {
                    (Some(depset), false) => Some(binary_key(
                        &self.source_sha256,
                        depset,
                        &build_settings,
                        ran_submitted_code.then_some(self.id),
                    )),
                    _ => None,
                };
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
        self.rebuilding = None;
        let ended = match &self.error {
            Some(error) => format!("{} (attempt {}): {}", self.status, self.attempt, first_line(error)),
            None => format!("{} (attempt {})", self.status, self.attempt),
        };
        self.note(now_ms, ended);
        self.finished_at_ms = Some(now_ms);
        self.compile_ms = Some(figures.compile_ms);
        self.upload_ms = Some(figures.upload_ms);
        self.upload_retries = figures.upload_retries;
        self.cache = Some(figures.cache);
    }
}

/// The first line of `text`, at most 200 bytes: enough for a history event.
fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    let end = (0..=line.len().min(200)).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
    &line[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: u64) -> Pipeline {
        Pipeline::new(id, &format!("p{id}"), "s", 3, 0)
    }

    fn success() -> Report {
        Report::Success {
            binary_sha256: "ab".into(),
            binary_size: 3,
            figures: Figures::default(),
            build_settings: "settings".into(),
            ran_submitted_code: false,
        }
    }

    /// A build that kills its member (its pod) three times ends `system_error`
    /// with that reason instead of going back to the queue for ever; submitting it
    /// again tries again, and a new version starts counting afresh.
    #[test]
    fn a_version_whose_builds_keep_killing_their_member_ends_system_error() {
        let mut r = record(4);
        for lost in 1..MAX_MEMBER_LOSSES {
            r.claim(lost as u64);
            r.status = Status::Compiling;
            r.member_lost(1, 10 + lost as u64);
            assert_eq!(r.status, Status::Pending, "loss {lost}");
        }
        r.claim(20);
        r.status = Status::Compiling;
        r.member_lost(1, 21);
        assert_eq!(r.status, Status::SystemError);
        let error = r.error.clone().unwrap();
        assert!(error.contains("stopped their member 3 times") && error.contains("ordinal 1"), "{error}");
        assert_eq!(r.finished_at_ms, Some(21));
        r.requeue(22, "submitted again after it ended system_error");
        assert_eq!((r.status, r.members_lost), (Status::Pending, 0));
        r.members_lost = 2;
        r.new_version("t".into(), 23);
        assert_eq!(r.members_lost, 0);
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
        let refused = r.apply(&claim, success(), 12);
        assert!(matches!(refused, Err(ReportRefused::NotUploaded { .. })), "success needs its upload first");
        r.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
        r.apply(&claim, success(), 12).unwrap();
        assert_eq!(r.status, Status::Success);
        assert_eq!(r.binary_sha256.as_deref(), Some("ab"));
        assert_eq!(r.binary_size, Some(7), "the size is the leader's measure, not the report's");
        assert_eq!(r.finished_at_ms, Some(12));
        let again = r.apply(&claim, success(), 13);
        assert!(matches!(again, Err(ReportRefused::StaleClaim { .. })), "a finished build takes no more reports");
    }

    #[test]
    fn a_new_version_or_a_requeue_makes_old_claims_stale() {
        let mut r = record(2);
        let first = r.claim(1);
        r.requeue(2, "a test");
        let second = r.claim(3);
        assert_eq!(second.attempt, 2);
        assert!(matches!(r.apply(&first, success(), 4), Err(ReportRefused::StaleClaim { .. })));
        r.new_version("t".into(), 5);
        assert_eq!((r.version, r.status, r.attempt), (2, Status::Pending, 0));
        assert!(matches!(r.apply(&second, success(), 6), Err(ReportRefused::StaleClaim { .. })));
    }

    #[test]
    fn the_history_keeps_the_latest_events_and_says_why() {
        let mut r = record(5);
        let claim = r.claim(1);
        r.requeue(2, "its lease ran out");
        assert!(r.history.last().unwrap().event.contains("its lease ran out"), "{:?}", r.history);
        for t in 0..100 {
            r.note(t, format!("event {t}"));
        }
        assert_eq!(r.history.len(), HISTORY_LEN);
        assert_eq!(r.history.last().unwrap().event, "event 99");
        let _ = claim;
        assert_eq!(first_line("é".repeat(300).as_str()).len(), 200);
    }

    #[test]
    fn a_cancelled_build_takes_no_more_reports_and_an_ended_one_cannot_be_cancelled() {
        let mut r = record(6);
        let claim = r.claim(1);
        r.cancel(2, "by the API").unwrap();
        assert_eq!(r.status, Status::Cancelled);
        assert!(r.status.finished());
        assert!(matches!(r.apply(&claim, success(), 3), Err(ReportRefused::StaleClaim { .. })));
        let again = r.cancel(4, "by the API").unwrap_err();
        assert!(again.to_string().contains("already ended (cancelled)"), "{again}");
        let mut pending = record(7);
        pending.cancel(1, "by the API").unwrap();
        assert!(pending.history.last().unwrap().event.contains("cancelled while pending"));
    }

    #[test]
    fn a_success_is_keyed_by_source_depset_and_settings_and_a_new_version_forgets_the_key() {
        let mut r = record(8);
        r.depset = Some("set".into());
        let claim = r.claim(1);
        r.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
        r.apply(&claim, success(), 2).unwrap();
        assert_eq!(r.binary_key.as_deref(), Some(binary_key("s", "set", "settings", None).as_str()));
        assert_ne!(
            binary_key("s", "set", "settings", None),
            binary_key("s", "sets", "ettings", None),
            "parts cannot run together"
        );
        assert_ne!(binary_key("s", "set", "settings", None), binary_key("s", "set", "settings", Some(8)));
        let mut own = record(8);
        own.depset = Some("set".into());
        let claim = own.claim(1);
        own.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
        let ran_code = match success() {
            Report::Success { binary_sha256, binary_size, figures, build_settings, .. } => {
                Report::Success { binary_sha256, binary_size, figures, build_settings, ran_submitted_code: true }
            }
            _ => unreachable!(),
        };
        own.apply(&claim, ran_code, 2).unwrap();
        assert_eq!(
            own.binary_key.as_deref(),
            Some(binary_key("s", "set", "settings", Some(8)).as_str()),
            "a build that ran submitted code is keyed for its own pipeline only"
        );
        r.new_version("t".into(), 3);
        assert_eq!((r.binary_key.as_ref(), r.binary_cache_hit.as_ref()), (None, None));
        let cached = CachedBinary { sha256: "cd".into(), size: 9, pipeline_id: 8, version: 1, compile_ms: 500 };
        r.serve_cached("k".into(), "set", &cached, 4);
        assert_eq!((r.status, r.binary_sha256.as_deref(), r.binary_size), (Status::Success, Some("cd"), Some(9)));
        assert_eq!(r.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.saved_ms)), Some((8, 500)));
        assert!(r.history.last().unwrap().event.contains("binary cache"), "{:?}", r.history);
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
