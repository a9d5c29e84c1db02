//! sccache, the compiler cache every build goes through when it is available.
//!
//! With the sandbox on ([`SandboxedSccache`]), sccache's servers run in sandboxes,
//! so that what they run (rustc, and the proc-macros rustc loads) is as confined as
//! a build, and hold no credentials: they reach the store through the worker's
//! [gateway](crate::sandbox::gateway). A build that runs no code of its submitter
//! compiles through the member's long-lived server
//! ([`crate::sandbox::cache_server`]), which keeps what it learned of the compiler;
//! any other runs its own server in its own sandbox, whose statistics it writes
//! where the worker reads them after the build.
//!
//! With `--sandbox=off` ([`Sccache`]), each worker runs one server outside, with the
//! cache's settings; cargo and the build scripts only learn the wrapper's path and
//! the server's socket.
//!
//! A server that outlives builds (the long-lived one, or the one of `--sandbox=off`)
//! is not zeroed before each: a worker builds one pipeline at a time, so what its
//! statistics grew by during a build, read after it, are that build's
//! ([`SccacheStats::since`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::builder::Wrapper;
pub use crate::cache_store::CacheStore;

pub mod stats;
use stats::read_stats;
pub use stats::{SccacheStats, parse_stats};

/// A worker's compile cache.
#[derive(Debug)]
pub enum CompileCache {
    /// `--sandbox=off`: one server outside, for every build.
    Server(Sccache),
    /// Sandboxed builds: a server per build, in its sandbox.
    Sandboxed(SandboxedSccache),
}

impl CompileCache {
    pub fn describe(&self) -> String {
        match self {
            CompileCache::Server(s) => s.describe(),
            CompileCache::Sandboxed(s) => s.describe.clone(),
        }
    }

    /// Readies the cache for one build; returns what cargo runs with.
    pub async fn before_build(&self) -> anyhow::Result<Wrapper> {
        match self {
            CompileCache::Server(s) => {
                s.ensure_server().await?;
                Ok(s.wrapper())
            }
            // The statistics file is made afresh by the builder for every build;
            // the gateway's savings start from nothing.
            CompileCache::Sandboxed(s) => {
                s.gateway.take_savings();
                Ok(s.wrapper())
            }
        }
    }

    /// This build's figures.
    pub async fn after_build(&self) -> anyhow::Result<SccacheStats> {
        match self {
            CompileCache::Server(s) => {
                let mut stats = s.build_figures().await?;
                stats.hits_without_cost = stats.hits;
                Ok(stats)
            }
            CompileCache::Sandboxed(s) => {
                let savings = s.gateway.take_savings();
                let mut stats = match s.server.build_figures().await {
                    Some(figures) => figures?,
                    None => s.stats()?,
                };
                stats.saved_ms = savings.saved_ms;
                stats.hits_without_cost = stats.hits.saturating_sub(savings.hits_with_cost);
                Ok(stats)
            }
        }
    }

    /// Where the next build's entries go (see [`crate::sandbox::gateway::Scope`]). With
    /// `--sandbox=off` builds are trusted like the member and write as it does.
    pub fn set_scope(&self, scope: crate::sandbox::gateway::Scope) {
        if let CompileCache::Sandboxed(s) = self {
            s.gateway.set_scope(scope);
        }
    }

    pub async fn stop(&self) {
        match self {
            CompileCache::Server(s) => s.stop().await,
            CompileCache::Sandboxed(s) => s.server.stop("the member stops").await,
        }
    }
}

/// The compile cache of a worker whose builds are sandboxed: the gateway to the
/// store, and what each build needs to start its own server.
#[derive(Debug)]
pub struct SandboxedSccache {
    binary: PathBuf,
    gateway: crate::sandbox::gateway::Gateway,
    /// The sandbox's first program (the `kiln` binary).
    init: PathBuf,
    stats: PathBuf,
    describe: String,
    /// The member's long-lived server, started on the first build that may use it.
    server: std::sync::Arc<crate::sandbox::cache_server::CacheServer>,
}

