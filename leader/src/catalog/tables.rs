//! The catalog's tables, how a record is read from them, and the one place that writes a pipeline record: [`Books::put`]
//! keeps every index, counter and reference count in step with the records, in the
//! same transaction, so they can never disagree with what is stored.
//!
//! - `by_status` `(ordinal, status, id)`: a claim takes the first pending id of its
//!   ordinal in O(log n); a build in flight is under its holder's ordinal (the
//!   member covering for another, in a failover), so a member's restart finds it.
//! - `status_ids` `(status, id)`: the list API's status filter, in id order.
//! - `by_artifact` `(sha256, id)`: the pipelines whose binary is that artifact,
//!   all rebuilt when it fails its hash.
//! - `counts`: pipelines by status, pending ones by ordinal, stored sources and
//!   their bytes: what `/metrics` reads, never a scan.
//! - `refs` `(kind, sha256)` and `unreferenced` `(kind, sha256) → since`: how many
//!   records point at each source and artifact; one that drops to none is
//!   scheduled for collection after the retention (see `collect` in `retention.rs`).
//! - `binaries` `binary key → CachedBinary` (JSON): the binary cache. Every
//!   `success` whose worker said what it built with is indexed under its key
//!   ([`crate::rules::binary_key`]); an entry is only served while its artifact is
//!   stored (referenced, or unreferenced and not yet collected).

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use kiln_core::api::Status;
use kiln_core::program::ProgramFile;

use crate::catalog::error::{CatalogError, corrupt};
use crate::records;
use crate::rules::{CachedBinary, Pipeline};

pub const PIPELINES: TableDefinition<u64, &[u8]> = TableDefinition::new("pipelines");
pub const NAMES: TableDefinition<&str, u64> = TableDefinition::new("names");
pub const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
pub const LOGS: TableDefinition<u64, &str> = TableDefinition::new("logs");
pub const MEMBERS: TableDefinition<u32, u64> = TableDefinition::new("member_incarnations");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const BY_STATUS: TableDefinition<(u32, u8, u64), ()> = TableDefinition::new("by_ordinal_status_id");
pub const STATUS_IDS: TableDefinition<(u8, u64), ()> = TableDefinition::new("by_status_id");
pub const BY_ARTIFACT: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_artifact_id");
pub const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
pub const REFS: TableDefinition<(u8, &str), u64> = TableDefinition::new("refs");
pub const UNREFERENCED: TableDefinition<(u8, &str), u64> = TableDefinition::new("unreferenced_since_ms");
pub const BINARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("binary_cache");

/// The `meta` key of the next pipeline id: ids are never reused.
pub const NEXT_ID: &str = "next_pipeline_id";

/// The record `id` as stored, or None.
pub fn load(pipelines: &impl ReadableTable<u64, &'static [u8]>, id: u64) -> Result<Option<Pipeline>, CatalogError> {
    let bytes = pipelines.get(id)?.map(|v| v.value().to_vec());
    bytes.map(|bytes| decode(id, &bytes)).transpose()
}

/// A stored pipeline record, read.
pub fn decode(id: u64, bytes: &[u8]) -> Result<Pipeline, CatalogError> {
    records::decode_pipeline(bytes).map_err(|error| CatalogError::Corrupt { what: format!("pipeline {id}"), error })
}

/// A stored source, read.
pub fn decode_source(sha: &str, bytes: &[u8]) -> Result<Vec<ProgramFile>, CatalogError> {
    records::decode_source(bytes).map_err(|error| CatalogError::Corrupt { what: format!("source {sha}"), error })
}

/// What a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Source = 0,
    Artifact = 1,
}

impl Kind {
    pub fn from_code(code: u8) -> Option<Kind> {
        match code {
            0 => Some(Kind::Source),
            1 => Some(Kind::Artifact),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Artifact => "artifact",
        }
    }
}

/// A status as the indexes store it: its place in [`Status::ALL`].
pub fn status_code(status: Status) -> u8 {
    Status::ALL.iter().position(|s| *s == status).unwrap_or(0) as u8
}

pub fn status_count_key(status: Status) -> String {
    format!("status/{status}")
}

pub fn pending_count_key(ordinal: u32) -> String {
    format!("pending/{ordinal}")
}

pub const SOURCES_COUNT: &str = "sources/count";
pub const SOURCES_BYTES: &str = "sources/bytes";

/// The sources and artifacts a record points at.
fn references(record: &Pipeline) -> Vec<(Kind, &str)> {
    let mut refs = vec![(Kind::Source, record.source_sha256.as_str())];
    if let Some(sha) = &record.binary_sha256 {
        refs.push((Kind::Artifact, sha.as_str()));
    }
    // An upload under the current claim is referenced until the build ends: the
    // collector never takes an artifact a `success` is about to name.
    if let Some(uploaded) = &record.uploaded
        && record.binary_sha256.as_deref() != Some(uploaded.sha256.as_str())
    {
        refs.push((Kind::Artifact, uploaded.sha256.as_str()));
    }
    refs
}

