//! Making a build root ready before the first build: the dependency set written
//! and built once per machine (or copied, under a file lock, from the machine's
//! shared depset cache, keyed by set, profile, compiler and, for a vendored set,
//! the build root), a pristine copy of it kept beside `target/`, prebuilt sets
//! unused for a day pruned. Also what decides a binary besides its program
//! ([`settings_fingerprint`]), which keys the leader's binary cache.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use kiln_core::depset::{self, Origin};

use crate::builder::build_root::{write_depset, write_workspace};
use crate::builder::cargo::{cargo_command, clean_command};
use crate::builder::settings::{BuildSettings, FARM_CARGO_ENV, Wrapper};
use crate::sandbox::target::{LAYERS, PRISTINE, fresh_target, touch};

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

/// What decides a binary besides its source, its dependency set and its profile
/// (which the leader adds, per pipeline), as one SHA-256 (64 hex digits): the
/// compiler (`rustc -vV`, which names the target), the build root and cargo's home
/// (paths end up in the binary, in panic messages and debug information), and the
/// environment cargo runs with. Members that agree on it build the same bytes from
/// the same program in the same profile; it keys the leader's binary cache
/// (ARCHITECTURE.md, "Reproducible builds").
pub async fn settings_fingerprint(settings: &BuildSettings) -> anyhow::Result<String> {
    let rustc = rustc_version().await?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo").into_os_string()))
        .unwrap_or_default();
    let environment: String = FARM_CARGO_ENV.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let parts: [&[u8]; 4] = [
        &rustc,
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

/// Adds the prebuilt dependency set of `settings.profile` to a build root
/// prepared for another profile (the member's own): built the first time a
/// pipeline asks for that profile, then kept in the pristine set beside the
/// others, across restarts. Between builds only: `target/` is taken out of use
/// (`sandbox::target::release_target`), made a plain copy of the pristine set, the
/// set built there by the member (its own trusted code, as at startup), and the
/// result becomes the pristine set; pipelines' layers start afresh over it.
/// Without the compile cache (a sandboxed build's sccache lives in its sandbox):
/// a full compile of the set in that profile, once per member.
pub async fn prepare_profile(settings: &BuildSettings) -> anyhow::Result<()> {
    let root = &settings.build_root;
    let key = depset_key(settings).await?;
    let marker_name = format!(".kiln-depset-{key}");
    if root.join(PRISTINE).join(&marker_name).exists() {
        return Ok(());
    }
    let started = Instant::now();
    tracing::info!(profile = %settings.profile, "a pipeline asks for a profile this member has no prebuilt dependency set in: building it once");
    crate::sandbox::target::release_target(settings)?;
    let target = root.join("target");
    std::fs::create_dir_all(&target)?;
    copy_tree(&root.join(PRISTINE), &target).await?;
    build_depset(settings, &Wrapper::default()).await?;
    std::fs::write(target.join(&marker_name), b"")?;
    keep_pristine(root, &marker_name).await?;
    tracing::info!(
        profile = %settings.profile,
        seconds = started.elapsed().as_secs_f64(),
        "dependency set prebuilt in this profile, kept beside the others"
    );
    Ok(())
}

async fn build_depset(settings: &BuildSettings, wrapper: &Wrapper) -> anyhow::Result<()> {
    tracing::info!(profile = %settings.profile, "building the dependency set (once per machine or image)");
    let started = Instant::now();
    // In the set's own workspace: the one the last build left names its crates,
    // which the disk watermarks may have pruned since.
    write_workspace(&settings.build_root, &["depset".to_owned()], &settings.depset)?;
    // Not offline: a fresh machine may still have to fetch the set's crates. Pipeline
    // builds are offline.
    let mut command = cargo_command(settings, wrapper);
    command.args(["build", "--profile", &settings.profile, "-p", depset::PACKAGE]);
    command.args(crate::builder::cargo::jobs(settings));
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
