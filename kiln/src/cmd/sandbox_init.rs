//! `kiln sandbox-init` (hidden): the first program of a sandboxed build with a
//! cache server of its own, or of the member's long-lived cache server's sandbox,
//! run by the worker inside it. It starts before anything else of `kiln`: no logging
//! of its own (its output is the build's log) and one thread (its processes count
//! against the build's limit).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SandboxInitArgs {
    #[arg(long)]
    relay_port: u16,
    #[arg(long)]
    gateway: PathBuf,
    #[arg(long)]
    sccache: PathBuf,
    /// Where the build's cache statistics go.
    #[arg(long, required_unless_present = "serve")]
    stats: Option<PathBuf>,
    /// Run the member's long-lived cache server, and no build.
    #[arg(long)]
    serve: bool,
    /// cargo and its arguments.
    #[arg(last = true, required_unless_present = "serve")]
    command: Vec<OsString>,
}

/// Runs the build's command in the sandbox on a runtime of one thread; the exit
/// code is the command's (125 when the sandbox could not start).
pub fn run(args: SandboxInitArgs) -> ExitCode {
    use kiln_compiler_worker::sandbox::init::{InitArgs, ServerMode, run};
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: the build sandbox could not start: {e}");
            return ExitCode::from(125);
        }
    };
    let code = runtime.block_on(run(InitArgs {
        relay_port: args.relay_port,
        gateway: args.gateway,
        sccache: args.sccache,
        mode: if args.serve { ServerMode::Serve } else { ServerMode::Own },
        stats: args.stats,
        command: args.command,
    }));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