/// The tables a write touches, open in one write transaction.
pub struct Books<'t> {
    pub pipelines: Table<'t, u64, &'static [u8]>,
    pub by_status: Table<'t, (u32, u8, u64), ()>,
    pub status_ids: Table<'t, (u8, u64), ()>,
    pub by_artifact: Table<'t, (&'static str, u64), ()>,
    pub counts: Table<'t, &'static str, u64>,
    pub refs: Table<'t, (u8, &'static str), u64>,
    pub unreferenced: Table<'t, (u8, &'static str), u64>,
    pub binaries: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Books<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Books<'t>, CatalogError> {
        Ok(Books {
            pipelines: txn.open_table(PIPELINES)?,
            by_status: txn.open_table(BY_STATUS)?,
            status_ids: txn.open_table(STATUS_IDS)?,
            by_artifact: txn.open_table(BY_ARTIFACT)?,
            counts: txn.open_table(COUNTS)?,
            refs: txn.open_table(REFS)?,
            unreferenced: txn.open_table(UNREFERENCED)?,
            binaries: txn.open_table(BINARIES)?,
        })
    }

    /// Stores `new` (None: removes the record) in place of `old` (None: there was
    /// none), and moves every index, counter and reference with it.
    pub fn put(&mut self, old: Option<&Pipeline>, new: Option<&Pipeline>, now_ms: u64) -> Result<(), CatalogError> {
        if let Some(old) = old {
            self.unindex(old)?;
        }
        match new {
            Some(new) => {
                self.pipelines.insert(new.id, records::encode_pipeline(new).as_slice())?;
                self.index(new)?;
                self.offer_binary(new)?;
            }
            None => {
                if let Some(old) = old {
                    self.pipelines.remove(old.id)?;
                }
            }
        }
        let before: Vec<(Kind, &str)> = old.map(references).unwrap_or_default();
        let after: Vec<(Kind, &str)> = new.map(references).unwrap_or_default();
        for gone in before.iter().filter(|r| !after.contains(r)) {
            self.release(gone.0, gone.1, now_ms)?;
        }
        for added in after.iter().filter(|r| !before.contains(r)) {
            self.reference(added.0, added.1)?;
        }
        Ok(())
    }

    /// A build that succeeded, with its key, enters the binary cache (replacing an
    /// entry of the same key: the latest build of it wins).
    fn offer_binary(&mut self, record: &Pipeline) -> Result<(), CatalogError> {
        let (Status::Success, Some(key), Some(sha256), None) =
            (record.status, &record.binary_key, &record.binary_sha256, &record.binary_cache_hit)
        else {
            return Ok(());
        };
        let cached = CachedBinary {
            sha256: sha256.clone(),
            size: record.binary_size.unwrap_or(0),
            pipeline_id: record.id,
            version: record.version,
            compile_ms: record.compile_ms.unwrap_or(0),
        };
        let bytes =
            serde_json::to_vec(&cached).map_err(|e| corrupt(format!("binary cache entry {key}"), &e.to_string()))?;
        self.binaries.insert(key.as_str(), bytes.as_slice())?;
        Ok(())
    }

    /// The binary cache's entry for `key`, if its artifact is still stored. An
    /// entry whose artifact was collected is removed (and is a miss).
    pub fn cached_binary(&mut self, key: &str) -> Result<Option<CachedBinary>, CatalogError> {
        let Some(bytes) = self.binaries.get(key)?.map(|v| v.value().to_vec()) else { return Ok(None) };
        let cached = match serde_json::from_slice::<CachedBinary>(&bytes) {
            Ok(cached) => cached,
            Err(error) => {
                tracing::error!(key, %error, "binary cache entry unreadable: removed, the program is built");
                self.binaries.remove(key)?;
                return Ok(None);
            }
        };
        let stored = self.referenced(Kind::Artifact, &cached.sha256)?
            || self.unreferenced.get((Kind::Artifact as u8, cached.sha256.as_str()))?.is_some();
        if !stored {
            self.binaries.remove(key)?;
            return Ok(None);
        }
        Ok(Some(cached))
    }

    /// Removes every binary cache entry that serves `sha256` (its artifact failed
    /// its hash). A scan, for a rare event.
    pub fn forget_binary(&mut self, sha256: &str) -> Result<usize, CatalogError> {
        let mut gone = Vec::new();
        for entry in self.binaries.iter()? {
            let (key, value) = entry?;
            if serde_json::from_slice::<CachedBinary>(value.value()).is_ok_and(|c| c.sha256 == sha256) {
                gone.push(key.value().to_owned());
            }
        }
        for key in &gone {
            self.binaries.remove(key.as_str())?;
        }
        Ok(gone.len())
    }

    fn index(&mut self, record: &Pipeline) -> Result<(), CatalogError> {
        let code = status_code(record.status);
        self.by_status.insert((record.queue_ordinal(), code, record.id), ())?;
        self.status_ids.insert((code, record.id), ())?;
        if let Some(sha) = &record.binary_sha256 {
            self.by_artifact.insert((sha.as_str(), record.id), ())?;
        }
        self.add(&status_count_key(record.status), 1)?;
        if record.status == Status::Pending {
            self.add(&pending_count_key(record.worker), 1)?;
        }
        Ok(())
    }

    fn unindex(&mut self, record: &Pipeline) -> Result<(), CatalogError> {
        let code = status_code(record.status);
        self.by_status.remove((record.queue_ordinal(), code, record.id))?;
        self.status_ids.remove((code, record.id))?;
        if let Some(sha) = &record.binary_sha256 {
            self.by_artifact.remove((sha.as_str(), record.id))?;
        }
        self.add(&status_count_key(record.status), -1)?;
        if record.status == Status::Pending {
            self.add(&pending_count_key(record.worker), -1)?;
        }
        Ok(())
    }

    /// Moves counter `key` by `delta` (never below zero).
    pub fn add(&mut self, key: &str, delta: i64) -> Result<(), CatalogError> {
        let now = self.counts.get(key)?.map(|v| v.value()).unwrap_or(0);
        let next = now.saturating_add_signed(delta);
        if next == 0 {
            self.counts.remove(key)?;
        } else {
            self.counts.insert(key, next)?;
        }
        Ok(())
    }

    /// One more record points at `sha`: it is no longer up for collection.
    pub fn reference(&mut self, kind: Kind, sha: &str) -> Result<(), CatalogError> {
        let count = self.refs.get((kind as u8, sha))?.map(|v| v.value()).unwrap_or(0);
        self.refs.insert((kind as u8, sha), count + 1)?;
        if count == 0 {
            self.unreferenced.remove((kind as u8, sha))?;
        }
        Ok(())
    }

    /// One record fewer points at `sha`; at none, it is scheduled for collection.
    pub fn release(&mut self, kind: Kind, sha: &str, now_ms: u64) -> Result<(), CatalogError> {
        let count = self.refs.get((kind as u8, sha))?.map(|v| v.value()).unwrap_or(0);
        if count <= 1 {
            self.refs.remove((kind as u8, sha))?;
            self.unreferenced.insert((kind as u8, sha), now_ms)?;
        } else {
            self.refs.insert((kind as u8, sha), count - 1)?;
        }
        Ok(())
    }

    /// Whether any record points at `sha`.
    pub fn referenced(&self, kind: Kind, sha: &str) -> Result<bool, CatalogError> {
        Ok(self.refs.get((kind as u8, sha))?.is_some())
    }
}

