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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::BufReader;
use tokio_util::sync::CancellationToken;

use kiln_core::depset::{self, DepSet, Origin};
use kiln_core::program::{CrateKind, Layout};

use crate::log::{CappedLog, MAX_LINE_BYTES, clip, read_capped_line};
use crate::sandbox::target::{LAYERS, PRISTINE, fresh_target, fresh_tmp, renew_target, touch};
use crate::sandbox::{self, Mounts, Sandbox};

/// Environment variables cargo and rustc need; everything else is dropped.
const KEPT_ENVIRONMENT: [&str; 8] =
    ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR", "LANG", "USER"];

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

/// What a build that hit one of its limits says, with the setting that raises it:
/// read from the signs the limit leaves in the log.
fn limit_hit(log: &str, limits: &kiln_process::process::Limits) -> Option<String> {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    if log.contains("memory allocation of") || log.contains("Cannot allocate memory") {
        return Some(format!(
            "the build hit its memory limit of {} per process (--build-memory)",
            gib(limits.memory_bytes)
        ));
    }
    if log.contains("Resource temporarily unavailable") || log.contains("WouldBlock") {
        return Some(format!("the build hit its limit of {} processes (--build-processes)", limits.processes));
    }
    if log.contains("No space left on device") {
        return Some("the build ran out of space: its /tmp holds --build-tmp-size, its target/ the disk's room".into());
    }
    if log.contains("File size limit exceeded") || log.contains("SIGXFSZ") || log.contains("File too large") {
        return Some(format!("the build hit its file size limit of {} (--build-file-size)", gib(limits.file_bytes)));
    }
    None
}

/// Extra environment for cargo: the compiler wrapper and how it finds its server.
#[derive(Debug, Clone, Default)]
pub struct Wrapper {
    pub env: Vec<(String, String)>,
    /// For a sandboxed build: the build's own sccache server, started in the sandbox.
    pub in_sandbox: Option<SandboxedCache>,
}

/// How a sandboxed build runs its own sccache server (see `sandbox::init`).
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
}

/// How often what a build wrote is measured against `--build-disk`.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The sccache server's socket inside a sandbox (on the sandbox's own `/tmp`).
const SANDBOX_SCCACHE_SOCKET: &str = "/tmp/kiln-sccache.sock";

/// How a build ended.
#[derive(Debug)]
pub enum BuildOutcome {
    Built { executable: PathBuf, log: String, elapsed: Duration },
    CompileError { summary: String, log: String, elapsed: Duration },
    Cancelled,
}

/// A command with only the toolchain's environment: no credential of the worker's
/// reaches it.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.env_clear();
    for key in KEPT_ENVIRONMENT {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command
}

