//! The catalog's side of what users do to pipelines: submit, delete, cancel.
//! What a submission changes is `rules::resubmit`'s; here it is stored, with its
//! source, and served from the binary cache when it can be.

use redb::ReadableTable;

use kiln_core::api::Change;
use kiln_core::program::ProgramFile;

use crate::catalog::error::{CatalogError, corrupt};
use crate::catalog::tables::{Books, LOGS, META, NAMES, NEXT_ID, SOURCES, SOURCES_BYTES, SOURCES_COUNT, load};
use crate::catalog::{Catalog, Submitted};
use crate::records;
use crate::rules::{self, Farm, Pipeline};

impl Catalog {
    /// Stores a submission: a new pipeline, or what [`rules::resubmit`] makes of
    /// the one of that name (a new version when its source or profile changed).
    /// With the farm's binary cache, a new version whose binary the cache holds
    /// ends `success` at once, served that binary, and `binary_cache_hit` says so.
    pub fn submit(
        &self,
        name: &str,
        source_sha256: &str,
        files: &[ProgramFile],
        farm: Farm<'_>,
        now_ms: u64,
    ) -> Result<Submitted, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let mut names = txn.open_table(NAMES)?;
            let mut sources = txn.open_table(SOURCES)?;
            let mut meta = txn.open_table(META)?;
            let existing = names.get(name)?.map(|id| id.value());
            let (old, submitted) = match existing {
                Some(id) => {
                    let Some(old) = load(&books.pipelines, id)? else {
                        return Err(corrupt(format!("pipeline {id}"), "its name is taken but it has no record"));
                    };
                    let submitted = rules::resubmit(&old, source_sha256, &farm, now_ms);
                    (Some(old), submitted)
                }
                None => {
                    let id = meta.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
                    meta.insert(NEXT_ID, id + 1)?;
                    names.insert(name, id)?;
                    let record = rules::new_pipeline(id, name, source_sha256, &farm, now_ms);
                    (None, Submitted { record, change: Change::Created })
                }
            };
            let mut submitted = submitted;
            if submitted.change != Change::Unchanged {
                if sources.get(source_sha256)?.is_none() {
                    let bytes = records::encode_source(files);
                    sources.insert(source_sha256, bytes.as_slice())?;
                    books.add(SOURCES_COUNT, 1)?;
                    books.add(SOURCES_BYTES, bytes.len() as i64)?;
                }
                if let Some((depset, settings)) = farm.binary_cache {
                    let mut found = None;
                    let id = submitted.record.id;
                    for key in rules::binary_cache_candidates(source_sha256, depset, settings, farm.profiles.0, id) {
                        if let Some(cached) = books.cached_binary(&key)? {
                            found = Some((key, cached));
                            break;
                        }
                    }
                    if let Some((key, cached)) = found {
                        let record = &mut submitted.record;
                        record.serve_cached(key, depset, &cached, now_ms);
                        let log =
                            rules::binary_cache_hit_log(source_sha256, depset, settings, farm.profiles.0, &cached);
                        txn.open_table(LOGS)?.insert(record.id, log.as_str())?;
                    }
                }
                books.put(old.as_ref(), Some(&submitted.record), now_ms)?;
            }
            Ok(submitted)
        })
    }

    /// Removes a pipeline and its log. Its source and artifact are released: the
    /// collector removes them after the retention unless another record points at
    /// them. Its id is never reused.
    pub fn delete(&self, id: u64, now_ms: u64) -> Result<Option<Pipeline>, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let mut names = txn.open_table(NAMES)?;
            let mut logs = txn.open_table(LOGS)?;
            let removed = load(&books.pipelines, id)?;
            if let Some(record) = &removed {
                books.put(Some(record), None, now_ms)?;
                names.remove(record.name.as_str())?;
                logs.remove(id)?;
            }
            Ok(removed)
        })
    }

    /// Cancels pipeline `id`'s current version (see [`Pipeline::cancel`]); None when
    /// there is no such pipeline.
    pub fn cancel(&self, id: u64, why: &str, now_ms: u64) -> Result<Option<Pipeline>, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let Some(old) = load(&books.pipelines, id)? else { return Ok(None) };
            let mut record = old.clone();
            record.cancel(now_ms, why)?;
            books.put(Some(&old), Some(&record), now_ms)?;
            Ok(Some(record))
        })
    }
}
