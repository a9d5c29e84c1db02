//! The shared compile cache's store: an S3-compatible bucket (or a local directory),
//! how sccache is told about it, and what Kiln itself does with it through
//! `aws-sdk-s3`: a preflight at startup that names what is wrong in plain words, a
//! cheap health probe for `/cluster_healthz`, and the housekeeping sccache never does
//! (statistics, pruning under the key prefix).
//!
//! **Invariant:** credentials go to the SDK clients (the cache gateway's, the
//! housekeeping's) and, with `--sandbox=off` only, to the worker's sccache server's
//! environment; never to cargo, build scripts, a sandbox, or a log (`Debug` redacts
//! them).

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Where sccache keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStore {
    /// A directory on this machine; `read_only` as `--sccache-read-only` says.
    LocalDisk { dir: PathBuf, read_only: bool },
    /// An S3-compatible bucket, shared by every worker and by CI.
    S3(S3Settings),
}

/// How the S3 store is reached, as in the Helm chart's `parallelCompilation.sccache.s3`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// Prepended to every object key; Kiln's housekeeping never leaves it.
    pub key_prefix: String,
    /// `host:port` of an S3-compatible server (MinIO, Garage...); None for AWS.
    pub endpoint: Option<String>,
    pub use_ssl: bool,
    /// SSE-S3 on every object sccache writes.
    pub server_side_encryption: bool,
    pub credentials: S3Credentials,
    /// Read hits but never write (for untrusted CI jobs).
    pub read_only: bool,
}

/// Where the S3 credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// An access key, e.g. from a Kubernetes Secret with keys `access_key_id` and
    /// `secret_access_key`.
    Static { access_key_id: String, secret_access_key: String },
    /// IRSA: `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`.
    WebIdentity { role_arn: String, token_file: PathBuf },
    /// No credentials: a public bucket.
    Anonymous,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Credentials::Static { access_key_id, .. } => {
                write!(f, "Static {{ access_key_id: {}, secret_access_key: <redacted> }}", redact_key(access_key_id))
            }
            S3Credentials::WebIdentity { role_arn, token_file } => {
                write!(f, "WebIdentity {{ role_arn: {role_arn}, token_file: {} }}", token_file.display())
            }
            S3Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("key_prefix", &self.key_prefix)
            .field("endpoint", &self.endpoint)
            .field("use_ssl", &self.use_ssl)
            .field("server_side_encryption", &self.server_side_encryption)
            .field("credentials", &self.credentials)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The first four characters of an access key, enough to tell keys apart in a
/// message without giving one away.
pub fn redact_key(key: &str) -> String {
    let shown: String = key.chars().take(4).collect();
    format!("{shown}…")
}

