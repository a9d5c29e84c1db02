//! The worker's trust boundary: the sandbox ([`Sandbox`], here), what a build's
//! writable space is and how it is renewed ([`target`]), every file operation of
//! the member in it ([`files`]), the build's cgroup ([`cgroup`]), its first program
//! ([`init`]) and the cache gateway ([`gateway`]), the only way out of it.
//!
//! The build sandbox: every cargo run of a worker happens inside bubblewrap
//! (`bwrap`, the tool sccache-dist sandboxes its compiles with), as an unprivileged
//! build user, in its own mount, PID, network, IPC and UTS namespaces.
//!
//! What a build sees is an allowlist, mounted read-only unless said otherwise:
//! the system (`/usr`, `/etc`, the `/bin`-style links), the Rust toolchain (its
//! sysroot only, not rustup's or cargo's homes), cargo's registry cache (the
//! dependency set's sources), and of the build root only the workspace manifest,
//! the dependency set, the runtime and this program's own crates (no other
//! program's sources); and, writable, the build root's `target/`,
//! a private copy of the workspace's `Cargo.lock`, a fresh `/tmp`, and the cache
//! gateway's socket. Nothing else of the member: no data directory, catalog,
//! artifacts, tokens or credentials; its `/proc` shows only its own processes.
//!
//! sccache's servers run in sandboxes too: a build that runs submitted code starts
//! its own inside its sandbox (see [`init`]), any other compiles through the
//! member's long-lived server, in a sandbox of its own of the same shape (see
//! [`cache_server`]): so every compile, and every proc-macro, is confined like a
//! build script.
//! Paths inside are the paths outside, so that cache keys (which hold the working
//! directory) are the same on every worker and in CI.
//!
//! **Invariant:** the PID namespace's init is bubblewrap's, with
//! `--die-with-parent`: when the build ends, is cancelled, times out, or its worker
//! dies, every process it started ends, `setsid()` or double fork included.

pub mod cache_server;
pub mod cgroup;
pub mod files;
pub mod gateway;
pub mod init;
pub mod target;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Whether builds are sandboxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxMode {
    /// Sandbox every build; refuse to build when the sandbox cannot be made.
    Auto,
    /// Build without a sandbox (reported in `/cluster_healthz`).
    Off,
}

/// How a member's builds are isolated, as it reports it.
#[derive(Debug, Clone)]
pub enum SandboxState {
    On(Sandbox),
    Off,
    Unavailable(String),
}

impl SandboxState {
    /// Whether this member may build.
    pub fn ready(&self) -> bool {
        !matches!(self, SandboxState::Unavailable(_))
    }

    pub fn describe(&self) -> String {
        match self {
            SandboxState::On(sandbox) => sandbox.describe(),
            SandboxState::Off => "sandbox: off (--sandbox=off): builds run as the member's own user".into(),
            SandboxState::Unavailable(why) => format!(
                "sandbox: unavailable, because {why}; this member refuses to build (start it with --sandbox=off to build without one)"
            ),
        }
    }
}

/// What is needed to make the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The build user and group, when the member runs as root.
    pub build_uid: u32,
    pub build_gid: u32,
    /// The member's build cgroup's name, and the build's memory and processes.
    pub group_name: String,
    pub memory_bytes: u64,
    pub processes: u64,
}

/// A sandbox that works on this machine.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    setpriv: Option<PathBuf>,
    /// The user builds run as, outside the sandbox's namespaces.
    pub build_uid: u32,
    pub build_gid: u32,
    /// The toolchain's sysroot (its `bin/` has cargo and rustc).
    pub sysroot: PathBuf,
    /// cargo's home outside: only its registry cache is shown.
    pub cargo_home: PathBuf,
    /// The member's build cgroup, or why there is none.
    pub group: Result<cgroup::BuildGroup, String>,
}

