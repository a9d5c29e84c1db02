//! The farm's dependency set: the registry crates every worker has prebuilt and that
//! pipeline programs may depend on. Its manifest and lockfile live in
//! `core/depset/` and are embedded here, so the leader (which validates
//! programs) and every worker (which builds them) agree on one set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// The dependency set's manifest, written into each worker's build root as `depset/Cargo.toml`.
pub const MANIFEST: &str = include_str!("../depset/manifest.toml");
/// The exact versions of the set; every build uses this lockfile.
pub const LOCKFILE: &str = include_str!("../depset/Cargo.lock");
/// The anchor crate's source.
pub const LIB_RS: &str = include_str!("../depset/lib.rs");
/// The pipeline runtime crate (`pipeline-runtime/` at the top of the repository):
/// written into every build root beside the anchor crate, and patched in for the
/// name pipelines depend on.
pub const RUNTIME_PACKAGE: &str = "kiln-pipeline-runtime";
/// The runtime's files, relative to its directory. A unit test checks that this
/// list names every file of pipeline-runtime/src.
pub const RUNTIME_FILES: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("../../pipeline-runtime/Cargo.toml")),
    ("src/lib.rs", include_str!("../../pipeline-runtime/src/lib.rs")),
    ("src/contract.rs", include_str!("../../pipeline-runtime/src/contract.rs")),
    ("src/exchange.rs", include_str!("../../pipeline-runtime/src/exchange.rs")),
    ("src/host.rs", include_str!("../../pipeline-runtime/src/host.rs")),
    ("src/share.rs", include_str!("../../pipeline-runtime/src/share.rs")),
];
/// The anchor crate's package name, built alongside every pipeline so that cargo
/// unifies features exactly as in the prebuilt set (and so reuses it).
pub const PACKAGE: &str = "kiln-depset";

/// One crate of the set: the locked version and the features the set enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepSetCrate {
    pub version: semver::Version,
    pub features: BTreeSet<String>,
    pub default_features: bool,
}

/// The crates pipelines may depend on, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepSet {
    crates: BTreeMap<String, DepSetCrate>,
}

static EMBEDDED: LazyLock<DepSet> = LazyLock::new(|| {
    // The embedded files are part of the build and checked by a unit test below, so a
    // failure here is a broken build of kiln, never bad input.
    DepSet::parse(MANIFEST, LOCKFILE).expect("the embedded dependency set is valid")
});

impl DepSet {
    /// The set this binary was built with.
    pub fn embedded() -> &'static DepSet {
        &EMBEDDED
    }

    pub fn get(&self, name: &str) -> Option<&DepSetCrate> {
        self.crates.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.crates.keys().map(String::as_str)
    }

    /// Reads the set's direct dependencies from its manifest and their exact versions
    /// from the lockfile.
    pub fn parse(manifest: &str, lockfile: &str) -> Result<DepSet, String> {
        let manifest: toml_edit::DocumentMut = manifest.parse().map_err(|e| format!("depset manifest: {e}"))?;
        let lock: toml_edit::DocumentMut = lockfile.parse().map_err(|e| format!("depset lockfile: {e}"))?;
        let mut locked: BTreeMap<String, Vec<semver::Version>> = BTreeMap::new();
        if let Some(packages) = lock.get("package").and_then(|p| p.as_array_of_tables()) {
            for package in packages {
                let (Some(name), Some(version)) =
                    (package.get("name").and_then(|v| v.as_str()), package.get("version").and_then(|v| v.as_str()))
                else {
                    continue;
                };
                let version =
                    semver::Version::parse(version).map_err(|e| format!("depset lockfile: version of {name}: {e}"))?;
                locked.entry(name.to_owned()).or_default().push(version);
            }
        }
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table_like())
            .ok_or("depset manifest has no [dependencies]")?;
        let mut crates = BTreeMap::new();
        for (name, item) in deps.iter() {
            let (req, features, default_features) = match item.as_str() {
                Some(req) => (req.to_owned(), BTreeSet::new(), true),
                None => {
                    let table = item
                        .as_table_like()
                        .ok_or_else(|| format!("depset dependency {name} is neither a version nor a table"))?;
                    let req = table
                        .get("version")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| format!("depset dependency {name} has no version"))?;
                    let features = table
                        .get("features")
                        .and_then(|f| f.as_array())
                        .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect())
                        .unwrap_or_default();
                    let default_features = table.get("default-features").and_then(|v| v.as_bool()).unwrap_or(true);
                    (req.to_owned(), features, default_features)
                }
            };
            let req = semver::VersionReq::parse(&req)
                .map_err(|e| format!("depset dependency {name}: version {req:?}: {e}"))?;
            let version = locked
                .get(name)
                .and_then(|versions| versions.iter().filter(|v| req.matches(v)).max())
                .ok_or_else(|| format!("depset dependency {name} is not in the lockfile: run scripts/update-depset"))?
                .clone();
            crates.insert(name.to_owned(), DepSetCrate { version, features, default_features });
        }
        Ok(DepSet { crates })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_names_its_crates_with_locked_versions() {
        let set = DepSet::embedded();
        let serde = set.get("serde").expect("serde is in the set");
        assert_eq!(serde.version.major, 1);
        assert!(serde.features.contains("derive"));
        assert!(set.get("serde_json").is_some());
        assert!(set.get("tokio").is_none());
    }

    #[test]
    fn the_runtime_is_in_the_set_and_embedded_whole() {
        let runtime = DepSet::embedded().get(RUNTIME_PACKAGE).expect("the runtime is in the set");
        assert_eq!(runtime.version.major, 0);
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
        let error = DepSet::parse(manifest, "version = 4\n").unwrap_err();
        assert!(error.contains("foo is not in the lockfile"), "{error}");
    }
}
