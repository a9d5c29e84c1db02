//! The `kiln` command's library. The binary (`main.rs`) only parses, starts
//! tracing and dispatches; the test kit and the benchmarks build member command
//! lines from the same argument structs.
//!
//! - `cmd/`: one file per subcommand, its clap arguments and its `run`: `server`,
//!   `up`, `launch` (with `coordinator`), `submit`, `status`, `logs`, `cancel`,
//!   `download`, `ci_env`, `layout`, `cache`, `prepare`, `depset`, `sandbox_init`.
//! - `config/`: what several subcommands share, declared once: the flag groups
//!   (`LeaderArgs`, `ApiTokenArgs`, `CacheArgs`, `TlsArgs`), the one secret
//!   reader, durations and sizes, and a member's configuration in reading order:
//!   `ServerArgs` and its command line (`config::server`), then
//!   `MemberConfig::resolve` (`config::member`).
//! - `client`: the HTTP client of the leader's `/v0` API.
//! - `isolation`: a member's private mount of the build root, made before its
//!   runtime starts.
//! - `shutdown`: the one SIGINT/SIGTERM token.

pub mod client;
pub mod cmd;
pub mod config;
pub mod isolation;
pub mod shutdown;

pub use config::{ApiTokenArgs, LeaderArgs, ServerArgs};