fn cargo_command(settings: &BuildSettings, wrapper: &Wrapper) -> tokio::process::Command {
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

/// Keeps a pristine copy of the prebuilt set beside `target/`, once per set.
async fn keep_pristine(root: &Path, marker_name: &str) -> anyhow::Result<()> {
    let pristine = root.join(PRISTINE);
    if pristine.join(marker_name).exists() {
        return Ok(());
    }
    let staging = root.join(format!("{PRISTINE}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    copy_tree(&root.join("target"), &staging).await?;
    let _ = std::fs::remove_dir_all(&pristine);
    std::fs::rename(&staging, &pristine)?;
    // Pipelines' layers sit on the pristine set they were built over: a new set
    // starts them afresh.
    let _ = std::fs::remove_dir_all(root.join(LAYERS));
    Ok(())
}

/// How long a prebuilt set no member of this machine used is kept in the shared
/// depset cache.
const UNUSED_PREBUILT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Removes the shared cache's prebuilt sets other than `keep` that nobody used for
/// [`UNUSED_PREBUILT_KEPT`] and nobody holds now (their lock is free).
fn prune_depset_cache(cache: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == keep || name.contains('.') || !path.is_dir() {
            continue;
        }
        let unused = entry.metadata().and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
        if unused.is_none_or(|age| age <= UNUSED_PREBUILT_KEPT) {
            continue;
        }
        let Ok(lock) = std::fs::File::create(cache.join(format!("{name}.lock"))) else { continue };
        if lock.try_lock().is_ok() {
            tracing::info!(prebuilt = %path.display(), "removing a prebuilt dependency set unused for a day");
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(cache.join(format!("{name}.lock")));
        }
    }
}

/// cargo in the sandbox: the toolchain's own cargo, the farm's environment, a
/// fresh `target/`, and what the build writes handed to the build user first.
fn sandboxed_cargo(
    settings: &BuildSettings,
    sandbox: &Sandbox,
    wrapper: &Wrapper,
    layout: &Layout,
    pipeline: u64,
) -> anyhow::Result<tokio::process::Command> {
    let root = &settings.build_root;
    std::fs::create_dir_all(&settings.work_dir)?;
    let lockfile = settings.work_dir.join("Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lockfile).context("copying the workspace lock file for the sandbox")?;
    let target = root.join("target");
    let renewing = Instant::now();
    renew_target(settings, sandbox, pipeline).context("renewing target/ from the pristine dependency set")?;
    tracing::debug!(renew_ms = renewing.elapsed().as_millis() as u64, "target/ renewed");
    let mut owned: Vec<&Path> = vec![&lockfile];
    let crates = layout.crates.iter().map(|c| c.dir_name.clone()).collect();
    let (tmp, tmp_bound) = fresh_tmp(settings).context("making the build's /tmp")?;
    tracing::debug!(tmp = tmp_bound, "the build's /tmp");
    let mut mounts = Mounts {
        build_root: root.clone(),
        crates,
        lockfile: lockfile.clone(),
        tmp,
        writable: Vec::new(),
        programs: Vec::new(),
    };
    let cargo = sandbox.sysroot.join("bin/cargo");
    let mut command = match &wrapper.in_sandbox {
        None => {
            sandbox::hand_over(sandbox, &owned, &[&target])
                .context("handing the build's directories to the build user")?;
            sandbox.command(&mounts, &cargo, &[])
        }
        Some(cache) => {
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
                .envs(cache.env.iter().map(|(k, v)| (k, v)))
                .env("RUSTC_WRAPPER", &cache.sccache)
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
    Ok(command)
}

fn write_workspace(root: &Path, members: &[String], set: &DepSet) -> std::io::Result<()> {
    let members = members.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
    let patches: String = set.path_crates().map(|(name, dir)| format!("{name} = {{ path = {dir:?} }}\n")).collect();
    let manifest = format!(
        "# Written by the kiln worker before every build; do not edit.\n[workspace]\nresolver = \"2\"\nmembers = [{members}]\n\n\
         # Pipelines name the set's path crates (the runtime among them) as registry crates.\n\
         [patch.crates-io]\n{patches}"
    );
    write_if_changed(&root.join("Cargo.toml"), &manifest)?;
    write_if_changed(&root.join("Cargo.lock"), set.lockfile())
}

/// `rustc -vV` as builds see it: the compiler's version, commit, host target and LLVM.
async fn rustc_version() -> anyhow::Result<Vec<u8>> {
    let rustc = clean_command("rustc")
        .arg("-vV")
        .output()
        .await
        .context("running `rustc -vV`: is the Rust toolchain on PATH?")?;
    if !rustc.status.success() {
        bail!("`rustc -vV` failed ({}): {}", rustc.status, String::from_utf8_lossy(&rustc.stderr).trim());
    }
    Ok(rustc.stdout)
}

/// What decides a binary besides its source and its dependency set, as one
/// SHA-256 (64 hex digits): the compiler (`rustc -vV`, which names the target),
/// the profile, the build root and cargo's home (paths end up in the binary, in
/// panic messages and debug information), and the environment cargo runs with.
/// Members that agree on it build the same bytes from the same program; it keys
/// the leader's binary cache (ARCHITECTURE.md, "Reproducible builds").
pub async fn settings_fingerprint(settings: &BuildSettings) -> anyhow::Result<String> {
    let rustc = rustc_version().await?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo").into_os_string()))
        .unwrap_or_default();
    let environment: String = FARM_CARGO_ENV.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let parts: [&[u8]; 5] = [
        &rustc,
        settings.profile.as_bytes(),
        settings.build_root.as_os_str().as_encoded_bytes(),
        cargo_home.as_encoded_bytes(),
        environment.as_bytes(),
    ];
    Ok(hex::encode(kiln_core::digest::sha256_of_parts(parts)))
}

/// The identity of a prebuilt dependency set: the set, the profile, the compiler and,
/// for a vendored set, the build root.
async fn depset_key(settings: &BuildSettings) -> anyhow::Result<String> {
    let rustc = rustc_version().await?;
    // The fingerprint covers every file of the set written into a build root. A
    // vendored set's sources sit inside the build root, and cargo fingerprints
    // non-workspace crates by their absolute paths: its prebuilt target is only
    // fresh at the build root it was built at (every member of a farm builds at one
    // path). The built-in set's crates sit in cargo's registry, the same for all.
    let at = match settings.depset.origin() {
        Origin::Embedded => Vec::new(),
        Origin::Directory(_) => settings.build_root.as_os_str().as_encoded_bytes().to_vec(),
    };
    let parts = [settings.depset.fingerprint().as_bytes(), settings.profile.as_bytes(), &rustc, &at];
    Ok(hex::encode(&kiln_core::digest::sha256_of_parts(parts)[..12]))
}

async fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    // `cp -a` keeps modification times, which cargo's freshness checks compare. It
    // dies with the worker, so a crashed worker leaves no copy running.
    let mut command = clean_command("cp");
    command.arg("-a").arg(format!("{}/.", from.display())).arg(to).kill_on_drop(true);
    kiln_process::process::own_group_dying_with_parent(&mut command);
    let status = command.status().await.context("running cp")?;
    if !status.success() {
        bail!("copying {} to {} failed ({status})", from.display(), to.display());
    }
    Ok(())
}

/// Makes the build root ready: writes the dependency set and builds it, or copies a
/// prebuilt one from the shared cache. Safe to call on every start; a ready build
/// root costs one small file check.
///
/// The set is compiled through `wrapper` (the compile cache, when the member has
/// one), so a member whose set another member already compiled mostly reads hits.
pub async fn prepare_build_root(settings: &BuildSettings, wrapper: &Wrapper) -> anyhow::Result<()> {
    let root = &settings.build_root;
    {
        let (root, set) = (root.clone(), settings.depset.clone());
        tokio::task::spawn_blocking(move || write_depset(&root, &set)).await??;
    }
    write_workspace(root, &["depset".to_owned()], &settings.depset)?;

    let key = depset_key(settings).await?;
    let marker_name = format!(".kiln-depset-{key}");
    let marker = root.join("target").join(&marker_name);
    if root.join(PRISTINE).join(&marker_name).exists() {
        tracing::info!(build_root = %root.display(), "dependency set already built");
        if !marker.exists() {
            fresh_target(root)?;
        }
        return Ok(());
    }
    // No pristine set yet: target/ may hold what earlier builds left (a build root
    // of an older Kiln, or of `--sandbox=off`), which must never become the set
    // every later build starts from. Start from nothing.
    if root.join("target").exists() {
        std::fs::remove_dir_all(root.join("target")).context("clearing target/ before the dependency set")?;
    }
    let Some(cache) = &settings.depset_cache else {
        build_depset(settings, wrapper).await?;
        std::fs::write(&marker, b"")?;
        return keep_pristine(root, &marker_name).await;
    };
    std::fs::create_dir_all(cache).with_context(|| format!("creating the depset cache {}", cache.display()))?;
    let lock = std::fs::File::create(cache.join(format!("{key}.lock")))?;
    // Workers starting together queue here: the first builds, the rest copy.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await??;
    let prebuilt = cache.join(&key);
    if prebuilt.is_dir() {
        // Used: kept by the pruning of other members of this machine.
        let _ = touch(&prebuilt);
        tracing::info!(from = %prebuilt.display(), "copying the prebuilt dependency set");
        // Into a fresh directory, renamed into place whole: a copy cut short by a
        // crash is thrown away on the next start instead of tripping over it.
        let staging = root.join("target.partial");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        copy_tree(&prebuilt, &staging).await?;
        std::fs::rename(&staging, root.join("target"))?;
    } else {
        build_depset(settings, wrapper).await?;
        let staging = cache.join(format!("{key}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        copy_tree(&root.join("target"), &staging).await?;
        std::fs::rename(&staging, &prebuilt)?;
    }
    drop(lock);
    prune_depset_cache(cache, &key);
    std::fs::write(&marker, b"")?;
    keep_pristine(root, &marker_name).await
}

async fn build_depset(settings: &BuildSettings, wrapper: &Wrapper) -> anyhow::Result<()> {
    tracing::info!(profile = %settings.profile, "building the dependency set (once per machine or image)");
    let started = Instant::now();
    // Not offline: a fresh machine may still have to fetch the set's crates. Pipeline
    // builds are offline.
    let mut command = cargo_command(settings, wrapper);
    command.args(["build", "--profile", &settings.profile, "-p", depset::PACKAGE]);
    if matches!(settings.depset.origin(), Origin::Directory(_)) {
        // Vendored: everything is in the build root.
        command.arg("--offline");
    }
    let output = command.output().await.context("running cargo: is it on PATH?")?;
    if !output.status.success() {
        bail!("building the dependency set failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "dependency set built");
    Ok(())
}

/// The modification time of every file of the dependency set in a build root
/// (2000-01-01T00:00:00Z): older than any prebuilt target.
///
/// cargo decides whether a path crate (the depset's anchor, the pipeline runtime)
/// is fresh by comparing its sources' modification times with its build's. A build
/// root takes its target from the prebuilt copy (`cp -a` keeps the times of when the
/// set was built) but writes the sources itself. With the sources' times left to
/// the clock, those crates were fresh or stale depending on whether this worker
/// wrote its sources before or after another worker built the shared copy: a race
/// that a busy machine loses more often. Stale, they were compiled again, through
/// sccache, where nothing had ever stored them (the prebuilt set is built without
/// it): two cache misses in a build that should have been all hits. With one fixed,
/// old time they are fresh in every build root, always.
///
/// This relies on the depset key covering every file so written: a change of any
/// of them is a new key, so a new target, never an old build taken for fresh.
pub fn depset_source_mtime() -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800)
}

/// Writes `text` to `path` unless the file already holds it, with the depset's
/// fixed modification time. cargo's freshness checks compare modification times,
/// so rewriting an unchanged source makes cargo compile its crate again.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(text.as_bytes()) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    let file = std::fs::File::options().write(true).open(path)?;
    if file.metadata()?.modified()? != depset_source_mtime() {
        file.set_modified(depset_source_mtime())?;
    }
    Ok(())
}

/// Where a build root records which set its `depset/` holds.
const INSTALLED: &str = ".kiln-fingerprint";
/// cargo's configuration in a build root: a vendored set replaces crates.io.
const CARGO_CONFIG: &str = ".cargo/config.toml";

/// Writes the dependency set into the build root: the built-in one from the
/// binary, an operator's set by copying its directory (verified first) when the
/// build root holds another, with cargo pointed at its vendored sources.
fn write_depset(root: &Path, set: &DepSet) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("src")).with_context(|| format!("creating the build root {}", root.display()))?;
    std::fs::create_dir_all(root.join("target"))?;
    match set.origin() {
        Origin::Embedded => {
            std::fs::create_dir_all(root.join("depset"))?;
            write_if_changed(&root.join("depset/Cargo.toml"), depset::MANIFEST)?;
            write_if_changed(&root.join("depset/lib.rs"), depset::LIB_RS)?;
            let _ = std::fs::remove_file(root.join("depset").join(INSTALLED));
            for (path, text) in depset::RUNTIME_FILES {
                write_if_changed(&root.join("pipeline-runtime").join(path), text)?;
            }
            match std::fs::remove_file(root.join(CARGO_CONFIG)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
        Origin::Directory(dir) => {
            let installed = std::fs::read_to_string(root.join("depset").join(INSTALLED)).unwrap_or_default();
            if installed != set.fingerprint() {
                install_set(root, dir, set)?;
            }
            write_if_changed(
                &root.join(CARGO_CONFIG),
                &format!(
                    "# Written by the kiln worker: the dependency set's vendored crates replace crates.io.\n\
                     [source.crates-io]\nreplace-with = \"kiln-depset\"\n\n[source.kiln-depset]\ndirectory = \"depset/{}\"\n",
                    depset::VENDOR_DIR
                ),
            )?;
            Ok(())
        }
    }
}

/// Copies an operator's set into `<root>/depset`, whole: verified against its
/// lockfile first, written beside and renamed into place, every file given the
/// set's fixed old time (see [`depset_source_mtime`]).
fn install_set(root: &Path, dir: &Path, set: &DepSet) -> anyhow::Result<()> {
    tracing::info!(depset = %dir.display(), fingerprint = set.fingerprint(), "installing the dependency set");
    depset::verify_vendored(dir)?;
    let staging = root.join(".depset.partial");
    let _ = std::fs::remove_dir_all(&staging);
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading the dependency set {}", dir.display()))?;
        let relative = entry.path().strip_prefix(dir).context("a walked path is under its root")?;
        if relative.starts_with("target") {
            continue;
        }
        let to = staging.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to)?;
            continue;
        }
        if !entry.file_type().is_file() {
            continue;
        }
        if relative == Path::new("Cargo.toml") {
            // A member of the build root's workspace may not declare one.
            let mut manifest: toml_edit::DocumentMut = std::fs::read_to_string(entry.path())?
                .parse()
                .with_context(|| format!("{} is not a valid Cargo.toml", entry.path().display()))?;
            manifest.remove("workspace");
            std::fs::write(&to, manifest.to_string())?;
        } else {
            std::fs::copy(entry.path(), &to).with_context(|| format!("copying {}", entry.path().display()))?;
        }
        // Every file, the vendored ones too: a build script's `rerun-if-changed`
        // compares a source's time with the prebuilt output's, and a copy's time
        // is the moment of copying, newer than a target prebuilt earlier.
        std::fs::File::options().write(true).open(&to)?.set_modified(depset_source_mtime())?;
    }
    std::fs::write(staging.join(INSTALLED), set.fingerprint())?;
    let _ = std::fs::remove_dir_all(root.join("depset"));
    std::fs::rename(&staging, root.join("depset")).context("placing the dependency set")?;
    Ok(())
}

/// Writes everything a build of `layout` needs into `root`, as a worker does before
/// building: the dependency set, the crates, the workspace. Used by `kiln layout` so
/// CI jobs build the same crates at the same paths as the farm.
pub fn write_build_root(root: &Path, layout: &Layout, set: &DepSet) -> anyhow::Result<()> {
    write_depset(root, set)?;
    write_layout(root, layout, set)?;
    Ok(())
}

/// Refuses a path that leaves `root`, whatever made it: only plain components below
/// `root`, and no symbolic link on the way (a planted link would carry the write
/// elsewhere). Program rules already refuse such names; this checks the final path.
fn ensure_inside(root: &Path, path: &Path) -> anyhow::Result<()> {
    let outside =
        || anyhow::anyhow!("refusing to write {}: it is outside the build root {}", path.display(), root.display());
    let relative = path.strip_prefix(root).map_err(|_| outside())?;
    let mut at = root.to_path_buf();
    for component in relative.components() {
        let std::path::Component::Normal(name) = component else { return Err(outside()) };
        at.push(name);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "refusing to write {}: {} is a symbolic link, and a build root holds none",
                path.display(),
                at.display()
            );
        }
    }
    Ok(())
}

