//! The members as the leader sees them: every worker call passes the scaling
//! guard and the incarnation check here, heartbeats record each member's state,
//! and cluster health is computed from them (the leader's own data volume
//! included).

use std::time::{Instant, SystemTime};

use kiln_core::disk;
use kiln_core::scaling::{OnScaling, ScalingDetected};

use crate::error::ApiError;
use crate::health::{ClusterHealth, Expected, MemberReport, cluster_health};
use crate::rules::{ClaimKey, Coverage};
use crate::service::{LeaderState, MemberId, now_ms};

impl LeaderState {
    /// Applies the scaling guard and notices restarts; called on every worker call.
    pub async fn member_seen(&self, member: MemberId) -> Result<(), ApiError> {
        if let Some(refused) = self.size_refusal(member) {
            return Err(refused);
        }
        if let Some(detected) = self.observe(member).await? {
            return Err(ApiError::Conflict(detected.to_string()));
        }
        let MemberId { ordinal, incarnation, .. } = member;
        // A second incarnation of an ordinal does not take over while the first one
        // still reports: the leader keeps the first until its heartbeats stop.
        let known = self.catalog(move |c| c.incarnation_of(ordinal)).await?;
        if let Some(known) = known.filter(|k| *k != incarnation)
            && self.reports_within_window(ordinal, known)
        {
            self.members.conflict(ordinal, incarnation, Instant::now());
            tracing::warn!(ordinal, incarnation, holder = known, "refused a second incarnation of a live member");
            return Err(ApiError::Conflict(format!(
                "ordinal {ordinal} is held by another incarnation that still reports; this one is refused until that one's heartbeats stop (within {}s)",
                self.config.heartbeat_window.as_secs()
            )));
        }
        let requeued = self.catalog(move |c| c.member_seen(ordinal, incarnation, now_ms())).await?;
        if !requeued.is_empty() {
            tracing::warn!(ordinal, ?requeued, "member restarted: its builds in flight are pending again");
            self.wake_workers();
        }
        Ok(())
    }

    /// Whether `incarnation` of `ordinal` reported within the heartbeat window (or
    /// the leader started too recently to know).
    fn reports_within_window(&self, ordinal: u32, incarnation: u64) -> bool {
        let window = self.config.heartbeat_window;
        match self.members.snapshot().get(&ordinal) {
            Some((at, report)) => report.incarnation == incarnation && at.elapsed() <= window,
            None => self.started.elapsed() <= window,
        }
    }

    /// Feeds the member's view of N to the scaling guard. With N from the Kubernetes
    /// API, the member's view is only checked (see [`LeaderState::size_refusal`]).
    ///
    /// Under `--on-scaling=reshard` a member's own N is never taken: the set grows
    /// when the member with ordinal N appears (one member at a time, up to
    /// `MAX_RESHARD_WORKERS`; a member further out is refused until those before
    /// it joined), so neither a stale report of the old N nor a hostile one of a
    /// huge N moves it. Members take the leader's N from its answers; the set
    /// shrinks when its last member leaves ([`LeaderState::member_leaving`]) or the
    /// StatefulSet says so.
    async fn observe(&self, member: MemberId) -> Result<Option<ScalingDetected>, ApiError> {
        if self.config.n_from_kubernetes {
            return Ok(self.guard.detected());
        }
        match self.guard.on_scaling() {
            OnScaling::Panic => {
                self.guard.observe_replicas(member.workers);
                self.guard.observe_ordinal(member.ordinal);
            }
            OnScaling::Reshard => {
                let left =
                    self.left.lock().unwrap_or_else(|p| p.into_inner()).contains(&(member.ordinal, member.incarnation));
                if left {
                    return Err(ApiError::Conflict(format!(
                        "ordinal {} said it left the set: a call of that incarnation after it is refused",
                        member.ordinal
                    )));
                }
                if !self.guard.observe_ordinal(member.ordinal) {
                    return Err(ApiError::Conflict(format!(
                        "ordinal {} is outside the set of {} members: under --on-scaling=reshard a set grows one member at a time (the next is ordinal {0}); ask again once the members before it joined",
                        member.ordinal,
                        self.workers()
                    )));
                }
            }
        }
        Ok(self.guard.detected())
    }

