//! The claim loop, the worker's foreground: between builds make room on the disk
//! (and take no work above the critical watermark), claim an assignment of this
//! member's ordinal, build it, and say what came of it; repeat until shutdown.
//!
//! Only decisions live here: what is built comes from a [`Builds`] and what is
//! said goes through a [`LeaderLink`], so the loop is unit-tested with a script of
//! both (`tests.rs`).

use std::sync::Arc;
use std::time::Duration;

use kiln_core::cluster::ClaimKey;
use kiln_core::retry::Disposition;
use tokio_util::sync::CancellationToken;

use crate::link::{Assignment, BuildStatus, LeaderLink};
use crate::worker::deliver::{Delivery, send_final};
use crate::worker::result::{BuildResult, Builds, FinalReport};
use crate::worker::shared::{Shared, lock};

/// The worker's foreground: its link to the leader, what it builds with, and what
/// it shares with the heartbeats.
pub(crate) struct Worker<L, B> {
    pub link: Arc<L>,
    pub builds: B,
    pub shared: Arc<Shared>,
    pub ordinal: u32,
    /// The fingerprint of the dependency set this member builds against.
    pub depset: String,
    pub delivery: Delivery,
    /// How long to wait before looking at a full disk again.
    pub disk_recheck: Duration,
}

impl<L: LeaderLink, B: Builds> Worker<L, B> {
    /// Claims and builds until `shutdown`; an error when the leader refuses this
    /// member for good (a wrong token, a malformed call).
    pub async fn claim_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut failures = 0u32;
        let mut was_critical = false;
        loop {
            // Between builds: make room above the high watermark; above the
            // critical one, take no work until space is back.
            let state = self.builds.make_room().await;
            let critical = state.critical.clone();
            *lock(&self.shared.disk) = state;
            if let Some(why) = critical {
                if !was_critical {
                    tracing::error!(ordinal = self.ordinal, "{why}");
                    was_critical = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(self.disk_recheck) => continue,
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            if was_critical {
                tracing::info!(ordinal = self.ordinal, "space is back on the build root's volume: taking work again");
                was_critical = false;
            }
            let answer = tokio::select! {
                answer = self.link.claim(&self.depset) => answer,
                () = shutdown.cancelled() => return Ok(()),
            };
            match answer {
                Ok(assignment) => {
                    failures = 0;
                    if let Some(assignment) = assignment {
                        self.handle(assignment, shutdown).await;
                    }
                }
                Err(failure) => {
                    if failure.disposition == Disposition::Permanent {
                        // A refused token, a malformed call: asking again changes nothing.
                        anyhow::bail!("the leader refuses this member: {failure}");
                    }
                    // Transient, or stale (the leader refused this member's view of the
                    // set; the scaling guard acts on that through the heartbeats).
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(ordinal = self.ordinal, error = %failure, "asking the leader for work failed; retrying");
                    }
                    let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Builds one assignment and says what came of it, as the current build (the
    /// one the heartbeats name, and the leader may cancel).
    pub async fn handle(&mut self, assignment: Assignment, shutdown: &CancellationToken) {
        let claim = assignment.claim;
        let cancel = shutdown.child_token();
        self.shared.progress.start(0);
        *lock(&self.shared.current) = Some((claim, cancel.clone()));
        let span = tracing::info_span!("build", pipeline = %assignment.name, id = claim.pipeline_id, version = claim.version, ordinal = self.ordinal);
        let final_report = tracing::Instrument::instrument(
            async {
                let result = self.builds.build(&assignment, &cancel).await;
                self.conclude(claim, result, &cancel).await
            },
            span.clone(),
        )
        .await;
        if let Some(report) = final_report {
            tracing::Instrument::instrument(send_final(&*self.link, claim, report, &cancel), span).await;
        }
        *lock(&self.shared.current) = None;
    }

    /// What a build's result means for the leader: delivered (nothing left to say),
    /// or a final report still to send.
    pub async fn conclude(
        &mut self,
        claim: ClaimKey,
        result: BuildResult,
        cancel: &CancellationToken,
    ) -> Option<FinalReport> {
        match result {
            BuildResult::Cancelled => {
                tracing::info!("build cancelled");
                None
            }
            BuildResult::CompileError { summary, log, figures } => {
                tracing::info!(error = %summary, "compile error");
                Some(FinalReport { status: BuildStatus::CompileError, error: summary, log, figures })
            }
            BuildResult::SystemError { error, log, figures } => {
                tracing::error!(error = %error, "build failed on this worker");
                Some(FinalReport { status: BuildStatus::SystemError, error, log, figures })
            }
            BuildResult::Built(built) => {
                let cache = &built.figures.cache;
                tracing::info!(
                    compile_ms = built.figures.compile_ms,
                    hits = cache.hits,
                    misses = cache.misses,
                    "compiled"
                );
                self.delivery.deliver(&*self.link, claim, built, cancel).await
            }
        }
    }
}
