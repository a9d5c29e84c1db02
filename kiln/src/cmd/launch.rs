//! `kiln launch` runs a built pipeline as H host processes plus a coordinator on
//! this machine's loopback (see `kiln_multihost::layout`), and `kiln coordinator` is
//! the coordinator it starts.
//!
//! In order: the host count is checked, then every address (leftovers of an earlier
//! run are stopped, anything else holding an address is named), then the binary is
//! fetched and its SHA-256 checked (or a local one taken), each member gets its own
//! working and storage directory, and the members start under one supervisor with
//! the restart-on-55 policy. The launcher follows the coordinator's status, and for a
//! batch pipeline prints the result and exits with the deployment's status.

use std::ffi::OsString;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kiln_multihost::coordinator::{CoordinatorConfig, DeploymentState, DeploymentStatus};
use kiln_multihost::layout::{self, EXCHANGE_PORT, HOST_TEMPLATE, HTTP_PORT};
use kiln_multihost::stale::{DEPLOYMENT_ENV, LAUNCHER_ENV};
use kiln_pipeline_runtime::contract::{self, HostArgs, Phase, RESTART_EXIT_CODE};
use kiln_process::supervisor::{Event, MemberSpec, RestartPolicy, Supervisor};

use crate::client::Client;
use crate::cmd::download::fetch_verified;
use crate::config::command_line::CommandLine;
use crate::config::leader::LeaderArgs;
use crate::config::units::{parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The pipeline to run (its name or id): its binary is fetched from the leader and
    /// its SHA-256 checked.
    #[arg(required_unless_present = "binary", conflicts_with = "binary")]
    pub pipeline: Option<String>,
    /// Run this local pipeline binary instead of fetching one.
    #[arg(long, env = "KILN_LAUNCH_BINARY")]
    pub binary: Option<PathBuf>,
    /// H: how many host processes, 1 to 254.
    #[arg(long, env = "KILN_HOSTS", default_value_t = 1)]
    pub hosts: u32,
    /// The pipeline's config file (JSON), given to every host. Relative paths in it
    /// are relative to its directory.
    #[arg(long, env = "KILN_LAUNCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The most memory each host may use (e.g. 2G). Without it, this machine's memory
    /// is divided among the hosts.
    #[arg(long, env = "KILN_LAUNCH_MEMORY_PER_HOST", value_parser = parse_size)]
    pub memory_per_host: Option<u64>,
    /// Where each member gets its working and storage directories. Without it, a new
    /// directory under the system's temporary directory, removed after a run that
    /// completed.
    #[arg(long, env = "KILN_LAUNCH_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Coordinated restarts (exit 55) a member may make within --restart-window;
    /// one more is fatal.
    #[arg(long, env = "KILN_LAUNCH_MAX_RESTARTS", default_value_t = 5)]
    pub max_restarts: u32,
    #[arg(long, env = "KILN_LAUNCH_RESTART_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub restart_window: Duration,
    /// The pause before a member that exited 55 is started again.
    #[arg(long, env = "KILN_LAUNCH_RESTART_BACKOFF", default_value = "250ms", value_parser = parse_duration)]
    pub restart_backoff: Duration,
    /// Give up if the deployment has not completed after this long.
    #[arg(long, env = "KILN_LAUNCH_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

#[derive(Debug, Clone, PartialEq, Args)]
pub struct CoordinatorArgs {
    #[arg(long, env = "KILN_COORDINATOR_LISTEN", default_value_t = coordinator_listen())]
    pub listen: SocketAddr,
    #[arg(long, env = "KILN_HOSTS")]
    pub hosts: u32,
    /// How host `n` is addressed: `#` stands for `n`.
    #[arg(long, env = "KILN_HOST_TEMPLATE", default_value = HOST_TEMPLATE)]
    pub host_template: String,
    #[arg(long, env = "KILN_HOST_PORT", default_value_t = HTTP_PORT)]
    pub host_port: u16,
    #[arg(long, env = "KILN_DEPLOYMENT_ID")]
    pub deployment_id: String,
}

impl CoordinatorArgs {
    /// The `kiln coordinator` command line that parses back as these arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut line = CommandLine(vec!["coordinator".into()]);
        line.value("--listen", &self.listen);
        line.value("--hosts", &self.hosts);
        line.value("--host-template", &self.host_template);
        line.value("--host-port", &self.host_port);
        line.value("--deployment-id", &self.deployment_id);
        line.0
    }
}

