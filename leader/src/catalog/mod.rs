//! The catalog: pipelines, their sources, their build logs and the members' last
//! known incarnations, in one embedded database (redb) in the leader's data
//! directory. Every operation is one serializable write transaction, so claims are
//! atomic: a pipeline version is handed to at most one worker at a time, and nothing
//! is lost across a restart of the leader.
//!
//! **Invariant:** a pipeline is `compiling` or `uploading` only while the incarnation
//! of its worker that claimed it may still be running. When a member comes back with
//! a new incarnation, its in-flight pipelines go back to `pending`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use kiln_core::api::{Change, Status};
use kiln_core::program::ProgramFile;

use crate::records::{self, RecordError};
use crate::rules::{ClaimKey, Pipeline, Report, ReportRefused, assigned_ordinal};

const PIPELINES: TableDefinition<u64, &[u8]> = TableDefinition::new("pipelines");
const NAMES: TableDefinition<&str, u64> = TableDefinition::new("names");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
const LOGS: TableDefinition<u64, &str> = TableDefinition::new("logs");
const MEMBERS: TableDefinition<u32, u64> = TableDefinition::new("member_incarnations");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_pipeline_id";
/// The schema of every record in the database (see `records.rs`); absent in a
/// database written by Kiln 0.1 (schema 0).
const SCHEMA_KEY: &str = "schema_version";

/// Longest build log kept; longer logs keep their beginning and end. Workers cap
/// their logs first (`--max-log-bytes`, at most half the message limit); this is
/// the leader's own bound on what any caller sends.
pub const MAX_LOG_BYTES: usize = kiln_proto::MAX_MESSAGE_BYTES / 2 + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Database(#[from] redb::Error),
    #[error("catalog record {what} is unreadable: {error}")]
    Corrupt { what: String, error: RecordError },
    #[error("the catalog {0}")]
    Newer(RecordError),
    #[error(transparent)]
    Refused(#[from] ReportRefused),
}

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CatalogError {
            fn from(e: $t) -> Self { CatalogError::Database(e.into()) }
        }
    )*};
}
impl_from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

#[derive(Debug)]
pub struct Submitted {
    pub record: Pipeline,
    pub change: Change,
}

#[derive(Debug)]
pub struct Catalog {
    db: Database,
}

