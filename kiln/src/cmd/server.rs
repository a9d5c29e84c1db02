//! `kiln server`: one member of the farm. Reads its identity, runs the leader when it
//! is ordinal 0, always runs a worker, and panics with the scaling guard's message
//! when N changed under it. Its flags and what they resolve to are
//! `config::server` and `config::member`; this file gathers the machine's facts and
//! runs the member.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kiln_compiler_worker::kubernetes::StatefulSetClient;
use kiln_compiler_worker::worker;
use kiln_core::scaling::ScalingGuard;
use kiln_leader::tls::ServerTls;
use kiln_leader::{LeaderConfig, LeaderState};

use crate::config::depset::load_depset;
use crate::config::member::{Facts, MemberConfig, VERSION};
use crate::config::secret::SecretFile;
use crate::config::server::ServerArgs;

/// With `--build-root-source`, mounts it privately at `--build-root` (see
/// `isolation`); where that cannot be done, builds in the source directory
/// instead, and says what is lost. Must run before the async runtime starts any
/// thread.
pub fn isolate_build_root(args: &mut ServerArgs) {
    let Some(source) = args.build_root_source.clone() else { return };
    match crate::isolation::private_build_root(&source, &args.build_root) {
        Ok(()) => {
            tracing::info!(source = %source.display(), build_root = %args.build_root.display(), "private build root mounted")
        }
        Err(reason) => {
            tracing::warn!(
                "cannot give this worker a private view of {} ({reason}): building in {} instead, so sccache hits across workers are lost",
                args.build_root.display(),
                source.display()
            );
            args.build_root = source;
        }
    }
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

fn hostname(args: &ServerArgs) -> anyhow::Result<String> {
    match &args.hostname {
        Some(name) => Ok(name.clone()),
        None => Ok(nix::unistd::gethostname().context("reading the system's hostname")?.to_string_lossy().into_owned()),
    }
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
        cluster_token: args.read_cluster_token()?,
        s3: if args.sccache == "off" { None } else { args.cache.s3_settings()? },
        api_token: args.api.read()?,
        depset: load_depset(args.depset.as_deref())?,
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
            leader.api_token =
                Some(SecretFile { path: &file, what: "the API token file", flag: "--data-dir" }.read_or_create()?);
            tracing::info!(file = %file.display(), "the /v0 API wants the token kept in this file");
        }
        if args.binary_cache == "on" {
            let settings = kiln_compiler_worker::builder::settings_fingerprint(&config.worker.build).await?;
            tracing::info!(build_settings = %settings, "binary cache on: a program built before with these settings is served without a build");
            leader.binary_cache = Some(settings);
        }
    }
    let identity = config.identity.clone();
    let on_scaling = kiln_core::scaling::OnScaling::parse(&args.on_scaling).unwrap_or_default();
    let guard = ScalingGuard::with(identity.workers, on_scaling);
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

    #[test]
    fn a_root_member_that_wants_a_user_namespace_refuses_the_hosts() {
        let host = "         0          0 4294967295\n";
        let pod = "         0  123456789      65536\n";
        let refused = user_namespace_required(true, host).unwrap_err().to_string();
        assert!(refused.contains("sandbox.userNamespaces=false"), "{refused}");
        assert!(user_namespace_required(true, pod).is_ok());
        assert!(user_namespace_required(false, host).is_ok(), "a non-root member holds nothing of the node's");
    }
}
