//! What a submission makes of a pipeline: a name the catalog does not know
//! becomes a new pipeline ([`new_pipeline`]); a known name is decided here
//! ([`resubmit`]). Both give a pending version the ordinal the farm's sharding
//! assigns now. The catalog allocates ids, stores sources and looks up the binary
//! cache.

use kiln_core::api::{Change, Status};

use crate::rules::pipeline::Pipeline;

/// A submission as stored: the record, and what the submission changed.
#[derive(Debug)]
pub struct Submitted {
    pub record: Pipeline,
    pub change: Change,
}

/// A new pipeline `id` named `name`, of `source_sha256` in the submitted profile,
/// pending for the ordinal `farm` assigns it.
pub fn new_pipeline(id: u64, name: &str, source_sha256: &str, farm: &Farm<'_>, now_ms: u64) -> Pipeline {
    let mut record = Pipeline::new(id, name, source_sha256, farm.profiles.0, farm.workers, now_ms);
    record.worker = farm.sharding.ordinal(id, farm.workers);
    record
}

/// A submission of `source_sha256` in the submitted profile under the name of
/// `old` (a record stored before profiles were per pipeline was built in the
/// farm's default). Another source or another profile is a new version, pending.
/// The same source in the same profile changes nothing, except that a version
/// that ended `system_error` or `cancelled` goes back to `pending` (the same
/// version, its error cleared): submitting it again is how a user retries it.
/// Whatever is pending goes to the ordinal `farm` assigns now.
pub fn resubmit(old: &Pipeline, source_sha256: &str, farm: &Farm<'_>, now_ms: u64) -> Submitted {
    let (profile, default_profile) = farm.profiles;
    let mut record = old.clone();
    let old_profile = record.profile.as_deref().unwrap_or(default_profile);
    let change = if record.source_sha256 != source_sha256 || old_profile != profile {
        record.new_version(source_sha256.to_owned(), profile, now_ms);
        Change::Updated
    } else if matches!(record.status, Status::SystemError | Status::Cancelled) {
        let reason = format!("submitted again after it ended {}", record.status);
        record.error = None;
        record.finished_at_ms = None;
        record.requeue(now_ms, &reason);
        Change::Updated
    } else {
        Change::Unchanged
    };
    if change == Change::Updated {
        record.worker = farm.sharding.ordinal(record.id, farm.workers);
    }
    Submitted { record, change }
}

/// The farm a submission is stored for.
#[derive(Debug, Clone, Copy)]
pub struct Farm<'a> {
    /// The profile the submission names, and the farm's default (which a record
    /// stored before profiles were per pipeline was built in).
    pub profiles: (&'a str, &'a str),
    /// N, which assigns a new version its ordinal.
    pub workers: u32,
    /// The binary cache: the farm's dependency set and build settings
    /// fingerprints; None when it is off.
    pub binary_cache: Option<(&'a str, &'a str)>,
    /// How pipelines are spread over the N members.
    pub sharding: crate::rules::sharding::Sharding,
}
