//! End-to-end tests of the multihost launcher: real `kiln launch` processes running
//! a pipeline the farm built as host processes on 127.100.<n>.1 plus a coordinator
//! on 127.100.255.1, with real coordinated restarts, failures and leftovers.
//!
//! Every launch uses the same fixed addresses, so the tests of this file take turns
//! (`one_launch_at_a_time`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{KILN, Member, examples, processes_mentioning, test_farm};

static LAUNCHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_launch_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    LAUNCHES.lock().await
}

const COORDINATOR: &str = "http://127.100.255.1:28080";

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `kiln` with `args`, run to its end.
fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).env_remove("KILN_LEADER").stdin(Stdio::null()).output().unwrap()
}

/// A text of `lines` lines of pseudo-random words (a fixed sequence), and a config
/// naming it; `pace_ms` slows the hosts down so a run can be interrupted.
fn word_input(dir: &Path, lines: usize, pace_ms: u64) -> PathBuf {
    let words = ["the", "kiln", "farm", "worker", "leader", "host", "cache", "pipeline", "binary", "exchange"];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut text = String::new();
    for _ in 0..lines {
        for i in 0..9 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = (state >> 33) as usize;
            if i > 0 {
                text.push(' ');
            }
            // Mostly the common words, and a long tail of rarer ones.
            if n.is_multiple_of(3) {
                text.push_str(&format!("w{}", n % 5000))
            } else {
                text.push_str(words[n % words.len()])
            }
        }
        text.push('\n');
    }
    std::fs::write(dir.join("input.txt"), text).unwrap();
    let config = dir.join(format!("config-{pace_ms}.json"));
    let body = serde_json::json!({"input": "input.txt", "kiln": {"pace_ms": pace_ms}});
    std::fs::write(&config, body.to_string()).unwrap();
    config
}

