//! sccache, the compiler cache every build goes through when it is available.
//!
//! Each worker runs its own sccache server on its own port, so the statistics read
//! after a build are exactly that build's (a worker builds one pipeline at a time).
//! The server is started by the worker with the cache's settings; cargo and the
//! build scripts only learn the wrapper's path and the server's port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::builder::Wrapper;
pub use crate::cache_store::CacheStore;

/// One build's figures, read from sccache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SccacheStats {
    pub hits: u64,
    pub misses: u64,
    pub non_cacheable: u64,
    /// Reads and writes of the store that failed (sccache then compiles locally).
    pub store_errors: u64,
    /// Time spent serving hits from the store, and compiling misses.
    pub hit_read_ms: u64,
    pub miss_compile_ms: u64,
    /// Why sccache did not cache some calls, with counts ("crate-type (bin)": 1).
    pub not_cached: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
pub struct Sccache {
    binary: PathBuf,
    port: u16,
    store: CacheStore,
}

/// Finds sccache: an explicit path, else on PATH, else in cargo's bin directory.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.is_file().then(|| path.to_owned());
    }
    find_tool("sccache")
}

pub use kiln_process::find_tool;

/// How long this worker's sccache server waits for work before it exits. The
/// server daemonizes, out of the worker's process group and out of reach of its
/// parent-death signal: a worker that is SIGKILLed cannot stop it, and without a
/// timeout it would run forever. A worker idle for longer gets a new server from its
/// next build's `--zero-stats`, which starts one with the same settings.
const SERVER_IDLE_TIMEOUT_SECONDS: u32 = 300;

/// A free TCP port on loopback for this worker's sccache server.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sum_counts(value: &serde_json::Value) -> u64 {
    value["counts"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0)
}

fn duration_ms(value: &serde_json::Value) -> u64 {
    value["secs"].as_u64().unwrap_or(0) * 1000 + value["nanos"].as_u64().unwrap_or(0) / 1_000_000
}

/// Reads the figures out of `sccache --show-stats --stats-format=json`.
pub fn parse_stats(json: &str) -> anyhow::Result<SccacheStats> {
    let value: serde_json::Value = serde_json::from_str(json).context("sccache statistics are not JSON")?;
    let stats = &value["stats"];
    if !stats.is_object() {
        bail!("sccache statistics have no \"stats\" object");
    }
    Ok(SccacheStats {
        hits: sum_counts(&stats["cache_hits"]),
        misses: sum_counts(&stats["cache_misses"]),
        non_cacheable: stats["non_cacheable_compilations"].as_u64().unwrap_or(0)
            + stats["requests_not_cacheable"].as_u64().unwrap_or(0),
        store_errors: sum_counts(&stats["cache_errors"])
            + stats["cache_read_errors"].as_u64().unwrap_or(0)
            + stats["cache_write_errors"].as_u64().unwrap_or(0)
            + stats["cache_timeouts"].as_u64().unwrap_or(0),
        hit_read_ms: duration_ms(&stats["cache_read_hit_duration"]),
        miss_compile_ms: duration_ms(&stats["compiler_write_duration"]),
        not_cached: stats["not_cached"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default(),
    })
}

impl Sccache {
    /// Starts this worker's sccache server.
    pub async fn start(binary: PathBuf, store: CacheStore) -> anyhow::Result<Sccache> {
        let port = free_port().context("finding a port for the sccache server")?;
        let sccache = Sccache { binary, port, store };
        sccache.run(&["--start-server"]).await.context("starting the sccache server")?;
        Ok(sccache)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env("SCCACHE_SERVER_PORT", self.port.to_string())
            .env("SCCACHE_IDLE_TIMEOUT", SERVER_IDLE_TIMEOUT_SECONDS.to_string())
            .kill_on_drop(true);
        match &self.store {
            CacheStore::LocalDisk { dir } => {
                command.env("SCCACHE_DIR", dir);
            }
            CacheStore::S3(s3) => {
                command.envs(s3.sccache_env());
            }
        }
        command
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .with_context(|| format!("sccache {} did not answer within 60s", args.join(" ")))?
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "sccache {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// What cargo gets: the wrapper, and the port of this worker's server.
    pub fn wrapper(&self) -> Wrapper {
        Wrapper {
            env: vec![
                ("RUSTC_WRAPPER".into(), self.binary.display().to_string()),
                ("SCCACHE_SERVER_PORT".into(), self.port.to_string()),
            ],
        }
    }

    pub fn describe(&self) -> String {
        match &self.store {
            CacheStore::LocalDisk { dir } => format!("sccache on local disk ({})", dir.display()),
            CacheStore::S3(s3) => s3.describe(),
        }
    }

    /// Zeroes the statistics before a build. Also restarts the server, with the
    /// cache's settings, if it went away.
    pub async fn zero_stats(&self) -> anyhow::Result<()> {
        self.run(&["--zero-stats"]).await.map(|_| ())
    }

    pub async fn stats(&self) -> anyhow::Result<SccacheStats> {
        parse_stats(&self.run(&["--show-stats", "--stats-format=json"]).await?)
    }

    pub async fn stop(&self) {
        if let Err(e) = self.run(&["--stop-server"]).await {
            tracing::warn!(error = %e, "stopping the sccache server");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_summed_over_languages() {
        let json = r#"{"stats":{"cache_hits":{"counts":{"Rust":7,"C/C++":1}},"cache_misses":{"counts":{"Rust":2}},"non_cacheable_compilations":1,"requests_not_cacheable":3,
            "cache_read_hit_duration":{"secs":1,"nanos":500000000},"compiler_write_duration":{"secs":3,"nanos":0}}}"#;
        let stats = parse_stats(json).unwrap();
        assert_eq!((stats.hits, stats.misses, stats.non_cacheable, stats.store_errors), (8, 2, 4, 0));
        assert_eq!((stats.hit_read_ms, stats.miss_compile_ms), (1500, 3000));
        assert!(parse_stats("{}").is_err());
    }
}
