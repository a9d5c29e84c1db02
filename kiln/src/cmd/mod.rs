//! One file per subcommand, each holding its clap arguments and its `run` (as
//! cargo's `src/bin/cargo/commands/` and mini-redis's `cmd/` do). The flag groups
//! several of them share, and a member's whole configuration, are in `config`;
//! `main.rs` parses and dispatches here.
//!
//! Roles: `server` (one member), `up` (a local farm), `launch` (a multihost run,
//! and `kiln coordinator`, which it starts). Clients of the leader: `submit`,
//! `status`, `logs`, `cancel`, `download`. The shared cache from CI: `ci_env`,
//! `layout`, `cache`. Build roots and dependency sets: `prepare`, `depset`,
//! `sandbox_init` (hidden, run inside a build's sandbox).

pub mod cache;
pub mod cancel;
pub mod ci_env;
pub mod depset;
pub mod download;
pub mod launch;
pub mod layout;
pub mod logs;
pub mod prepare;
pub mod sandbox_init;
pub mod server;
pub mod status;
pub mod submit;
pub mod up;
