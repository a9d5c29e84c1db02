//! The command line's configuration, declared once: the flag groups several
//! subcommands flatten, the one way a secret file is read, the units flags take,
//! and a member's configuration from its flags to what it runs with.
//!
//! - `leader`: `LeaderArgs` (how a client reaches the leader) and `ApiTokenArgs`;
//!   `kiln up`'s default port and directory.
//! - `cache`: `CacheArgs` (the shared S3 cache), its credentials, and a CI job's
//!   flags over the farm's settings.
//! - `tls`: `TlsArgs`, a member's TLS.
//! - `secret`: `SecretFile`, the one secret reader (and maker), with its warning.
//! - `units`: durations and sizes.
//! - `depset`: `--depset DIR` read.
//! - `command_line`: a child's command line written back from parsed flags.
//! - `server` → `member`: `kiln server`'s flags and their command line, then
//!   `MemberConfig::resolve`, which turns them and the machine's `Facts` into
//!   what the member runs. Read in that order, they are the member's whole
//!   configuration; `cmd::server::run` only gathers the facts and starts it.

pub mod cache;
pub mod command_line;
pub mod depset;
pub mod leader;
pub mod member;
pub mod secret;
pub mod server;
pub mod tls;
pub mod units;

pub use cache::CacheArgs;
pub use leader::{ApiTokenArgs, DEFAULT_PORT, LeaderArgs, default_data_dir};
pub use member::{Facts, MemberConfig, VERSION};
pub use server::ServerArgs;
pub use tls::TlsArgs;
