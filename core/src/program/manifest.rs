//! A program's crates as their manifests describe them: which directories are
//! crates, which one is the binary, their dependencies (path crates of the program,
//! or registry crates that must come from the farm's dependency set).

use std::collections::HashMap;

use super::rules::{ProgramError, ProgramFile, check_package_name};
use crate::depset::DepSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrateKind {
    Binary,
    Library,
}

/// Where a dependency comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A crate of the program, by index.
    Path(usize),
    /// The dependency set, with this version requirement.
    Set(String),
}

/// One dependency of a crate (normal or build; dev-dependencies are never built).
#[derive(Debug, Clone)]
pub(super) struct Dependency {
    /// Keys from the manifest's root to the dependency's entry, e.g.
    /// `["target", "cfg(unix)", "dependencies", "ops"]`.
    pub(super) keys: Vec<String>,
    /// Its name in this manifest (what features name it by).
    pub(super) name: String,
    /// The package it is (`package = "..."`, or the name).
    pub(super) package: String,
    pub(super) optional: bool,
    pub(super) default_features: bool,
    pub(super) features: Vec<String>,
    pub(super) source: Source,
}

/// What a build of the binary activates of one crate: its features, and for each of
/// its dependencies the features asked of it, or `None` when it is not used (an
/// optional dependency no enabled feature activates).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Activation {
    pub(super) features: std::collections::BTreeSet<String>,
    pub(super) dependencies: Vec<Option<std::collections::BTreeSet<String>>>,
}

/// One crate of a program.
#[derive(Debug, Clone)]
pub struct Crate {
    /// The crate's directory relative to the program root ("" for the root).
    pub dir: String,
    pub package: String,
    pub kind: CrateKind,
    pub(super) manifest: toml_edit::DocumentMut,
    /// Indexes into the program's files of the files that belong to this crate
    /// (those under `dir` and not under a nested crate).
    pub(super) files: Vec<usize>,
    pub(super) dependencies: Vec<Dependency>,
    /// Set by [`Program::parse`] for the crates the binary uses.
    pub(super) activation: Option<Activation>,
}

impl Crate {
    /// The program crates this crate uses, by index.
    pub(super) fn path_targets(&self) -> impl Iterator<Item = usize> + '_ {
        let active = self.activation.as_ref();
        self.dependencies.iter().enumerate().filter_map(move |(i, d)| match d.source {
            Source::Path(target) if active.is_some_and(|a| a.dependencies[i].is_some()) => Some(target),
            _ => None,
        })
    }
}

/// Every crate of the program: each `Cargo.toml` with a `[package]`. A virtual
/// workspace manifest (for plain `cargo build`) is skipped.
pub(super) fn read_crates(files: &[ProgramFile]) -> Result<Vec<Crate>, ProgramError> {
    let paths: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut crates = Vec::new();
    let mut any_manifest = false;
    for file in files {
        let Some(dir) = manifest_dir(&file.path) else { continue };
        any_manifest = true;
        let bad = |reason: &str| ProgramError::BadManifest { path: file.path.clone(), reason: reason.to_owned() };
        let text = std::str::from_utf8(&file.content).map_err(|_| bad("it is not UTF-8"))?;
        let manifest: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| bad(e.message()))?;
        let Some(package) = manifest.get("package") else {
            if manifest.get("workspace").is_some() {
                continue;
            }
            return Err(bad("it has no [package] table"));
        };
        let package =
            package.get("name").and_then(|n| n.as_str()).ok_or_else(|| bad("[package] has no name"))?.to_owned();
        if let Err(rule) = check_package_name(&package) {
            return Err(ProgramError::InvalidPackageName { path: file.path.clone(), name: package, rule });
        }
        let has = |rel: &str| paths.contains(join(&dir, rel).as_str());
        let kind = if has("src/main.rs") || manifest.get("bin").is_some() {
            CrateKind::Binary
        } else if has("src/lib.rs") || manifest.get("lib").is_some() {
            CrateKind::Library
        } else {
            return Err(ProgramError::NoTarget { package, dir: display_dir(&dir) });
        };
        crates.push(Crate {
            dir,
            package,
            kind,
            manifest,
            files: Vec::new(),
            dependencies: Vec::new(),
            activation: None,
        });
    }
    if !any_manifest {
        return Err(ProgramError::NoManifest);
    }
    let mut packages = std::collections::HashSet::new();
    for krate in &crates {
        if !packages.insert(krate.package.as_str()) {
            return Err(ProgramError::DuplicatePackage(krate.package.clone()));
        }
    }
    Ok(crates)
}

