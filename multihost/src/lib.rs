//! Process supervision shared by `kiln up` (the local farm) and the multihost
//! launcher: children in their own process groups that die with their parent,
//! output prefixed per member, a restart policy, and a stop that leaves no process
//! behind. And the multihost pieces: the loopback layout with its up-front checks,
//! finding leftovers of earlier runs, and the coordinator.

pub mod coordinator;
pub mod layout;
pub mod process;
pub mod stale;
pub mod supervisor;
