//! `kiln server`: one member of the farm. Reads its identity, runs the leader when it
//! is ordinal 0, always runs a worker, and panics with the scaling guard's message
//! when N changed under it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::ffi::OsString;

use anyhow::{Context, bail};
use clap::{Args, Parser};
use kiln_compiler_worker::builder::BuildSettings;
use kiln_compiler_worker::cache_store::S3Settings;
use kiln_compiler_worker::kubernetes::StatefulSetClient;
use kiln_compiler_worker::sandbox::{SandboxMode, SandboxSettings};
use kiln_compiler_worker::sccache::CacheStore;
use kiln_compiler_worker::upload::RetryPolicy;
use kiln_compiler_worker::worker::{self, CacheChoice, WorkerConfig};
use kiln_core::identity::Identity;
use kiln_core::scaling::ScalingGuard;
use kiln_leader::tls::ServerTls;
use kiln_leader::{LeaderConfig, LeaderState};

use crate::command_line::CommandLine;
use crate::{DEFAULT_PORT, parse_duration};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    pub api: crate::ApiTokenArgs,
    /// Serve the `/v0` API to anyone who reaches the port, without a token.
    #[arg(long, env = "KILN_NO_API_TOKEN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_api_token: bool,
    /// `/metrics` wants the API token too.
    #[arg(long, env = "KILN_PROTECT_METRICS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub protect_metrics: bool,
    /// The build root: one fixed absolute path, the same on every worker.
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = "/var/lib/kiln/build")]
    pub build_root: PathBuf,
    /// A directory to mount privately at --build-root (Linux, root), so that workers
    /// sharing one machine each build at the same absolute path.
    #[arg(long, env = "KILN_BUILD_ROOT_SOURCE")]
    pub build_root_source: Option<PathBuf>,
    /// The cargo profile pipelines are built with.
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = "release")]
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
    pub cache: crate::cache::CacheArgs,
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
    #[arg(long, env = "KILN_BUILD_MEMORY", default_value = "8G", value_parser = crate::cache::parse_size)]
    pub build_memory: u64,
    /// The most processes a build's user may run (RLIMIT_NPROC).
    #[arg(long, env = "KILN_BUILD_PROCESSES", default_value_t = 1024)]
    pub build_processes: u64,
    /// The largest file a build may write (RLIMIT_FSIZE), e.g. 4G.
    #[arg(long, env = "KILN_BUILD_FILE_SIZE", default_value = "4G", value_parser = crate::cache::parse_size)]
    pub build_file_size: u64,
    /// The size of a build's `/tmp` (a tmpfs of that size where the member can
    /// mount one; elsewhere a directory on the build root's disk), e.g. 2G.
    #[arg(long, env = "KILN_BUILD_TMP_SIZE", default_value = "2G", value_parser = crate::cache::parse_size)]
    pub build_tmp_size: u64,
    /// The most a build may write to its `target/` and a disk-backed `/tmp` (it is
    /// stopped, `compile_error`, past it), e.g. 20G.
    #[arg(long, env = "KILN_BUILD_DISK", default_value = "20G", value_parser = crate::cache::parse_size)]
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

/// TLS of a member: what it serves with (the leader's port, a worker's /healthz)
/// and the CA it trusts for the leader.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct TlsArgs {
    /// A PEM certificate chain: the leader serves its HTTP API and gRPC over TLS
    /// (and a worker its /healthz). Needs --tls-key. Read again when the file changes.
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The PEM CA certificate that signed the leader's certificate: members trust
    /// only it when the leader URL is https://.
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key to serve with, when given.
    pub fn server(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.tls_cert.clone()?, self.tls_key.clone()?))
    }

    fn to_args(&self, line: &mut CommandLine) {
        line.opt_path("--tls-cert", &self.tls_cert);
        line.opt_path("--tls-key", &self.tls_key);
        line.opt_path("--tls-ca", &self.tls_ca);
    }
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
        line.0.extend(self.cache.to_args());
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
        line.value("--build-file-size", &self.build_file_size);
        line.value("--build-tmp-size", &self.build_tmp_size);
        line.value("--build-disk", &self.build_disk);
        line.value("--max-artifact-bytes", &self.max_artifact_bytes);
        line.value("--max-connections", &self.max_connections);
        line.duration("--retention", self.retention);
        line.duration("--claim-lease", self.claim_lease);
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
}

