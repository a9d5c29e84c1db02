//! The `kiln` command's library: the roles (`kiln server`, `kiln up`, `kiln launch`,
//! `kiln coordinator`) and the client commands, each with its clap arguments. The
//! binary (`main.rs`) only parses and dispatches; the test kit and the benchmarks
//! build member command lines from these same argument structs.

pub mod cache;
pub mod client;
pub mod command_line;
pub mod commands;
pub mod depset;
pub mod isolation;
pub mod launch;
pub mod server;
pub mod shutdown;
pub mod up;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
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
    /// An operator's dependency set (a directory made with `kiln depset create`);
    /// Kiln's built-in set without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
}

/// The dependency set of `--depset DIR`, or the built-in one.
pub fn load_depset(dir: Option<&Path>) -> anyhow::Result<std::sync::Arc<kiln_core::depset::DepSet>> {
    match dir {
        None => Ok(kiln_core::depset::DepSet::embedded()),
        Some(dir) => Ok(std::sync::Arc::new(kiln_core::depset::DepSet::load(dir)?)),
    }
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
        tmp_bytes: u64::MAX,
        disk_bytes: u64::MAX,
        private_mounts: false,
        depset: load_depset(args.depset.as_deref())?,
    };
    kiln_compiler_worker::builder::prepare_build_root(&settings, &Default::default()).await?;
    println!(
        "build root {} is ready (dependency set {})",
        settings.build_root.display(),
        settings.depset.fingerprint()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Where the leader is, for the client commands.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// The leader's URL.
    #[arg(long = "leader", env = "KILN_LEADER", default_value_t = format!("http://127.0.0.1:{DEFAULT_PORT}"))]
    pub url: String,
    /// Without a token, the token of a `kiln up` run from this directory
    /// (`.kiln/api-token`) is used when there is one.
    #[command(flatten)]
    pub api: ApiTokenArgs,
    /// The PEM CA certificate that signed the leader's certificate, for an
    /// https:// leader: only it is trusted. Without it, the system's CAs are.
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl LeaderArgs {
    /// The token to send: given, from its file, or the local farm's.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.api.read()? {
            return Ok(Some(token));
        }
        let local = default_data_dir().join("api-token");
        if !local.is_file() {
            return Ok(None);
        }
        Ok(Some(read_secret_file(&local, "the local farm's API token file")?).filter(|t| !t.is_empty()))
    }
}

/// The API token a client sends or a leader wants: given, or in a file. Declared
/// once, flattened into every command that takes it (the clients, `kiln ci-env`,
/// `kiln server`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ApiTokenArgs {
    /// The API token (`Authorization: Bearer <token>`).
    #[arg(long, env = "KILN_API_TOKEN", hide_env_values = true, conflicts_with = "api_token_file")]
    pub api_token: Option<String>,
    /// A file holding the API token (a mounted Secret): read with a warning when
    /// users other than its owner can read it.
    #[arg(long, env = "KILN_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

impl ApiTokenArgs {
    /// The token given, or read from its file; None when neither is.
    pub fn read(&self) -> anyhow::Result<Option<String>> {
        match (&self.api_token, &self.api_token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(file)) => read_secret_file(file, "the API token file").map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a secret from a file (a mounted Secret, a token file), trimmed; warns when
/// users other than its owner can read it.
pub fn read_secret_file(file: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {what} {}", file.display()))?;
    if let Ok(metadata) = std::fs::metadata(file)
        && metadata.mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %file.display(),
            mode = format!("{:o}", metadata.mode() & 0o777),
            "{what} is readable by other users: chmod 600 it (in the chart, the Secret's defaultMode)"
        );
    }
    Ok(text.trim().to_owned())
}

/// The secret kept in `file`, made (32 random bytes, hex, mode 0600) on first use.
pub fn secret_file(file: &Path) -> anyhow::Result<String> {
    if !file.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let secret: [u8; 32] = rand::random();
        match std::fs::OpenOptions::new().mode(0o600).write(true).create_new(true).open(file) {
            Ok(mut out) => out.write_all(hex::encode(secret).as_bytes())?,
            // Made by another process meanwhile: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {}", file.display()))),
        }
    }
    read_secret_file(file, "the token file")
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
