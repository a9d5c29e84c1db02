//! The catalog: pipelines, their sources, their build logs and the members' last
//! known incarnations, in one embedded database (redb) in the leader's data
//! directory. Every operation is one serializable write transaction, so claims are
//! atomic: a pipeline version is handed to at most one worker at a time, and nothing
//! is lost across a restart of the leader.
//!
//! Every record is written through [`tables::Books::put`], which moves the indexes,
//! the counters and the reference counts with it; so a claim, a page of the list
//! and `/metrics` cost O(log n) or O(page), never a scan of the catalog.
//!
//! **Invariants:** a pipeline is `compiling` or `uploading` only while the
//! incarnation of its worker that claimed it may still be running (a new
//! incarnation, or a lease that ran out, puts it back to `pending`). A source or
//! artifact is removed only when no record has pointed at it for the retention,
//! decided inside a write transaction, so a submission or upload that references it
//! meanwhile keeps it (see [`Catalog::collect`]). An unreadable record is named in
//! the log and skipped; it never blocks the others.
//!
//! - `submissions.rs`: submit, delete, cancel. `claims.rs`: claims, reports,
//!   uploads, incarnations, leases. `retention.rs`: collection, adoption, lost
//!   artifacts. `upgrade.rs`: earlier schemas. `tables.rs`: the tables and the
//!   one writer of records. `error.rs`: what goes wrong.

mod claims;
mod error;
mod retention;
mod submissions;
mod tables;
#[cfg(test)]
mod tests;
mod upgrade;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase};

use kiln_core::api::Status;
use kiln_core::program::ProgramFile;

use crate::rules::Pipeline;
pub use crate::rules::Submitted;
pub use error::CatalogError;
use error::corrupt;
pub use tables::Kind;
use tables::{
    COUNTS, LOGS, NAMES, PIPELINES, SOURCES, SOURCES_BYTES, SOURCES_COUNT, STATUS_IDS, UNREFERENCED, decode,
    decode_source, load, status_code, status_count_key,
};
pub use upgrade::CATALOG_SCHEMA;

/// Longest build log kept; longer logs keep their beginning and end. Workers cap
/// their logs first (`--max-log-bytes`, at most half the message limit); this is
/// the leader's own bound on what any caller sends.
pub const MAX_LOG_BYTES: usize = kiln_proto::MAX_MESSAGE_BYTES / 2 + 64 * 1024;

/// Page sizes of the list API.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;

/// What the list API asks for: ids after `after`, at most `limit`, optionally of
/// one status and with names starting with `name_prefix`.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub after: u64,
    pub limit: usize,
    pub status: Option<Status>,
    pub name_prefix: Option<String>,
}

/// A page of the list: its records in id order, the `after` of the next page when
/// there is one, and the ids of records that could not be read (skipped).
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<Pipeline>,
    pub next_after: Option<u64>,
    pub unreadable: Vec<u64>,
}

/// The counters `/metrics` shows, kept with the records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub by_status: BTreeMap<Status, u64>,
    pub pending_by_ordinal: BTreeMap<u32, u64>,
    pub sources: u64,
    pub source_bytes: u64,
    /// Sources and artifacts no record points at, waiting for the retention.
    pub unreferenced: BTreeMap<&'static str, u64>,
}

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    pub sources: u64,
    pub artifacts: u64,
}

/// The database, reopened after an I/O error: redb refuses every operation after
/// one (a full disk, say) until it is opened again, and the leader must not need a
/// restart for that.
#[derive(Debug)]
pub struct Catalog {
    path: std::path::PathBuf,
    db: RwLock<Option<Database>>,
    /// An operation failed with an I/O error: reopen before the next one.
    broken: AtomicBool,
}