/// What `kiln server` learns from its machine before it resolves its settings:
/// the only inputs of [`MemberConfig::resolve`] besides the arguments.
#[derive(Debug, Clone)]
pub struct Facts {
    pub hostname: String,
    /// The StatefulSet's replica count, with `--kubernetes`.
    pub replicas: Option<u32>,
    /// The cluster token, read from the argument, the environment or its file.
    pub cluster_token: Option<String>,
    /// The S3 store of the shared cache, resolved with its credentials.
    pub s3: Option<S3Settings>,
    /// The API token, from the argument, the environment or its file (the leader's
    /// own generated one is added at startup).
    pub api_token: Option<String>,
    /// The dependency set, read from `--depset` (or the built-in one).
    pub depset: std::sync::Arc<kiln_core::depset::DepSet>,
}

/// Everything a member runs with, resolved and checked.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub identity: Identity,
    /// For ordinal 0: the leader's settings and where it listens.
    pub leader: Option<(LeaderConfig, SocketAddr)>,
    pub worker: WorkerConfig,
    /// Where a worker (ordinal > 0) serves its own /healthz.
    pub health_listen: Option<SocketAddr>,
    /// The certificate and key the leader's port and a worker's /healthz serve with.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl MemberConfig {
    /// Resolves a member's settings from its arguments and what it learned from
    /// its machine. Pure: no I/O. Settings that contradict each other, or that
    /// would be silently ignored, are refused with the fix.
    pub fn resolve(args: &ServerArgs, facts: &Facts) -> anyhow::Result<MemberConfig> {
        let workers = match (args.workers, facts.replicas) {
            // After a `kubectl scale`, pods restart with the set's new size: the
            // StatefulSet is the truth at startup, the guard watches it afterwards.
            (Some(workers), Some(replicas)) if workers != replicas => {
                tracing::warn!(
                    workers,
                    replicas,
                    "KILN_WORKERS disagrees with the StatefulSet: using its {replicas} replicas"
                );
                replicas
            }
            (_, Some(replicas)) => replicas,
            (Some(workers), None) => workers,
            (None, None) => bail!(
                "N is unknown: pass --workers or set KILN_WORKERS (with --kubernetes it is read from the StatefulSet)"
            ),
        };
        let identity = Identity::new(&facts.hostname, workers)?;
        let token = check_token(facts.cluster_token.as_deref())?;
        if !args.build_root.is_absolute() {
            bail!(
                "--build-root must be an absolute path (got {}): it must be the same path on every worker",
                args.build_root.display()
            );
        }
        if args.no_api_token && facts.api_token.is_some() {
            bail!(
                "--no-api-token opens the API, but an API token is given too (--api-token, --api-token-file or KILN_API_TOKEN*): give one of them"
            );
        }
        let cache = cache_choice(args, facts.s3.clone())?;
        let limit = kiln_compiler_worker::log::LIMIT_MAX_LOG_BYTES;
        if args.max_log_bytes < 1024 || args.max_log_bytes > limit {
            bail!(
                "--max-log-bytes must be between 1024 and {limit} (got {}): a build's report carries its log and must fit the leader's message limit",
                args.max_log_bytes
            );
        }
        let watermarks =
            kiln_core::disk::Watermarks { high: args.disk_high_watermark, critical: args.disk_critical_watermark };
        watermarks
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}: set --disk-high-watermark and --disk-critical-watermark"))?;
        if args.claim_lease < 2 * args.heartbeat_interval {
            bail!(
                "--claim-lease ({}) must be at least twice --heartbeat-interval ({}): a worker renews its claim with each heartbeat",
                humantime::format_duration(args.claim_lease),
                humantime::format_duration(args.heartbeat_interval)
            );
        }
        let leader = identity.is_leader().then(|| {
            let config = LeaderConfig {
                data_dir: args.data_dir.clone(),
                workers: identity.workers,
                version: VERSION.to_owned(),
                cluster_token: token.clone(),
                api_token: facts.api_token.clone(),
                heartbeat_window: args.heartbeat_window,
                max_artifact_bytes: args.max_artifact_bytes,
                n_from_kubernetes: args.kubernetes,
                protect_metrics: args.protect_metrics,
                depset: facts.depset.clone(),
                retention: args.retention,
                claim_lease: args.claim_lease,
                watermarks,
                cache_settings: kiln_core::api::CacheSettings {
                    bucket: args.cache.bucket.clone(),
                    region: args.cache.region.clone(),
                    key_prefix: args.cache.key_prefix.clone(),
                    endpoint: args.cache.endpoint.clone(),
                    use_ssl: args.cache.use_ssl,
                    server_side_encryption: args.cache.server_side_encryption,
                    build_root: args.build_root.display().to_string(),
                    profile: args.profile.clone(),
                    depset: facts.depset.fingerprint().to_owned(),
                },
                serves_tls: args.tls.server().is_some(),
                // Filled in by `run` from the leader's own worker's build settings.
                binary_cache: None,
                max_connections: args.max_connections,
            };
            (config, args.listen)
        });
        let leader_url = leader_url(args, &identity);
        check_tls(args, &leader_url)?;
        let worker = WorkerConfig {
            tls_ca: args.tls.tls_ca.clone(),
            leader_url,
            identity: identity.clone(),
            cluster_token: token,
            build: BuildSettings {
                build_root: args.build_root.clone(),
                profile: args.profile.clone(),
                cargo: "cargo".into(),
                depset_cache: args.depset_cache.clone(),
                timeout: args.build_timeout,
                max_log_bytes: args.max_log_bytes,
                work_dir: args.data_dir.join("worker"),
                sandbox: None,
                // main mounted the source at the build root in a namespace of our own.
                private_mounts: args.build_root_source.as_ref().is_some_and(|source| *source != args.build_root),
                limits: kiln_process::process::Limits {
                    memory_bytes: args.build_memory,
                    processes: args.build_processes,
                    file_bytes: args.build_file_size,
                },
                tmp_bytes: args.build_tmp_size,
                disk_bytes: args.build_disk,
                depset: facts.depset.clone(),
            },
            cache,
            upload: RetryPolicy {
                budget: args.upload_budget,
                min_delay: args.upload_min_delay,
                max_delay: args.upload_max_delay,
            },
            heartbeat_interval: args.heartbeat_interval,
            version: VERSION.to_owned(),
            sandbox: SandboxSettings {
                mode: if args.sandbox == "off" { SandboxMode::Off } else { SandboxMode::Auto },
                bwrap: args.sandbox_bwrap.clone(),
                build_uid: args.build_uid,
                build_gid: args.build_uid,
                // Unique among live members of the machine (test farms run side by side).
                group_name: format!("kiln-member-{}", std::process::id()),
                memory_bytes: args.build_memory,
                processes: args.build_processes,
            },
            watermarks,
        };
        let health_listen = args.health_listen.filter(|_| !identity.is_leader());
        Ok(MemberConfig { identity, leader, worker, health_listen, tls: args.tls.server() })
    }
}

