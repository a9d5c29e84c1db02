//! `kiln depset create` and `kiln depset check`: the operator's dependency set, made
//! once with the network (`cargo vendor`) and verified before members take it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln_core::depset::{self, DepSet, Resolved};

#[derive(Debug, Subcommand)]
pub enum DepsetCommand {
    /// Makes a dependency set directory from MANIFEST (a Cargo.toml whose
    /// [dependencies] name the crates, versions and features programs may use; path
    /// crates of your own are copied in). Resolves and vendors every locked crate
    /// with cargo, which needs the network this once; a Cargo.lock beside MANIFEST
    /// pins the versions. The pipeline runtime is added unless MANIFEST names it.
    Create {
        manifest: PathBuf,
        /// The directory to make (it must not exist yet).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Verifies a dependency set directory (every locked crate vendored, every
    /// vendored file as its checksum says, the resolved features current, and it
    /// builds offline) and prints its fingerprint.
    Check {
        dir: PathBuf,
        /// Skip the build: only the files and the fingerprint.
        #[arg(long)]
        no_build: bool,
        /// The cargo profile of the check's build.
        #[arg(long, default_value = "dev")]
        profile: String,
    },
}

pub async fn run(command: DepsetCommand) -> anyhow::Result<ExitCode> {
    match command {
        DepsetCommand::Create { manifest, out } => create(&manifest, &out).await,
        DepsetCommand::Check { dir, no_build, profile } => check(&dir, no_build, &profile).await,
    }
}

/// cargo with the set's vendored sources in place of crates.io.
fn cargo(dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("cargo");
    command
        .arg("--config")
        .arg("source.crates-io.replace-with=\"kiln-vendored\"")
        .arg("--config")
        .arg(format!("source.kiln-vendored.directory={:?}", dir.join(depset::VENDOR_DIR).display().to_string()))
        .kill_on_drop(true);
    command
}

async fn run_cargo(mut command: tokio::process::Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let output = command.output().await.with_context(|| format!("{what}: running cargo (is it on PATH?)"))?;
    if !output.status.success() {
        bail!("{what} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(output.stdout)
}

/// Copies a path crate of the operator's into the set, leaving out build outputs
/// and version control.
fn copy_crate(from: &Path, to: &Path) -> anyhow::Result<()> {
    let walker = walkdir::WalkDir::new(from).sort_by_file_name().into_iter().filter_entry(|e| {
        !(e.depth() > 0
            && e.file_type().is_dir()
            && [".git", "target"].contains(&e.file_name().to_string_lossy().as_ref()))
    });
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let relative = entry.path().strip_prefix(from).context("a walked path is under its root")?;
        let target = to.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if entry.file_type().is_file() && entry.file_name() != "Cargo.lock" {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The set's manifest: the operator's dependencies, path crates rewritten to
/// `crates/<name>` (copied there), and the runtime.
fn write_manifest(manifest: &Path, staging: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let document: toml_edit::DocumentMut =
        text.parse().with_context(|| format!("{} is not a valid Cargo.toml", manifest.display()))?;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut dependencies = document
        .get("dependencies")
        .and_then(|d| d.as_table_like())
        .with_context(|| {
            format!("{} has no [dependencies]: name the crates programs may use there", manifest.display())
        })?
        .iter()
        .map(|(name, item)| (name.to_owned(), item.clone()))
        .collect::<Vec<_>>();
    let mut has_runtime = false;
    for (name, item) in &mut dependencies {
        let Some(table) = item.as_table_like_mut() else { continue };
        if table.get("git").is_some() {
            bail!("dependency {name} comes from git: a set holds registry crates and path crates of your own");
        }
        let Some(path) = table.get("path").and_then(|p| p.as_str()).map(PathBuf::from) else { continue };
        let source = base.join(&path);
        let crate_manifest = std::fs::read_to_string(source.join("Cargo.toml"))
            .with_context(|| format!("dependency {name}: reading {}", source.join("Cargo.toml").display()))?;
        let package: toml_edit::DocumentMut =
            crate_manifest.parse().with_context(|| format!("dependency {name}: its Cargo.toml is not valid"))?;
        let package = package
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("dependency {name}: its Cargo.toml has no [package] name"))?
            .to_owned();
        if let Err(rule) = kiln_core::program::check_package_name(&package)
            && package != depset::RUNTIME_PACKAGE
        {
            bail!("dependency {name}: package name {package:?}: {rule}");
        }
        has_runtime |= package == depset::RUNTIME_PACKAGE;
        copy_crate(&source, &staging.join(depset::CRATES_DIR).join(&package))?;
        table.insert("path", toml_edit::value(format!("{}/{package}", depset::CRATES_DIR)));
    }
    if !has_runtime {
        let runtime = staging.join(depset::CRATES_DIR).join(depset::RUNTIME_PACKAGE);
        for (path, text) in depset::RUNTIME_FILES {
            let file = runtime.join(path);
            std::fs::create_dir_all(file.parent().context("a runtime file has a directory")?)?;
            std::fs::write(&file, text)?;
        }
        let entry: toml_edit::DocumentMut =
            format!("x = {{ version = \"0.1\", path = \"{}/{}\" }}", depset::CRATES_DIR, depset::RUNTIME_PACKAGE)
                .parse()
                .context("the runtime's entry")?;
        dependencies.push((depset::RUNTIME_PACKAGE.to_owned(), entry["x"].clone()));
    }
    let mut out: toml_edit::DocumentMut = format!(
        "# A Kiln dependency set, made by `kiln depset create` from {}.\n\
         # Programs may use every crate of Cargo.lock at the features resolved.json lists.\n\
         [package]\nname = \"{}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\npath = \"lib.rs\"\n",
        manifest.display(),
        depset::PACKAGE
    )
    .parse()
    .context("the set's manifest")?;
    let mut table = toml_edit::Table::new();
    for (name, item) in dependencies {
        table.insert(&name, item);
    }
    out.insert("dependencies", toml_edit::Item::Table(table));
    // The set stands alone: cargo vendor and check run in it, outside any workspace.
    out.insert("workspace", toml_edit::Item::Table(toml_edit::Table::new()));
    std::fs::write(staging.join("Cargo.toml"), out.to_string())?;
    std::fs::write(
        staging.join("lib.rs"),
        "//! The dependency set's anchor crate: it exists so that cargo builds every crate of\n//! the set, with the features programs may use, once per worker.\n",
    )?;
    if base.join("Cargo.lock").is_file() {
        std::fs::copy(base.join("Cargo.lock"), staging.join("Cargo.lock"))?;
    }
    Ok(())
}

/// What `cargo metadata` resolves for the set, offline, from its vendored sources.
async fn resolve(dir: &Path) -> anyhow::Result<Resolved> {
    let mut command = cargo(dir);
    command.args(["metadata", "--format-version", "1", "--offline", "--locked", "--manifest-path"]);
    command.arg(dir.join("Cargo.toml"));
    let output = run_cargo(command, "resolving the set's features (cargo metadata)").await?;
    let metadata: serde_json::Value = serde_json::from_slice(&output).context("reading cargo metadata's output")?;
    Resolved::from_metadata(&metadata).map_err(anyhow::Error::msg)
}

async fn create(manifest: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    if out.exists() {
        bail!("{} exists: give a new directory (a set is made whole, then never changed)", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new().prefix(".kiln-depset-").tempdir_in(parent)?;
    let dir = staging.path().canonicalize()?;
    write_manifest(manifest, &dir)?;
    if !dir.join("Cargo.lock").exists() {
        eprintln!("kiln depset: resolving versions (cargo generate-lockfile)");
        let mut command = tokio::process::Command::new("cargo");
        command.arg("generate-lockfile").arg("--manifest-path").arg(dir.join("Cargo.toml"));
        run_cargo(command, "resolving the set's versions (cargo generate-lockfile)").await?;
    }
    eprintln!("kiln depset: vendoring every locked crate (cargo vendor)");
    let mut command = tokio::process::Command::new("cargo");
    command.args(["vendor", "--versioned-dirs", "--manifest-path"]).arg(dir.join("Cargo.toml"));
    command.arg(dir.join(depset::VENDOR_DIR)).kill_on_drop(true);
    run_cargo(command, "vendoring the set (cargo vendor)").await?;
    let resolved = resolve(&dir).await?;
    std::fs::write(dir.join(depset::RESOLVED_FILE), serde_json::to_string_pretty(&resolved)? + "\n")?;
    let set = DepSet::load(&dir)?;
    std::fs::rename(staging.keep(), out).with_context(|| format!("moving the set to {}", out.display()))?;
    println!("dependency set {}: {} crates, fingerprint {}", out.display(), resolved.packages.len(), set.fingerprint());
    Ok(ExitCode::SUCCESS)
}

async fn check(dir: &Path, no_build: bool, profile: &str) -> anyhow::Result<ExitCode> {
    let dir = dir.canonicalize().with_context(|| format!("reading the dependency set {}", dir.display()))?;
    let set = DepSet::load(&dir)?;
    let vendored = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || depset::verify_vendored(&dir)).await??
    };
    let recorded: Resolved = serde_json::from_str(&std::fs::read_to_string(dir.join(depset::RESOLVED_FILE))?)
        .context("reading resolved.json")?;
    if resolve(&dir).await? != recorded {
        bail!(
            "{}: {} does not match what cargo resolves from the set: make the set again with `kiln depset create`",
            dir.display(),
            depset::RESOLVED_FILE
        );
    }
    if !no_build {
        eprintln!("kiln depset: building the set offline (profile {profile})");
        let target = tempfile::tempdir()?;
        let mut command = cargo(&dir);
        command.args(["build", "--offline", "--locked", "--profile", profile, "--manifest-path"]);
        command.arg(dir.join("Cargo.toml")).arg("--target-dir").arg(target.path());
        run_cargo(command, "building the set").await?;
    }
    println!(
        "dependency set {}: {} locked crates, {vendored} vendored, all as their checksums say; fingerprint {}",
        dir.display(),
        set.names().count(),
        set.fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}
