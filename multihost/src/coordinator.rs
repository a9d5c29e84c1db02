//! The coordinator of a multihost deployment (`kiln coordinator`): it finds every
//! host through the host template, waits until all are ready, starts them with the
//! peer list, watches their progress, gathers their parts of the result, and serves
//! all of that as the deployment's HTTP location:
//!
//! - `GET /status`: the deployment's state, epoch, restarts and every host's view;
//! - `GET /result`: the merged result (`key value` lines, sorted by key) once
//!   the deployment completed; 409 before;
//! - `POST /restart`: a coordinated restart; every host is told to restart (it exits
//!   with 55 and its supervisor starts it again), and the run starts over in a new
//!   epoch once all are back;
//! - `GET /healthz`.
//!
//! A host that comes back with a new instance on its own (it exited 55 by itself)
//! triggers the same coordinated restart of all: hosts only make sense together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_pipeline_runtime::contract::{HostStatus, Phase, StartOrder};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the coordinator asks every host for its status.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where the coordinator serves: `127.100.255.1:28080` under `kiln launch`.
    pub listen: SocketAddr,
    pub hosts: u32,
    /// How host `n` is named: `#` is replaced by `n` (`127.100.#.1`).
    pub host_template: String,
    /// Every host's HTTP port.
    pub host_port: u16,
    pub deployment_id: String,
}

impl CoordinatorConfig {
    /// Host `n`'s HTTP base URL, through the template.
    pub fn host_url(&self, n: u32) -> String {
        format!("http://{}:{}", self.host_template.replace('#', &n.to_string()), self.host_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    WaitingForHosts,
    Running,
    Completed,
    Failed,
    Restarting,
}

/// What the coordinator knows of one host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostView {
    pub host_id: u32,
    pub url: String,
    /// The host's own phase, or `unreachable`.
    pub phase: Phase,
    pub instance: Option<String>,
    pub exchange_address: Option<SocketAddr>,
    pub records_read: u64,
    pub records_sent: u64,
    pub records_received: u64,
    pub memory_limit_bytes: Option<u64>,
    pub error: Option<String>,
}

/// The deployment as `GET /status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub deployment_id: String,
    pub state: DeploymentState,
    pub epoch: u64,
    pub restarts: u32,
    pub hosts_ready: u32,
    pub hosts: Vec<HostView>,
    pub error: Option<String>,
    pub result_records: Option<usize>,
    /// How long the current epoch ran until it completed or failed.
    pub run_seconds: Option<f64>,
}

#[derive(Debug)]
struct Shared {
    status: Mutex<DeploymentStatus>,
    result: Mutex<Option<String>>,
    restart: Notify,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut DeploymentStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn snapshot(&self) -> DeploymentStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves the coordinator on `config.listen` until `stop` is cancelled.
pub async fn run(config: CoordinatorConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        status: Mutex::new(DeploymentStatus {
            deployment_id: config.deployment_id.clone(),
            state: DeploymentState::WaitingForHosts,
            epoch: 0,
            restarts: 0,
            hosts_ready: 0,
            hosts: (0..config.hosts)
                .map(|n| HostView {
                    host_id: n,
                    url: config.host_url(n),
                    phase: Phase::Unreachable,
                    ..Default::default()
                })
                .collect(),
            error: None,
            result_records: None,
            run_seconds: None,
        }),
        result: Mutex::new(None),
        restart: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("the coordinator cannot listen on {}: {e}", config.listen))?;
    let app = Router::new()
        .route("/status", get(status))
        .route("/result", get(result))
        .route("/restart", post(restart))
        .route("/healthz", get(|| async { Json(json!({"status": "healthy"})) }))
        .with_state(shared.clone());
    tracing::info!(deployment = %config.deployment_id, listen = %config.listen, hosts = config.hosts, "coordinator listening");
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::select! {
        served = server => served?,
        () = drive(config, shared) => {}
    }
    Ok(())
}

async fn status(AxumState(shared): AxumState<Arc<Shared>>) -> Json<DeploymentStatus> {
    Json(shared.snapshot())
}