/// The leader URL's scheme and the CA must agree; the leader's own worker reaches
/// it on loopback by the scheme it serves.
fn check_tls(args: &ServerArgs, leader_url: &str) -> anyhow::Result<()> {
    let https = leader_url.starts_with("https://");
    match (https, &args.tls.tls_ca) {
        (true, None) => bail!(
            "the leader URL {leader_url} is https://, but no CA is given: pass --tls-ca (KILN_TLS_CA) with the CA that signed the leader's certificate"
        ),
        (false, Some(ca)) => bail!(
            "--tls-ca {} is given, but the leader URL {leader_url} is not https://: use an https:// leader URL",
            ca.display()
        ),
        _ => Ok(()),
    }
}

fn check_token(token: Option<&str>) -> anyhow::Result<String> {
    let Some(token) = token else {
        bail!("no cluster token: set KILN_CLUSTER_TOKEN or --cluster-token-file (every member needs the same one)")
    };
    if token.len() < 16 {
        bail!("the cluster token is too short ({} characters): use at least 16 random characters", token.len());
    }
    Ok(token.to_owned())
}

fn cache_choice(args: &ServerArgs, s3: Option<S3Settings>) -> anyhow::Result<CacheChoice> {
    if args.sccache == "off" {
        let ignored: Vec<&str> = [
            ("--sccache-bucket", args.cache.bucket.is_some()),
            ("--sccache-binary", args.sccache_binary.is_some()),
            ("--sccache-dir", args.sccache_dir.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        if !ignored.is_empty() {
            bail!(
                "--sccache=off turns the compile cache off, but {} {} given too: drop {}, or use --sccache=auto",
                ignored.join(" and "),
                if ignored.len() == 1 { "is" } else { "are" },
                if ignored.len() == 1 { "it" } else { "them" }
            );
        }
        return Ok(CacheChoice::Off);
    }
    let store = match s3 {
        Some(s3) => {
            if args.sccache_dir.is_some() {
                bail!("--sccache-dir is a local cache, but --sccache-bucket names a shared one: give one of them");
            }
            CacheStore::S3(s3)
        }
        None => CacheStore::LocalDisk {
            dir: args.sccache_dir.clone().unwrap_or_else(|| args.data_dir.join("sccache")),
            read_only: args.cache.read_only,
        },
    };
    Ok(CacheChoice::Auto { binary: args.sccache_binary.clone(), store })
}

/// With `--require-user-namespace`: a root member must be in a user namespace of
/// its own (`uid_map` other than the whole range mapped to itself), or it would
/// hold the node's root.
fn user_namespace_required(root: bool, uid_map: &str) -> anyhow::Result<()> {
    let host = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if root && host {
        bail!(
            "this member runs as root outside a user namespace, but --require-user-namespace (the chart's sandbox.userNamespaces) wants one: the pod's `hostUsers: false` was not applied (Kubernetes before 1.33, or the UserNamespacesSupport feature off). Set sandbox.userNamespaces=false in the chart's values to run as uid 10001 instead"
        );
    }
    Ok(())
}

fn read_token(args: &ServerArgs) -> anyhow::Result<Option<String>> {
    match (&args.cluster_token, &args.cluster_token_file) {
        (Some(token), _) => Ok(Some(token.clone())),
        (None, Some(file)) => Ok(Some(crate::read_secret_file(file, "the cluster token file")?)),
        (None, None) => Ok(None),
    }
}

fn hostname(args: &ServerArgs) -> anyhow::Result<String> {
    match &args.hostname {
        Some(name) => Ok(name.clone()),
        None => Ok(nix::unistd::gethostname().context("reading the system's hostname")?.to_string_lossy().into_owned()),
    }
}

fn leader_url(args: &ServerArgs, identity: &Identity) -> String {
    if let Some(url) = &args.leader_url {
        return url.clone();
    }
    if identity.is_leader() {
        // The leader's own worker reaches it on loopback, as it serves.
        let port = args.listen.port();
        let scheme = if args.tls.server().is_some() { "https" } else { "http" };
        return format!("{scheme}://127.0.0.1:{port}");
    }
    identity.leader_url_in_set(&args.service, args.leader_port)
}

/// Reads the StatefulSet's replica count, when running in Kubernetes.
async fn statefulset(args: &ServerArgs, hostname: &str) -> anyhow::Result<Option<(StatefulSetClient, u32)>> {
    if !args.kubernetes {
        return Ok(None);
    }
    let api = match &args.kubernetes_api {
        Some(url) => url.clone(),
        None => kiln_compiler_worker::kubernetes::in_cluster_api()?,
    };
    let name = kiln_core::identity::set_name(hostname);
    let client = StatefulSetClient::new(&api, &args.kubernetes_service_account_dir, name)?;
    let replicas = client.replicas().await?;
    tracing::info!(statefulset = name, replicas, "read the StatefulSet");
    Ok(Some((client, replicas)))
}

/// A worker's own /healthz, for its Kubernetes probes.
async fn serve_worker_health(
    address: SocketAddr,
    tls: Option<ServerTls>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the health endpoint to {address}: choose another --health-listen"))?;
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "healthy" })) }));
    tokio::spawn(async move {
        let served = kiln_leader::listener::serve_app(
            listener,
            router,
            tls,
            kiln_leader::listener::MAX_CONNECTIONS,
            async move { shutdown.cancelled().await },
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health endpoint failed");
        }
    });
    Ok(())
}

