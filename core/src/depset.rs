//! The farm's dependency set: the crates every worker has prebuilt and that pipeline
//! programs may depend on.
//!
//! A set is either Kiln's small built-in one (embedded in the binary from
//! `core/depset/`, its crates taken from cargo's registry cache) or a directory the
//! operator made with `kiln depset create`:
//!
//! ```text
//! DIR/Cargo.toml      the anchor crate `kiln-depset`: the operator's dependencies
//! DIR/Cargo.lock      their exact versions
//! DIR/lib.rs          the anchor's (empty) library
//! DIR/resolved.json   every locked crate with the features the set builds (cargo metadata)
//! DIR/crates/<name>/  path crates of the set (the pipeline runtime, the operator's own)
//! DIR/vendor/<name>-<version>/  the vendored sources of every registry crate (cargo vendor)
//! ```
//!
//! Either way the leader (which validates programs) and the workers (which build
//! them) read the same [`DepSet`], and agree on it by its [`DepSet::fingerprint`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};

/// The built-in set's manifest, written into each worker's build root as `depset/Cargo.toml`.
pub const MANIFEST: &str = include_str!("../depset/manifest.toml");
/// The exact versions of the built-in set.
pub const LOCKFILE: &str = include_str!("../depset/Cargo.lock");
/// The anchor crate's source.
pub const LIB_RS: &str = include_str!("../depset/lib.rs");
/// Every crate of the built-in set's lockfile with the features it builds
/// (`scripts/update-depset` writes it from `cargo metadata`).
pub const RESOLVED: &str = include_str!("../depset/resolved.json");
/// The pipeline runtime crate (`pipeline-runtime/` at the top of the repository):
/// written into every build root beside the anchor crate, and patched in for the
/// name pipelines depend on.
pub const RUNTIME_PACKAGE: &str = "kiln-pipeline-runtime";
/// The runtime's files, relative to its directory. A unit test checks that this
/// list names every file of pipeline-runtime/src.
pub const RUNTIME_FILES: [(&str, &str); 7] = [
    ("Cargo.toml", include_str!("../../pipeline-runtime/Cargo.toml")),
    ("src/lib.rs", include_str!("../../pipeline-runtime/src/lib.rs")),
    ("src/contract.rs", include_str!("../../pipeline-runtime/src/contract.rs")),
    ("src/exchange.rs", include_str!("../../pipeline-runtime/src/exchange.rs")),
    ("src/host.rs", include_str!("../../pipeline-runtime/src/host.rs")),
    ("src/progress.rs", include_str!("../../pipeline-runtime/src/progress.rs")),
    ("src/share.rs", include_str!("../../pipeline-runtime/src/share.rs")),
];
/// The anchor crate's package name, built alongside every pipeline so that cargo
/// unifies features exactly as in the prebuilt set (and so reuses it).
pub const PACKAGE: &str = "kiln-depset";
/// Where a set directory keeps what `cargo metadata` resolved.
pub const RESOLVED_FILE: &str = "resolved.json";
/// Where a set directory keeps its vendored registry crates.
pub const VENDOR_DIR: &str = "vendor";
/// Where a set directory keeps its path crates.
pub const CRATES_DIR: &str = "crates";

/// One locked crate: its version and the features the set builds of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedCrate {
    pub version: semver::Version,
    /// Enabled features, `default` among them when it is enabled.
    pub features: BTreeSet<String>,
    /// Whether the crate declares a `default` feature (asking for default features
    /// of a crate without one asks for nothing).
    pub has_default: bool,
}

/// Where a set's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Kiln's built-in set (registry crates from cargo's cache).
    Embedded,
    /// An operator's set directory, vendored.
    Directory(PathBuf),
}

/// A bad set directory, named and explained.
#[derive(Debug, thiserror::Error)]
pub enum DepSetError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the dependency set {dir}: {reason}")]
    Invalid { dir: String, reason: String },
    #[error(
        "vendored crate {krate} of the dependency set {dir} does not match its lockfile: {reason}. Make the set again with `kiln depset create`"
    )]
    Altered { dir: String, krate: String, reason: String },
}

/// The crates pipelines may depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepSet {
    /// Every package of the lockfile, by name, each version it holds.
    locked: BTreeMap<String, Vec<LockedCrate>>,
    /// The set's direct dependencies, for messages.
    direct: BTreeSet<String>,
    /// Path crates of the set: package name -> directory relative to a build root.
    path_crates: BTreeMap<String, String>,
    fingerprint: String,
    origin: Origin,
    /// The lockfile every build root uses.
    lockfile: String,
}

