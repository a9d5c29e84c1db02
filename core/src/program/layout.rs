//! A program as a worker writes it: content-addressed crate directories,
//! dependencies first, and whether building them runs code of the submitter's.

use super::manifest::CrateKind;
use super::rules::ProgramFile;

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
        // cargo also makes a proc-macro of `crate-type = ["proc-macro"]` (with a
        // warning). Any crate type but those that are only compiled counts.
        let compiled_only = ["lib", "rlib", "dylib", "cdylib", "staticlib"];
        let typed = ["crate-type", "crate_type"].iter().any(|key| {
            lib.and_then(|l| l.get(key)).is_some_and(|v| match v.as_array() {
                Some(types) => types.iter().any(|t| t.as_str().is_none_or(|t| !compiled_only.contains(&t))),
                None => true,
            })
        });
        (proc_macro || typed).then(|| format!("crate {package} is a proc-macro"))
    }
}
