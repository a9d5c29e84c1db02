//! Real Kiln processes for the benchmarks: members of a farm started one by one (so
//! a benchmark controls N and each member's options), a real S3-compatible server,
//! and the leader's API. Every child is in its own process group and killed with it
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

pub const TOKEN: &str = "bench-cluster-token-0123456789";

/// A child process, killed with its group when dropped.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Process> {
        let file = std::fs::File::create(log)?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).env("KILN_LOG", "warn");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
        Ok(Process { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the tools `scripts/install-deps` installs are found.
pub fn installed(binary: &str) -> anyhow::Result<PathBuf> {
    kiln_compiler_worker::sccache::find_tool(binary)
        .with_context(|| format!("{binary} is not installed: run scripts/install-deps"))
}

/// What the benchmarks need to know to start members.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kiln: PathBuf,
    pub depset_cache: PathBuf,
    pub profile: String,
}

/// A farm of N members, each a `kiln server` process.
#[derive(Debug)]
pub struct Farm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub members: Vec<Process>,
    pub http: reqwest::Client,
}

impl Farm {
    /// Starts `workers` members with `extra` options each, and waits until the
    /// cluster is healthy. With `shared_build_root`, every member sees its own
    /// directory at that one path (a private mount), as under `kiln up`; otherwise
    /// each builds in `member-<i>/build`.
    pub async fn start(
        setup: &Setup,
        workers: u32,
        shared_build_root: Option<PathBuf>,
        extra: &[String],
    ) -> anyhow::Result<Farm> {
        let dir = tempfile::Builder::new().prefix("kiln-bench-").tempdir()?;
        let port = free_port()?;
        let mut members = Vec::new();
        for ordinal in 0..workers {
            let member_dir = dir.path().join(format!("member-{ordinal}"));
            let mut args = vec![
                "server".to_owned(),
                format!("--hostname=kiln-compiler-server-{ordinal}"),
                format!("--workers={workers}"),
                format!("--data-dir={}", member_dir.display()),
                format!("--depset-cache={}", setup.depset_cache.display()),
                format!("--cluster-token={TOKEN}"),
                format!("--leader=http://127.0.0.1:{port}"),
                format!("--listen=127.0.0.1:{port}"),
                format!("--profile={}", setup.profile),
            ];
            match &shared_build_root {
                Some(root) => {
                    args.push(format!("--build-root={}", root.display()));
                    args.push(format!("--build-root-source={}", member_dir.join("build").display()));
                }
                None => args.push(format!("--build-root={}", member_dir.join("build").display())),
            }
            args.extend(extra.iter().cloned());
            let log = dir.path().join(format!("member-{ordinal}.log"));
            members.push(Process::spawn(&setup.kiln, &args, &log)?);
        }
        let farm = Farm { dir, port, members, http: reqwest::Client::new() };
        farm.wait_healthy(Duration::from_secs(900)).await?;
        Ok(farm)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Member `ordinal`'s own build root (what its private mount shows at the
    /// shared path).
    pub fn build_root(&self, ordinal: u32) -> PathBuf {
        self.dir.path().join(format!("member-{ordinal}/build"))
    }

    pub fn leader_pid(&self) -> u32 {
        self.members[0].pid()
    }

    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = self.http.get(format!("{}/cluster_healthz", self.url())).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the farm in {} did not become healthy (see member-*.log there)", self.dir.path().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits the program in `dir` as `name` through the REST API; returns its id.
    pub async fn submit(&self, name: &str, dir: &Path) -> anyhow::Result<u64> {
        let mut files = Vec::new();
        for entry in walk(dir)? {
            let path = entry.strip_prefix(dir)?.to_string_lossy().into_owned();
            let content = std::fs::read(&entry)?;
            files.push(serde_json::json!({
                "path": path,
                "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
                "executable": false,
            }));
        }
        let body = serde_json::json!({"name": name, "files": files});
        let response = self.http.post(format!("{}/v0/pipelines", self.url())).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("submitting {name}: {}", response.text().await?);
        }
        let record: serde_json::Value = response.json().await?;
        record["pipeline"]["id"].as_u64().or_else(|| record["id"].as_u64()).context("the leader returned no id")
    }

    pub async fn record(&self, id: u64) -> anyhow::Result<serde_json::Value> {
        Ok(self.http.get(format!("{}/v0/pipelines/{id}", self.url())).send().await?.error_for_status()?.json().await?)
    }

    /// Waits until pipeline `id` has finished, and returns its record; a build that
    /// did not succeed is an error.
    pub async fn wait_success(&self, id: u64) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let record = self.record(id).await?;
            match record["status"].as_str() {
                Some("success") => return Ok(record),
                Some("compile_error" | "system_error") => bail!("pipeline {id} failed: {}", record["error"]),
                _ if Instant::now() > deadline => bail!("pipeline {id} did not finish: {record}"),
                // The figures come from the leader's own timestamps, so a slow poll costs no
                // precision, and keeps this process from competing with the builds.
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The id the next new pipeline will get: ids are handed out in sequence.
    pub async fn next_id(&self) -> anyhow::Result<u64> {
        let list: serde_json::Value =
            self.http.get(format!("{}/v0/pipelines", self.url())).send().await?.error_for_status()?.json().await?;
        let items = list.as_array().or_else(|| list["pipelines"].as_array()).cloned().unwrap_or_default();
        Ok(items.iter().filter_map(|p| p["id"].as_u64()).max().unwrap_or(0) + 1)
    }
}

pub fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}

/// A real S3-compatible server (s3s-fs) on loopback with one bucket.
#[derive(Debug)]
pub struct S3 {
    _process: Process,
    pub port: u16,
    pub credentials: PathBuf,
}

pub const S3_BUCKET: &str = "kiln-bench-cache";

impl S3 {
    pub fn start(dir: &Path) -> anyhow::Result<S3> {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(S3_BUCKET))?;
        let port = free_port()?;
        let (access, secret) = ("kiln-bench-access", "kiln-bench-secret-key");
        let args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            access.into(),
            "--secret-key".into(),
            secret.into(),
            root.display().to_string(),
        ];
        let process = Process::spawn(&installed("s3s-fs")?, &args, &dir.join("s3s-fs.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let credentials = dir.join("s3-secret");
        std::fs::create_dir_all(&credentials)?;
        std::fs::write(credentials.join("access_key_id"), access)?;
        std::fs::write(credentials.join("secret_access_key"), secret)?;
        Ok(S3 { _process: process, port, credentials })
    }

    /// The member options that build through sccache on this store.
    pub fn member_flags(&self) -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "--sccache=auto".into(),
            format!("--sccache-binary={}", installed("sccache")?.display()),
            format!("--sccache-bucket={S3_BUCKET}"),
            format!("--sccache-endpoint=127.0.0.1:{}", self.port),
            format!("--sccache-credentials-dir={}", self.credentials.display()),
        ])
    }
}
