//! Failover: when a member has been silent for `--failover-after`, which of the
//! healthy members builds each of its pending pipelines.
//!
//! The choice is rendezvous hashing (highest random weight) of (pipeline id,
//! ordinal) over the healthy members: every member computes the same winner for a
//! pipeline, so each one is claimed by one member in a predictable order, and a
//! member that joins or leaves the healthy set only moves the pipelines it wins or
//! won (about 1/H of them), so cache locality stays as stable as it can.

use std::time::Duration;

/// Who is missing and who is healthy at one moment, as the leader sees it from
/// the members' heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Ordinals silent for longer than `--failover-after`: their pending
    /// pipelines and claims are built by the healthy members. Sorted.
    pub missing: Vec<u32>,
    /// Ordinals that reported within the heartbeat window and can build (their
    /// dependency set is the leader's, their sandbox and disk allow it): the
    /// members that may cover for a missing one. Sorted.
    pub healthy: Vec<u32>,
}

impl Coverage {
    /// The coverage of a set of `workers` members, from how long each has been
    /// silent (`silence(ordinal)`: since its last heartbeat, or since the leader
    /// started when it has not reported yet) and whether its last report says it
    /// can build (`can_build`). `failover_after` zero: never.
    pub fn of(
        workers: u32,
        silence: impl Fn(u32) -> Duration,
        can_build: impl Fn(u32) -> bool,
        failover_after: Duration,
        window: Duration,
    ) -> Coverage {
        let mut coverage = Coverage::default();
        for ordinal in 0..workers {
            let silent = silence(ordinal);
            if !failover_after.is_zero() && silent > failover_after {
                coverage.missing.push(ordinal);
            } else if silent <= window && can_build(ordinal) {
                coverage.healthy.push(ordinal);
            }
        }
        coverage
    }

    pub fn is_missing(&self, ordinal: u32) -> bool {
        self.missing.contains(&ordinal)
    }

    /// The healthy members with `caller` among them: a member asking for work is
    /// alive, even if its first heartbeat has not arrived yet.
    pub fn healthy_with(&self, caller: u32) -> Vec<u32> {
        let mut healthy = self.healthy.clone();
        if !healthy.contains(&caller) {
            healthy.push(caller);
            healthy.sort_unstable();
        }
        healthy
    }

    /// Which member builds pipeline `id` of a missing ordinal: the rendezvous
    /// winner over `healthy`. None when no member is healthy.
    pub fn covering_member(id: u64, healthy: &[u32]) -> Option<u32> {
        healthy.iter().copied().max_by_key(|&ordinal| (weight(id, ordinal), std::cmp::Reverse(ordinal)))
    }
}

/// The rendezvous weight of (pipeline `id`, `ordinal`): a fixed mix of both
/// (SplitMix64's finalizer), the same on every leader and in every version, so
/// an assignment never changes with a restart or an upgrade.
pub fn weight(id: u64, ordinal: u32) -> u64 {
    mix(id ^ mix(u64::from(ordinal).wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
