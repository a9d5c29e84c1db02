//! `kiln ci-env`: the environment a CI job exports to share the farm's compile
//! cache, from the flags or, with `--leader`, from the farm itself (a flag given
//! still wins over the farm's value: `CacheArgs::over_farm`). Secrets are named,
//! never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use kiln_compiler_worker::cache_store::S3Credentials;
use kiln_core::api::CacheSettings;

use crate::client::Client;
use crate::config::cache::CacheArgs;
use crate::config::depset::load_depset;
use crate::config::leader::{ApiTokenArgs, LeaderArgs};
use crate::config::server::{DEFAULT_BUILD_ROOT, DEFAULT_PROFILE};

#[derive(Debug, Args)]
pub struct CiEnvArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The farm's build root (the same absolute path as on the workers); from the
    /// farm with --leader, else /var/lib/kiln/build.
    #[arg(long, env = "KILN_BUILD_ROOT")]
    pub build_root: Option<PathBuf>,
    /// The farm's dependency set (`--depset` of its members), whose fingerprint the
    /// job's build must match; the built-in one without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
    /// Ask this farm's leader for its settings (bucket, region, endpoint, key
    /// prefix, SSL and SSE, build root, profile, dependency set); flags given here
    /// still override them.
    #[arg(long = "leader", env = "KILN_CI_LEADER")]
    pub leader: Option<String>,
    /// The API token for --leader (`kiln up`'s own is found by itself).
    #[command(flatten)]
    pub api: ApiTokenArgs,
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The cargo profile; from the farm with --leader, else release.
    #[arg(long, env = "KILN_BUILD_PROFILE")]
    pub profile: Option<String>,
}

