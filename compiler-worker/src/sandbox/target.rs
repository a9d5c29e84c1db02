//! A build's writable space, as the member renews and reads it: `target/` (the
//! pristine prebuilt set below, the pipeline's own layer above), the build's
//! `/tmp`, and the binary taken out of it. Every path is named by [`BuildRoot`].
//!
//! **Invariants:** what one program's build wrote is never in another program's
//! `target/`; the pristine set is never writable by a build (root's files, an
//! overlay's lower layer, or a non-root member's copies); the member touches this
//! space only through [`super::files`] after the sandbox is gone, and before it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Sandbox, files};
use crate::builder::settings::BuildSettings;

/// The one absolute path every worker builds at (sccache keys compilations on
/// absolute paths), and the places in it:
///
/// ```text
/// <root>/Cargo.toml, Cargo.lock   the workspace (the dependency set + this build's crates)
/// <root>/depset/, pipeline-runtime/, .cargo/   shown read-only to builds
/// <root>/src/<pkg>-<hash>/        every crate, content-addressed; a build sees its own
/// <root>/target/                  cargo's target directory, renewed before each build
/// <root>/prebuilt/                the pristine prebuilt set; never in a build's view
/// <root>/layers/<pipeline>/       each pipeline's own layer of target/
/// <root>/.kiln-tmp/               the build's /tmp
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRoot(PathBuf);

