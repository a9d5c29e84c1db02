//! `kiln up`: a whole farm on this machine. The leader and N-1 further workers run as
//! supervised child processes with StatefulSet-style hostnames
//! (`kiln-compiler-server-<i>`); a member that dies is restarted, as Kubernetes
//! would; Ctrl-C or SIGTERM stops them all.
//!
//! The terminal stays quiet: the URLs, one line per member when it is ready, the
//! builds' progress and the final table. Each member's log goes to
//! `<data-dir>/logs/member-<n>.log` (rotated), streamed only with `--verbose`, and
//! a member that exits has its last lines shown. A member that keeps failing before
//! it was ever ready stops the farm with its error: waiting cannot fix it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kiln_process::supervisor::{Event, MemberLog, MemberSpec, RestartPolicy, Supervisor};

use crate::client::Client;
use crate::cmd::status::print_table;
use crate::cmd::submit::{report_failures, submit_dirs, wait_for};
use crate::config::cache::CacheArgs;
use crate::config::leader::{ApiTokenArgs, DEFAULT_PORT, LeaderArgs, default_data_dir};
use crate::config::secret::SecretFile;
use crate::config::server::{DEFAULT_PROFILE, ServerArgs};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// N: the number of members, the leader included.
    #[arg(long, env = "KILN_WORKERS", default_value_t = 2)]
    pub workers: u32,
    /// Where the farm keeps its state: the leader's catalog and artifacts, each
    /// worker's build root, the cluster token.
    #[arg(long, env = "KILN_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// The leader's port on 127.0.0.1.
    #[arg(long, env = "KILN_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Each member's share of the machine, as a pod gets its CPU request: the
    /// member runs pinned to this many CPUs of its own (taken in turn from the ones
    /// `kiln up` may use) and cargo builds with as many jobs. Default: the CPUs
    /// divided by the members, at least 1.
    #[arg(long, env = "KILN_CPUS_PER_MEMBER", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus_per_member: Option<u32>,
    /// The cargo profile a pipeline is built in when its submission names none.
    #[arg(long, env = "KILN_BUILD_PROFILE", default_value = DEFAULT_PROFILE, value_parser = kiln_core::profile::PROFILES)]
    pub profile: String,
    /// The build root every member sees: one absolute path, privately mounted over
    /// each member's own directory, so sccache hits are shared across members.
    #[arg(long, env = "KILN_BUILD_ROOT", default_value = "/tmp/kiln-farm/build-root")]
    pub build_root: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Where the prebuilt dependency set is kept, shared by the members. Defaults to
    /// <data-dir>/depset-cache.
    #[arg(long, env = "KILN_DEPSET_CACHE")]
    pub depset_cache: Option<PathBuf>,
    /// The operator's dependency set (a directory made with `kiln depset create`)
    /// every member builds against; Kiln's built-in set without it.
    #[arg(long, env = "KILN_DEPSET")]
    pub depset: Option<PathBuf>,
    /// Once the farm is ready, submit these program directories and show progress.
    #[arg(long = "submit", num_args = 1..)]
    pub submit: Vec<PathBuf>,
    /// With --submit: stop the farm when those builds have ended, and exit non-zero
    /// if any failed.
    #[arg(long, requires = "submit")]
    pub once: bool,
    /// Stream every member's log on the terminal too (prefixed `member-<n> | `);
    /// without it they are only in <data-dir>/logs/member-<n>.log.
    #[arg(long, short, env = "KILN_VERBOSE")]
    pub verbose: bool,
    /// Further `kiln server` options for every member, e.g. `--upload-budget=10m`.
    #[arg(last = true)]
    pub server_args: Vec<OsString>,
    /// The log format the members write (`kiln --log-format`), set by `main`.
    #[arg(skip)]
    pub log_format: String,
}