static EMBEDDED: LazyLock<Arc<DepSet>> = LazyLock::new(|| {
    // The embedded files are part of the build and checked by a unit test below, so a
    // failure here is a broken build of kiln, never bad input.
    let mut hasher = Fingerprint::new();
    for text in [MANIFEST, LOCKFILE, LIB_RS, RESOLVED] {
        hasher.part(text.as_bytes());
    }
    for (path, text) in RUNTIME_FILES {
        hasher.file(path, text.as_bytes());
    }
    let path_crates = BTreeMap::from([(RUNTIME_PACKAGE.to_owned(), "pipeline-runtime".to_owned())]);
    Arc::new(
        DepSet::parse(MANIFEST, LOCKFILE, RESOLVED, path_crates, hasher.finish(), Origin::Embedded)
            .expect("the embedded dependency set is valid"),
    )
});

/// A set's fingerprint: SHA-256 over its parts, each length-prefixed.
struct Fingerprint(Sha256);

impl Fingerprint {
    fn new() -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(b"kiln-depset-v1\0");
        Fingerprint(hasher)
    }

    fn part(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn file(&mut self, path: &str, bytes: &[u8]) {
        self.part(path.as_bytes());
        self.part(bytes);
    }

    fn finish(self) -> String {
        hex::encode(&self.0.finalize()[..16])
    }
}

fn read(path: &Path) -> Result<String, DepSetError> {
    std::fs::read_to_string(path)
        .map_err(|e| DepSetError::Unreadable { path: path.display().to_string(), reason: e.to_string() })
}

/// The files of a directory, relative, '/'-separated, sorted.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>, DepSetError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry =
            entry.map_err(|e| DepSetError::Unreadable { path: dir.display().to_string(), reason: e.to_string() })?;
        if entry.file_type().is_file() {
            let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path()).to_string_lossy().into_owned();
            files.push((relative, entry.into_path()));
        }
    }
    files.sort();
    Ok(files)
}

impl DepSet {
    /// Kiln's built-in set.
    pub fn embedded() -> Arc<DepSet> {
        EMBEDDED.clone()
    }