/// One sandboxed run: what it may write besides `target/`.
#[derive(Debug, Clone)]
pub struct Mounts {
    pub build_root: PathBuf,
    /// This program's crate directories under `src/`: the only ones it sees.
    pub crates: Vec<String>,
    /// Or a directory of the member's shown as `src/` (the long-lived cache
    /// server's view, whose contents the member renews for each build).
    pub sources: Option<PathBuf>,
    /// For cargo: a private copy of the workspace lock file, which cargo rewrites,
    /// shown with the workspace manifest. None: neither is shown (the cache
    /// server's sandbox, which only compiles).
    pub lockfile: Option<PathBuf>,
    /// The member's directory (or sized tmpfs) shown as the build's `/tmp`.
    pub tmp: PathBuf,
    /// Files the build writes or connects to, shown at their own paths: the cache
    /// gateway's socket, the file its cache statistics go to.
    pub writable: Vec<PathBuf>,
    /// Programs the build runs besides the toolchain (its first program, sccache),
    /// shown read-only at their own paths.
    pub programs: Vec<PathBuf>,
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Sandbox {
    /// Makes the sandbox, or says why it cannot be made here: finds bubblewrap (and,
    /// for a root member, `setpriv` to become the build user), the toolchain, and
    /// runs `true` in a sandbox of the same shape as a build's.
    pub async fn probe(settings: &SandboxSettings) -> Result<Sandbox, String> {
        let bwrap = resolve(&settings.bwrap).ok_or_else(|| {
            format!("bubblewrap ({}) is not installed: apt-get install bubblewrap", settings.bwrap.display())
        })?;
        let setpriv = if is_root() {
            Some(resolve(Path::new("setpriv")).ok_or("setpriv (util-linux) is not installed")?)
        } else {
            None
        };
        let sysroot = sysroot().await.map_err(|e| format!("{e:#}"))?;
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"));
        let group = if is_root() {
            cgroup::BuildGroup::make(&settings.group_name, settings.memory_bytes, settings.processes)
        } else {
            Err("the member is not root".to_owned())
        };
        let sandbox = Sandbox {
            bwrap,
            setpriv,
            build_uid: settings.build_uid,
            build_gid: settings.build_gid,
            sysroot,
            cargo_home,
            group,
        };
        let scratch = tempfile::tempdir().map_err(|e| format!("a scratch directory for the probe: {e}"))?;
        let lockfile = scratch.path().join("Cargo.lock");
        std::fs::write(&lockfile, "").map_err(|e| e.to_string())?;
        let tmp = scratch.path().join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(|e| e.to_string())?;
        let mounts = Mounts {
            build_root: scratch.path().to_owned(),
            crates: Vec::new(),
            sources: None,
            lockfile: Some(lockfile),
            tmp,
            writable: Vec::new(),
            programs: Vec::new(),
        };
        std::fs::create_dir_all(scratch.path().join("target")).map_err(|e| e.to_string())?;
        let mut probe = sandbox.command(&mounts, Path::new("true"), &[]);
        probe.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let output = probe.output().await.map_err(|e| format!("running {}: {e}", sandbox.bwrap.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} cannot make a sandbox here ({}): {}",
                sandbox.bwrap.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(sandbox)
    }

    pub fn describe(&self) -> String {
        let limits = match &self.group {
            Ok(group) => format!("memory and processes bounded per build by {}", group.describe()),
            Err(why) => format!(
                "memory and processes bounded per process only (rlimits; no build cgroup, because {why}: memfd and shm escape the memory limit, and the process limit is per uid)"
            ),
        };
        match &self.setpriv {
            Some(_) => format!(
                "sandbox: on (bubblewrap; build user {}:{}, its own; no network; own mount, PID, IPC and UTS namespaces; {limits})",
                self.build_uid, self.build_gid
            ),
            None => format!(
                "sandbox: on (bubblewrap in a user namespace; builds share the member's uid; no network; own mount, PID, IPC and UTS namespaces; {limits})"
            ),
        }
    }

    /// The user that must own what a build writes (`target/`, the lock copy).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.setpriv.as_ref().map(|_| (self.build_uid, self.build_gid))
    }

    /// `program args` inside the sandbox, with only the toolchain's environment.
    pub fn command(&self, mounts: &Mounts, program: &Path, args: &[OsString]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bwrap);
        command.env_clear().args(self.bwrap_args(mounts));
        if let Some(setpriv) = &self.setpriv {
            command.arg(setpriv).args([
                format!("--reuid={}", self.build_uid),
                format!("--regid={}", self.build_gid),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--bounding-set=-all".into(),
                "--no-new-privs".into(),
                "--".into(),
            ]);
        }
        command.arg(program).args(args);
        command
    }

