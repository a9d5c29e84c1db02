//! The shared compile cache on the command line: the S3 settings every member, CI
//! job and housekeeping command reads (the Helm chart's
//! `parallelCompilation.sccache.s3` values), and the commands `kiln ci-env`,
//! `kiln layout` and `kiln cache stats|prune`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{ArgAction, Args, Subcommand};
use kiln_compiler_worker::cache_store::{self, S3Credentials, S3Settings};
use kiln_core::depset;
use kiln_core::program::Program;

use crate::client::read_program;

/// Where the shared cache lives. Without a bucket, each member's sccache uses a
/// local directory.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct CacheArgs {
    /// The S3 bucket of the shared compile cache.
    #[arg(long = "sccache-bucket", env = "KILN_SCCACHE_BUCKET")]
    pub bucket: Option<String>,
    #[arg(long = "sccache-region", env = "KILN_SCCACHE_REGION", default_value = DEFAULT_REGION)]
    pub region: String,
    /// Prepended to every cache object's key.
    #[arg(long = "sccache-key-prefix", env = "KILN_SCCACHE_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
    /// `host:port` of an S3-compatible server (MinIO, Garage...); AWS when left out.
    #[arg(long = "sccache-endpoint", env = "KILN_SCCACHE_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long = "sccache-use-ssl", env = "KILN_SCCACHE_USE_SSL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub use_ssl: bool,
    /// SSE-S3 on every object written.
    #[arg(long = "sccache-server-side-encryption", env = "KILN_SCCACHE_SERVER_SIDE_ENCRYPTION", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub server_side_encryption: bool,
    /// A directory holding the files `access_key_id` and `secret_access_key` (a
    /// mounted Kubernetes Secret). Otherwise AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE).
    #[arg(long = "sccache-credentials-dir", env = "KILN_SCCACHE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Read cache hits but never write (for untrusted jobs).
    #[arg(long = "sccache-read-only", env = "KILN_SCCACHE_READ_ONLY", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: bool,
}

fn read_secret(dir: &Path, key: &str) -> anyhow::Result<String> {
    let path = dir.join(key);
    let value = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: the credentials Secret must have the keys access_key_id and secret_access_key",
            path.display()
        )
    })?;
    Ok(value.trim().to_owned())
}

/// Resolves the credentials from a Secret directory or the environment (looked up
/// through `env`). Conflicting or half-given settings are refused.
pub fn resolve_credentials(
    credentials_dir: Option<&Path>,
    bucket: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<S3Credentials> {
    let static_key = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"));
    let web_identity = (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE"));
    if let Some(dir) = credentials_dir {
        if static_key.0.is_some() {
            bail!(
                "both --sccache-credentials-dir and AWS_ACCESS_KEY_ID are set: give the cache credentials one way only"
            );
        }
        return Ok(S3Credentials::Static {
            access_key_id: read_secret(dir, "access_key_id")?,
            secret_access_key: read_secret(dir, "secret_access_key")?,
        });
    }
    match static_key {
        (Some(access_key_id), Some(secret_access_key)) => {
            if web_identity.0.is_some() {
                bail!("both AWS_ACCESS_KEY_ID and AWS_ROLE_ARN are set: use a Secret or IRSA for the cache, not both");
            }
            return Ok(S3Credentials::Static { access_key_id, secret_access_key });
        }
        (Some(_), None) => bail!("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY"),
        (None, Some(_)) => bail!("AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID"),
        (None, None) => {}
    }
    match web_identity {
        (Some(role_arn), Some(token_file)) => {
            Ok(S3Credentials::WebIdentity { role_arn, token_file: token_file.into() })
        }
        (Some(_), None) => bail!("AWS_ROLE_ARN is set without AWS_WEB_IDENTITY_TOKEN_FILE: IRSA needs both"),
        (None, Some(_)) => bail!("AWS_WEB_IDENTITY_TOKEN_FILE is set without AWS_ROLE_ARN: IRSA needs both"),
        (None, None) => bail!(
            "no credentials for the cache bucket {bucket:?}: mount a Secret (--sccache-credentials-dir), set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use IRSA"
        ),
    }
}

impl CacheArgs {
    /// These settings as flags, for a member's command line (credentials travel in
    /// the environment or a Secret directory, never here). Without a bucket the
    /// defaults need no flag.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut line = crate::command_line::CommandLine(Vec::new());
        line.opt("--sccache-bucket", &self.bucket);
        line.value("--sccache-region", &self.region);
        line.value("--sccache-key-prefix", &self.key_prefix);
        line.opt("--sccache-endpoint", &self.endpoint);
        line.flag("--sccache-use-ssl", self.use_ssl);
        line.flag("--sccache-server-side-encryption", self.server_side_encryption);
        line.opt_path("--sccache-credentials-dir", &self.credentials_dir);
        line.flag("--sccache-read-only", self.read_only);
        line.0
    }

    /// The S3 store, or None for a local cache.
    pub fn s3_settings(&self) -> anyhow::Result<Option<S3Settings>> {
        let Some(bucket) = &self.bucket else {
            if self.endpoint.is_some() || self.credentials_dir.is_some() {
                bail!("an S3 endpoint or credentials were given without --sccache-bucket (KILN_SCCACHE_BUCKET)");
            }
            return Ok(None);
        };
        let credentials = resolve_credentials(self.credentials_dir.as_deref(), bucket, |k| std::env::var(k).ok())?;
        Ok(Some(self.settings(bucket, credentials)))
    }

    fn settings(&self, bucket: &str, credentials: S3Credentials) -> S3Settings {
        S3Settings {
            bucket: bucket.to_owned(),
            region: self.region.clone(),
            key_prefix: self.key_prefix.clone(),
            endpoint: self.endpoint.clone(),
            use_ssl: self.use_ssl,
            server_side_encryption: self.server_side_encryption,
            credentials,
            read_only: self.read_only,
        }
    }

    fn require_s3(&self, command: &str) -> anyhow::Result<S3Settings> {
        match self.s3_settings()? {
            Some(s3) => Ok(s3),
            None => bail!("{command} works on the shared S3 cache: give --sccache-bucket (or KILN_SCCACHE_BUCKET)"),
        }
    }
}

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
    /// still override them (region and key prefix when not at their defaults).
    #[arg(long = "leader", env = "KILN_CI_LEADER")]
    pub leader: Option<String>,
    /// The API token for --leader (`kiln up`'s own is found by itself).
    #[command(flatten)]
    pub api: crate::ApiTokenArgs,
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The cargo profile; from the farm with --leader, else release.
    #[arg(long, env = "KILN_BUILD_PROFILE")]
    pub profile: Option<String>,
}

