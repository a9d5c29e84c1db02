//! The gRPC service the workers call (`kiln.cluster.v1.Cluster`): decodes, calls
//! [`LeaderState`], encodes. The cluster token is checked by [`check_token`] before any
//! of this runs.

use std::sync::Arc;
use std::time::Duration;

use kiln_proto::cluster_server::Cluster;
use kiln_proto::upload_chunk::Part;
use kiln_proto::{self as pb, BuildStatus};
use tonic::{Request, Response, Status, Streaming};

use kiln_core::cluster::{self, ClaimKey, Figures, MemberId, Missing};

use crate::error::ApiError;
use crate::health::MemberReport;
use crate::rules::Report;
use crate::service::LeaderState;

/// Longest a claim may wait for work before answering empty.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ClusterService {
    state: Arc<LeaderState>,
}

impl ClusterService {
    pub fn new(state: Arc<LeaderState>) -> ClusterService {
        ClusterService { state }
    }
}

fn missing(missing: Missing) -> Status {
    Status::invalid_argument(missing.to_string())
}

impl ClusterService {
    async fn heartbeat_call(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let member_id = MemberId::from_pb(request.member.as_ref()).map_err(missing)?;
        let cache = request.cache.unwrap_or_default();
        // Everything a member says is shown by health, the page and /metrics, so
        // every string of it is bounded.
        let bounded = crate::health::bounded_text;
        let report = MemberReport {
            workers: member_id.workers,
            version: bounded(request.member.map(|m| m.version).unwrap_or_default()),
            incarnation: member_id.incarnation,
            cache_healthy: cache.healthy,
            cache_message: bounded(cache.message),
            preparing: request.preparing,
            sandbox: bounded(request.sandbox),
            sandbox_unavailable: request.sandbox_unavailable,
            depset: bounded(request.depset),
            // What a member says of its disk is shown, so it is bounded: a percentage,
            // and a sentence.
            disk_used_percent: if request.disk_used_percent.is_finite() {
                request.disk_used_percent.clamp(0.0, 100.0)
            } else {
                0.0
            },
            disk_critical: crate::health::bounded_text(request.disk_critical),
            cpus: bounded(request.cpus),
            building: request.current.map(|claim| {
                let progress = request.progress.unwrap_or_default();
                (ClaimKey::from(claim), crate::health::bounded_progress(progress.crates_done, progress.crates_total))
            }),
        };
        if request.leaving {
            self.state.member_leaving(member_id).await?;
            return Ok(Response::new(pb::HeartbeatResponse {
                leader_workers: self.state.workers(),
                leader_version: self.state.config.version.clone(),
                cancel_current: true,
            }));
        }
        let current = request.current.map(ClaimKey::from);
        let cancel_current = self.state.heartbeat(member_id, report, current).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            leader_workers: self.state.workers(),
            leader_version: self.state.config.version.clone(),
            cancel_current,
        }))
    }

    async fn claim_call(&self, request: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let request = request.into_inner();
        let member_id = MemberId::from_pb(request.member.as_ref()).map_err(missing)?;
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_CLAIM_WAIT);
        let assignment =
            self.state.claim(member_id, &request.depset, wait).await?.map(|(record, files)| pb::Assignment {
                claim: Some(record.claim_key().into()),
                profile: record.profile.clone().unwrap_or_else(|| self.state.config.default_profile.clone()),
                name: record.name,
                source_sha256: record.source_sha256,
                source: Some(cluster::source_bundle(&files)),
            });
        Ok(Response::new(pb::ClaimResponse { assignment }))
    }

    async fn report_status_call(&self, request: Request<pb::StatusReport>) -> Result<Response<pb::StatusAck>, Status> {
        let r = request.into_inner();
        let member_id = MemberId::from_pb(r.member.as_ref()).map_err(missing)?;
        let claim = ClaimKey::from_pb(r.claim).map_err(missing)?;
        let status = BuildStatus::try_from(r.status).unwrap_or(BuildStatus::Unspecified);
        let report = match status {
            BuildStatus::Compiling => Report::Compiling,
            BuildStatus::Uploading => {
                let f = Figures::from(r.figures);
                Report::Uploading { compile_ms: f.compile_ms, cache: f.cache }
            }
            BuildStatus::Success => {
                crate::artifacts::validate_sha(&r.binary_sha256).map_err(ApiError::from)?;
                if !r.build_settings.is_empty() && kiln_core::digest::validate(&r.build_settings).is_err() {
                    return Err(Status::invalid_argument(
                        "build_settings must be empty or a SHA-256 in 64 lowercase hex digits",
                    ));
                }
                Report::Success {
                    binary_sha256: r.binary_sha256,
                    binary_size: r.binary_size,
                    figures: r.figures.into(),
                    build_settings: r.build_settings,
                    ran_submitted_code: r.ran_submitted_code,
                }
            }
            BuildStatus::CompileError => Report::CompileError { error: r.error, figures: r.figures.into() },
            BuildStatus::SystemError => Report::SystemError { error: r.error, figures: r.figures.into() },
            BuildStatus::Unspecified => return Err(Status::invalid_argument("a status report needs a status")),
        };
        let log = (!r.log.is_empty()).then_some(r.log);
        self.state.report(member_id, claim, report, log).await?;
        Ok(Response::new(pb::StatusAck {}))
    }

    async fn has_artifact_call(
        &self,
        request: Request<pb::HasArtifactRequest>,
    ) -> Result<Response<pb::HasArtifactResponse>, Status> {
        let sha = request.into_inner().sha256;
        crate::artifacts::validate_sha(&sha).map_err(ApiError::from)?;
        Ok(Response::new(pb::HasArtifactResponse { present: self.state.artifacts.contains(&sha) }))
    }

    async fn upload_artifact_call(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(Part::Header(header)) => header,
            _ => return Err(Status::invalid_argument("an upload starts with its header")),
        };
        let member_id = MemberId::from_pb(header.member.as_ref()).map_err(missing)?;
        self.state.member_seen(member_id).await?;
        let Some(claim) = header.claim.map(ClaimKey::from) else {
            return Err(Status::invalid_argument("an upload names the claim it is for"));
        };
        // Only the claim's holder uploads for it; and the bytes always come (an
        // artifact already stored is not taken on a caller's word: it could be
        // another pipeline's).
        self.state.holds(member_id, claim).await?;
        let mut writer = self.state.artifacts.begin(&header.sha256, header.size).map_err(ApiError::from)?;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(Part::Data(data)) => writer.write(data).await.map_err(ApiError::from)?,
                _ => return Err(Status::invalid_argument("an upload has one header, then data")),
            }
        }
        let size = writer.finish().await.map_err(|e| {
            tracing::warn!(id = claim.pipeline_id, version = claim.version, ordinal = member_id.ordinal, error = %e, "upload refused");
            ApiError::from(e)
        })?;
        tracing::info!(id = claim.pipeline_id, version = claim.version, ordinal = member_id.ordinal, sha256 = %header.sha256, size, "artifact stored");
        self.state.uploaded(member_id, claim, header.sha256.clone(), size).await?;
        Ok(Response::new(pb::UploadResponse { sha256: header.sha256, size, already_present: false }))
    }
}

/// Where a call came from, for the log of a refusal.
fn peer<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.to_string())
        .or_else(|| request.remote_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Logs a refused call with the caller's address (a stolen token shows up here).
fn refused(peer: &str, call: &str, status: &Status) {
    if matches!(
        status.code(),
        tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
    ) {
        tracing::warn!(peer, call, code = ?status.code(), message = status.message(), "refused a member call");
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = peer(&request);
        self.heartbeat_call(request).await.inspect_err(|s| refused(&peer, "heartbeat", s))
    }

    async fn claim(&self, request: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let peer = peer(&request);
        self.claim_call(request).await.inspect_err(|s| refused(&peer, "claim", s))
    }

    async fn report_status(&self, request: Request<pb::StatusReport>) -> Result<Response<pb::StatusAck>, Status> {
        let peer = peer(&request);
        self.report_status_call(request).await.inspect_err(|s| refused(&peer, "report", s))
    }

    async fn has_artifact(
        &self,
        request: Request<pb::HasArtifactRequest>,
    ) -> Result<Response<pb::HasArtifactResponse>, Status> {
        self.has_artifact_call(request).await
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let peer = peer(&request);
        self.upload_artifact_call(request).await.inspect_err(|s| refused(&peer, "upload", s))
    }
}
