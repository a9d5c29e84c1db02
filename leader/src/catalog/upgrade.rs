//! Brings a catalog written by an earlier Kiln up to this one's schema, inside
//! the transaction that opens it: all of it or none. A catalog of a newer Kiln is
//! refused, never rewritten.

use redb::{Database, ReadableTable};

use crate::catalog::error::CatalogError;
use crate::catalog::tables::{self, Books, LOGS, MEMBERS, META, NAMES, PIPELINES, SOURCES, decode};
use crate::records;

/// The layout of the database; absent in a database written by Kiln 0.1 (0).
pub const SCHEMA_KEY: &str = "schema_version";
/// 1: records in versioned envelopes. 2: indexes, counters and reference counts.
pub const CATALOG_SCHEMA: u64 = 2;

/// Opens every table and brings the database to [`CATALOG_SCHEMA`]; `now_ms`
/// starts the retention of sources found unreferenced on the way.
pub fn upgrade(db: &Database, now_ms: u64) -> Result<(), CatalogError> {
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
            Some(found) if found > CATALOG_SCHEMA => {
                return Err(CatalogError::Newer { found, supported: CATALOG_SCHEMA });
            }
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
