//! The cargo command lines of the worker: a command with only the toolchain's
//! environment, cargo as the worker runs it to build the dependency set, cargo in
//! a build's sandbox (through the member's long-lived sccache server, or with one
//! of its own started by `kiln sandbox-init`, when the cache is on), and the
//! wait that kills cargo's whole process group on cancellation or timeout.
//!
//! **Invariant:** nothing but `PATH`, `HOME`, toolchain variables and the cache's
//! settings (no credential) reaches cargo.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use kiln_core::program::Layout;

use crate::builder::settings::{BuildSettings, FARM_CARGO_ENV, Wrapper};
use crate::sandbox::cache_server::{Served, ServerBuild};
use crate::sandbox::target::{
    fresh_tmp, mark_layer_ran_submitted_code, place_rustc_info, renew_target, unmount_target,
};
use crate::sandbox::{self, Mounts, Sandbox};

/// Environment variables cargo and rustc need; everything else is dropped.
const KEPT_ENVIRONMENT: [&str; 8] =
    ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR", "LANG", "USER"];

/// The sccache server's socket inside a sandbox (on the sandbox's own `/tmp`).
const SANDBOX_SCCACHE_SOCKET: &str = "/tmp/kiln-sccache.sock";

/// A command with only the toolchain's environment: no credential of the worker's
/// reaches it.
pub(super) fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.env_clear();
    for key in KEPT_ENVIRONMENT {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command
}

/// cargo's `-j N` for the member's share of the CPUs, when it has one.
pub(super) fn jobs(settings: &BuildSettings) -> Vec<OsString> {
    settings.jobs.map(|n| vec!["-j".into(), n.to_string().into()]).unwrap_or_default()
}

