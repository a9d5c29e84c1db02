//! A control group per member for its builds, where the member can make one: the
//! build's memory (heap, and the pages of its `/tmp`, memfd and shm, which
//! `RLIMIT_DATA` does not count) and its processes (which `RLIMIT_NPROC` counts
//! per uid, across members) are bounded for the build as a whole.
//!
//! cgroup v2 (the unified hierarchy) when its `memory` and `pids` controllers can
//! be given to a group of the member's own; else cgroup v1's `memory` and `pids`
//! hierarchies. Neither (a container without write access to its cgroups): the
//! rlimits alone, and health says so.
//!
//! **Invariant:** every process of a build joins the group before it runs
//! anything of the build (in the child, between fork and exec), and the group is
//! empty (its processes killed) before the next build starts.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The member's build group(s).
#[derive(Debug, Clone)]
pub enum BuildGroup {
    V2 { dir: PathBuf },
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The files a build's first process writes itself into, opened before the fork.
#[derive(Debug)]
pub struct Join(Vec<OwnedFd>);

impl Join {
    /// Moves the calling process into the group(s). Async-signal-safe: one
    /// `write(2)` per group (for the child between fork and exec).
    pub fn enter(&self) -> std::io::Result<()> {
        for fd in &self.0 {
            // SAFETY: write(2) on an open descriptor with a valid buffer.
            #[allow(unsafe_code)]
            let written = unsafe { nix::libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The path of this process's group in hierarchy `controller` (v1) or in the
/// unified one (`""`), from `/proc/self/cgroup`.
fn own_group(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_owned())
    })
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// SIGKILLs every process in the group `dir`.
fn kill_members(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else { return };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes the build groups of members that are gone (`kiln-member-<pid>-...`
/// beside `dir`, whose process no longer runs): what a killed member left.
fn remove_orphans(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("kiln-member-").and_then(|r| r.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_members(&entry.path());
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

impl BuildGroup {
    /// Makes the group `name` (one per member) for builds limited to `memory_bytes`
    /// and `processes`, or says why it cannot be made here.
    pub fn make(name: &str, memory_bytes: u64, processes: u64) -> Result<BuildGroup, String> {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = |why_v1: String| -> Result<BuildGroup, String> {
            let own = root.join(own_group("").ok_or(format!("{why_v1}; no unified cgroup either"))?);
            let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
            if !["memory", "pids"].iter().all(|c| controllers.split_whitespace().any(|x| x == *c)) {
                return Err(format!(
                    "{why_v1}; the unified cgroup {} has no memory and pids controllers",
                    own.display()
                ));
            }
            // No process may stay in a group that gives controllers to its children:
            // the member moves itself into a leaf of its own first.
            let member = own.join(format!("{name}-member"));
            std::fs::create_dir_all(&member).map_err(|e| format!("{why_v1}; making {}: {e}", member.display()))?;
            write(&member.join("cgroup.procs"), &std::process::id().to_string())?;
            write(&own.join("cgroup.subtree_control"), "+memory +pids")?;
            let dir = own.join(format!("{name}-builds"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
            write(&dir.join("memory.max"), &memory_bytes.to_string())?;
            write(&dir.join("memory.swap.max"), "0").ok();
            write(&dir.join("pids.max"), &processes.to_string())?;
            Ok(BuildGroup::V2 { dir })
        };
        let (Some(memory), Some(pids)) = (own_group("memory"), own_group("pids")) else {
            return v2("no cgroup v1 memory and pids hierarchies".into());
        };
        let memory = root.join("memory").join(memory).join(format!("{name}-builds"));
        let pids = root.join("pids").join(pids).join(format!("{name}-builds"));
        for dir in [&memory, &pids] {
            remove_orphans(dir);
            if let Err(e) = std::fs::create_dir_all(dir) {
                return v2(format!("making {}: {e}", dir.display()));
            }
        }
        write(&memory.join("memory.limit_in_bytes"), &memory_bytes.to_string())?;
        write(&pids.join("pids.max"), &processes.to_string())?;
        Ok(BuildGroup::V1 { memory, pids })
    }

    pub fn describe(&self) -> String {
        match self {
            BuildGroup::V2 { dir } => format!("a cgroup v2 group per member ({})", dir.display()),
            BuildGroup::V1 { memory, .. } => {
                format!("cgroup v1 memory and pids groups per member ({})", memory.display())
            }
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        match self {
            BuildGroup::V2 { dir } => vec![dir],
            BuildGroup::V1 { memory, pids } => vec![memory, pids],
        }
    }

    /// Before a build: kills whatever is left in the group, forgets its counters
    /// where the kernel lets it, and opens what the build's first process joins by.
    pub fn prepare(&self) -> std::io::Result<Join> {
        self.kill_all();
        if let BuildGroup::V1 { memory, .. } = self {
            let _ = std::fs::write(memory.join("memory.max_usage_in_bytes"), "0");
            let _ = std::fs::write(memory.join("memory.failcnt"), "0");
        }
        let mut fds = Vec::new();
        for dir in self.dirs() {
            let file = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
            fds.push(OwnedFd::from(file));
        }
        Ok(Join(fds))
    }

    /// Moves the member into the group it is already in, which changes nothing but
    /// takes the kernel's cgroup-migration lock once. The first migration after a
    /// quiet spell waits for an RCU grace period (the build's first process joining
    /// this group waited 12 to 16 ms for it here, on cgroup v1); one that follows
    /// another within that period does not. Called as a build starts, on a thread
    /// of its own, so that the wait overlaps the build's setup rather than delaying
    /// its first process. Best effort: a failure only loses the overlap.
    pub fn warm(&self) {
        let procs = match self {
            BuildGroup::V2 { .. } => own_group("").map(|g| Path::new("/sys/fs/cgroup").join(g)),
            BuildGroup::V1 { .. } => own_group("memory").map(|g| Path::new("/sys/fs/cgroup/memory").join(g)),
        };
        if let Some(dir) = procs {
            let _ = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string());
        }
    }

    /// SIGKILLs every process in the group.
    pub fn kill_all(&self) {
        self.dirs().into_iter().for_each(kill_members);
    }

    /// The counters a build's limits are read from: (OOM kills, process-limit hits).
    pub fn events(&self) -> (u64, u64) {
        let count = |path: PathBuf, key: &str| -> u64 {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        match self {
            BuildGroup::V2 { dir } => {
                (count(dir.join("memory.events"), "oom_kill "), count(dir.join("pids.events"), "max "))
            }
            BuildGroup::V1 { memory, pids } => {
                let oom = count(memory.join("memory.oom_control"), "oom_kill ");
                (oom, count(pids.join("pids.events"), "max "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this machine lets a root process make one, a build group holds a
    /// process and reports it; elsewhere the reason is a sentence.
    #[test]
    fn a_group_is_made_or_the_reason_given() {
        match BuildGroup::make(&format!("kiln-unit-{}", std::process::id()), 1 << 30, 64) {
            Ok(group) => {
                let join = group.prepare().unwrap();
                let mut child = std::process::Command::new("sleep");
                child.arg("30");
                use std::os::unix::process::CommandExt;
                // SAFETY: `enter` only calls write(2).
                #[allow(unsafe_code)]
                unsafe {
                    child.pre_exec(move || join.enter());
                }
                let mut child = child.spawn().unwrap();
                let procs = std::fs::read_to_string(group.dirs()[0].join("cgroup.procs")).unwrap();
                assert!(procs.lines().any(|l| l.trim() == child.id().to_string()), "{procs}");
                group.kill_all();
                assert!(!child.wait().unwrap().success(), "killed with its group");
                assert_eq!(group.events(), (0, 0));
                for dir in group.dirs() {
                    std::fs::remove_dir(dir).unwrap();
                }
            }
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
