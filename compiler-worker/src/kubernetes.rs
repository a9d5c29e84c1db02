//! The scaling guard's view of Kubernetes: a member reads its StatefulSet's replica
//! count from the API server (`GET /apis/apps/v1/namespaces/{ns}/statefulsets/{name}`,
//! with the pod's service-account token and CA) at startup, and keeps reading it.
//! A count other than N trips the guard.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use kiln_core::scaling::ScalingGuard;

/// Where the pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A client for one StatefulSet.
#[derive(Debug, Clone)]
pub struct StatefulSetClient {
    http: reqwest::Client,
    url: String,
    token: String,
    name: String,
}

/// The API server inside a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
pub fn in_cluster_api() -> anyhow::Result<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .context("KUBERNETES_SERVICE_HOST is not set: not in a pod? pass --kubernetes-api")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(format!("https://{host}:{port}"))
}

impl StatefulSetClient {
    /// A client for StatefulSet `name`, authenticated with the service account in
    /// `service_account_dir` (files `token`, `namespace`, and `ca.crt` for https).
    pub fn new(api: &str, service_account_dir: &Path, name: &str) -> anyhow::Result<StatefulSetClient> {
        let read = |file: &str| -> anyhow::Result<String> {
            let path: PathBuf = service_account_dir.join(file);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("reading the service account's {} ({})", file, path.display()))?
                .trim()
                .to_owned())
        };
        let token = read("token")?;
        let namespace = read("namespace")?;
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(15));
        let ca = service_account_dir.join("ca.crt");
        if api.starts_with("https://") && ca.exists() {
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .context("the service account's ca.crt is not a PEM certificate")?;
            builder = builder.add_root_certificate(certificate);
        }
        let url = format!("{}/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}", api.trim_end_matches('/'));
        Ok(StatefulSetClient {
            http: builder.build().context("creating the Kubernetes API client")?,
            url,
            token,
            name: name.to_owned(),
        })
    }

    /// The StatefulSet's `spec.replicas`.
    pub async fn replicas(&self) -> anyhow::Result<u32> {
        let response = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("asking the Kubernetes API for StatefulSet {}", self.name))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!(
                "the Kubernetes API answered {status} for StatefulSet {} ({}); the member's Role must allow `get` on it",
                self.name,
                body.chars().take(200).collect::<String>()
            );
        }
        let body: serde_json::Value = response.json().await.context("reading the StatefulSet")?;
        let replicas = body["spec"]["replicas"]
            .as_u64()
            .with_context(|| format!("StatefulSet {} has no spec.replicas", self.name))?;
        u32::try_from(replicas).with_context(|| format!("StatefulSet {} has {replicas} replicas", self.name))
    }

    /// Reads the replica count every `interval` until `shutdown`, feeding it to the
    /// scaling guard. API errors are logged and retried: a flaky API server is not a
    /// reason to restart the set.
    pub async fn watch(self, guard: ScalingGuard, interval: Duration, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
            match self.replicas().await {
                Ok(replicas) => {
                    failing = false;
                    guard.observe_replicas(replicas);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "reading the StatefulSet failed; will retry");
                    }
                    failing = true;
                }
            }
        }
    }
}