const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_KEY_PREFIX: &str = "sccache";
const DEFAULT_BUILD_ROOT: &str = "/var/lib/kiln/build";
const DEFAULT_PROFILE: &str = "release";

impl CiEnvArgs {
    /// The farm's settings with this command's own on top: a flag given wins. The
    /// cache flags shared with other commands have defaults, so a region or key
    /// prefix wins only when it differs from its default.
    fn over(&self, farm: kiln_core::api::CacheSettings) -> (CacheArgs, PathBuf, String) {
        let mine = &self.cache;
        let cache = CacheArgs {
            bucket: mine.bucket.clone().or(farm.bucket),
            region: if mine.region != DEFAULT_REGION { mine.region.clone() } else { farm.region },
            key_prefix: if mine.key_prefix != DEFAULT_KEY_PREFIX { mine.key_prefix.clone() } else { farm.key_prefix },
            endpoint: mine.endpoint.clone().or(farm.endpoint),
            use_ssl: mine.use_ssl || farm.use_ssl,
            server_side_encryption: mine.server_side_encryption || farm.server_side_encryption,
            credentials_dir: mine.credentials_dir.clone(),
            read_only: mine.read_only,
        };
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
pub async fn ci_env(args: CiEnvArgs) -> anyhow::Result<ExitCode> {
    let (cache, build_root, profile, fingerprint, source) = match &args.leader {
        Some(url) => {
            let leader = crate::LeaderArgs { url: url.clone(), api: args.api.clone(), tls_ca: args.tls_ca.clone() };
            let farm = crate::client::Client::new(&leader)?
                .cache_settings()
                .await
                .with_context(|| format!("asking the farm at {url} for its cache settings"))?;
            let fingerprint = match &args.depset {
                Some(dir) => crate::load_depset(Some(dir))?.fingerprint().to_owned(),
                None => farm.depset.clone(),
            };
            let (cache, build_root, profile) = args.over(farm);
            (cache, build_root, profile, fingerprint, format!("the farm at {url}"))
        }
        None => {
            let fingerprint = crate::load_depset(args.depset.as_deref())?.fingerprint().to_owned();
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

#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// A program directory.
    pub dir: PathBuf,
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = "release")]
    pub profile: String,
    /// The farm's dependency set (`--depset` of its members); the built-in one without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
}

/// `kiln layout`: writes a program into a build root exactly as a worker does, so a
/// plain `cargo build` there compiles the same crates at the same paths (and so hits
/// the farm's cache).
pub fn layout(args: LayoutArgs) -> anyhow::Result<ExitCode> {
    let files = read_program(&args.dir)?;
    let set = crate::load_depset(args.depset.as_deref())?;
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

#[derive(Debug, Args)]
pub struct CacheCommandArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Objects, bytes, oldest and newest under the key prefix.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Deletes cached objects by age and total size (a dry run unless --yes).
    Prune {
        #[command(flatten)]
        cache: CacheArgs,
        /// Delete objects older than this (e.g. 30d, 12h).
        #[arg(long, value_parser = crate::parse_duration)]
        older_than: Option<Duration>,
        /// Then delete the oldest objects until the rest fits (bytes; K, M, G suffixes).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// Really delete; without it the command only lists what it would delete.
        #[arg(long)]
        yes: bool,
    },
}

/// Parses `500`, `64K`, `10M`, `2G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (examples: 500M, 2G)"))?;
    let factor = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

fn age(time: SystemTime) -> String {
    let seconds = SystemTime::now().duration_since(time).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

pub async fn cache(args: CacheCommandArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CacheCommand::Stats { cache } => {
            let s3 = cache.require_s3("kiln cache stats")?;
            let objects = cache_store::list_objects(&s3).await?;
            let bytes: u64 = objects.iter().map(|o| o.size).sum();
            println!("store    {}", s3.describe());
            println!("objects  {}", objects.len());
            println!("bytes    {bytes}");
            if let (Some(oldest), Some(newest)) =
                (objects.iter().map(|o| o.modified).min(), objects.iter().map(|o| o.modified).max())
            {
                println!("oldest   {} ago", age(oldest));
                println!("newest   {} ago", age(newest));
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { cache, older_than, max_size, yes } => {
            if older_than.is_none() && max_size.is_none() {
                bail!("kiln cache prune needs a limit: --older-than, --max-size or both");
            }
            let s3 = cache.require_s3("kiln cache prune")?;
            let objects = cache_store::list_objects(&s3).await?;
            let selected = cache_store::select_for_pruning(&objects, SystemTime::now(), older_than, max_size);
            let bytes: u64 = selected.iter().map(|o| o.size).sum();
            for object in &selected {
                println!(
                    "{} {} ({} bytes, {} old)",
                    if yes { "delete" } else { "would delete" },
                    object.key,
                    object.size,
                    age(object.modified)
                );
            }
            if yes {
                let deleted = cache_store::delete_objects(&s3, &selected).await?;
                println!("deleted {deleted} of {} objects ({bytes} bytes)", objects.len());
            } else {
                println!(
                    "dry run: {} of {} objects ({bytes} bytes) would be deleted; pass --yes to delete",
                    selected.len(),
                    objects.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn credentials_come_one_way_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("access_key_id"), "AK\n").unwrap();
        std::fs::write(dir.path().join("secret_access_key"), "SK\n").unwrap();
        let from_secret = resolve_credentials(Some(dir.path()), "b", env(&[])).unwrap();
        assert_eq!(from_secret, S3Credentials::Static { access_key_id: "AK".into(), secret_access_key: "SK".into() });
        assert!(resolve_credentials(Some(dir.path()), "b", env(&[("AWS_ACCESS_KEY_ID", "x")])).is_err());
        let irsa =
            resolve_credentials(None, "b", env(&[("AWS_ROLE_ARN", "arn"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]))
                .unwrap();
        assert!(matches!(irsa, S3Credentials::WebIdentity { .. }));
        let half = resolve_credentials(None, "b", env(&[("AWS_ROLE_ARN", "arn")])).unwrap_err();
        assert!(half.to_string().contains("IRSA needs both"), "{half}");
        let none = resolve_credentials(None, "bucket-x", env(&[])).unwrap_err();
        assert!(none.to_string().contains("no credentials for the cache bucket \"bucket-x\""), "{none}");
        let both = resolve_credentials(
            None,
            "b",
            env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_ROLE_ARN", "r")]),
        );
        assert!(both.is_err());
    }

    /// `kiln ci-env` as the README's CI step writes it: a switch given alone
    /// means on, `=false` off, and a stray word after it is an error.
    #[test]
    fn switches_stand_alone_or_take_a_value() {
        #[derive(Debug, clap::Parser)]
        #[command(no_binary_name = true)]
        struct CiEnv {
            #[command(flatten)]
            args: CiEnvArgs,
        }
        let parse = |line: &[&str]| <CiEnv as clap::Parser>::try_parse_from(line).map(|c| c.args);
        let bare = parse(&["--sccache-read-only", "--build-root", "/var/lib/kiln/build"]).unwrap();
        assert!(bare.cache.read_only);
        assert_eq!(bare.build_root.as_deref(), Some(Path::new("/var/lib/kiln/build")));
        let all = parse(&["--sccache-use-ssl", "--sccache-server-side-encryption"]).unwrap();
        assert!(all.cache.use_ssl && all.cache.server_side_encryption && !all.cache.read_only);
        assert!(!parse(&["--sccache-read-only=false"]).unwrap().cache.read_only);
        assert!(parse(&["--sccache-read-only=true"]).unwrap().cache.read_only);
        let stray = parse(&["--sccache-read-only", "yes"]).unwrap_err();
        assert_eq!(stray.kind(), clap::error::ErrorKind::UnknownArgument, "{stray}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }
}
