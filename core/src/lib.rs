//! What every part of Kiln must agree on, and nothing else: the leader, the workers,
//! the client commands and the tests all link this crate, and it links none of them.
//!
//! - [`program`]: the program format, its rules and the content-addressed layout.
//! - [`depset`]: the farm's dependency set.
//! - [`identity`]: a member's ordinal from its hostname; [`scaling`]: the guard.
//! - [`digest`]: SHA-256 of bytes and files, and what a valid digest looks like.
//! - [`api`]: the REST types of the leader's `/v0` API (serde).
//! - [`cluster`]: the member-to-leader contract in domain terms, and its one
//!   conversion from and to the protobuf of `kiln-proto`.
//! - [`retry`]: how a failed gRPC call is read (transient, permanent, stale).
//! - [`tls_failure`]: what a failed TLS connection to the leader means, in plain words.
//! - [`disk`]: how full a volume is, against the members' watermarks.

pub mod api;
pub mod cluster;
pub mod depset;
pub mod digest;
pub mod disk;
pub mod identity;
pub mod profile;
pub mod program;
pub mod retry;
pub mod scaling;
pub mod tls_failure;
