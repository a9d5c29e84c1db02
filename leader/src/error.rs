//! The one place where errors become HTTP statuses and gRPC codes.
//!
//! The gRPC codes are chosen for the worker's retry policy, `kiln_core::retry`: a
//! unit test below reads every error through that one classification and checks
//! that the worker will do what the leader means.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::program::ProgramError;

use crate::artifacts::ArtifactError;
use crate::catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidProgram(#[from] ProgramError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Signed in, but this request may not do this (a form from another site).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Artifact(#[from] ArtifactError),
    /// Not now, but soon: a binary that failed its hash is being built again.
    #[error("{0}")]
    BeingRebuilt(String),
    /// Not now, but soon: the leader is recovering (its catalog is reopened).
    #[error("{0}")]
    Unavailable(String),
    /// The leader's disk is full: nothing is lost, nothing new is stored.
    #[error("{0}")]
    DiskFull(String),
    #[error("{0}")]
    Internal(String),
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Refused(refused) => ApiError::Conflict(refused.to_string()),
            CatalogError::NotCancellable(ended) => ApiError::Conflict(ended.to_string()),
            full if full.is_disk_full() => ApiError::DiskFull(format!(
                "the leader's disk is full, so the catalog could not record this ({full}); nothing already stored was lost: free space in its data directory and try again"
            )),
            io if io.is_io() => ApiError::Unavailable(format!(
                "the leader's catalog had an I/O error ({io}) and is reopened: try again"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidProgram(_) => "invalid_program",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Artifact(ArtifactError::DiskFull) => "disk_full",
            ApiError::Artifact(_) => "artifact",
            ApiError::BeingRebuilt(_) => "being_rebuilt",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::DiskFull(_) => "disk_full",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::InvalidProgram(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Artifact(error) => match error {
                ArtifactError::InvalidSha(_) => StatusCode::BAD_REQUEST,
                ArtifactError::Mismatch { .. } | ArtifactError::SizeMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ArtifactError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ArtifactError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
                ArtifactError::Corrupt { .. } | ArtifactError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unavailable(_) | ApiError::BeingRebuilt(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ApiError::InvalidProgram(_) | ApiError::BadRequest(_) => tonic::Code::InvalidArgument,
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::Conflict(_) => tonic::Code::FailedPrecondition,
            ApiError::Unauthorized(_) => tonic::Code::Unauthenticated,
            ApiError::Forbidden(_) => tonic::Code::PermissionDenied,
            ApiError::Artifact(error) => match error {
                ArtifactError::InvalidSha(_) | ArtifactError::TooLarge { .. } => tonic::Code::InvalidArgument,
                ArtifactError::Mismatch { .. } | ArtifactError::SizeMismatch { .. } => tonic::Code::DataLoss,
                // The worker waits and tries again (within its upload budget): space
                // may be freed, and the watermarks make room on their own.
                ArtifactError::DiskFull => tonic::Code::Unavailable,
                ArtifactError::Corrupt { .. } | ArtifactError::Io(_) => tonic::Code::Internal,
            },
            ApiError::Unavailable(_) | ApiError::BeingRebuilt(_) | ApiError::DiskFull(_) => tonic::Code::Unavailable,
            ApiError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.http_status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = kiln_core::api::ErrorBody { error: self.to_string(), code: self.code().to_owned() };
        (self.http_status(), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_and_a_transient_grpc_code() {
        let full = ApiError::from(ArtifactError::from(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)));
        assert_eq!(full.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.grpc_code(), tonic::Code::Unavailable, "a worker waits for space and tries again");
        assert!(full.to_string().contains("disk is full"), "{full}");
        let mismatch = ApiError::from(ArtifactError::Mismatch { declared: "a".into(), actual: "b".into() });
        assert_eq!(mismatch.grpc_code(), tonic::Code::DataLoss);
    }

    /// Every error the leader can answer a worker with, and what the worker must do
    /// about it. A new variant must be added here (the match below does not compile
    /// otherwise), so the two sides cannot drift apart.
    #[test]
    fn the_worker_reads_every_error_as_the_leader_means_it() {
        use kiln_core::retry::{Disposition, classify};
        let io = || std::io::Error::other("x");
        let cases: Vec<(ApiError, Disposition)> = vec![
            (ApiError::InvalidProgram(ProgramError::NoManifest), Disposition::Permanent),
            (ApiError::BadRequest("b".into()), Disposition::Permanent),
            (ApiError::NotFound("no artifact: upload it first".into()), Disposition::Transient),
            (ApiError::Conflict("stale claim".into()), Disposition::Stale),
            (ApiError::Unauthorized("token".into()), Disposition::Permanent),
            (ApiError::Forbidden("form".into()), Disposition::Permanent),
            (
                ApiError::Artifact(ArtifactError::InvalidSha(kiln_core::digest::InvalidDigest("x".into()))),
                Disposition::Permanent,
            ),
            (
                ApiError::Artifact(ArtifactError::Mismatch { declared: "a".into(), actual: "b".into() }),
                Disposition::Damaged,
            ),
            (ApiError::Artifact(ArtifactError::SizeMismatch { declared: 1, received: 2 }), Disposition::Damaged),
            (ApiError::Artifact(ArtifactError::TooLarge { size: 2, limit: 1 }), Disposition::Permanent),
            (ApiError::Artifact(ArtifactError::DiskFull), Disposition::Transient),
            (ApiError::DiskFull("full".into()), Disposition::Transient),
            (
                ApiError::Artifact(ArtifactError::Corrupt { sha256: "a".into(), actual: "b".into() }),
                Disposition::Transient,
            ),
            (ApiError::Artifact(ArtifactError::Io(io())), Disposition::Transient),
            (ApiError::Unavailable("reopening".into()), Disposition::Transient),
            (ApiError::BeingRebuilt("being rebuilt".into()), Disposition::Transient),
            (ApiError::Internal("i".into()), Disposition::Transient),
        ];
        for (error, meant) in &cases {
            // Exhaustive on purpose: a new variant fails to compile until it is listed.
            match error {
                ApiError::InvalidProgram(_)
                | ApiError::BadRequest(_)
                | ApiError::NotFound(_)
                | ApiError::Conflict(_)
                | ApiError::Unauthorized(_)
                | ApiError::Forbidden(_)
                | ApiError::Unavailable(_)
                | ApiError::BeingRebuilt(_)
                | ApiError::DiskFull(_)
                | ApiError::Internal(_) => {}
                ApiError::Artifact(a) => match a {
                    ArtifactError::InvalidSha(_)
                    | ArtifactError::Mismatch { .. }
                    | ArtifactError::SizeMismatch { .. }
                    | ArtifactError::TooLarge { .. }
                    | ArtifactError::DiskFull
                    | ArtifactError::Corrupt { .. }
                    | ArtifactError::Io(_) => {}
                },
            }
            assert_eq!(classify(error.grpc_code()), *meant, "{error:?} reaches the worker as {:?}", error.grpc_code());
        }
    }
}
