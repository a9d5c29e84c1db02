//! Waiting for an event instead of sleeping a fixed time: a test polls what a user
//! would look at until it shows, with a timeout that only bounds a hung test.

use std::future::Future;
use std::time::{Duration, Instant};

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
