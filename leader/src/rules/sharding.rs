//! How pipelines are spread over the N members: `id % N`, the seed's, or
//! rendezvous hashing under `--on-scaling=reshard`, where a new N moves only
//! about 1/N of them.

use super::failover::Coverage;

/// The ordinal that builds pipeline `id` in a set of `workers` members.
pub fn assigned_ordinal(id: u64, workers: u32) -> u32 {
    // The remainder is below `workers`, a u32.
    (id % u64::from(workers)) as u32
}

/// How pipelines are spread over the N members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharding {
    /// `id % N`: the seed's, fixed for the set's life (`--on-scaling=panic`).
    #[default]
    Modulo,
    /// The rendezvous winner of (id, ordinal) over 0..N (`--on-scaling=reshard`):
    /// when N changes, only about 1/N of the pipelines move.
    Rendezvous,
}

impl Sharding {
    /// The ordinal that builds pipeline `id` in a set of `workers` members.
    pub fn ordinal(self, id: u64, workers: u32) -> u32 {
        match self {
            Sharding::Modulo => assigned_ordinal(id, workers),
            Sharding::Rendezvous => {
                let all: Vec<u32> = (0..workers.max(1)).collect();
                Coverage::covering_member(id, &all).unwrap_or(0)
            }
        }
    }
}
