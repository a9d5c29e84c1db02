//! The worker's link to the leader over gRPC (`kiln.cluster.v1.Cluster`): one lazily
//! connected channel that reconnects by itself (so a worker rides out a leader
//! restart), with the cluster token on every call.
//!
//! **Boundary:** the only file of the worker that knows the wire. Every message the
//! worker sends is made here from the domain types of [`crate::link`], every
//! answer read back into them, and every failed call read by
//! `kiln_core::retry::Failure` before the worker sees it. The conversions shared
//! with the leader (claims, figures, programs) are `kiln_core::cluster`'s.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use kiln_core::cluster::{self, ClaimKey};
use kiln_core::retry::Failure;
use kiln_proto::cluster_client::ClusterClient;
use kiln_proto::{self as pb, upload_chunk::Part};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::link::{Assignment, BuildStatus, Heartbeat, HeartbeatAnswer, LeaderLink, Member, StatusReport, Upload};

/// Largest message the link carries either way: an assignment carries a whole
/// program; a build's log must fit in a report.
pub const MAX_MESSAGE_BYTES: usize = kiln_proto::MAX_MESSAGE_BYTES;

/// How long the leader holds a claim open when it has no work.
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// A claim's deadline: the wait, and time to answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(45);
/// A unary call's deadline (reports).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds `authorization: Bearer <cluster token>` to every call.
#[derive(Clone)]
pub struct TokenInterceptor(MetadataValue<Ascii>);

