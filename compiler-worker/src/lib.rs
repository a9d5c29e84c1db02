//! Kiln's compiler worker: the shard loop ([`worker`]: claim, build, deliver,
//! heartbeats), its link to the leader in the worker's own terms ([`link`], with the
//! one gRPC implementation and every protobuf conversion in `link/grpc.rs`),
//! verified delivery of a binary ([`upload`]), builds with cargo and sccache
//! ([`builder`], [`sccache`], [`cache_store`], [`log`]), the trust boundary between a
//! build and its member ([`sandbox`]: bubblewrap, `target/`, the gateway, file
//! operations), the disk watermarks ([`disk`]), and the StatefulSet's size
//! ([`kubernetes`]). The program rules, the dependency set, identity and the scaling
//! guard are `kiln-core`'s, shared with the leader.
//!
//! **Invariant:** a worker holds no state that outlives a build. Everything durable is
//! on the leader; the build root is a cache that may be wiped at any time.

pub mod builder;
pub mod cache_store;
pub mod disk;
pub mod kubernetes;
pub mod link;
pub mod log;
pub mod sandbox;
pub mod sccache;
pub mod upload;
pub mod worker;