    /// Under `--on-scaling=reshard`, member `member` says it is leaving the set
    /// (it was stopped): its builds in flight go back to `pending`, and when it
    /// is the set's last ordinal, N shrinks to it (as a StatefulSet scaled down
    /// stops its last pod). Under `panic` nothing changes: its builds wait for
    /// their lease or failover, as for any member that stops.
    pub async fn member_leaving(&self, member: MemberId) -> Result<(), ApiError> {
        if self.guard.on_scaling() != OnScaling::Reshard {
            return Ok(());
        }
        // Only the member itself: a second incarnation of its ordinal is refused.
        self.member_seen(member).await?;
        let ordinal = member.ordinal;
        self.left.lock().unwrap_or_else(|p| p.into_inner()).insert((ordinal, member.incarnation));
        let why = |holder: u32| format!("ordinal {holder} left the set (resharding)");
        self.requeue_claims_held(|holder| holder == ordinal, why, "member left: its build is pending again").await?;
        tracing::info!(ordinal, workers = self.workers(), "member leaving the set");
        if !self.config.n_from_kubernetes && ordinal + 1 == self.workers() && ordinal > 0 {
            self.guard.observe_replicas(ordinal);
        }
        self.reshard().await.map(|_| ())
    }

    /// Moves the pending pipelines to their ordinals in the set as it is now
    /// (`--on-scaling=reshard`); a no-op when nothing changed. Returns how many
    /// moved of how many pending.
    pub async fn reshard(&self) -> Result<(usize, usize), ApiError> {
        let (sharding, workers) = (self.sharding(), self.workers());
        let (moved, pending) = self.catalog(move |c| c.reshard(sharding, workers, now_ms())).await?;
        let before = self.sharded_for.swap(workers, std::sync::atomic::Ordering::Relaxed);
        if moved > 0 || before != workers {
            tracing::warn!(
                from = before,
                workers,
                moved,
                pending,
                "resharded: pending pipelines moved to their new ordinals"
            );
            self.metrics.resharded(moved as u64);
            self.wake_workers();
        }
        Ok((moved, pending))
    }

    /// With N from the Kubernetes API: the refusal of a member whose N or ordinal
    /// disagrees with the StatefulSet's. A caller with the cluster token must not be
    /// able to make the leader panic; its guard trips only when the API says so.
    fn size_refusal(&self, member: MemberId) -> Option<ApiError> {
        let workers = self.guard.workers();
        // Under reshard, a member may still report the N it started with while the
        // set grows or shrinks: only an ordinal outside the set is refused.
        let agrees = match self.guard.on_scaling() {
            OnScaling::Panic => member.workers == workers,
            OnScaling::Reshard => true,
        };
        if !self.config.n_from_kubernetes || (agrees && member.ordinal < workers) {
            return None;
        }
        tracing::warn!(
            ordinal = member.ordinal,
            reported_workers = member.workers,
            workers,
            "refused a member whose N disagrees with the StatefulSet's"
        );
        Some(ApiError::Conflict(format!(
            "this member reports N = {} (ordinal {}), but the StatefulSet has {workers} replicas: refused (the leader takes N from the Kubernetes API)",
            member.workers, member.ordinal
        )))
    }

    /// A heartbeat: records the member's state, and says whether the build it holds
    /// is still wanted.
    pub async fn heartbeat(
        &self,
        member: MemberId,
        report: MemberReport,
        current: Option<ClaimKey>,
    ) -> Result<bool, ApiError> {
        if let Some(refused) = self.size_refusal(member) {
            return Err(refused);
        }
        if self.observe(member).await?.is_some() {
            // Answer anyway: the reply carries the leader's N, from which the member
            // applies the scaling guard on its side too.
            return Ok(true);
        }
        self.member_seen(member).await?;
        self.members.record(member.ordinal, report, Instant::now());
        match current {
            None => Ok(false),
            Some(claim) => {
                // Only the holder's heartbeat renews a lease: another member naming
                // someone else's build is told to drop it, and renews nothing.
                let holder = (member.ordinal, member.incarnation);
                let current = match self.catalog(move |c| c.check_holds(&claim, holder)).await {
                    Ok(()) => true,
                    Err(ApiError::Conflict(_)) => false,
                    Err(other) => return Err(other),
                };
                if current {
                    self.renew_lease(claim);
                }
                Ok(!current)
            }
        }
    }

    /// Who is missing (silent for longer than `--failover-after`) and who is
    /// healthy, now. A member the leader has not heard from since it started counts
    /// as silent since then.
    pub fn coverage(&self) -> Coverage {
        self.coverage_at(Instant::now())
    }

    pub(super) fn coverage_at(&self, now: Instant) -> Coverage {
        let reports = self.members.snapshot();
        let silence = |ordinal: u32| {
            let since = reports.get(&ordinal).map_or(self.started, |(at, _)| *at);
            now.saturating_duration_since(since)
        };
        // A member that takes no work (another dependency set, still preparing, no
        // sandbox, a full disk) covers for nobody.
        let depset = self.config.depset.fingerprint();
        let can_build = |ordinal: u32| {
            reports.get(&ordinal).is_some_and(|(_, r)| {
                r.depset == depset && !r.preparing && !r.sandbox_unavailable && r.disk_critical.is_empty()
            })
        };
        Coverage::of(self.workers(), silence, can_build, self.config.failover_after, self.config.heartbeat_window)
    }