/// The one binary crate's index.
pub(super) fn find_binary(crates: &[Crate]) -> Result<usize, ProgramError> {
    let binaries: Vec<usize> = (0..crates.len()).filter(|&i| crates[i].kind == CrateKind::Binary).collect();
    match binaries.as_slice() {
        [one] => Ok(*one),
        [] => {
            let libraries = crates.iter().map(|c| c.package.as_str()).collect::<Vec<_>>().join(", ");
            Err(ProgramError::NoBinary { libraries: if libraries.is_empty() { "none".into() } else { libraries } })
        }
        [first, second, ..] => {
            Err(ProgramError::TwoBinaries { first: describe(&crates[*first]), second: describe(&crates[*second]) })
        }
    }
}

/// Each file belongs to the crate with the deepest directory containing it.
pub(super) fn assign_files(files: &[ProgramFile], crates: &mut [Crate]) {
    for (file_index, file) in files.iter().enumerate() {
        let owner = crates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.dir.is_empty() || file.path.starts_with(&format!("{}/", c.dir)))
            .max_by_key(|(_, c)| c.dir.len())
            .map(|(i, _)| i);
        if let Some(owner) = owner {
            crates[owner].files.push(file_index);
        }
    }
}

pub(super) fn describe(krate: &Crate) -> String {
    format!("{} ({})", krate.package, display_dir(&krate.dir))
}

pub(super) fn display_dir(dir: &str) -> String {
    if dir.is_empty() { "the program's root".into() } else { format!("{dir}/") }
}

/// The directory of a `Cargo.toml` path, or None for any other file.
pub(super) fn manifest_dir(path: &str) -> Option<String> {
    if path == "Cargo.toml" { Some(String::new()) } else { path.strip_suffix("/Cargo.toml").map(str::to_owned) }
}

pub(super) fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() { rel.to_owned() } else { format!("{dir}/{rel}") }
}

pub(super) fn strip_dir<'a>(dir: &str, path: &'a str) -> &'a str {
    if dir.is_empty() { path } else { &path[dir.len() + 1..] }
}

/// Resolves `rel` against `dir` lexically; None when it climbs above the program root.
pub(super) fn resolve(dir: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') || rel.contains('\\') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// The dependency tables of a manifest, each as its keys from the root.
pub(super) fn dependency_tables(manifest: &toml_edit::DocumentMut) -> Vec<Vec<String>> {
    const KINDS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables: Vec<Vec<String>> = KINDS.iter().map(|k| vec![(*k).to_owned()]).collect();
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table_like()) {
        for (target, _) in targets.iter() {
            for kind in KINDS {
                tables.push(vec!["target".into(), target.to_owned(), kind.to_owned()]);
            }
        }
    }
    tables
}

pub(super) fn lookup<'a>(manifest: &'a toml_edit::DocumentMut, keys: &[String]) -> Option<&'a toml_edit::Item> {
    let mut item = manifest.as_item();
    for key in keys {
        item = item.as_table_like()?.get(key)?;
    }
    Some(item)
}

pub(super) fn set_path(manifest: &mut toml_edit::DocumentMut, keys: &[String], path: &str) {
    let mut item = manifest.as_item_mut();
    for key in keys {
        // The keys were read from this very manifest by `check_dependencies`.
        item = item
            .as_table_like_mut()
            .and_then(|t| t.get_mut(key))
            .expect("a path dependency's keys exist in its manifest");
    }
    if let Some(table) = item.as_table_like_mut() {
        table.insert("path", toml_edit::value(path));
    }
}

/// One dependency entry as written: `name = "1"` or `name = { version, features, ... }`.
pub(super) struct DependencyEntry<'a> {
    pub(super) requirement: Option<&'a str>,
    pub(super) features: Vec<&'a str>,
    pub(super) spec: Option<&'a dyn toml_edit::TableLike>,
}

/// Who depends on what, for the errors.
pub(super) struct Dependent<'a> {
    pub(super) package: &'a str,
    pub(super) dependency: &'a str,
}

impl Dependent<'_> {
    pub(super) fn bad(&self, reason: &str) -> ProgramError {
        ProgramError::BadDependency {
            package: self.package.to_owned(),
            dependency: self.dependency.to_owned(),
            reason: reason.to_owned(),
        }
    }

    pub(super) fn unsupported(&self, source_kind: &'static str) -> ProgramError {
        ProgramError::UnsupportedSource {
            package: self.package.to_owned(),
            dependency: self.dependency.to_owned(),
            source_kind,
        }
    }
}

pub(super) fn read_entry<'a>(
    who: &Dependent<'_>,
    item: &'a toml_edit::Item,
) -> Result<DependencyEntry<'a>, ProgramError> {
    if let Some(requirement) = item.as_str() {
        return Ok(DependencyEntry { requirement: Some(requirement), features: Vec::new(), spec: None });
    }
    let spec = item.as_table_like().ok_or_else(|| who.bad("expected a version string or a table"))?;
    let features = match spec.get("features") {
        None => Vec::new(),
        Some(f) => f
            .as_array()
            .ok_or_else(|| who.bad("features must be an array of strings"))?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| who.bad("features must be an array of strings")))
            .collect::<Result<_, _>>()?,
    };
    Ok(DependencyEntry { requirement: spec.get("version").and_then(|v| v.as_str()), features, spec: Some(spec) })
}

