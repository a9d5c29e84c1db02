//! Keeping the leader's disk in bounds, and its housekeeping loop: collection of
//! what no pipeline references, and the claim leases on their own period.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Collected;
use crate::error::ApiError;
use crate::service::{LeaderState, now_ms};

impl LeaderState {
    /// Removes the sources and artifacts no pipeline version has referenced for the
    /// retention.
    pub async fn collect(&self) -> Result<Collected, ApiError> {
        let retention = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let artifacts = self.artifacts.clone();
        let collected = self.catalog(move |c| c.collect(now_ms(), retention, |sha| artifacts.remove(sha))).await?;
        if collected != Collected::default() {
            tracing::info!(
                sources = collected.sources,
                artifacts = collected.artifacts,
                "unreferenced files collected"
            );
        }
        Ok(collected)
    }

    /// The leader's housekeeping until `shutdown`: claim leases, failover and
    /// collection, each on a period a fraction of its setting, and resharding
    /// whenever N changes.
    pub async fn maintain(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let period = |of: Duration, max: Duration| (of / 4).clamp(Duration::from_millis(100), max);
        let mut leases = tokio::time::interval(period(self.config.claim_lease, Duration::from_secs(5)));
        let mut collection = tokio::time::interval(period(self.config.retention, Duration::from_secs(60)));
        // A missing member is noticed within a tenth of --failover-after (1 s at
        // most), so its pipelines move on soon after it is declared missing; with
        // --failover-after 0 (never) the timer is not polled.
        let mut failover = tokio::time::interval(
            (self.config.failover_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
        );
        // A new N (under --on-scaling=reshard), from a member or the StatefulSet.
        let mut resized = self.guard.resized();
        // N may differ from the one the catalog's pending pipelines were spread
        // over (the leader restarted with another): spread them over this one.
        if let Err(e) = self.reshard().await {
            tracing::warn!(error = %e, "spreading the pending pipelines over the set failed; trying again when N changes");
        }
        for timer in [&mut leases, &mut collection, &mut failover] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            let done = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = leases.tick() => self.expire_leases().await.map(|_| ()),
                _ = collection.tick() => self.collect().await.map(|_| ()),
                _ = failover.tick(), if !self.config.failover_after.is_zero() => self.fail_over().await.map(|_| ()),
                // The guard (the sender) lives as long as `self`: never an error.
                _ = resized.changed() => self.reshard().await.map(|_| ()),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "leader housekeeping failed; trying again");
            }
        }
    }
}
