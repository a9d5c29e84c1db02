//! Builds a program in the worker's build root with cargo.
//!
//! The build root is one fixed absolute path, laid out as
//!
//! ```text
//! <root>/Cargo.toml        workspace: the dependency set + the crates of this build
//! <root>/Cargo.lock        the dependency set's lockfile, rewritten before every build
//! <root>/depset/           the dependency set's anchor crate
//! <root>/pipeline-runtime/ the pipeline runtime, patched in for `kiln-pipeline-runtime`
//! <root>/src/<pkg>-<hash>/ every crate, content-addressed (see `Program::layout`)
//! <root>/target/           cargo's target directory, shared by all builds
//! ```
//!
//! so the same operator has the same absolute path in every build, on every worker:
//! sccache keys Rust compilations on absolute paths.
//!
//! cargo runs offline, with a cleaned environment (no credentials reach it or the
//! build scripts it runs), in its own process group so a cancellation kills rustc
//! and build scripts too.
//!
//! The pieces: [`settings`] (how builds run), [`prepare`] (the build root made
//! ready, the set built once per machine), [`build_root`] (the files written into
//! it), [`cargo`] (the command lines and the wait), [`output`] (what a run says
//! and means). This file runs one build.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use kiln_core::depset;
use kiln_core::program::{CrateKind, Layout};

pub(crate) mod build_root;
pub(crate) mod cargo;
pub(crate) mod output;
pub(crate) mod prepare;
pub(crate) mod settings;

use build_root::write_layout;
use cargo::{cargo_command, sandboxed_cargo, wait_or_stop};
use output::{Collected, outcome, read_output};

pub use build_root::{depset_source_mtime, write_build_root};
pub use output::{BuildOutcome, BuildProgress};
pub use prepare::{prepare_build_root, prepare_profile, settings_fingerprint};
pub use settings::{BuildSettings, FARM_CARGO_ENV, SandboxedCache, Wrapper};