/// Each host's "read N records" line, by host.
fn records_read_by_host(stderr: &str, hosts: u32) -> Vec<u64> {
    (0..hosts)
        .map(|n| {
            let marker = format!("host-{n} | host {n}: done: read ");
            let line = stderr
                .lines()
                .rfind(|l| l.starts_with(&marker))
                .unwrap_or_else(|| panic!("no done line for host {n}:\n{stderr}"));
            line[marker.len()..].split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

/// A small shell script standing in for a pipeline binary, named uniquely so that
/// its processes can be found in /proc.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}-{}", std::process::id()));
    let script = format!(
        "#!/bin/sh\nid=\nwhile [ $# -gt 0 ]; do case $1 in --host-id) id=$2; shift;; esac; shift; done\n{body}\n"
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Waits until no process mentions `needle`.
fn no_process_left(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = processes_mentioning(needle);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(needle);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// A proxy in front of the leader that flips one byte of every binary it passes
/// on, as a bad disk or a hostile network would; everything else goes through as is.
async fn tampering_proxy(leader: String) -> String {
    use axum::body::Body;
    use axum::http::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let leader = leader.clone();
        async move {
            let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let upstream = reqwest::get(format!("{leader}{path}")).await.unwrap();
            let mut response = Response::builder().status(upstream.status().as_u16());
            for (name, value) in upstream.headers() {
                if name.as_str() != "content-length" {
                    response = response.header(name.as_str(), value.as_bytes());
                }
            }
            let mut body = upstream.bytes().await.unwrap().to_vec();
            if path.ends_with("/binary") && !body.is_empty() {
                let middle = body.len() / 2;
                body[middle] ^= 0x01;
            }
            response.body(Body::from(body)).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// 1, 2 and 6: the word count, built by the farm, gives the single-process answer on
/// 1, 3 and 4 hosts, every host working on its share; survives a coordinated restart
/// ordered through the coordinator; and is refused when its bytes do not match.
#[tokio::test(flavor = "multi_thread")]
async fn the_farm_built_word_count_gives_one_answer_on_any_number_of_hosts() {
    let _turn = one_launch_at_a_time().await;
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let submitted = farm.submit(&[&examples().join("wordcount")], true);
    assert!(submitted.status.success(), "submit: {:?}", text(&submitted));
    let leader = format!("--leader={}", farm.url());

    // The single-process run of the same binary.
    let dir = tempfile::tempdir().unwrap();
    let config = word_input(dir.path(), 40_000, 0);
    let alone_binary = dir.path().join("wordcount");
    let downloaded = kiln(&["download", "wordcount", "-o", alone_binary.to_str().unwrap(), &leader]);
    assert!(downloaded.status.success(), "download: {:?}", text(&downloaded));
    let alone = Command::new(&alone_binary).arg("--config-file").arg(&config).output().unwrap();
    assert!(alone.status.success(), "alone: {:?}", text(&alone));
    let (expected, _) = text(&alone);
    assert!(expected.lines().count() > 5000, "a large answer: {} lines", expected.lines().count());
    assert!(expected.lines().any(|l| l.starts_with("the ")), "{}", &expected[..200]);
    let mut sorted: Vec<&str> = expected.lines().collect();
    sorted.sort_by_key(|l| l.split(' ').next().unwrap());
    assert_eq!(sorted, expected.lines().collect::<Vec<_>>(), "sorted by word");

    for hosts in [1u32, 3, 4] {
        let output = kiln(&[
            "launch",
            "wordcount",
            "--hosts",
            &hosts.to_string(),
            "--config",
            config.to_str().unwrap(),
            &leader,
        ]);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "--hosts {hosts}: {stderr}");
        assert!(stderr.contains("verified"), "the artifact's SHA-256 is checked: {stderr}");
        assert_eq!(stdout, expected, "--hosts {hosts} prints what the single process prints");
        let read = records_read_by_host(&stderr, hosts);
        assert!(read.iter().all(|&r| r > 0), "every host read part of the input: {read:?}");
        assert_eq!(read.iter().sum::<u64>(), 40_000, "each line read by exactly one host: {read:?}");
        assert!(stderr.contains(&format!("host-{} | ", hosts - 1)), "output is prefixed per member");
    }

    // 2. A coordinated restart, ordered through the coordinator mid-run.
    let slow = word_input(dir.path(), 40_000, 150);
    let log = std::fs::File::create(dir.path().join("restart.err")).unwrap();
    let launch = Command::new(KILN)
        .args(["launch", "wordcount", "--hosts", "3", "--config", slow.to_str().unwrap(), &leader])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the deployment never got going");
        if let Ok(response) = http.get(format!("{COORDINATOR}/status")).send().await
            && let Ok(status) = response.json::<serde_json::Value>().await
            && status["state"] == "running"
            && status["hosts"].as_array().unwrap().iter().all(|h| h["records_read"].as_u64() > Some(0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ordered = http.post(format!("{COORDINATOR}/restart")).send().await.unwrap();
    assert_eq!(ordered.status().as_u16(), 202);
    let output = tokio::task::spawn_blocking(move || launch.wait_with_output()).await.unwrap().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("restart.err")).unwrap();
    assert!(output.status.success(), "after a restart: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "the right answer after the restart");
    for n in 0..3 {
        assert!(
            stderr.contains(&format!("host-{n} exited (exit code 55): coordinated restart")),
            "host {n} restarted: {stderr}"
        );
    }
    assert!(stderr.contains("(1 coordinated restarts)"), "{stderr}");

    // 6. Bytes that do not match the recorded SHA-256 are refused, and nothing runs.
    let proxy = tampering_proxy(farm.url()).await;
    let output = tokio::task::spawn_blocking(move || {
        kiln(&["launch", "wordcount", "--hosts", "2", &format!("--leader={proxy}")])
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "a tampered binary must be refused: {stderr}");
    assert!(stderr.contains("hashes to") && stderr.contains("was not kept"), "{stderr}");
    assert!(!stderr.contains("host-0 |"), "no host was started: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// 3. A host exiting with code 1 is fatal: the launcher names it, stops every
/// member, and no process is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_host_stops_the_whole_deployment() {
    let _turn = one_launch_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = script(
        dir.path(),
        "failing-host",
        r#"if [ "$id" = 2 ]; then sleep 1; echo "host 2 cannot go on" >&2; exit 1; fi
sleep 300 & wait"#,
    );
    let needle = binary.file_name().unwrap().to_string_lossy().into_owned();
    let started = Instant::now();
    let output = tokio::task::spawn_blocking({
        let binary = binary.clone();
        move || kiln(&["launch", "--binary", binary.to_str().unwrap(), "--hosts", "4"])
    })
    .await
    .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("host-2 failed (exit code 1)"), "the host is named: {stderr}");
    assert!(stderr.contains("every member of deployment"), "{stderr}");
    assert!(stderr.contains("host-2 | host 2 cannot go on"), "its output is shown, prefixed: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "the others were stopped, not waited for");
    no_process_left(&needle);
}

/// 4. A host that exits 55 over and over is restarted up to the bound, then fatal.
#[tokio::test(flavor = "multi_thread")]
async fn endless_restarts_are_bounded() {
    let _turn = one_launch_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = script(
        dir.path(),
        "restarting-host",
        r#"if [ "$id" = 1 ]; then exit 55; fi
sleep 300 & wait"#,
    );
    let needle = binary.file_name().unwrap().to_string_lossy().into_owned();
    let output = tokio::task::spawn_blocking(move || {
        kiln(&[
            "launch",
            "--binary",
            binary.to_str().unwrap(),
            "--hosts",
            "2",
            "--max-restarts=3",
            "--restart-window=60s",
            "--restart-backoff=50ms",
        ])
    })
    .await
    .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("host-1 exited (exit code 55): coordinated restart").count(),
        3,
        "restarted up to the bound: {stderr}"
    );
    assert!(
        stderr.contains("host-1 failed (exit code 55: more than 3 coordinated restarts within 60s)"),
        "then fatal: {stderr}"
    );
    no_process_left(&needle);
}

/// 5. The checks up front: the host count before anything else, an address held by
/// another process named with its pid, and a leftover member of an earlier run
/// (its launcher gone) cleaned up.
#[tokio::test(flavor = "multi_thread")]
async fn bad_host_counts_and_busy_addresses_are_plain_errors() {
    let _turn = one_launch_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = script(dir.path(), "quiet-host", "exit 1");
    // "Nothing was started" is checked on the members' output prefix, `host-0 | `:
    // the holder's command line (this test binary, `multihost-<hash>`) may well
    // contain "host-0".
    for hosts in ["0", "255"] {
        let output = kiln(&["launch", "--binary", binary.to_str().unwrap(), "--hosts", hosts]);
        let (_, stderr) = text(&output);
        assert!(!output.status.success());
        assert!(
            stderr.contains(&format!("--hosts must be between 1 and 254 (got {hosts})")),
            "--hosts {hosts}: {stderr}"
        );
        assert!(!stderr.contains("host-0 |"), "nothing was started: {stderr}");
    }

    // An address held by someone else: named, with the fix.
    let held = std::net::TcpListener::bind("127.100.1.1:28080").unwrap();
    let output = kiln(&["launch", "--binary", binary.to_str().unwrap(), "--hosts", "3"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    let pid = std::process::id();
    assert!(stderr.contains(&format!("127.100.1.1:28080 is already in use by pid {pid}")), "{stderr}");
    assert!(stderr.contains(&format!("`kill {pid}`")), "the fix is given: {stderr}");
    assert!(!stderr.contains("host-0 |"), "nothing was started: {stderr}");
    drop(held);

    // A leftover of an earlier run: a coordinator whose launcher is gone.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let mut leftover = Command::new(KILN)
        .args(["coordinator", "--listen=127.100.0.1:28080", "--hosts=1", "--deployment-id=earlier-run"])
        .env("KILN_MULTIHOST_DEPLOYMENT", "earlier-run")
        .env("KILN_MULTIHOST_LAUNCHER_PID", gone_pid.to_string())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.100.0.1:28080").is_err() {
        assert!(Instant::now() < deadline, "the leftover never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = kiln(&["launch", "--binary", binary.to_str().unwrap(), "--hosts", "1"]);
    let (_, stderr) = text(&output);
    assert!(
        stderr.contains(&format!("stopped pid {}", leftover.id()))
            && stderr.contains("a leftover member of deployment earlier-run"),
        "the leftover is found and stopped: {stderr}"
    );
    assert!(leftover.wait().unwrap().code().is_none(), "it was killed");
    assert!(stderr.contains("host-0 failed (exit code 1)"), "and the launch went ahead: {stderr}");
}

/// SIGTERM stops every member and whatever each one started (process groups); a
/// SIGKILLed launcher takes its members along too (parent-death signal). Neither
/// leaves a process behind.
#[tokio::test(flavor = "multi_thread")]
async fn neither_a_stop_nor_the_launchers_death_leaves_a_member_behind() {
    let _turn = one_launch_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    // A copy of sleep whose command line can be found in /proc.
    let sleeper = dir.path().join(format!("member-sleeper-{}", std::process::id()));
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    let with_child = script(dir.path(), "parent-host", &format!("{} 300 & wait", sleeper.display()));
    let single = script(dir.path(), "single-host", &format!("exec {} 300", sleeper.display()));
    let sleepers = sleeper.file_name().unwrap().to_string_lossy().into_owned();
    for (binary, signal) in [(with_child, Signal::SIGTERM), (single, Signal::SIGKILL)] {
        let mut launch = Command::new(KILN)
            .args(["launch", "--binary", binary.to_str().unwrap(), "--hosts", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while processes_mentioning(&sleepers).len() < 3 {
            assert!(Instant::now() < deadline, "the members never started: {:?}", processes_mentioning(&sleepers));
            std::thread::sleep(Duration::from_millis(50));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(launch.id() as i32), signal).unwrap();
        let status = launch.wait().unwrap();
        if signal == Signal::SIGTERM {
            assert_eq!(status.code(), Some(130), "a stopped launch says so in its exit code");
        }
        no_process_left(&sleepers);
        no_process_left(&binary.file_name().unwrap().to_string_lossy());
    }
}
