//! How builds are run: the worker's build settings, the environment every farm
//! build sets, and the compiler wrapper a build runs with (its sccache, and for a
//! sandboxed build the server it starts inside the sandbox). Plain data, read by
//! the rest of the builder and by `sandbox::target`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::depset::DepSet;

use crate::sandbox::Sandbox;

/// The `CARGO_*` variables every farm build sets. sccache hashes every `CARGO_*`
/// variable rustc sees, so a CI job that wants the farm's hits sets exactly these
/// too (`kiln ci-env` prints them).
pub const FARM_CARGO_ENV: [(&str, &str); 2] = [
    ("CARGO_TERM_COLOR", "never"),
    // Incremental compilation is for editing loops; sccache refuses to cache it,
    // and a farm build never reuses it anyway.
    ("CARGO_INCREMENTAL", "0"),
];

/// How builds are run.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub build_root: PathBuf,
    /// The cargo profile: `release` or `dev`.
    pub profile: String,
    /// cargo's `-j` (its jobs): the member's share of the machine's CPUs. None:
    /// cargo's own default, every CPU the member may run on. A flag, not
    /// `CARGO_BUILD_JOBS`: sccache hashes every `CARGO_*` variable rustc sees, and
    /// members with different shares must still hit each other's entries.
    pub jobs: Option<u32>,
    pub cargo: PathBuf,
    /// A directory shared by workers on one machine where the prebuilt dependency set
    /// is kept, so it is compiled once per machine rather than once per worker.
    pub depset_cache: Option<PathBuf>,
    pub timeout: Duration,
    /// The most of a build's log that is kept (its beginning and its end).
    pub max_log_bytes: usize,
    /// The worker's own directory outside the build root (never shown to a build
    /// but for the pieces the sandbox mounts: the lock copy, the sccache socket).
    pub work_dir: PathBuf,
    /// The sandbox every cargo run of a pipeline goes through; None with
    /// `--sandbox=off`.
    pub sandbox: Option<Sandbox>,
    /// Memory, processes and file size of a build.
    pub limits: kiln_process::process::Limits,
    /// The size of a sandboxed build's `/tmp` (see `sandbox::target::fresh_tmp`).
    pub tmp_bytes: u64,
    /// The most a sandboxed build may write to `target/` and a disk-backed `/tmp`.
    pub disk_bytes: u64,
    /// Whether this worker has a mount namespace of its own (`--build-root-source`
    /// mounted), where `target/` can be an overlay of the pristine set rather than a
    /// hard-link copy of it.
    pub private_mounts: bool,
    /// The dependency set programs build against (the built-in one, or `--depset`).
    pub depset: Arc<DepSet>,
}

/// Extra environment for cargo: the compiler wrapper and how it finds its server.
#[derive(Debug, Clone, Default)]
pub struct Wrapper {
    pub env: Vec<(String, String)>,
    /// For a sandboxed build: the build's own sccache server, started in the sandbox.
    pub in_sandbox: Option<SandboxedCache>,
}

/// How a sandboxed build reaches sccache: the member's long-lived server, or one
/// of its own (see `sandbox::init`, `sandbox::cache_server`).
#[derive(Debug, Clone)]
pub struct SandboxedCache {
    /// The sandbox's first program: the `kiln` binary (`kiln sandbox-init`).
    pub init: PathBuf,
    pub sccache: PathBuf,
    /// The cache gateway's socket.
    pub gateway: PathBuf,
    /// The server's settings: the gateway as the sandbox reaches it.
    pub env: Vec<(String, String)>,
    /// Where the server's statistics are written when cargo is done.
    pub stats: PathBuf,
    /// The member's long-lived server, for builds that run no submitted code.
    pub server: Option<std::sync::Arc<crate::sandbox::cache_server::CacheServer>>,
}
