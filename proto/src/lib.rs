//! The protobuf contract between Kiln workers and the leader (`kiln.cluster.v1`).
//!
//! **Boundary:** only this crate, the leader's gRPC layer (`leader/src/grpc.rs`) and
//! the worker's link (`compiler-worker/src/link/grpc.rs`) know the wire format;
//! everything else speaks in the domain types of `kiln-core`, `kiln-leader` and
//! `kiln-compiler-worker`.

#![allow(missing_debug_implementations, clippy::all)]

pub mod cluster {
    tonic::include_proto!("kiln.cluster.v1");
}

pub use cluster::*;

/// The metadata key that carries the cluster token on every worker-to-leader call.
pub const AUTHORIZATION: &str = "authorization";

/// Size of the data chunks an artifact is streamed in.
pub const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Largest gRPC message either side accepts: an assignment carries a whole program
/// (limited to 8 MiB of source), everything else is small.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
