//! Pipeline programs: the format, the rules a program must follow to build on the
//! farm, and the content-addressed layout a worker writes into its build root.
//!
//! A program is a directory of files. Every `Cargo.toml` in it that has a `[package]`
//! is a crate rooted at that file's directory; exactly one crate has a binary target
//! (`src/main.rs` or `[[bin]]`), the others are libraries ("operators"). Crates depend
//! on each other by `path` and on registry crates only from the farm's dependency set
//! ([`DepSet`]). A root `Cargo.toml` with only a `[workspace]` is allowed, so that the
//! same directory builds with a plain `cargo build`.
//!
//! The leader calls [`Program::parse`] on every submission (so a program that cannot
//! build is refused with the rule named); a worker calls it again and then
//! [`Program::layout`].

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::depset::DepSet;

/// Largest program accepted, all files together.
pub const MAX_PROGRAM_BYTES: u64 = 8 * 1024 * 1024;
/// Most files a program may hold.
pub const MAX_PROGRAM_FILES: usize = 2_000;
/// Longest pipeline name.
pub const MAX_NAME_LEN: usize = 63;

/// One file of a program, as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramFile {
    /// Relative to the program's directory, '/'-separated.
    pub path: String,
    pub content: Vec<u8>,
    pub executable: bool,
}

/// A rule a program broke. Every message names the rule and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error(
        "invalid pipeline name {0:?}: a name is 1 to {MAX_NAME_LEN} characters of lowercase letters, digits, '-' or '_', starting with a letter"
    )]
    InvalidName(String),
    #[error(
        "file path {0:?} escapes the program directory: paths must be relative, '/'-separated, without '.' or '..' components"
    )]
    PathEscapes(String),
    #[error("file path {0:?} appears twice in the program")]
    DuplicatePath(String),
    #[error("{path}: invalid package name {name:?}: {rule}")]
    InvalidPackageName { path: String, name: String, rule: &'static str },
    #[error(
        "the program is {size} bytes, over the limit of {MAX_PROGRAM_BYTES} bytes: leave out build outputs (target/) and large data files"
    )]
    TooLarge { size: u64 },
    #[error("the program has {count} files, over the limit of {MAX_PROGRAM_FILES}: leave out build outputs (target/)")]
    TooManyFiles { count: usize },
    #[error("no Cargo.toml in the program: a program is a directory holding one binary crate")]
    NoManifest,
    #[error("{path} is not a valid Cargo manifest: {reason}")]
    BadManifest { path: String, reason: String },
    #[error("no binary crate: a program needs exactly one crate with src/main.rs (found only libraries: {libraries})")]
    NoBinary { libraries: String },
    #[error(
        "two binary crates, {first} and {second}: a program has exactly one binary crate; make the others libraries (src/lib.rs)"
    )]
    TwoBinaries { first: String, second: String },
    #[error("crate {package} ({dir}) has neither src/main.rs nor src/lib.rs")]
    NoTarget { package: String, dir: String },
    #[error("two crates are named {0}: package names must be unique within a program")]
    DuplicatePackage(String),
    #[error(
        "crate {package} depends on {dependency}, which is not in the farm's dependency set: use a path crate of the program, or a crate of the set's lockfile (the set names: {allowed})"
    )]
    OutsideDependencySet { package: String, dependency: String, allowed: String },
    #[error(
        "crate {package} asks for {dependency} {requirement}, but the farm's dependency set has {dependency} {available}: change the requirement to match"
    )]
    VersionMismatch { package: String, dependency: String, requirement: String, available: String },
    #[error(
        "crate {package} asks for feature `{feature}` of {dependency}, which the farm's dependency set does not build; built: {allowed}"
    )]
    FeatureOutsideSet { package: String, dependency: String, feature: String, allowed: String },
    #[error(
        "crate {package} takes {dependency} from {source_kind}: builds run offline, so use a path crate of the program or the farm's dependency set"
    )]
    UnsupportedSource { package: String, dependency: String, source_kind: &'static str },
    #[error(
        "crate {package} depends on {dependency} at path {path:?}, which is not a crate of the program: path dependencies must point to a crate directory inside the program"
    )]
    PathNotACrate { package: String, dependency: String, path: String },
    #[error("crate {package} has an invalid entry for {dependency}: {reason}")]
    BadDependency { package: String, dependency: String, reason: String },
    #[error("path dependencies form a cycle through crate {0}")]
    DependencyCycle(String),
}

/// Checks a pipeline name: `[a-z][a-z0-9_-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), ProgramError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(ProgramError::InvalidName(name.to_owned()))
    }
}

/// Checks one file path: relative, '/'-separated, no empty, '.' or '..' components.
pub fn validate_path(path: &str) -> Result<(), ProgramError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad { Err(ProgramError::PathEscapes(path.to_owned())) } else { Ok(()) }
}

/// The program's source checksum: SHA-256 over its files in path order, each as
/// path, NUL, executable flag, length and content. Independent of submission order.
pub fn source_sha256(files: &[ProgramFile]) -> String {
    let mut sorted: Vec<&ProgramFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for file in sorted {
        hasher.update(file.path.as_bytes());
        hasher.update([0, u8::from(file.executable)]);
        hasher.update((file.content.len() as u64).to_le_bytes());
        hasher.update(&file.content);
    }
    hex::encode(hasher.finalize())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrateKind {
    Binary,
    Library,
}

/// Where a dependency comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A crate of the program, by index.
    Path(usize),
    /// The dependency set, with this version requirement.
    Set(String),
}