/// How often what a build wrote is measured against `--build-disk`.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Builds the layout's binary, as pipeline `pipeline` (whose own earlier outputs a
/// sandboxed build may reuse). Cancelling `cancel` kills the whole cargo process
/// group and returns [`BuildOutcome::Cancelled`].
pub async fn build(
    settings: &BuildSettings,
    wrapper: &Wrapper,
    layout: &Layout,
    pipeline: u64,
    cancel: &CancellationToken,
    progress: &Arc<BuildProgress>,
) -> anyhow::Result<BuildOutcome> {
    let started = Instant::now();
    if let Some(Ok(group)) = settings.sandbox.as_ref().map(|s| &s.group) {
        let group = group.clone();
        drop(tokio::task::spawn_blocking(move || group.warm()));
    }
    progress.start(layout.crates.len());
    let root = settings.build_root.clone();
    let (layout_owned, set) = (layout.clone(), settings.depset.clone());
    tokio::task::spawn_blocking(move || write_layout(&root, &layout_owned, &set)).await??;
    let binary = layout.binary();
    debug_assert_eq!(binary.kind, CrateKind::Binary);
    let binary_manifest = settings.build_root.join("src").join(&binary.dir_name).join("Cargo.toml");
    let laid_out = started.elapsed();

    let mut args: Vec<OsString> = [
        "build",
        "--offline",
        "--profile",
        &settings.profile,
        "--message-format=json",
        "-p",
        depset::PACKAGE,
        "-p",
        &binary.package,
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend(cargo::jobs(settings));
    let (mut command, served) = match &settings.sandbox {
        Some(sandbox) => sandboxed_cargo(settings, sandbox, wrapper, layout, pipeline).await?,
        None => (cargo_command(settings, wrapper), None),
    };
    // The long-lived cache server this build compiles through, if it does: a build
    // that does not end by itself may leave compiles running in it.
    let server = served.as_ref().and(wrapper.in_sandbox.as_ref()).and_then(|c| c.server.clone());
    let stop_server = |why: &'static str| {
        let server = server.clone();
        async move {
            if let Some(server) = server {
                server.stop(why).await;
            }
        }
    };
    let group = settings.sandbox.as_ref().and_then(|s| s.group.as_ref().ok());
    let events_before = group.map(|g| g.events()).unwrap_or_default();
    let mut child = command.args(args).spawn().context("starting cargo: is it on PATH?")?;
    let spawned = started.elapsed();
    let collected = Arc::new(Mutex::new(Collected::new(settings.max_log_bytes)));
    if let Some(served) = &served {
        collected.lock().unwrap_or_else(|p| p.into_inner()).log.push_line(&format!("kiln: {served}"));
    }
    let readers = read_output(&mut child, &collected, binary_manifest, progress.clone());
    // What the build writes to its space (target/, a disk-backed /tmp) is capped.
    let disk_cap = {
        let root = crate::sandbox::target::BuildRoot::new(&settings.build_root);
        let (dirs, cap) = (vec![root.target(), root.tmp()], settings.disk_bytes);
        // After target/ was renewed (its links and copies are older), as cargo starts.
        let since = std::time::SystemTime::now();
        async move {
            loop {
                tokio::time::sleep(DISK_CHECK_EVERY).await;
                let dirs = dirs.clone();
                let used = tokio::task::spawn_blocking(move || crate::sandbox::files::written_since(&dirs, since))
                    .await
                    .unwrap_or(0);
                if used > cap {
                    return used;
                }
            }
        }
    };
    let status = tokio::select! {
        waited = wait_or_stop(&mut child, cancel, settings.timeout) => match waited {
            Ok(Some(status)) => status,
            Ok(None) => {
                stop_server("the build it served was cancelled").await;
                return Ok(BuildOutcome::Cancelled);
            }
            Err(e) => {
                stop_server("the build it served was stopped").await;
                return Err(e);
            }
        },
        used = disk_cap, if settings.sandbox.is_some() => {
            if let Some(pid) = child.id() {
                let _ = kiln_process::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            stop_server("the build it served was stopped at its disk limit").await;
            let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
            let summary = format!(
                "the build wrote {:.1} GiB to target/ and /tmp, more than its {:.1} GiB (--build-disk), and was stopped",
                gib(used),
                gib(settings.disk_bytes)
            );
            let log = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner())).log.finish();
            return Ok(BuildOutcome::CompileError { summary, log, elapsed: started.elapsed() });
        }
    };
    // cargo waits for rustc and build scripts, so the pipes close with it. A stray
    // grandchild holding them open must not hang the worker; the group is not
    // signalled now that cargo is reaped (its pid may already be reused).
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(readers)).await;
    let collected = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
    let elapsed = started.elapsed();
    // Where a build's fixed cost goes (benches/RESULTS.md, comparison 1): laying
    // the crates out, making the sandbox (target/ renewed, the lock file copied),
    // and cargo itself.
    tracing::info!(
        layout_ms = laid_out.as_millis() as u64,
        setup_ms = (spawned - laid_out).as_millis() as u64,
        cargo_ms = (elapsed - spawned).as_millis() as u64,
        "cargo finished"
    );
    if served.is_some() && status.success() {
        let kept = crate::sandbox::target::keep_rustc_info(settings);
        if let Err(e) = kept {
            tracing::debug!(error = %format!("{e:#}"), "cargo's record of rustc was not kept");
        }
    }
    // What the member's build group counted during this build names the limit
    // a failed build hit, better than the signs it left in the log.
    let group_hit = group.and_then(|g| {
        g.kill_all();
        let (oom, pids) = g.events();
        let gib = settings.limits.memory_bytes as f64 / f64::from(1u32 << 30);
        if oom > events_before.0 {
            Some(format!(
                "the build hit its memory limit of {gib:.1} GiB (--build-memory), counted for the whole build: its processes, /tmp, memfd and shm"
            ))
        } else if pids > events_before.1 {
            Some(format!("the build hit its limit of {} processes (--build-processes)", settings.limits.processes))
        } else {
            None
        }
    });
    // A build the server compiled for that was killed, or hit a limit of its
    // group, may have left compiles running in it.
    if status.code().is_none() || group_hit.is_some() {
        stop_server("the build it served was killed or hit a limit").await;
    }
    outcome(status, collected, elapsed, &binary.package, &settings.limits, group_hit)
}
