//! Binaries: what the binary cache is keyed by on this farm, what a hit is
//! logged and counted as, and serving a stored binary (verified against its hash;
//! a lost one is rebuilt).

use kiln_core::api::Status;

use crate::artifacts::ArtifactError;
use crate::error::ApiError;
use crate::rules::Pipeline;
use crate::service::{LeaderState, now_ms};

impl LeaderState {
    /// What the binary cache is keyed by on this farm besides a program's source:
    /// the dependency set's fingerprint and the members' build settings. None: the
    /// cache is off.
    pub(super) fn binary_cache_parts(&self) -> Option<(String, String)> {
        self.config.binary_cache.clone().map(|settings| (self.config.depset.fingerprint().to_owned(), settings))
    }

    /// Counts and logs a submission the binary cache served: `record` ended
    /// `success` without a build.
    pub(super) fn served_from_binary_cache(&self, record: &Pipeline) {
        let r = record;
        let hit = r.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.version, h.saved_ms)).unwrap_or_default();
        self.metrics.binary_cache_hit(hit.2);
        tracing::info!(
            pipeline = %r.name, id = r.id, version = r.version, source_sha256 = %r.source_sha256,
            binary_sha256 = r.binary_sha256.as_deref().unwrap_or(""), built_by = hit.0,
            built_version = hit.1, saved_ms = hit.2, "success from the binary cache: nothing to build"
        );
    }

    /// Opens the binary of a pipeline that succeeded, verified against its hash.
    /// A binary that fails it is removed and every pipeline that used it goes back
    /// to be rebuilt: the answer says so (503, "being rebuilt"), never a 404.
    pub async fn open_binary(&self, record: &Pipeline) -> Result<(String, tokio::fs::File, u64), ApiError> {
        let being_rebuilt = |why: &str| {
            ApiError::BeingRebuilt(format!(
                "pipeline {} version {} is being rebuilt ({why}): ask again when `kiln status` shows it success",
                record.id, record.version
            ))
        };
        let sha = match (&record.status, &record.binary_sha256) {
            (Status::Success, Some(sha)) => sha.clone(),
            (status, _) if !status.finished() && record.rebuilding.is_some() => {
                return Err(being_rebuilt(record.rebuilding.as_deref().unwrap_or_default()));
            }
            _ => {
                return Err(ApiError::Conflict(format!(
                    "pipeline {} version {} has no binary: its status is {}",
                    record.id, record.version, record.status
                )));
            }
        };
        let lost = match self.artifacts.open_verified(&sha).await {
            Ok(Some((file, size))) => return Ok((sha, file, size)),
            Ok(None) => format!("its stored binary {sha} was missing"),
            Err(ArtifactError::Corrupt { actual, .. }) => {
                format!("its stored binary {sha} failed its hash (the bytes hash to {actual}) and was removed")
            }
            Err(other) => return Err(other.into()),
        };
        let rebuilt = {
            let (sha, lost) = (sha.clone(), lost.clone());
            self.catalog(move |c| c.artifact_lost(&sha, &lost, now_ms())).await?
        };
        for r in &rebuilt {
            tracing::error!(pipeline = %r.name, id = r.id, version = r.version, ordinal = r.worker, sha256 = %sha, "stored binary lost: rebuilding");
        }
        self.wake_workers();
        Err(being_rebuilt(&lost))
    }
}