/// One dependency of a crate (normal or build; dev-dependencies are never built).
#[derive(Debug, Clone)]
struct Dependency {
    /// Keys from the manifest's root to the dependency's entry, e.g.
    /// `["target", "cfg(unix)", "dependencies", "ops"]`.
    keys: Vec<String>,
    /// Its name in this manifest (what features name it by).
    name: String,
    /// The package it is (`package = "..."`, or the name).
    package: String,
    optional: bool,
    default_features: bool,
    features: Vec<String>,
    source: Source,
}

/// What a build of the binary activates of one crate: its features, and for each of
/// its dependencies the features asked of it, or `None` when it is not used (an
/// optional dependency no enabled feature activates).
#[derive(Debug, Clone, Default, PartialEq)]
struct Activation {
    features: std::collections::BTreeSet<String>,
    dependencies: Vec<Option<std::collections::BTreeSet<String>>>,
}

/// One crate of a program.
#[derive(Debug, Clone)]
pub struct Crate {
    /// The crate's directory relative to the program root ("" for the root).
    pub dir: String,
    pub package: String,
    pub kind: CrateKind,
    manifest: toml_edit::DocumentMut,
    /// Indexes into the program's files of the files that belong to this crate
    /// (those under `dir` and not under a nested crate).
    files: Vec<usize>,
    dependencies: Vec<Dependency>,
    /// Set by [`Program::parse`] for the crates the binary uses.
    activation: Option<Activation>,
}

impl Crate {
    /// The program crates this crate uses, by index.
    fn path_targets(&self) -> impl Iterator<Item = usize> + '_ {
        let active = self.activation.as_ref();
        self.dependencies.iter().enumerate().filter_map(move |(i, d)| match d.source {
            Source::Path(target) if active.is_some_and(|a| a.dependencies[i].is_some()) => Some(target),
            _ => None,
        })
    }
}

/// A program that follows every rule.
#[derive(Debug, Clone)]
pub struct Program {
    files: Vec<ProgramFile>,
    crates: Vec<Crate>,
    binary: usize,
}

/// One crate as a worker writes it: under `dir_name` in the build root, with path
/// dependencies rewritten to their siblings' content-addressed directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaidOutCrate {
    /// `<package>-<the content hash, 64 hex digits>`: the whole hash, so that a
    /// directory that exists already holds these very files.
    pub dir_name: String,
    pub package: String,
    pub kind: CrateKind,
    /// Paths relative to the crate directory.
    pub files: Vec<ProgramFile>,
}

/// Where a program's crates go: dependencies before dependents, the binary last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub crates: Vec<LaidOutCrate>,
}

impl Layout {
    pub fn binary(&self) -> &LaidOutCrate {
        // `Program::layout` pushes the binary crate last and a program always has one.
        self.crates.last().expect("a layout holds the binary crate")
    }

    /// Why building this layout runs code of the submitter's (a build script or a
    /// proc-macro crate of the program's own), or None when cargo only compiles it:
    /// then what rustc produces depends on the sources alone, and the build may
    /// write the shared compile cache. Read from the manifests as laid out, the
    /// files the worker itself writes, and on the cautious side: any `build` key
    /// but `false`, or a `build.rs` at a crate's root, counts as a build script.
    pub fn submitted_code(&self) -> Option<String> {
        self.crates.iter().find_map(LaidOutCrate::submitted_code)
    }
}

impl LaidOutCrate {
    fn submitted_code(&self) -> Option<String> {
        let package = &self.package;
        let Some(manifest) = self.files.iter().find(|f| f.path == "Cargo.toml") else {
            return Some(format!("crate {package} has no manifest to read"));
        };
        let Ok(manifest) = String::from_utf8_lossy(&manifest.content).parse::<toml_edit::DocumentMut>() else {
            return Some(format!("crate {package}'s manifest does not parse"));
        };
        let build = manifest.get("package").and_then(|p| p.get("build"));
        let no_build_script = build.and_then(|b| b.as_bool()) == Some(false);
        if !no_build_script && (build.is_some() || self.files.iter().any(|f| f.path == "build.rs")) {
            return Some(format!("crate {package} has a build script"));
        }
        let lib = manifest.get("lib");
        let proc_macro = ["proc-macro", "proc_macro"]
            .iter()
            .any(|key| lib.and_then(|l| l.get(key)).is_some_and(|v| v.as_bool() != Some(false)));
        proc_macro.then(|| format!("crate {package} is a proc-macro"))
    }
}

impl Program {
    /// Applies every rule of the format to `files`.
    pub fn parse(files: Vec<ProgramFile>, depset: &DepSet) -> Result<Program, ProgramError> {
        check_files(&files)?;
        let mut crates = read_crates(&files)?;
        let binary = find_binary(&crates)?;
        assign_files(&files, &mut crates);
        let by_dir: HashMap<String, usize> = crates.iter().enumerate().map(|(i, c)| (c.dir.clone(), i)).collect();
        let dependencies: Vec<Vec<Dependency>> =
            crates.iter().map(|c| read_dependencies(c, &by_dir)).collect::<Result<_, _>>()?;
        for (krate, dependencies) in crates.iter_mut().zip(dependencies) {
            krate.dependencies = dependencies;
        }
        let activations = activate(&crates, binary);
        for (krate, activation) in crates.iter_mut().zip(activations) {
            krate.activation = activation;
        }
        for krate in &crates {
            check_in_set(krate, depset)?;
        }
        let program = Program { files, crates, binary };
        program.topological_order()?;
        Ok(program)
    }