fn coordinator_listen() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(layout::coordinator_address(), HTTP_PORT))
}

/// `kiln coordinator`: the coordinator of a multihost deployment, as `kiln launch`
/// starts it.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    layout::check_host_count(args.hosts)?;
    let config = CoordinatorConfig {
        listen: args.listen,
        hosts: args.hosts,
        host_template: args.host_template,
        host_port: args.host_port,
        deployment_id: args.deployment_id,
    };
    kiln_multihost::coordinator::run(config, crate::shutdown::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// This machine's memory, from /proc/meminfo.
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Each member's own directory and the config file written for it.
struct MemberDirs {
    dir: PathBuf,
    config: PathBuf,
}

/// Writes host `n`'s directory: `host-n/` (its working directory), `host-n/storage/`,
/// and `host-n/config.json`, the user's config with the runtime's `"kiln"` settings
/// (the storage directory, and the base directory relative paths are resolved in).
fn host_dirs(run_dir: &Path, n: u32, config: &serde_json::Value, base_dir: &Path) -> anyhow::Result<MemberDirs> {
    let dir = run_dir.join(format!("host-{n}"));
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let mut config = config.clone();
    let object = config.as_object_mut().context("the config file must hold a JSON object")?;
    let kiln = object.entry("kiln").or_insert_with(|| serde_json::json!({}));
    let kiln = kiln.as_object_mut().context("the config's \"kiln\" entry must be a JSON object")?;
    kiln.insert("storage_dir".into(), serde_json::json!(storage));
    kiln.entry("base_dir").or_insert_with(|| serde_json::json!(base_dir));
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(MemberDirs { dir, config: path })
}

fn read_config(path: Option<&Path>) -> anyhow::Result<(serde_json::Value, PathBuf)> {
    match path {
        None => Ok((serde_json::json!({}), std::env::current_dir()?)),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("the config file {} is not valid JSON", path.display()))?;
            if !value.is_object() {
                bail!("the config file {} must hold a JSON object", path.display());
            }
            let dir = path.canonicalize()?.parent().map(Path::to_path_buf).unwrap_or_default();
            Ok((value, dir))
        }
    }
}

