//! The rules of a claim: who may report or upload under it, what a worker's
//! report changes (only forward, only the current claim), and what an upload
//! records. The catalog loads the record and the incarnation it knows, asks
//! these, and stores the answer.

use kiln_core::api::{CacheFigures, Status};
use kiln_core::cluster::{ClaimKey, Figures};

use crate::rules::binary_cache::binary_key;
use crate::rules::pipeline::{Pipeline, Uploaded};

/// What a worker reports about its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Compiling,
    Uploading {
        compile_ms: u64,
        cache: CacheFigures,
    },
    /// `build_settings`: the worker's build settings fingerprint (empty: the
    /// binary is not offered to the binary cache).
    Success {
        binary_sha256: String,
        binary_size: u64,
        figures: Figures,
        build_settings: String,
        /// The build ran code of its submitter: its binary is served by the binary
        /// cache to this pipeline only.
        ran_submitted_code: bool,
    },
    CompileError {
        error: String,
        figures: Figures,
    },
    SystemError {
        error: String,
        figures: Figures,
    },
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    #[error("claim on pipeline {pipeline_id} version {version} attempt {attempt} is no longer current: drop the build")]
    StaleClaim { pipeline_id: u64, version: u64, attempt: u64 },
    #[error("pipeline {id} cannot go from {from} to {to}")]
    BadTransition { id: u64, from: Status, to: Status },
    #[error(
        "pipeline {id} is claimed by ordinal {holder}'s current incarnation, not by this member (ordinal {ordinal})"
    )]
    NotTheHolder { id: u64, holder: u32, ordinal: u32 },
    #[error("pipeline {id}: success must name the binary uploaded under this claim ({uploaded}), not {named}")]
    NotUploaded { id: u64, named: String, uploaded: String },
}

impl Report {
    pub fn status(&self) -> Status {
        match self {
            Report::Compiling => Status::Compiling,
            Report::Uploading { .. } => Status::Uploading,
            Report::Success { .. } => Status::Success,
            Report::CompileError { .. } => Status::CompileError,
            Report::SystemError { .. } => Status::SystemError,
        }
    }
}

/// The record of `claim` if `holder` (ordinal, incarnation) holds it: the
/// pipeline exists (`record`), the claim is its current one, it was handed to
/// that ordinal (its own, or the one covering for it), and the incarnation is
/// `known_incarnation`, the one the catalog knows for that ordinal. Anything else is refused: a build its
/// worker restarted away from, or another member's, must not move the record.
pub fn held_by(
    record: Option<Pipeline>,
    claim: &ClaimKey,
    (ordinal, incarnation): (u32, u64),
    known_incarnation: Option<u64>,
) -> Result<Pipeline, ReportRefused> {
    let stale =
        || ReportRefused::StaleClaim { pipeline_id: claim.pipeline_id, version: claim.version, attempt: claim.attempt };
    let Some(record) = record else { return Err(stale()) };
    if !record.is_current(claim) {
        return Err(stale());
    }
    if record.holder() != ordinal || known_incarnation != Some(incarnation) {
        return Err(ReportRefused::NotTheHolder { id: record.id, holder: record.holder(), ordinal });
    }
    Ok(record)
}

impl Pipeline {
    /// The binary `sha256` of `size` bytes (the leader's own measure) arrived
    /// under `claim`: the only binary a `success` of that claim may name, and the
    /// size it records. An upload under an earlier attempt counts for nothing.
    pub fn upload_received(&mut self, claim: &ClaimKey, sha256: &str, size: u64) {
        self.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: sha256.to_owned(), size });
    }

    /// Applies a worker's report. Only the current claim may report, and only forward.
    pub fn apply(&mut self, claim: &ClaimKey, report: Report, now_ms: u64) -> Result<(), ReportRefused> {
        if !self.is_current(claim) {
            return Err(ReportRefused::StaleClaim {
                pipeline_id: claim.pipeline_id,
                version: claim.version,
                attempt: claim.attempt,
            });
        }
        let to = report.status();
        if let Report::Success { binary_sha256, .. } = &report {
            let uploaded = self.uploaded.as_ref().filter(|u| u.attempt == claim.attempt);
            if uploaded.is_none_or(|u| &u.sha256 != binary_sha256) {
                return Err(ReportRefused::NotUploaded {
                    id: self.id,
                    named: binary_sha256.clone(),
                    uploaded: uploaded.map_or_else(|| "none yet".to_owned(), |u| u.sha256.clone()),
                });
            }
        }
        let allowed = match (self.status, to) {
            (Status::Compiling, _) => true,
            (Status::Uploading, to) => to != Status::Compiling && to != Status::CompileError,
            _ => false,
        };
        if !allowed {
            return Err(ReportRefused::BadTransition { id: self.id, from: self.status, to });
        }
        self.status = to;
        self.updated_at_ms = now_ms;
        match report {
            Report::Compiling => {}
            Report::Uploading { compile_ms, cache } => {
                self.compile_ms = Some(compile_ms);
                self.cache = Some(cache);
            }
            Report::Success { binary_sha256, figures, build_settings, ran_submitted_code, .. } => {
                // The size is the leader's own measure, from the upload.
                let size = self.uploaded.as_ref().map_or(0, |u| u.size);
                self.binary_sha256 = Some(binary_sha256);
                self.binary_size = Some(size);
                self.binary_key = match (&self.depset, &self.profile, build_settings.is_empty()) {
                    (Some(depset), Some(profile), false) => Some(binary_key(
                        &self.source_sha256,
                        depset,
                        &build_settings,
                        profile,
                        ran_submitted_code.then_some(self.id),
                    )),
                    _ => None,
                };
                self.finish(figures, now_ms);
            }
            Report::CompileError { error, figures } | Report::SystemError { error, figures } => {
                self.error = Some(error);
                self.finish(figures, now_ms);
            }
        }
        Ok(())
    }
}