    pub fn binary(&self) -> &Crate {
        &self.crates[self.binary]
    }

    pub fn crates(&self) -> &[Crate] {
        &self.crates
    }

    /// Crates reachable from the binary by path dependencies, dependencies first.
    fn topological_order(&self) -> Result<Vec<usize>, ProgramError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        fn visit(program: &Program, at: usize, marks: &mut [Mark], order: &mut Vec<usize>) -> Result<(), ProgramError> {
            match marks[at] {
                Mark::Done => return Ok(()),
                Mark::Visiting => return Err(ProgramError::DependencyCycle(program.crates[at].package.clone())),
                Mark::New => {}
            }
            marks[at] = Mark::Visiting;
            for target in program.crates[at].path_targets() {
                visit(program, target, marks, order)?;
            }
            marks[at] = Mark::Done;
            order.push(at);
            Ok(())
        }
        let mut marks = vec![Mark::New; self.crates.len()];
        let mut order = Vec::new();
        // Only what the binary uses: crates no build of it reaches are not laid out.
        visit(self, self.binary, &mut marks, &mut order)?;
        Ok(order)
    }

    /// Content-addresses every crate the binary uses. A crate's address covers its
    /// files and, through its rewritten manifest, the addresses of its path
    /// dependencies: the same operator source gets the same directory in every
    /// pipeline and on every worker, which is what lets sccache share its compilation.
    pub fn layout(&self) -> Layout {
        // `parse` already rejected cycles, so the order exists.
        let order = self.topological_order().expect("parse rejects dependency cycles");
        let mut dir_names: HashMap<usize, String> = HashMap::new();
        let mut crates = Vec::new();
        for index in order {
            let krate = &self.crates[index];
            let mut manifest = krate.manifest.clone();
            let activation = krate.activation.as_ref().expect("laid-out crates are reached by the binary");
            for (dep, used) in krate.dependencies.iter().zip(&activation.dependencies) {
                if let (Source::Path(target), Some(_)) = (&dep.source, used) {
                    set_path(&mut manifest, &dep.keys, &format!("../{}", dir_names[target]));
                }
            }
            drop_unbuilt(&mut manifest, krate, activation);
            // A member of the worker's workspace may not declare a workspace, and its
            // profiles would be ignored with a warning: the farm decides both.
            // `[patch]` too: only the workspace root's counts, and the farm's root
            // patches the pipeline runtime itself.
            manifest.remove("workspace");
            manifest.remove("profile");
            manifest.remove("patch");
            let manifest_path = join(&krate.dir, "Cargo.toml");
            let mut files: Vec<ProgramFile> = krate
                .files
                .iter()
                .map(|&i| {
                    let file = &self.files[i];
                    let relative = strip_dir(&krate.dir, &file.path).to_owned();
                    if file.path == manifest_path {
                        ProgramFile { path: relative, content: manifest.to_string().into_bytes(), executable: false }
                    } else {
                        ProgramFile { path: relative, content: file.content.clone(), executable: file.executable }
                    }
                })
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let hash = source_sha256(&files);
            let dir_name = format!("{}-{}", krate.package, hash);
            dir_names.insert(index, dir_name.clone());
            crates.push(LaidOutCrate { dir_name, package: krate.package.clone(), kind: krate.kind, files });
        }
        Layout { crates }
    }
}

/// The limits, and every path: relative, inside the program, no duplicates.
fn check_files(files: &[ProgramFile]) -> Result<(), ProgramError> {
    if files.len() > MAX_PROGRAM_FILES {
        return Err(ProgramError::TooManyFiles { count: files.len() });
    }
    let size: u64 = files.iter().map(|f| f.content.len() as u64).sum();
    if size > MAX_PROGRAM_BYTES {
        return Err(ProgramError::TooLarge { size });
    }
    let mut seen = std::collections::HashSet::new();
    for file in files {
        validate_path(&file.path)?;
        if !seen.insert(file.path.as_str()) {
            return Err(ProgramError::DuplicatePath(file.path.clone()));
        }
    }
    Ok(())
}

/// The longest package name (crates.io's limit).
pub const MAX_PACKAGE_NAME_LEN: usize = 64;

/// cargo's rules for a package name, stricter where a name becomes a directory of
/// the build root: ASCII only, and none of the names Windows reserves. The rule
/// broken, in words, or `Ok`.
pub fn check_package_name(name: &str) -> Result<(), &'static str> {
    const RESERVED: [&str; 9] =
        ["std", "core", "alloc", "proc_macro", "proc-macro", "test", "build", "deps", "examples"];
    if name.is_empty() {
        return Err("a package name cannot be empty");
    }
    if name.len() > MAX_PACKAGE_NAME_LEN {
        return Err("a package name is at most 64 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(
            "a package name is made of ASCII letters, digits, '-' and '_' (no '/', '.', spaces or other characters)",
        );
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a package name cannot start with a digit");
    }
    let lower = name.to_ascii_lowercase();
    let windows = matches!(lower.as_str(), "con" | "prn" | "aux" | "nul")
        || (lower.len() == 4
            && (lower.starts_with("com") || lower.starts_with("lpt"))
            && lower.as_bytes()[3].is_ascii_digit());
    if windows {
        return Err("a package name cannot be a name Windows reserves (con, prn, aux, nul, com1-9, lpt1-9)");
    }
    if RESERVED.contains(&lower.as_str()) || lower == crate::depset::PACKAGE || lower == crate::depset::RUNTIME_PACKAGE
    {
        return Err(
            "a package name cannot be a name Rust, cargo or the farm's own crates use (std, core, alloc, proc_macro, test, build, deps, examples, the dependency set and its runtime)",
        );
    }
    Ok(())
}