/// The binary to run: fetched and verified into the run directory, or the local one.
async fn binary(args: &LaunchArgs, run_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    match (&args.pipeline, &args.binary) {
        (_, Some(binary)) => {
            let path = binary.canonicalize().with_context(|| format!("cannot find the binary {}", binary.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into());
            Ok((path, name))
        }
        (Some(pipeline), None) => {
            let client = Client::new(&args.leader)?;
            let output = run_dir.join("pipeline");
            let (record, sha) = fetch_verified(&client, pipeline, &output).await?;
            eprintln!("kiln launch: {} version {} (sha256 {sha}, verified)", record.name, record.version);
            Ok((output, record.name))
        }
        (None, None) => bail!("name a pipeline to fetch, or a local one with --binary FILE"),
    }
}

fn member_env(deployment_id: &str) -> Vec<(OsString, OsString)> {
    vec![(DEPLOYMENT_ENV.into(), deployment_id.into()), (LAUNCHER_ENV.into(), std::process::id().to_string().into())]
}

fn specs(
    args: &LaunchArgs,
    program: &Path,
    run_dir: &Path,
    deployment_id: &str,
    memory_per_host: Option<u64>,
) -> anyhow::Result<Vec<MemberSpec>> {
    let (config, base_dir) = read_config(args.config.as_deref())?;
    let mut specs = Vec::new();
    for n in 0..args.hosts {
        let dirs = host_dirs(run_dir, n, &config, &base_dir)?;
        let mut env = member_env(deployment_id);
        if let Some(bytes) = memory_per_host {
            env.push(("KILN_MEMORY_LIMIT_BYTES".into(), bytes.to_string().into()));
        }
        specs.push(MemberSpec {
            name: format!("host-{n}"),
            program: program.to_path_buf(),
            args: contract::Args {
                config_file: dirs.config,
                host: Some(HostArgs {
                    host_id: n,
                    bind_address: layout::host_address(n).into(),
                    http_port: HTTP_PORT,
                    exchange_port: EXCHANGE_PORT,
                    deployment_id: deployment_id.to_owned(),
                }),
            }
            .to_args(),
            env,
            working_dir: Some(dirs.dir),
            memory_limit: memory_per_host,
            cpus: None,
            log: None,
        });
    }
    let coordinator_dir = run_dir.join("coordinator");
    std::fs::create_dir_all(&coordinator_dir)?;
    specs.push(MemberSpec {
        name: "coordinator".into(),
        program: std::env::current_exe().context("finding the kiln binary")?,
        args: CoordinatorArgs {
            listen: coordinator_listen(),
            hosts: args.hosts,
            host_template: HOST_TEMPLATE.into(),
            host_port: HTTP_PORT,
            deployment_id: deployment_id.into(),
        }
        .to_args(),
        env: member_env(deployment_id),
        working_dir: Some(coordinator_dir),
        memory_limit: None,
        cpus: None,
        log: None,
    });
    Ok(specs)
}

/// One line about where the deployment is, for the progress display.
fn describe(status: &DeploymentStatus, hosts: u32) -> String {
    let read: u64 = status.hosts.iter().map(|h| h.records_read).sum();
    let exchanged: u64 = status.hosts.iter().map(|h| h.records_received).sum();
    let done = status.hosts.iter().filter(|h| h.phase == Phase::Done).count();
    match status.state {
        DeploymentState::WaitingForHosts => format!("waiting for hosts: {}/{hosts} ready", status.hosts_ready),
        DeploymentState::Running => {
            format!("epoch {}: {done}/{hosts} hosts done, {read} records read, {exchanged} exchanged", status.epoch)
        }
        DeploymentState::Restarting => format!("coordinated restart {} under way", status.restarts),
        DeploymentState::Completed => format!("completed epoch {}", status.epoch),
        DeploymentState::Failed => format!("failed: {}", status.error.as_deref().unwrap_or("no reason given")),
    }
}

/// `kiln launch`: checks, fetches, starts the members and follows the deployment;
/// the members' directories are kept unless a run in a directory of its own completed.
pub async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    // Checks first, before anything is clamped, fetched or started.
    let hosts = layout::check_host_count(args.hosts)?;
    for line in layout::prepare_addresses(hosts)? {
        eprintln!("kiln launch: {line}");
    }
    let (run_dir, owned) = match &args.run_dir {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = tempfile::Builder::new().prefix("kiln-launch-").tempdir()?;
            (dir.keep(), true)
        }
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let outcome = run(&args, hosts, &run_dir).await;
    if owned && matches!(outcome, Ok(ref code) if *code == ExitCode::SUCCESS) {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        if let Err(error) = &outcome {
            // Recorded beside the members' directories, for whoever looks later.
            let _ = std::fs::write(run_dir.join("error.txt"), format!("{error:#}\n"));
        }
        eprintln!("kiln launch: the members' directories are kept in {}", run_dir.display());
    }
    outcome
}

/// A spinner on a terminal; nothing otherwise (state lines are printed anyway).
fn spinner() -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.enable_steady_tick(Duration::from_millis(120));
    } else {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress
}

