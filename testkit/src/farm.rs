//! A farm of real `kiln server` processes, started one by one so that a test can
//! kill and restart any member. Member command lines are built from
//! [`ServerArgs`], the same struct `kiln server` parses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::ServerArgs;

use crate::leader::Leader;
use crate::machine::free_port;
use crate::process::Process;

/// What every member of a farm shares.
#[derive(Debug, Clone)]
pub struct FarmSetup {
    /// The `kiln` binary.
    pub kiln: PathBuf,
    /// The prebuilt dependency set, shared by every farm of a run.
    pub depset_cache: PathBuf,
    pub cluster_token: String,
    /// `kiln server` options for every member, before each member's own.
    pub options: Vec<String>,
    /// When a member's own options say nothing of sccache, build with plain cargo.
    pub cache_off_by_default: bool,
    /// `KILN_LOG` for the members.
    pub log: String,
    /// Serve the `/v0` API without a token (`--no-api-token`) unless a member's own
    /// options name one: the kit's clients send none. Off, the leader keeps its
    /// generated token in `<member-0>/api-token`, as a real farm does.
    pub open_api: bool,
    /// Run the members as this user rather than as the test's (root).
    pub run_as: Option<std::sync::Arc<crate::nonroot::NonRoot>>,
    /// Pin member `i` to the CPUs `pin[i]` (`taskset`, as `kiln up
    /// --cpus-per-member` pins its members), when given.
    pub pin: Option<Vec<Vec<usize>>>,
}

impl FarmSetup {
    /// The end-to-end tests' preset: the dev profile (builds in seconds), fast
    /// heartbeats and retries (a fault shows within seconds, not minutes), plain
    /// cargo unless a test asks for sccache, the API open, members logging at info.
    pub fn tests(kiln: PathBuf, depset_cache: PathBuf, cluster_token: &str) -> FarmSetup {
        FarmSetup {
            kiln,
            depset_cache,
            cluster_token: cluster_token.into(),
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
            run_as: None,
            pin: None,
        }
    }

    /// The benchmarks' preset: the profile being measured, the compile cache as
    /// each comparison asks, the production heartbeats, members logging at `log`.
    pub fn benchmarks(
        kiln: PathBuf,
        depset_cache: PathBuf,
        cluster_token: &str,
        profile: &str,
        log: &str,
    ) -> FarmSetup {
        FarmSetup {
            kiln,
            depset_cache,
            cluster_token: cluster_token.into(),
            options: vec![format!("--profile={profile}")],
            cache_off_by_default: false,
            log: log.into(),
            open_api: true,
            run_as: None,
            pin: None,
        }
    }
}

/// One member to start: its ordinal, N, and options of its own.
#[derive(Debug, Clone)]
pub struct Member {
    pub ordinal: u32,
    pub workers: u32,
    pub extra: Vec<String>,
}

#[derive(Debug)]
pub struct Farm {
    pub setup: FarmSetup,
    /// When set, every member builds at this one path, privately mounted over its
    /// own directory (as `kiln up` does), so sccache hits cross members.
    pub shared_build_root: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub members: Vec<Option<Process>>,
    /// Killed members, kept so that their output is printed if the test fails.
    pub stopped: Vec<Process>,
    /// The HTTP client of [`Farm::leader`], for requests of a test's own.
    pub http: reqwest::Client,
    /// When set ([`Farm::serve_tls`]), the leader serves TLS with these
    /// certificates and every member and client trusts their CA.
    pub tls: Option<std::sync::Arc<crate::certificates::TestCertificates>>,
}

