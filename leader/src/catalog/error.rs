//! What can go wrong in the catalog, in words a user can act on, and which of
//! those errors mean the database must be reopened.

use kiln_core::disk;

use crate::records::RecordError;
use crate::rules::{NotCancellable, ReportRefused};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Database(#[from] redb::Error),
    #[error("catalog record {what} is unreadable: {error}")]
    Corrupt { what: String, error: RecordError },
    #[error(
        "the catalog was written by a newer Kiln (catalog schema {found}; this one reads up to {supported}): run that version, or restore a backup"
    )]
    Newer { found: u64, supported: u64 },
    #[error(transparent)]
    Refused(#[from] ReportRefused),
    #[error(transparent)]
    NotCancellable(#[from] NotCancellable),
}

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CatalogError {
            fn from(e: $t) -> Self { CatalogError::Database(e.into()) }
        }
    )*};
}
impl_from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl CatalogError {
    /// An I/O error of the database's file (a full disk, a failed write): the
    /// database must be reopened before it is used again.
    pub fn is_io(&self) -> bool {
        matches!(self, CatalogError::Database(redb::Error::Io(_) | redb::Error::PreviousIo))
    }

    /// The disk under the catalog is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CatalogError::Database(redb::Error::Io(e)) if disk::is_full(e))
    }
}

/// A record the catalog cannot use, for a reason in words.
pub fn corrupt(what: String, reason: &str) -> CatalogError {
    CatalogError::Corrupt { what, error: RecordError::Unreadable(reason.to_owned()) }
}