impl BuildRoot {
    pub fn new(path: impl Into<PathBuf>) -> BuildRoot {
        BuildRoot(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn target(&self) -> PathBuf {
        self.0.join("target")
    }

    pub fn pristine(&self) -> PathBuf {
        self.0.join(PRISTINE)
    }

    pub fn layers(&self) -> PathBuf {
        self.0.join(LAYERS)
    }

    pub fn layer(&self, pipeline: u64) -> PathBuf {
        self.layers().join(pipeline.to_string())
    }

    pub fn tmp(&self) -> PathBuf {
        self.0.join(BUILD_TMP)
    }
}

/// Makes the build's own `/tmp` afresh: `<build root>/.kiln-tmp` (beside what a
/// build sees, never in its view at that path), a tmpfs of `tmp_bytes` where the
/// member has a mount namespace of its own (a root member of `kiln up`, the test
/// kit), else a plain directory on the build root's disk (bounded by the disk
/// watermarks, not by memory). Returns it, and how it is bounded.
pub(crate) fn fresh_tmp(settings: &BuildSettings) -> anyhow::Result<(PathBuf, &'static str)> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    let tmp = BuildRoot::new(&settings.build_root).tmp();
    let mounted = match std::fs::symlink_metadata(&tmp) {
        Ok(m) => m.dev() != std::fs::metadata(&settings.build_root)?.dev(),
        Err(_) => false,
    };
    if mounted {
        umount2(&tmp, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting the last build's {}", tmp.display()))?;
    }
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing the last build's {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    let mut bound = "a directory on disk";
    if settings.private_mounts {
        let options = format!("size={},mode=1777", settings.tmp_bytes);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        match mount(Some("tmpfs"), &tmp, Some("tmpfs"), flags, Some(options.as_str())) {
            Ok(()) => bound = "a tmpfs of --build-tmp-size",
            Err(e) => {
                tracing::warn!(error = %e, "cannot mount the build's /tmp as a sized tmpfs; it is a directory on disk")
            }
        }
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    Ok((tmp, bound))
}

/// Where a build root keeps the build's `/tmp` (see [`fresh_tmp`]).
const BUILD_TMP: &str = ".kiln-tmp";

/// Where a build root keeps its pristine copy of the prebuilt dependency set.
pub(crate) const PRISTINE: &str = "prebuilt";

/// Makes `target/` a copy of the pristine prebuilt set, nothing of an earlier
/// build: at startup, and for a pipeline new to a worker that renews `target/`
/// without an overlay (see [`renew_target`]).
///
/// A root member hard-links the files: they stay root's, so the build user cannot
/// change them (it may only replace its own links). A non-root member's builds
/// share its uid (bubblewrap's user namespace maps them to it), so a hard link
/// would let a build rewrite the pristine set every later build starts from: it
/// copies them (`--reflink=auto`: a reflink where the file system has them). A
/// non-root member with a mount namespace of its own uses an overlay instead,
/// whose lower layer no build can write.
pub(crate) fn fresh_target(root: &Path) -> anyhow::Result<()> {
    let root = BuildRoot::new(root);
    let target = root.target();
    empty_dir(&target)?;
    let how = if super::is_root() { "-al" } else { "--archive" };
    let mut cp = std::process::Command::new("cp");
    if how == "--archive" {
        cp.arg("--reflink=auto");
    }
    // The pristine set's contents into target/, which stays the same directory.
    let status = cp.arg(how).arg(root.pristine().join(".")).arg(&target).status().context("running cp")?;
    anyhow::ensure!(status.success(), "linking {} to the pristine set failed ({status})", target.display());
    unlink_rewritten(&target)
}

/// Makes `dir` an empty directory, keeping the directory itself (a sandbox made
/// earlier, the long-lived cache server's, sees it by that directory): what a
/// build left in it is removed without following a link.
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let removed = if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Moves the entries of `from` into `to` (an existing, empty directory), by
/// renames: links and all, nothing followed.
fn move_entries(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("moving {} to {}", entry.path().display(), to.display()))?;
    }
    Ok(())
}

/// cargo rewrites some files in place: its lock files, its rustc cache, and the
/// uplifted outputs and dep-info at the top of each profile directory. Those are
/// unlinked here, so cargo makes its own; what it only reads (deps/, .fingerprint/,
/// build/) stays the pristine set's.
///
/// A build wrote `target/`: a link it planted there is removed as a link, never
/// entered or followed (see [`sandbox::files`]).
fn unlink_rewritten(target: &Path) -> anyhow::Result<()> {
    use files::{remove_non_directories, subdirectories};
    for profile in subdirectories(target)? {
        remove_non_directories(&profile, |_| false)?;
    }
    remove_non_directories(target, |name| name.to_string_lossy().starts_with(".kiln-depset-"))?;
    Ok(())
}

/// cargo's record of what rustc said about itself (its version, its cfgs, its
/// sysroot), which cargo otherwise asks rustc again for in every renewed
/// `target/`: about 40 ms a build here.
const RUSTC_INFO: &str = ".rustc_info.json";

/// The largest such record the member keeps.
const MAX_RUSTC_INFO_BYTES: u64 = 1 << 20;

/// Where the member keeps the record between builds (its own directory).
fn kept_rustc_info(settings: &BuildSettings) -> PathBuf {
    settings.work_dir.join("rustc-info.json")
}

/// After a build in which no submitted code ran (so cargo alone wrote it): keeps
/// cargo's record of rustc for the next builds. Read without following a link,
/// capped, and kept only if it is JSON.
pub(crate) fn keep_rustc_info(settings: &BuildSettings) -> anyhow::Result<()> {
    use std::io::Read;
    let target = BuildRoot::new(&settings.build_root).target();
    let file = files::open_regular(&target, Path::new(RUSTC_INFO))?;
    let mut bytes = Vec::new();
    file.take(MAX_RUSTC_INFO_BYTES + 1).read_to_end(&mut bytes)?;
    anyhow::ensure!(bytes.len() as u64 <= MAX_RUSTC_INFO_BYTES, "cargo's {RUSTC_INFO} is larger than 1 MiB");
    serde_json::from_slice::<serde_json::Value>(&bytes).with_context(|| format!("cargo's {RUSTC_INFO} is not JSON"))?;
    let kept = kept_rustc_info(settings);
    let staging = kept.with_extension("new");
    std::fs::write(&staging, &bytes)?;
    std::fs::rename(&staging, &kept)?;
    Ok(())
}

/// Before a build, once `target/` is renewed: puts the kept record there, a new
/// file of the build's own (cargo rewrites it when it learns more).
pub(crate) fn place_rustc_info(settings: &BuildSettings, sandbox: &Sandbox) -> anyhow::Result<()> {
    let kept = kept_rustc_info(settings);
    if !kept.exists() {
        return Ok(());
    }
    let placed = BuildRoot::new(&settings.build_root).target().join(RUSTC_INFO);
    match std::fs::remove_file(&placed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", placed.display())),
    }
    // A new file, never through a link (`create_new` is O_EXCL: it fails on any
    // entry that reappeared at that name).
    let bytes = std::fs::read(&kept)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&placed)
        .with_context(|| format!("placing {}", placed.display()))?;
    std::io::Write::write_all(&mut file, &bytes)?;
    super::hand_over(sandbox, &[&placed], &[])?;
    Ok(())
}

/// A file of the member's beside a pipeline's layer (never in a sandbox's view):
/// a build of the pipeline on this worker ran code of its submitter, so what the
/// layer holds may be that code's doing (a planted proc-macro library, forged
/// metadata), and every later build on it is treated as one that runs submitted
/// code (its own cache server, its pipeline's own cache namespace) until the
/// layer is renewed from the pristine set.
const RAN_SUBMITTED_CODE: &str = "ran-submitted-code";

/// Whether a build of `pipeline` on this worker ran submitted code into its layer.
pub(crate) fn layer_ran_submitted_code(build_root: &Path, pipeline: u64) -> bool {
    BuildRoot::new(build_root).layer(pipeline).join(RAN_SUBMITTED_CODE).exists()
}

/// Records, after `target/` was renewed and before the build runs, that this
/// build of `pipeline` runs submitted code.
pub(crate) fn mark_layer_ran_submitted_code(build_root: &Path, pipeline: u64) -> anyhow::Result<()> {
    let layer = BuildRoot::new(build_root).layer(pipeline);
    std::fs::create_dir_all(&layer)?;
    std::fs::write(layer.join(RAN_SUBMITTED_CODE), b"")?;
    Ok(())
}

/// The largest binary the member takes from a build.
const MAX_BINARY_BYTES: u64 = 4 << 30;

/// Takes the binary a build left at `executable` (cargo's word for where it is:
/// `<root>/target/<profile>/<name>`), opened without following links once the
/// sandbox is gone, and hashed through that descriptor; refuses anything but a
/// regular file there. Returns the open file, its SHA-256 and size.
pub fn take_binary(
    settings: &BuildSettings,
    executable: &Path,
) -> Result<(std::fs::File, String, u64), files::Refused> {
    let target = BuildRoot::new(&settings.build_root).target();
    let relative = executable.strip_prefix(&target).ok().filter(|r| {
        r.components().count() == 2 && r.components().all(|c| matches!(c, std::path::Component::Normal(_)))
    });
    let Some(relative) = relative else {
        return Err(files::Refused::NotRegular {
            path: executable.display().to_string(),
            kind: "not where cargo puts a binary",
        });
    };
    let max = MAX_BINARY_BYTES.min(settings.limits.file_bytes);
    files::take(&target, relative, max)
}

/// Whether overlays of `target/` failed on this worker (then it links, as without
/// a mount namespace of its own).
static OVERLAY_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where a build root keeps each pipeline's own layer of `target/`.
pub(crate) const LAYERS: &str = "layers";

/// How many pipelines' layers a worker keeps (the least recently built go first).
const KEPT_LAYERS: usize = 16;

/// Renews `target/` before a sandboxed build of pipeline `pipeline`: the pristine
/// prebuilt set, and on top of it what this pipeline's own earlier builds on this
/// worker left, nothing of any other pipeline's. A version can so reuse the
/// operators its earlier versions compiled (its submitter's own code), while what
/// another program's build script planted never reaches it; other programs' crates
/// come back through sccache, whose keys are content hashes.
///
/// With a mount namespace of its own, the worker mounts an overlay: the pristine set
/// below (never written, never in a sandbox's view; the build user owns its
/// directories but none of its files) and the pipeline's layer above. Without one,
/// it moves directories: `target/` is the pipeline's own, put back by a rename, or a
/// hard-link copy of the pristine set for a pipeline new to this worker.
pub(crate) fn renew_target(settings: &BuildSettings, sandbox: &Sandbox, pipeline: u64) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let layers = BuildRoot::new(&settings.build_root).layers();
    std::fs::create_dir_all(&layers)?;
    if settings.private_mounts && !OVERLAY_FAILED.load(Ordering::Relaxed) {
        match overlay_target(settings, sandbox, pipeline) {
            Ok(()) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| tracing::info!("target/ is renewed as an overlay of the pristine dependency set"));
                return keep_recent_layers(&layers);
            }
            Err(e) => {
                OVERLAY_FAILED.store(true, Ordering::Relaxed);
                tracing::warn!(error = %format!("{e:#}"), "cannot mount target/ as an overlay; renewing it by hard links instead");
            }
        }
    }
    swap_target(settings, pipeline)?;
    keep_recent_layers(&layers)
}

