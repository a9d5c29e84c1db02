//! `kiln layout`: writes a program into a build root exactly as a worker does, so a
//! CI job's plain `cargo build` there compiles the same crates at the same paths
//! (and so hits the farm's cache).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use kiln_core::depset;
use kiln_core::program::Program;

use crate::client::read_program;
use crate::config::depset::load_depset;
use crate::config::server::{DEFAULT_BUILD_ROOT, DEFAULT_PROFILE};

#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// A program directory.
    pub dir: PathBuf,
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = DEFAULT_PROFILE)]
    pub profile: String,
    /// The farm's dependency set (`--depset` of its members); the built-in one without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
}

/// `kiln layout`: writes a program into a build root exactly as a worker does, so a
/// plain `cargo build` there compiles the same crates at the same paths (and so hits
/// the farm's cache).
pub fn run(args: LayoutArgs) -> anyhow::Result<ExitCode> {
    let files = read_program(&args.dir)?;
    let set = load_depset(args.depset.as_deref())?;
    let layout = Program::parse(files, &set)?.layout();
    kiln_compiler_worker::builder::write_build_root(&args.build_root, &layout, &set)?;
    println!(
        "cd {} && cargo build --offline --profile {} -p {} -p {}",
        args.build_root.display(),
        args.profile,
        depset::PACKAGE,
        layout.binary().package
    );
    Ok(ExitCode::SUCCESS)
}
