//! Claims and their leases: the long poll that hands a member its next
//! pipeline (its own ordinal's, or a missing member's it covers for), the reports
//! and uploads under a claim (refused unless the caller holds it), and the lease
//! that sends a claim its member stopped reporting back to `pending` for its own
//! ordinal.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kiln_core::program::ProgramFile;

use crate::error::ApiError;
use crate::rules::{ClaimKey, Coverage, Pipeline, Report};
use crate::service::{LeaderState, MemberId, now_ms};

impl LeaderState {
    /// The member holding `claim` just showed it is working on it.
    pub(super) fn renew_lease(&self, claim: ClaimKey) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(claim, Instant::now());
    }

    /// Puts back to `pending` every claim whose member has not reported it for
    /// longer than the lease: a worker that hangs, or was cut off, does not hold
    /// its ordinal's queue. The requeued pipelines stay with their ordinal.
    pub async fn expire_leases(&self) -> Result<usize, ApiError> {
        self.expire_leases_looking_ahead(Duration::ZERO).await
    }

    /// [`LeaderState::expire_leases`] as if `ahead` more time had passed since each
    /// claim was last reported: a test sees a lease run out without waiting for it.
    pub(super) async fn expire_leases_looking_ahead(&self, ahead: Duration) -> Result<usize, ApiError> {
        let in_flight = self.catalog(|c| c.in_flight()).await?;
        let lease = self.config.claim_lease;
        let now = Instant::now() + ahead;
        let expired: Vec<(ClaimKey, u32)> = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let live: HashSet<ClaimKey> = in_flight.iter().map(|(claim, _)| *claim).collect();
            leases.retain(|claim, _| live.contains(claim));
            in_flight
                .into_iter()
                .filter(|(claim, _)| now.duration_since(*leases.entry(*claim).or_insert(now)) > lease)
                .collect()
        };
        let lease = humantime::format_duration(lease).to_string();
        let reasons = expired.into_iter().map(|(claim, ordinal)| {
            (
                claim,
                ordinal,
                format!("ordinal {ordinal} did not report this build for longer than the claim lease ({lease})"),
            )
        });
        let requeued =
            self.requeue_claims(reasons.collect(), "claim lease ran out: the pipeline is pending again").await?;
        Ok(requeued)
    }

    /// Sends every claim a missing member holds back to `pending` without waiting
    /// for its lease: its member has been silent for longer than
    /// `--failover-after`, and a healthy member builds it.
    pub(super) async fn requeue_claims_of_missing(&self, coverage: &Coverage) -> Result<usize, ApiError> {
        if coverage.missing.is_empty() {
            return Ok(0);
        }
        let after = humantime::format_duration(self.config.failover_after).to_string();
        let why = |holder: u32| {
            format!(
                "ordinal {holder} sent no heartbeat for longer than --failover-after ({after}): a healthy member builds it (failover)"
            )
        };
        let what = "member missing: its build is pending again for a healthy member";
        self.requeue_claims_held(|holder| coverage.is_missing(holder), why, what).await
    }

    /// Sends every claim in flight whose holder `gone` picks back to `pending`,
    /// `why` of its holder the reason in its history.
    pub(super) async fn requeue_claims_held(
        &self,
        gone: impl Fn(u32) -> bool,
        why: impl Fn(u32) -> String,
        what: &'static str,
    ) -> Result<usize, ApiError> {
        let in_flight = self.catalog(|c| c.in_flight()).await?;
        let held: Vec<(ClaimKey, u32, String)> = in_flight
            .into_iter()
            .filter(|(_, holder)| gone(*holder))
            .map(|(claim, holder)| (claim, holder, why(holder)))
            .collect();
        self.requeue_claims(held, what).await
    }

    /// Puts each claim back to `pending` (if still current) with its reason, and
    /// wakes the members when any went back.
    async fn requeue_claims(
        &self,
        claims: Vec<(ClaimKey, u32, String)>,
        what: &'static str,
    ) -> Result<usize, ApiError> {
        let mut requeued = 0;
        for (claim, ordinal, reason) in claims {
            if let Some(record) = self.catalog(move |c| c.requeue_claim(&claim, &reason, now_ms())).await? {
                tracing::warn!(
                    pipeline = %record.name, id = record.id, version = record.version, ordinal,
                    attempt = record.attempt, "{what}"
                );
                requeued += 1;
            }
            self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&claim);
        }
        if requeued > 0 {
            self.wake_workers();
        }
        Ok(requeued)
    }

    /// Long poll: the next pending pipeline of this member, or None after `wait`.
    pub async fn claim(
        &self,
        member: MemberId,
        depset: &str,
        wait: Duration,
    ) -> Result<Option<(Pipeline, Vec<ProgramFile>)>, ApiError> {
        self.member_seen(member).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let leader_set = self.config.depset.fingerprint().to_owned();
        if depset != leader_set {
            // /cluster_healthz names it; the member asks again after the wait.
            tracing::info!(
                ordinal = member.ordinal,
                member_depset = depset,
                leader_depset = %leader_set,
                "no work for this member: its dependency set differs from the leader's"
            );
            tokio::time::sleep_until(deadline).await;
            return Ok(None);
        }
        let mut wakeups = self.work.subscribe();
        loop {
            if let Some(full) = self.data_disk_critical() {
                // Nothing built now could be stored: look again in a moment.
                tracing::debug!(ordinal = member.ordinal, "{full}");
                let again = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
                tokio::time::sleep_until(again).await;
                if again == deadline {
                    return Ok(None);
                }
                continue;
            }
            // Mark the current generation seen before looking, so a submission that
            // lands after the look still wakes us.
            wakeups.borrow_and_update();
            let ordinal = member.ordinal;
            let set = leader_set.clone();
            let coverage = self.coverage();
            if let Some((record, source)) = self.catalog(move |c| c.claim(ordinal, &set, &coverage, now_ms())).await? {
                self.renew_lease(record.claim_key());
                match record.built_by {
                    Some(_) => {
                        self.metrics.failover_claimed(ordinal, record.worker);
                        tracing::info!(pipeline = %record.name, id = record.id, version = record.version, ordinal, for_ordinal = record.worker, attempt = record.attempt, "pipeline claimed for a missing member (failover)");
                    }
                    None => {
                        tracing::info!(pipeline = %record.name, id = record.id, version = record.version, ordinal, attempt = record.attempt, "pipeline claimed")
                    }
                }
                return Ok(Some((record, source)));
            }
            tokio::select! {
                changed = wakeups.changed() => if changed.is_err() { return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    pub async fn report(
        &self,
        member: MemberId,
        claim: ClaimKey,
        report: Report,
        log: Option<String>,
    ) -> Result<Pipeline, ApiError> {
        self.member_seen(member).await?;
        if let Report::Success { binary_sha256, .. } = &report
            && !self.artifacts.contains(binary_sha256)
        {
            return Err(ApiError::NotFound(format!("the leader holds no artifact {binary_sha256}: upload it first")));
        }
        let holder = (member.ordinal, member.incarnation);
        let record =
            self.catalog(move |c| c.report(&claim, holder, report, log.as_deref(), now_ms())).await.inspect_err(
                |e| tracing::warn!(ordinal = member.ordinal, id = claim.pipeline_id, error = %e, "report refused"),
            )?;
        // Only once the catalog found the caller holds the claim: a stranger's
        // report must not keep a dead holder's lease alive.
        self.renew_lease(claim);
        if record.status.finished() {
            self.metrics.build_finished(&record);
            tracing::info!(
                pipeline = %record.name, id = record.id, version = record.version, ordinal = member.ordinal,
                status = %record.status, binary_sha256 = record.binary_sha256.as_deref().unwrap_or(""),
                error = record.error.as_deref().unwrap_or(""), "build finished"
            );
        } else {
            tracing::debug!(pipeline = %record.name, id = record.id, version = record.version, status = %record.status, "build status");
        }
        Ok(record)
    }

    /// Records a binary received (and measured) under `claim`; refused unless
    /// `member` holds the claim.
    pub async fn uploaded(&self, member: MemberId, claim: ClaimKey, sha256: String, size: u64) -> Result<(), ApiError> {
        let holder = (member.ordinal, member.incarnation);
        let artifacts = self.artifacts.clone();
        self.catalog(move |c| c.record_upload(&claim, holder, &sha256, size, || artifacts.contains(&sha256), now_ms()))
            .await
            .inspect_err(
                |e| tracing::warn!(ordinal = member.ordinal, id = claim.pipeline_id, error = %e, "upload refused"),
            )?;
        self.renew_lease(claim);
        Ok(())
    }

    /// Checks, before receiving its bytes, that `member` holds `claim`.
    pub async fn holds(&self, member: MemberId, claim: ClaimKey) -> Result<(), ApiError> {
        let holder = (member.ordinal, member.incarnation);
        self.catalog(move |c| c.check_holds(&claim, holder)).await?;
        self.renew_lease(claim);
        Ok(())
    }
}
