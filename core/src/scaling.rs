//! The scaling guard. By default (`--on-scaling=panic`, the seed's behaviour) N is
//! fixed for a process's life; when a member learns that the set has another size,
//! the process panics with the one message operators look for, so that Kubernetes
//! restarts the whole set with one consistent N. With `--on-scaling=reshard` the
//! guard takes the new N instead, and whoever follows [`ScalingGuard::resized`]
//! (the leader moves pending pipelines to their new ordinals) acts on it.
//!
//! Detection happens deep inside request handlers and background tasks, where a
//! panic would only end that task. So detectors [`ScalingGuard::trip`] the guard, and
//! the process's main task awaits [`ScalingGuard::tripped`] and panics there.

use std::fmt;

use tokio::sync::watch;

/// What was detected: the set has `replicas` members, this process was started with `workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingDetected {
    pub replicas: u32,
    pub workers: u32,
}

impl fmt::Display for ScalingDetected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCALING DETECTED: StatefulSet has {} replicas but compiler was started with {} workers",
            self.replicas, self.workers
        )
    }
}

/// The largest set `--on-scaling=reshard` grows to: health, metrics and failover
/// look at every ordinal below N, so N is never taken past this from anyone.
pub const MAX_RESHARD_WORKERS: u32 = 1024;

/// What a process does when the set's size changes (`--on-scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnScaling {
    /// Panic with the scaling guard's message: the seed's behaviour.
    #[default]
    Panic,
    /// Take the new N without a restart.
    Reshard,
}

impl OnScaling {
    pub const NAMES: [&'static str; 2] = ["panic", "reshard"];

    /// `panic` or `reshard`.
    pub fn parse(name: &str) -> Option<OnScaling> {
        match name {
            "panic" => Some(OnScaling::Panic),
            "reshard" => Some(OnScaling::Reshard),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnScaling::Panic => "panic",
            OnScaling::Reshard => "reshard",
        }
    }
}

/// Shared by everything in a process that can notice a change of N.
#[derive(Debug, Clone)]
pub struct ScalingGuard {
    /// N as the process was started with.
    started_with: u32,
    on_scaling: OnScaling,
    /// N now: `started_with` for ever under [`OnScaling::Panic`].
    size: watch::Sender<u32>,
    sender: watch::Sender<Option<ScalingDetected>>,
}

impl ScalingGuard {
    /// The seed's guard: N is fixed, a change panics.
    pub fn new(workers: u32) -> ScalingGuard {
        ScalingGuard::with(workers, OnScaling::Panic)
    }

    pub fn with(workers: u32, on_scaling: OnScaling) -> ScalingGuard {
        ScalingGuard {
            started_with: workers,
            on_scaling,
            size: watch::Sender::new(workers),
            sender: watch::Sender::new(None),
        }
    }

    /// N now.
    pub fn workers(&self) -> u32 {
        *self.size.borrow()
    }

    pub fn on_scaling(&self) -> OnScaling {
        self.on_scaling
    }

    /// Follows N: changes only under [`OnScaling::Reshard`].
    pub fn resized(&self) -> watch::Receiver<u32> {
        self.size.subscribe()
    }

    /// Records that the set has `replicas` members. Does nothing when that agrees
    /// with N. Otherwise, under `panic` the first disagreement trips the guard;
    /// under `reshard`, N becomes `replicas` (at least 1).
    pub fn observe_replicas(&self, replicas: u32) {
        match self.on_scaling {
            OnScaling::Panic if replicas != self.started_with => {
                self.trip(ScalingDetected { replicas, workers: self.started_with })
            }
            OnScaling::Panic => {}
            OnScaling::Reshard => self.resize(replicas.max(1)),
        }
    }

    /// Records that a member with `ordinal` exists: with ordinal ≥ N the set has at
    /// least ordinal + 1 members. Under `reshard` the set grows one member at a
    /// time: the member with ordinal N makes it N + 1 (up to
    /// [`MAX_RESHARD_WORKERS`]); an ordinal beyond that is not taken, and the
    /// answer is false (the caller refuses it; it asks again once the members
    /// before it joined).
    pub fn observe_ordinal(&self, ordinal: u32) -> bool {
        let workers = self.workers();
        if ordinal < workers {
            return true;
        }
        match self.on_scaling {
            OnScaling::Panic => {
                self.trip(ScalingDetected { replicas: ordinal + 1, workers: self.started_with });
                false
            }
            OnScaling::Reshard if ordinal == workers && workers < MAX_RESHARD_WORKERS => {
                self.resize(ordinal + 1);
                true
            }
            OnScaling::Reshard => false,
        }
    }

    fn resize(&self, workers: u32) {
        let workers = workers.min(MAX_RESHARD_WORKERS);
        let from = self.workers();
        if self.size.send_if_modified(|n| std::mem::replace(n, workers) != workers) {
            tracing::warn!(
                from,
                to = workers,
                "the set's size changed: resharding to the new N (--on-scaling=reshard)"
            );
        }
    }

    fn trip(&self, detected: ScalingDetected) {
        tracing::error!(replicas = detected.replicas, workers = detected.workers, "{detected}");
        self.sender.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(detected);
                true
            } else {
                false
            }
        });
    }

    /// The detection, if one happened.
    pub fn detected(&self) -> Option<ScalingDetected> {
        *self.sender.borrow()
    }

    /// Resolves when the guard trips. The caller panics with the value's `Display`.
    pub async fn tripped(&self) -> ScalingDetected {
        let mut receiver = self.sender.subscribe();
        loop {
            if let Some(detected) = *receiver.borrow_and_update() {
                return detected;
            }
            // The sender lives in `self`, so it cannot be dropped while we wait.
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_exact() {
        let d = ScalingDetected { replicas: 3, workers: 2 };
        assert_eq!(
            d.to_string(),
            "SCALING DETECTED: StatefulSet has 3 replicas but compiler was started with 2 workers"
        );
    }

    #[tokio::test]
    async fn agreement_does_not_trip_and_the_first_disagreement_wins() {
        let guard = ScalingGuard::new(3);
        guard.observe_replicas(3);
        guard.observe_ordinal(2);
        assert_eq!(guard.detected(), None);
        guard.observe_ordinal(5);
        guard.observe_replicas(4);
        assert_eq!(guard.tripped().await, ScalingDetected { replicas: 6, workers: 3 });
        assert_eq!(guard.workers(), 3, "under panic N never changes");
    }

    #[test]
    fn under_reshard_the_guard_takes_the_new_size_and_never_trips() {
        let guard = ScalingGuard::with(3, OnScaling::Reshard);
        let mut resized = guard.resized();
        assert!(!guard.observe_ordinal(9), "a set grows one member at a time");
        assert!(guard.observe_ordinal(3));
        assert_eq!((guard.workers(), guard.detected()), (4, None));
        assert!(resized.has_changed().unwrap());
        assert_eq!(*resized.borrow_and_update(), 4);
        guard.observe_replicas(4);
        assert!(!resized.has_changed().unwrap(), "the same size is no change");
        guard.observe_replicas(3);
        guard.observe_replicas(0);
        assert_eq!((guard.workers(), guard.detected()), (1, None), "at least one member");
        guard.observe_replicas(u32::MAX);
        assert_eq!(guard.workers(), MAX_RESHARD_WORKERS, "never past the cap, whoever says so");
        assert_eq!(OnScaling::parse("reshard"), Some(OnScaling::Reshard));
        assert_eq!(OnScaling::parse("restart"), None);
    }
}
