//! The format's limits and names, the checks every file of a program passes, and
//! every error a program can get (each names the rule and says how to fix it).

use sha2::{Digest, Sha256};

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

/// The limits, and every path: relative, inside the program, no duplicates.
pub(super) fn check_files(files: &[ProgramFile]) -> Result<(), ProgramError> {
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