    /// An operator's set directory (made with `kiln depset create`), read and
    /// fingerprinted. Does not verify the vendored sources: [`verify_vendored`] does.
    pub fn load(dir: &Path) -> Result<DepSet, DepSetError> {
        let invalid = |reason: String| DepSetError::Invalid { dir: dir.display().to_string(), reason };
        if !dir.join("Cargo.toml").is_file() {
            return Err(invalid(
                "it has no Cargo.toml: a dependency set is a directory made with `kiln depset create MANIFEST -o DIR`"
                    .into(),
            ));
        }
        let manifest = read(&dir.join("Cargo.toml"))?;
        let lockfile = read(&dir.join("Cargo.lock"))?;
        let lib = read(&dir.join("lib.rs"))?;
        let resolved = read(&dir.join(RESOLVED_FILE))?;
        let mut hasher = Fingerprint::new();
        for text in [&manifest, &lockfile, &lib, &resolved] {
            hasher.part(text.as_bytes());
        }
        let mut path_crates = BTreeMap::new();
        let crates_dir = dir.join(CRATES_DIR);
        if crates_dir.is_dir() {
            for (relative, path) in files_under(&crates_dir)? {
                let bytes = std::fs::read(&path)
                    .map_err(|e| DepSetError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
                hasher.file(&format!("{CRATES_DIR}/{relative}"), &bytes);
                if let Some(crate_dir) = relative.strip_suffix("/Cargo.toml")
                    && !crate_dir.contains('/')
                {
                    let text = String::from_utf8_lossy(&bytes);
                    let name = package_name(&text)
                        .ok_or_else(|| invalid(format!("{CRATES_DIR}/{relative} has no [package] name")))?;
                    path_crates.insert(name, format!("depset/{CRATES_DIR}/{crate_dir}"));
                }
            }
        }
        let vendor = dir.join(VENDOR_DIR);
        if vendor.is_dir() {
            let mut crates: Vec<_> = std::fs::read_dir(&vendor)
                .map_err(|e| DepSetError::Unreadable { path: vendor.display().to_string(), reason: e.to_string() })?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            crates.sort();
            for name in crates {
                let checksums = vendor.join(&name).join(".cargo-checksum.json");
                hasher.file(&name, read(&checksums)?.as_bytes());
            }
        }
        DepSet::parse(&manifest, &lockfile, &resolved, path_crates, hasher.finish(), Origin::Directory(dir.to_owned()))
            .map_err(invalid)
    }

    /// Reads the set from its manifest, lockfile and resolved features.
    fn parse(
        manifest: &str,
        lockfile: &str,
        resolved: &str,
        path_crates: BTreeMap<String, String>,
        fingerprint: String,
        origin: Origin,
    ) -> Result<DepSet, String> {
        let manifest: toml_edit::DocumentMut = manifest.parse().map_err(|e| format!("Cargo.toml: {e}"))?;
        let lock: toml_edit::DocumentMut = lockfile.parse().map_err(|e| format!("Cargo.lock: {e}"))?;
        let resolved: Resolved = serde_json::from_str(resolved).map_err(|e| format!("{RESOLVED_FILE}: {e}"))?;
        let mut features: BTreeMap<(String, String), &ResolvedPackage> = BTreeMap::new();
        for package in &resolved.packages {
            features.insert((package.name.clone(), package.version.clone()), package);
        }
        let mut locked: BTreeMap<String, Vec<LockedCrate>> = BTreeMap::new();
        for package in lock.get("package").and_then(|p| p.as_array_of_tables()).into_iter().flatten() {
            let (Some(name), Some(version)) =
                (package.get("name").and_then(|v| v.as_str()), package.get("version").and_then(|v| v.as_str()))
            else {
                continue;
            };
            let parsed = semver::Version::parse(version).map_err(|e| format!("Cargo.lock: version of {name}: {e}"))?;
            // A locked crate no resolve reaches (a platform's own, say) builds with no feature.
            let (enabled, has_default) = match features.get(&(name.to_owned(), version.to_owned())) {
                Some(p) => (p.features.iter().cloned().collect(), p.has_default),
                None => (BTreeSet::new(), false),
            };
            locked.entry(name.to_owned()).or_default().push(LockedCrate {
                version: parsed,
                features: enabled,
                has_default,
            });
        }
        for versions in locked.values_mut() {
            versions.sort_by(|a, b| a.version.cmp(&b.version));
        }
        let deps =
            manifest.get("dependencies").and_then(|d| d.as_table_like()).ok_or("Cargo.toml has no [dependencies]")?;
        let mut direct = BTreeSet::new();
        for (name, item) in deps.iter() {
            let real = item.as_table_like().and_then(|t| t.get("package")).and_then(|p| p.as_str()).unwrap_or(name);
            if !locked.contains_key(real) {
                return Err(format!(
                    "dependency {real} is not in Cargo.lock: make the set again (`kiln depset create`, or scripts/update-depset for the built-in one)"
                ));
            }
            direct.insert(real.to_owned());
        }
        Ok(DepSet { locked, direct, path_crates, fingerprint, origin, lockfile: lockfile.to_owned() })
    }

    /// The versions of `name` the set holds, oldest first.
    pub fn versions(&self, name: &str) -> &[LockedCrate] {
        self.locked.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The newest locked version of `name` that `requirement` accepts.
    pub fn matching(&self, name: &str, requirement: &semver::VersionReq) -> Option<&LockedCrate> {
        self.versions(name).iter().rev().find(|c| requirement.matches(&c.version))
    }

    /// Every crate name of the lockfile.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locked.keys().map(String::as_str)
    }

    /// The set's direct dependencies (what the operator named).
    pub fn direct(&self) -> impl Iterator<Item = &str> {
        self.direct.iter().map(String::as_str)
    }

    /// Path crates of the set: (package, directory relative to a build root).
    pub fn path_crates(&self) -> impl Iterator<Item = (&str, &str)> {
        self.path_crates.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A hash of the manifest, the lockfile, the resolved features, the path crates
    /// and the vendored checksums: two members with the same fingerprint build
    /// against the same sources.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn lockfile(&self) -> &str {
        &self.lockfile
    }

    /// The fingerprint, short, for messages.
    pub fn short_fingerprint(&self) -> &str {
        &self.fingerprint[..self.fingerprint.len().min(12)]
    }
}

fn package_name(manifest: &str) -> Option<String> {
    let manifest: toml_edit::DocumentMut = manifest.parse().ok()?;
    manifest.get("package")?.get("name")?.as_str().map(str::to_owned)
}

/// What `resolved.json` holds: the features `cargo metadata` resolved for the set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    pub packages: Vec<ResolvedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
    pub has_default: bool,
}

