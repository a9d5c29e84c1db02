//! How a build ended on this worker, before anything is sent to the leader, and
//! what turns an assignment into that result ([`Builds`]): cargo for the real
//! worker (`cargo_builds.rs`), a script in the unit tests. The claim loop decides
//! what each result means for the leader without knowing which.

use std::future::Future;

use kiln_core::cluster::{ClaimKey, Figures};
use tokio_util::sync::CancellationToken;

use crate::disk::DiskState;
use crate::link::{Assignment, Binary, BuildStatus, StatusReport};

/// How a build ended on this worker.
#[derive(Debug)]
pub(crate) enum BuildResult {
    /// A binary, hashed, ready to deliver.
    Built(Built),
    /// The program does not compile: the submitter's to fix.
    CompileError { summary: String, log: String, figures: Figures },
    /// The farm failed (the program is fine, as far as anyone knows).
    SystemError { error: String, log: String, figures: Figures },
    /// The leader no longer wants this build, or the worker is stopping.
    Cancelled,
}

/// A built binary and what its build cost.
#[derive(Debug)]
pub(crate) struct Built {
    /// The binary as the member opened and hashed it (see `sandbox::target::take_binary`).
    pub executable: Binary,
    pub sha256: String,
    pub size: u64,
    pub log: String,
    pub figures: Figures,
    /// Why the build ran code of its submitter, if it did.
    pub submitted_code: Option<String>,
}

/// A report that ends a build: sent, and retried, by `deliver::send_final`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FinalReport {
    pub status: BuildStatus,
    pub error: String,
    pub log: String,
    pub figures: Figures,
}

impl FinalReport {
    pub fn into_report(self, claim: ClaimKey) -> StatusReport {
        let FinalReport { status, error, log, figures } = self;
        StatusReport { error, log, ..StatusReport::new(claim, status, figures) }
    }
}

/// What the claim loop builds with.
pub(crate) trait Builds: Send {
    /// Between builds: makes room on the build root's volume above the high
    /// watermark, and says where the volume stands.
    fn make_room(&mut self) -> impl Future<Output = DiskState> + Send;

    /// Builds `assignment`, stopping when `cancel` is cancelled.
    fn build(
        &mut self,
        assignment: &Assignment,
        cancel: &CancellationToken,
    ) -> impl Future<Output = BuildResult> + Send;
}