impl std::fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenInterceptor(<redacted>)")
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(kiln_proto::AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

pub type LeaderClient = ClusterClient<InterceptedService<Channel, TokenInterceptor>>;

/// A client for the leader at `url`. Does not connect until the first call. An
/// `https://` URL needs `tls_ca`, the PEM of the CA that signed the leader's
/// certificate (only that CA is trusted).
pub fn connect(url: &str, token: &str, tls_ca: Option<&Path>) -> anyhow::Result<LeaderClient> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("the leader URL {url:?} is not a valid URL (example: http://127.0.0.1:8470)"))?;
    match (url.starts_with("https://"), tls_ca) {
        (true, Some(ca)) => {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading the CA certificate {} (--tls-ca)", ca.display()))?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls).context("setting up TLS to the leader")?;
        }
        (true, None) => bail!(
            "the leader URL {url} is https://, but no CA is given: pass --tls-ca (KILN_TLS_CA) with the CA that signed the leader's certificate (for a public CA, the system's bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
        ),
        (false, Some(ca)) => bail!(
            "--tls-ca {} is given, but the leader URL {url} is not https://: use https:// (the leader serves TLS with --tls-cert and --tls-key)",
            ca.display()
        ),
        (false, None) => {}
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let token: MetadataValue<Ascii> =
        format!("Bearer {token}").parse().context("the cluster token must be printable ASCII")?;
    Ok(ClusterClient::with_interceptor(endpoint.connect_lazy(), TokenInterceptor(token))
        .max_decoding_message_size(kiln_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(kiln_proto::MAX_MESSAGE_BYTES))
}

/// A [`LeaderLink`] over gRPC, speaking for one member.
#[derive(Debug, Clone)]
pub struct GrpcLink {
    client: LeaderClient,
    member: pb::Member,
    /// Under `--on-scaling=reshard`, N follows the set: each call says N as the
    /// guard holds it now.
    size: Option<kiln_core::scaling::ScalingGuard>,
    /// A heartbeat's deadline: its interval, but never under 5 s.
    heartbeat_timeout: Duration,
}

impl GrpcLink {
    /// A link to the leader at `url` for `member`, which heartbeats every
    /// `heartbeat_interval`. Does not connect until the first call.
    pub fn connect(
        url: &str,
        token: &str,
        tls_ca: Option<&Path>,
        member: &Member,
        heartbeat_interval: Duration,
    ) -> anyhow::Result<GrpcLink> {
        Ok(GrpcLink {
            client: connect(url, token, tls_ca)?,
            member: pb::Member {
                ordinal: member.ordinal,
                workers: member.workers,
                incarnation: member.incarnation,
                version: member.version.clone(),
            },
            heartbeat_timeout: heartbeat_interval.max(Duration::from_secs(5)),
            size: None,
        })
    }

    /// Says N as `guard` holds it in every call, rather than N as started.
    pub fn following(mut self, guard: kiln_core::scaling::ScalingGuard) -> GrpcLink {
        self.size = Some(guard);
        self
    }

    fn pb_member(&self) -> pb::Member {
        let mut member = self.member.clone();
        if let Some(guard) = &self.size {
            member.workers = guard.workers();
        }
        member
    }

    fn report_message(&self, report: StatusReport) -> pb::StatusReport {
        let status = match report.status {
            BuildStatus::Uploading => pb::BuildStatus::Uploading,
            BuildStatus::Success => pb::BuildStatus::Success,
            BuildStatus::CompileError => pb::BuildStatus::CompileError,
            BuildStatus::SystemError => pb::BuildStatus::SystemError,
        };
        let (binary_sha256, binary_size) = report.binary.map(|b| (b.sha256, b.size)).unwrap_or_default();
        pb::StatusReport {
            member: Some(self.pb_member()),
            claim: Some(report.claim.into()),
            status: status as i32,
            error: report.error,
            log: report.log,
            binary_sha256,
            binary_size,
            figures: Some(report.figures.into()),
            build_settings: report.build_settings,
            ran_submitted_code: report.ran_submitted_code,
        }
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

impl LeaderLink for GrpcLink {
    async fn heartbeat(&self, beat: Heartbeat) -> Result<HeartbeatAnswer, Failure> {
        let request = pb::HeartbeatRequest {
            member: Some(self.pb_member()),
            cache: Some(pb::CacheState { healthy: beat.cache.healthy, message: beat.cache.message }),
            current: beat.current.map(|(claim, _)| claim.into()),
            preparing: beat.preparing,
            sandbox: beat.sandbox,
            sandbox_unavailable: beat.sandbox_unavailable,
            depset: beat.depset,
            disk_used_percent: beat.disk_used_percent,
            disk_critical: beat.disk_critical.unwrap_or_default(),
            progress: beat.current.map(|(_, progress)| pb::BuildProgress {
                crates_done: progress.crates_done,
                crates_total: progress.crates_total,
            }),
            leaving: beat.leaving,
            cpus: beat.cpus,
        };
        match self.client.clone().heartbeat(with_timeout(request, self.heartbeat_timeout)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                Ok(HeartbeatAnswer { leader_workers: answer.leader_workers, cancel_current: answer.cancel_current })
            }
            Err(status) => Err(Failure::of(&status)),
        }
    }

    async fn claim(&self, depset: &str) -> Result<Option<Assignment>, Failure> {
        let request = pb::ClaimRequest {
            member: Some(self.pb_member()),
            wait_ms: CLAIM_WAIT.as_millis() as u32,
            depset: depset.to_owned(),
        };
        let answer = self.client.clone().claim(with_timeout(request, CLAIM_TIMEOUT)).await;
        let assignment = answer.map_err(|status| Failure::of(&status))?.into_inner().assignment;
        // An assignment without a claim cannot be reported on: as good as none.
        Ok(assignment.and_then(|a| {
            Some(Assignment {
                claim: ClaimKey::from(a.claim?),
                name: a.name,
                files: cluster::program_files(a.source.unwrap_or_default()),
                profile: a.profile,
            })
        }))
    }

    async fn report(&self, report: StatusReport) -> Result<(), Failure> {
        let request = with_timeout(self.report_message(report), CALL_TIMEOUT);
        self.client.clone().report_status(request).await.map(|_| ()).map_err(|status| Failure::of(&status))
    }

    async fn upload(&self, upload: &Upload) -> Result<(), Failure> {
        let file = upload.binary.reader().map_err(|e| {
            Failure::of(&tonic::Status::internal(format!("reading the binary {}: {e}", upload.binary.path.display())))
        })?;
        let header = pb::UploadChunk {
            part: Some(Part::Header(pb::UploadHeader {
                member: Some(self.pb_member()),
                claim: Some(upload.claim.into()),
                sha256: upload.digest.sha256.clone(),
                size: upload.digest.size,
            })),
        };
        // A read error ends the stream early; the leader then sees a short upload and
        // refuses it, and the attempt is retried.
        let file = tokio::fs::File::from_std(file);
        let data = tokio_util::io::ReaderStream::with_capacity(file, kiln_proto::UPLOAD_CHUNK_BYTES)
            .take_while(|chunk| std::future::ready(chunk.is_ok()))
            .filter_map(|chunk| {
                std::future::ready(chunk.ok().map(|bytes| pb::UploadChunk { part: Some(Part::Data(bytes)) }))
            });
        let stream = futures::stream::once(std::future::ready(header)).chain(data);
        self.client.clone().upload_artifact(stream).await.map(|_| ()).map_err(|status| Failure::of(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use kiln_core::cluster::Figures;

    use crate::link::{Binary, BinaryDigest};
    use crate::upload::{DeliveryError, RetryPolicy, Shipment, deliver};

    fn member() -> Member {
        Member { ordinal: 1, workers: 2, incarnation: 7, version: "v".into() }
    }

    #[tokio::test]
    async fn a_report_carries_the_member_the_claim_and_every_field() {
        // Made inside a runtime (the channel is set up there), never connected.
        let link = GrpcLink::connect("http://127.0.0.1:1", "t", None, &member(), Duration::from_secs(1)).unwrap();
        let claim = ClaimKey { pipeline_id: 3, version: 4, attempt: 5 };
        let mut report =
            StatusReport::new(claim, BuildStatus::Success, Figures { compile_ms: 9, ..Figures::default() });
        report.binary = Some(BinaryDigest { sha256: "ab".repeat(32), size: 12 });
        report.build_settings = "cd".repeat(32);
        report.ran_submitted_code = true;
        let message = link.report_message(report);
        assert_eq!(message.member.as_ref().map(|m| (m.ordinal, m.incarnation)), Some((1, 7)));
        assert_eq!(message.claim.map(ClaimKey::from), Some(claim));
        assert_eq!(message.status, pb::BuildStatus::Success as i32);
        assert_eq!((message.binary_sha256.as_str(), message.binary_size), ("ab".repeat(32).as_str(), 12));
        assert_eq!(Figures::from(message.figures).compile_ms, 9);
        assert!(message.ran_submitted_code);
        assert_eq!(link.heartbeat_timeout, Duration::from_secs(5), "a heartbeat gets at least 5 s");
    }

    #[tokio::test]
    async fn an_unreachable_leader_exhausts_the_budget_with_the_cause() {
        // Port 1 on loopback refuses connections: a leader that is down.
        let link = GrpcLink::connect("http://127.0.0.1:1", "t", None, &member(), Duration::from_secs(1)).unwrap();
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"x").unwrap();
        let claim = ClaimKey { pipeline_id: 1, version: 1, attempt: 1 };
        let report = StatusReport::new(claim, BuildStatus::Success, Figures::default());
        let shipment = Shipment {
            upload: Upload {
                claim,
                digest: BinaryDigest { sha256: "0".repeat(64), size: 1 },
                binary: Binary::new(file, "bin".into()),
            },
            success: report.clone(),
            uploading: report,
        };
        let policy = RetryPolicy {
            budget: Duration::from_millis(600),
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
        };
        let error = deliver(&link, &shipment, policy).await.unwrap_err();
        assert!(matches!(&error, DeliveryError::Transient(m) if m.contains("Unavailable")), "{error:?}");
    }
}
