//! A typed client of the leader's HTTP API, for tests and benchmarks: the same
//! `kiln_core::api` types the leader serves, plus the raw status code where a test
//! checks it.

use std::path::Path;
use std::time::Duration;

use kiln_core::api::{PipelineRecord, Status};

use crate::wait::wait_until;

#[derive(Debug, Clone)]
pub struct Leader {
    pub url: String,
    pub http: reqwest::Client,
    pub api_token: Option<String>,
    /// The CA of a leader that serves TLS, for the `kiln` client it makes.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Leader {
    pub fn new(url: String) -> Leader {
        Leader { url, http: reqwest::Client::new(), api_token: None, tls_ca: None }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(format!("{}{path}", self.url));
        match &self.api_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path`: the status code and the JSON body (`null` when it is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// One pipeline, by id or name; `None` when the leader does not answer 200.
    pub async fn try_pipeline(&self, key: &str) -> Result<PipelineRecord, String> {
        let response = self.get(&format!("/v0/pipelines/{key}")).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    pub async fn pipeline(&self, key: &str) -> PipelineRecord {
        self.try_pipeline(key).await.unwrap_or_else(|e| panic!("GET pipeline {key}: {e}"))
    }

    pub async fn pipelines(&self) -> Vec<PipelineRecord> {
        let response = self.get("/v0/pipelines").send().await.expect("listing pipelines");
        response.json().await.expect("a list of pipelines")
    }

    /// Submits the program directory `dir` as `name`, read as `kiln submit` reads it.
    pub async fn submit_dir(&self, name: &str, dir: &Path) -> anyhow::Result<PipelineRecord> {
        let leader = kiln::LeaderArgs {
            url: self.url.clone(),
            api: kiln::ApiTokenArgs { api_token: self.api_token.clone(), api_token_file: None },
            tls_ca: self.tls_ca.clone(),
        };
        let client = kiln::client::Client::new(&leader)?;
        Ok(client.submit(name, kiln::client::read_program(dir)?, None).await?.pipeline)
    }

    /// Waits until pipeline `key` reaches one of `statuses`.
    pub async fn wait_status(&self, key: &str, statuses: &[Status], timeout: Duration) -> PipelineRecord {
        self.wait_status_every(key, statuses, timeout, Duration::from_millis(50)).await
    }

    /// [`Leader::wait_status`], asking every `every`.
    pub async fn wait_status_every(
        &self,
        key: &str,
        statuses: &[Status],
        timeout: Duration,
        every: Duration,
    ) -> PipelineRecord {
        wait_until(&format!("pipeline {key} reaches {statuses:?}"), timeout, every, || async {
            match self.try_pipeline(key).await {
                Ok(record) if statuses.contains(&record.status) => Ok(record),
                Ok(record) => Err(format!("{record:?}")),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Waits until `/cluster_healthz` answers 200.
    pub async fn wait_healthy(&self, timeout: Duration) {
        wait_until("the farm is healthy", timeout, Duration::from_millis(100), || async {
            let (status, body) = self.cluster_health().await?;
            if status == 200 { Ok(()) } else { Err(body.to_string()) }
        })
        .await
    }

    /// Waits until the leader answers at all.
    pub async fn wait_answering(&self, timeout: Duration) {
        wait_until("the leader answers", timeout, Duration::from_millis(100), || async {
            self.http.get(format!("{}/healthz", self.url)).send().await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await
    }

    /// `GET /cluster_healthz`: its status code and body.
    pub async fn cluster_health(&self) -> Result<(u16, serde_json::Value), String> {
        let response =
            self.http.get(format!("{}/cluster_healthz", self.url)).send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.map_err(|e| e.to_string())?))
    }
}