impl SandboxedSccache {
    /// Starts the gateway to `store` in `dir` (the worker's own, closed to builds
    /// but for the socket the sandbox shows them).
    pub async fn start(binary: PathBuf, store: &CacheStore, dir: &Path, init: PathBuf) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let gateway_dir = dir.join("gateway");
        std::fs::create_dir_all(&gateway_dir).with_context(|| format!("creating {}", gateway_dir.display()))?;
        // Only this member reaches the socket from outside; a sandbox sees it
        // through its own mount, and may connect as the build user.
        std::fs::set_permissions(&gateway_dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = gateway_dir.join("cache.sock");
        let mut gateway = crate::sandbox::gateway::Gateway::start(store, &socket).await?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let door = gateway_dir.join("shared.sock");
        gateway.open_shared_door(&door)?;
        std::fs::set_permissions(&door, std::fs::Permissions::from_mode(0o666))?;
        let server = crate::sandbox::cache_server::CacheServer::new(
            dir.join("cache-server"),
            init.clone(),
            binary.clone(),
            door,
            gateway.sandbox_env(),
        );
        let describe = match store {
            CacheStore::LocalDisk { dir, .. } => format!("sccache on local disk ({})", dir.join("gateway").display()),
            CacheStore::S3(s3) => s3.describe(),
        };
        let describe = format!(
            "{describe}; builds that run no submitted code compile through the member's long-lived server in a sandbox of its own, the others through one of their own in theirs; {}",
            gateway.writers()
        );
        Ok(SandboxedSccache {
            binary,
            gateway,
            init,
            stats: dir.join("sccache-stats.json"),
            describe,
            server: std::sync::Arc::new(server),
        })
    }

    fn wrapper(&self) -> Wrapper {
        Wrapper {
            env: Vec::new(),
            in_sandbox: Some(crate::builder::SandboxedCache {
                init: self.init.clone(),
                sccache: self.binary.clone(),
                gateway: self.gateway.socket().to_owned(),
                env: self.gateway.sandbox_env(),
                stats: self.stats.clone(),
                server: Some(self.server.clone()),
            }),
        }
    }

    fn stats(&self) -> anyhow::Result<SccacheStats> {
        read_stats(&self.stats)
    }
}

#[derive(Debug, Clone)]
pub struct Sccache {
    /// The running server, restarted before a build if it ended.
    server: std::sync::Arc<tokio::sync::Mutex<Option<tokio::process::Child>>>,
    /// The server's figures when the last build ended (nothing when it started).
    figures: std::sync::Arc<std::sync::Mutex<SccacheStats>>,
    binary: PathBuf,
    /// The server's Unix socket. A socket rather than a port, so a sandboxed build
    /// (which has no network at all) reaches exactly this server and nothing else.
    socket: PathBuf,
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

/// The server runs in the foreground (`SCCACHE_NO_DAEMON`), as the worker's child:
/// in its process group, with its parent-death signal, so it lives exactly as long
/// as its worker, and with the worker's umask (a daemonized server sets 027, which
/// made its outputs unreadable to the sandbox's build user). It never exits idle.
const SERVER_IDLE_TIMEOUT_SECONDS: u32 = 0;

impl Sccache {
    /// Starts this worker's sccache server.
    /// Its socket is `<socket_dir>/sccache.sock`; the directory is this worker's.
    pub async fn start(binary: PathBuf, store: CacheStore, socket_dir: &Path) -> anyhow::Result<Sccache> {
        std::fs::create_dir_all(socket_dir)
            .with_context(|| format!("creating the sccache socket directory {}", socket_dir.display()))?;
        let socket = socket_dir.join("sccache.sock");
        let sccache = Sccache { server: Default::default(), figures: Default::default(), binary, socket, store };
        // A server of an earlier incarnation of this worker may still be listening.
        if sccache.socket.exists() {
            let _ = sccache.run(&["--stop-server"]).await;
            let _ = std::fs::remove_file(&sccache.socket);
        }
        sccache.ensure_server().await.context("starting the sccache server")?;
        Ok(sccache)
    }

