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

mod tables;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable};

use kiln_core::api::{Change, Status};
use kiln_core::program::ProgramFile;

use crate::records::{self, RecordError};
pub use crate::rules::Submitted;
use crate::rules::{ClaimKey, Pipeline, Report, ReportRefused};
pub use tables::Kind;
use tables::{
    Books, COUNTS, LOGS, MEMBERS, META, NAMES, PIPELINES, SOURCES, SOURCES_BYTES, SOURCES_COUNT, STATUS_IDS,
    UNREFERENCED, pending_count_key, status_code, status_count_key,
};

const NEXT_ID: &str = "next_pipeline_id";
/// The layout of the database; absent in a database written by Kiln 0.1 (0).
const SCHEMA_KEY: &str = "schema_version";
/// 1: records in versioned envelopes. 2: indexes, counters and reference counts.
pub const CATALOG_SCHEMA: u64 = 2;

/// Longest build log kept; longer logs keep their beginning and end. Workers cap
/// their logs first (`--max-log-bytes`, at most half the message limit); this is
/// the leader's own bound on what any caller sends.
pub const MAX_LOG_BYTES: usize = kiln_proto::MAX_MESSAGE_BYTES / 2 + 64 * 1024;

/// Page sizes of the list API.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Database(#[from] redb::Error),
    #[error("catalog record {what} is unreadable: {error}")]
    Corrupt { what: String, error: RecordError },
    #[error(
        "the catalog was written by a newer Kiln (catalog schema {found}; this one reads up to {CATALOG_SCHEMA}): run that version, or restore a backup"
    )]
    Newer { found: u64 },
    #[error(transparent)]
    Refused(#[from] ReportRefused),
    #[error(transparent)]
    NotCancellable(#[from] crate::rules::NotCancellable),
}

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CatalogError {
            fn from(e: $t) -> Self { CatalogError::Database(e.into()) }
        }
    )*};
}
impl_from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

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

impl CatalogError {
    /// An I/O error of the database's file (a full disk, a failed write): the
    /// database must be reopened before it is used again.
    pub fn is_io(&self) -> bool {
        matches!(self, CatalogError::Database(redb::Error::Io(_) | redb::Error::PreviousIo))
    }

    /// The disk under the catalog is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CatalogError::Database(redb::Error::Io(e)) if kiln_core::disk::is_full(e))
    }
}

fn decode(id: u64, bytes: &[u8]) -> Result<Pipeline, CatalogError> {
    records::decode_pipeline(bytes).map_err(|error| CatalogError::Corrupt { what: format!("pipeline {id}"), error })
}

fn corrupt(what: String, reason: &str) -> CatalogError {
    CatalogError::Corrupt { what, error: RecordError::Unreadable(reason.to_owned()) }
}

