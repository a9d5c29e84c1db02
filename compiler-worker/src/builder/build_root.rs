//! Writing files into a build root: the dependency set (the built-in one, or an
//! operator's vendored set verified and copied whole, with cargo pointed at it),
//! the program's crates at their content-addressed paths, and the workspace that
//! names them. Every file of the set gets one fixed old modification time, so
//! cargo finds the prebuilt set fresh in every build root.
//!
//! **Invariant:** nothing is written outside the build root or through a link.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use kiln_core::depset::{self, DepSet, Origin};
use kiln_core::program::Layout;

use crate::sandbox::target::touch;

pub(super) fn write_workspace(root: &Path, members: &[String], set: &DepSet) -> std::io::Result<()> {
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
pub(super) fn write_depset(root: &Path, set: &DepSet) -> anyhow::Result<()> {
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
pub(super) fn write_layout(root: &Path, layout: &Layout, set: &DepSet) -> anyhow::Result<Vec<String>> {
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
}
