//! The counts a host reports while it works: read by its status endpoint, written by
//! the job's map and by the exchange. A leaf module, so that both can use it.

use std::sync::atomic::AtomicU64;

/// Counts a host reports while it works.
#[derive(Debug, Default)]
pub struct Progress {
    pub records_read: AtomicU64,
    pub records_sent: AtomicU64,
    pub records_received: AtomicU64,
}
