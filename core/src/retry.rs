//! How a worker reads a failed call to the leader: the one classification that
//! delivery, the final report and the claim loop all use.
//!
//! The leader chooses its gRPC codes for this table (`leader/src/error.rs`; a unit
//! test there checks every error against it):
//! - transient, worth another try: UNAVAILABLE (leader down or restarting),
//!   DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ABORTED, CANCELLED, NOT_FOUND (an
//!   artifact that went missing between upload and report: upload again);
//! - permanent, will not get better: INVALID_ARGUMENT, UNAUTHENTICATED,
//!   PERMISSION_DENIED, RESOURCE_EXHAUSTED (the leader's disk is full, or a message
//!   over the size limit), UNIMPLEMENTED, OUT_OF_RANGE, ALREADY_EXISTS;
//! - stale: FAILED_PRECONDITION, the claim is no longer current (a newer version,
//!   a deletion, a requeue): drop the build;
//! - damaged: DATA_LOSS, the bytes did not hash to their name. Retried once, in case
//!   they were damaged on the way; a second time it is permanent.

use tonic::Code;

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Transient,
    Permanent,
    Stale,
    Damaged,
}

/// The one reading of a gRPC code.
pub fn classify(code: Code) -> Disposition {
    match code {
        Code::FailedPrecondition => Disposition::Stale,
        Code::DataLoss => Disposition::Damaged,
        Code::InvalidArgument
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::OutOfRange
        | Code::AlreadyExists => Disposition::Permanent,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable => Disposition::Transient,
    }
}

/// A failed call, classified, with the message to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub disposition: Disposition,
    pub message: String,
}

impl Failure {
    pub fn of(status: &tonic::Status) -> Failure {
        Failure {
            disposition: classify(status.code()),
            message: format!("{} ({:?})", status_text(status), status.code()),
        }
    }
}

/// What to show of a failed call: its message, and for a transport failure (whose
/// message is only "transport error") what went wrong underneath, in plain words
/// when it is TLS.
pub fn status_text(status: &tonic::Status) -> String {
    use std::error::Error;
    match status.source() {
        Some(source) => format!("{}: {}", status.message(), crate::tls_failure::describe_failure(source)),
        None => status.message().to_owned(),
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_as_documented() {
        assert_eq!(classify(Code::Unavailable), Disposition::Transient);
        assert_eq!(classify(Code::NotFound), Disposition::Transient);
        assert_eq!(classify(Code::ResourceExhausted), Disposition::Permanent);
        assert_eq!(classify(Code::Unauthenticated), Disposition::Permanent);
        assert_eq!(classify(Code::FailedPrecondition), Disposition::Stale);
        assert_eq!(classify(Code::DataLoss), Disposition::Damaged);
        let failure = Failure::of(&tonic::Status::unavailable("down"));
        assert_eq!(failure.to_string(), "down (Unavailable)");
    }
}
