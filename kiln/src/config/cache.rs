//! The shared compile cache's flags: the S3 settings every member, CI job and
//! housekeeping command reads (the Helm chart's `parallelCompilation.sccache.s3`
//! values), declared once and flattened into `kiln server`, `kiln up`, `kiln
//! ci-env` and `kiln cache`; the credentials they resolve to; and how a CI job's
//! flags combine with the farm's own settings.
//!
//! The region, key prefix, SSL and SSE flags are `Option`s, their defaults applied
//! where the value is used: `kiln ci-env --leader` takes the farm's value for each
//! one not given, so "given" must mean given, even when it is the default.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{ArgAction, Args};
use kiln_compiler_worker::cache_store::{S3Credentials, S3Settings};
use kiln_core::api::CacheSettings;

use crate::config::command_line::CommandLine;
use crate::config::secret::SecretFile;

/// The bucket's region when `--sccache-region` is not given.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The key prefix when `--sccache-key-prefix` is not given.
pub const DEFAULT_KEY_PREFIX: &str = "sccache";

/// Where the shared cache lives. Without a bucket, each member's sccache uses a
/// local directory.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct CacheArgs {
    /// The S3 bucket of the shared compile cache.
    #[arg(long = "sccache-bucket", env = "KILN_SCCACHE_BUCKET")]
    pub bucket: Option<String>,
    /// The bucket's region; us-east-1 when not given.
    #[arg(long = "sccache-region", env = "KILN_SCCACHE_REGION")]
    pub region: Option<String>,
    /// Prepended to every cache object's key; sccache when not given.
    #[arg(long = "sccache-key-prefix", env = "KILN_SCCACHE_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// `host:port` of an S3-compatible server (MinIO, Garage...); AWS when left out.
    #[arg(long = "sccache-endpoint", env = "KILN_SCCACHE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// HTTPS to the endpoint; off when not given.
    #[arg(long = "sccache-use-ssl", env = "KILN_SCCACHE_USE_SSL", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub use_ssl: Option<bool>,
    /// SSE-S3 on every object written; off when not given.
    #[arg(long = "sccache-server-side-encryption", env = "KILN_SCCACHE_SERVER_SIDE_ENCRYPTION", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub server_side_encryption: Option<bool>,
    /// A directory holding the files `access_key_id` and `secret_access_key` (a
    /// mounted Kubernetes Secret). Otherwise AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE).
    #[arg(long = "sccache-credentials-dir", env = "KILN_SCCACHE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Read cache hits but never write (for untrusted jobs).
    #[arg(long = "sccache-read-only", env = "KILN_SCCACHE_READ_ONLY", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: bool,
}