/// Reads every dependency of `krate` that a build of it may need (normal and build
/// dependencies, in every target table; dev-dependencies are never built): path
/// crates must be crates of the program, and nothing may come from git, another
/// registry or the workspace.
pub(super) fn read_dependencies(
    krate: &Crate,
    by_dir: &HashMap<String, usize>,
) -> Result<Vec<Dependency>, ProgramError> {
    let mut dependencies = Vec::new();
    for table_keys in dependency_tables(&krate.manifest) {
        if table_keys.last().is_some_and(|k| k == "dev-dependencies") {
            continue;
        }
        let Some(table) = lookup(&krate.manifest, &table_keys).and_then(|t| t.as_table_like()) else {
            continue;
        };
        for (name, item) in table.iter() {
            let who = Dependent { package: &krate.package, dependency: name };
            let entry = read_entry(&who, item)?;
            let mut keys = table_keys.clone();
            keys.push(name.to_owned());
            let flag = |key: &str, alternative: &str, default: bool| {
                entry
                    .spec
                    .and_then(|s| s.get(key).or_else(|| s.get(alternative)))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(default)
            };
            let mut dependency = Dependency {
                keys,
                name: name.to_owned(),
                package: entry.spec.and_then(|s| s.get("package")).and_then(|p| p.as_str()).unwrap_or(name).to_owned(),
                optional: flag("optional", "optional", false),
                default_features: flag("default-features", "default_features", true),
                features: entry.features.iter().map(|f| (*f).to_owned()).collect(),
                source: Source::Set(entry.requirement.unwrap_or("").to_owned()),
            };
            if let Some(spec) = entry.spec {
                if spec.get("workspace").is_some() {
                    return Err(who.unsupported(
                        "the workspace (`workspace = true`); write the dependency out in the crate's own Cargo.toml",
                    ));
                }
                if spec.get("git").is_some() {
                    return Err(who.unsupported("git"));
                }
                if spec.get("registry").is_some() || spec.get("registry-index").is_some() {
                    return Err(who.unsupported("another registry"));
                }
                if let Some(path) = spec.get("path") {
                    let path = path.as_str().ok_or_else(|| who.bad("path must be a string"))?;
                    let target =
                        resolve(&krate.dir, path).and_then(|dir| by_dir.get(&dir).copied()).ok_or_else(|| {
                            ProgramError::PathNotACrate {
                                package: krate.package.clone(),
                                dependency: name.to_owned(),
                                path: path.to_owned(),
                            }
                        })?;
                    dependency.source = Source::Path(target);
                }
            }
            dependencies.push(dependency);
        }
    }
    Ok(dependencies)
}

/// Every registry dependency a build of `krate` uses must be in the set: a crate
/// of its lockfile, at a version the requirement accepts, asking only features
/// the set builds.
pub(super) fn check_in_set(krate: &Crate, depset: &DepSet) -> Result<(), ProgramError> {
    let Some(activation) = &krate.activation else { return Ok(()) };
    for (dependency, wanted) in krate.dependencies.iter().zip(&activation.dependencies) {
        let (Source::Set(requirement), Some(wanted)) = (&dependency.source, wanted) else { continue };
        let who = Dependent { package: &krate.package, dependency: &dependency.package };
        let versions = depset.versions(&dependency.package);
        if versions.is_empty() {
            return Err(ProgramError::OutsideDependencySet {
                package: krate.package.clone(),
                dependency: dependency.package.clone(),
                allowed: depset.direct().collect::<Vec<_>>().join(", "),
            });
        }
        if requirement.is_empty() {
            return Err(who.bad("a registry dependency needs a version"));
        }
        let parsed = semver::VersionReq::parse(requirement)
            .map_err(|e| who.bad(&format!("version {requirement:?} is not a valid requirement: {e}")))?;
        let Some(locked) = depset.matching(&dependency.package, &parsed) else {
            return Err(ProgramError::VersionMismatch {
                package: krate.package.clone(),
                dependency: dependency.package.clone(),
                requirement: requirement.clone(),
                available: versions.iter().map(|c| c.version.to_string()).collect::<Vec<_>>().join(" and "),
            });
        };
        for feature in wanted {
            let builds = locked.features.contains(feature) || (feature == "default" && !locked.has_default);
            if !builds {
                return Err(ProgramError::FeatureOutsideSet {
                    package: krate.package.clone(),
                    dependency: dependency.package.clone(),
                    feature: feature.clone(),
                    allowed: if locked.features.is_empty() {
                        "none".into()
                    } else {
                        locked.features.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                    },
                });
            }
        }
    }
    Ok(())
}