impl Resolved {
    /// Reads the output of `cargo metadata --format-version 1`: every package of the
    /// resolve with its enabled features, sorted.
    pub fn from_metadata(metadata: &serde_json::Value) -> Result<Resolved, String> {
        let mut declared: BTreeMap<&str, (&str, &str, bool)> = BTreeMap::new();
        for package in metadata["packages"].as_array().ok_or("cargo metadata has no packages")? {
            let (Some(id), Some(name), Some(version)) =
                (package["id"].as_str(), package["name"].as_str(), package["version"].as_str())
            else {
                continue;
            };
            let has_default = package["features"].as_object().is_some_and(|f| f.contains_key("default"));
            declared.insert(id, (name, version, has_default));
        }
        let mut packages = Vec::new();
        for node in metadata["resolve"]["nodes"].as_array().ok_or("cargo metadata has no resolve")? {
            let Some(&(name, version, has_default)) = node["id"].as_str().and_then(|id| declared.get(id)) else {
                continue;
            };
            let mut features: Vec<String> = node["features"]
                .as_array()
                .map(|f| f.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect())
                .unwrap_or_default();
            features.sort();
            packages.push(ResolvedPackage {
                name: name.to_owned(),
                version: version.to_owned(),
                features,
                has_default,
            });
        }
        packages.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(Resolved { packages })
    }
}