/// One key of the credentials Secret directory, read as every secret file is.
fn read_credential(dir: &Path, key: &str) -> anyhow::Result<String> {
    let path = dir.join(key);
    SecretFile { path: &path, what: "the cache credential", flag: "--sccache-credentials-dir" }
        .read()
        .context("the credentials Secret must have the keys access_key_id and secret_access_key")
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
            access_key_id: read_credential(dir, "access_key_id")?,
            secret_access_key: read_credential(dir, "secret_access_key")?,
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
    /// the environment or a Secret directory, never here). A flag not given is left
    /// out, so that the member reads it as not given too.
    pub(crate) fn to_args(&self, line: &mut CommandLine) {
        line.opt("--sccache-bucket", &self.bucket);
        line.opt("--sccache-region", &self.region);
        line.opt("--sccache-key-prefix", &self.key_prefix);
        line.opt("--sccache-endpoint", &self.endpoint);
        line.opt("--sccache-use-ssl", &self.use_ssl);
        line.opt("--sccache-server-side-encryption", &self.server_side_encryption);
        line.opt_path("--sccache-credentials-dir", &self.credentials_dir);
        line.flag("--sccache-read-only", self.read_only);
    }

    /// The region: given, or [`DEFAULT_REGION`].
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// The key prefix: given, or [`DEFAULT_KEY_PREFIX`].
    pub fn key_prefix(&self) -> &str {
        self.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX)
    }

    /// HTTPS to the endpoint: given, or off.
    pub fn use_ssl(&self) -> bool {
        self.use_ssl.unwrap_or(false)
    }

    /// SSE-S3: given, or off.
    pub fn server_side_encryption(&self) -> bool {
        self.server_side_encryption.unwrap_or(false)
    }

    /// These flags over a farm's settings (`kiln ci-env --leader`): each flag given
    /// wins, even at its default value; each one left out takes the farm's. The
    /// credentials and read-only are the job's own: the farm does not share them.
    pub fn over_farm(&self, farm: &CacheSettings) -> CacheArgs {
        CacheArgs {
            bucket: self.bucket.clone().or_else(|| farm.bucket.clone()),
            region: Some(self.region.clone().unwrap_or_else(|| farm.region.clone())),
            key_prefix: Some(self.key_prefix.clone().unwrap_or_else(|| farm.key_prefix.clone())),
            endpoint: self.endpoint.clone().or_else(|| farm.endpoint.clone()),
            use_ssl: Some(self.use_ssl.unwrap_or(farm.use_ssl)),
            server_side_encryption: Some(self.server_side_encryption.unwrap_or(farm.server_side_encryption)),
            credentials_dir: self.credentials_dir.clone(),
            read_only: self.read_only,
        }
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

    /// The S3 store of `bucket` with these settings and `credentials`.
    pub fn settings(&self, bucket: &str, credentials: S3Credentials) -> S3Settings {
        S3Settings {
            bucket: bucket.to_owned(),
            region: self.region().to_owned(),
            key_prefix: self.key_prefix().to_owned(),
            endpoint: self.endpoint.clone(),
            use_ssl: self.use_ssl(),
            server_side_encryption: self.server_side_encryption(),
            credentials,
            read_only: self.read_only,
        }
    }

    /// The S3 store, for a command that works on nothing else.
    pub fn require_s3(&self, command: &str) -> anyhow::Result<S3Settings> {
        match self.s3_settings()? {
            Some(s3) => Ok(s3),
            None => bail!("{command} works on the shared S3 cache: give --sccache-bucket (or KILN_SCCACHE_BUCKET)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    /// The cache flags alone on a command line, environment variables included.
    #[derive(Debug, Parser)]
    #[command(no_binary_name = true)]
    struct CacheLine {
        #[command(flatten)]
        cache: CacheArgs,
    }

    fn cache_flags(line: &[&str]) -> CacheArgs {
        CacheLine::try_parse_from(line).unwrap().cache
    }

    fn farm() -> CacheSettings {
        CacheSettings {
            bucket: Some("farm-bucket".into()),
            region: "eu-west-1".into(),
            key_prefix: "farm-prefix".into(),
            endpoint: Some("s3.farm:9000".into()),
            use_ssl: true,
            server_side_encryption: true,
            build_root: "/var/lib/kiln/build".into(),
            profile: "release".into(),
            depset: "fingerprint".into(),
        }
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

    #[test]
    fn a_credentials_secret_without_a_key_is_refused_with_the_keys_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("access_key_id"), "AK").unwrap();
        let error = format!("{:#}", resolve_credentials(Some(dir.path()), "b", env(&[])).unwrap_err());
        assert!(error.contains("must have the keys access_key_id and secret_access_key"), "{error}");
        assert!(error.contains(&dir.path().join("secret_access_key").display().to_string()), "{error}");
        assert!(error.contains("--sccache-credentials-dir"), "{error}");
    }

    #[test]
    fn flags_left_out_take_their_defaults() {
        let none = cache_flags(&[]);
        let s3 = none.settings("b", S3Credentials::Anonymous);
        assert_eq!((s3.region.as_str(), s3.key_prefix.as_str()), (DEFAULT_REGION, DEFAULT_KEY_PREFIX));
        assert!(!s3.use_ssl && !s3.server_side_encryption && !s3.read_only);
    }

    #[test]
    fn the_farms_cache_settings_fill_in_only_the_flags_not_given() {
        let taken = cache_flags(&[]).over_farm(&farm());
        let s3 = taken.settings(taken.bucket.as_deref().unwrap(), S3Credentials::Anonymous);
        assert_eq!(s3.bucket, "farm-bucket");
        assert_eq!((s3.region.as_str(), s3.key_prefix.as_str()), ("eu-west-1", "farm-prefix"));
        assert_eq!(s3.endpoint.as_deref(), Some("s3.farm:9000"));
        assert!(s3.use_ssl && s3.server_side_encryption);

        let mine = cache_flags(&[
            "--sccache-bucket=mine",
            "--sccache-region=ap-south-1",
            "--sccache-key-prefix=ci-only",
            "--sccache-endpoint=s3.ci:9000",
        ])
        .over_farm(&farm());
        let s3 = mine.settings(mine.bucket.as_deref().unwrap(), S3Credentials::Anonymous);
        assert_eq!((s3.bucket.as_str(), s3.region.as_str(), s3.key_prefix.as_str()), ("mine", "ap-south-1", "ci-only"));
        assert_eq!(s3.endpoint.as_deref(), Some("s3.ci:9000"));
    }

    /// A value given that happens to be the default still wins over the farm's:
    /// "given" is decided by the command line, not by comparing with the default.
    #[test]
    fn a_flag_given_at_its_default_value_still_overrides_the_farm() {
        let line = [
            format!("--sccache-region={DEFAULT_REGION}"),
            format!("--sccache-key-prefix={DEFAULT_KEY_PREFIX}"),
            "--sccache-use-ssl=false".to_owned(),
            "--sccache-server-side-encryption=false".to_owned(),
        ];
        let given = cache_flags(&line.iter().map(String::as_str).collect::<Vec<_>>()).over_farm(&farm());
        assert_eq!(given.region(), DEFAULT_REGION, "not the farm's eu-west-1");
        assert_eq!(given.key_prefix(), DEFAULT_KEY_PREFIX, "not the farm's farm-prefix");
        assert!(!given.use_ssl() && !given.server_side_encryption(), "switched off although the farm has them on");
    }
}
