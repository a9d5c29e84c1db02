//! The worker's link to its leader, in the worker's own terms: who the member is,
//! a claim on work and the assignment it brings (the program's files), a build's
//! status reports, the upload of its binary, and the heartbeat with its answer.
//!
//! The worker decides everything through [`LeaderLink`] and never sees the wire:
//! `grpc.rs` is the one implementation over the network (and the one place where
//! the worker's messages become protobuf and back), and `fake.rs` a scripted one
//! for the worker's unit tests (after nativelink's worker, whose link to its
//! scheduler sits behind a trait with a fake for tests). A failed call comes back
//! as a [`Failure`], already read by `kiln_core::retry` (transient, permanent,
//! stale or damaged), so every decision about retrying is the worker's and is the
//! same whatever carries the call.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_core::cluster::{ClaimKey, Figures};
use kiln_core::program::ProgramFile;
use kiln_core::retry::Failure;

pub mod grpc;

#[cfg(test)]
pub(crate) mod fake;

/// Who this member is, as every call to the leader says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ordinal: u32,
    /// N as this member was started with.
    pub workers: u32,
    /// Random per process start: a new value tells the leader the member restarted.
    pub incarnation: u64,
    pub version: String,
}

/// One build the leader handed this member, claimed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub claim: ClaimKey,
    /// The pipeline's name.
    pub name: String,
    /// The program, as submitted.
    pub files: Vec<ProgramFile>,
    /// The cargo profile to build it in; empty: this member's own.
    pub profile: String,
}

/// Where a claimed build stands, as the member reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// Built; the binary is on its way.
    Uploading,
    /// Delivered: the leader holds the binary.
    Success,
    /// The program does not compile: the submitter's to fix.
    CompileError,
    /// The farm failed.
    SystemError,
}

/// A binary as the leader will know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryDigest {
    pub sha256: String,
    pub size: u64,
}

/// A status report on a claimed build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub claim: ClaimKey,
    pub status: BuildStatus,
    /// For a compile or system error: what went wrong, in a sentence.
    pub error: String,
    /// The build log, once the build has ended.
    pub log: String,
    /// For a success: the binary, which the leader must already hold.
    pub binary: Option<BinaryDigest>,
    pub figures: Figures,
    /// For a success: what decides the binary besides its program and dependency
    /// set (`builder::settings_fingerprint`); it keys the leader's binary cache.
    pub build_settings: String,
    /// For a success: the build ran code of its submitter, so its binary is served
    /// by the binary cache to its own pipeline only.
    pub ran_submitted_code: bool,
}

impl StatusReport {
    /// A report of `status` with its figures and nothing else.
    pub fn new(claim: ClaimKey, status: BuildStatus, figures: Figures) -> StatusReport {
        StatusReport {
            claim,
            status,
            error: String::new(),
            log: String::new(),
            binary: None,
            figures,
            build_settings: String::new(),
            ran_submitted_code: false,
        }
    }
}

/// A built binary as the worker holds it: a file it opened itself (without
/// following links, after the build's sandbox was gone; see
/// `sandbox::files::open_regular`), read from its start on every attempt. The
/// bytes uploaded are those of the file that was hashed, whatever the path now
/// names.
#[derive(Debug, Clone)]
pub struct Binary {
    file: Arc<std::fs::File>,
    /// Where it was, for messages.
    pub path: PathBuf,
}

impl Binary {
    pub fn new(file: std::fs::File, path: PathBuf) -> Binary {
        Binary { file: Arc::new(file), path }
    }

    /// The file from its first byte (the descriptor is shared, so attempts are
    /// one at a time, as delivery makes them).
    pub fn reader(&self) -> std::io::Result<std::fs::File> {
        use std::io::Seek;
        let mut file = self.file.try_clone()?;
        file.seek(std::io::SeekFrom::Start(0))?;
        Ok(file)
    }
}

/// The upload of a built binary under its claim.
#[derive(Debug, Clone)]
pub struct Upload {
    pub claim: ClaimKey,
    pub digest: BinaryDigest,
    pub binary: Binary,
}

/// The state of the member's compile cache, for `/cluster_healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheState {
    /// False when the configured cache store does not answer.
    pub healthy: bool,
    /// In words: "sccache on local disk", "sccache not found: building without cache"...
    pub message: String,
}

/// How far the build in hand has come: the program's crates cargo has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub crates_done: u32,
    pub crates_total: u32,
}

/// What a member tells the leader every few seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub cache: CacheState,
    /// The build in hand, if any, and how far it has come.
    pub current: Option<(ClaimKey, Progress)>,
    /// Still preparing its build root: not ready to build yet.
    pub preparing: bool,
    /// How builds are isolated, in words.
    pub sandbox: String,
    /// The sandbox cannot be made, and the member refuses to build.
    pub sandbox_unavailable: bool,
    /// The fingerprint of the dependency set the member builds against.
    pub depset: String,
    /// How full the build root's volume is, in percent.
    pub disk_used_percent: f64,
    /// Above the critical watermark even after pruning: why no work is taken.
    pub disk_critical: Option<String>,
    /// The member is stopping and leaving the set (`--on-scaling=reshard`).
    pub leaving: bool,
    /// Its share of the machine's CPUs, in words.
    pub cpus: String,
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The leader's N, for the scaling guard.
    pub leader_workers: u32,
    /// The build in hand is no longer wanted: stop it and drop it.
    pub cancel_current: bool,
}

/// The calls a worker makes to its leader, each on behalf of the member the link
/// was made for.
pub trait LeaderLink: Send + Sync + 'static {
    /// Liveness, identity, the cache's and the disk's state and the build in hand.
    fn heartbeat(&self, beat: Heartbeat) -> impl Future<Output = Result<HeartbeatAnswer, Failure>> + Send;

    /// A long poll for work of this member's ordinal, built against the dependency
    /// set `depset`: an assignment (claimed for this member), or none after a while.
    fn claim(&self, depset: &str) -> impl Future<Output = Result<Option<Assignment>, Failure>> + Send;

    /// A status transition of a claimed build.
    fn report(&self, report: StatusReport) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The binary's bytes, stored by the leader under its SHA-256 if they hash to it.
    fn upload(&self, upload: &Upload) -> impl Future<Output = Result<(), Failure>> + Send;
}
