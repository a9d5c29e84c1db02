//! The `kiln` command: parses the command line, starts tracing, and hands over to
//! the subcommand asked for (each one a file of the library's `cmd/`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::cmd::{
    cache, cancel, ci_env, depset, download, launch, layout, logs, prepare, sandbox_init, server, status, submit, up,
};

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
    Server(Box<kiln::ServerArgs>),
    /// Run a whole farm on this machine: a leader and N workers as child processes.
    Up(up::UpArgs),
    /// Submit pipeline programs (directories) to the farm.
    Submit(submit::SubmitArgs),
    /// Show one pipeline, or all of them.
    Status(status::StatusArgs),
    /// Show a pipeline's build log and diagnostics.
    Logs(logs::LogsArgs),
    /// Stop a build in flight (or waiting): the pipeline ends `cancelled`.
    Cancel(cancel::CancelArgs),
    /// Fetch a pipeline's binary and verify its SHA-256.
    Download(download::DownloadArgs),
    /// Run a built pipeline as H host processes plus a coordinator on loopback
    /// (host n on 127.100.n.1, the coordinator on 127.100.255.1).
    Launch(launch::LaunchArgs),
    /// The coordinator of a multihost deployment (`kiln launch` starts it).
    Coordinator(launch::CoordinatorArgs),
    /// Print the environment a CI job sets to share the farm's compile cache.
    CiEnv(ci_env::CiEnvArgs),
    /// Write a program into a build root exactly as a worker does (for CI builds
    /// that share the farm's cache).
    Layout(layout::LayoutArgs),
    /// The shared S3 cache: statistics and pruning.
    Cache(cache::CacheCommandArgs),
    /// Prepare a build root (the dependency set, built or copied) and exit; for images.
    Prepare(prepare::PrepareArgs),
    /// Make (vendor) and verify an operator's dependency set; print its fingerprint.
    Depset {
        #[command(subcommand)]
        command: depset::DepsetCommand,
    },
    /// The first program of a sandboxed build (run by the worker inside the sandbox).
    #[command(hide = true)]
    SandboxInit(sandbox_init::SandboxInitArgs),
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

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Before tracing and the runtime: the sandbox's first program logs nothing of
    // its own and runs on one thread.
    if let Command::SandboxInit(args) = cli.command {
        return sandbox_init::run(args);
    }
    init_tracing(&cli.log_format);
    if let Command::Up(args) = &mut cli.command {
        args.log_format = cli.log_format.clone();
    }
    // Before the runtime starts any thread: see `isolation`.
    if let Command::Server(args) = &mut cli.command {
        server::isolate_build_root(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Server(args) => server::run(*args).await,
        Command::Up(args) => up::run(args).await,
        Command::Submit(args) => submit::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Logs(args) => logs::run(args).await,
        Command::Cancel(args) => cancel::run(args).await,
        Command::Download(args) => download::run(args).await,
        Command::Launch(args) => launch::launch(args).await,
        Command::Coordinator(args) => launch::coordinator(args).await,
        Command::CiEnv(args) => ci_env::run(args).await,
        Command::Layout(args) => layout::run(args),
        Command::Cache(args) => cache::run(args).await,
        Command::Prepare(args) => prepare::run(args).await,
        Command::Depset { command } => depset::run(command).await,
        Command::SandboxInit(_) => Err(anyhow::anyhow!("sandbox-init runs before the async runtime starts")),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