/// Prints a completed deployment's result on stdout and a summary on stderr.
async fn print_result(
    http: &reqwest::Client,
    coordinator_url: &str,
    status: &DeploymentStatus,
    hosts: u32,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let response = http
        .get(format!("{coordinator_url}/result"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| anyhow::anyhow!("fetching the result from the coordinator: {e}"))?;
    let text = response.text().await.context("reading the result")?;
    print!("{text}");
    std::io::Write::flush(&mut std::io::stdout())?;
    eprintln!(
        "kiln launch: deployment {} completed: {} records from {hosts} hosts in {:.2}s ({} coordinated restarts)",
        status.deployment_id,
        status.result_records.unwrap_or(0),
        started.elapsed().as_secs_f64(),
        status.restarts
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(args: &LaunchArgs, hosts: u32, run_dir: &Path) -> anyhow::Result<ExitCode> {
    let (program, name) = binary(args, run_dir).await?;
    let deployment_id = format!(
        "{name}-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
    );
    let memory_per_host = args.memory_per_host.or_else(|| machine_memory().map(|total| total / u64::from(hosts)));
    let specs = specs(args, &program, run_dir, &deployment_id, memory_per_host)?;
    let coordinator_url = format!("http://{}", coordinator_listen());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let shutdown = crate::shutdown::on_signal();
    let started = Instant::now();
    let mut supervisor = Supervisor::start(
        specs,
        RestartPolicy::OnExitCode {
            code: RESTART_EXIT_CODE,
            backoff: args.restart_backoff,
            max_restarts: args.max_restarts,
            window: args.restart_window,
        },
        Duration::from_secs(5),
    );
    eprintln!(
        "kiln launch: deployment {deployment_id}: {hosts} hosts on {} .. {}, coordinator at {coordinator_url}{}",
        layout::host_address(0),
        layout::host_address(hosts - 1),
        memory_per_host.map(|b| format!(", {} MiB of memory per host", b >> 20)).unwrap_or_default()
    );
    let progress = spinner();
    let say = |line: String| progress.suspend(|| eprintln!("kiln launch: {line}"));

    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut last_state = None;
    let outcome: anyhow::Result<ExitCode> = loop {
        tokio::select! {
            // A member's fatal exit is decided before anything the coordinator says.
            biased;
            () = shutdown.cancelled() => break Ok(ExitCode::from(130)),
            event = supervisor.next_event() => match event {
                Some(Event::Started { member, pid }) => tracing::debug!(%member, pid, "member started"),
                Some(Event::Restarting { member, exit, after, .. }) => {
                    say(format!("{member} exited ({exit}): coordinated restart, starting it again in {}ms", after.as_millis()));
                }
                Some(Event::Fatal { member, reason, .. }) => {
                    break Err(anyhow::anyhow!("{member} failed ({reason}); every member of deployment {deployment_id} was stopped"));
                }
                None => break Err(anyhow::anyhow!("every member ended")),
            },
            _ = ticker.tick() => {
                if started.elapsed() > args.timeout {
                    break Err(anyhow::anyhow!("the deployment did not complete within {}s", args.timeout.as_secs()));
                }
                let Ok(response) = http.get(format!("{coordinator_url}/status")).send().await else { continue };
                let Ok(status) = response.json::<DeploymentStatus>().await else { continue };
                progress.set_message(describe(&status, hosts));
                if last_state != Some((status.state, status.epoch)) {
                    last_state = Some((status.state, status.epoch));
                    say(describe(&status, hosts));
                }
                match status.state {
                    DeploymentState::Completed => {
                        progress.finish_and_clear();
                        break print_result(&http, &coordinator_url, &status, hosts, started).await;
                    }
                    DeploymentState::Failed => {
                        break Err(anyhow::anyhow!("deployment {deployment_id} failed: {}", status.error.unwrap_or_default()));
                    }
                    _ => {}
                }
            }
        }
    };
    progress.finish_and_clear();
    supervisor.stop().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(no_binary_name = true)]
    struct Line {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Coordinator(CoordinatorArgs),
    }

    #[test]
    fn the_coordinator_command_line_reads_back() {
        let args = CoordinatorArgs {
            listen: coordinator_listen(),
            hosts: 7,
            host_template: HOST_TEMPLATE.into(),
            host_port: 1234,
            deployment_id: "wordcount-1".into(),
        };
        let Sub::Coordinator(back) = <Line as clap::Parser>::try_parse_from(args.to_args()).unwrap().command;
        assert_eq!(back, args);
    }
}