    /// Says when a member goes missing or comes back, sends the claims a missing
    /// member held back to `pending` (a healthy member builds them), and wakes the
    /// members so that they look at its queue. Returns the coverage it acted on.
    pub async fn fail_over(&self) -> Result<Coverage, ApiError> {
        let coverage = self.coverage();
        let (lost, back) = {
            let mut known = self.missing.lock().unwrap_or_else(|p| p.into_inner());
            let lost: Vec<u32> = coverage.missing.iter().copied().filter(|o| !known.contains(o)).collect();
            let back: Vec<u32> = known.iter().copied().filter(|o| !coverage.is_missing(*o)).collect();
            known.clone_from(&coverage.missing);
            (lost, back)
        };
        let after = humantime::format_duration(self.config.failover_after).to_string();
        for ordinal in &lost {
            tracing::warn!(
                ordinal, failover_after = %after, covering = ?coverage.healthy,
                "member missing: the healthy members build its pipelines (failover)"
            );
        }
        for ordinal in &back {
            tracing::info!(ordinal, "member back: new pipelines of its ordinal go to it again");
        }
        let requeued = self.requeue_claims_of_missing(&coverage).await?;
        if !lost.is_empty() || requeued > 0 {
            self.wake_workers();
        }
        Ok(coverage)
    }

    pub fn cluster_health(&self) -> ClusterHealth {
        let now = Instant::now();
        let expected = Expected {
            workers: self.workers(),
            version: &self.config.version,
            depset: self.config.depset.fingerprint(),
        };
        let mut health = cluster_health(
            &self.members.snapshot(),
            expected,
            self.config.heartbeat_window,
            now,
            humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        // A second live incarnation of an ordinal is a conflict to show, not to hide.
        for (ordinal, incarnation) in self.members.conflicts(self.config.heartbeat_window, now) {
            if let Some(member) = health.members.iter_mut().find(|m| m.ordinal == ordinal) {
                let conflict = format!("a second incarnation ({incarnation:x}) asked for this ordinal and was refused");
                member.message = if member.healthy { conflict } else { format!("{}; {conflict}", member.message) };
                member.healthy = false;
            }
        }
        // A missing member stays unhealthy; its message names who covers for it.
        let coverage = self.coverage_at(now);
        for member in health.members.iter_mut().filter(|m| coverage.is_missing(m.ordinal)) {
            let healthy = coverage.healthy_with(member.ordinal);
            let covering: Vec<u32> = healthy.into_iter().filter(|o| *o != member.ordinal).collect();
            let after = humantime::format_duration(self.config.failover_after);
            let cover = match covering.as_slice() {
                [] => {
                    format!("silent for longer than --failover-after ({after}), and no healthy member can cover for it")
                }
                list => format!(
                    "silent for longer than --failover-after ({after}): ordinals {} build its pipelines (failover)",
                    list.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                ),
            };
            member.message = format!("{}; {cover}", member.message);
            member.healthy = false;
            member.missing = true;
            member.covered_by = covering;
        }
        if let Some(full) = self.data_disk_critical()
            && let Some(leader) = health.members.iter_mut().find(|m| m.ordinal == 0)
        {
            leader.message = if leader.healthy { full } else { format!("{}; {full}", leader.message) };
            leader.healthy = false;
        }
        health.all_healthy = health.members.iter().all(|m| m.healthy);
        health
    }

    /// A cheap check that this process can serve: the catalog answers and its
    /// data volume is below the critical watermark.
    pub async fn self_check(&self) -> Result<(), ApiError> {
        if let Some(full) = self.data_disk_critical() {
            return Err(ApiError::DiskFull(full));
        }
        self.catalog(|c| c.get(0)).await.map(|_| ())
    }

    /// How full the leader's data volume is, in percent.
    pub fn data_disk_used(&self) -> Option<f64> {
        disk::used_percent(&self.config.data_dir).ok()
    }

    /// The leader's data volume above the critical watermark, in words.
    pub(super) fn data_disk_critical(&self) -> Option<String> {
        let used = self.data_disk_used()?;
        let marks = self.config.watermarks;
        (marks.pressure(used) == disk::Pressure::Critical).then(|| {
            format!(
                "the leader's data volume is {used:.0}% full (critical watermark {:.0}%): no work is handed out until space is freed in {}",
                marks.critical,
                self.config.data_dir.display()
            )
        })
    }
}