async fn result(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    match shared.result.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        Some(text) => text.into_response(),
        None => {
            let state = shared.snapshot().state;
            (StatusCode::CONFLICT, Json(json!({"error": format!("no result: the deployment is {state:?}")})))
                .into_response()
        }
    }
}

async fn restart(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    shared.restart.notify_one();
    let epoch = shared.snapshot().epoch;
    (StatusCode::ACCEPTED, Json(json!({"restarting": true, "epoch": epoch}))).into_response()
}

/// Asks every host for its status and records what each said.
async fn poll(config: &CoordinatorConfig, client: &reqwest::Client, shared: &Shared) -> Vec<Option<HostStatus>> {
    let answers = futures::future::join_all((0..config.hosts).map(|n| async move {
        let response = client.get(format!("{}/status", config.host_url(n))).send().await.ok()?;
        response.json::<HostStatus>().await.ok()
    }))
    .await;
    shared.update(|status| {
        for (view, answer) in status.hosts.iter_mut().zip(&answers) {
            match answer {
                Some(host) => {
                    view.phase = host.phase;
                    view.instance = Some(host.instance.clone());
                    view.exchange_address = Some(host.exchange_address);
                    view.records_read = host.records_read;
                    view.records_sent = host.records_sent;
                    view.records_received = host.records_received;
                    view.memory_limit_bytes = host.memory_limit_bytes;
                    view.error = host.error.clone();
                }
                None => view.phase = Phase::Unreachable,
            }
        }
    });
    answers
}

/// Tells every host to restart, and returns the instances that must not be taken for
/// restarted ones.
async fn order_restart(
    config: &CoordinatorConfig,
    client: &reqwest::Client,
    shared: &Shared,
    why: &str,
) -> HashSet<String> {
    let answers = poll(config, client, shared).await;
    let retired: HashSet<String> = answers.iter().flatten().map(|h| h.instance.clone()).collect();
    tracing::info!(deployment = %config.deployment_id, why, "ordering a coordinated restart of every host");
    futures::future::join_all((0..config.hosts).map(|n| client.post(format!("{}/restart", config.host_url(n))).send()))
        .await;
    shared.update(|status| {
        status.state = DeploymentState::Restarting;
        status.restarts += 1;
        status.hosts_ready = 0;
        status.error = None;
        status.result_records = None;
        status.run_seconds = None;
    });
    *shared.result.lock().unwrap_or_else(|p| p.into_inner()) = None;
    retired
}

/// Runs the deployment's epochs until the process stops: wait for every host, start
/// them, watch them, restart.
async fn drive(config: CoordinatorConfig, shared: Arc<Shared>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
    let mut retired: HashSet<String> = HashSet::new();
    loop {
        let hosts = wait_for_hosts(&config, &client, &shared, &mut retired).await;
        let epoch = start_epoch(&config, &client, &shared, &hosts).await;
        let restart_why = watch_epoch(&config, &client, &shared, &epoch).await;
        retired = order_restart(&config, &client, &shared, restart_why).await;
    }
}

/// Waits until every host is up, ready, and not an instance from before a restart.
async fn wait_for_hosts(
    config: &CoordinatorConfig,
    client: &reqwest::Client,
    shared: &Shared,
    retired: &mut HashSet<String>,
) -> Vec<HostStatus> {
    shared.update(|s| s.state = DeploymentState::WaitingForHosts);
    loop {
        let answers = poll(config, client, shared).await;
        let ready = answers
            .iter()
            .filter(|a| a.as_ref().is_some_and(|h| h.phase == Phase::Ready && !retired.contains(&h.instance)))
            .count() as u32;
        shared.update(|s| s.hosts_ready = ready);
        if ready == config.hosts {
            return answers.into_iter().flatten().collect();
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = shared.restart.notified() => {
                retired.extend(order_restart(config, client, shared, "ordered while waiting for hosts").await);
            }
        }
    }
}

/// One started epoch: which instances run it, since when, and whether a host
/// refused the start.
struct Epoch {
    number: u64,
    instances: Vec<String>,
    began: Instant,
    failure: Option<String>,
}