/// What the machine says, gathered once: the hostname, the StatefulSet, the
/// token file and the cache's credentials.
async fn gather_facts(args: &ServerArgs) -> anyhow::Result<(Facts, Option<StatefulSetClient>)> {
    let hostname = hostname(args)?;
    let statefulset = statefulset(args, &hostname).await?;
    let facts = Facts {
        hostname,
        replicas: statefulset.as_ref().map(|(_, replicas)| *replicas),
        cluster_token: read_token(args)?,
        s3: if args.sccache == "off" { None } else { args.cache.s3_settings()? },
        api_token: args.api.read()?,
        depset: crate::load_depset(args.depset.as_deref())?,
    };
    Ok((facts, statefulset.map(|(client, _)| client)))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    if args.require_user_namespace {
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        user_namespace_required(nix::unistd::geteuid().is_root(), &map)?;
    }
    let (facts, statefulset) = gather_facts(&args).await?;
    let mut config = MemberConfig::resolve(&args, &facts)?;
    if let Some((leader, _)) = &mut config.leader {
        if args.no_api_token {
            tracing::warn!("the /v0 API is open to anyone who reaches the port (--no-api-token)");
        } else if leader.api_token.is_none() {
            let file = args.data_dir.join("api-token");
            leader.api_token = Some(crate::secret_file(&file)?);
            tracing::info!(file = %file.display(), "the /v0 API wants the token kept in this file");
        }
        if args.binary_cache == "on" {
            let settings = kiln_compiler_worker::builder::settings_fingerprint(&config.worker.build).await?;
            tracing::info!(build_settings = %settings, "binary cache on: a program built before with these settings is served without a build");
            leader.binary_cache = Some(settings);
        }
    }
    let identity = config.identity.clone();
    let guard = ScalingGuard::new(identity.workers);
    guard.observe_ordinal(identity.ordinal);
    if let Some(detected) = guard.detected() {
        panic!("{detected}");
    }
    tracing::info!(member = %identity, version = VERSION, "starting");
    let shutdown = crate::shutdown::on_signal();
    if let Some(client) = statefulset {
        tokio::spawn(client.watch(guard.clone(), args.kubernetes_poll, shutdown.clone()));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(ServerTls::load(cert, key)?),
        None => None,
    };
    if let Some(address) = config.health_listen {
        serve_worker_health(address, tls.clone(), shutdown.clone()).await?;
    }
    let mut leader_task = match config.leader {
        Some((leader, listen)) => Some(start_leader(leader, listen, tls, &guard, &shutdown).await?),
        None => None,
    };
    let mut worker_task = tokio::spawn(worker::run(config.worker, guard.clone(), shutdown.clone()));

    let mut worker_done = false;
    let mut leader_done = leader_task.is_none();
    tokio::select! {
        detected = guard.tripped() => {
            // Stop builds in flight (their process groups) before going down.
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut worker_task).await;
            // Let the leader drain: the answer that tells the other member the
            // leader's N (so that it stops too) may still be in flight.
            if let Some(leader) = leader_task.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), leader).await;
            }
            panic!("{detected}");
        }
        result = &mut worker_task => {
            worker_done = true;
            shutdown.cancel();
            result.context("the worker task failed")??;
        }
        result = async { leader_task.as_mut().expect("guarded by leader_done").await }, if !leader_done => {
            leader_done = true;
            shutdown.cancel();
            result.context("the leader task failed")?.context("the leader's server failed")?;
        }
    }
    if !worker_done {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker_task).await;
    }
    if let Some(task) = leader_task.take().filter(|_| !leader_done) {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    tracing::info!(ordinal = identity.ordinal, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Opens the leader's state and serves it on `listen` until `shutdown`.
async fn start_leader(
    config: LeaderConfig,
    listen: SocketAddr,
    tls: Option<ServerTls>,
    guard: &ScalingGuard,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let state = Arc::new(LeaderState::open(config, guard.clone())?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the leader to {listen}: is another kiln running? choose another --listen"))?;
    tracing::info!(address = %listener.local_addr()?, tls = tls.is_some(), "leader listening");
    tokio::spawn(state.clone().maintain(shutdown.clone()));
    let stop = shutdown.clone();
    Ok(tokio::spawn(kiln_leader::serve(listener, state, tls, async move { stop.cancelled().await })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(hostname: &str) -> Facts {
        Facts {
            hostname: hostname.into(),
            replicas: None,
            cluster_token: Some("t".repeat(20)),
            s3: None,
            api_token: None,
            depset: kiln_core::depset::DepSet::embedded(),
        }
    }

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
    fn a_root_member_that_wants_a_user_namespace_refuses_the_hosts() {
        let host = "         0          0 4294967295\n";
        let pod = "         0  123456789      65536\n";
        let refused = user_namespace_required(true, host).unwrap_err().to_string();
        assert!(refused.contains("sandbox.userNamespaces=false"), "{refused}");
        assert!(user_namespace_required(true, pod).is_ok());
        assert!(user_namespace_required(false, host).is_ok(), "a non-root member holds nothing of the node's");
    }

    #[test]
    fn switches_given_alone_are_on() {
        let on = args(&["--kubernetes", "--no-api-token", "--protect-metrics", "--sccache-read-only"]);
        assert!(on.kubernetes && on.no_api_token && on.protect_metrics && on.cache.read_only);
        let off = args(&["--kubernetes=false", "--protect-metrics=false"]);
        assert!(!off.kubernetes && !off.protect_metrics && !off.no_api_token);
        assert!(ServerArgs::parse_options(["--kubernetes=maybe"]).is_err());
    }

    #[test]
    fn the_leader_is_ordinal_zero_and_listens_where_asked() {
        let config = MemberConfig::resolve(&args(&["--workers=3", "--build-root=/b"]), &facts("kiln-0")).unwrap();
        assert_eq!((config.identity.ordinal, config.identity.workers), (0, 3));
        let (leader, listen) = config.leader.expect("ordinal 0 leads");
        assert_eq!(leader.workers, 3);
        assert_eq!(listen.port(), DEFAULT_PORT);
        assert_eq!(config.worker.leader_url, format!("http://127.0.0.1:{DEFAULT_PORT}"));

        let worker = MemberConfig::resolve(
            &args(&["--workers=3", "--build-root=/b", "--health-listen=127.0.0.1:1"]),
            &facts("kiln-2"),
        )
        .unwrap();
        assert!(worker.leader.is_none());
        assert_eq!(worker.worker.leader_url, format!("http://kiln-0.kiln-compiler:{DEFAULT_PORT}"));
        assert!(worker.health_listen.is_some());
    }

    #[test]
    fn the_statefulset_decides_n_at_startup() {
        let facts = Facts { replicas: Some(5), ..facts("kiln-1") };
        let config = MemberConfig::resolve(&args(&["--workers=3", "--build-root=/b"]), &facts).unwrap();
        assert_eq!(config.identity.workers, 5);
    }

    #[test]
    fn conflicting_or_missing_settings_are_refused_with_the_fix() {
        let refused =
            |options: &[&str], facts: &Facts| MemberConfig::resolve(&args(options), facts).unwrap_err().to_string();
        let error = refused(&["--workers=2", "--build-root=/b", "--sccache=off", "--sccache-bucket=x"], &facts("k-1"));
        assert!(error.contains("--sccache=off") && error.contains("--sccache-bucket"), "{error}");
        let error = refused(
            &["--workers=2", "--build-root=/b", "--sccache=off", "--sccache-dir=/x", "--sccache-binary=/y"],
            &facts("k-1"),
        );
        assert!(error.contains("--sccache-binary and --sccache-dir are given"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--max-log-bytes=99999999"], &facts("k-1"));
        assert!(error.contains("--max-log-bytes must be between"), "{error}");
        let error = refused(&["--build-root=/b"], &facts("k-1"));
        assert!(error.contains("N is unknown"), "{error}");
        let error = refused(&["--workers=2", "--build-root=relative"], &facts("k-1"));
        assert!(error.contains("absolute path"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b"], &Facts { cluster_token: None, ..facts("k-1") });
        assert!(error.contains("no cluster token"), "{error}");
        let error = refused(
            &["--workers=2", "--build-root=/b"],
            &Facts { cluster_token: Some("short".into()), ..facts("k-1") },
        );
        assert!(error.contains("too short"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--tls-ca=/ca.pem"], &facts("k-1"));
        assert!(error.contains("--tls-ca /ca.pem is given") && error.contains("not https://"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--leader=https://leader:8470"], &facts("k-1"));
        assert!(error.contains("no CA is given") && error.contains("--tls-ca"), "{error}");
        let error =
            refused(&["--workers=2", "--build-root=/b", "--tls-cert=/c.pem", "--tls-key=/k.pem"], &facts("k-0"));
        assert!(
            error.contains("https://127.0.0.1:8470") && error.contains("--tls-ca"),
            "the leader's own worker: {error}"
        );
        let error = refused(&["--workers=2", "--build-root=/b"], &facts("no-ordinal"));
        assert!(error.contains("has no ordinal"), "{error}");
    }
}
