//! The worker's heartbeats, in the background every `--heartbeat-interval`:
//! liveness, the member's state and the build in hand go to the leader; its answer
//! feeds the scaling guard (the leader's N) and may cancel the build in hand,
//! when the leader no longer wants it (a new version, a deletion).

use std::sync::Arc;
use std::time::Duration;

use kiln_core::cluster::ClaimKey;
use kiln_core::retry::Disposition;
use kiln_core::scaling::ScalingGuard;
use tokio_util::sync::CancellationToken;

use crate::link::{Heartbeat, HeartbeatAnswer, LeaderLink, Progress};
use crate::worker::shared::{Shared, lock};

/// Who beats, how often, and against which dependency set.
#[derive(Debug, Clone)]
pub(crate) struct Beats {
    pub ordinal: u32,
    pub depset: String,
    pub interval: Duration,
}

/// Beats until `shutdown`. A failing leader is said once, and again when it is back.
pub(crate) async fn heartbeat_loop<L: LeaderLink>(
    link: Arc<L>,
    beats: Beats,
    shared: Arc<Shared>,
    guard: ScalingGuard,
    shutdown: CancellationToken,
) {
    let mut was_failing = false;
    let mut ticker = tokio::time::interval(beats.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (beat, sent) = snapshot(&shared, &beats.depset);
        match link.heartbeat(beat).await {
            Ok(answer) => {
                if was_failing {
                    tracing::info!(ordinal = beats.ordinal, "leader reachable again");
                    was_failing = false;
                }
                act_on_answer(answer, sent, &shared, &guard, beats.ordinal);
            }
            Err(failure) => {
                if !was_failing {
                    tracing::warn!(ordinal = beats.ordinal, error = %failure, "heartbeat failed; will keep trying");
                    was_failing = true;
                }
                // Said on every refused beat: a refusal that asking again cannot
                // change (a wrong cluster token) is the operator's to fix, and
                // nothing else will tell them.
                if failure.disposition == Disposition::Permanent {
                    tracing::error!(ordinal = beats.ordinal, "the leader refuses this member: {failure}");
                }
            }
        }
    }
}

/// The heartbeat to send now, and the build in hand it names (with its token).
pub(crate) fn snapshot(shared: &Shared, depset: &str) -> (Heartbeat, Option<(ClaimKey, CancellationToken)>) {
    let current = lock(&shared.current).clone();
    let cache = lock(&shared.cache_state).clone();
    // One lock, released before the guard's statement ends: a second lock in the
    // same expression would wait for the first forever.
    let (sandbox, sandbox_unavailable) = lock(&shared.sandbox).clone();
    let disk = lock(&shared.disk).clone();
    let beat = Heartbeat {
        cache,
        current: current.as_ref().map(|(claim, _)| {
            let (crates_done, crates_total) = shared.progress.get();
            (*claim, Progress { crates_done, crates_total })
        }),
        preparing: shared.preparing(),
        sandbox,
        sandbox_unavailable,
        depset: depset.to_owned(),
        disk_used_percent: disk.used_percent,
        disk_critical: disk.critical,
        leaving: false,
        cpus: lock(&shared.cpus).clone(),
    };
    (beat, current)
}

/// Under `--on-scaling=reshard`, tells the leader this member is stopping and
/// leaving the set (its builds in flight go back to pending; the last ordinal
/// leaving shrinks N). Once, best effort: a leader that does not answer in time
/// finds the member missing instead.
pub(crate) async fn say_leaving<L: LeaderLink>(link: &L, shared: &Shared, depset: &str, ordinal: u32) {
    let (mut beat, _) = snapshot(shared, depset);
    beat.leaving = true;
    beat.current = None;
    match tokio::time::timeout(Duration::from_secs(5), link.heartbeat(beat)).await {
        Ok(Ok(_)) => tracing::info!(ordinal, "told the leader this member leaves the set"),
        Ok(Err(failure)) => tracing::warn!(ordinal, error = %failure, "could not tell the leader this member leaves"),
        Err(_) => tracing::warn!(ordinal, "the leader did not answer in time that this member leaves"),
    }
}

/// Acts on the leader's answer to a heartbeat that named `sent` as the build in
/// hand: the scaling guard sees the leader's N, and a build the leader no longer
/// wants is cancelled, if it is still the one in hand (a newer claim taken while
/// the answer was on its way is not the one the leader meant).
pub(crate) fn act_on_answer(
    answer: HeartbeatAnswer,
    sent: Option<(ClaimKey, CancellationToken)>,
    shared: &Shared,
    guard: &ScalingGuard,
    ordinal: u32,
) {
    guard.observe_replicas(answer.leader_workers);
    let still_current = || shared.current_claim() == sent.as_ref().map(|(claim, _)| *claim);
    if answer.cancel_current
        && still_current()
        && let Some((claim, cancel)) = sent
    {
        tracing::info!(
            id = claim.pipeline_id,
            version = claim.version,
            ordinal,
            "the leader no longer wants this build: cancelling it"
        );
        cancel.cancel();
    }
}