/// Writes the layout's crates into the build root. A crate directory that exists is
/// identical by construction (content-addressed), so it is left as it is.
fn write_layout(root: &Path, layout: &Layout, set: &DepSet) -> anyhow::Result<Vec<String>> {
    let mut members = vec!["depset".to_owned()];
    for krate in &layout.crates {
        let dir = root.join("src").join(&krate.dir_name);
        ensure_inside(root, &dir)?;
        members.push(format!("src/{}", krate.dir_name));
        if dir.is_dir() {
            // Used again: the last to go when the disk watermarks prune.
            let _ = touch(&dir);
            continue;
        }
        let staging = root.join("src").join(format!(".{}.partial", krate.dir_name));
        ensure_inside(root, &staging)?;
        let _ = std::fs::remove_dir_all(&staging);
        for file in &krate.files {
            let path = staging.join(&file.path);
            ensure_inside(root, &path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &file.content)?;
            if file.executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        std::fs::rename(&staging, &dir).with_context(|| format!("placing crate {}", krate.dir_name))?;
    }
    write_workspace(root, &members, set)?;
    Ok(members)
}

/// Collects cargo's output: rendered diagnostics and cargo's own lines in arrival
/// order, the first errors, and the binary's path.
#[derive(Debug, Default)]
struct Collected {
    log: CappedLog,
    errors: Vec<String>,
    error_count: usize,
    executable: Option<PathBuf>,
    /// cargo's line when a build script of the program failed.
    build_script_failed: Option<String>,
    /// The manifests of the program's crates cargo has finished (fresh or built).
    crates_done: std::collections::HashSet<String>,
}

/// How far a build has come: the program's crates cargo has finished, of all of
/// them. Written as cargo's messages arrive, read by the heartbeat.
#[derive(Debug, Default)]
pub struct BuildProgress {
    done: std::sync::atomic::AtomicU32,
    total: std::sync::atomic::AtomicU32,
}

impl BuildProgress {
    pub fn start(&self, total: usize) {
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
        self.total.store(u32::try_from(total).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    fn set_done(&self, done: usize) {
        self.done.store(u32::try_from(done).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    /// (crates done, crates to build).
    pub fn get(&self) -> (u32, u32) {
        (self.done.load(std::sync::atomic::Ordering::Relaxed), self.total.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Longest summary of one error taken from the program's output.
const MAX_ERROR_SUMMARY_BYTES: usize = 1024;

fn collect_json_line(collected: &mut Collected, line: &str, binary_manifest: &Path) {
    // The program's crates sit in `<build root>/src/`, beside the binary's.
    let program_dir = binary_manifest.parent().and_then(Path::parent).unwrap_or(binary_manifest);
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
        collected.log.push_line(line);
        return;
    };
    match message["reason"].as_str() {
        Some("compiler-message") => {
            let diagnostic = &message["message"];
            if let Some(rendered) = diagnostic["rendered"].as_str() {
                collected.log.push(rendered);
            }
            if diagnostic["level"].as_str() == Some("error") {
                collected.error_count += 1;
                if collected.errors.len() < 3 {
                    let code = diagnostic["code"]["code"].as_str().map(|c| format!("[{c}]")).unwrap_or_default();
                    let text = diagnostic["message"].as_str().unwrap_or("error");
                    let span = diagnostic["spans"]
                        .as_array()
                        .and_then(|s| s.iter().find(|s| s["is_primary"].as_bool() == Some(true)))
                        .map(|s| format!(" at {}:{}", s["file_name"].as_str().unwrap_or("?"), s["line_start"]))
                        .unwrap_or_default();
                    collected.errors.push(clip(&format!("error{code}: {text}{span}"), MAX_ERROR_SUMMARY_BYTES));
                }
            }
        }
        Some("compiler-artifact") => {
            let is_binary = message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            let manifest = message["manifest_path"].as_str().map(Path::new);
            if is_binary && manifest == Some(binary_manifest) {
                collected.executable = message["executable"].as_str().map(PathBuf::from);
            }
            let build_script =
                message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "custom-build"));
            if let Some(manifest) = manifest
                && !build_script
                && manifest.starts_with(program_dir)
            {
                collected.crates_done.insert(manifest.display().to_string());
            }
        }
        _ => {}
    }
}

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
    progress.start(layout.crates.len());
    let root = settings.build_root.clone();
    let (layout_owned, set) = (layout.clone(), settings.depset.clone());
    tokio::task::spawn_blocking(move || write_layout(&root, &layout_owned, &set)).await??;
    let binary = layout.binary();
    debug_assert_eq!(binary.kind, CrateKind::Binary);
    let binary_manifest = settings.build_root.join("src").join(&binary.dir_name).join("Cargo.toml");
    let laid_out = started.elapsed();

    let args: Vec<OsString> = [
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
    let mut command = match &settings.sandbox {
        Some(sandbox) => sandboxed_cargo(settings, sandbox, wrapper, layout, pipeline)?,
        None => cargo_command(settings, wrapper),
    };
    let group = settings.sandbox.as_ref().and_then(|s| s.group.as_ref().ok());
    let events_before = group.map(|g| g.events()).unwrap_or_default();
    let mut child = command.args(args).spawn().context("starting cargo: is it on PATH?")?;
    let spawned = started.elapsed();
    let collected =
        Arc::new(Mutex::new(Collected { log: CappedLog::new(settings.max_log_bytes), ..Collected::default() }));
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
        waited = wait_or_stop(&mut child, cancel, settings.timeout) => match waited? {
            Some(status) => status,
            None => return Ok(BuildOutcome::Cancelled),
        },
        used = disk_cap, if settings.sandbox.is_some() => {
            if let Some(pid) = child.id() {
                let _ = kiln_process::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
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
    outcome(status, collected, elapsed, &binary.package, &settings.limits, group_hit)
}

/// Reads cargo's JSON messages (stdout) and its log (stderr) into `collected`.
fn read_output(
    child: &mut tokio::process::Child,
    collected: &Arc<Mutex<Collected>>,
    binary_manifest: PathBuf,
    progress: Arc<BuildProgress>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Both pipes are taken right after spawning with `Stdio::piped()`.
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_task = {
        let collected = collected.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some((line, dropped))) = read_capped_line(&mut reader, MAX_LINE_BYTES).await {
                let mut c = collected.lock().unwrap_or_else(|p| p.into_inner());
                if dropped > 0 {
                    c.log.push_line(&format!(
                        "[a line of cargo's output was cut: {dropped} bytes past the first {MAX_LINE_BYTES} left out]"
                    ));
                }
                collect_json_line(&mut c, &line, &binary_manifest);
                progress.set_done(c.crates_done.len());
            }
        })
    };
    let err_task = {
        let collected = collected.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            while let Ok(Some((line, dropped))) = read_capped_line(&mut reader, MAX_LINE_BYTES).await {
                let mut c = collected.lock().unwrap_or_else(|p| p.into_inner());
                if dropped > 0 {
                    c.log.push_line(&format!("[a line of the build's output was cut: {dropped} bytes past the first {MAX_LINE_BYTES} left out]"));
                }
                if c.build_script_failed.is_none() && line.starts_with("error: failed to run custom build command for")
                {
                    c.build_script_failed = Some(clip(&line, MAX_ERROR_SUMMARY_BYTES));
                }
                c.log.push_line(&line);
            }
        })
    };
    vec![out_task, err_task]
}

/// Waits for cargo; on cancellation (None) or timeout (an error) kills its whole
/// process group first.
async fn wait_or_stop(
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

/// What cargo's exit and output mean: a binary, a compile error, or a failure of
/// the farm (resolution, I/O, a missing crate).
fn outcome(
    status: std::process::ExitStatus,
    collected: Collected,
    elapsed: Duration,
    package: &str,
    limits: &kiln_process::process::Limits,
    group_hit: Option<String>,
) -> anyhow::Result<BuildOutcome> {
    let log = collected.log.finish();
    let limit = if status.success() { None } else { group_hit.or_else(|| limit_hit(&log, limits)) };
    let with_limit = |summary: String| match &limit {
        Some(limit) => format!("{summary} ({limit})"),
        None => summary,
    };
    if status.success() {
        let executable =
            collected.executable.ok_or_else(|| anyhow::anyhow!("cargo succeeded but named no binary for {package}"))?;
        return Ok(BuildOutcome::Built { executable, log, elapsed });
    }
    if collected.error_count > 0 {
        let mut summary = collected.errors.join("; ");
        if collected.error_count > collected.errors.len() {
            summary.push_str(&format!(" (and {} more errors)", collected.error_count - collected.errors.len()));
        }
        return Ok(BuildOutcome::CompileError { summary: with_limit(summary), log, elapsed });
    }
    // A build script of the program failed: the program's error, with its output
    // in the log (the dependency set's build scripts ran when it was prebuilt).
    if let Some(line) = collected.build_script_failed {
        let summary = line.trim_start_matches("error: ").to_owned();
        return Ok(BuildOutcome::CompileError { summary: with_limit(summary), log, elapsed });
    }
    // cargo itself stopped by a limit of the sandbox (a build script's 3 GiB of
    // output held in cargo's memory, say): the program's doing.
    if let Some(limit) = limit {
        return Ok(BuildOutcome::CompileError { summary: format!("cargo failed ({status}): {limit}"), log, elapsed });
    }
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    bail!(
        "cargo failed ({status}) without a compiler error:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file on disk: a symbolic link planted in a build root (by hand, or by an
    /// older tool) does not carry a layout's writes out of it.
    #[test]
    fn a_layout_never_writes_through_a_link_or_outside_the_root() {
        let scratch = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (scratch.path().join("root"), scratch.path().join("elsewhere"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("src")).unwrap();
        let files = vec![
            kiln_core::program::ProgramFile {
                path: "Cargo.toml".into(),
                content: b"[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n".to_vec(),
                executable: false,
            },
            kiln_core::program::ProgramFile {
                path: "src/main.rs".into(),
                content: b"fn main() {}".to_vec(),
                executable: false,
            },
        ];
        let layout = kiln_core::program::Program::parse(files, &DepSet::embedded()).unwrap().layout();
        let error = write_layout(&root, &layout, &DepSet::embedded()).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through the link");
        assert!(ensure_inside(&root, &root.join("src/../../x")).is_err());
        assert!(ensure_inside(&root, &scratch.path().join("x")).is_err());
    }

    #[test]
    fn the_depset_sources_get_one_fixed_old_time_in_every_build_root() {
        let root = tempfile::tempdir().unwrap();
        write_depset(root.path(), &DepSet::embedded()).unwrap();
        let anchor = root.path().join("depset/lib.rs");
        assert_eq!(std::fs::metadata(&anchor).unwrap().modified().unwrap(), depset_source_mtime());
        // Written again with other content (a new kiln), the time is the same.
        std::fs::write(&anchor, "changed").unwrap();
        write_depset(root.path(), &DepSet::embedded()).unwrap();
        assert_eq!(std::fs::read_to_string(&anchor).unwrap(), depset::LIB_RS);
        assert_eq!(std::fs::metadata(&anchor).unwrap().modified().unwrap(), depset_source_mtime());
    }

    /// A vendored set as `kiln depset create` leaves it: one registry crate.
    fn vendored_set(dir: &Path) {
        let content = b"pub fn f() {}\n";
        let sum = kiln_core::digest::sha256_hex(content);
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"kiln-depset\"\n[dependencies]\nitoa = \"1\"\n\n[workspace]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("Cargo.lock"),
            "version = 4\n[[package]]\nname = \"itoa\"\nversion = \"1.0.1\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"abc\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("lib.rs"), "").unwrap();
        std::fs::write(
            dir.join("resolved.json"),
            r#"{"packages":[{"name":"itoa","version":"1.0.1","features":[],"has_default":false}]}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("vendor/itoa-1.0.1/src")).unwrap();
        std::fs::write(dir.join("vendor/itoa-1.0.1/src/lib.rs"), content).unwrap();
        std::fs::write(
            dir.join("vendor/itoa-1.0.1/.cargo-checksum.json"),
            format!(r#"{{"files":{{"src/lib.rs":"{sum}"}},"package":"abc"}}"#),
        )
        .unwrap();
    }

    #[test]
    fn a_vendored_set_is_installed_whole_with_old_times_and_an_altered_one_refused() {
        let set_dir = tempfile::tempdir().unwrap();
        vendored_set(set_dir.path());
        let set = DepSet::load(set_dir.path()).unwrap();
        let root = tempfile::tempdir().unwrap();
        write_depset(root.path(), &set).unwrap();
        let vendored = root.path().join("depset/vendor/itoa-1.0.1/src/lib.rs");
        // A copy's own time would be newer than a target prebuilt earlier, and a
        // build script's rerun-if-changed would then rebuild the prebuilt set.
        assert_eq!(std::fs::metadata(&vendored).unwrap().modified().unwrap(), depset_source_mtime());
        let manifest = std::fs::read_to_string(root.path().join("depset/Cargo.toml")).unwrap();
        assert!(!manifest.contains("[workspace]"), "a member of the build root's workspace: {manifest}");
        let config = std::fs::read_to_string(root.path().join(CARGO_CONFIG)).unwrap();
        assert!(config.contains("directory = \"depset/vendor\""), "{config}");
        assert_eq!(std::fs::read_to_string(root.path().join("depset").join(INSTALLED)).unwrap(), set.fingerprint());

        std::fs::write(set_dir.path().join("vendor/itoa-1.0.1/src/lib.rs"), "pub fn g() {}\n").unwrap();
        let altered = DepSet::load(set_dir.path()).unwrap();
        let other_root = tempfile::tempdir().unwrap();
        let error = format!("{:#}", write_depset(other_root.path(), &altered).unwrap_err());
        assert!(error.contains("itoa 1.0.1") && error.contains("src/lib.rs was changed"), "{error}");
        // Back to the built-in set: cargo no longer points at vendored sources.
        write_depset(root.path(), &DepSet::embedded()).unwrap();
        assert!(!root.path().join(CARGO_CONFIG).exists());
    }

    #[test]
    fn compiler_errors_are_summarised_and_the_binary_found() {
        let manifest = Path::new("/b/src/app-1/Cargo.toml");
        let mut c = Collected { log: CappedLog::new(1 << 20), ..Collected::default() };
        let error = r#"{"reason":"compiler-message","message":{"rendered":"error[E0425]: cannot find value `x`\n","level":"error","message":"cannot find value `x` in this scope","code":{"code":"E0425"},"spans":[{"is_primary":true,"file_name":"src/main.rs","line_start":3}]}}"#;
        collect_json_line(&mut c, error, manifest);
        let artifact = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/app-1/Cargo.toml","target":{"kind":["bin"]},"executable":"/b/target/release/app"}"#;
        collect_json_line(&mut c, artifact, manifest);
        let other = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/ops-1/Cargo.toml","target":{"kind":["lib"]},"executable":null}"#;
        collect_json_line(&mut c, other, manifest);
        assert_eq!(c.errors, vec!["error[E0425]: cannot find value `x` in this scope at src/main.rs:3"]);
        assert_eq!(c.executable, Some(PathBuf::from("/b/target/release/app")));
        // Progress counts the program's crates once each, not build scripts nor the set's.
        let script = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/ops-1/Cargo.toml","target":{"kind":["custom-build"]}}"#;
        collect_json_line(&mut c, script, manifest);
        collect_json_line(&mut c, other, manifest);
        let set = r#"{"reason":"compiler-artifact","manifest_path":"/b/depset/vendor/itoa/Cargo.toml","target":{"kind":["lib"]}}"#;
        collect_json_line(&mut c, set, manifest);
        assert_eq!(c.crates_done.len(), 2, "{:?}", c.crates_done);
        assert!(c.log.finish().contains("error[E0425]"));
    }
}