impl S3Settings {
    /// The endpoint as people read it: `http://127.0.0.1:9000`, or AWS's for the region.
    pub fn endpoint_url(&self) -> String {
        let scheme = if self.use_ssl { "https" } else { "http" };
        match &self.endpoint {
            Some(endpoint) if endpoint.contains("://") => endpoint.clone(),
            Some(endpoint) => format!("{scheme}://{endpoint}"),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }

    pub fn describe(&self) -> String {
        let mode = if self.read_only { ", read-only" } else { "" };
        format!("sccache on S3 (bucket {} at {}, prefix {:?}{mode})", self.bucket, self.endpoint_url(), self.key_prefix)
    }

    /// The variables the sccache server needs, credentials included: for the server's
    /// environment only.
    pub fn sccache_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SCCACHE_BUCKET".to_owned(), self.bucket.clone()),
            ("SCCACHE_REGION".to_owned(), self.region.clone()),
            ("SCCACHE_S3_KEY_PREFIX".to_owned(), self.key_prefix.clone()),
            ("SCCACHE_S3_USE_SSL".to_owned(), self.use_ssl.to_string()),
            ("SCCACHE_S3_SERVER_SIDE_ENCRYPTION".to_owned(), self.server_side_encryption.to_string()),
            ("SCCACHE_S3_RW_MODE".to_owned(), if self.read_only { "READ_ONLY" } else { "READ_WRITE" }.to_owned()),
        ];
        if let Some(endpoint) = &self.endpoint {
            env.push(("SCCACHE_ENDPOINT".to_owned(), endpoint.clone()));
        }
        match &self.credentials {
            S3Credentials::Static { access_key_id, secret_access_key } => {
                env.push(("AWS_ACCESS_KEY_ID".to_owned(), access_key_id.clone()));
                env.push(("AWS_SECRET_ACCESS_KEY".to_owned(), secret_access_key.clone()));
            }
            S3Credentials::WebIdentity { role_arn, token_file } => {
                env.push(("AWS_ROLE_ARN".to_owned(), role_arn.clone()));
                env.push(("AWS_WEB_IDENTITY_TOKEN_FILE".to_owned(), token_file.display().to_string()));
            }
            S3Credentials::Anonymous => env.push(("SCCACHE_S3_NO_CREDENTIALS".to_owned(), "true".to_owned())),
        }
        env
    }

    /// An SDK client for this store, with short timeouts: every use is a probe or a
    /// listing, and an unreachable endpoint must be reported, not waited on.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        self.client_with(timeouts, aws_sdk_s3::config::retry::RetryConfig::disabled()).await
    }

    /// An SDK client for moving cached objects (the cache gateway): long enough
    /// timeouts for objects of hundreds of megabytes, and the SDK's standard retries.
    pub async fn transfer_client(&self) -> aws_sdk_s3::Client {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(300))
            .operation_timeout(Duration::from_secs(600))
            .build();
        self.client_with(timeouts, aws_sdk_s3::config::retry::RetryConfig::standard()).await
    }

    async fn client_with(
        &self,
        timeouts: TimeoutConfig,
        retry: aws_sdk_s3::config::retry::RetryConfig,
    ) -> aws_sdk_s3::Client {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .timeout_config(timeouts);
        loader = match &self.credentials {
            S3Credentials::Static { access_key_id, secret_access_key } => {
                loader.credentials_provider(Credentials::new(access_key_id, secret_access_key, None, None, "kiln"))
            }
            // The default chain reads AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE.
            S3Credentials::WebIdentity { .. } => loader,
            S3Credentials::Anonymous => loader.no_credentials(),
        };
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared).retry_config(retry);
        if self.endpoint.is_some() {
            // S3-compatible servers address buckets by path, not by host name.
            config = config.endpoint_url(self.endpoint_url()).force_path_style(true);
        }
        aws_sdk_s3::Client::from_conf(config.build())
    }

    /// The key of an object under the prefix.
    fn key(&self, name: &str) -> String {
        if self.key_prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.key_prefix.trim_end_matches('/'))
        }
    }

    /// The prefix Kiln lists and prunes under ("" for the whole bucket).
    pub fn list_prefix(&self) -> Option<String> {
        (!self.key_prefix.is_empty()).then(|| format!("{}/", self.key_prefix.trim_end_matches('/')))
    }
}

