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

pub mod farm;
pub mod leader;
pub mod nonroot;
pub mod process;
pub mod s3;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use farm::{Farm, FarmSetup, Member};
pub use leader::Leader;
pub use nonroot::NonRoot;
pub use process::{Process, processes_mentioning};
pub use s3::S3Server;
pub use tls::TestCertificates;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port on loopback");
    listener.local_addr().expect("a bound socket has an address").port()
}

/// Polls `check` until it gives `Some`, every `every`, and fails the test with
/// `what` and the last observation if `timeout` passes first. The timeout bounds a
/// test that would otherwise hang; it decides nothing about speed.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last seen: {last}");
        tokio::time::sleep(every).await;
    }
}

/// [`wait_until`] for code outside an async runtime.
pub fn wait_until_blocking<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last seen: {last}");
        std::thread::sleep(every);
    }
}

/// A tool that `scripts/install-deps` installs (on PATH or in ~/.cargo/bin).
pub fn installed(binary: &str) -> PathBuf {
    kiln_process::find_tool(binary).unwrap_or_else(|| panic!("{binary} is not installed: run scripts/install-deps"))
}

/// Stops a test that needs root with one clear message, up front, before it has
/// started anything.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}); run the suite as root, as CI does (scripts/test)"
    );
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    kiln_core::digest::sha256_hex(bytes)
}