/// Checks every vendored registry crate of a set directory against its lockfile:
/// present, its package checksum the lockfile's, every file hashing as
/// `.cargo-checksum.json` says, and no file that it does not list. Names the first
/// crate that fails.
pub fn verify_vendored(dir: &Path) -> Result<usize, DepSetError> {
    let altered = |krate: &str, reason: String| DepSetError::Altered {
        dir: dir.display().to_string(),
        krate: krate.to_owned(),
        reason,
    };
    let lock: toml_edit::DocumentMut = read(&dir.join("Cargo.lock"))?
        .parse()
        .map_err(|e| DepSetError::Invalid { dir: dir.display().to_string(), reason: format!("Cargo.lock: {e}") })?;
    let mut count = 0;
    for package in lock.get("package").and_then(|p| p.as_array_of_tables()).into_iter().flatten() {
        let source = package.get("source").and_then(|v| v.as_str()).unwrap_or("");
        if !source.starts_with("registry+") {
            continue;
        }
        let name = package.get("name").and_then(|v| v.as_str()).unwrap_or("?");
        let version = package.get("version").and_then(|v| v.as_str()).unwrap_or("?");
        let krate = format!("{name} {version}");
        let crate_dir = dir.join(VENDOR_DIR).join(format!("{name}-{version}"));
        let checksums = read(&crate_dir.join(".cargo-checksum.json"))
            .map_err(|_| altered(&krate, format!("{} is missing", crate_dir.display())))?;
        let checksums: serde_json::Value =
            serde_json::from_str(&checksums).map_err(|e| altered(&krate, format!(".cargo-checksum.json: {e}")))?;
        let locked = package.get("checksum").and_then(|v| v.as_str());
        if locked.is_some() && checksums["package"].as_str() != locked {
            return Err(altered(&krate, "its package checksum differs from Cargo.lock's".into()));
        }
        let listed = checksums["files"].as_object().ok_or_else(|| altered(&krate, "no file list".into()))?;
        let on_disk = files_under(&crate_dir)?;
        for (relative, path) in &on_disk {
            if relative == ".cargo-checksum.json" {
                continue;
            }
            let Some(expected) = listed.get(relative).and_then(|v| v.as_str()) else {
                return Err(altered(&krate, format!("{relative} was added")));
            };
            let bytes = std::fs::read(path)
                .map_err(|e| DepSetError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
            if hex::encode(Sha256::digest(&bytes)) != expected {
                return Err(altered(&krate, format!("{relative} was changed")));
            }
        }
        let present: std::collections::HashSet<&str> = on_disk.iter().map(|(r, _)| r.as_str()).collect();
        if let Some(missing) = listed.keys().find(|f| !present.contains(f.as_str())) {
            return Err(altered(&krate, format!("{missing} is missing")));
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_names_its_crates_with_locked_versions_and_features() {
        let set = DepSet::embedded();
        let serde = set.matching("serde", &"1".parse().unwrap()).expect("serde is in the set");
        assert_eq!(serde.version.major, 1);
        assert!(serde.features.contains("derive"), "{serde:?}");
        assert!(set.matching("serde_json", &"1".parse().unwrap()).is_some());
        assert!(set.versions("tokio").is_empty());
        assert!(set.direct().any(|d| d == "anyhow"));
        // A transitive crate is in the set too.
        assert!(set.names().any(|n| n == "serde_derive"), "{:?}", set.names().collect::<Vec<_>>());
        assert_eq!(set.fingerprint().len(), 32);
    }

    #[test]
    fn the_runtime_is_in_the_set_and_embedded_whole() {
        let set = DepSet::embedded();
        let runtime = set.matching(RUNTIME_PACKAGE, &"0.1".parse().unwrap()).expect("the runtime is in the set");
        assert_eq!(runtime.version.major, 0);
        assert_eq!(set.path_crates().collect::<Vec<_>>(), [(RUNTIME_PACKAGE, "pipeline-runtime")]);
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline-runtime/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> =
            RUNTIME_FILES.iter().map(|(p, _)| p.to_string()).filter(|p| p.starts_with("src/")).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "RUNTIME_FILES must list every file of pipeline-runtime/src");
    }

    #[test]
    fn a_dependency_missing_from_the_lockfile_is_reported() {
        let manifest = "[package]\nname='x'\n[dependencies]\nfoo = \"1\"\n";
        let error = DepSet::parse(
            manifest,
            "version = 4\n",
            "{\"packages\":[]}",
            BTreeMap::new(),
            String::new(),
            Origin::Embedded,
        )
        .unwrap_err();
        assert!(error.contains("foo is not in Cargo.lock"), "{error}");
    }

    fn write_set(dir: &Path) {
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"kiln-depset\"\n[dependencies]\nitoa = \"1\"\n")
            .unwrap();
        let content = b"pub fn f() {}\n";
        let file_sum = hex::encode(Sha256::digest(content));
        std::fs::write(
            dir.join("Cargo.lock"),
            "version = 4\n[[package]]\nname = \"itoa\"\nversion = \"1.0.1\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"abc\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("lib.rs"), "").unwrap();
        std::fs::write(
            dir.join(RESOLVED_FILE),
            r#"{"packages":[{"name":"itoa","version":"1.0.1","features":["default","std"],"has_default":true}]}"#,
        )
        .unwrap();
        let vendored = dir.join("vendor/itoa-1.0.1/src");
        std::fs::create_dir_all(&vendored).unwrap();
        std::fs::write(vendored.join("lib.rs"), content).unwrap();
        std::fs::write(
            dir.join("vendor/itoa-1.0.1/.cargo-checksum.json"),
            format!(r#"{{"files":{{"src/lib.rs":"{file_sum}"}},"package":"abc"}}"#),
        )
        .unwrap();
    }

    #[test]
    fn a_set_directory_is_read_and_fingerprinted_and_an_altered_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path());
        let set = DepSet::load(dir.path()).unwrap();
        let itoa = set.matching("itoa", &"1".parse().unwrap()).unwrap();
        assert!(itoa.features.contains("std") && itoa.has_default);
        assert_eq!(verify_vendored(dir.path()).unwrap(), 1);
        assert_eq!(DepSet::load(dir.path()).unwrap().fingerprint(), set.fingerprint(), "stable");

        std::fs::write(dir.path().join("vendor/itoa-1.0.1/src/lib.rs"), "pub fn evil() {}\n").unwrap();
        let error = verify_vendored(dir.path()).unwrap_err().to_string();
        assert!(error.contains("itoa 1.0.1") && error.contains("src/lib.rs was changed"), "{error}");
        std::fs::write(dir.path().join("vendor/itoa-1.0.1/src/lib.rs"), "pub fn f() {}\n").unwrap();
        std::fs::write(dir.path().join("vendor/itoa-1.0.1/src/extra.rs"), "").unwrap();
        let error = verify_vendored(dir.path()).unwrap_err().to_string();
        assert!(error.contains("src/extra.rs was added"), "{error}");
    }

    #[test]
    fn resolved_features_come_from_cargo_metadata() {
        let metadata = serde_json::json!({
            "packages": [
                {"id": "a 1.0.0", "name": "a", "version": "1.0.0", "features": {"default": ["std"], "std": []}},
                {"id": "b 2.0.0", "name": "b", "version": "2.0.0", "features": {}}
            ],
            "resolve": {"nodes": [
                {"id": "b 2.0.0", "features": []},
                {"id": "a 1.0.0", "features": ["std", "default"]}
            ]}
        });
        let resolved = Resolved::from_metadata(&metadata).unwrap();
        assert_eq!(resolved.packages[0].name, "a");
        assert_eq!(resolved.packages[0].features, ["default", "std"]);
        assert!(resolved.packages[0].has_default && !resolved.packages[1].has_default);
    }
}