pub(super) fn cargo_command(settings: &BuildSettings, wrapper: &Wrapper) -> tokio::process::Command {
    let mut command = clean_command(&settings.cargo);
    command
        .env("CARGO_TARGET_DIR", settings.build_root.join("target"))
        .envs(FARM_CARGO_ENV)
        .envs(wrapper.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&settings.build_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    kiln_process::process::own_group_dying_with_parent(&mut command);
    command
}

/// cargo in the sandbox: the toolchain's own cargo, the farm's environment, a
/// fresh `target/`, and what the build writes handed to the build user first.
/// With the cache on, a build that runs no submitted code compiles through the
/// member's long-lived server (how, in the second value, for its log); any other
/// starts its own in its sandbox.
pub(super) async fn sandboxed_cargo(
    settings: &BuildSettings,
    sandbox: &Sandbox,
    wrapper: &Wrapper,
    layout: &Layout,
    pipeline: u64,
) -> anyhow::Result<(tokio::process::Command, Option<Served>)> {
    let root = &settings.build_root;
    std::fs::create_dir_all(&settings.work_dir)?;
    let lockfile = settings.work_dir.join("Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lockfile).context("copying the workspace lock file for the sandbox")?;
    let target = root.join("target");
    let renewing = Instant::now();
    // The worker left the server in the wrapper only for a build that runs no
    // submitted code (`worker/cargo_builds.rs` decides).
    let server = wrapper.in_sandbox.as_ref().and_then(|c| c.server.as_ref());
    let for_build = ServerBuild { sandbox, root, limits: settings.limits };
    if let Some(server) = server {
        // The server binds target/ as the plain directory overlays are mounted on.
        let followed = async {
            if settings.private_mounts {
                unmount_target(settings)?;
            }
            server.follow(&for_build).await
        };
        if let Err(e) = followed.await {
            tracing::warn!(error = %format!("{e:#}"), "the member's long-lived sccache server could not start");
        }
    }
    renew_target(settings, sandbox, pipeline).context("renewing target/ from the pristine dependency set")?;
    if layout.submitted_code().is_some() {
        mark_layer_ran_submitted_code(root, pipeline).context("recording that the build runs submitted code")?;
    }
    if let Err(e) = place_rustc_info(settings, sandbox) {
        tracing::warn!(error = %format!("{e:#}"), "cargo's record of rustc could not be put in target/: cargo asks rustc again");
    }
    tracing::debug!(renew_ms = renewing.elapsed().as_millis() as u64, "target/ renewed");
    let mut owned: Vec<&Path> = vec![&lockfile];
    let crates = layout.crates.iter().map(|c| c.dir_name.clone()).collect();
    let (tmp, tmp_bound) = fresh_tmp(settings).context("making the build's /tmp")?;
    tracing::debug!(tmp = tmp_bound, "the build's /tmp");
    let mut mounts = Mounts {
        build_root: root.clone(),
        crates,
        sources: None,
        lockfile: Some(lockfile.clone()),
        tmp,
        writable: Vec::new(),
        programs: Vec::new(),
    };
    let cargo = sandbox.sysroot.join("bin/cargo");
    let mut served = None;
    let shared = match server {
        Some(server) => match server.ready(&for_build, &mounts.crates).await {
            Ok(how) => {
                served = Some(how);
                Some(server.socket())
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the member's long-lived sccache server is not ready: this build starts its own");
                None
            }
        },
        None => None,
    };
    let mut command = match (&wrapper.in_sandbox, shared) {
        (None, _) => {
            sandbox::hand_over(sandbox, &owned, &[&target])
                .context("handing the build's directories to the build user")?;
            sandbox.command(&mounts, &cargo, &[])
        }
        // cargo alone: its compiles go to the long-lived server's socket, the only
        // way out of its sandbox; the member reads the server's figures after it.
        (Some(cache), Some(socket)) => {
            sandbox::hand_over(sandbox, &owned, &[&target])
                .context("handing the build's directories to the build user")?;
            mounts.writable = vec![socket.clone()];
            mounts.programs = vec![cache.sccache.clone()];
            let mut command = sandbox.command(&mounts, &cargo, &[]);
            command.env("RUSTC_WRAPPER", &cache.sccache).env("SCCACHE_SERVER_UDS", socket);
            command
        }
        // `kiln sandbox-init`: the relay to the gateway, the build's own server,
        // cargo, and the server's figures written where the worker reads them.
        (Some(cache), None) => {
            std::fs::write(&cache.stats, b"").context("making the build's cache statistics file")?;
            owned.push(&cache.stats);
            sandbox::hand_over(sandbox, &owned, &[&target])
                .context("handing the build's directories to the build user")?;
            mounts.writable = vec![cache.gateway.clone(), cache.stats.clone()];
            mounts.programs = vec![cache.init.clone(), cache.sccache.clone()];
            let args: Vec<OsString> = vec![
                "sandbox-init".into(),
                "--relay-port".into(),
                crate::sandbox::gateway::SANDBOX_PORT.to_string().into(),
                "--gateway".into(),
                cache.gateway.clone().into(),
                "--sccache".into(),
                cache.sccache.clone().into(),
                "--stats".into(),
                cache.stats.clone().into(),
                "--".into(),
                cargo.into(),
            ];
            let mut command = sandbox.command(&mounts, &cache.init, &args);
            command
                .env("RUSTC_WRAPPER", &cache.sccache)
                .envs(cache.env.iter().map(|(k, v)| (k, v)))
                .env("SCCACHE_SERVER_UDS", SANDBOX_SCCACHE_SOCKET);
            command
        }
    };
    command
        .env("CARGO_TARGET_DIR", root.join("target"))
        .envs(FARM_CARGO_ENV)
        .envs(wrapper.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    kiln_process::process::own_group_dying_with_parent(&mut command);
    kiln_process::process::limit(&mut command, settings.limits);
    if let Ok(group) = &sandbox.group {
        let join = group.prepare().context("readying the member's build cgroup")?;
        // SAFETY: `Join::enter` only calls write(2), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || join.enter());
        }
    }
    Ok((command, served))
}

/// Waits for cargo; on cancellation (None) or timeout (an error) kills its whole
/// process group first.
pub(super) async fn wait_or_stop(
    child: &mut tokio::process::Child,
    cancel: &CancellationToken,
    timeout: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let pid = child.id();
    let kill_group = || {
        if let Some(pid) = pid {
            let _ = kiln_process::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    };
    tokio::select! {
        status = child.wait() => Ok(Some(status.context("waiting for cargo")?)),
        () = cancel.cancelled() => {
            kill_group();
            let _ = child.wait().await;
            Ok(None)
        }
        () = tokio::time::sleep(timeout) => {
            kill_group();
            let _ = child.wait().await;
            bail!("the build took longer than {}s and was stopped: the limit is --build-timeout", timeout.as_secs());
        }
    }
}