fn encode(record: &Pipeline) -> Vec<u8> {
    records::encode_pipeline(record)
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

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(PIPELINES)?;
            txn.open_table(NAMES)?;
            txn.open_table(SOURCES)?;
            txn.open_table(LOGS)?;
            txn.open_table(MEMBERS)?;
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            match schema {
                Some(found) if found > u64::from(records::SCHEMA) => {
                    return Err(CatalogError::Newer(RecordError::Newer { found: found as u32 }));
                }
                Some(_) => {}
                None => {
                    migrate_from_schema_zero(&txn)?;
                    meta.insert(SCHEMA_KEY, u64::from(records::SCHEMA))?;
                }
            }
        }
        txn.commit()?;
        Ok(Catalog { db })
    }

    /// Creates a pipeline, or a new version of it when its source changed. The same
    /// source again changes nothing, except that a `system_error` is retried.
    pub fn submit(
        &self,
        name: &str,
        source_sha256: &str,
        files: &[ProgramFile],
        workers: u32,
        now_ms: u64,
    ) -> Result<Submitted, CatalogError> {
        let txn = self.db.begin_write()?;
        let submitted = {
            let mut pipelines = txn.open_table(PIPELINES)?;
            let mut names = txn.open_table(NAMES)?;
            let mut sources = txn.open_table(SOURCES)?;
            let mut meta = txn.open_table(META)?;
            let existing = names.get(name)?.map(|id| id.value());
            let submitted = match existing {
                Some(id) => {
                    let bytes = pipelines.get(id)?.map(|v| v.value().to_vec());
                    let mut record = match bytes {
                        Some(bytes) => decode(id, &bytes)?,
                        None => {
                            return Err(corrupt(format!("pipeline {id}"), "its name is taken but it has no record"));
                        }
                    };
                    let change = if record.source_sha256 != source_sha256 {
                        record.new_version(source_sha256.to_owned(), now_ms);
                        record.worker = assigned_ordinal(id, workers);
                        Change::Updated
                    } else if record.status == Status::SystemError {
                        record.error = None;
                        record.requeue(now_ms);
                        Change::Updated
                    } else {
                        Change::Unchanged
                    };
                    Submitted { record, change }
                }
                None => {
                    let id = meta.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
                    meta.insert(NEXT_ID, id + 1)?;
                    names.insert(name, id)?;
                    let record = Pipeline::new(id, name, source_sha256, workers, now_ms);
                    Submitted { record, change: Change::Created }
                }
            };
            if submitted.change != Change::Unchanged {
                if sources.get(source_sha256)?.is_none() {
                    sources.insert(source_sha256, records::encode_source(files).as_slice())?;
                }
                pipelines.insert(submitted.record.id, encode(&submitted.record).as_slice())?;
            }
            submitted
        };
        txn.commit()?;
        Ok(submitted)
    }

    pub fn get(&self, id: u64) -> Result<Option<Pipeline>, CatalogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PIPELINES)?;
        let value = table.get(id)?;
        value.map(|v| decode(id, v.value())).transpose()
    }

    pub fn id_of(&self, name: &str) -> Result<Option<u64>, CatalogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NAMES)?;
        Ok(table.get(name)?.map(|v| v.value()))
    }

    pub fn list(&self) -> Result<Vec<Pipeline>, CatalogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PIPELINES)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (id, bytes) = entry?;
            records.push(decode(id.value(), bytes.value())?);
        }
        Ok(records)
    }

    pub fn source(&self, source_sha256: &str) -> Result<Option<Vec<ProgramFile>>, CatalogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SOURCES)?;
        let value = table.get(source_sha256)?;
        value.map(|v| decode_source(source_sha256, v.value())).transpose()
    }

    pub fn log(&self, id: u64) -> Result<Option<String>, CatalogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        Ok(table.get(id)?.map(|v| v.value().to_owned()))
    }

    /// Removes a pipeline and its log. Its source stays (other pipelines may share
    /// it); its id is never reused.
    pub fn delete(&self, id: u64) -> Result<Option<Pipeline>, CatalogError> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut pipelines = txn.open_table(PIPELINES)?;
            let mut names = txn.open_table(NAMES)?;
            let mut logs = txn.open_table(LOGS)?;
            let removed = pipelines.remove(id)?.map(|v| decode(id, v.value())).transpose()?;
            if let Some(record) = &removed {
                names.remove(record.name.as_str())?;
                logs.remove(id)?;
            }
            removed
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Hands the oldest pending pipeline of `ordinal` to it, with its source.
    pub fn claim(
        &self,
        ordinal: u32,
        workers: u32,
        depset: &str,
        now_ms: u64,
    ) -> Result<Option<(Pipeline, Vec<ProgramFile>)>, CatalogError> {
        let txn = self.db.begin_write()?;
        let claimed = {
            let mut pipelines = txn.open_table(PIPELINES)?;
            let sources = txn.open_table(SOURCES)?;
            let mut found = None;
            for entry in pipelines.iter()? {
                let (id, bytes) = entry?;
                let id = id.value();
                if assigned_ordinal(id, workers) != ordinal {
                    continue;
                }
                let record = decode(id, bytes.value())?;
                if record.status == Status::Pending {
                    found = Some(record);
                    break;
                }
            }
            match found {
                None => None,
                Some(mut record) => {
                    record.worker = ordinal;
                    record.claim(now_ms);
                    record.depset = Some(depset.to_owned());
                    let source = match sources.get(record.source_sha256.as_str())? {
                        Some(bytes) => decode_source(&record.source_sha256, bytes.value())?,
                        None => return Err(corrupt(format!("pipeline {}", record.id), "its source is missing")),
                    };
                    pipelines.insert(record.id, encode(&record).as_slice())?;
                    Some((record, source))
                }
            }
        };
        txn.commit()?;
        Ok(claimed)
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
        let txn = self.db.begin_write()?;
        let record = {
            let mut pipelines = txn.open_table(PIPELINES)?;
            let mut logs = txn.open_table(LOGS)?;
            let members = txn.open_table(MEMBERS)?;
            check_holder(&pipelines, &members, claim, member)?;
            let bytes = pipelines.get(claim.pipeline_id)?.map(|v| v.value().to_vec());
            let Some(bytes) = bytes else {
                return Err(ReportRefused::StaleClaim {
                    pipeline_id: claim.pipeline_id,
                    version: claim.version,
                    attempt: claim.attempt,
                }
                .into());
            };
            let mut record = decode(claim.pipeline_id, &bytes)?;
            record.apply(claim, report, now_ms)?;
            pipelines.insert(record.id, encode(&record).as_slice())?;
            if let Some(log) = log {
                logs.insert(record.id, truncate_log(log).as_str())?;
            }
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Records that the binary `sha256` of `size` bytes (as the leader measured it)
    /// arrived under `claim`, from `member` (ordinal, incarnation), which must hold it.
    pub fn record_upload(
        &self,
        claim: &ClaimKey,
        member: (u32, u64),
        sha256: &str,
        size: u64,
    ) -> Result<(), CatalogError> {
        let txn = self.db.begin_write()?;
        {
            let mut pipelines = txn.open_table(PIPELINES)?;
            let members = txn.open_table(MEMBERS)?;
            let mut record = check_holder(&pipelines, &members, claim, member)?;
            record.uploaded = Some(crate::rules::Uploaded { attempt: claim.attempt, sha256: sha256.to_owned(), size });
            pipelines.insert(record.id, encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether `member` (ordinal, incarnation) holds `claim` now.
    pub fn check_holds(&self, claim: &ClaimKey, member: (u32, u64)) -> Result<(), CatalogError> {
        let txn = self.db.begin_read()?;
        check_holder(&txn.open_table(PIPELINES)?, &txn.open_table(MEMBERS)?, claim, member).map(|_| ())
    }

    /// Whether a worker's claim is still the build the catalog waits for.
    pub fn is_current(&self, claim: &ClaimKey) -> Result<bool, CatalogError> {
        Ok(self.get(claim.pipeline_id)?.is_some_and(|r| r.is_current(claim)))
    }

    /// The incarnation the catalog knows for `ordinal`.
    pub fn incarnation_of(&self, ordinal: u32) -> Result<Option<u64>, CatalogError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(MEMBERS)?.get(ordinal)?.map(|v| v.value()))
    }

    /// Records that member `ordinal` runs as `incarnation`. When that is new, the
    /// pipelines its previous incarnation held go back to `pending`; their ids are
    /// returned.
    pub fn member_seen(&self, ordinal: u32, incarnation: u64, now_ms: u64) -> Result<Vec<u64>, CatalogError> {
        {
            let txn = self.db.begin_read()?;
            let members = txn.open_table(MEMBERS)?;
            if members.get(ordinal)?.map(|v| v.value()) == Some(incarnation) {
                return Ok(Vec::new());
            }
        }
        let txn = self.db.begin_write()?;
        let requeued = {
            let mut members = txn.open_table(MEMBERS)?;
            let mut pipelines = txn.open_table(PIPELINES)?;
            members.insert(ordinal, incarnation)?;
            let mut stranded = Vec::new();
            for entry in pipelines.iter()? {
                let (id, bytes) = entry?;
                let record = decode(id.value(), bytes.value())?;
                if record.status.in_flight() && record.worker == ordinal {
                    stranded.push(record);
                }
            }
            let mut requeued = Vec::new();
            for mut record in stranded {
                record.requeue(now_ms);
                pipelines.insert(record.id, encode(&record).as_slice())?;
                requeued.push(record.id);
            }
            requeued
        };
        txn.commit()?;
        Ok(requeued)
    }
}

fn decode_source(sha: &str, bytes: &[u8]) -> Result<Vec<ProgramFile>, CatalogError> {
    records::decode_source(bytes).map_err(|error| CatalogError::Corrupt { what: format!("source {sha}"), error })
}

/// Rewrites a database of Kiln 0.1 (bare pipeline JSON, protobuf sources) in the
/// current schema, inside the opening transaction: all of it or none.
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
        tracing::info!(
            pipelines = legacy.len(),
            schema = records::SCHEMA,
            "rewriting the catalog in the current schema"
        );
    }
    for (id, bytes) in legacy {
        pipelines.insert(id, encode(&decode(id, &bytes)?).as_slice())?;
    }
    Ok(())
}

