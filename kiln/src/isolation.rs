//! A private view of the build root. sccache keys Rust compilations on absolute
//! paths, so every worker must build at the same absolute path; on one machine
//! (`kiln up`, the tests) each worker gets its own directory mounted at that path in
//! a mount namespace of its own. Its children (cargo, rustc, the sccache server)
//! inherit the view.
//!
//! A root member unshares a mount namespace. A member that is not root first
//! unshares a user namespace of its own (the unprivileged kind bubblewrap uses,
//! mapping its user to itself), which gives it the right to mount in its own mount
//! namespace: so a non-root `kiln up` builds at one path too, and keeps its cache
//! hits across workers.
//!
//! Must run before any thread starts: a mount namespace belongs to the thread that
//! unshares it, and a user namespace can only be entered by a single-threaded process.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Mounts `source` at `target` in a new private mount namespace for this process.
/// The error says why it could not, in words for the startup log.
pub fn private_build_root(source: &Path, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(source).map_err(|e| format!("creating {}: {e}", source.display()))?;
    std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    if unshare(CloneFlags::CLONE_NEWNS).is_err() {
        own_user_namespace()
            .map_err(|e| format!("a private mount namespace needs root, or unprivileged user namespaces ({e})"))?;
    }
    // Keep our mounts from propagating back to the host's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("making mounts private: {e}"))?;
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind-mounting {} at {}: {e}", source.display(), target.display()))?;
    // Shared within this namespace only (the rest stays private): a sandbox made
    // earlier, the long-lived cache server's, then sees each build's `target/`
    // overlay as it is mounted (its copy is a slave: nothing flows back).
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(|e| format!("making {} a shared mount: {e}", target.display()))?;
    Ok(())
}

/// Unshares a user namespace and a mount namespace, the member's user and group
/// mapped to themselves: files it writes keep their owner, and it may mount.
fn own_user_namespace() -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| format!("writing /proc/self/{file}: {e}"))
    };
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("setgroups", "deny".into())?;
    write("gid_map", format!("{gid} {gid} 1\n"))
}