/// What the preflight found wrong, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cache store check failed for bucket {bucket:?} at {endpoint}: {what}")]
pub struct PreflightError {
    pub bucket: String,
    pub endpoint: String,
    pub what: String,
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than
/// every layer's wrapping of it.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Explains an SDK failure of `operation` in plain words.
fn explain<E>(settings: &S3Settings, operation: &str, error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let key = match &settings.credentials {
        S3Credentials::Static { access_key_id, .. } => format!("access key {}", redact_key(access_key_id)),
        S3Credentials::WebIdentity { role_arn, .. } => format!("role {role_arn}"),
        S3Credentials::Anonymous => "no credentials".to_owned(),
    };
    match error {
        SdkError::DispatchFailure(failure) => {
            let detail = root_cause(error);
            if failure.is_timeout() {
                format!(
                    "{operation}: the endpoint did not answer in time; check the endpoint and that the store is running"
                )
            } else if detail.contains("tls")
                || detail.contains("TLS")
                || detail.contains("certificate")
                || detail.contains("InvalidContentType")
            {
                format!(
                    "{operation}: TLS handshake failed ({detail}); is useSSL right? The endpoint may speak plain HTTP (useSSL: false)"
                )
            } else {
                format!(
                    "{operation}: the endpoint is unreachable ({detail}); check the endpoint and that the store is running"
                )
            }
        }
        SdkError::TimeoutError(_) => format!(
            "{operation}: the endpoint did not answer in time; check the endpoint and that the store is running"
        ),
        SdkError::ResponseError(_) => format!(
            "{operation}: the endpoint's answer is not S3 ({}); if it speaks HTTPS, set useSSL: true",
            DisplayErrorContext(error)
        ),
        SdkError::ServiceError(_) => {
            let status = error.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let code = error.code().unwrap_or("");
            match (status, code) {
                (404, _) | (_, "NoSuchBucket") => {
                    "the bucket does not exist: create it, or fix the bucket name".to_owned()
                }
                (403, _) | (401, _) | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => format!(
                    "{operation}: the store refuses the credentials ({key}, {code}); check the Secret's access_key_id and secret_access_key, or the IRSA role"
                ),
                (400, _) if operation.contains("encryption") => format!(
                    "{operation}: the store refuses server-side encryption ({code}); set serverSideEncryption: false or enable SSE-S3 on the store"
                ),
                _ => format!("{operation}: the store answered HTTP {status} {code}: {}", error.message().unwrap_or("")),
            }
        }
        other => format!("{operation}: {}", DisplayErrorContext(other)),
    }
}

/// Checks, before any build, that the bucket exists, the credentials are accepted,
/// and (unless read-only) that an object can be written with the configured
/// encryption and deleted again.
pub async fn preflight(settings: &S3Settings, member: &str) -> Result<(), PreflightError> {
    let fail =
        |what: String| PreflightError { bucket: settings.bucket.clone(), endpoint: settings.endpoint_url(), what };
    let client = settings.client().await;
    client
        .head_bucket()
        .bucket(&settings.bucket)
        .send()
        .await
        .map_err(|e| fail(explain(settings, "checking the bucket", &e)))?;
    if settings.read_only {
        return Ok(());
    }
    let key = settings.key(&format!(".kiln-preflight/{member}"));
    let mut put = client.put_object().bucket(&settings.bucket).key(&key).body(b"kiln preflight".to_vec().into());
    if settings.server_side_encryption {
        put = put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256);
    }
    let operation = if settings.server_side_encryption {
        "writing a test object with server-side encryption"
    } else {
        "writing a test object"
    };
    put.send().await.map_err(|e| fail(explain(settings, operation, &e)))?;
    client
        .delete_object()
        .bucket(&settings.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| fail(explain(settings, "deleting the test object", &e)))?;
    Ok(())
}

/// A quick "does the store answer" for heartbeats.
pub async fn probe(settings: &S3Settings, client: &aws_sdk_s3::Client) -> Result<(), String> {
    client
        .head_bucket()
        .bucket(&settings.bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| explain(settings, "checking the bucket", &e))
}

/// One cached object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedObject {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Every object under the key prefix.
pub async fn list_objects(settings: &S3Settings) -> Result<Vec<CachedObject>, PreflightError> {
    let fail =
        |what: String| PreflightError { bucket: settings.bucket.clone(), endpoint: settings.endpoint_url(), what };
    let client = settings.client().await;
    let mut objects = Vec::new();
    let mut pages =
        client.list_objects_v2().bucket(&settings.bucket).set_prefix(settings.list_prefix()).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| fail(explain(settings, "listing the cache", &e)))?;
        for object in page.contents() {
            let modified =
                object.last_modified().and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
            objects.push(CachedObject {
                key: object.key().unwrap_or_default().to_owned(),
                size: object.size().unwrap_or(0).max(0) as u64,
                modified,
            });
        }
    }
    Ok(objects)
}