/// The record of `claim` if `member` (ordinal, incarnation) holds it: the claim is
/// current, the pipeline is that ordinal's, and the incarnation is the one the
/// catalog knows for it. Anything else is refused.
fn check_holder(
    pipelines: &impl ReadableTable<u64, &'static [u8]>,
    members: &impl ReadableTable<u32, u64>,
    claim: &ClaimKey,
    (ordinal, incarnation): (u32, u64),
) -> Result<Pipeline, CatalogError> {
    let stale =
        || ReportRefused::StaleClaim { pipeline_id: claim.pipeline_id, version: claim.version, attempt: claim.attempt };
    let Some(bytes) = pipelines.get(claim.pipeline_id)?.map(|v| v.value().to_vec()) else {
        return Err(stale().into());
    };
    let record = decode(claim.pipeline_id, &bytes)?;
    if !record.is_current(claim) {
        return Err(stale().into());
    }
    let known = members.get(record.worker)?.map(|v| v.value());
    if record.worker != ordinal || known != Some(incarnation) {
        return Err(ReportRefused::NotTheHolder { id: record.id, holder: record.worker, ordinal }.into());
    }
    Ok(record)
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
        let catalog = Catalog::open(&dir.path().join("catalog.redb")).unwrap();
        (dir, catalog)
    }

    #[test]
    fn ids_grow_and_versions_follow_the_source() {
        let (_dir, c) = catalog();
        let a = c.submit("a", "s1", &src("src"), 3, 1).unwrap();
        let b = c.submit("b", "s2", &src("src2"), 3, 2).unwrap();
        assert_eq!((a.record.id, b.record.id), (1, 2));
        assert_eq!((a.change, a.record.worker), (Change::Created, 1));
        let same = c.submit("a", "s1", &src("src"), 3, 3).unwrap();
        assert_eq!((same.change, same.record.version), (Change::Unchanged, 1));
        let next = c.submit("a", "s3", &src("src3"), 3, 4).unwrap();
        assert_eq!((next.change, next.record.id, next.record.version), (Change::Updated, 1, 2));
        c.delete(2).unwrap();
        assert_eq!(c.submit("c", "s4", &src("x"), 3, 5).unwrap().record.id, 3, "ids are never reused");
    }

    #[test]
    fn claims_are_exclusive_and_by_ordinal() {
        let (_dir, c) = catalog();
        for name in ["a", "b", "c", "d"] {
            c.submit(name, name, &src(name), 3, 0).unwrap();
        }
        let (first, source) = c.claim(1, 3, "set", 1).unwrap().unwrap();
        assert_eq!((first.id, source), (1, src("a")));
        let (second, _) = c.claim(1, 3, "set", 1).unwrap().unwrap();
        assert_eq!(second.id, 4);
        assert!(c.claim(1, 3, "set", 1).unwrap().is_none(), "nothing is handed out twice");
        assert_eq!(c.claim(0, 3, "set", 1).unwrap().unwrap().0.id, 3);
    }

    #[test]
    fn a_restarted_member_gets_its_work_back_and_old_reports_are_refused() {
        let (dir, c) = catalog();
        c.submit("a", "s", &src("x"), 2, 0).unwrap();
        assert!(c.member_seen(1, 111, 0).unwrap().is_empty());
        let (record, _) = c.claim(1, 2, "set", 1).unwrap().unwrap();
        let old_claim = record.claim_key();
        drop(c);
        let c = Catalog::open(&dir.path().join("catalog.redb")).unwrap();
        assert!(
            c.member_seen(1, 111, 2).unwrap().is_empty(),
            "the same incarnation keeps its work across a leader restart"
        );
        assert!(c.is_current(&old_claim).unwrap());
        assert_eq!(c.member_seen(1, 222, 3).unwrap(), vec![1]);
        assert_eq!(c.get(1).unwrap().unwrap().status, Status::Pending);
        let refused = c.report(&old_claim, (1, 111), Report::Compiling, None, 4);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::StaleClaim { .. }))));
        let (again, _) = c.claim(1, 2, "set", 5).unwrap().unwrap();
        assert_eq!(again.attempt, 2);
        let figures = Figures { cache: CacheFigures::default(), ..Figures::default() };
        // Not from another ordinal, nor from the incarnation that restarted away.
        for stranger in [(0, 222), (1, 111)] {
            let refused = c.report(&again.claim_key(), stranger, Report::Compiling, None, 6);
            assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
            let refused = c.record_upload(&again.claim_key(), stranger, &"a".repeat(64), 1);
            assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
        }
        // Success names only what was uploaded under this claim.
        let success =
            |sha: &str| Report::Success { binary_sha256: sha.into(), binary_size: 99, figures: figures.clone() };
        let refused = c.report(&again.claim_key(), (1, 222), success(&"b".repeat(64)), None, 6);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotUploaded { .. }))));
        c.record_upload(&again.claim_key(), (1, 222), &"c".repeat(64), 7).unwrap();
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
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.get(1).unwrap().unwrap(), pipeline);
        assert_eq!(c.source("s").unwrap().unwrap(), src("old"));
        let (claimed, source) = c.claim(1, 3, "set", 5).unwrap().unwrap();
        assert_eq!((claimed.id, source), (1, src("old")));
        drop(c);
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.get(1).unwrap().unwrap().status, Status::Compiling, "a second open changes nothing");
    }

    #[test]
    fn a_catalog_from_a_newer_kiln_is_refused_in_words() {
        let (dir, c) = catalog();
        {
            let txn = c.db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 99).unwrap();
            txn.commit().unwrap();
        }
        drop(c);
        let error = Catalog::open(&dir.path().join("catalog.redb")).unwrap_err().to_string();
        assert!(error.contains("newer Kiln (schema 99"), "{error}");
    }
}
