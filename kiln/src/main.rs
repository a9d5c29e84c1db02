//! The `kiln` command: parses the command line, starts tracing, and hands over to
//! the role or client command asked for. Every flag has a `KILN_*` variable.

mod cache;
mod client;
mod commands;
mod isolation;
mod launch;
mod server;
mod shutdown;
mod up;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The leader of the local farm that `kiln up` starts by default.
pub const DEFAULT_PORT: u16 = 8470;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "A distributed compile farm for Rust pipeline programs")]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, global = true, env = "KILN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one member of the farm (ordinal 0 runs the leader too).
    Server(Box<server::ServerArgs>),
    /// Run a whole farm on this machine: a leader and N workers as child processes.
    Up(up::UpArgs),
    /// Submit pipeline programs (directories) to the farm.
    Submit(commands::SubmitArgs),
    /// Show one pipeline, or all of them.
    Status(commands::StatusArgs),
    /// Show a pipeline's build log and diagnostics.
    Logs(commands::LogsArgs),
    /// Fetch a pipeline's binary and verify its SHA-256.
    Download(commands::DownloadArgs),
    /// Run a built pipeline as H host processes plus a coordinator on loopback
    /// (host n on 127.100.n.1, the coordinator on 127.100.255.1).
    Launch(launch::LaunchArgs),
    /// The coordinator of a multihost deployment (`kiln launch` starts it).
    Coordinator(launch::CoordinatorArgs),
    /// Print the environment a CI job sets to share the farm's compile cache.
    CiEnv(cache::CiEnvArgs),
    /// Write a program into a build root exactly as a worker does (for CI builds
    /// that share the farm's cache).
    Layout(cache::LayoutArgs),
    /// The shared S3 cache: statistics and pruning.
    Cache(cache::CacheCommandArgs),
    /// Prepare a build root (the dependency set, built or copied) and exit; for images.
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
struct PrepareArgs {
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = "/var/lib/kiln/build")]
    build_root: PathBuf,
    #[arg(long, env = "KILN_DEPSET_CACHE")]
    depset_cache: Option<PathBuf>,
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = "release")]
    profile: String,
}

async fn prepare(args: PrepareArgs) -> anyhow::Result<std::process::ExitCode> {
    let settings = kiln_compiler_worker::builder::BuildSettings {
        build_root: args.build_root,
        profile: args.profile,
        cargo: "cargo".into(),
        depset_cache: args.depset_cache,
        timeout: Duration::from_secs(3600),
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

/// The default directory of `kiln up`'s state.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".kiln")
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    init_tracing(&cli.log_format);
    if let Command::Server(args) = &mut cli.command
        && let Some(source) = args.build_root_source.clone()
    {
        // Before the runtime starts any thread: see `isolation`.
        match isolation::private_build_root(&source, &args.build_root) {
            Ok(()) => {
                tracing::info!(source = %source.display(), build_root = %args.build_root.display(), "private build root mounted")
            }
            Err(reason) => {
                tracing::warn!(
                    "cannot give this worker a private view of {} ({reason}): building in {} instead, so sccache hits across workers are lost",
                    args.build_root.display(),
                    source.display()
                );
                args.build_root = source;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> std::process::ExitCode {
    let result = match command {
        Command::Server(args) => server::run(*args).await,
        Command::Up(args) => up::run(args).await,
        Command::Submit(args) => commands::submit(args).await,
        Command::Status(args) => commands::status(args).await,
        Command::Logs(args) => commands::logs(args).await,
        Command::Download(args) => commands::download(args).await,
        Command::Launch(args) => launch::launch(args).await,
        Command::Coordinator(args) => launch::coordinator(args).await,
        Command::CiEnv(args) => cache::ci_env(args),
        Command::Layout(args) => cache::layout(args),
        Command::Cache(args) => cache::cache(args).await,
        Command::Prepare(args) => prepare(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