fn truncate_log(log: &str) -> String {
    if log.len() <= MAX_LOG_BYTES {
        return log.to_owned();
    }
    let half = MAX_LOG_BYTES / 2;
    let head_end = (0..=half).rev().find(|&i| log.is_char_boundary(i)).unwrap_or(0);
    let tail_start = (log.len() - half..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
    format!(
        "{}\n\n[... {} bytes of the log left out ...]\n\n{}",
        &log[..head_end],
        tail_start - head_end,
        &log[tail_start..]
    )
}

/// The record `id` as stored, or None.
fn load(pipelines: &impl ReadableTable<u64, &'static [u8]>, id: u64) -> Result<Option<Pipeline>, CatalogError> {
    let bytes = pipelines.get(id)?.map(|v| v.value().to_vec());
    bytes.map(|bytes| decode(id, &bytes)).transpose()
}

impl Catalog {
    /// Opens (or creates) the catalog, bringing a database of an earlier schema up
    /// to this one in the opening transaction: all of it or none.
    pub fn open(path: &Path, now_ms: u64) -> Result<Catalog, CatalogError> {
        let db = Database::create(path)?;
        Catalog::upgrade(&db, now_ms)?;
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

    fn upgrade(db: &Database, now_ms: u64) -> Result<(), CatalogError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(PIPELINES)?;
            txn.open_table(SOURCES)?;
            txn.open_table(NAMES)?;
            txn.open_table(LOGS)?;
            txn.open_table(MEMBERS)?;
            drop(Books::open(&txn)?);
            let schema = txn.open_table(META)?.get(SCHEMA_KEY)?.map(|v| v.value());
            match schema {
                Some(found) if found > CATALOG_SCHEMA => return Err(CatalogError::Newer { found }),
                Some(CATALOG_SCHEMA) => {}
                found => {
                    if found.is_none() {
                        migrate_from_schema_zero(&txn)?;
                    }
                    tables::rebuild(&txn, now_ms)?;
                    txn.open_table(META)?.insert(SCHEMA_KEY, CATALOG_SCHEMA)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Creates a pipeline, or a new version of it when its source changed. The same
    /// source again changes nothing, except that a `system_error` is retried.
    /// Stores a submission. With `binary_cache` (the farm's dependency set and
    /// build settings fingerprints), a new version whose binary the cache holds
    /// ends `success` at once, served that binary, and `binary_cache_hit` says so.
    pub fn submit(
        &self,
        name: &str,
        source_sha256: &str,
        files: &[ProgramFile],
        workers: u32,
        binary_cache: Option<(&str, &str)>,
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
                    let submitted = crate::rules::resubmit(&old, source_sha256, workers, now_ms);
                    (Some(old), submitted)
                }
                None => {
                    let id = meta.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
                    meta.insert(NEXT_ID, id + 1)?;
                    names.insert(name, id)?;
                    let record = Pipeline::new(id, name, source_sha256, workers, now_ms);
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
                if let Some((depset, settings)) = binary_cache {
                    let mut found = None;
                    let id = submitted.record.id;
                    for key in crate::rules::binary_cache_candidates(source_sha256, depset, settings, id) {
                        if let Some(cached) = books.cached_binary(&key)? {
                            found = Some((key, cached));
                            break;
                        }
                    }
                    if let Some((key, cached)) = found {
                        let record = &mut submitted.record;
                        record.serve_cached(key, depset, &cached, now_ms);
                        let log = crate::rules::binary_cache_hit_log(source_sha256, depset, settings, &cached);
                        txn.open_table(LOGS)?.insert(record.id, log.as_str())?;
                    }
                }
                books.put(old.as_ref(), Some(&submitted.record), now_ms)?;
            }
            Ok(submitted)
        })
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

    /// Hands the oldest pending pipeline of `ordinal` to it, with its source: the
    /// first entry of the `(ordinal, pending)` index, O(log n). An unreadable record
    /// found there is taken out of the queue (and named in the log), not handed out.
    pub fn claim(
        &self,
        ordinal: u32,
        depset: &str,
        now_ms: u64,
    ) -> Result<Option<(Pipeline, Vec<ProgramFile>)>, CatalogError> {
        let pending = status_code(Status::Pending);
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let sources = txn.open_table(SOURCES)?;
            let claimed = loop {
                let first = match books.by_status.range((ordinal, pending, 0)..=(ordinal, pending, u64::MAX))?.next() {
                    Some(entry) => Some(entry?.0.value().2),
                    None => None,
                };
                let Some(id) = first else { break None };
                let record = match load(&books.pipelines, id) {
                    Ok(Some(record)) => record,
                    Ok(None) | Err(_) => {
                        tracing::error!(id, ordinal, "catalog record unreadable or missing: taken out of the queue");
                        books.by_status.remove((ordinal, pending, id))?;
                        books.status_ids.remove((pending, id))?;
                        books.add(&status_count_key(Status::Pending), -1)?;
                        books.add(&pending_count_key(ordinal), -1)?;
                        continue;
                    }
                };
                let mut claimed = record.clone();
                claimed.claim(now_ms);
                claimed.depset = Some(depset.to_owned());
                let source = match sources.get(claimed.source_sha256.as_str())? {
                    Some(bytes) => decode_source(&claimed.source_sha256, bytes.value())?,
                    None => return Err(corrupt(format!("pipeline {}", claimed.id), "its source is missing")),
                };
                books.put(Some(&record), Some(&claimed), now_ms)?;
                break Some((claimed, source));
            };
            Ok(claimed)
        })
    }

    /// Applies a worker's report to the pipeline it claimed, and keeps the build log
    /// when one comes with it.
    pub fn report(
        &self,
        claim: &ClaimKey,
        member: (u32, u64),
        report: Report,
        log: Option<&str>,
        now_ms: u64,
    ) -> Result<Pipeline, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let mut logs = txn.open_table(LOGS)?;
            let members = txn.open_table(MEMBERS)?;
            let old = check_holder(&books.pipelines, &members, claim, member)?;
            let mut record = old.clone();
            record.apply(claim, report, now_ms)?;
            books.put(Some(&old), Some(&record), now_ms)?;
            if let Some(log) = log {
                logs.insert(record.id, truncate_log(log).as_str())?;
            }
            Ok(record)
        })
    }

    /// Records that the binary `sha256` of `size` bytes (as the leader measured it)
    /// arrived under `claim`, from `member` (ordinal, incarnation), which must hold
    /// it. `stored` says, inside this transaction, whether the file is in place: a
    /// collection that removed it in between makes this an error, and the worker
    /// uploads again.
    pub fn record_upload(
        &self,
        claim: &ClaimKey,
        member: (u32, u64),
        sha256: &str,
        size: u64,
        stored: impl FnOnce() -> bool,
        now_ms: u64,
    ) -> Result<(), CatalogError> {
        self.write(|txn| {
            {
                let mut books = Books::open(txn)?;
                let members = txn.open_table(MEMBERS)?;
                let old = check_holder(&books.pipelines, &members, claim, member)?;
                if !stored() {
                    return Err(corrupt(format!("artifact {sha256}"), "it was removed before its upload was recorded"));
                }
                let mut record = old.clone();
                record.upload_received(claim, sha256, size);
                books.put(Some(&old), Some(&record), now_ms)?;
            }
            Ok(())
        })
    }

    /// Whether `member` (ordinal, incarnation) holds `claim` now.
    pub fn check_holds(&self, claim: &ClaimKey, member: (u32, u64)) -> Result<(), CatalogError> {
        self.read(|txn| check_holder(&txn.open_table(PIPELINES)?, &txn.open_table(MEMBERS)?, claim, member).map(|_| ()))
    }

    /// Whether a worker's claim is still the build the catalog waits for.
    pub fn is_current(&self, claim: &ClaimKey) -> Result<bool, CatalogError> {
        Ok(self.get(claim.pipeline_id)?.is_some_and(|r| r.is_current(claim)))
    }

    /// The incarnation the catalog knows for `ordinal`.
    pub fn incarnation_of(&self, ordinal: u32) -> Result<Option<u64>, CatalogError> {
        self.read(|txn| Ok(txn.open_table(MEMBERS)?.get(ordinal)?.map(|v| v.value())))
    }

    /// Records that member `ordinal` runs as `incarnation`. When that is new, the
    /// pipelines its previous incarnation held go back to `pending`; their ids are
    /// returned.
    pub fn member_seen(&self, ordinal: u32, incarnation: u64, now_ms: u64) -> Result<Vec<u64>, CatalogError> {
        if self.incarnation_of(ordinal)? == Some(incarnation) {
            return Ok(Vec::new());
        }
        self.write(|txn| {
            let mut members = txn.open_table(MEMBERS)?;
            let mut books = Books::open(txn)?;
            members.insert(ordinal, incarnation)?;
            let mut stranded = Vec::new();
            for status in [Status::Compiling, Status::Uploading] {
                let code = status_code(status);
                for entry in books.by_status.range((ordinal, code, 0)..=(ordinal, code, u64::MAX))? {
                    stranded.push(entry?.0.value().2);
                }
            }
            let mut requeued = Vec::new();
            for id in stranded {
                let Some(old) = load(&books.pipelines, id)? else { continue };
                let mut record = old.clone();
                record.member_lost(ordinal, now_ms);
                books.put(Some(&old), Some(&record), now_ms)?;
                requeued.push(id);
            }
            Ok(requeued)
        })
    }

    /// The claims in flight (`compiling` or `uploading`), with their ordinal.
    pub fn in_flight(&self) -> Result<Vec<(ClaimKey, u32)>, CatalogError> {
        self.read(|txn| {
            let index = txn.open_table(STATUS_IDS)?;
            let pipelines = txn.open_table(PIPELINES)?;
            let mut claims = Vec::new();
            for status in [Status::Compiling, Status::Uploading] {
                let code = status_code(status);
                for entry in index.range((code, 0)..=(code, u64::MAX))? {
                    let id = entry?.0.value().1;
                    match load(&pipelines, id) {
                        Ok(Some(record)) => claims.push((record.claim_key(), record.worker)),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(id, %error, "catalog record unreadable: its lease is not watched")
                        }
                    }
                }
            }
            Ok(claims)
        })
    }

    /// Puts `claim` back to `pending` for the same ordinal if it is still current,
    /// with `reason` in its history; returns the record when it did.
    pub fn requeue_claim(&self, claim: &ClaimKey, reason: &str, now_ms: u64) -> Result<Option<Pipeline>, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let requeued = match load(&books.pipelines, claim.pipeline_id)? {
                Some(old) if old.is_current(claim) => {
                    let mut record = old.clone();
                    record.requeue(now_ms, reason);
                    books.put(Some(&old), Some(&record), now_ms)?;
                    Some(record)
                }
                _ => None,
            };
            Ok(requeued)
        })
    }

    /// The artifact `sha256` failed its hash and was removed: every pipeline whose
    /// binary it was goes back to `pending` (rebuilt), with the reason recorded.
    pub fn artifact_lost(&self, sha256: &str, reason: &str, now_ms: u64) -> Result<Vec<Pipeline>, CatalogError> {
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let mut ids = Vec::new();
            for entry in books.by_artifact.range((sha256, 0)..=(sha256, u64::MAX))? {
                ids.push(entry?.0.value().1);
            }
            let mut rebuilt = Vec::new();
            for id in ids {
                let Some(old) = load(&books.pipelines, id)? else { continue };
                let mut record = old.clone();
                record.rebuild(now_ms, reason.to_owned());
                books.put(Some(&old), Some(&record), now_ms)?;
                rebuilt.push(record);
            }
            // Never served again from the cache: its rebuild enters it anew.
            books.forget_binary(sha256)?;
            Ok(rebuilt)
        })
    }

    /// Schedules for collection every artifact in `stored` that no record points at
    /// and that is not scheduled yet: files a crash, an old version or a hand left.
    pub fn adopt_artifacts(&self, stored: &[String], now_ms: u64) -> Result<usize, CatalogError> {
        self.write(|txn| {
            let mut adopted = 0;
            {
                let mut books = Books::open(txn)?;
                let code = Kind::Artifact as u8;
                for sha in stored {
                    if !books.referenced(Kind::Artifact, sha)?
                        && books.unreferenced.get((code, sha.as_str()))?.is_none()
                    {
                        books.unreferenced.insert((code, sha.as_str()), now_ms)?;
                        adopted += 1;
                    }
                }
            }
            Ok(adopted)
        })
    }

    /// Removes the sources and artifacts no record has pointed at since
    /// `now_ms - retention_ms`. Decided and done inside one write transaction:
    /// a submission or an upload recorded before it keeps what it references (it
    /// is no longer unreferenced), and one after it stores its source again or
    /// finds its artifact gone and uploads again. `remove_artifact` deletes a file;
    /// one it fails to delete stays scheduled.
    pub fn collect(
        &self,
        now_ms: u64,
        retention_ms: u64,
        mut remove_artifact: impl FnMut(&str) -> std::io::Result<()>,
    ) -> Result<Collected, CatalogError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        self.write(|txn| {
        let mut collected = Collected::default();
        {
            let mut books = Books::open(txn)?;
            let mut sources = txn.open_table(SOURCES)?;
            let mut due = Vec::new();
            for entry in books.unreferenced.iter()? {
                let (key, since) = entry?;
                let (code, sha) = key.value();
                if since.value() <= cutoff {
                    due.push((code, sha.to_owned()));
                }
            }
            for (code, sha) in due {
                let kind = Kind::from_code(code);
                if kind.is_none() || books.referenced(kind.unwrap_or(Kind::Source), &sha)? {
                    books.unreferenced.remove((code, sha.as_str()))?;
                    continue;
                }
                match kind {
                    Some(Kind::Source) => {
                        if let Some(bytes) = sources.remove(sha.as_str())? {
                            let size = bytes.value().len() as i64;
                            drop(bytes);
                            books.add(SOURCES_COUNT, -1)?;
                            books.add(SOURCES_BYTES, -size)?;
                            collected.sources += 1;
                        }
                    }
                    Some(Kind::Artifact) => match remove_artifact(&sha) {
                        Ok(()) => collected.artifacts += 1,
                        Err(error) => {
                            tracing::warn!(sha256 = %sha, %error, "could not remove an unreferenced artifact; trying again later");
                            continue;
                        }
                    },
                    None => {}
                }
                books.unreferenced.remove((code, sha.as_str()))?;
            }
        }
        Ok(collected)
        })
    }
}