/// How many exits in a row, before a member was ever ready, stop the farm.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// The farm's cluster token's file, made with a random token on first use.
fn cluster_token_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("cluster-token");
    SecretFile { path: &path, what: "the cluster token file", flag: "--data-dir" }.read_or_create()?;
    Ok(path)
}

/// The farm's API token's file (beside the cluster token), unless the options after
/// `--` give the API a token of their own or none.
fn api_token_file(data_dir: &Path, base: &ServerArgs) -> anyhow::Result<Option<PathBuf>> {
    if base.no_api_token || base.api.api_token.is_some() {
        return Ok(None);
    }
    if let Some(file) = &base.api.api_token_file {
        return Ok(Some(file.clone()));
    }
    let path = data_dir.join("api-token");
    SecretFile { path: &path, what: "the API token file", flag: "--data-dir" }.read_or_create()?;
    Ok(Some(path))
}

fn server_options(args: &UpArgs) -> anyhow::Result<ServerArgs> {
    ServerArgs::parse_options(&args.server_args)
        .map_err(|e| anyhow::anyhow!("the `kiln server` options after `--` are not valid: {e}"))
}

/// Each member's `kiln server` arguments: the options given after `--`, then what
/// the local farm decides (names, directories, the shared build root, the token).
/// Built as [`ServerArgs`] and rendered by it, so a member reads exactly these.
fn member_specs(args: &UpArgs, data_dir: &Path, token_file: &Path) -> anyhow::Result<Vec<MemberSpec>> {
    let program = std::env::current_exe().context("finding the kiln binary")?;
    let base = server_options(args)?;
    let api_token_file = api_token_file(data_dir, &base)?;
    let shares = cpu_shares(&kiln_process::process::usable_cpus(), args.workers, args.cpus_per_member);
    (0..args.workers)
        .map(|ordinal| {
            let member_dir = data_dir.join(format!("member-{ordinal}"));
            let member = ServerArgs {
                hostname: Some(format!("kiln-compiler-server-{ordinal}")),
                workers: Some(args.workers),
                data_dir: member_dir.clone(),
                build_root: args.build_root.clone(),
                build_root_source: Some(member_dir.join("build")),
                depset_cache: Some(args.depset_cache.clone().unwrap_or_else(|| data_dir.join("depset-cache"))),
                depset: args
                    .depset
                    .as_ref()
                    .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
                    .or(base.depset.clone()),
                cluster_token: None,
                cluster_token_file: Some(token_file.to_owned()),
                api: ApiTokenArgs { api_token: base.api.api_token.clone(), api_token_file: api_token_file.clone() },
                // https:// when the options after `--` give the leader a certificate
                // (which must then hold 127.0.0.1).
                leader_url: Some(base.loopback_leader_url(args.port)),
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
                profile: args.profile.clone(),
                // Without a bucket, the members share one local sccache directory, so
                // what one compiled is a hit for the others here too.
                sccache_dir: base.sccache_dir.clone().or_else(|| {
                    (args.cache.bucket.is_none() && base.sccache != "off").then(|| data_dir.join("sccache"))
                }),
                cache: args.cache.clone(),
                // A build user of its own per member: RLIMIT_NPROC counts per uid,
                // so one member's fork bomb must not fail another member's builds.
                build_uid: base.build_uid.saturating_add(ordinal),
                // cargo's jobs: the member's share, unless the options after `--` say.
                build_jobs: base.build_jobs.or(Some(shares[ordinal as usize].len().max(1) as u32)),
                ..base.clone()
            };
            let mut env = member.secret_env();
            if !args.log_format.is_empty() {
                env.push(("KILN_LOG_FORMAT".into(), args.log_format.clone().into()));
            }
            Ok(MemberSpec {
                name: format!("member-{ordinal}"),
                program: program.clone(),
                env,
                args: member.to_args(),
                working_dir: None,
                memory_limit: None,
                cpus: Some(shares[ordinal as usize].clone()),
                log: Some(MemberLog { path: member_log(data_dir, ordinal), echo: args.verbose }),
            })
        })
        .collect()
}