impl CiEnvArgs {
    /// The farm's settings with this command's own on top: each flag given wins,
    /// even at its default value; each one left out takes the farm's.
    fn over(&self, farm: CacheSettings) -> (CacheArgs, PathBuf, String) {
        let cache = self.cache.over_farm(&farm);
        let build_root = self.build_root.clone().unwrap_or_else(|| PathBuf::from(farm.build_root));
        let profile = self.profile.clone().unwrap_or(farm.profile);
        (cache, build_root, profile)
    }
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `kiln ci-env`: what a CI job exports to share the farm's compile cache, from the
/// flags or, with `--leader`, from the farm itself. Secrets are named, never printed.
pub async fn run(args: CiEnvArgs) -> anyhow::Result<ExitCode> {
    let (cache, build_root, profile, fingerprint, source) = match &args.leader {
        Some(url) => {
            let leader = LeaderArgs { url: url.clone(), api: args.api.clone(), tls_ca: args.tls_ca.clone() };
            let farm = Client::new(&leader)?
                .cache_settings()
                .await
                .with_context(|| format!("asking the farm at {url} for its cache settings"))?;
            let fingerprint = match &args.depset {
                Some(dir) => load_depset(Some(dir))?.fingerprint().to_owned(),
                None => farm.depset.clone(),
            };
            let (cache, build_root, profile) = args.over(farm);
            (cache, build_root, profile, fingerprint, format!("the farm at {url}"))
        }
        None => {
            let fingerprint = load_depset(args.depset.as_deref())?.fingerprint().to_owned();
            (
                args.cache.clone(),
                args.build_root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BUILD_ROOT)),
                args.profile.clone().unwrap_or_else(|| DEFAULT_PROFILE.to_owned()),
                fingerprint,
                "flags".to_owned(),
            )
        }
    };
    let Some(bucket) = &cache.bucket else {
        bail!(
            "kiln ci-env shares the farm's S3 cache, but {source} names no bucket: give --sccache-bucket (or KILN_SCCACHE_BUCKET); a farm with a local cache per member cannot be shared"
        );
    };
    let settings = cache.settings(bucket, S3Credentials::Anonymous);
    println!("# The environment a CI job sets to share the Kiln farm's compile cache (settings from {source}).");
    println!("# Lay the program out with `kiln layout DIR` and build in {}.", build_root.display());
    println!("# sccache hashes every CARGO_* variable: set no other CARGO_* variable in the job.");
    let mut lines = vec![
        ("RUSTC_WRAPPER".to_owned(), "sccache".to_owned()),
        ("CARGO_TARGET_DIR".to_owned(), build_root.join("target").display().to_string()),
        ("KILN_BUILD_ROOT".to_owned(), build_root.display().to_string()),
        ("KILN_BUILD_PROFILE".to_owned(), profile),
        ("KILN_DEPSET_FINGERPRINT".to_owned(), fingerprint),
    ];
    lines.extend(kiln_compiler_worker::builder::FARM_CARGO_ENV.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    lines.extend(
        settings
            .sccache_env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("SCCACHE_") && k != "SCCACHE_S3_NO_CREDENTIALS"),
    );
    for (key, value) in lines {
        println!("export {key}={}", shell_quote(&value));
    }
    println!("# Credentials: give the job AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the CI's secret store");
    if !cache.read_only {
        println!("# (untrusted jobs: pass --sccache-read-only so they read hits but never write)");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, clap::Parser)]
    #[command(no_binary_name = true)]
    struct CiEnv {
        #[command(flatten)]
        args: CiEnvArgs,
    }

    fn parse(line: &[&str]) -> Result<CiEnvArgs, clap::Error> {
        <CiEnv as clap::Parser>::try_parse_from(line).map(|c| c.args)
    }

    fn farm() -> CacheSettings {
        CacheSettings {
            bucket: Some("farm-bucket".into()),
            region: "eu-west-1".into(),
            key_prefix: "farm-prefix".into(),
            endpoint: None,
            use_ssl: false,
            server_side_encryption: false,
            build_root: "/srv/farm/build".into(),
            profile: "farm-profile".into(),
            depset: "fingerprint".into(),
        }
    }

    /// `kiln ci-env` as the README's CI step writes it: a switch given alone
    /// means on, `=false` off, and a stray word after it is an error.
    #[test]
    fn switches_stand_alone_or_take_a_value() {
        let bare = parse(&["--sccache-read-only", "--build-root", "/var/lib/kiln/build"]).unwrap();
        assert!(bare.cache.read_only);
        assert_eq!(bare.build_root.as_deref(), Some(Path::new("/var/lib/kiln/build")));
        let all = parse(&["--sccache-use-ssl", "--sccache-server-side-encryption"]).unwrap();
        assert!(all.cache.use_ssl() && all.cache.server_side_encryption() && !all.cache.read_only);
        assert!(!parse(&["--sccache-read-only=false"]).unwrap().cache.read_only);
        assert!(parse(&["--sccache-read-only=true"]).unwrap().cache.read_only);
        let stray = parse(&["--sccache-read-only", "yes"]).unwrap_err();
        assert_eq!(stray.kind(), clap::error::ErrorKind::UnknownArgument, "{stray}");
    }

    #[test]
    fn with_no_flags_the_job_takes_the_farms_settings() {
        let (cache, build_root, profile) = parse(&[]).unwrap().over(farm());
        assert_eq!(
            (cache.bucket.as_deref(), cache.region(), cache.key_prefix()),
            (Some("farm-bucket"), "eu-west-1", "farm-prefix")
        );
        assert_eq!((build_root, profile.as_str()), (PathBuf::from("/srv/farm/build"), "farm-profile"));
    }

    /// The bug this replaced: a region or key prefix equal to its default was
    /// taken for "not given", so a job could not ask for the default over the
    /// farm's value.
    #[test]
    fn a_flag_given_at_its_default_value_overrides_the_leaders() {
        let line = [
            "--sccache-region=us-east-1",
            "--sccache-key-prefix=sccache",
            "--build-root=/var/lib/kiln/build",
            "--profile=release",
        ];
        let (cache, build_root, profile) = parse(&line).unwrap().over(farm());
        assert_eq!(cache.region(), "us-east-1");
        assert_eq!(cache.key_prefix(), "sccache");
        assert_eq!((build_root, profile.as_str()), (PathBuf::from(DEFAULT_BUILD_ROOT), DEFAULT_PROFILE));
    }

    #[test]
    fn shell_values_are_quoted_whatever_they_hold() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
    }
}
