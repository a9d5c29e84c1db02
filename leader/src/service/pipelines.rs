//! What users do to pipelines: submit, list, find, delete, cancel, read a log.

use kiln_core::api::{Change, PipelineRecord, Status};
use kiln_core::program::{self, Program, ProgramFile};

use crate::catalog::{Counts, Page, PageQuery, Submitted};
use crate::error::ApiError;
use crate::rules::Pipeline;
use crate::service::{LeaderState, now_ms};

impl LeaderState {
    /// Validates a program and records it as a new pipeline or a new version.
    /// Submits `files` as pipeline `name`, built in `profile` (the farm's when
    /// None; an unknown one is refused, naming the known ones).
    pub async fn submit(
        &self,
        name: String,
        files: Vec<ProgramFile>,
        profile: Option<String>,
    ) -> Result<Submitted, ApiError> {
        program::validate_name(&name)?;
        let default_profile = self.config.default_profile.clone();
        let profile = match profile {
            Some(profile) => {
                kiln_core::profile::check(&profile).map_err(|e| ApiError::BadRequest(e.to_string()))?.to_owned()
            }
            None => default_profile.clone(),
        };
        let set = self.config.depset.clone();
        let (sha, files) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let sha = program::source_sha256(&files);
            Program::parse(files.clone(), &set)?;
            Ok((sha, files))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))??;
        let (workers, sharding) = (self.workers(), self.sharding());
        let cache = self.binary_cache_parts();
        let submitted = {
            let name = name.clone();
            let sha = sha.clone();
            self.catalog(move |c| {
                let cache = cache.as_ref().map(|(depset, settings)| (depset.as_str(), settings.as_str()));
                let farm = crate::rules::Farm {
                    profiles: (&profile, &default_profile),
                    workers,
                    binary_cache: cache,
                    sharding,
                };
                c.submit(&name, &sha, &files, farm, now_ms())
            })
            .await?
        };
        let r = &submitted.record;
        match submitted.change {
            Change::Unchanged => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, "submitted again, unchanged")
            }
            _ if r.binary_cache_hit.is_some() => self.served_from_binary_cache(r),
            change => {
                tracing::info!(pipeline = %r.name, id = r.id, version = r.version, ordinal = r.worker, source_sha256 = %sha, ?change, "pipeline pending");
                self.wake_workers();
            }
        }
        Ok(submitted)
    }

    /// A page of the pipelines, in id order.
    pub async fn page(&self, query: PageQuery) -> Result<Page, ApiError> {
        self.catalog(move |c| c.page(&query)).await
    }

    /// The catalog's counters, for `/metrics`.
    pub async fn counts(&self) -> Result<Counts, ApiError> {
        self.catalog(|c| c.counts()).await
    }

    /// Finds a pipeline by id, or by name when `key` is not a number.
    pub async fn find(&self, key: &str) -> Result<Pipeline, ApiError> {
        let key = key.to_owned();
        let found = self
            .catalog({
                let key = key.clone();
                move |c| match key.parse::<u64>() {
                    Ok(id) => c.get(id),
                    Err(_) => match c.id_of(&key)? {
                        Some(id) => c.get(id),
                        None => Ok(None),
                    },
                }
            })
            .await?;
        found.ok_or_else(|| ApiError::NotFound(format!("no pipeline {key:?}: `kiln status` lists them")))
    }

    pub async fn delete(&self, key: &str) -> Result<Pipeline, ApiError> {
        let record = self.find(key).await?;
        let id = record.id;
        self.catalog(move |c| c.delete(id, now_ms())).await?;
        tracing::info!(
            pipeline = %record.name, id, version = record.version,
            retention_s = self.config.retention.as_secs(),
            "pipeline deleted: its source and binary go after the retention unless another pipeline uses them"
        );
        Ok(record)
    }

    /// Stops a pipeline's build (`kiln cancel`): it ends `cancelled` at once; its
    /// worker learns it at its next heartbeat and kills the build.
    pub async fn cancel(&self, key: &str) -> Result<Pipeline, ApiError> {
        let found = self.find(key).await?;
        let id = found.id;
        let record = self
            .catalog(move |c| c.cancel(id, "by the API (kiln cancel)", now_ms()))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no pipeline {key:?}: `kiln status` lists them")))?;
        self.metrics.build_finished(&record);
        tracing::info!(
            pipeline = %record.name, id, version = record.version, ordinal = record.worker,
            attempt = record.attempt, "build cancelled"
        );
        Ok(record)
    }

    /// The API's view of a record: the catalog's, with the progress its worker last
    /// reported while it compiles.
    pub fn shown(&self, record: &Pipeline) -> PipelineRecord {
        let mut shown = record.to_api();
        if record.status == Status::Compiling {
            shown.progress = self.members.progress_of(record.worker, record.claim_key());
        }
        shown
    }

    pub async fn log(&self, key: &str) -> Result<(Pipeline, Option<String>), ApiError> {
        let record = self.find(key).await?;
        let id = record.id;
        let log = self.catalog(move |c| c.log(id)).await?;
        Ok((record, log))
    }
}