    fn bwrap_args(&self, mounts: &Mounts) -> Vec<OsString> {
        let mut a = BwrapArgs::default();
        a.flags(&["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]);
        a.flags(&["--die-with-parent", "--new-session"]);
        if self.setpriv.is_some() {
            // Only to become the build user; setpriv drops them, and every other one.
            a.flags(&["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]);
        } else {
            a.flags(&["--unshare-user", "--disable-userns"]);
        }
        a.mount("--ro-bind", Path::new("/usr"), Path::new("/usr"));
        // Of /etc only what compilers and linkers read: secrets mounted under /etc
        // (the chart's /etc/kiln) are never in a build's view.
        for file in ETC_FOR_BUILDS {
            let path = Path::new("/etc").join(file);
            a.mount("--ro-bind-try", &path, &path);
        }
        for link in ["/bin", "/sbin", "/lib", "/lib64", "/lib32"] {
            a.mount("--ro-bind-try", Path::new(link), Path::new(link));
        }
        a.flags(&["--proc", "/proc", "--dev", "/dev", "--bind"]);
        a.path(&mounts.tmp);
        a.flag("/tmp");
        a.mount("--ro-bind", &self.sysroot, &self.sysroot);
        let registry = self.cargo_home.join("registry");
        a.mount("--ro-bind-try", &registry, &registry);
        // Of the build root: the workspace manifest, the dependency set, the runtime
        // and this program's own crates; no other program's sources, and not the
        // pristine prebuilt set (target/ links to it).
        let root = &mounts.build_root;
        if mounts.lockfile.is_some() {
            a.mount("--ro-bind-try", &root.join("Cargo.toml"), &root.join("Cargo.toml"));
        }
        // `.cargo/config.toml` points cargo at a vendored set's sources.
        for shared in ["depset", "pipeline-runtime", ".cargo"] {
            a.mount("--ro-bind-try", &root.join(shared), &root.join(shared));
        }
        for krate in &mounts.crates {
            let dir = root.join("src").join(krate);
            a.mount("--ro-bind", &dir, &dir);
        }
        if let Some(view) = &mounts.sources {
            a.mount("--ro-bind", view, &root.join("src"));
        }
        let target = root.join("target");
        a.mount("--bind", &target, &target);
        if let Some(lockfile) = &mounts.lockfile {
            a.mount("--bind", lockfile, &root.join("Cargo.lock"));
        }
        for file in &mounts.writable {
            a.mount("--bind", file, file);
        }
        for program in &mounts.programs {
            a.mount("--ro-bind", program, program);
        }
        a.flag("--chdir");
        a.path(&mounts.build_root);
        let path = format!("{}:/usr/bin:/bin", self.sysroot.join("bin").display());
        a.setenv("PATH", path.as_ref());
        a.setenv("HOME", "/tmp".as_ref());
        a.setenv("TMPDIR", "/tmp".as_ref());
        a.setenv("CARGO_HOME", self.cargo_home.as_os_str());
        a.0
    }
}

/// What a build sees of `/etc`: the dynamic loader's cache, the `alternatives`
/// links (`cc`, `ld` and friends on Debian), user and host names, the time zone.
pub const ETC_FOR_BUILDS: [&str; 10] = [
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "localtime",
    "os-release",
];

/// bubblewrap's command line. Every mount point's parents are made first with
/// mode 0755 (bubblewrap would make them 0700, closed to the build user).
#[derive(Default)]
struct BwrapArgs(Vec<OsString>, std::collections::BTreeSet<PathBuf>, Vec<PathBuf>);

impl BwrapArgs {
    fn flag(&mut self, flag: &str) {
        self.0.push(flag.into());
    }

    fn flags(&mut self, flags: &[&str]) {
        flags.iter().for_each(|f| self.flag(f));
    }

    fn path(&mut self, path: &Path) {
        self.0.push(path.as_os_str().to_owned());
    }

    fn mount(&mut self, kind: &str, source: &Path, dest: &Path) {
        let mut parents: Vec<&Path> = dest.ancestors().skip(1).filter(|p| p.parent().is_some()).collect();
        parents.reverse();
        for parent in parents {
            // /tmp is the sandbox's own tmpfs, made before any mount under it; a
            // parent inside an earlier mount exists already.
            let mounted = self.2.iter().any(|m| parent.starts_with(m));
            if parent != Path::new("/tmp") && !mounted && self.1.insert(parent.to_owned()) {
                self.flags(&["--perms", "0755", "--dir"]);
                self.path(parent);
            }
        }
        self.flag(kind);
        self.path(source);
        self.path(dest);
        self.2.push(dest.to_owned());
    }

    fn setenv(&mut self, key: &str, value: &std::ffi::OsStr) {
        self.flags(&["--setenv", key]);
        self.0.push(value.to_owned());
    }
}

fn resolve(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return program.is_file().then(|| program.to_owned());
    }
    kiln_process::find_tool(&program.to_string_lossy())
}

/// The toolchain's sysroot, from `rustc --print sysroot`.
async fn sysroot() -> anyhow::Result<PathBuf> {
    let output = tokio::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .await
        .context("running `rustc --print sysroot`: is the Rust toolchain on PATH?")?;
    anyhow::ensure!(output.status.success(), "`rustc --print sysroot` failed ({})", output.status);
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// Gives the build user what a build writes: `paths` themselves (the lock copy, the
/// cache statistics file) and every directory under `trees` (`target/`, the
/// pristine set's directories under an overlay), so it can create files there.
/// Files under `trees` are not handed over: they are the pristine prebuilt set's
/// (hard links, or an overlay's lower layer), which the build user must not be able
/// to change.
pub fn hand_over(sandbox: &Sandbox, paths: &[&Path], trees: &[&Path]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = sandbox.owner() else { return Ok(()) };
    let mut entries: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    for tree in trees {
        for entry in walkdir::WalkDir::new(tree) {
            let entry = entry.map_err(std::io::Error::other)?;
            if entry.file_type().is_dir() {
                entries.push(entry.into_path());
            }
        }
    }
    let owner = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    for entry in entries {
        let metadata = std::fs::symlink_metadata(&entry)?;
        if metadata.uid() != uid || metadata.gid() != gid {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &entry,
                owner.0,
                owner.1,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart mounts the cluster token, API token, S3 credentials and TLS key
    /// under /etc/kiln: a build's view holds a short list of /etc, never that.
    #[test]
    fn a_build_sees_only_the_etc_files_compilers_need() {
        let sandbox = Sandbox {
            bwrap: "bwrap".into(),
            setpriv: None,
            build_uid: 64000,
            build_gid: 64000,
            sysroot: "/opt/rust".into(),
            cargo_home: "/opt/cargo".into(),
            group: Err("test".into()),
        };
        let mounts = Mounts {
            build_root: "/var/lib/kiln/build".into(),
            crates: vec!["app-0123".into()],
            sources: None,
            lockfile: Some("/var/lib/kiln/worker/Cargo.lock".into()),
            tmp: "/var/lib/kiln/worker/tmp".into(),
            writable: Vec::new(),
            programs: Vec::new(),
        };
        let args: Vec<String> = sandbox.bwrap_args(&mounts).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let bound: Vec<&String> = args.windows(2).filter(|w| w[0].contains("bind")).map(|w| &w[1]).collect();
        assert!(!bound.iter().any(|a| *a == "/etc" || a.starts_with("/etc/kiln")), "{bound:?}");
        let etc: Vec<&String> = args.iter().filter(|a| a.starts_with("/etc/")).collect();
        assert_eq!(etc.len(), 2 * ETC_FOR_BUILDS.len(), "each allowed file at its own path: {etc:?}");
        assert!(!args.iter().any(|a| a.starts_with("/var/lib/kiln/data") || a.contains("catalog")), "{args:?}");
    }

    #[test]
    fn mount_points_get_open_parents_once_and_tmp_is_left_to_its_tmpfs() {
        let mut a = BwrapArgs::default();
        a.mount("--ro-bind", Path::new("/tmp/x/root"), Path::new("/tmp/x/root"));
        a.mount("--bind", Path::new("/tmp/x/root/target"), Path::new("/tmp/x/root/target"));
        let line: Vec<String> = a.0.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let line = line.join(" ");
        assert_eq!(
            line,
            "--perms 0755 --dir /tmp/x --ro-bind /tmp/x/root /tmp/x/root --bind /tmp/x/root/target /tmp/x/root/target"
        );
    }
}