/// Which objects a prune removes: everything older than `older_than`, then the
/// oldest of the rest until what remains fits in `max_bytes`. Pure, so it is tested
/// without a store.
pub fn select_for_pruning(
    objects: &[CachedObject],
    now: SystemTime,
    older_than: Option<Duration>,
    max_bytes: Option<u64>,
) -> Vec<CachedObject> {
    let mut sorted: Vec<&CachedObject> = objects.iter().collect();
    sorted.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.key.cmp(&b.key)));
    let mut remaining: u64 = objects.iter().map(|o| o.size).sum();
    let mut selected = Vec::new();
    for object in sorted {
        let too_old = older_than.is_some_and(|limit| now.duration_since(object.modified).unwrap_or_default() > limit);
        let over = max_bytes.is_some_and(|limit| remaining > limit);
        if too_old || over {
            remaining -= object.size;
            selected.push(object.clone());
        }
    }
    selected
}

/// Deletes `objects`, refusing any key outside the prefix.
pub async fn delete_objects(settings: &S3Settings, objects: &[CachedObject]) -> Result<usize, PreflightError> {
    let fail =
        |what: String| PreflightError { bucket: settings.bucket.clone(), endpoint: settings.endpoint_url(), what };
    let client = settings.client().await;
    let prefix = settings.list_prefix().unwrap_or_default();
    let mut deleted = 0;
    for object in objects {
        if !object.key.starts_with(&prefix) {
            return Err(fail(format!("refusing to delete {:?}: it is outside the key prefix {prefix:?}", object.key)));
        }
        client
            .delete_object()
            .bucket(&settings.bucket)
            .key(&object.key)
            .send()
            .await
            .map_err(|e| fail(explain(settings, "deleting a cached object", &e)))?;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            bucket: "cache".into(),
            region: "us-east-1".into(),
            key_prefix: "sccache".into(),
            endpoint: Some("127.0.0.1:9000".into()),
            use_ssl: false,
            server_side_encryption: true,
            credentials: S3Credentials::Static {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: "very-secret".into(),
            },
            read_only: false,
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("very-secret") && !text.contains("AKIAEXAMPLE"), "{text}");
        assert!(text.contains("AKIA…"));
    }

    #[test]
    fn sccache_gets_the_seed_variables() {
        let env: std::collections::HashMap<_, _> = settings().sccache_env().into_iter().collect();
        assert_eq!(env["SCCACHE_BUCKET"], "cache");
        assert_eq!(env["SCCACHE_ENDPOINT"], "127.0.0.1:9000");
        assert_eq!(env["SCCACHE_S3_USE_SSL"], "false");
        assert_eq!(env["SCCACHE_S3_SERVER_SIDE_ENCRYPTION"], "true");
        assert_eq!(env["SCCACHE_S3_KEY_PREFIX"], "sccache");
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "very-secret");
        assert_eq!(settings().endpoint_url(), "http://127.0.0.1:9000");
    }

    #[test]
    fn pruning_takes_the_old_then_the_oldest_until_it_fits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let object =
            |key: &str, size, age_s| CachedObject { key: key.into(), size, modified: now - Duration::from_secs(age_s) };
        let objects =
            vec![object("p/a", 10, 50_000), object("p/b", 10, 30), object("p/c", 10, 20), object("p/d", 10, 10)];
        let by_age = select_for_pruning(&objects, now, Some(Duration::from_secs(3600)), None);
        assert_eq!(by_age.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["p/a"]);
        let by_size = select_for_pruning(&objects, now, None, Some(20));
        assert_eq!(by_size.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["p/a", "p/b"]);
        assert!(select_for_pruning(&objects, now, None, None).is_empty(), "no limits select nothing");
    }
}