/// Starts every host with the peer list.
async fn start_epoch(
    config: &CoordinatorConfig,
    client: &reqwest::Client,
    shared: &Shared,
    hosts: &[HostStatus],
) -> Epoch {
    let number = shared.snapshot().epoch + 1;
    let peers: Vec<SocketAddr> = hosts.iter().map(|h| h.exchange_address).collect();
    let instances: Vec<String> = hosts.iter().map(|h| h.instance.clone()).collect();
    tracing::info!(deployment = %config.deployment_id, epoch = number, hosts = config.hosts, "every host is ready: starting");
    let order = StartOrder { deployment_id: config.deployment_id.clone(), epoch: number, peers };
    let started = futures::future::join_all(
        (0..config.hosts).map(|n| client.post(format!("{}/start", config.host_url(n))).json(&order).send()),
    )
    .await;
    let began = Instant::now();
    shared.update(|s| {
        s.epoch = number;
        s.state = DeploymentState::Running;
    });
    let mut failure = None;
    for (n, answer) in started.into_iter().enumerate() {
        match answer {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                let body = response.text().await.unwrap_or_default();
                failure = Some(format!("host {n} refused the start: {body}"));
            }
            Err(e) => failure = Some(format!("host {n} could not be started: {e}")),
        }
    }
    Epoch { number, instances, began, failure }
}

/// Watches an epoch until every host is done, one fails, or a restart is due;
/// returns why the next restart happens.
async fn watch_epoch(
    config: &CoordinatorConfig,
    client: &reqwest::Client,
    shared: &Shared,
    epoch: &Epoch,
) -> &'static str {
    let mut failure = epoch.failure.clone();
    loop {
        if let Some(error) = failure.take() {
            tracing::error!(deployment = %config.deployment_id, epoch = epoch.number, %error, "the deployment failed");
            shared.update(|s| {
                s.state = DeploymentState::Failed;
                s.error = Some(error);
                s.run_seconds = Some(epoch.began.elapsed().as_secs_f64());
            });
            shared.restart.notified().await;
            return "ordered after a failure";
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = shared.restart.notified() => return "ordered through the coordinator",
        }
        let answers = poll(config, client, shared).await;
        if answers.iter().zip(&epoch.instances).any(|(a, i)| a.as_ref().is_some_and(|h| &h.instance != i)) {
            return "a host restarted by itself";
        }
        if let Some((n, host)) = answers
            .iter()
            .enumerate()
            .find_map(|(n, a)| a.as_ref().filter(|h| h.phase == Phase::Failed).map(|h| (n, h)))
        {
            failure = Some(format!("host {n} failed: {}", host.error.as_deref().unwrap_or("no reason given")));
            continue;
        }
        if answers.iter().all(|a| a.as_ref().is_some_and(|h| h.phase == Phase::Done)) {
            match gather(config, client).await {
                Ok(text) => {
                    let records = text.lines().count();
                    let seconds = epoch.began.elapsed().as_secs_f64();
                    tracing::info!(deployment = %config.deployment_id, epoch = epoch.number, records, seconds, "the deployment completed");
                    *shared.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
                    shared.update(|s| {
                        s.state = DeploymentState::Completed;
                        s.result_records = Some(records);
                        s.run_seconds = Some(seconds);
                    });
                    shared.restart.notified().await;
                    return "ordered after completion";
                }
                Err(error) => failure = Some(error),
            }
        }
    }
}

/// Fetches every host's part and merges them into the output a single process
/// prints: `key value` lines sorted by key (each key is on exactly one host).
async fn gather(config: &CoordinatorConfig, client: &reqwest::Client) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Part {
        records: Vec<(String, String)>,
    }
    let mut all: Vec<(String, String)> = Vec::new();
    for n in 0..config.hosts {
        let url = format!("{}/result", config.host_url(n));
        let part: Part = async { client.get(&url).send().await?.error_for_status()?.json().await }
            .await
            .map_err(|e: reqwest::Error| format!("fetching host {n}'s result: {e}"))?;
        all.extend(part.records);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("key {:?} came from two hosts: the exchange went wrong", pair[0].0));
    }
    Ok(all.into_iter().map(|(key, value)| format!("{key} {value}\n")).collect())
}
