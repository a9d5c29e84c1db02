//! The catalog's side of keeping files: what no record references is collected
//! after the retention, files no record knows are adopted for it, and a binary
//! that failed its hash sends its pipelines back to be rebuilt.

use redb::ReadableTable;

use crate::catalog::error::CatalogError;
use crate::catalog::tables::{Books, Kind, SOURCES, SOURCES_BYTES, SOURCES_COUNT, load};
use crate::catalog::{Catalog, Collected};
use crate::rules::Pipeline;

impl Catalog {
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
