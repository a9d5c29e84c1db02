//! A private view of the build root. sccache keys Rust compilations on absolute
//! paths, so every worker must build at the same absolute path; on one machine
//! (`kiln up`, the tests) each worker gets its own directory mounted at that path in
//! a mount namespace of its own. Its children (cargo, rustc, the sccache server)
//! inherit the view.
//!
//! Must run before any thread starts: a mount namespace belongs to the thread that
//! unshares it.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Mounts `source` at `target` in a new private mount namespace for this process.
/// The error says why it could not, in words for the startup log.
pub fn private_build_root(source: &Path, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(source).map_err(|e| format!("creating {}: {e}", source.display()))?;
    std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("a private mount namespace needs CAP_SYS_ADMIN (root): {e}"))?;
    // Keep our mounts from propagating back to the host's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("making mounts private: {e}"))?;
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind-mounting {} at {}: {e}", source.display(), target.display()))?;
    Ok(())
}