/// The CPUs of each of `workers` members: `per_member` of `usable` each (by
/// default `usable / workers`, at least 1), taken in turn, so that members share
/// a CPU only when there are more members than CPUs (none known: not pinned).
pub fn cpu_shares(usable: &[usize], workers: u32, per_member: Option<u32>) -> Vec<Vec<usize>> {
    let total = usable.len().max(1);
    let per = per_member.map_or(total / workers.max(1) as usize, |n| n as usize).clamp(1, total);
    (0..workers as usize)
        .map(|ordinal| (0..per).filter_map(|k| usable.get((ordinal * per + k) % total).copied()).collect())
        .collect()
}

/// Where member `ordinal`'s log goes.
pub fn member_log(data_dir: &Path, ordinal: u32) -> PathBuf {
    data_dir.join("logs").join(format!("member-{ordinal}.log"))
}

/// A member's refusal to build (it cannot make its sandbox), from /cluster_healthz.
fn refusal(health: &serde_json::Value) -> Option<String> {
    health["members"].as_array()?.iter().find_map(|m| {
        let message = m["message"].as_str().unwrap_or("");
        message.contains("sandbox: unavailable").then(|| format!("member-{}: {message}", m["ordinal"]))
    })
}

/// Waits for every member to be healthy, with a line for each as it gets there;
/// `ready` names the members that have been ready at least once.
async fn wait_until_healthy(client: &Client, workers: u32, ready: &Mutex<HashSet<String>>) -> anyhow::Result<()> {
    let mut last_report = tokio::time::Instant::now();
    loop {
        let health = client.cluster_health().await;
        // Waiting cannot help a member that refuses to build: say why, and stop.
        if let Ok((false, body)) = &health
            && let Some(why) = refusal(body)
        {
            bail!("{why}");
        }
        if let Ok((_, body)) = &health {
            for member in body["members"].as_array().into_iter().flatten().filter(|m| m["healthy"] == true) {
                let name = format!("member-{}", member["ordinal"]);
                if ready.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
                    let role = if member["ordinal"] == 0 { "leader and worker" } else { "worker" };
                    eprintln!(
                        "kiln up: {name} ready ({role}; {}; cache: {})",
                        member["sandbox"].as_str().unwrap_or("sandbox: unknown"),
                        member["cache"].as_str().unwrap_or("unknown")
                    );
                }
            }
        }
        match health {
            Ok((true, _)) => return Ok(()),
            Ok((false, body)) if last_report.elapsed() > Duration::from_secs(15) => {
                let waiting: Vec<String> = body["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter(|m| m["healthy"] != true)
                            .map(|m| format!("member-{}: {}", m["ordinal"], m["message"].as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                eprintln!("kiln up: waiting for {} of {workers} members ({})", waiting.len(), waiting.join("; "));
                last_report = tokio::time::Instant::now();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A member's last lines, indented, for an error or a restart notice.
fn shown_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return "    (it wrote nothing)".to_owned();
    }
    lines.iter().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.workers == 0 {
        bail!("--workers must be at least 1: the leader is a worker too");
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let token_file = cluster_token_file(&data_dir)?;
    let base = server_options(&args)?;
    let leader = LeaderArgs {
        url: base.loopback_leader_url(args.port),
        api: ApiTokenArgs { api_token: base.api.api_token.clone(), api_token_file: api_token_file(&data_dir, &base)? },
        tls_ca: base.tls.tls_ca.clone(),
    };
    if let Ok(stale) = std::net::TcpListener::bind(("127.0.0.1", args.port)) {
        drop(stale);
    } else {
        bail!("port {} on 127.0.0.1 is taken: another `kiln up` may be running; stop it or pass --port", args.port);
    }
    let client = Client::new(&leader)?;
    let shutdown = crate::shutdown::on_signal();
    let mut supervisor = Supervisor::start(
        member_specs(&args, &data_dir, &token_file)?,
        RestartPolicy::Always {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        },
        Duration::from_secs(10),
    );
    eprintln!("kiln up: starting {} members; leader at {}", args.workers, leader.url);
    match &leader.api.api_token_file {
        Some(file) => {
            eprintln!("kiln up: status page at {}/ (sign in with the API token in {})", leader.url, file.display())
        }
        None => eprintln!("kiln up: status page at {}/", leader.url),
    }
    eprintln!(
        "kiln up: member logs in {}{}",
        data_dir.join("logs").display(),
        if args.verbose { " (and here, --verbose)" } else { " (--verbose shows them here)" }
    );
    let ready: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut exits_before_ready: HashMap<String, u32> = HashMap::new();

    let job = {
        let client = client.clone();
        let dirs = args.submit.clone();
        let workers = args.workers;
        let ready = ready.clone();
        async move {
            wait_until_healthy(&client, workers, &ready).await?;
            eprintln!("kiln up: farm ready, {workers} members healthy. Submit with: kiln submit DIR --wait");
            if dirs.is_empty() {
                return std::future::pending().await;
            }
            let submitted = submit_dirs(&client, &dirs, None, None).await?;
            let records = wait_for(&client, &submitted, Duration::from_secs(3600)).await?;
            print_table(&records);
            report_failures(&client, &records).await
        }
    };
    tokio::pin!(job);
    let mut job_done = false;
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(ExitCode::SUCCESS),
            result = &mut job, if !job_done => {
                job_done = true;
                match result {
                    Ok(all_ok) if args.once => break Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
                    Ok(_) => eprintln!("kiln up: builds done; the farm keeps running (Ctrl-C stops it)"),
                    Err(e) => break Err(e),
                }
            }
            event = supervisor.next_event() => match event {
                Some(Event::Started { member, pid }) => tracing::debug!(%member, pid, "member started"),
                Some(Event::Restarting { member, exit, after, last_lines }) => {
                    let was_ready = ready.lock().unwrap_or_else(|p| p.into_inner()).contains(&member);
                    let log = member_log(&data_dir, member.trim_start_matches("member-").parse().unwrap_or(0));
                    if !was_ready {
                        let exits = exits_before_ready.entry(member.clone()).or_default();
                        *exits += 1;
                        if *exits >= CRASH_LOOP_EXITS {
                            break Err(anyhow::anyhow!(
                                "{member} failed {exits} times in a row before it was ever ready ({exit}), so the farm is stopped: restarting it cannot help.\n{}\nIts whole log is in {}",
                                shown_lines(&last_lines),
                                log.display()
                            ));
                        }
                    }
                    eprintln!(
                        "kiln up: {member} exited ({exit}); restarting it in {:.1}s. Its last lines ({}):\n{}",
                        after.as_secs_f64(),
                        log.display(),
                        shown_lines(&last_lines)
                    );
                }
                Some(Event::Fatal { member, reason, last_lines }) => {
                    break Err(anyhow::anyhow!("{member} cannot run: {reason}\n{}", shown_lines(&last_lines)));
                }
                None => break Err(anyhow::anyhow!("every member ended")),
            },
        }
    };
    eprintln!("kiln up: stopping the farm");
    supervisor.stop().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::cpu_shares;

    #[test]
    fn each_member_gets_its_share_of_the_cpus() {
        assert_eq!(cpu_shares(&[0, 1], 2, None), vec![vec![0], vec![1]], "a core per member");
        assert_eq!(cpu_shares(&[0, 1], 3, None), vec![vec![0], vec![1], vec![0]], "at least one, in turn");
        assert_eq!(cpu_shares(&[0, 1, 2, 3], 2, None), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(cpu_shares(&[2, 5], 1, Some(8)), vec![vec![2, 5]], "never more than there are");
        assert_eq!(cpu_shares(&[0, 1, 2, 3], 2, Some(1)), vec![vec![0], vec![1]]);
    }
}