/// The open database, for one operation.
struct Db<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Catalog::db` makes a `Db` only over an open database.
        self.0.as_ref().expect("an open database")
    }
}

impl Catalog {
    /// Opens (or creates) the catalog, bringing a database of an earlier schema up
    /// to this one in the opening transaction: all of it or none.
    pub fn open(path: &Path, now_ms: u64) -> Result<Catalog, CatalogError> {
        let db = Database::create(path)?;
        upgrade::upgrade(&db, now_ms)?;
        Ok(Catalog { path: path.to_owned(), db: RwLock::new(Some(db)), broken: AtomicBool::new(false) })
    }

    /// The database for one operation, reopened first if the last one failed
    /// with an I/O error.
    fn db(&self) -> Result<Db<'_>, CatalogError> {
        let reopen = self.broken.load(Ordering::SeqCst) || self.db.read().unwrap_or_else(|p| p.into_inner()).is_none();
        if reopen {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            if self.broken.swap(false, Ordering::SeqCst) || slot.is_none() {
                // The old handle goes first: it holds the file's lock.
                drop(slot.take());
                let db = Database::create(&self.path)?;
                tracing::info!(catalog = %self.path.display(), "catalog reopened after an I/O error");
                *slot = Some(db);
            }
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(corrupt("database".into(), "it could not be reopened after an I/O error; retrying"));
        }
        Ok(Db(guard))
    }

    /// One read transaction.
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, CatalogError>) -> Result<T, CatalogError> {
        let db = self.db()?;
        let result = db.begin_read().map_err(CatalogError::from).and_then(|txn| f(&txn));
        self.after(result)
    }

    /// One write transaction, committed when `f` succeeds (dropped, so aborted,
    /// when it fails).
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, CatalogError>) -> Result<T, CatalogError> {
        let db = self.db()?;
        let result = (|| {
            let txn = db.begin_write()?;
            let value = f(&txn)?;
            txn.commit()?;
            Ok(value)
        })();
        self.after(result)
    }

    /// Notes how an operation ended: after an I/O error the database is reopened
    /// before the next one (redb refuses everything after one until then).
    fn after<T>(&self, result: Result<T, CatalogError>) -> Result<T, CatalogError> {
        if let Err(e) = &result
            && e.is_io()
        {
            tracing::warn!(error = %e, "catalog I/O error: the database is reopened before its next use");
            self.broken.store(true, Ordering::SeqCst);
        }
        result
    }

    pub fn get(&self, id: u64) -> Result<Option<Pipeline>, CatalogError> {
        self.read(|txn| load(&txn.open_table(PIPELINES)?, id))
    }

    pub fn id_of(&self, name: &str) -> Result<Option<u64>, CatalogError> {
        self.read(|txn| {
            let table = txn.open_table(NAMES)?;
            Ok(table.get(name)?.map(|v| v.value()))
        })
    }

    /// One page of the list, in id order. Costs O(limit · log n) without filters or
    /// with a status, O(matches) with a name prefix. An unreadable record is
    /// skipped and named in the page (and the log), never an error.
    pub fn page(&self, query: &PageQuery) -> Result<Page, CatalogError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let after = query.after;
        self.read(|txn| {
            let pipelines = txn.open_table(PIPELINES)?;
            // Candidate ids in ascending order, from the narrowest index the query allows.
            let candidates: Box<dyn Iterator<Item = Result<u64, CatalogError>>> =
                match (&query.name_prefix, query.status) {
                    (Some(prefix), _) => {
                        let names = txn.open_table(NAMES)?;
                        let mut ids = Vec::new();
                        for entry in names.range(prefix.as_str()..)? {
                            let (name, id) = entry?;
                            if !name.value().starts_with(prefix.as_str()) {
                                break;
                            }
                            if id.value() > after {
                                ids.push(id.value());
                            }
                        }
                        ids.sort_unstable();
                        Box::new(ids.into_iter().map(Ok))
                    }
                    (None, Some(status)) => {
                        let code = status_code(status);
                        let index = txn.open_table(STATUS_IDS)?;
                        let range = index.range((code, after.saturating_add(1))..=(code, u64::MAX))?;
                        Box::new(range.map(|entry| Ok(entry?.0.value().1)))
                    }
                    (None, None) => {
                        Box::new(pipelines.range(after.saturating_add(1)..)?.map(|entry| Ok(entry?.0.value())))
                    }
                };
            let mut page = Page::default();
            for id in candidates {
                let id = id?;
                if page.records.len() == limit {
                    page.next_after = page.records.last().map(|r| r.id);
                    break;
                }
                let Some(bytes) = pipelines.get(id)?.map(|v| v.value().to_vec()) else { continue };
                match decode(id, &bytes) {
                    Ok(record) => {
                        if query.status.is_none_or(|s| s == record.status) {
                            page.records.push(record);
                        }
                    }
                    Err(error) => {
                        tracing::error!(id, %error, "catalog record unreadable: skipped in the list");
                        page.unreadable.push(id);
                    }
                }
            }
            Ok(page)
        })
    }

    /// The counters of `/metrics`, read from the catalog's own books: no scan.
    pub fn counts(&self) -> Result<Counts, CatalogError> {
        self.read(|txn| {
            let counts = txn.open_table(COUNTS)?;
            let get = |key: &str| -> Result<u64, CatalogError> { Ok(counts.get(key)?.map(|v| v.value()).unwrap_or(0)) };
            let mut out = Counts::default();
            for status in Status::ALL {
                out.by_status.insert(status, get(&status_count_key(status))?);
            }
            for entry in counts.range("pending/".."pending0")? {
                let (key, value) = entry?;
                if let Some(ordinal) = key.value().strip_prefix("pending/").and_then(|o| o.parse().ok()) {
                    out.pending_by_ordinal.insert(ordinal, value.value());
                }
            }
            out.sources = get(SOURCES_COUNT)?;
            out.source_bytes = get(SOURCES_BYTES)?;
            let unreferenced = txn.open_table(UNREFERENCED)?;
            for kind in [Kind::Source, Kind::Artifact] {
                let code = kind as u8;
                let n = unreferenced.range((code, "")..(code + 1, ""))?.count() as u64;
                out.unreferenced.insert(kind.as_str(), n);
            }
            Ok(out)
        })
    }

    pub fn source(&self, source_sha256: &str) -> Result<Option<Vec<ProgramFile>>, CatalogError> {
        self.read(|txn| {
            let table = txn.open_table(SOURCES)?;
            let value = table.get(source_sha256)?;
            value.map(|v| decode_source(source_sha256, v.value())).transpose()
        })
    }

    pub fn log(&self, id: u64) -> Result<Option<String>, CatalogError> {
        self.read(|txn| {
            let table = txn.open_table(LOGS)?;
            Ok(table.get(id)?.map(|v| v.value().to_owned()))
        })
    }
}
