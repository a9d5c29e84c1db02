//! The scaling guard. N is fixed for a process's life; when a member learns that the
//! set has another size, the process panics with the one message operators look for,
//! so that Kubernetes restarts the whole set with one consistent N.
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

/// Shared by everything in a process that can notice a change of N.
#[derive(Debug, Clone)]
pub struct ScalingGuard {
    workers: u32,
    sender: watch::Sender<Option<ScalingDetected>>,
}

impl ScalingGuard {
    pub fn new(workers: u32) -> ScalingGuard {
        ScalingGuard { workers, sender: watch::Sender::new(None) }
    }

    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// Records that the set has `replicas` members. Does nothing when that agrees
    /// with N; the first disagreement wins.
    pub fn observe_replicas(&self, replicas: u32) {
        if replicas != self.workers {
            self.trip(ScalingDetected { replicas, workers: self.workers });
        }
    }

    /// Records that a member with `ordinal` exists: with ordinal ≥ N the set has at
    /// least ordinal + 1 members.
    pub fn observe_ordinal(&self, ordinal: u32) {
        if ordinal >= self.workers {
            self.trip(ScalingDetected { replicas: ordinal + 1, workers: self.workers });
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
    }
}