/// Keeps the [`KEPT_LAYERS`] most recently used layers.
fn keep_recent_layers(layers: &Path) -> anyhow::Result<()> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(layers)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if found.len() > KEPT_LAYERS {
        found.sort();
        for (_, path) in &found[..found.len() - KEPT_LAYERS] {
            std::fs::remove_dir_all(path).with_context(|| format!("removing the old layer {}", path.display()))?;
        }
    }
    Ok(())
}

/// Marks `dir` as just used, for [`keep_recent_layers`].
pub(crate) fn touch(dir: &Path) -> anyhow::Result<()> {
    let now = std::fs::FileTimes::new().set_modified(std::time::SystemTime::now());
    std::fs::File::open(dir)?.set_times(now)?;
    Ok(())
}

/// Unmounts the last build's overlay of `target/`, if there is one: `target/` is
/// then the plain directory the overlays are mounted on. A sandbox that binds it
/// now (the long-lived cache server's) sees every later overlay mounted there, by
/// propagation from the member's shared build root; one that bound an overlay
/// would keep seeing that overlay.
pub(crate) fn unmount_target(settings: &BuildSettings) -> anyhow::Result<()> {
    use nix::mount::{MntFlags, umount2};
    let target = BuildRoot::new(&settings.build_root).target();
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => anyhow::bail!("unmounting the last build's {}: {e}", target.display()),
    }
}

