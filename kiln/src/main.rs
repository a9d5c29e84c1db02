//! The `kiln` command: parses the command line, starts tracing, and hands over to
//! the role or client command asked for (all of which live in the `kiln` library).

use clap::{Parser, Subcommand};
use kiln::{cache, commands, isolation, launch, server, up};

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
    /// Stop a build in flight (or waiting): the pipeline ends `cancelled`.
    Cancel(commands::CancelArgs),
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
    Prepare(kiln::PrepareArgs),
    /// Make (vendor) and verify an operator's dependency set; print its fingerprint.
    Depset {
        #[command(subcommand)]
        command: kiln::depset::DepsetCommand,
    },
    /// The first program of a sandboxed build (run by the worker inside the sandbox).
    #[command(hide = true)]
    SandboxInit(SandboxInitArgs),
}

#[derive(Debug, clap::Args)]
struct SandboxInitArgs {
    #[arg(long)]
    relay_port: u16,
    #[arg(long)]
    gateway: std::path::PathBuf,
    #[arg(long)]
    sccache: std::path::PathBuf,
    #[arg(long)]
    stats: std::path::PathBuf,
    /// cargo and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

/// Inside the sandbox: no logging of its own (its output is the build's log), one
/// thread (its processes count against the build's limit).
fn sandbox_init(args: SandboxInitArgs) -> std::process::ExitCode {
    use kiln_compiler_worker::sandbox::init::{InitArgs, run};
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: the build sandbox could not start: {e}");
            return std::process::ExitCode::from(125);
        }
    };
    let code = runtime.block_on(run(InitArgs {
        relay_port: args.relay_port,
        gateway: args.gateway,
        sccache: args.sccache,
        stats: args.stats,
        command: args.command,
    }));
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
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
    if let Command::SandboxInit(args) = cli.command {
        return sandbox_init(args);
    }
    init_tracing(&cli.log_format);
    if let Command::Up(args) = &mut cli.command {
        args.log_format = cli.log_format.clone();
    }
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
        Command::Cancel(args) => commands::cancel(args).await,
        Command::Download(args) => commands::download(args).await,
        Command::Launch(args) => launch::launch(args).await,
        Command::Coordinator(args) => launch::coordinator(args).await,
        Command::CiEnv(args) => cache::ci_env(args).await,
        Command::Layout(args) => cache::layout(args),
        Command::Cache(args) => cache::cache(args).await,
        Command::Prepare(args) => kiln::prepare(args).await,
        Command::Depset { command } => kiln::depset::run(command).await,
        Command::SandboxInit(_) => Err(anyhow::anyhow!("sandbox-init runs before the async runtime starts")),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
