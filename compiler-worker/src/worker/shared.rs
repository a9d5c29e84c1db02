//! What the heartbeat task and the claim loop share: the build in hand (its claim
//! and the token that cancels it) and how far it has come, and the member's state
//! as the heartbeats report it (cache, sandbox, disk, still preparing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_core::cluster::ClaimKey;
use tokio_util::sync::CancellationToken;

use crate::builder::BuildProgress;
use crate::disk::DiskState;
use crate::link::CacheState;

/// The member's state, written by whoever learns it, read by every heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The build in hand, and what cancels it.
    pub current: Mutex<Option<(ClaimKey, CancellationToken)>>,
    pub cache_state: Mutex<CacheState>,
    pub preparing: AtomicBool,
    /// The sandbox's state in words, and whether this member refuses to build.
    pub sandbox: Mutex<(String, bool)>,
    /// The build root's volume, as the last look before a claim found it.
    pub disk: Mutex<DiskState>,
    /// How far the build in hand has come.
    pub progress: Arc<BuildProgress>,
    /// The member's share of the CPUs, in words (see `cpu_share`).
    pub cpus: Mutex<String>,
}

/// A lock that a panic elsewhere does not poison: every value here is whole
/// between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn set_cache_state(&self, healthy: bool, message: String) {
        *lock(&self.cache_state) = CacheState { healthy, message };
    }

    pub fn set_preparing(&self, preparing: bool) {
        self.preparing.store(preparing, Ordering::SeqCst);
    }

    pub fn preparing(&self) -> bool {
        self.preparing.load(Ordering::SeqCst)
    }

    /// The claim of the build in hand, if any.
    pub fn current_claim(&self) -> Option<ClaimKey> {
        lock(&self.current).as_ref().map(|(claim, _)| *claim)
    }
}