/// Every crate of the program: each `Cargo.toml` with a `[package]`. A virtual
/// workspace manifest (for plain `cargo build`) is skipped.
fn read_crates(files: &[ProgramFile]) -> Result<Vec<Crate>, ProgramError> {
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
fn find_binary(crates: &[Crate]) -> Result<usize, ProgramError> {
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
fn assign_files(files: &[ProgramFile], crates: &mut [Crate]) {
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

fn describe(krate: &Crate) -> String {
    format!("{} ({})", krate.package, display_dir(&krate.dir))
}

fn display_dir(dir: &str) -> String {
    if dir.is_empty() { "the program's root".into() } else { format!("{dir}/") }
}

/// The directory of a `Cargo.toml` path, or None for any other file.
fn manifest_dir(path: &str) -> Option<String> {
    if path == "Cargo.toml" { Some(String::new()) } else { path.strip_suffix("/Cargo.toml").map(str::to_owned) }
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() { rel.to_owned() } else { format!("{dir}/{rel}") }
}

fn strip_dir<'a>(dir: &str, path: &'a str) -> &'a str {
    if dir.is_empty() { path } else { &path[dir.len() + 1..] }
}

/// Resolves `rel` against `dir` lexically; None when it climbs above the program root.
fn resolve(dir: &str, rel: &str) -> Option<String> {
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
fn dependency_tables(manifest: &toml_edit::DocumentMut) -> Vec<Vec<String>> {
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

fn lookup<'a>(manifest: &'a toml_edit::DocumentMut, keys: &[String]) -> Option<&'a toml_edit::Item> {
    let mut item = manifest.as_item();
    for key in keys {
        item = item.as_table_like()?.get(key)?;
    }
    Some(item)
}

fn set_path(manifest: &mut toml_edit::DocumentMut, keys: &[String], path: &str) {
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
struct DependencyEntry<'a> {
    requirement: Option<&'a str>,
    features: Vec<&'a str>,
    spec: Option<&'a dyn toml_edit::TableLike>,
}

/// Who depends on what, for the errors.
struct Dependent<'a> {
    package: &'a str,
    dependency: &'a str,
}

impl Dependent<'_> {
    fn bad(&self, reason: &str) -> ProgramError {
        ProgramError::BadDependency {
            package: self.package.to_owned(),
            dependency: self.dependency.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn unsupported(&self, source_kind: &'static str) -> ProgramError {
        ProgramError::UnsupportedSource {
            package: self.package.to_owned(),
            dependency: self.dependency.to_owned(),
            source_kind,
        }
    }
}

fn read_entry<'a>(who: &Dependent<'_>, item: &'a toml_edit::Item) -> Result<DependencyEntry<'a>, ProgramError> {
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
fn read_dependencies(krate: &Crate, by_dir: &HashMap<String, usize>) -> Result<Vec<Dependency>, ProgramError> {
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

/// The features table of a manifest: feature -> what it enables.
fn features_table(manifest: &toml_edit::DocumentMut) -> HashMap<String, Vec<String>> {
    let mut table = HashMap::new();
    if let Some(features) = manifest.get("features").and_then(|f| f.as_table_like()) {
        for (name, item) in features.iter() {
            let enables = item
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect())
                .unwrap_or_default();
            table.insert(name.to_owned(), enables);
        }
    }
    table
}

/// One step of what a feature enables, in cargo's syntax.
enum Enables<'a> {
    /// `name`: another feature, or the implicit feature of an optional dependency.
    Feature(&'a str),
    /// `dep:name`: an optional dependency, without its implicit feature.
    Dependency(&'a str),
    /// `name/feature` (activates `name`) or `name?/feature` (only if `name` is used).
    DependencyFeature { dependency: &'a str, feature: &'a str, weak: bool },
}

fn enables(entry: &str) -> Enables<'_> {
    if let Some(dependency) = entry.strip_prefix("dep:") {
        return Enables::Dependency(dependency);
    }
    match entry.split_once('/') {
        Some((dependency, feature)) => match dependency.strip_suffix('?') {
            Some(dependency) => Enables::DependencyFeature { dependency, feature, weak: true },
            None => Enables::DependencyFeature { dependency, feature, weak: false },
        },
        None => Enables::Feature(entry),
    }
}

/// What a build of the binary (with its default features) activates in every crate
/// of the program, as cargo's feature resolver does: features are unified across
/// dependents, `dep:`, `name/feature` and weak `name?/feature` are followed, and an
/// optional dependency is used only when an enabled feature activates it. `None`
/// for crates the binary never reaches.
fn activate(crates: &[Crate], binary: usize) -> Vec<Option<Activation>> {
    let tables: Vec<HashMap<String, Vec<String>>> = crates.iter().map(|c| features_table(&c.manifest)).collect();
    let mut activations: Vec<Option<Activation>> = vec![None; crates.len()];
    let mut asked: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); crates.len()];
    asked[binary].insert("default".into());
    let mut reached = vec![false; crates.len()];
    reached[binary] = true;
    // Features only grow, so this ends: at the latest when every feature is on.
    loop {
        let mut changed = false;
        for (index, krate) in crates.iter().enumerate() {
            if !reached[index] {
                continue;
            }
            let activation = activate_one(krate, &tables[index], &asked[index]);
            for (dependency, wanted) in krate.dependencies.iter().zip(&activation.dependencies) {
                if let (Source::Path(target), Some(wanted)) = (&dependency.source, wanted) {
                    reached[*target] = true;
                    for feature in wanted {
                        changed |= asked[*target].insert(feature.clone());
                    }
                }
            }
            if activations[index].as_ref() != Some(&activation) {
                activations[index] = Some(activation);
                changed = true;
            }
        }
        if !changed {
            return activations;
        }
    }
}

