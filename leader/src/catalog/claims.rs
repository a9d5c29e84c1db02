//! The catalog's side of claims: handing out a member's next pipeline, the
//! reports and uploads under a claim, a member's new incarnation, and the claims
//! in flight whose leases the leader watches. Who holds a claim and what a report
//! or upload changes are decided by `rules`; here they are loaded and stored.

use redb::ReadableTable;

use kiln_core::api::Status;
use kiln_core::program::ProgramFile;

use crate::catalog::error::{CatalogError, corrupt};
use crate::catalog::tables::{
    Books, LOGS, MEMBERS, PIPELINES, SOURCES, STATUS_IDS, decode_source, load, pending_count_key, status_code,
    status_count_key,
};
use crate::catalog::{Catalog, MAX_LOG_BYTES};
use crate::rules::{self, ClaimKey, Coverage, Pipeline, Report};

impl Catalog {
    /// Hands member `ordinal` its next pipeline, with its source: the oldest
    /// pending one of its own ordinal (the first entry of the `(ordinal, pending)`
    /// index, O(log n)); when it has none, the oldest pending one of a missing
    /// member that `coverage` says this member wins (failover). An unreadable
    /// record found there is taken out of the queue (and named in the log), not
    /// handed out.
    pub fn claim(
        &self,
        ordinal: u32,
        depset: &str,
        coverage: &Coverage,
        now_ms: u64,
    ) -> Result<Option<(Pipeline, Vec<ProgramFile>)>, CatalogError> {
        let pending = status_code(Status::Pending);
        let healthy = coverage.healthy_with(ordinal);
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let sources = txn.open_table(SOURCES)?;
            let queues = std::iter::once(ordinal).chain(coverage.missing.iter().copied().filter(|k| *k != ordinal));
            for queue in queues {
                // Its own queue: the first entry. A missing member's: the first this
                // member wins, every member computing the same winner.
                let wins = |id: u64| queue == ordinal || Coverage::covering_member(id, &healthy) == Some(ordinal);
                loop {
                    let mut first = None;
                    for entry in books.by_status.range((queue, pending, 0)..=(queue, pending, u64::MAX))? {
                        let id = entry?.0.value().2;
                        if wins(id) {
                            first = Some(id);
                            break;
                        }
                    }
                    let Some(id) = first else { break };
                    let record = match load(&books.pipelines, id) {
                        Ok(Some(record)) => record,
                        Ok(None) | Err(_) => {
                            tracing::error!(
                                id,
                                ordinal = queue,
                                "catalog record unreadable or missing: taken out of the queue"
                            );
                            books.by_status.remove((queue, pending, id))?;
                            books.status_ids.remove((pending, id))?;
                            books.add(&status_count_key(Status::Pending), -1)?;
                            books.add(&pending_count_key(queue), -1)?;
                            continue;
                        }
                    };
                    let mut claimed = record.clone();
                    claimed.claim(ordinal, now_ms);
                    claimed.depset = Some(depset.to_owned());
                    let source = match sources.get(claimed.source_sha256.as_str())? {
                        Some(bytes) => decode_source(&claimed.source_sha256, bytes.value())?,
                        None => return Err(corrupt(format!("pipeline {}", claimed.id), "its source is missing")),
                    };
                    books.put(Some(&record), Some(&claimed), now_ms)?;
                    return Ok(Some((claimed, source)));
                }
            }
            Ok(None)
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

    /// The claims in flight (`compiling` or `uploading`), with the ordinal that
    /// holds each.
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
                        Ok(Some(record)) => claims.push((record.claim_key(), record.holder())),
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

    /// The set now has `workers` members: every pending pipeline whose ordinal
    /// `sharding` changes moves to its new one. Returns (moved, pending). One
    /// transaction, so a claim sees the pipelines before or after, never half.
    pub fn reshard(
        &self,
        sharding: rules::Sharding,
        workers: u32,
        now_ms: u64,
    ) -> Result<(usize, usize), CatalogError> {
        let pending = status_code(Status::Pending);
        self.write(|txn| {
            let mut books = Books::open(txn)?;
            let ids: Vec<u64> = books
                .status_ids
                .range((pending, 0)..=(pending, u64::MAX))?
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            let mut moved = 0;
            for id in &ids {
                let Some(old) = load(&books.pipelines, *id)? else { continue };
                let mut record = old.clone();
                if record.reshard(sharding, workers, now_ms) {
                    books.put(Some(&old), Some(&record), now_ms)?;
                    moved += 1;
                }
            }
            Ok((moved, ids.len()))
        })
    }

    /// Puts `claim` back to `pending` for its own ordinal if it is still current,
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
}

/// The record of `claim` if `member` (ordinal, incarnation) holds it, as
/// [`rules::held_by`] decides from the record and the incarnation the
/// catalog knows for its ordinal.
fn check_holder(
    pipelines: &impl ReadableTable<u64, &'static [u8]>,
    members: &impl ReadableTable<u32, u64>,
    claim: &ClaimKey,
    member: (u32, u64),
) -> Result<Pipeline, CatalogError> {
    let record = load(pipelines, claim.pipeline_id)?;
    let known = match &record {
        Some(record) => members.get(record.holder())?.map(|v| v.value()),
        None => None,
    };
    Ok(rules::held_by(record, claim, member, known)?)
}

/// `log`, cut to [`MAX_LOG_BYTES`] by leaving out its middle.
pub(super) fn truncate_log(log: &str) -> String {
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
