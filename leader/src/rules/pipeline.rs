//! The pipeline record and its life, as plain data: which ordinal builds it, and
//! what a new version, a claim, a requeue, a cancellation or the loss of its
//! member does to it. Reports and uploads under a claim are `claims.rs`'s, the
//! binary cache's part `binary_cache.rs`'s.

use kiln_core::api::{self, CacheFigures, Status};
use kiln_core::cluster::{ClaimKey, Figures};
use serde::{Deserialize, Serialize};

use super::sharding::{Sharding, assigned_ordinal};

/// One pipeline as the leader keeps it: the catalog stores this type (in a
/// versioned envelope, see `records.rs`), and the API shows it as
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
    /// For a `success`: the binary cache's key of this build (`binary_key` in `binary_cache.rs`), when
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
    /// The ordinal that holds this version's claim, or built it, when that is not
    /// `worker`: another member covered for a missing one (failover). None when
    /// its own ordinal builds it.
    #[serde(default)]
    pub built_by: Option<u32>,
    /// The build profile of this version (a known one, checked at submission).
    /// None in a record stored before profiles were per pipeline: the farm's.
    #[serde(default)]
    pub profile: Option<String>,
}

/// How many of its member's restarts a version's builds may cause.
pub const MAX_MEMBER_LOSSES: u32 = 3;

/// Events a record keeps; older ones are dropped first.
pub const HISTORY_LEN: usize = 32;

/// A binary received under a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    pub attempt: u64,
    pub sha256: String,
    pub size: u64,
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
            built_by: p.built_by,
            profile: p.profile.clone(),
        }
    }
}

impl Pipeline {
    /// A new pipeline, version 1, built in `profile`, waiting for its worker.
    pub fn new(id: u64, name: &str, source_sha256: &str, profile: &str, workers: u32, now_ms: u64) -> Pipeline {
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
            history: vec![api::HistoryEvent { at_ms: now_ms, event: format!("submitted: version 1 ({profile})") }],
            binary_key: None,
            binary_cache_hit: None,
            members_lost: 0,
            built_by: None,
            profile: Some(profile.to_owned()),
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

    /// A new version, of `source_sha256` in `profile`, waiting for its worker.
    pub fn new_version(&mut self, source_sha256: String, profile: &str, now_ms: u64) {
        self.version += 1;
        self.source_sha256 = source_sha256;
        self.profile = Some(profile.to_owned());
        self.reset_build(now_ms);
        self.note(now_ms, format!("submitted: version {} ({profile})", self.version));
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
        self.built_by = None;
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
        self.built_by = None;
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

    /// The set now has `workers` members, spread by `sharding`: a pending
    /// pipeline whose ordinal changes moves to its new one, saying so in its
    /// history. Returns whether it moved. A build in flight finishes where it is.
    pub fn reshard(&mut self, sharding: Sharding, workers: u32, now_ms: u64) -> bool {
        let to = sharding.ordinal(self.id, workers);
        if self.status != Status::Pending || to == self.worker {
            return false;
        }
        let from = std::mem::replace(&mut self.worker, to);
        self.updated_at_ms = now_ms;
        self.note(
            now_ms,
            format!("moved from ordinal {from} to ordinal {to}: the set has {workers} members now (resharding)"),
        );
        true
    }

    /// Hands the pipeline to member `by`, its own ordinal or one covering for it
    /// (failover): the claim that member must quote.
    pub fn claim(&mut self, by: u32, now_ms: u64) -> ClaimKey {
        self.status = Status::Compiling;
        self.attempt += 1;
        self.uploaded = None;
        self.started_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.built_by = (by != self.worker).then_some(by);
        let event = match self.built_by {
            Some(by) => {
                format!("claimed by ordinal {by} for ordinal {} (failover, attempt {})", self.worker, self.attempt)
            }
            None => format!("claimed by ordinal {} (attempt {})", self.worker, self.attempt),
        };
        self.note(now_ms, event);
        self.claim_key()
    }

    /// The ordinal that holds the current claim (or built the version): its own,
    /// or the one that covered for it.
    pub fn holder(&self) -> u32 {
        self.built_by.unwrap_or(self.worker)
    }

    /// The ordinal whose queue indexes the record: a build in flight is its
    /// holder's (a member's restart finds every build it held), anything else its
    /// own ordinal's.
    pub fn queue_ordinal(&self) -> u32 {
        if self.status.in_flight() { self.holder() } else { self.worker }
    }

    pub fn claim_key(&self) -> ClaimKey {
        ClaimKey { pipeline_id: self.id, version: self.version, attempt: self.attempt }
    }

    /// Whether `claim` is the build the catalog is waiting for.
    pub fn is_current(&self, claim: &ClaimKey) -> bool {
        self.status.in_flight() && self.claim_key() == *claim
    }

    /// Ends the build: its figures, its history event, its end time.
    pub(super) fn finish(&mut self, figures: Figures, now_ms: u64) {
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
pub(super) fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    let end = (0..=line.len().min(200)).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
    &line[..end]
}