/// One crate's activation, given the features its dependents ask of it.
fn activate_one(
    krate: &Crate,
    table: &HashMap<String, Vec<String>>,
    asked: &std::collections::BTreeSet<String>,
) -> Activation {
    let optional = |name: &str| krate.dependencies.iter().any(|d| d.optional && d.name == name);
    let mut features = std::collections::BTreeSet::new();
    let mut used: std::collections::BTreeSet<&str> = Default::default();
    let mut extra: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut weak: Vec<(&str, &str)> = Vec::new();
    let mut pending: Vec<&str> = asked.iter().map(String::as_str).collect();
    while let Some(feature) = pending.pop() {
        if !features.insert(feature.to_owned()) {
            continue;
        }
        match table.get(feature) {
            Some(entries) => {
                for entry in entries {
                    match enables(entry) {
                        Enables::Feature(name) => pending.push(name),
                        Enables::Dependency(name) => {
                            used.insert(name);
                        }
                        Enables::DependencyFeature { dependency, feature, weak: false } => {
                            used.insert(dependency);
                            extra.entry(dependency).or_default().push(feature);
                            // `name/feature` of an optional dependency enables its
                            // implicit feature too.
                            if optional(dependency) && !table.contains_key(dependency) {
                                features.insert(dependency.to_owned());
                            }
                        }
                        Enables::DependencyFeature { dependency, feature, weak: true } => {
                            weak.push((dependency, feature));
                        }
                    }
                }
            }
            // An optional dependency's implicit feature.
            None if optional(feature) => {
                used.insert(feature);
            }
            None => {}
        }
    }
    for (dependency, feature) in weak {
        extra.entry(dependency).or_default().push(feature);
    }
    let dependencies = krate
        .dependencies
        .iter()
        .map(|dependency| {
            if dependency.optional && !used.contains(dependency.name.as_str()) {
                return None;
            }
            let mut wanted: std::collections::BTreeSet<String> = dependency.features.iter().cloned().collect();
            if dependency.default_features {
                wanted.insert("default".into());
            }
            wanted.extend(extra.get(dependency.name.as_str()).into_iter().flatten().map(|f| (*f).to_owned()));
            Some(wanted)
        })
        .collect();
    Activation { features, dependencies }
}

/// Removes from a crate's manifest what a build of the binary never needs, so that
/// crates copied from crates.io build as they are: `[dev-dependencies]` (in every
/// target table), `[[bench]]`, `[[test]]` and `[[example]]` targets (and their
/// auto-discovery), and the optional dependencies no enabled feature activates,
/// with every feature entry that names them.
fn drop_unbuilt(manifest: &mut toml_edit::DocumentMut, krate: &Crate, activation: &Activation) {
    let mut dropped: std::collections::BTreeSet<&str> = Default::default();
    for (dependency, used) in krate.dependencies.iter().zip(&activation.dependencies) {
        if used.is_none() {
            remove_at(manifest, &dependency.keys);
            dropped.insert(dependency.name.as_str());
        }
    }
    manifest.remove("dev-dependencies");
    if let Some(targets) = manifest.get_mut("target").and_then(|t| t.as_table_like_mut()) {
        for (_, target) in targets.iter_mut() {
            if let Some(target) = target.as_table_like_mut() {
                target.remove("dev-dependencies");
            }
        }
    }
    for kind in ["bench", "test", "example"] {
        manifest.remove(kind);
    }
    if let Some(package) = manifest.get_mut("package").and_then(|p| p.as_table_like_mut()) {
        for auto in ["autobenches", "autotests", "autoexamples"] {
            package.insert(auto, toml_edit::value(false));
        }
    }
    if dropped.is_empty() {
        return;
    }
    let features = features_table(manifest);
    let names_dropped = |entry: &str| match enables(entry) {
        Enables::Dependency(name) | Enables::DependencyFeature { dependency: name, .. } => dropped.contains(name),
        Enables::Feature(name) => dropped.contains(name) && !features.contains_key(name),
    };
    if let Some(table) = manifest.get_mut("features").and_then(|f| f.as_table_like_mut()) {
        for (_, item) in table.iter_mut() {
            if let Some(array) = item.as_array_mut() {
                array.retain(|v| !v.as_str().is_some_and(names_dropped));
            }
        }
    }
}

fn remove_at(manifest: &mut toml_edit::DocumentMut, keys: &[String]) {
    let Some((last, parents)) = keys.split_last() else { return };
    let mut item = manifest.as_item_mut();
    for key in parents {
        match item.as_table_like_mut().and_then(|t| t.get_mut(key)) {
            Some(next) => item = next,
            None => return,
        }
    }
    if let Some(table) = item.as_table_like_mut() {
        table.remove(last);
    }
}

