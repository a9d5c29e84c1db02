//! The first program of a sandbox (`kiln sandbox-init`), run by bubblewrap inside
//! it as the build user. In the sandbox of a build with a server of its own it
//! starts that server, runs cargo through it, and writes the server's statistics
//! where the worker reads them. In the long-lived cache server's sandbox
//! ([`crate::sandbox::cache_server`]) it runs only that server. (A build that
//! compiles through the long-lived server needs neither: its sandbox runs cargo.)
//!
//! Where a server runs here, this program relays the sandbox's private
//! `127.0.0.1:`[`SANDBOX_PORT`](crate::sandbox::gateway::SANDBOX_PORT) to the cache
//! gateway's socket, the server's only way to the store.
//!
//! Nothing here is trusted by the worker: a build can replace any of it (it runs as
//! the build user), and then it only loses its own cache figures. What it cannot do
//! is what the sandbox forbids: the worker's files, the network, the credentials.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Which sccache server this sandbox's compiles go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// A build that starts its own server in its sandbox (a build that runs code
    /// of its submitter, or one whose long-lived server could not be readied).
    Own,
    /// The long-lived server's own sandbox: the relay and the server, no build.
    Serve,
}

/// What the worker tells the sandbox's first program.
#[derive(Debug, Clone)]
pub struct InitArgs {
    /// The port to relay to the gateway (inside the sandbox's network namespace).
    pub relay_port: u16,
    /// The cache gateway's socket.
    pub gateway: PathBuf,
    /// The sccache binary.
    pub sccache: PathBuf,
    pub mode: ServerMode,
    /// Where the server's statistics (JSON) go when cargo is done (a build's).
    pub stats: Option<PathBuf>,
    /// cargo and its arguments (a build's).
    pub command: Vec<OsString>,
}

/// Runs the build, or the long-lived server; returns cargo's exit code (the
/// server's under [`ServerMode::Serve`]; 125 when it could not be started).
pub async fn run(args: InitArgs) -> i32 {
    let result = match args.mode {
        ServerMode::Serve => serve(&args).await,
        ServerMode::Own => run_build(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: the sandbox could not run its command: {e:#}");
            125
        }
    }
}

async fn run_build(args: InitArgs) -> anyhow::Result<i32> {
    let (program, rest) = args.command.split_first().context("no build command given")?;
    let mut cargo = tokio::process::Command::new(program);
    cargo.args(rest).stdin(std::process::Stdio::null());
    let cached = match start_cache(&args).await {
        Ok(()) => true,
        Err(e) => {
            // The build goes on without the cache, and its log says why.
            eprintln!("warning: the compile cache could not start ({e:#}): building without it");
            cargo.env_remove("RUSTC_WRAPPER");
            false
        }
    };
    let status = cargo.status().await.with_context(|| format!("starting {}", PathBuf::from(program).display()))?;
    if let (true, Some(file)) = (cached, &args.stats)
        && let Ok(stats) = show_stats(&args).await
    {
        let _ = std::fs::write(file, stats);
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The build's server's statistics (JSON).
async fn show_stats(args: &InitArgs) -> anyhow::Result<Vec<u8>> {
    let output = tokio::process::Command::new(&args.sccache)
        .args(["--show-stats", "--stats-format=json"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} --show-stats", args.sccache.display()))?;
    anyhow::ensure!(output.status.success(), "sccache --show-stats failed ({})", output.status);
    Ok(output.stdout)
}

/// The long-lived server: the relay, then the server in the foreground, until it
/// ends (the worker stops its sandbox when it is done with it).
async fn serve(args: &InitArgs) -> anyhow::Result<i32> {
    relay(args).await?;
    let status = tokio::process::Command::new(&args.sccache)
        .env("SCCACHE_START_SERVER", "1")
        .env("SCCACHE_NO_DAEMON", "1")
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("starting {}", args.sccache.display()))?;
    Ok(status.code().unwrap_or(1))
}

/// The relay to the gateway, then the build's sccache server.
async fn start_cache(args: &InitArgs) -> anyhow::Result<()> {
    relay(args).await?;
    start_server(args).await
}

/// Relays `127.0.0.1:relay_port` to the gateway's socket, in the background.
async fn relay(args: &InitArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.relay_port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{} for the cache relay", args.relay_port))?;
    let gateway = args.gateway.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&gateway).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(())
}

/// Starts the build's sccache server and waits until it listens. It is left
/// running: it ends with the sandbox.
async fn start_server(args: &InitArgs) -> anyhow::Result<()> {
    let socket = std::env::var_os("SCCACHE_SERVER_UDS").map(PathBuf::from).context("SCCACHE_SERVER_UDS is not set")?;
    let mut server = tokio::process::Command::new(&args.sccache)
        .env("SCCACHE_START_SERVER", "1")
        .env("SCCACHE_NO_DAEMON", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.sccache.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(status) = server.try_wait()? {
            bail!("the sccache server exited at once ({status})");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the sccache server did not listen on {} within 30s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Dropping the handle must not kill it (`kill_on_drop` is off): the server
    // serves cargo's compiles until the sandbox ends.
    drop(server);
    Ok(())
}
