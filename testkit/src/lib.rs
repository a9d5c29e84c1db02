//! Kiln's test kit, for the end-to-end tests (`kiln/tests`) and the benchmarks
//! (`benches`): one of each helper they share.
//!
//! - [`Process`]: a real child process in its own process group, with its output in
//!   a file that is printed when a test fails, killed with its group when dropped.
//! - [`free_port`], [`wait_until`]: no fixed sleeps; wait for the event itself.
//! - [`Leader`]: a typed client of the leader's API (`kiln_core::api` types).
//! - [`Farm`]: members started one by one from [`kiln::ServerArgs`], so a
//!   test can kill and restart any of them.
//! - [`S3Server`]: the real S3-compatible server s3s-fs on loopback.
//! - [`TestCertificates`]: a CA and a leader certificate, for farms over TLS.
//! - [`require_root`]: the one message for tests that need root.

pub mod certificates;
pub mod farm;
pub mod leader;
pub mod machine;
pub mod nonroot;
pub mod process;
pub mod s3;
pub mod wait;

pub use certificates::TestCertificates;
pub use farm::{Farm, FarmSetup, Member};
pub use leader::Leader;
pub use machine::{free_port, installed, require_root};
pub use nonroot::NonRoot;
pub use process::{Process, processes_mentioning};
pub use s3::S3Server;
pub use wait::{wait_until, wait_until_blocking};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    kiln_core::digest::sha256_hex(bytes)
}