/// Every registry dependency a build of `krate` uses must be in the set: a crate
/// of its lockfile, at a version the requirement accepts, asking only features
/// the set builds.
fn check_in_set(krate: &Crate, depset: &DepSet) -> Result<(), ProgramError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> ProgramFile {
        ProgramFile { path: path.into(), content: content.as_bytes().to_vec(), executable: false }
    }

    fn manifest(name: &str, deps: &str) -> String {
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")
    }

    fn two_crate_program(ops_source: &str) -> Vec<ProgramFile> {
        vec![
            file("Cargo.toml", &manifest("app", "ops = { path = \"operators/ops\" }\nserde = \"1\"\n")),
            file("src/main.rs", "fn main() { ops::run() }"),
            file("operators/ops/Cargo.toml", &manifest("ops", "")),
            file("operators/ops/src/lib.rs", ops_source),
        ]
    }

    fn parse(files: Vec<ProgramFile>) -> Result<Program, ProgramError> {
        Program::parse(files, &DepSet::embedded())
    }

    /// What decides whether a build may write the shared compile cache: the
    /// program's own build scripts and proc-macros, however the manifest hides them.
    #[test]
    fn code_of_the_submitter_that_runs_at_build_time_is_found() {
        let laid = |files: Vec<ProgramFile>| parse(files).unwrap().layout();
        assert_eq!(laid(two_crate_program("pub fn run() {}")).submitted_code(), None, "only compiled");
        let mut with_build_rs = two_crate_program("pub fn run() {}");
        with_build_rs.push(file("operators/ops/build.rs", "fn main() {}"));
        assert_eq!(laid(with_build_rs).submitted_code().as_deref(), Some("crate ops has a build script"));
        let mut renamed = two_crate_program("pub fn run() {}");
        renamed[2] =
            file("operators/ops/Cargo.toml", &(manifest("ops", "").replace("edition", "build = \"gen.rs\"\nedition")));
        renamed.push(file("operators/ops/gen.rs", "fn main() {}"));
        assert_eq!(laid(renamed).submitted_code().as_deref(), Some("crate ops has a build script"));
        for lib in ["[lib]\nproc-macro = true\n", "[lib]\nproc_macro = true\n"] {
            let mut macro_crate = two_crate_program("pub fn run() {}");
            macro_crate[2] = file("operators/ops/Cargo.toml", &format!("{}\n{lib}", manifest("ops", "")));
            assert_eq!(laid(macro_crate).submitted_code().as_deref(), Some("crate ops is a proc-macro"), "{lib}");
        }
        let mut switched_off = two_crate_program("pub fn run() {}");
        switched_off[2] =
            file("operators/ops/Cargo.toml", &manifest("ops", "").replace("edition", "build = false\nedition"));
        switched_off.push(file("operators/ops/build.rs", "fn main() {}"));
        assert_eq!(laid(switched_off).submitted_code(), None, "build = false: cargo runs no build script");
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "word-count", "etl_2", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Word", "1abc", "a b", "a/b", "ä", &"x".repeat(64)] {
            assert_eq!(validate_name(bad), Err(ProgramError::InvalidName(bad.into())));
        }
    }

    #[test]
    fn package_names_follow_cargo_and_never_make_a_path() {
        for good in ["app", "word-count", "etl_2", "_private", "A1", &"x".repeat(64)] {
            assert_eq!(check_package_name(good), Ok(()), "{good}");
        }
        for bad in [
            "../../escaped",
            "/tmp/x",
            "a/b",
            ".",
            "..",
            "con",
            "COM1",
            "lpt9",
            "x\u{0}",
            "x\0y",
            "",
            "1abc",
            "ä",
            "a b",
            "std",
            "kiln-depset",
            "kiln-pipeline-runtime",
            &"x".repeat(65),
        ] {
            assert!(check_package_name(bad).is_err(), "{bad:?} must be refused");
        }
        // In a program: refused with the manifest, the name and the rule.
        for (name, rule) in [("../../escaped", "ASCII letters"), ("con", "Windows reserves"), ("", "empty")] {
            let files = vec![file("Cargo.toml", &manifest(name, "")), file("src/main.rs", "fn main() {}")];
            let error = parse(files).unwrap_err();
            assert!(matches!(&error, ProgramError::InvalidPackageName { name: n, .. } if n == name), "{error}");
            let text = error.to_string();
            assert!(text.contains("Cargo.toml") && text.contains(rule), "{text}");
        }
        let library = vec![
            file("Cargo.toml", &manifest("app", "x = { path = \"ops\" }")),
            file("src/main.rs", "fn main() {}"),
            file("ops/Cargo.toml", &manifest("/tmp/x", "")),
            file("ops/src/lib.rs", ""),
        ];
        assert!(matches!(parse(library), Err(ProgramError::InvalidPackageName { .. })), "a library's name too");
    }

    #[test]
    fn paths_may_not_escape() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", ""] {
            assert!(matches!(validate_path(bad), Err(ProgramError::PathEscapes(_))), "{bad}");
        }
        assert!(validate_path("operators/ops/src/lib.rs").is_ok());
    }

    #[test]
    fn a_binary_with_an_operator_parses() {
        let program = parse(two_crate_program("pub fn run() {}")).unwrap();
        assert_eq!(program.binary().package, "app");
        assert_eq!(program.crates().len(), 2);
    }

    #[test]
    fn rules_are_named_in_errors() {
        let only_lib = vec![file("Cargo.toml", &manifest("lib", "")), file("src/lib.rs", "")];
        assert!(matches!(parse(only_lib), Err(ProgramError::NoBinary { .. })));

        let mut two = two_crate_program("");
        two.push(file("operators/ops/src/main.rs", "fn main() {}"));
        let error = parse(two).unwrap_err();
        assert!(error.to_string().starts_with("two binary crates"), "{error}");

        let outside = vec![file("Cargo.toml", &manifest("app", "tokio = \"1\"\n")), file("src/main.rs", "")];
        let error = parse(outside).unwrap_err().to_string();
        assert!(error.contains("tokio, which is not in the farm's dependency set"), "{error}");
        assert!(error.contains("serde_json"), "lists what is allowed: {error}");

        let old = vec![file("Cargo.toml", &manifest("app", "serde = \"0.9\"\n")), file("src/main.rs", "")];
        assert!(matches!(parse(old), Err(ProgramError::VersionMismatch { .. })));

        let feature = vec![
            file("Cargo.toml", &manifest("app", "serde = { version = \"1\", features = [\"rc\"] }\n")),
            file("src/main.rs", ""),
        ];
        let error = parse(feature).unwrap_err();
        assert!(matches!(error, ProgramError::FeatureOutsideSet { .. }));
        assert!(
            error.to_string().contains("feature `rc` of serde") && error.to_string().contains("built: "),
            "{error}"
        );

        let git = vec![
            file("Cargo.toml", &manifest("app", "x = { git = \"https://example.com/x\" }\n")),
            file("src/main.rs", ""),
        ];
        assert!(matches!(parse(git), Err(ProgramError::UnsupportedSource { source_kind: "git", .. })));

        let escaping = vec![file("Cargo.toml", &manifest("app", "x = { path = \"../x\" }\n")), file("src/main.rs", "")];
        assert!(matches!(parse(escaping), Err(ProgramError::PathNotACrate { .. })));

        let too_big = vec![
            file("Cargo.toml", &manifest("app", "")),
            file("src/main.rs", &"x".repeat(MAX_PROGRAM_BYTES as usize)),
        ];
        assert!(matches!(parse(too_big), Err(ProgramError::TooLarge { .. })));

        let escaping_file = vec![file("Cargo.toml", &manifest("app", "")), file("../main.rs", "")];
        assert!(matches!(parse(escaping_file), Err(ProgramError::PathEscapes(_))));

        assert_eq!(parse(vec![file("src/main.rs", "")]).unwrap_err(), ProgramError::NoManifest);
    }

    #[test]
    fn cycles_are_refused() {
        let files = vec![
            file("Cargo.toml", &manifest("app", "a = { path = \"a\" }\n")),
            file("src/main.rs", ""),
            file("a/Cargo.toml", &manifest("a", "b = { path = \"../b\" }\n")),
            file("a/src/lib.rs", ""),
            file("b/Cargo.toml", &manifest("b", "a = { path = \"../a\" }\n")),
            file("b/src/lib.rs", ""),
        ];
        assert!(matches!(parse(files), Err(ProgramError::DependencyCycle(_))));
    }

    #[test]
    fn the_same_operator_gets_the_same_address_in_any_program() {
        let first = parse(two_crate_program("pub fn run() {}")).unwrap().layout();
        let mut other = two_crate_program("pub fn run() {}");
        other[1] = file("src/main.rs", "fn main() { ops::run(); ops::run() }");
        let second = parse(other).unwrap().layout();
        assert_eq!(first.crates[0], second.crates[0], "the operator is identical");
        assert_ne!(first.binary().dir_name, second.binary().dir_name);

        let changed = parse(two_crate_program("pub fn run() { println!() }")).unwrap().layout();
        assert_ne!(first.crates[0].dir_name, changed.crates[0].dir_name);
        assert_ne!(first.binary().dir_name, changed.binary().dir_name, "a dependency's change reaches its dependents");
    }

    #[test]
    fn path_dependencies_are_rewritten_to_sibling_addresses() {
        let layout = parse(two_crate_program("pub fn run() {}")).unwrap().layout();
        let ops_dir = &layout.crates[0].dir_name;
        assert!(ops_dir.starts_with("ops-"));
        let manifest = layout.binary().files.iter().find(|f| f.path == "Cargo.toml").unwrap();
        let text = String::from_utf8(manifest.content.clone()).unwrap();
        assert!(text.contains(&format!("path = \"../{ops_dir}\"")), "{text}");
        assert!(
            layout.binary().files.iter().all(|f| !f.path.starts_with("operators/")),
            "nested crates are not copied into the binary"
        );
    }

    #[test]
    fn source_checksum_ignores_submission_order() {
        let files = two_crate_program("");
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(source_sha256(&files), source_sha256(&reversed));
    }

    /// A crate as crates.io publishes it: dev-dependencies, benches, tests and
    /// examples, an optional dependency nothing enables, another one a default
    /// feature enables, and a weak feature.
    const COPIED: &str = r#"[package]
