//! Kiln's compiler worker: who this member is ([`identity`]), the programs it builds
//! ([`program`], [`depset`]), and the scaling guard ([`scaling`]).
//!
//! **Invariant:** a worker holds no state that outlives a build. Everything durable is
//! on the leader; the build root is a cache that may be wiped at any time.

pub mod builder;
pub mod cache_store;
pub mod client;
pub mod depset;
pub mod identity;
pub mod kubernetes;
pub mod program;
pub mod scaling;
pub mod sccache;
pub mod upload;
pub mod worker;