    /// Starts the server unless it runs (with the cache's settings, if it went
    /// away), and waits until it answers.
    async fn ensure_server(&self) -> anyhow::Result<()> {
        let mut server = self.server.lock().await;
        if let Some(child) = server.as_mut() {
            match child.try_wait()? {
                None => return Ok(()),
                Some(status) => tracing::warn!(%status, "the sccache server exited; starting it again"),
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        // `SCCACHE_START_SERVER=1 sccache` is the server itself (what `--start-server`
        // spawns and then leaves behind): so the child is the server, not a client
        // that exits once the server listens.
        let mut command = self.command(&[]);
        command
            .env("SCCACHE_START_SERVER", "1")
            .env("SCCACHE_NO_DAEMON", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kiln_process::process::own_group_dying_with_parent(&mut command);
        let mut child = command.spawn().with_context(|| format!("starting {}", self.binary.display()))?;
        // Only once the server listens: a client that finds no server starts one of
        // its own, daemonized.
        kiln_process::process::wait_until_listening(&mut child, &self.socket, Duration::from_secs(30))
            .await
            .with_context(|| format!("the sccache server did not listen on {}", self.socket.display()))?;
        *server = Some(child);
        *self.figures.lock().unwrap_or_else(|p| p.into_inner()) = SccacheStats::default();
        drop(server);
        self.run(&["--show-stats"]).await.map(|_| ()).context("the sccache server does not answer")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env("SCCACHE_SERVER_UDS", &self.socket)
            .env("SCCACHE_IDLE_TIMEOUT", SERVER_IDLE_TIMEOUT_SECONDS.to_string())
            .kill_on_drop(true);
        match &self.store {
            CacheStore::LocalDisk { dir, read_only } => {
                command.env("SCCACHE_DIR", dir);
                command.env("SCCACHE_LOCAL_RW_MODE", if *read_only { "READ_ONLY" } else { "READ_WRITE" });
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
            in_sandbox: None,
            env: vec![
                ("RUSTC_WRAPPER".into(), self.binary.display().to_string()),
                ("SCCACHE_SERVER_UDS".into(), self.socket.display().to_string()),
            ],
        }
    }

    pub fn describe(&self) -> String {
        match &self.store {
            CacheStore::LocalDisk { dir, read_only: true } => {
                format!("sccache on local disk ({}), read-only", dir.display())
            }
            CacheStore::LocalDisk { dir, read_only: false } => format!(
                "sccache on local disk ({}); --sandbox=off: every build writes the shared compile cache",
                dir.display()
            ),
            CacheStore::S3(s3) if s3.read_only => s3.describe(),
            CacheStore::S3(s3) => {
                format!("{}; --sandbox=off: every build writes the shared compile cache", s3.describe())
            }
        }
    }

    /// After a build: what the server's figures grew by since the last one ended.
    pub async fn build_figures(&self) -> anyhow::Result<SccacheStats> {
        let now = self.stats().await?;
        // With no server listening the client says zeros: not this build's figures.
        if let Some(child) = self.server.lock().await.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("the sccache server ended during the build ({status})");
        }
        let mut last = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        let build = now.since(&last);
        *last = now;
        Ok(build)
    }

    /// The server's figures since it started.
    pub async fn stats(&self) -> anyhow::Result<SccacheStats> {
        parse_stats(&self.run(&["--show-stats", "--stats-format=json"]).await?)
    }

    pub async fn stop(&self) {
        if let Err(e) = self.run(&["--stop-server"]).await {
            tracing::warn!(error = %e, "stopping the sccache server");
        }
    }
}
