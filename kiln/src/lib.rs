//! The `kiln` command's library: the roles (`kiln server`, `kiln up`, `kiln launch`,
//! `kiln coordinator`) and the client commands, each with its clap arguments. The
//! binary (`main.rs`) only parses and dispatches; the test kit and the benchmarks
//! build member command lines from these same argument structs.

pub mod cache;
pub mod client;
pub mod commands;
pub mod isolation;
pub mod launch;
pub mod server;
pub mod shutdown;
pub mod up;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The leader of the local farm that `kiln up` starts by default.
pub const DEFAULT_PORT: u16 = 8470;

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = "/var/lib/kiln/build")]
    pub build_root: PathBuf,
    #[arg(long, env = "KILN_DEPSET_CACHE")]
    pub depset_cache: Option<PathBuf>,
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = "release")]
    pub profile: String,
}

/// `kiln prepare`: readies a build root (the dependency set, built or copied).
pub async fn prepare(args: PrepareArgs) -> anyhow::Result<std::process::ExitCode> {
    let settings = kiln_compiler_worker::builder::BuildSettings {
        build_root: args.build_root,
        profile: args.profile,
        cargo: "cargo".into(),
        depset_cache: args.depset_cache,
        timeout: Duration::from_secs(3600),
        max_log_bytes: kiln_compiler_worker::log::DEFAULT_MAX_LOG_BYTES,
        work_dir: std::env::temp_dir(),
        sandbox: None,
        limits: kiln_process::process::Limits { memory_bytes: u64::MAX, processes: u64::MAX, file_bytes: u64::MAX },
        private_mounts: false,
    };
    kiln_compiler_worker::builder::prepare_build_root(&settings).await?;
    println!("build root {} is ready", settings.build_root.display());
    Ok(std::process::ExitCode::SUCCESS)
}

/// Where the leader is, for the client commands.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// The leader's URL.
    #[arg(long = "leader", env = "KILN_LEADER", default_value_t = format!("http://127.0.0.1:{DEFAULT_PORT}"))]
    pub url: String,
    /// The API token, when the leader wants one.
    #[arg(long, env = "KILN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Parses durations such as `30m`, `2s`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 2s, 30m)"))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string().replace(' ', "")
}

/// The default directory of `kiln up`'s state.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".kiln")
}