fn decode_source(sha: &str, bytes: &[u8]) -> Result<Vec<ProgramFile>, CatalogError> {
    records::decode_source(bytes).map_err(|error| CatalogError::Corrupt { what: format!("source {sha}"), error })
}

/// Rewrites a database of Kiln 0.1 (bare pipeline JSON, protobuf sources) in the
/// current record format, inside the opening transaction: all of it or none.
fn migrate_from_schema_zero(txn: &redb::WriteTransaction) -> Result<(), CatalogError> {
    let mut sources = txn.open_table(SOURCES)?;
    let legacy: Vec<(String, Vec<u8>)> = sources
        .iter()?
        .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    for (sha, bytes) in legacy {
        let migrated = records::migrate_source(&bytes)
            .map_err(|error| CatalogError::Corrupt { what: format!("source {sha}"), error })?;
        sources.insert(sha.as_str(), migrated.as_slice())?;
    }
    let mut pipelines = txn.open_table(PIPELINES)?;
    let legacy: Vec<(u64, Vec<u8>)> =
        pipelines.iter()?.map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec()))).collect::<Result<_, _>>()?;
    if !legacy.is_empty() {
        tracing::info!(pipelines = legacy.len(), "rewriting a Kiln 0.1 catalog in the current record format");
    }
    for (id, bytes) in legacy {
        pipelines.insert(id, records::encode_pipeline(&decode(id, &bytes)?).as_slice())?;
    }
    Ok(())
}

