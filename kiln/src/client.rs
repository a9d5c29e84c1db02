//! The HTTP client of the leader's `/v0` API, used by the client commands and by
//! `kiln up`. Turns the leader's JSON errors into plain messages.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use kiln_core::api::{ErrorBody, PipelineRecord, SHA256_HEADER, SubmitFile, SubmitRequest, SubmitResponse};
use kiln_core::program::ProgramFile;

use crate::config::leader::LeaderArgs;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_token: Option<String>,
}

/// Directories never sent with a program: build outputs and version control.
const SKIPPED_DIRS: [&str; 3] = ["target", ".git", ".kiln"];

/// Reads a program directory into the files `POST /v0/pipelines` takes. Symbolic
/// links are followed only while they stay inside the directory.
pub fn read_program(dir: &Path) -> anyhow::Result<Vec<ProgramFile>> {
    let root = dir.canonicalize().with_context(|| format!("reading the program directory {}", dir.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory: a program is a directory holding a Cargo.toml", dir.display());
    }
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(&root).follow_links(true).sort_by_file_name().into_iter().filter_entry(|e| {
        !(e.depth() > 0 && e.file_type().is_dir() && SKIPPED_DIRS.contains(&e.file_name().to_string_lossy().as_ref()))
    });
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if !entry.file_type().is_file() || entry.file_name() == "Cargo.lock" {
            continue;
        }
        let real = entry.path().canonicalize()?;
        if !real.starts_with(&root) {
            bail!(
                "{} links to {}, outside the program directory: copy the file in instead",
                entry.path().display(),
                real.display()
            );
        }
        let relative = entry.path().strip_prefix(&root).context("a walked path is under its root")?;
        let path = relative.to_str().with_context(|| format!("{} is not a UTF-8 path", relative.display()))?.to_owned();
        let content = std::fs::read(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
        let executable = {
            use std::os::unix::fs::PermissionsExt;
            entry.metadata()?.permissions().mode() & 0o111 != 0
        };
        files.push(ProgramFile { path, content, executable });
    }
    Ok(files)
}

/// The pipeline name a directory gets by default: its own name.
pub fn default_name(dir: &Path) -> anyhow::Result<String> {
    let canonical = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable name: pass --name", dir.display()))
}

impl Client {
    pub fn new(leader: &LeaderArgs) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = &leader.tls_ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading the CA certificate {} (--tls-ca)", ca.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate (--tls-ca)", ca.display()))?;
            if roots.is_empty() {
                bail!("{} holds no PEM certificate (--tls-ca)", ca.display());
            }
            builder = builder.tls_certs_only(roots);
        }
        let http = builder.build().context("creating the HTTP client")?;
        Ok(Client { http, base: leader.url.trim_end_matches('/').to_owned(), api_token: leader.token()? })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
        bail!("{message} (HTTP {status})")
    }

    /// The error of a request that got no answer: a TLS problem explained, or the
    /// usual hint.
    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        match kiln_core::tls_failure::explain(error) {
            Some(tls) => anyhow::anyhow!("cannot reach the leader at {}: {tls}", self.base),
            None => anyhow::anyhow!(
                "cannot reach the leader at {}: {}. Is the farm running (`kiln up`)? Set --leader or KILN_LEADER otherwise",
                self.base,
                kiln_core::tls_failure::chain(error)
            ),
        }
    }

    /// Submits `files` as pipeline `name`, in `profile` (the farm's when None).
    pub async fn submit(
        &self,
        name: &str,
        files: Vec<ProgramFile>,
        profile: Option<&str>,
    ) -> anyhow::Result<SubmitResponse> {
        let files = files
            .into_iter()
            .map(|f| SubmitFile {
                path: f.path,
                content_base64: base64::engine::general_purpose::STANDARD.encode(f.content),
                executable: f.executable,
            })
            .collect();
        let body = SubmitRequest { name: name.to_owned(), files, profile: profile.map(str::to_owned) };
        let response = self.send(self.request(reqwest::Method::POST, "/v0/pipelines").json(&body)).await?;
        response.json().await.context("reading the leader's answer")
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<PipelineRecord> {
        let response = self.send(self.request(reqwest::Method::GET, &format!("/v0/pipelines/{key}"))).await?;
        response.json().await.context("reading the leader's answer")
    }

    /// Every pipeline, page after page (the leader pages its list and names the
    /// next page in a `Link` header).
    pub async fn list(&self) -> anyhow::Result<Vec<PipelineRecord>> {
        let mut records: Vec<PipelineRecord> = Vec::new();
        let mut path = "/v0/pipelines".to_owned();
        loop {
            let response = self.send(self.request(reqwest::Method::GET, &path)).await?;
            let next = response.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
            let page: Vec<PipelineRecord> = response.json().await.context("reading the leader's answer")?;
            let last = records.last().map(|r| r.id);
            if page.first().is_some_and(|first| last.is_some_and(|last| first.id <= last)) {
                bail!("the leader's next page ({path}) went backwards: stopped listing");
            }
            records.extend(page);
            match next {
                Some(next) => path = next,
                None => return Ok(records),
            }
        }
    }

    pub async fn cancel(&self, key: &str) -> anyhow::Result<PipelineRecord> {
        let response = self.send(self.request(reqwest::Method::POST, &format!("/v0/pipelines/{key}/cancel"))).await?;
        response.json().await.context("reading the leader's answer")
    }

    /// What a CI job needs to share the farm's cache.
    pub async fn cache_settings(&self) -> anyhow::Result<kiln_core::api::CacheSettings> {
        let response = self.send(self.request(reqwest::Method::GET, "/v0/cache-settings")).await?;
        response.json().await.context("reading the leader's cache settings")
    }

    pub async fn log(&self, key: &str) -> anyhow::Result<String> {
        let response = self.send(self.request(reqwest::Method::GET, &format!("/v0/pipelines/{key}/log"))).await?;
        response.text().await.context("reading the log")
    }

    /// Starts fetching a binary: the response (to stream) and the SHA-256 the
    /// leader declares for it.
    pub async fn binary(&self, key: &str) -> anyhow::Result<(reqwest::Response, String)> {
        let response = self.send(self.request(reqwest::Method::GET, &format!("/v0/pipelines/{key}/binary"))).await?;
        let sha = response
            .headers()
            .get(SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .with_context(|| format!("the leader sent no {SHA256_HEADER} header with the binary"))?;
        Ok((response, sha))
    }

    /// `GET /cluster_healthz`: whether all members are healthy, and the body.
    pub async fn cluster_health(&self) -> anyhow::Result<(bool, serde_json::Value)> {
        // With the token when there is one: the members' cache state is shown then.
        let response =
            self.request(reqwest::Method::GET, "/cluster_healthz").send().await.map_err(|e| self.unreachable(&e))?;
        let healthy = response.status().is_success();
        Ok((healthy, response.json().await.context("reading /cluster_healthz")?))
    }
}

/// The target of `rel="next"` in a `Link` header, when it is a path of this API.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        (next && target.starts_with("/v0/pipelines?")).then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let header = r#"</v0/pipelines?after=500&limit=500>; rel="next""#;
        assert_eq!(next_link(header).as_deref(), Some("/v0/pipelines?after=500&limit=500"));
        assert_eq!(next_link(r#"</v0/pipelines?after=1>; rel="prev""#), None);
        assert_eq!(next_link(r#"<https://elsewhere.example/steal>; rel="next""#), None, "only this API's paths");
        assert_eq!(next_link("garbage"), None);
    }
}
