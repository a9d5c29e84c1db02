//! `kiln server`: one member of the farm. Reads its identity, runs the leader when it
//! is ordinal 0, always runs a worker, and panics with the scaling guard's message
//! when N changed under it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiln_compiler_worker::builder::BuildSettings;
use kiln_compiler_worker::identity::Identity;
use kiln_compiler_worker::kubernetes::StatefulSetClient;
use kiln_compiler_worker::scaling::ScalingGuard;
use kiln_compiler_worker::sccache::CacheStore;
use kiln_compiler_worker::upload::RetryPolicy;
use kiln_compiler_worker::worker::{self, CacheChoice, WorkerConfig};
use kiln_leader::{LeaderConfig, LeaderState};

use crate::{DEFAULT_PORT, parse_duration};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, Args)]
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
    #[arg(long, env = "KILN_KUBERNETES", default_value_t = false, action = clap::ArgAction::Set)]
    pub kubernetes: bool,
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
    /// When set, the `/v0` API wants `Authorization: Bearer <token>`.
    #[arg(long, env = "KILN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
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
    /// The largest artifact the leader accepts.
    #[arg(long, env = "KILN_MAX_ARTIFACT_BYTES", default_value_t = 4 << 30)]
    pub max_artifact_bytes: u64,
}

fn read_token(args: &ServerArgs) -> anyhow::Result<String> {
    let token = match (&args.cluster_token, &args.cluster_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the cluster token file {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => {
            bail!("no cluster token: set KILN_CLUSTER_TOKEN or --cluster-token-file (every member needs the same one)")
        }
    };
    if token.len() < 16 {
        bail!("the cluster token is too short ({} characters): use at least 16 random characters", token.len());
    }
    Ok(token)
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
        // The leader's own worker reaches it on loopback.
        let port = args.listen.port();
        return format!("http://127.0.0.1:{port}");
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
    let name = kiln_compiler_worker::identity::set_name(hostname);
    let client = StatefulSetClient::new(&api, &args.kubernetes_service_account_dir, name)?;
    let replicas = client.replicas().await?;
    tracing::info!(statefulset = name, replicas, "read the StatefulSet");
    Ok(Some((client, replicas)))
}

/// A worker's own /healthz, for its Kubernetes probes.
async fn serve_worker_health(address: SocketAddr, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the health endpoint to {address}: choose another --health-listen"))?;
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "healthy" })) }));
    tokio::spawn(async move {
        let served =
            axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health endpoint failed");
        }
    });
    Ok(())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let hostname = hostname(&args)?;
    let statefulset = statefulset(&args, &hostname).await?;
    let workers = match (args.workers, &statefulset) {
        // After a `kubectl scale`, pods restart with the set's new size: the
        // StatefulSet is the truth at startup, the guard watches it afterwards.
        (Some(workers), Some((_, replicas))) if workers != *replicas => {
            tracing::warn!(
                workers,
                replicas,
                "KILN_WORKERS disagrees with the StatefulSet: using its {replicas} replicas"
            );
            *replicas
        }
        (_, Some((_, replicas))) => *replicas,
        (Some(workers), None) => workers,
        (None, None) => bail!(
            "N is unknown: pass --workers or set KILN_WORKERS (with --kubernetes it is read from the StatefulSet)"
        ),
    };
    let identity = Identity::new(&hostname, workers)?;
    let guard = ScalingGuard::new(identity.workers);
    guard.observe_ordinal(identity.ordinal);
    if let Some(detected) = guard.detected() {
        panic!("{detected}");
    }
    let token = read_token(&args)?;
    if !args.build_root.is_absolute() {
        bail!(
            "--build-root must be an absolute path (got {}): it must be the same path on every worker",
            args.build_root.display()
        );
    }
    tracing::info!(member = %identity, version = VERSION, "starting");
    let shutdown = crate::shutdown::on_signal();
    if let Some((client, _)) = statefulset {
        tokio::spawn(client.watch(guard.clone(), args.kubernetes_poll, shutdown.clone()));
    }
    if !identity.is_leader()
        && let Some(address) = args.health_listen
    {
        serve_worker_health(address, shutdown.clone()).await?;
    }

    let mut leader_task = None;
    if identity.is_leader() {
        let config = LeaderConfig {
            data_dir: args.data_dir.clone(),
            workers: identity.workers,
            version: VERSION.to_owned(),
            cluster_token: token.clone(),
            api_token: args.api_token.clone(),
            heartbeat_window: args.heartbeat_window,
            max_artifact_bytes: args.max_artifact_bytes,
        };
        let state = Arc::new(LeaderState::open(config, guard.clone())?);
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
            format!("binding the leader to {}: is another kiln running? choose another --listen", args.listen)
        })?;
        tracing::info!(address = %listener.local_addr()?, "leader listening");
        let stop = shutdown.clone();
        leader_task = Some(tokio::spawn(kiln_leader::serve(listener, state, async move { stop.cancelled().await })));
    }

    let store = match args.cache.s3_settings()? {
        Some(s3) => CacheStore::S3(s3),
        None => {
            CacheStore::LocalDisk { dir: args.sccache_dir.clone().unwrap_or_else(|| args.data_dir.join("sccache")) }
        }
    };
    let config = WorkerConfig {
        leader_url: leader_url(&args, &identity),
        identity: identity.clone(),
        cluster_token: token,
        build: BuildSettings {
            build_root: args.build_root.clone(),
            profile: args.profile.clone(),
            cargo: "cargo".into(),
            depset_cache: args.depset_cache.clone(),
            timeout: args.build_timeout,
        },
        cache: match args.sccache.as_str() {
            "off" => CacheChoice::Off,
            _ => CacheChoice::Auto { binary: args.sccache_binary.clone(), store },
        },
        upload: RetryPolicy {
            budget: args.upload_budget,
            min_delay: args.upload_min_delay,
            max_delay: args.upload_max_delay,
        },
        heartbeat_interval: args.heartbeat_interval,
        version: VERSION.to_owned(),
    };
    let mut worker_task = tokio::spawn(worker::run(config, guard.clone(), shutdown.clone()));

    let mut worker_done = false;
    let mut leader_done = leader_task.is_none();
    tokio::select! {
        detected = guard.tripped() => {
            // Stop builds in flight (their process groups) before going down.
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut worker_task).await;
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
    if let Some(task) = leader_task.filter(|_| !leader_done) {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    tracing::info!(ordinal = identity.ordinal, "stopped");
    Ok(ExitCode::SUCCESS)
}
