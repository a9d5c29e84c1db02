//! A real S3-compatible server (s3s-fs, installed by `scripts/install-deps`) on
//! loopback, storing buckets as directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::machine::{free_port, installed};
use crate::process::Process;
use crate::wait::wait_until_blocking;

#[derive(Debug)]
pub struct S3Server {
    pub process: Option<Process>,
    /// Where the buckets are, one directory each.
    pub root: PathBuf,
    pub port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    dir: PathBuf,
}

impl S3Server {
    /// Starts a server under `dir` with one empty bucket.
    pub fn start(dir: &Path, bucket: &str, access_key: &str, secret_key: &str) -> S3Server {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(bucket)).expect("creating the bucket's directory");
        let mut server = S3Server {
            process: None,
            root,
            port: free_port(),
            bucket: bucket.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            dir: dir.to_owned(),
        };
        server.resume();
        server
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&mut self) {
        let args = [
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.port.to_string().into(),
            "--access-key".into(),
            self.access_key.clone().into(),
            "--secret-key".into(),
            self.secret_key.clone().into(),
            self.root.clone().into_os_string(),
        ];
        let process = Process::start("s3s-fs", &installed("s3s-fs"), &args, &[], &self.dir).expect("starting s3s-fs");
        self.process = Some(process);
        let port = self.port;
        wait_until_blocking("s3s-fs accepts connections", Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A directory shaped like a mounted Kubernetes Secret with the store's access
    /// key and `secret` as the secret key.
    pub fn credentials_dir(&self, secret: &str) -> PathBuf {
        let dir = self.dir.join(format!("secret-{secret}"));
        std::fs::create_dir_all(&dir).expect("creating the Secret directory");
        std::fs::write(dir.join("access_key_id"), &self.access_key).expect("writing the Secret");
        std::fs::write(dir.join("secret_access_key"), secret).expect("writing the Secret");
        dir
    }

    /// The flags that point a member or a command at `bucket` on this store.
    pub fn flags(&self, bucket: &str, secret: &str) -> Vec<String> {
        vec![
            format!("--sccache-bucket={bucket}"),
            format!("--sccache-endpoint={}", self.endpoint()),
            format!("--sccache-credentials-dir={}", self.credentials_dir(secret).display()),
        ]
    }

    /// Every object file under the bucket's key prefix.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        walk(&self.root.join(&self.bucket).join(prefix))
    }
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { found.extend(walk(&path)) } else { found.push(path) }
        }
    }
    found
}
