//! Members that run as a user who is not root (`nobody`), for the tests that show
//! a non-root farm works as a root one does.
//!
//! On this machine the toolchain, cargo's registry, sccache and the test binaries
//! live under `/root`, which is closed to other users (mode 0700). [`NonRoot`]
//! gives the user a home of its own with hard links to them (same file system, so
//! nothing is copied, and the files keep their modes): the toolchain's sysroot (its
//! own `bin/` has cargo and rustc), cargo's registry (the dependency set's sources,
//! for offline builds), `kiln` and `sccache`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user the members run as.
pub const NOBODY: (u32, u32) = (65534, 65534);

#[derive(Debug)]
pub struct NonRoot {
    pub home: tempfile::TempDir,
    pub uid: u32,
    pub gid: u32,
}

fn link_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-al").arg(from).arg(to).status().expect("running cp");
    assert!(status.success(), "hard-linking {} to {}", from.display(), to.display());
}

impl NonRoot {
    /// A home for `nobody` with the toolchain, the registry, `kiln` and `sccache`.
    pub fn prepare(kiln: &Path, sccache: &Path) -> NonRoot {
        let home = tempfile::Builder::new().prefix("kiln-nonroot-").tempdir().expect("a temporary directory");
        let (uid, gid) = NOBODY;
        let output = Command::new("rustc").args(["--print", "sysroot"]).output().expect("running rustc");
        let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        link_tree(&sysroot, &home.path().join("toolchain"));
        let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
        std::fs::create_dir_all(home.path().join("cargo")).unwrap();
        link_tree(&cargo_home.join("registry"), &home.path().join("cargo/registry"));
        std::fs::create_dir_all(home.path().join("bin")).unwrap();
        for program in [kiln, sccache] {
            let name = program.file_name().expect("a program has a file name");
            std::fs::hard_link(program, home.path().join("bin").join(name)).expect("linking a program");
        }
        let nonroot = NonRoot { home, uid, gid };
        nonroot.give(nonroot.home.path());
        for dir in ["cargo", "cargo/registry", "bin"] {
            nonroot.give(&nonroot.home.path().join(dir));
        }
        nonroot
    }

    /// Hands `path` (not what is under it) to the user.
    pub fn give(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("handing {} to uid {}: {e}", path.display(), self.uid));
    }

    /// The user's `kiln`.
    pub fn kiln(&self) -> PathBuf {
        self.home.path().join("bin/kiln")
    }

    pub fn sccache(&self) -> PathBuf {
        self.home.path().join("bin/sccache")
    }

    /// `program args` as the user: setpriv, with the user's home, toolchain and cargo.
    pub fn command(&self, program: &Path, args: &[OsString]) -> (PathBuf, Vec<OsString>, Vec<(OsString, OsString)>) {
        let mut wrapped: Vec<OsString> = vec![
            format!("--reuid={}", self.uid).into(),
            format!("--regid={}", self.gid).into(),
            "--clear-groups".into(),
            "--".into(),
            program.into(),
        ];
        wrapped.extend(args.iter().cloned());
        let home = self.home.path();
        let path = format!("{}:{}:/usr/bin:/bin", home.join("toolchain/bin").display(), home.join("bin").display());
        let env = vec![
            ("HOME".into(), home.into()),
            ("PATH".into(), path.into()),
            ("CARGO_HOME".into(), home.join("cargo").into()),
        ];
        (PathBuf::from("setpriv"), wrapped, env)
    }
}
