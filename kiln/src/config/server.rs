//! `kiln server`'s flags (`ServerArgs`), and a member's command line written back
//! from them: `kiln up` and the test kit start members with
//! [`ServerArgs::to_args`] and [`ServerArgs::secret_env`], which
//! [`ServerArgs::parse_options`] reads back as the same arguments. What a member
//! makes of these flags is `config::member`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use crate::config::cache::CacheArgs;
use crate::config::command_line::CommandLine;
use crate::config::leader::{ApiTokenArgs, DEFAULT_PORT};
use crate::config::secret::{SecretFile, given_or_read};
use crate::config::tls::TlsArgs;
use crate::config::units::{parse_duration, parse_size};

/// The build root of a member, and of the commands that lay programs out as a
/// member does, when none is given.
pub const DEFAULT_BUILD_ROOT: &str = "/var/lib/kiln/build";
/// The cargo profile pipelines are built with when none is given.
pub const DEFAULT_PROFILE: &str = "release";

#[derive(Debug, Clone, PartialEq, Args)]
pub struct ServerArgs {
    /// This member's hostname; its ordinal is the number after the last '-'.
    /// Defaults to $HOSTNAME, then to the system's hostname.
    #[arg(long, env = "HOSTNAME")]
    pub hostname: Option<String>,
    /// N, the number of members in the set. With --kubernetes it defaults to the
    /// StatefulSet's replica count.
    #[arg(long, env = "KILN_WORKERS")]
    pub workers: Option<u32>,
    /// Running in a StatefulSet: read its replica count through the Kubernetes API at
    /// startup and keep watching it (the scaling guard).
    #[arg(long, env = "KILN_KUBERNETES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub kubernetes: bool,
    /// Refuse to start as root outside a user namespace (the chart's
    /// `sandbox.userNamespaces`: a pod with `hostUsers: false`).
    #[arg(long, env = "KILN_REQUIRE_USER_NAMESPACE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub require_user_namespace: bool,
    /// The Kubernetes API's URL. Defaults to the in-cluster one.
    #[arg(long, env = "KILN_KUBERNETES_API")]
    pub kubernetes_api: Option<String>,
    /// Where the service account's token, namespace and ca.crt are.
    #[arg(long, env = "KILN_KUBERNETES_SERVICE_ACCOUNT_DIR", default_value = kiln_compiler_worker::kubernetes::SERVICE_ACCOUNT_DIR)]
    pub kubernetes_service_account_dir: PathBuf,
    /// How often the StatefulSet's replica count is read again.
    #[arg(long, env = "KILN_KUBERNETES_POLL", default_value = "10s", value_parser = parse_duration)]
    pub kubernetes_poll: Duration,
    /// What a member does when the set's size changes. `panic` (the seed's): it
    /// exits with "SCALING DETECTED ..." so that the set restarts with one N.
    /// `reshard`: it takes the new N without a restart (from the StatefulSet under
    /// --kubernetes, otherwise from the member with the next ordinal joining, one
    /// at a time, or the last one leaving); pending pipelines move to their new ordinals (rendezvous
    /// hashing: about 1/N move), builds in flight finish where they are. Give every
    /// member the same.
    #[arg(long, env = "KILN_ON_SCALING", default_value = "panic", value_parser = kiln_core::scaling::OnScaling::NAMES)]
    pub on_scaling: String,
    /// Where a worker (ordinal > 0) serves /healthz for its probes. The leader serves
    /// it on --listen.
    #[arg(long, env = "KILN_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Where the leader keeps its catalog and artifacts.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "/var/lib/kiln")]
    pub data_dir: PathBuf,
    /// Where the leader listens (HTTP API and gRPC on one port). Ordinal 0 only.
    #[arg(long, env = "KILN_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// The leader's URL. Defaults to pod 0 of this StatefulSet through --service.
    #[arg(long = "leader", env = "KILN_LEADER")]
    pub leader_url: Option<String>,
    /// The headless service of the StatefulSet, to reach pod 0 by name.
    #[arg(long, env = "KILN_SERVICE", default_value = "kiln-compiler")]
    pub service: String,
    /// The leader's port, when its URL is derived from the service.
    #[arg(long, env = "KILN_LEADER_PORT", default_value_t = DEFAULT_PORT)]
    pub leader_port: u16,
    /// The shared secret members present to the leader.
    #[arg(long, env = "KILN_CLUSTER_TOKEN", hide_env_values = true, conflicts_with = "cluster_token_file")]
    pub cluster_token: Option<String>,
    /// A file holding the cluster token (a mounted Secret).
    #[arg(long, env = "KILN_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// The token the `/v0` API wants. Without one, the leader keeps a random one in
    /// `<data-dir>/api-token`.
    #[command(flatten)]
    pub api: ApiTokenArgs,
    /// Serve the `/v0` API to anyone who reaches the port, without a token.
    #[arg(long, env = "KILN_NO_API_TOKEN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_api_token: bool,
    /// `/metrics` wants the API token too.
    #[arg(long, env = "KILN_PROTECT_METRICS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub protect_metrics: bool,
    /// The build root: one fixed absolute path, the same on every worker.
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = DEFAULT_BUILD_ROOT)]
    pub build_root: PathBuf,
    /// A directory to mount privately at --build-root (Linux, root), so that workers
    /// sharing one machine each build at the same absolute path.
    #[arg(long, env = "KILN_BUILD_ROOT_SOURCE")]
    pub build_root_source: Option<PathBuf>,
    /// The cargo profile a pipeline is built in when its submission names none
    /// (`kiln submit --profile` chooses per pipeline).
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = DEFAULT_PROFILE, value_parser = kiln_core::profile::PROFILES)]
    pub profile: String,
    /// A directory shared by the workers of one machine, holding the prebuilt
    /// dependency set so it is compiled once.
    #[arg(long, env = "KILN_DEPSET_CACHE")]
    pub depset_cache: Option<PathBuf>,
    /// The operator's dependency set (a directory made with `kiln depset create`);
    /// Kiln's built-in set without it. Every member needs the same one.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
    /// `auto` uses sccache when it is found; `off` builds with plain cargo.
    #[arg(long, env = "KILN_SCCACHE", default_value = "auto", value_parser = ["auto", "off"])]
    pub sccache: String,
    /// The sccache binary, when it is not on PATH.
    #[arg(long, env = "KILN_SCCACHE_BINARY")]
    pub sccache_binary: Option<PathBuf>,
    /// sccache's local disk cache, when no bucket is given. Defaults to <data-dir>/sccache.
    #[arg(long, env = "KILN_SCCACHE_DIR")]
    pub sccache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// How long a worker keeps retrying an upload before the pipeline fails with
    /// `Failed to upload binary`.
    #[arg(long, env = "KILN_UPLOAD_BUDGET", default_value = "30m", value_parser = parse_duration)]
    pub upload_budget: Duration,
    /// First pause between upload attempts; it doubles, with jitter, up to the maximum.
    #[arg(long, env = "KILN_UPLOAD_MIN_DELAY", default_value = "500ms", value_parser = parse_duration)]
    pub upload_min_delay: Duration,
    #[arg(long, env = "KILN_UPLOAD_MAX_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub upload_max_delay: Duration,
    #[arg(long, env = "KILN_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A member silent for longer is unhealthy in /cluster_healthz.
    #[arg(long, env = "KILN_HEARTBEAT_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_window: Duration,
    /// A build running longer is stopped and fails.
    #[arg(long, env = "KILN_BUILD_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub build_timeout: Duration,
    /// The most of a build's log that is kept: its beginning and its end, with a
    /// line saying how much was left out between them.
    #[arg(long, env = "KILN_MAX_LOG_BYTES", default_value_t = kiln_compiler_worker::log::DEFAULT_MAX_LOG_BYTES)]
    pub max_log_bytes: usize,
    /// `auto` sandboxes every build (bubblewrap) and refuses to build when the
    /// sandbox cannot be made; `off` builds without one, and says so in
    /// /cluster_healthz.
    #[arg(long, env = "KILN_SANDBOX", default_value = "auto", value_parser = ["auto", "off"])]
    pub sandbox: String,
    /// `on`: a submission whose source, dependency set and build settings were
    /// built before is served that binary at once, without a build (the leader's
    /// binary cache); `off`: every submission is built.
    #[arg(long, env = "KILN_BINARY_CACHE", default_value = "on", value_parser = ["on", "off"])]
    pub binary_cache: String,
    /// The bubblewrap binary the sandbox is made with.
    #[arg(long, env = "KILN_SANDBOX_BWRAP", default_value = "bwrap")]
    pub sandbox_bwrap: PathBuf,
    /// The unprivileged user (and group) builds run as, when the member runs as root.
    #[arg(long, env = "KILN_BUILD_UID", default_value_t = 64000)]
    pub build_uid: u32,
    /// The most memory each process of a build may use (RLIMIT_DATA), e.g. 8G.
    #[arg(long, env = "KILN_BUILD_MEMORY", default_value = "8G", value_parser = parse_size)]
    pub build_memory: u64,
    /// cargo's jobs (`-j`) for a build: the member's share of the CPUs (`kiln up
    /// --cpus-per-member` sets it with the CPUs it pins the member to). Default:
    /// every CPU the member may run on.
    #[arg(long, env = "KILN_BUILD_JOBS", value_parser = clap::value_parser!(u32).range(1..))]
    pub build_jobs: Option<u32>,
    /// The most processes a build's user may run (RLIMIT_NPROC).
    #[arg(long, env = "KILN_BUILD_PROCESSES", default_value_t = 1024)]
    pub build_processes: u64,
    /// The largest file a build may write (RLIMIT_FSIZE), e.g. 4G.
    #[arg(long, env = "KILN_BUILD_FILE_SIZE", default_value = "4G", value_parser = parse_size)]
    pub build_file_size: u64,
    /// The size of a build's `/tmp` (a tmpfs of that size where the member can
    /// mount one; elsewhere a directory on the build root's disk), e.g. 2G.
    #[arg(long, env = "KILN_BUILD_TMP_SIZE", default_value = "2G", value_parser = parse_size)]
    pub build_tmp_size: u64,
    /// The most a build may write to its `target/` and a disk-backed `/tmp` (it is
    /// stopped, `compile_error`, past it), e.g. 20G.
    #[arg(long, env = "KILN_BUILD_DISK", default_value = "20G", value_parser = parse_size)]
    pub build_disk: u64,
    /// The most connections the port serves at once; at the cap, a new one takes
    /// the place of the oldest that has not sent a byte.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = kiln_leader::listener::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// The largest artifact the leader accepts.
    #[arg(long, env = "KILN_MAX_ARTIFACT_BYTES", default_value_t = 4 << 30)]
    pub max_artifact_bytes: u64,
    /// How long the leader keeps a source or binary that no pipeline version
    /// references any more (a deleted pipeline's, an old version's) before removing it.
    #[arg(long, env = "KILN_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub retention: Duration,
    /// A build its worker has not reported for this long (in its heartbeats, which
    /// name the build it works on) goes back to pending for the same ordinal.
    #[arg(long, env = "KILN_CLAIM_LEASE", default_value = "3m", value_parser = parse_duration)]
    pub claim_lease: Duration,
    /// A member silent for this long is missing: the healthy members build its
    /// pending pipelines and its claims (failover), each chosen by rendezvous
    /// hashing; when it is back, new pipelines of its ordinal go to it again.
    /// `0`: never (a missing member's pipelines wait for it, as in the seed).
    #[arg(long, env = "KILN_FAILOVER_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub failover_after: Duration,
    /// Above this share of its volume in use (percent), a member prunes its build
    /// root (least recently used crates and targets), then its local cache.
    #[arg(long, env = "KILN_DISK_HIGH_WATERMARK", default_value_t = 85.0)]
    pub disk_high_watermark: f64,
    /// Above this share (percent), after pruning, a member takes no work and says so
    /// in /healthz and /cluster_healthz until space is back (the leader: for its data
    /// volume, it hands out no work).
    #[arg(long, env = "KILN_DISK_CRITICAL_WATERMARK", default_value_t = 95.0)]
    pub disk_critical_watermark: f64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `kiln server` alone on a command line, to parse member options with.
