//! Delivering a built binary to the leader: report `uploading`, upload it unless the
//! leader already holds that SHA-256, report `success`, all retried as one unit with
//! exponential backoff and jitter (the `backon` crate) within a total budget.
//!
//! Failures are read by `kiln_core::retry`: transient ones are retried, permanent
//! ones fail at once, a stale claim drops the build, and a hash mismatch is retried
//! once, then permanent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use kiln_core::retry::{Disposition, Failure};
use kiln_proto::{self as pb, upload_chunk::Part};

use crate::client::LeaderClient;

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

/// Classifies a gRPC failure for delivery. `mismatches` counts hash mismatches so far.
pub fn classify(status: &tonic::Status, mismatches: &AtomicU32) -> DeliveryError {
    let Failure { disposition, message } = Failure::of(status);
    match disposition {
        Disposition::Stale => DeliveryError::Stale(message),
        Disposition::Permanent => DeliveryError::Permanent(message),
        Disposition::Transient => DeliveryError::Transient(message),
        Disposition::Damaged if mismatches.fetch_add(1, Ordering::SeqCst) == 0 => DeliveryError::Transient(message),
        Disposition::Damaged => DeliveryError::Permanent(format!("{message}, twice")),
    }
}

/// A built binary as the worker holds it: a file it opened itself (without
/// following links, after the build's sandbox was gone; see
/// `sandbox::files::open_regular`), read from its start on every attempt. The
/// bytes uploaded are those of the file that was hashed, whatever the path now
/// names.
#[derive(Debug, Clone)]
pub struct Binary {
    file: std::sync::Arc<std::fs::File>,
    /// Where it was, for messages.
    pub path: PathBuf,
}

impl Binary {
    pub fn new(file: std::fs::File, path: PathBuf) -> Binary {
        Binary { file: std::sync::Arc::new(file), path }
    }

    /// The file from its first byte (the descriptor is shared, so attempts are
    /// one at a time, as delivery makes them).
    fn reader(&self) -> std::io::Result<tokio::fs::File> {
        use std::io::Seek;
        let mut file = self.file.try_clone()?;
        file.seek(std::io::SeekFrom::Start(0))?;
        Ok(tokio::fs::File::from_std(file))
    }
}

/// What is delivered, and on whose behalf.
#[derive(Debug, Clone)]
pub struct Shipment {
    pub member: pb::Member,
    pub claim: pb::Claim,
    pub binary: Binary,
    pub sha256: String,
    pub size: u64,
    /// The report that ends the delivery, with `status` SUCCESS; its upload time
    /// and retry count are filled in as it is sent.
    pub success: pb::StatusReport,
    /// The report sent first, with `status` UPLOADING.
    pub uploading: pb::StatusReport,
}

fn unary<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(30));
    request
}

async fn upload(client: &mut LeaderClient, shipment: &Shipment) -> Result<(), tonic::Status> {
    let file = shipment
        .binary
        .reader()
        .map_err(|e| tonic::Status::internal(format!("reading the binary {}: {e}", shipment.binary.path.display())))?;
    let header = pb::UploadChunk {
        part: Some(Part::Header(pb::UploadHeader {
            member: Some(shipment.member.clone()),
            claim: Some(shipment.claim),
            sha256: shipment.sha256.clone(),
            size: shipment.size,
        })),
    };
    // A read error ends the stream early; the leader then sees a short upload and
    // refuses it, and the attempt is retried.
    let data = tokio_util::io::ReaderStream::with_capacity(file, kiln_proto::UPLOAD_CHUNK_BYTES)
        .take_while(|chunk| std::future::ready(chunk.is_ok()))
        .filter_map(|chunk| {
            std::future::ready(chunk.ok().map(|bytes| pb::UploadChunk { part: Some(Part::Data(bytes)) }))
        });
    let stream = futures::stream::once(std::future::ready(header)).chain(data);
    client.upload_artifact(stream).await.map(|_| ())
}

/// One attempt: report uploading while the bytes go (two calls at once on one
/// connection: a round trip and a catalog commit less per build than one after
/// the other), then report success. The bytes go even when the leader holds the
/// same artifact already: it binds a success to what was uploaded under the
/// claim, and takes no member's word for a stored artifact. Returns whether bytes
/// were sent (always, once the attempt gets that far).
async fn attempt(
    client: &LeaderClient,
    shipment: &Shipment,
    mismatches: &AtomicU32,
    started: Instant,
    retries: &AtomicU32,
) -> Result<bool, DeliveryError> {
    let mut client = client.clone();
    let classify = |s: tonic::Status| classify(&s, mismatches);
    let mut reporter = client.clone();
    let (reported, uploaded) =
        tokio::join!(reporter.report_status(unary(shipment.uploading.clone())), upload(&mut client, shipment));
    reported.map_err(classify)?;
    uploaded.map_err(classify)?;
    let mut success = shipment.success.clone();
    let figures = success.figures.get_or_insert_default();
    figures.upload_ms = started.elapsed().as_millis() as u64;
    figures.upload_retries = retries.load(Ordering::SeqCst);
    client.report_status(unary(success)).await.map_err(classify)?;
    Ok(true)
}

/// Delivers the shipment, retrying transient failures within the policy's budget.
/// The error is the last failure's.
pub async fn deliver(
    client: &LeaderClient,
    shipment: &Shipment,
    policy: RetryPolicy,
) -> Result<Delivered, DeliveryError> {
    let started = Instant::now();
    let retries = AtomicU32::new(0);
    let mismatches = AtomicU32::new(0);
    let claim = shipment.claim;
    let sent = (|| attempt(client, shipment, &mismatches, started, &retries))
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

    #[test]
    fn failures_are_classified_for_the_retry_policy() {
        let m = AtomicU32::new(0);
        assert!(matches!(classify(&tonic::Status::unavailable("down"), &m), DeliveryError::Transient(_)));
        assert!(matches!(classify(&tonic::Status::internal("io"), &m), DeliveryError::Transient(_)));
        assert!(matches!(classify(&tonic::Status::resource_exhausted("disk full"), &m), DeliveryError::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::unauthenticated("token"), &m), DeliveryError::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::failed_precondition("stale"), &m), DeliveryError::Stale(_)));
        assert!(matches!(classify(&tonic::Status::data_loss("mismatch"), &m), DeliveryError::Transient(_)));
        assert!(
            matches!(classify(&tonic::Status::data_loss("mismatch"), &m), DeliveryError::Permanent(_)),
            "a repeated mismatch is permanent"
        );
    }

    #[tokio::test]
    async fn an_unreachable_leader_exhausts_the_budget_with_the_cause() {
        // Port 1 on loopback refuses connections: a leader that is down.
        let client = crate::client::connect("http://127.0.0.1:1", "t", None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("bin");
        std::fs::write(&binary, b"x").unwrap();
        let report = pb::StatusReport::default();
        let shipment = Shipment {
            member: pb::Member::default(),
            claim: pb::Claim::default(),
            binary: Binary::new(std::fs::File::open(&binary).unwrap(), binary),
            sha256: "0".repeat(64),
            size: 1,
            success: report.clone(),
            uploading: report,
        };
        let policy = RetryPolicy {
            budget: Duration::from_millis(600),
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
        };
        let error = deliver(&client, &shipment, policy).await.unwrap_err();
        assert!(matches!(&error, DeliveryError::Transient(m) if m.contains("Unavailable")), "{error:?}");
    }
}