fn overlay_target(settings: &BuildSettings, sandbox: &Sandbox, pipeline: u64) -> anyhow::Result<()> {
    use nix::mount::{MsFlags, mount};
    let root = BuildRoot::new(&settings.build_root);
    let (target, pristine, layer) = (root.target(), root.pristine(), root.layer(pipeline));
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for path in [&pristine, &upper, &work] {
        let text = path.to_string_lossy();
        anyhow::ensure!(!text.contains([',', ':', '\\']), "{text} holds a character overlay options cannot carry");
    }
    unmount_target(settings)?;
    // Layers of the other way (a directory `target`) are not overlays' uppers.
    if layer.join("target").exists() {
        std::fs::remove_dir_all(&layer)?;
    }
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    touch(&layer)?;
    // Before the first overlay, target/ is the plain copy made at startup: emptied,
    // the directory kept (the overlay is mounted on it; see `unmount_target`).
    empty_dir(&target)?;
    // The build user may create files in the pristine set's directories (through the
    // overlay only: the set itself is never in a sandbox's view).
    super::hand_over(sandbox, &[], &[&pristine]).context("handing the pristine directories to the build user")?;
    let options = format!("lowerdir={},upperdir={},workdir={}", pristine.display(), upper.display(), work.display());
    mount(Some("overlay"), &target, Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options.as_str()))
        .with_context(|| format!("mounting an overlay at {}", target.display()))?;
    unlink_rewritten(&target)
}

/// Takes `target/` out of use between builds (before the pristine set changes):
/// the last build's overlay unmounted, the record of whose `target/` it is
/// forgotten, the directory removed. The next build renews it from the pristine
/// set, as for a pipeline new to this worker.
pub(crate) fn release_target(settings: &BuildSettings) -> anyhow::Result<()> {
    use nix::mount::{MntFlags, umount2};
    let target = BuildRoot::new(&settings.build_root).target();
    match umount2(&target, MntFlags::MNT_DETACH) {
        // Not a mount point, not there, or a member that may not mount (and so
        // never mounted one).
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT | nix::errno::Errno::EPERM) => {}
        Err(e) => anyhow::bail!("unmounting the last build's {}: {e}", target.display()),
    }
    let _ = std::fs::remove_file(owner_file(settings));
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    Ok(())
}

/// Which pipeline's `target/` is in place: a file of the worker's, outside anything
/// a build can write (a marker inside `target/` could be forged by a build).
fn owner_file(settings: &BuildSettings) -> PathBuf {
    settings.work_dir.join("target-owner")
}

/// Without mounts: `target/` stays one directory (the long-lived cache server
/// sees it by that directory), and the pipelines' contents move in and out of it.
fn swap_target(settings: &BuildSettings, pipeline: u64) -> anyhow::Result<()> {
    let root = BuildRoot::new(&settings.build_root);
    let target = root.target();
    let owner_file = owner_file(settings);
    let owner: Option<u64> = std::fs::read_to_string(&owner_file).ok().and_then(|t| t.trim().parse().ok());
    // Forget the owner first: a crash from here on leaves a target/ nobody reuses.
    let _ = std::fs::remove_file(&owner_file);
    if owner == Some(pipeline) && target.is_dir() {
        std::fs::write(&owner_file, pipeline.to_string())?;
        return unlink_rewritten(&target);
    }
    if let Some(previous) = owner
        && target.is_dir()
    {
        // The layer's own files (whether it ran submitted code) stay with it.
        let stash = root.layer(previous);
        if stash.join("target").exists() {
            std::fs::remove_dir_all(stash.join("target"))?;
        }
        std::fs::create_dir_all(stash.join("target"))?;
        move_entries(&target, &stash.join("target"))?;
    }
    let own = root.layer(pipeline);
    if own.join("target").is_dir() {
        empty_dir(&target)?;
        move_entries(&own.join("target"), &target)?;
        std::fs::remove_dir(own.join("target"))?;
        touch(&own)?;
        unlink_rewritten(&target)?;
    } else {
        // An overlay's upper (from an earlier run with mounts) is no use here.
        let _ = std::fs::remove_dir_all(&own);
        fresh_target(root.path())?;
        std::fs::create_dir_all(&own)?;
    }
    std::fs::write(&owner_file, pipeline.to_string())?;
    Ok(())
}