#[derive(Debug, Parser)]
#[command(name = "kiln-server", no_binary_name = true, args_override_self = true)]
struct ServerCommand {
    #[command(flatten)]
    args: ServerArgs,
}

impl ServerArgs {
    /// Parses `kiln server` options (without `server` itself) exactly as the command
    /// line does, environment variables included. With no options, the defaults.
    pub fn parse_options<I, T>(options: I) -> Result<ServerArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        ServerCommand::try_parse_from(options).map(|c| c.args)
    }

    /// The command line (from `server` on) that starts a member with these
    /// arguments: what [`ServerArgs::parse_options`] reads back as `self`, given
    /// [`ServerArgs::secret_env`] in the member's environment. Secrets are left out,
    /// since every user of the machine can read a command line.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut line = CommandLine(vec!["server".into()]);
        line.opt("--hostname", &self.hostname);
        line.opt("--workers", &self.workers);
        line.flag("--kubernetes", self.kubernetes);
        line.opt("--kubernetes-api", &self.kubernetes_api);
        line.path("--kubernetes-service-account-dir", &self.kubernetes_service_account_dir);
        line.duration("--kubernetes-poll", self.kubernetes_poll);
        line.value("--on-scaling", &self.on_scaling);
        line.opt("--health-listen", &self.health_listen);
        line.path("--data-dir", &self.data_dir);
        line.value("--listen", &self.listen);
        line.opt("--leader", &self.leader_url);
        line.value("--service", &self.service);
        line.value("--leader-port", &self.leader_port);
        line.opt_path("--cluster-token-file", &self.cluster_token_file);
        line.opt_path("--api-token-file", &self.api.api_token_file);
        line.flag("--no-api-token", self.no_api_token);
        line.flag("--protect-metrics", self.protect_metrics);
        line.flag("--require-user-namespace", self.require_user_namespace);
        line.path("--build-root", &self.build_root);
        line.opt_path("--build-root-source", &self.build_root_source);
        line.value("--profile", &self.profile);
        line.opt_path("--depset-cache", &self.depset_cache);
        line.opt_path("--depset", &self.depset);
        line.value("--sccache", &self.sccache);
        line.opt_path("--sccache-binary", &self.sccache_binary);
        line.opt_path("--sccache-dir", &self.sccache_dir);
        self.cache.to_args(&mut line);
        line.duration("--upload-budget", self.upload_budget);
        line.duration("--upload-min-delay", self.upload_min_delay);
        line.duration("--upload-max-delay", self.upload_max_delay);
        line.duration("--heartbeat-interval", self.heartbeat_interval);
        line.duration("--heartbeat-window", self.heartbeat_window);
        line.duration("--build-timeout", self.build_timeout);
        line.value("--max-log-bytes", &self.max_log_bytes);
        line.value("--sandbox", &self.sandbox);
        line.value("--binary-cache", &self.binary_cache);
        line.path("--sandbox-bwrap", &self.sandbox_bwrap);
        line.value("--build-uid", &self.build_uid);
        line.value("--build-memory", &self.build_memory);
        line.value("--build-processes", &self.build_processes);
        line.opt("--build-jobs", &self.build_jobs);
        line.value("--build-file-size", &self.build_file_size);
        line.value("--build-tmp-size", &self.build_tmp_size);
        line.value("--build-disk", &self.build_disk);
        line.value("--max-artifact-bytes", &self.max_artifact_bytes);
        line.value("--max-connections", &self.max_connections);
        line.duration("--retention", self.retention);
        line.duration("--claim-lease", self.claim_lease);
        line.duration("--failover-after", self.failover_after);
        line.value("--disk-high-watermark", &self.disk_high_watermark);
        line.value("--disk-critical-watermark", &self.disk_critical_watermark);
        self.tls.to_args(&mut line);
        line.0
    }

    /// The secrets of these arguments as the environment variables a member reads.
    pub fn secret_env(&self) -> Vec<(OsString, OsString)> {
        let mut env = Vec::new();
        if let Some(token) = &self.cluster_token {
            env.push(("KILN_CLUSTER_TOKEN".into(), token.into()));
        }
        if let Some(token) = &self.api.api_token {
            env.push(("KILN_API_TOKEN".into(), token.into()));
        }
        env
    }

    /// The URL of a leader started with these arguments on loopback at `port`:
    /// https:// when they give it a certificate (which must then hold 127.0.0.1).
    pub fn loopback_leader_url(&self, port: u16) -> String {
        let scheme = if self.tls.server().is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// The cluster token given, or read from its file; None when neither is.
    pub fn read_cluster_token(&self) -> anyhow::Result<Option<String>> {
        let file = self.cluster_token_file.as_deref().map(|path| SecretFile {
            path,
            what: "the cluster token file",
            flag: "--cluster-token-file",
        });
        given_or_read(self.cluster_token.as_ref(), file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &[&str]) -> ServerArgs {
        ServerArgs::parse_options(options).unwrap()
    }

    #[test]
    fn a_command_line_reads_back_as_the_arguments_it_was_built_from() {
        let given = [
            "--hostname=kiln-compiler-server-3",
            "--workers=4",
            "--kubernetes=true",
            "--require-user-namespace=true",
            "--kubernetes-api=https://127.0.0.1:6443",
            "--kubernetes-service-account-dir=/sa",
            "--kubernetes-poll=1m30s",
            "--health-listen=127.0.0.1:9001",
            "--data-dir=/d",
            "--listen=127.0.0.1:9000",
            "--leader=http://127.0.0.1:9000",
            "--service=svc",
            "--leader-port=9002",
            "--cluster-token-file=/t",
            "--build-root=/b",
            "--build-root-source=/s",
            "--profile=dev",
            "--depset-cache=/c",
            "--depset=/set",
            "--sccache=auto",
            "--sccache-binary=/bin/sccache",
            "--sccache-dir=/sc",
            "--sccache-bucket=b",
            "--sccache-region=eu-west-1",
            "--sccache-key-prefix=k",
            "--sccache-endpoint=127.0.0.1:9",
            "--sccache-use-ssl=true",
            "--sccache-server-side-encryption=true",
            "--sccache-credentials-dir=/cred",
            "--sccache-read-only=true",
            "--upload-budget=2s",
            "--upload-min-delay=100ms",
            "--upload-max-delay=1s",
            "--heartbeat-interval=500ms",
            "--heartbeat-window=3s",
            "--build-timeout=1h",
            "--max-artifact-bytes=12345",
            "--max-connections=777",
            "--max-log-bytes=4096",
            "--sandbox=off",
            "--sandbox-bwrap=/opt/bwrap",
            "--build-uid=1234",
            "--build-memory=1073741824",
            "--build-tmp-size=1073741824",
            "--build-disk=2147483648",
            "--build-processes=99",
            "--build-jobs=3",
            "--build-file-size=1048576",
            "--api-token-file=/api-token",
            "--protect-metrics=true",
            "--tls-cert=/tls/tls.crt",
            "--tls-key=/tls/tls.key",
            "--tls-ca=/tls/ca.crt",
            "--binary-cache=off",
            "--no-api-token=true",
            "--retention=2h",
            "--claim-lease=7m",
            "--failover-after=45s",
            "--on-scaling=reshard",
            "--disk-high-watermark=71.5",
            "--disk-critical-watermark=93.5",
        ];
        // Every option of `kiln server` is given a value that is not its default
        // here, so that one `to_args` forgets is caught (as --binary-cache once
        // was); secrets travel in the environment.
        use clap::CommandFactory;
        let not_given = ["cluster-token", "api-token", "help"];
        for option in ServerCommand::command().get_arguments().filter_map(|a| a.get_long()) {
            assert!(
                not_given.contains(&option) || given.iter().any(|g| g.starts_with(&format!("--{option}="))),
                "--{option} is missing from this test's command line"
            );
        }
        let mut every = args(&given);
        every.cluster_token = Some("secret-token-0123456789".into());
        every.api.api_token = Some("api-secret-9876".into());
        let line = every.to_args();
        assert_eq!(line[0], "server");
        assert!(
            line.iter().all(|a| !a.to_string_lossy().contains("token-0123456789")
                && !a.to_string_lossy().contains("api-secret-9876")),
            "no secret on the command line: {line:?}"
        );
        let mut back = ServerArgs::parse_options(&line[1..]).unwrap();
        for (key, value) in every.secret_env() {
            match key.to_str().unwrap() {
                "KILN_CLUSTER_TOKEN" => back.cluster_token = Some(value.into_string().unwrap()),
                "KILN_API_TOKEN" => back.api.api_token = Some(value.into_string().unwrap()),
                other => panic!("unexpected secret {other}"),
            }
        }
        assert_eq!(back, every);
    }

    /// The README's forms: `kiln server --kubernetes`, `--no-api-token`,
    /// `--protect-metrics` alone mean on.
    #[test]
    fn switches_given_alone_are_on() {
        let on = args(&["--kubernetes", "--no-api-token", "--protect-metrics", "--sccache-read-only"]);
        assert!(on.kubernetes && on.no_api_token && on.protect_metrics && on.cache.read_only);
        let off = args(&["--kubernetes=false", "--protect-metrics=false"]);
        assert!(!off.kubernetes && !off.protect_metrics && !off.no_api_token);
        assert!(ServerArgs::parse_options(["--kubernetes=maybe"]).is_err());
    }

    /// A member started with no cache flags reads none back: the region and the
    /// others stay "not given" across `kiln up`'s command line.
    #[test]
    fn flags_not_given_stay_not_given_on_the_members_command_line() {
        let defaults = args(&[]);
        let line = defaults.to_args();
        for flag in ["--sccache-region", "--sccache-key-prefix", "--sccache-use-ssl", "--sccache-bucket"] {
            assert!(!line.iter().any(|a| a.to_string_lossy().starts_with(flag)), "{flag} was not given: {line:?}");
        }
        assert_eq!(ServerArgs::parse_options(&line[1..]).unwrap(), defaults);
    }

    #[test]
    fn the_cluster_token_is_given_or_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster-token");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let from_file = ServerArgs { cluster_token_file: Some(file.clone()), ..args(&[]) };
        assert_eq!(from_file.read_cluster_token().unwrap().as_deref(), Some("from-the-file-0123456789"));
        let given = ServerArgs { cluster_token: Some("given-0123456789".into()), ..from_file };
        assert_eq!(given.read_cluster_token().unwrap().as_deref(), Some("given-0123456789"));
        let missing = ServerArgs { cluster_token_file: Some(dir.path().join("nothing")), ..args(&[]) };
        let error = format!("{:#}", missing.read_cluster_token().unwrap_err());
        assert!(error.contains("--cluster-token-file") && error.contains("nothing"), "{error}");
    }
}
