//! `kiln prepare`: readies a build root (the dependency set, built or copied) and
//! exits, so that an image can carry a prepared build root and a member's first
//! build does not compile the dependency set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::depset::load_depset;
use crate::config::server::{DEFAULT_BUILD_ROOT, DEFAULT_PROFILE};

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    #[arg(long, env = "KILN_DEPSET_CACHE")]
    pub depset_cache: Option<PathBuf>,
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = DEFAULT_PROFILE)]
    pub profile: String,
    /// An operator's dependency set (a directory made with `kiln depset create`);
    /// Kiln's built-in set without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
}

/// `kiln prepare`: readies a build root (the dependency set, built or copied).
pub async fn run(args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let settings = kiln_compiler_worker::builder::BuildSettings {
        build_root: args.build_root,
        profile: args.profile,
        jobs: None,
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
    Ok(ExitCode::SUCCESS)
}
