//! The leader's rules, as plain types and functions. Nothing here knows about
//! storage or the network, so every rule is tested without either (`tests.rs`);
//! the catalog loads a record, asks a rule, and stores what it answers.
//!
//! - `pipeline.rs`: the record, which ordinal builds it, and its life (a new
//!   version, a claim, a requeue, a cancellation, the loss of its member).
//! - `submission.rs`: what a submission of a known name changes.
//! - `claims.rs`: who may report or upload under a claim, and what a report or an
//!   upload changes.
//! - `binary_cache.rs`: the key that decides a binary, and what a hit serves.
//! - `failover.rs`: who is missing, and which healthy member builds each of a
//!   missing member's pipelines.
//! - `sharding.rs`: which ordinal builds a pipeline: `id % N`, or rendezvous
//!   hashing under `--on-scaling=reshard`.

mod binary_cache;
mod claims;
mod failover;
mod pipeline;
mod sharding;
mod submission;
#[cfg(test)]
pub(crate) mod tests;

pub use binary_cache::{CachedBinary, binary_cache_candidates, binary_cache_hit_log, binary_key};
pub use claims::{Report, ReportRefused, held_by};
pub use failover::Coverage;
pub use kiln_core::cluster::{ClaimKey, Figures};
pub use pipeline::{HISTORY_LEN, MAX_MEMBER_LOSSES, NotCancellable, Pipeline, Uploaded};
pub use sharding::{Sharding, assigned_ordinal};
pub use submission::{Farm, Submitted, new_pipeline, resubmit};