/// Rebuilds every index, counter and reference from the records (a catalog of an
/// earlier schema, which had none). Unreadable records are left out, named in the
/// log; sources no record points at are scheduled for collection from `now_ms`.
pub fn rebuild(txn: &WriteTransaction, now_ms: u64) -> Result<(), CatalogError> {
    txn.delete_table(BY_STATUS)?;
    txn.delete_table(STATUS_IDS)?;
    txn.delete_table(BY_ARTIFACT)?;
    txn.delete_table(COUNTS)?;
    txn.delete_table(REFS)?;
    txn.delete_table(UNREFERENCED)?;
    let records: Vec<(u64, Vec<u8>)> = {
        let pipelines = txn.open_table(PIPELINES)?;
        pipelines.iter()?.map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec()))).collect::<Result<_, _>>()?
    };
    let mut books = Books::open(txn)?;
    let mut indexed = 0usize;
    for (id, bytes) in &records {
        match records::decode_pipeline(bytes) {
            Ok(record) => {
                books.index(&record)?;
                for (kind, sha) in references(&record) {
                    books.reference(kind, sha)?;
                }
                indexed += 1;
            }
            Err(error) => tracing::error!(id, %error, "catalog record unreadable: left out of the indexes"),
        }
    }
    let sources = txn.open_table(SOURCES)?;
    let (mut count, mut bytes) = (0u64, 0u64);
    for entry in sources.iter()? {
        let (sha, value) = entry?;
        count += 1;
        bytes += value.value().len() as u64;
        if !books.referenced(Kind::Source, sha.value())? {
            books.unreferenced.insert((Kind::Source as u8, sha.value()), now_ms)?;
        }
    }
    books.counts.insert(SOURCES_COUNT, count)?;
    books.counts.insert(SOURCES_BYTES, bytes)?;
    tracing::info!(pipelines = indexed, sources = count, "catalog indexes built");
    Ok(())
}
