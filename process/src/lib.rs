//! Kiln's child processes, for every part that starts one: `kiln up` (the members),
//! `kiln launch` (hosts and the coordinator) and the worker (cargo, sccache).
//!
//! [`process`] spawns a child in its own process group with a parent-death signal
//! (and, when asked, a memory limit); [`supervisor`] runs a group of children with
//! prefixed output, a restart policy and a stop that leaves no process behind.
//!
//! **Invariant:** a process group is signalled only while its leader is unreaped
//! (pids wrap, so a reaped leader's group id may already be someone else's).

pub mod process;
pub mod supervisor;

use std::path::{Path, PathBuf};

/// An executable named `name` on PATH, or else in cargo's bin directory (where
/// `cargo install`, and so `scripts/install-deps`, puts tools).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).collect())
        .unwrap_or_default();
    if let Some(home) =
        std::env::var_os("CARGO_HOME").or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into()))
    {
        candidates.push(Path::new(&home).join("bin").join(name));
    }
    candidates.into_iter().find(|p| p.is_file())
}
