//! What a build's end sends the leader: a built binary delivered (`uploading`,
//! the upload, `success`, retried as one unit by [`crate::upload`]), or a final
//! error report, retried until it lands. Each reads a failed call as
//! `kiln_core::retry` does: a stale claim drops the build, a permanent refusal is
//! given up, anything else is tried again.

use std::time::Duration;

use kiln_core::cluster::{ClaimKey, Figures};
use kiln_core::retry::Disposition;
use tokio_util::sync::CancellationToken;

use crate::link::{BinaryDigest, BuildStatus, LeaderLink, StatusReport, Upload};
use crate::upload::{self, DeliveryError, RetryPolicy, Shipment};
use crate::worker::result::{Built, FinalReport};

/// How a binary is delivered: the retry budget, and what to say with each success.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub policy: RetryPolicy,
    /// What decides a binary besides its program and dependency set
    /// (`builder::settings_fingerprint`): sent with each success, it keys the
    /// leader's binary cache.
    pub build_settings: String,
}

impl Delivery {
    /// Delivers a built binary (report uploading, upload, report success, retried
    /// as one unit). Returns the final report still to send when the budget ran out.
    pub async fn deliver<L: LeaderLink>(
        &self,
        link: &L,
        claim: ClaimKey,
        built: Built,
        cancel: &CancellationToken,
    ) -> Option<FinalReport> {
        let Built { executable, sha256, size, log, figures, submitted_code } = built;
        let digest = BinaryDigest { sha256: sha256.clone(), size };
        let success = StatusReport {
            binary: Some(digest.clone()),
            log: log.clone(),
            build_settings: self.build_settings.clone(),
            ran_submitted_code: submitted_code.is_some(),
            ..StatusReport::new(claim, BuildStatus::Success, figures.clone())
        };
        let shipment = Shipment {
            upload: Upload { claim, digest, binary: executable },
            success,
            uploading: StatusReport::new(claim, BuildStatus::Uploading, figures.clone()),
        };
        let started = std::time::Instant::now();
        let delivered = tokio::select! {
            delivered = upload::deliver(link, &shipment, self.policy) => delivered,
            () = cancel.cancelled() => {
                tracing::info!("delivery cancelled");
                return None;
            }
        };
        match delivered {
            Ok(d) => {
                tracing::info!(binary_sha256 = %sha256, size, upload_ms = d.elapsed.as_millis() as u64, retries = d.retries, sent = d.sent_bytes, "delivered to the leader");
                None
            }
            Err(DeliveryError::Stale(reason)) => {
                tracing::info!(reason = %reason, "the leader dropped this build");
                None
            }
            Err(DeliveryError::Transient(cause) | DeliveryError::Permanent(cause)) => {
                tracing::error!(cause = %cause, budget_s = self.policy.budget.as_secs(), "Failed to upload binary");
                Some(FinalReport {
                    status: BuildStatus::SystemError,
                    error: format!("Failed to upload binary: {cause}"),
                    log,
                    figures: Figures { upload_ms: started.elapsed().as_millis() as u64, ..figures },
                })
            }
        }
    }
}

/// Sends a build's final error report. The leader may be the very thing that is
/// failing, so a transient failure is retried (with capped backoff) until the
/// report lands, the claim goes stale, or the worker stops; a permanent one is
/// logged and given up, since sending it again would fail the same way.
pub(crate) async fn send_final<L: LeaderLink>(
    link: &L,
    claim: ClaimKey,
    report: FinalReport,
    cancel: &CancellationToken,
) {
    let message = report.into_report(claim);
    let mut delay = Duration::from_millis(250);
    loop {
        let failure = match link.report(message.clone()).await {
            Ok(()) => return,
            Err(failure) => failure,
        };
        match failure.disposition {
            Disposition::Stale => {
                tracing::info!(reason = %failure, "final report refused: the build was dropped");
                return;
            }
            Disposition::Permanent => {
                tracing::error!(error = %failure, "final report refused");
                return;
            }
            Disposition::Transient | Disposition::Damaged => {
                tracing::warn!(error = %failure, retry_in_ms = delay.as_millis() as u64, "final report not delivered; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