/// The record of `claim` if `member` (ordinal, incarnation) holds it, as
/// [`crate::rules::held_by`] decides from the record and the incarnation the
/// catalog knows for its ordinal.
fn check_holder(
    pipelines: &impl ReadableTable<u64, &'static [u8]>,
    members: &impl ReadableTable<u32, u64>,
    claim: &ClaimKey,
    member: (u32, u64),
) -> Result<Pipeline, CatalogError> {
    let record = load(pipelines, claim.pipeline_id)?;
    let known = match &record {
        Some(record) => members.get(record.worker)?.map(|v| v.value()),
        None => None,
    };
    Ok(crate::rules::held_by(record, claim, member, known)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Figures;
    use kiln_core::api::CacheFigures;

    fn src(text: &str) -> Vec<ProgramFile> {
        vec![ProgramFile { path: "src/main.rs".into(), content: text.as_bytes().to_vec(), executable: false }]
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap();
        (dir, catalog)
    }

    #[test]
    fn ids_grow_and_versions_follow_the_source() {
        let (_dir, c) = catalog();
        let a = c.submit("a", "s1", &src("src"), 3, None, 1).unwrap();
        let b = c.submit("b", "s2", &src("src2"), 3, None, 2).unwrap();
        assert_eq!((a.record.id, b.record.id), (1, 2));
        assert_eq!((a.change, a.record.worker), (Change::Created, 1));
        let same = c.submit("a", "s1", &src("src"), 3, None, 3).unwrap();
        assert_eq!((same.change, same.record.version), (Change::Unchanged, 1));
        let next = c.submit("a", "s3", &src("src3"), 3, None, 4).unwrap();
        assert_eq!((next.change, next.record.id, next.record.version), (Change::Updated, 1, 2));
        c.delete(2, 5).unwrap();
        assert_eq!(c.submit("c", "s4", &src("x"), 3, None, 5).unwrap().record.id, 3, "ids are never reused");
    }

    #[test]
    fn claims_are_exclusive_and_by_ordinal() {
        let (_dir, c) = catalog();
        for name in ["a", "b", "c", "d"] {
            c.submit(name, name, &src(name), 3, None, 0).unwrap();
        }
        let (first, source) = c.claim(1, "set", 1).unwrap().unwrap();
        assert_eq!((first.id, source), (1, src("a")));
        let (second, _) = c.claim(1, "set", 1).unwrap().unwrap();
        assert_eq!(second.id, 4);
        assert!(c.claim(1, "set", 1).unwrap().is_none(), "nothing is handed out twice");
        assert_eq!(c.claim(0, "set", 1).unwrap().unwrap().0.id, 3);
    }

    #[test]
    fn a_restarted_member_gets_its_work_back_and_old_reports_are_refused() {
        let (dir, c) = catalog();
        c.submit("a", "s", &src("x"), 2, None, 0).unwrap();
        assert!(c.member_seen(1, 111, 0).unwrap().is_empty());
        let (record, _) = c.claim(1, "set", 1).unwrap().unwrap();
        let old_claim = record.claim_key();
        drop(c);
        let c = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap();
        assert!(
            c.member_seen(1, 111, 2).unwrap().is_empty(),
            "the same incarnation keeps its work across a leader restart"
        );
        assert!(c.is_current(&old_claim).unwrap());
        assert_eq!(c.member_seen(1, 222, 3).unwrap(), vec![1]);
        assert_eq!(c.get(1).unwrap().unwrap().status, Status::Pending);
        let refused = c.report(&old_claim, (1, 111), Report::Compiling, None, 4);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::StaleClaim { .. }))));
        let (again, _) = c.claim(1, "set", 5).unwrap().unwrap();
        assert_eq!(again.attempt, 2);
        let figures = Figures { cache: CacheFigures::default(), ..Figures::default() };
        // Not from another ordinal, nor from the incarnation that restarted away.
        for stranger in [(0, 222), (1, 111)] {
            let refused = c.report(&again.claim_key(), stranger, Report::Compiling, None, 6);
            assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
            let refused = c.record_upload(&again.claim_key(), stranger, &"a".repeat(64), 1, || true, 6);
            assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
        }
        // Success names only what was uploaded under this claim.
        let success = |sha: &str| Report::Success {
            binary_sha256: sha.into(),
            binary_size: 99,
            figures: figures.clone(),
            build_settings: String::new(),
            ran_submitted_code: false,
        };
        let refused = c.report(&again.claim_key(), (1, 222), success(&"b".repeat(64)), None, 6);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotUploaded { .. }))));
        c.record_upload(&again.claim_key(), (1, 222), &"c".repeat(64), 7, || true, 6).unwrap();
        let refused = c.report(&again.claim_key(), (1, 222), success(&"b".repeat(64)), None, 6);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotUploaded { .. }))), "another binary");
        let done = c
            .report(
                &again.claim_key(),
                (1, 222),
                Report::CompileError { error: "e".into(), figures },
                Some("log text"),
                6,
            )
            .unwrap();
        assert_eq!(done.status, Status::CompileError);
        assert_eq!(c.log(1).unwrap().as_deref(), Some("log text"));
    }

    #[test]
    fn long_logs_keep_both_ends() {
        let log = format!("{}{}", "a".repeat(MAX_LOG_BYTES), "b".repeat(100));
        let kept = truncate_log(&log);
        assert!(kept.len() < log.len());
        assert!(kept.starts_with('a') && kept.ends_with('b') && kept.contains("left out"));
    }

    #[test]
    fn a_schema_zero_catalog_is_rewritten_once_and_keeps_everything() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let pipeline = crate::rules::tests::record(1);
        {
            // What Kiln 0.1 wrote: bare JSON records, protobuf sources, no schema key.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut pipelines = txn.open_table(PIPELINES).unwrap();
                pipelines.insert(1, serde_json::to_vec(&pipeline).unwrap().as_slice()).unwrap();
                let mut names = txn.open_table(NAMES).unwrap();
                names.insert(pipeline.name.as_str(), 1).unwrap();
                let mut sources = txn.open_table(SOURCES).unwrap();
                let bundle = kiln_core::cluster::source_bundle(&src("old")).encode_to_vec();
                sources.insert("s", bundle.as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(NEXT_ID, 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let c = Catalog::open(&path, 0).unwrap();
        assert_eq!(c.get(1).unwrap().unwrap(), pipeline);
        assert_eq!(c.source("s").unwrap().unwrap(), src("old"));
        let (claimed, source) = c.claim(1, "set", 5).unwrap().unwrap();
        assert_eq!((claimed.id, source), (1, src("old")));
        drop(c);
        let c = Catalog::open(&path, 0).unwrap();
        assert_eq!(c.get(1).unwrap().unwrap().status, Status::Compiling, "a second open changes nothing");
    }

    #[test]
    fn a_catalog_from_a_newer_kiln_is_refused_in_words() {
        let (dir, c) = catalog();
        {
            let txn = c.db().unwrap().begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 99).unwrap();
            txn.commit().unwrap();
        }
        drop(c);
        let error = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap_err().to_string();
        assert!(error.contains("newer Kiln (catalog schema 99"), "{error}");
    }

    /// Takes pipeline `name` (on `ordinal` of `workers`) through a build that
    /// uploads `sha`, as a worker would.
    fn build(c: &Catalog, ordinal: u32, sha: &str, now: u64) -> Pipeline {
        build_running(c, ordinal, sha, now, false)
    }

    /// [`build`], by a build that ran code of its submitter or not.
    fn build_running(c: &Catalog, ordinal: u32, sha: &str, now: u64, ran_submitted_code: bool) -> Pipeline {
        c.member_seen(ordinal, 7, now).unwrap();
        let (record, _) = c.claim(ordinal, "set", now).unwrap().expect("something to claim");
        let claim = record.claim_key();
        c.record_upload(&claim, (ordinal, 7), sha, 10, || true, now).unwrap();
        let success = Report::Success {
            binary_sha256: sha.into(),
            binary_size: 10,
            figures: Figures { compile_ms: 900, ..Figures::default() },
            build_settings: SETTINGS.into(),
            ran_submitted_code,
        };
        c.report(&claim, (ordinal, 7), success, Some("built"), now).unwrap()
    }

    const SETTINGS: &str = "settings-of-the-farm";

    /// A binary whose build ran its submitter's code read compile-cache entries
    /// only that pipeline's builds made: served again to that pipeline, to no other.
    #[test]
    fn a_binary_built_running_submitted_code_is_served_to_its_own_pipeline_only() {
        let (_dir, c) = catalog();
        let farm = Some(("set", SETTINGS));
        let sha = "b".repeat(64);
        c.submit("scripted", "s", &src("same"), 1, farm, 0).unwrap();
        build_running(&c, 0, &sha, 1, true);
        let other = c.submit("other", "s", &src("same"), 1, farm, 2).unwrap().record;
        assert_eq!((other.status, other.binary_cache_hit), (Status::Pending, None), "not to another pipeline");
        c.delete(other.id, 2).unwrap();
        c.submit("scripted", "t", &src("changed"), 1, farm, 3).unwrap();
        let back = c.submit("scripted", "s", &src("same"), 1, farm, 4).unwrap().record;
        assert_eq!((back.status, back.binary_sha256.as_deref()), (Status::Success, Some(sha.as_str())), "{back:?}");
        assert_eq!(back.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.version)), Some((1, 1)));
    }

    #[test]
    fn a_known_binary_is_served_at_once_while_it_is_stored_and_never_after_it_is_lost() {
        let (_dir, c) = catalog();
        let farm = Some(("set", SETTINGS));
        let sha = "a".repeat(64);
        let first = c.submit("first", "s", &src("same"), 1, farm, 0).unwrap();
        assert_eq!(first.record.status, Status::Pending, "nothing is known yet");
        build(&c, 0, &sha, 1);

        // The same source under another name: success at once, no claim.
        let again = c.submit("again", "s", &src("same"), 1, farm, 2).unwrap().record;
        assert_eq!(
            (again.status, again.binary_sha256.as_deref(), again.attempt),
            (Status::Success, Some(sha.as_str()), 0)
        );
        let hit = again.binary_cache_hit.as_ref().expect("recorded as a binary cache hit");
        assert_eq!((hit.pipeline_id, hit.version, hit.saved_ms), (1, 1, 900));
        assert!(c.log(again.id).unwrap().unwrap().contains("binary cache hit"));
        assert!(c.claim(0, "set", 3).unwrap().is_none(), "nothing to build");

        // Other settings, another set, another source: built.
        for (name, source, farm) in [
            ("toolchain", "s", Some(("set", "other-settings"))),
            ("depset", "s", Some(("other-set", SETTINGS))),
            ("source", "t", farm),
            ("off", "s", None),
        ] {
            let r = c.submit(name, source, &src(source), 1, farm, 4).unwrap().record;
            assert_eq!((r.status, r.binary_cache_hit), (Status::Pending, None), "{name}");
            c.delete(r.id, 4).unwrap();
        }

        // Still served while unreferenced but not collected; not once collected.
        for id in [1, 2] {
            c.delete(id, 10).unwrap();
        }
        let kept = c.submit("kept", "s", &src("same"), 1, farm, 11).unwrap().record;
        assert_eq!(kept.status, Status::Success, "the artifact is still stored");
        c.delete(kept.id, 12).unwrap();
        c.collect(10_000, 1000, |_| Ok(())).unwrap();
        let collected = c.submit("collected", "s", &src("same"), 1, farm, 10_001).unwrap().record;
        assert_eq!(collected.status, Status::Pending, "its artifact is gone: built again");

        // A binary that failed its hash is never served again.
        build(&c, 0, &"b".repeat(64), 10_002);
        c.artifact_lost(&"b".repeat(64), "its bytes failed their hash", 10_003).unwrap();
        let lost = c.submit("lost", "s", &src("same"), 1, farm, 10_004).unwrap().record;
        assert_eq!(lost.status, Status::Pending, "a lost binary is not served");
    }

    /// What the counters say, checked against a scan of every record.
    fn assert_counts_match_a_scan(c: &Catalog) {
        let counts = c.counts().unwrap();
        let all = c.page(&PageQuery { limit: MAX_PAGE, ..PageQuery::default() }).unwrap().records;
        for status in Status::ALL {
            let scanned = all.iter().filter(|r| r.status == status).count() as u64;
            assert_eq!(counts.by_status[&status], scanned, "{status}");
        }
        for ordinal in 0..3 {
            let scanned = all.iter().filter(|r| r.status == Status::Pending && r.worker == ordinal).count() as u64;
            assert_eq!(counts.pending_by_ordinal.get(&ordinal).copied().unwrap_or(0), scanned, "ordinal {ordinal}");
        }
    }

    #[test]
    fn pages_follow_ids_and_filter_by_status_and_name() {
        let (_dir, c) = catalog();
        for i in 1..=10 {
            let name = if i % 2 == 0 { format!("even-{i}") } else { format!("odd-{i}") };
            c.submit(&name, &format!("s{i}"), &src(&name), 3, None, i).unwrap();
        }
        let first = c.page(&PageQuery { limit: 4, ..PageQuery::default() }).unwrap();
        assert_eq!(first.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(first.next_after, Some(4));
        let last = c.page(&PageQuery { after: 8, limit: 4, ..PageQuery::default() }).unwrap();
        assert_eq!(last.records.iter().map(|r| r.id).collect::<Vec<_>>(), [9, 10]);
        assert_eq!(last.next_after, None, "no page after the last");

        build(&c, 1, &"a".repeat(64), 20);
        let pending = c.page(&PageQuery { limit: 100, status: Some(Status::Pending), ..PageQuery::default() }).unwrap();
        assert_eq!(pending.records.len(), 9);
        let done = c.page(&PageQuery { limit: 100, status: Some(Status::Success), ..PageQuery::default() }).unwrap();
        assert_eq!(done.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
        let even = c.page(&PageQuery { limit: 2, name_prefix: Some("even-".into()), ..PageQuery::default() }).unwrap();
        assert_eq!(even.records.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(even.next_after, Some(4));
        let odd_pending =
            PageQuery { limit: 100, status: Some(Status::Pending), name_prefix: Some("odd".into()), after: 0 };
        assert_eq!(c.page(&odd_pending).unwrap().records.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 5, 7, 9]);
    }

    #[test]
    fn counters_move_with_every_write() {
        let (_dir, c) = catalog();
        for i in 1..=9 {
            c.submit(&format!("p{i}"), &format!("s{i}"), &src("x"), 3, None, i).unwrap();
        }
        assert_counts_match_a_scan(&c);
        build(&c, 1, &"a".repeat(64), 10);
        c.member_seen(2, 1, 11).unwrap();
        c.claim(2, "set", 11).unwrap().unwrap();
        assert_counts_match_a_scan(&c);
        c.member_seen(2, 2, 12).unwrap();
        c.delete(3, 13).unwrap();
        c.submit("p4", "changed", &src("y"), 3, None, 14).unwrap();
        assert_counts_match_a_scan(&c);
        let counts = c.counts().unwrap();
        assert_eq!((counts.sources, counts.unreferenced["source"]), (10, 2), "s3 (deleted) and s4 (replaced) wait");
    }

    #[test]
    fn an_unreadable_record_is_skipped_and_blocks_nothing() {
        let (_dir, c) = catalog();
        for i in 1..=4 {
            c.submit(&format!("p{i}"), &format!("s{i}"), &src("x"), 1, None, i).unwrap();
        }
        {
            let txn = c.db().unwrap().begin_write().unwrap();
            txn.open_table(PIPELINES).unwrap().insert(2, b"{not json".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let page = c.page(&PageQuery { limit: 10, ..PageQuery::default() }).unwrap();
        assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(page.unreadable, [2]);
        assert_eq!(c.claim(0, "set", 5).unwrap().unwrap().0.id, 1);
        assert_eq!(c.claim(0, "set", 5).unwrap().unwrap().0.id, 3, "the unreadable record is passed over");
        assert_eq!(c.claim(0, "set", 5).unwrap().unwrap().0.id, 4);
        assert!(c.claim(0, "set", 5).unwrap().is_none());
        assert!(matches!(c.get(2), Err(CatalogError::Corrupt { .. })), "asked for by id, it is an error naming it");
    }

    #[test]
    fn unreferenced_files_go_after_the_retention_and_shared_ones_stay() {
        let (_dir, c) = catalog();
        let sha = "b".repeat(64);
        c.submit("one", "s-shared", &src("same"), 1, None, 0).unwrap();
        build(&c, 0, &sha, 1);
        c.submit("two", "s-shared", &src("same"), 1, None, 2).unwrap();
        build(&c, 0, &sha, 3);
        c.delete(1, 100).unwrap();
        let mut removed = Vec::new();
        let mut remove = |sha: &str| {
            removed.push(sha.to_owned());
            Ok(())
        };
        let collected = c.collect(10_000, 1000, &mut remove).unwrap();
        assert_eq!(collected, Collected::default(), "pipeline two still uses the source and the artifact");
        c.delete(2, 200).unwrap();
        assert_eq!(c.collect(1000, 1000, |_| panic!("too early")).unwrap(), Collected::default());
        let collected = c.collect(1200, 1000, &mut remove).unwrap();
        assert_eq!(collected, Collected { sources: 1, artifacts: 1 });
        assert_eq!(removed, std::slice::from_ref(&sha));
        assert!(c.source("s-shared").unwrap().is_none());
        assert_eq!(c.counts().unwrap().sources, 0);

        // A file that fails to go stays scheduled; one referenced again is kept.
        c.adopt_artifacts(&["c".repeat(64)], 300).unwrap();
        let failed = c.collect(2000, 1000, |_| Err(std::io::Error::other("busy"))).unwrap();
        assert_eq!(failed.artifacts, 0);
        assert_eq!(c.counts().unwrap().unreferenced["artifact"], 1);
        c.submit("three", "s3", &src("3"), 1, None, 2100).unwrap();
        build(&c, 0, &"c".repeat(64), 2100);
        assert_eq!(c.collect(9000, 1000, |_| panic!("it is referenced")).unwrap(), Collected::default());
    }

    #[test]
    fn a_lost_artifact_sends_every_pipeline_using_it_back_to_be_rebuilt() {
        let (_dir, c) = catalog();
        let sha = "d".repeat(64);
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            c.submit(name, "same", &src("same"), 1, None, i as u64).unwrap();
            build(&c, 0, &sha, i as u64);
        }
        let rebuilt = c.artifact_lost(&sha, "its bytes failed their hash", 50).unwrap();
        assert_eq!(rebuilt.len(), 2);
        for record in rebuilt {
            assert_eq!((record.status, record.binary_sha256.as_deref()), (Status::Pending, None));
            assert!(record.rebuilding.as_deref().is_some_and(|r| r.contains("failed their hash")));
            assert!(record.history.last().unwrap().event.contains("failed their hash"));
        }
        let again = build(&c, 0, &"e".repeat(64), 60);
        assert_eq!((again.attempt, again.rebuilding), (2, None), "attempt numbers show the rebuild");
    }

    #[test]
    fn a_claim_whose_lease_ran_out_goes_back_to_its_ordinal() {
        let (_dir, c) = catalog();
        c.submit("a", "s", &src("x"), 2, None, 0).unwrap();
        c.member_seen(1, 9, 0).unwrap();
        let (record, _) = c.claim(1, "set", 1).unwrap().unwrap();
        assert_eq!(c.in_flight().unwrap(), vec![(record.claim_key(), 1)]);
        let requeued = c.requeue_claim(&record.claim_key(), "its lease ran out", 2).unwrap().unwrap();
        assert_eq!((requeued.status, requeued.worker), (Status::Pending, 1));
        assert!(c.requeue_claim(&record.claim_key(), "again", 3).unwrap().is_none(), "only a current claim");
        assert_eq!(c.claim(1, "set", 4).unwrap().unwrap().0.attempt, 2);
    }

    /// A catalog written by Kiln before the indexes (catalog schema 1, the code of
    /// commit 7eea469): it opens, every record reads, and the books built from it
    /// agree with the records.
    #[test]
    fn the_previous_schemas_catalog_opens_and_serves_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catalog-schema-1.redb"), &path).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/catalog-schema-1.json")).unwrap();
        let c = Catalog::open(&path, 1_000).unwrap();
        let all = c.page(&PageQuery { limit: MAX_PAGE, ..PageQuery::default() }).unwrap();
        assert!(all.unreadable.is_empty());
        let expected = expected.as_array().unwrap();
        assert_eq!(all.records.len(), expected.len());
        for (record, want) in all.records.iter().zip(expected) {
            assert_eq!(serde_json::to_value(record.to_api()).unwrap()["status"], want["status"]);
            assert_eq!(record.id, want["id"].as_u64().unwrap());
            assert_eq!(record.name, want["name"].as_str().unwrap());
            assert_eq!(record.binary_sha256.as_deref(), want["binary_sha256"].as_str());
            assert!(c.source(&record.source_sha256).unwrap().is_some(), "the source of {} reads", record.name);
        }
        assert_counts_match_a_scan(&c);
        // The queue works from the built index: the first pending id of ordinal 1.
        let pending = all.records.iter().find(|r| r.status == Status::Pending && r.worker == 1).map(|r| r.id);
        c.member_seen(1, 77, 2_000).unwrap();
        assert_eq!(c.claim(1, "set", 2_000).unwrap().map(|(r, _)| r.id), pending);
    }
}