impl Farm {
    /// A farm with room for `slots` members, none started.
    pub fn new(setup: FarmSetup, slots: usize) -> Farm {
        let port = free_port();
        let dir = tempfile::Builder::new().prefix("kiln-farm-").tempdir().expect("a temporary directory");
        // As in production: the token in a file only the member's user reads, never
        // in a member's environment.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .mode(0o600)
                .write(true)
                .create_new(true)
                .open(dir.path().join("cluster-token"))
                .expect("writing the cluster token file");
            file.write_all(setup.cluster_token.as_bytes()).expect("writing the cluster token file");
        }
        if let Some(user) = &setup.run_as {
            user.give(dir.path());
            user.give(&dir.path().join("cluster-token"));
        }
        Farm {
            setup,
            shared_build_root: None,
            dir,
            port,
            members: (0..slots).map(|_| None).collect(),
            stopped: Vec::new(),
            http: reqwest::Client::new(),
            tls: None,
        }
    }

    /// Serves TLS with `certs` (before any member starts): the leader's port and the
    /// workers' /healthz, every member trusting the CA, [`Farm::url`] https://.
    pub fn serve_tls(&mut self, certs: std::sync::Arc<crate::certificates::TestCertificates>) {
        self.http = certs.client();
        self.tls = Some(certs);
    }

    /// Starts `workers` members, each with `extra`, and waits until the farm is healthy.
    pub async fn start_all(
        setup: FarmSetup,
        workers: u32,
        shared_build_root: Option<PathBuf>,
        extra: &[String],
        timeout: Duration,
    ) -> Farm {
        let mut farm = Farm::new(setup, workers as usize);
        farm.shared_build_root = shared_build_root;
        for ordinal in 0..workers {
            farm.start(Member { ordinal, workers, extra: extra.to_vec() });
        }
        farm.leader().wait_healthy(timeout).await;
        farm
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A typed client of this farm's leader (at `port`, which a test may change to
    /// follow a leader it did not start).
    pub fn leader(&self) -> Leader {
        Leader {
            url: self.url(),
            http: self.http.clone(),
            api_token: None,
            tls_ca: self.tls.as_ref().map(|certs| certs.ca.clone()),
        }
    }

    /// Member `ordinal`'s own directory, and its build root under it (what its
    /// private mount shows at the shared path).
    pub fn member_dir(&self, ordinal: u32) -> PathBuf {
        self.dir.path().join(format!("member-{ordinal}"))
    }

    pub fn build_root(&self, ordinal: u32) -> PathBuf {
        self.member_dir(ordinal).join("build")
    }

    /// The arguments of one member: the setup's options, then its own, then what
    /// this farm decides (names, directories, ports, the token).
    pub fn server_args(&self, member: &Member) -> ServerArgs {
        let mut options: Vec<String> = self.setup.options.clone();
        if self.setup.cache_off_by_default && !member.extra.iter().any(|a| a.starts_with("--sccache")) {
            options.push("--sccache=off".into());
        }
        if self.setup.open_api && !member.extra.iter().any(|a| a.starts_with("--api-token")) {
            options.push("--no-api-token=true".into());
        }
        // A test's build root is on the machine's own disk, however full it is:
        // pruning (above the high watermark, 85 % by default) would take the crates
        // and targets that tests of reuse look for. Tests of the watermarks set
        // their own.
        if !member.extra.iter().any(|a| a.starts_with("--disk-")) {
            options.extend(["--disk-high-watermark=98".into(), "--disk-critical-watermark=99.9".into()]);
        }
        if let Some(certs) = &self.tls {
            options.extend(certs.server_options());
        }
        options.extend(member.extra.iter().cloned());
        let base = ServerArgs::parse_options(&options).unwrap_or_else(|e| panic!("member options {options:?}: {e}"));
        let dir = self.member_dir(member.ordinal);
        ServerArgs {
            hostname: Some(format!("kiln-compiler-server-{}", member.ordinal)),
            workers: Some(member.workers),
            data_dir: dir.clone(),
            build_root: self.shared_build_root.clone().unwrap_or_else(|| dir.join("build")),
            build_root_source: self.shared_build_root.as_ref().map(|_| dir.join("build")),
            depset_cache: Some(self.setup.depset_cache.clone()),
            cluster_token: None,
            cluster_token_file: Some(self.dir.path().join("cluster-token")),
            leader_url: Some(self.url()),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            // As `kiln up` does: a build user per member.
            build_uid: base.build_uid.saturating_add(member.ordinal),
            ..base
        }
    }

    /// Starts (or restarts) a member.
    pub fn start(&mut self, member: Member) {
        let name = format!("member-{}", member.ordinal);
        let args = self.server_args(&member);
        let mut env = args.secret_env();
        env.push(("KILN_LOG".into(), OsString::from(&self.setup.log)));
        self.kill(member.ordinal);
        let (program, args) = match &self.setup.run_as {
            Some(user) => {
                let (program, wrapped, user_env) = user.command(&self.setup.kiln, &args.to_args());
                env.extend(user_env);
                (program, wrapped)
            }
            None => (self.setup.kiln.clone(), args.to_args()),
        };
        let (program, args) = match self.setup.pin.as_ref().and_then(|pin| pin.get(member.ordinal as usize)) {
            Some(cpus) => {
                let list = cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
                let mut wrapped: Vec<OsString> = vec!["-c".into(), list.into(), program.into_os_string()];
                wrapped.extend(args);
                (PathBuf::from("taskset"), wrapped)
            }
            None => (program, args),
        };
        let process = Process::start(&name, &program, &args, &env, self.dir.path())
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.members[member.ordinal as usize] = Some(process);
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

    /// `GET path` of the leader, as JSON: (status, body).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.leader().get_json(path).await
    }

    /// Waits until `/cluster_healthz` answers 200.
    pub async fn wait_healthy(&self, timeout: Duration) {
        self.leader().wait_healthy(timeout).await
    }

    /// Waits until the leader answers at all (its members may still be preparing).
    pub async fn wait_leader(&self, timeout: Duration) {
        self.leader().wait_answering(timeout).await
    }

    /// Submits program directories through the real CLI (`kiln submit`), waiting
    /// for their builds when `wait` is set.
    pub fn submit(&self, dirs: &[&Path], wait: bool) -> std::process::Output {
        let mut command = std::process::Command::new(&self.setup.kiln);
        command.arg("submit").args(dirs).arg(format!("--leader={}", self.url()));
        if let Some(certs) = &self.tls {
            command.arg(format!("--tls-ca={}", certs.ca.display()));
        }
        if wait {
            command.args(["--wait", "--timeout=5m"]);
        }
        command.output().expect("running kiln submit")
    }

    /// Pipeline `key`'s record as the API gives it (a test reads its fields).
    pub async fn pipeline(&self, key: &str) -> serde_json::Value {
        let (status, body) = self.get_json(&format!("/v0/pipelines/{key}")).await;
        assert_eq!(status, 200, "GET pipeline {key}: {body}");
        body
    }

    /// Waits until pipeline `key` reaches one of `statuses`; returns its record.
    pub async fn wait_status(&self, key: &str, statuses: &[&str], timeout: Duration) -> serde_json::Value {
        let what = format!("pipeline {key} reaches {statuses:?}");
        crate::wait::wait_until(&what, timeout, Duration::from_millis(50), || async {
            let record = self.pipeline(key).await;
            if statuses.contains(&record["status"].as_str().unwrap_or("")) {
                Ok(record)
            } else {
                Err(record.to_string())
            }
        })
        .await
    }

    /// What member `ordinal` has logged so far.
    pub fn member_log(&self, ordinal: u32) -> String {
        self.members[ordinal as usize].as_ref().map(|p| p.output()).unwrap_or_default()
    }

    /// The leader's process id (0 when it is not running).
    pub fn leader_pid(&self) -> u32 {
        self.members[0].as_ref().map(|p| p.pid() as u32).unwrap_or(0)
    }
}