name = "copied"
version = "1.2.3"
edition = "2021"
autobenches = false

[lib]
path = "src/lib.rs"

[[bench]]
name = "speed"
harness = false

[[test]]
name = "integration"

[[example]]
name = "demo"

[features]
default = ["std", "json"]
std = ["serde?/std"]
json = ["dep:serde_json"]
logging = ["dep:log"]
fuzzing = ["arbitrary"]

[dependencies.serde_json]
version = "1"
optional = true

[dependencies.serde]
version = "1"
optional = true
default-features = false

[dependencies.log]
version = "0.4"
optional = true

[dependencies.arbitrary]
version = "1"
optional = true

[dev-dependencies.quickcheck]
version = "1"

[target.'cfg(unix)'.dev-dependencies]
criterion = "0.5"
"#;

    fn copied_program(app_dependency: &str) -> Vec<ProgramFile> {
        vec![
            file("Cargo.toml", &manifest("app", app_dependency)),
            file("src/main.rs", "fn main() {}"),
            file("copied/Cargo.toml", COPIED),
            file("copied/src/lib.rs", ""),
            file("copied/benches/speed.rs", ""),
        ]
    }

    #[test]
    fn a_crate_copied_from_crates_io_builds_as_it_is() {
        let program = parse(copied_program("copied = { path = \"copied\" }\n"))
            .expect("log, arbitrary and the dev-dependencies are not needed");
        let layout = program.layout();
        let copied = layout.crates.iter().find(|c| c.package == "copied").unwrap();
        let text =
            String::from_utf8(copied.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
        let written: toml_edit::DocumentMut = text.parse().unwrap();
        for gone in ["dev-dependencies", "bench", "test", "example"] {
            assert!(written.get(gone).is_none(), "{gone} is dropped: {text}");
        }
        assert!(!text.contains("dev-dependencies") && !text.contains("criterion"), "none in target tables: {text}");
        let dependencies = written["dependencies"].as_table_like().unwrap();
        assert!(dependencies.get("serde_json").is_some(), "json (a default feature) uses it");
        assert!(dependencies.get("log").is_none() && dependencies.get("arbitrary").is_none(), "{text}");
        assert_eq!(
            written["features"]["logging"].as_array().unwrap().len(),
            0,
            "no feature names a dropped dependency"
        );
        assert_eq!(written["features"]["fuzzing"].as_array().unwrap().len(), 0);
        assert!(dependencies.get("serde").is_none(), "a weak `serde?/std` does not use serde: {text}");
        assert_eq!(written["features"]["std"].as_array().unwrap().len(), 0, "{text}");
        assert_eq!(written["package"]["autobenches"].as_bool(), Some(false));
        assert_eq!(written["package"]["autotests"].as_bool(), Some(false));
    }

    #[test]
    fn a_feature_that_activates_an_optional_dependency_is_checked_against_the_set() {
        // `fuzzing` activates arbitrary (through its implicit feature), which the
        // built-in set does not hold.
        let error = parse(copied_program("copied = { path = \"copied\", features = [\"fuzzing\"] }\n")).unwrap_err();
        assert!(
            matches!(&error, ProgramError::OutsideDependencySet { dependency, .. } if dependency == "arbitrary"),
            "{error}"
        );
        // `logging` activates log, which the set holds (tiny_http uses it).
        parse(copied_program("copied = { path = \"copied\", features = [\"logging\"] }\n")).expect("log is in the set");
        // Without default features, serde_json is not used either.
        let program = parse(copied_program("copied = { path = \"copied\", default-features = false }\n")).unwrap();
        let layout = program.layout();
        let copied = layout.crates.iter().find(|c| c.package == "copied").unwrap();
        let text =
            String::from_utf8(copied.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
        assert!(!text.contains("serde_json"), "{text}");
    }

    /// Hostile feature tables: cycles, features naming nothing, a weak feature of a
    /// dependency that does not exist, a feature of a path crate that activates the
    /// binary's own crate back. Parsing ends, and only what is real is checked.
    #[test]
    fn hostile_feature_graphs_end_and_are_judged_on_what_they_use() {
        let ops = "[package]\nname = \"ops\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                   [features]\ndefault = [\"a\"]\na = [\"b\", \"ghost\", \"nobody?/x\"]\nb = [\"a\", \"dep:serde\"]\n\n\
                   [dependencies]\nserde = { version = \"1\", optional = true, features = [\"derive\"] }\n\
                   tokio = { version = \"1\", optional = true }\n";
        let files = vec![
            file("Cargo.toml", &manifest("app", "ops = { path = \"ops\" }\n")),
            file("src/main.rs", "fn main() {}"),
            file("ops/Cargo.toml", ops),
            file("ops/src/lib.rs", ""),
        ];
        let program = parse(files).expect("cycles end; tokio is never activated, so never checked");
        let layout = program.layout();
        let ops = layout.crates.iter().find(|c| c.package == "ops").unwrap();
        let text =
            String::from_utf8(ops.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
        assert!(text.contains("serde") && !text.contains("tokio"), "{text}");

        // The same crate, asked for tokio through a feature, is refused for it.
        let asked = "[package]\nname = \"ops\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                     [features]\ndefault = [\"rt\"]\nrt = [\"tokio/rt\", \"rt\"]\n\n\
                     [dependencies]\ntokio = { version = \"1\", optional = true }\n";
        let files = vec![
            file("Cargo.toml", &manifest("app", "ops = { path = \"ops\" }\n")),
            file("src/main.rs", "fn main() {}"),
            file("ops/Cargo.toml", asked),
            file("ops/src/lib.rs", ""),
        ];
        let error = parse(files).unwrap_err();
        assert!(
            matches!(&error, ProgramError::OutsideDependencySet { dependency, .. } if dependency == "tokio"),
            "{error}"
        );
    }

    #[test]
    fn a_transitive_crate_of_the_set_may_be_used_at_its_features() {
        // serde_derive is in the built-in set's lockfile only as serde's dependency.
        let files = vec![file("Cargo.toml", &manifest("app", "serde_derive = \"1\"\n")), file("src/main.rs", "")];
        parse(files).expect("a crate of the set's lockfile");
        let near = vec![file("Cargo.toml", &manifest("app", "serde_derive = \"=1.0.0\"\n")), file("src/main.rs", "")];
        let error = parse(near).unwrap_err().to_string();
        assert!(
            error.contains("asks for serde_derive =1.0.0, but the farm's dependency set has serde_derive 1."),
            "{error}"
        );
    }
}
