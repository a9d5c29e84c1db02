//! Delivering a built binary to the leader through a [`LeaderLink`]: report
//! `uploading`, upload it (even when the leader holds that SHA-256 already: see
//! `attempt`), report `success`, all retried as one unit with exponential backoff
//! and jitter (the `backon` crate) within a total budget.
//!
//! Failures are read by `kiln_core::retry`: transient ones are retried, permanent
//! ones fail at once, a stale claim drops the build, and a hash mismatch is retried
//! once, then permanent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kiln_core::retry::{Disposition, Failure};

use crate::link::{LeaderLink, StatusReport, Upload};

/// Why a delivery did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another try.
    #[error("{0}")]
    Transient(String),
    /// Will not get better by trying again.
    #[error("{0}")]
    Permanent(String),
    /// The leader no longer wants this build.
    #[error("{0}")]
    Stale(String),
}

/// What a successful delivery cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub elapsed: Duration,
    pub retries: u32,
    pub sent_bytes: bool,
}

/// The budget and pacing of retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub budget: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_total_delay(Some(self.budget))
            .without_max_times()
    }
}

/// Classifies a failed call for delivery. `mismatches` counts hash mismatches so far.
pub fn classify(failure: Failure, mismatches: &AtomicU32) -> DeliveryError {
    let Failure { disposition, message } = failure;
    match disposition {
        Disposition::Stale => DeliveryError::Stale(message),
        Disposition::Permanent => DeliveryError::Permanent(message),
        Disposition::Transient => DeliveryError::Transient(message),
        Disposition::Damaged if mismatches.fetch_add(1, Ordering::SeqCst) == 0 => DeliveryError::Transient(message),
        Disposition::Damaged => DeliveryError::Permanent(format!("{message}, twice")),
    }
}

/// What is delivered: the binary under its claim, between two reports.
#[derive(Debug, Clone)]
pub struct Shipment {
    pub upload: Upload,
    /// The report that ends the delivery, with status `Success`; its upload time
    /// and retry count are filled in as it is sent.
    pub success: StatusReport,
    /// The report sent first, with status `Uploading`.
    pub uploading: StatusReport,
}

/// One attempt: report uploading while the bytes go (two calls at once on one
/// connection: a round trip and a catalog commit less per build than one after
/// the other), then report success. The bytes go even when the leader holds the
/// same artifact already: it binds a success to what was uploaded under the
/// claim, and takes no member's word for a stored artifact. Returns whether bytes
/// were sent (always, once the attempt gets that far).
async fn attempt<L: LeaderLink>(
    link: &L,
    shipment: &Shipment,
    mismatches: &AtomicU32,
    started: Instant,
    retries: &AtomicU32,
) -> Result<bool, DeliveryError> {
    let classify = |failure: Failure| classify(failure, mismatches);
    let (reported, uploaded) = tokio::join!(link.report(shipment.uploading.clone()), link.upload(&shipment.upload));
    reported.map_err(classify)?;
    uploaded.map_err(classify)?;
    let mut success = shipment.success.clone();
    success.figures.upload_ms = started.elapsed().as_millis() as u64;
    success.figures.upload_retries = retries.load(Ordering::SeqCst);
    link.report(success).await.map_err(classify)?;
    Ok(true)
}

/// Delivers the shipment, retrying transient failures within the policy's budget.
/// The error is the last failure's.
pub async fn deliver<L: LeaderLink>(
    link: &L,
    shipment: &Shipment,
    policy: RetryPolicy,
) -> Result<Delivered, DeliveryError> {
    let started = Instant::now();
    let retries = AtomicU32::new(0);
    let mismatches = AtomicU32::new(0);
    let claim = shipment.upload.claim;
    let sent = (|| attempt(link, shipment, &mismatches, started, &retries))
        .retry(policy.backoff())
        .when(|e| matches!(e, DeliveryError::Transient(_)))
        .notify(|error, delay| {
            retries.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                id = claim.pipeline_id, version = claim.version, error = %error,
                retry_in_ms = delay.as_millis() as u64, "upload failed; retrying"
            );
        })
        .await?;
    Ok(Delivered { elapsed: started.elapsed(), retries: retries.load(Ordering::SeqCst), sent_bytes: sent })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(disposition: Disposition) -> Failure {
        Failure { disposition, message: format!("{disposition:?}") }
    }

    #[test]
    fn failures_are_classified_for_the_retry_policy() {
        let m = AtomicU32::new(0);
        assert!(matches!(classify(failure(Disposition::Transient), &m), DeliveryError::Transient(_)));
        assert!(matches!(classify(failure(Disposition::Permanent), &m), DeliveryError::Permanent(_)));
        assert!(matches!(classify(failure(Disposition::Stale), &m), DeliveryError::Stale(_)));
        assert!(matches!(classify(failure(Disposition::Damaged), &m), DeliveryError::Transient(_)));
        assert!(
            matches!(classify(failure(Disposition::Damaged), &m), DeliveryError::Permanent(m) if m.ends_with(", twice")),
            "a repeated mismatch is permanent"
        );
    }
}
