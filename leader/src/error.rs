//! The one place where errors become HTTP statuses and gRPC codes.
//!
//! The gRPC codes are chosen for the worker's retry policy: UNAVAILABLE, INTERNAL and
//! the like are transient; INVALID_ARGUMENT, RESOURCE_EXHAUSTED (a full disk),
//! UNAUTHENTICATED and FAILED_PRECONDITION (a stale claim) are permanent; DATA_LOSS
//! (a hash mismatch) is retried once, in case the bytes were damaged on the way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_compiler_worker::program::ProgramError;

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
    #[error("{0}")]
    Artifact(#[from] ArtifactError),
    #[error("{0}")]
    Internal(String),
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Refused(refused) => ApiError::Conflict(refused.to_string()),
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
            ApiError::Artifact(ArtifactError::DiskFull) => "disk_full",
            ApiError::Artifact(_) => "artifact",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::InvalidProgram(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Artifact(error) => match error {
                ArtifactError::InvalidSha(_) => StatusCode::BAD_REQUEST,
                ArtifactError::Mismatch { .. } | ArtifactError::SizeMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ArtifactError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ArtifactError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
                ArtifactError::Corrupt { .. } | ArtifactError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ApiError::InvalidProgram(_) | ApiError::BadRequest(_) => tonic::Code::InvalidArgument,
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::Conflict(_) => tonic::Code::FailedPrecondition,
            ApiError::Unauthorized(_) => tonic::Code::Unauthenticated,
            ApiError::Artifact(error) => match error {
                ArtifactError::InvalidSha(_) | ArtifactError::TooLarge { .. } => tonic::Code::InvalidArgument,
                ArtifactError::Mismatch { .. } | ArtifactError::SizeMismatch { .. } => tonic::Code::DataLoss,
                ArtifactError::DiskFull => tonic::Code::ResourceExhausted,
                ArtifactError::Corrupt { .. } | ArtifactError::Io(_) => tonic::Code::Internal,
            },
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
        let body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        (self.http_status(), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_and_a_permanent_grpc_code() {
        let full = ApiError::from(ArtifactError::from(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)));
        assert_eq!(full.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(full.to_string().contains("disk is full"), "{full}");
        let mismatch = ApiError::from(ArtifactError::Mismatch { declared: "a".into(), actual: "b".into() });
        assert_eq!(mismatch.grpc_code(), tonic::Code::DataLoss);
    }
}
