//! End-to-end tests of the core: real `kiln` processes on loopback, real cargo
//! builds of the example pipelines, real SIGKILLs.

use crate::common;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    Farm, KILN, Member, TOKEN, examples, free_port, manifest, processes_mentioning, sha256, spawn_kiln, test_farm,
    text, wait_until, write_program,
};
use kiln_proto::cluster_client::ClusterClient;
use kiln_proto::upload_chunk::Part;

const EXPECTED_OUTPUT: [(&str, &str); 4] = [
    ("hello", "Hello From The Kiln Farm (5 words)\n"),
    ("wordfreq", "the 4\ncache 2\nworker 2\n"),
    ("primes", "9592 primes below 100000\n"),
    ("json-report", "{\"count\":4,\"min\":7.25,\"max\":30.0,\"mean\":\"17.12\"}\n"),
];

fn member(ordinal: u32, workers: u32) -> Member {
    Member { ordinal, workers, extra: Vec::new() }
}

/// A farm of `workers` separately started members, healthy.
async fn healthy_farm(workers: u32) -> Farm {
    let mut farm = test_farm(workers as usize);
    for ordinal in 0..workers {
        farm.start(member(ordinal, workers));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    farm
}

/// The example programs whose output the tests know.
fn example_dirs() -> Vec<std::path::PathBuf> {
    EXPECTED_OUTPUT.iter().map(|(name, _)| examples().join(name)).collect()
}

/// 1. `kiln up` with three workers builds every example: each on ordinal `id % 3`,
/// each download matching its SHA-256 and running; Ctrl-C leaves no process behind.
/// Its API wants the token it generated, which the client
/// commands run from the same directory find without flags.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_farm_builds_every_example_on_its_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    // kiln up's default data directory, relative to where it and the clients run.
    let data_dir = dir.path().join(".kiln");
    let kiln = |args: &[&str]| Command::new(KILN).args(args).current_dir(dir.path()).output().unwrap();
    let port = free_port();
    let leader = format!("--leader=http://127.0.0.1:{port}");
    let up_args: Vec<String> = vec![
        "up".into(),
        "--workers=3".into(),
        format!("--data-dir={}", data_dir.display()),
        format!("--port={port}"),
        "--profile=dev".into(),
        format!("--depset-cache={}", common::depset_cache().display()),
        "--".into(),
        "--sccache=off".into(),
    ];
    let mut up = spawn_kiln("kiln-up", dir.path(), &up_args);
    // A handle on kiln up's leader, for the HTTP helpers; its members are kiln up's.
    let mut farm = test_farm(0);
    farm.port = port;
    farm.wait_healthy(Duration::from_secs(300)).await;

    // Without the token: refused, and told where it is.
    let (status, body) = farm.get_json("/v0/pipelines").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("<data-dir>/api-token"), "the refusal says where the token is: {body}");
    let token = std::fs::read_to_string(data_dir.join("api-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data_dir.join("api-token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is the user's only");
    let wrong = "x".repeat(token.trim().len());
    let refused = farm.http.get(format!("{}/v0/pipelines", farm.url())).bearer_auth(&wrong).send().await.unwrap();
    assert_eq!(refused.status(), 401, "a wrong token of the same length is refused");
    let (_, health) = farm.get_json("/cluster_healthz").await;
    assert!(health["members"][0]["cache"].as_str().is_some_and(|c| c.contains("with the API token")), "{health}");
    // Each member gets its share of the machine, as a pod its CPU request: by
    // default the CPUs divided by the members, at least one, taken in turn; health
    // says which, and the kernel agrees.
    let usable = kiln_process::process::usable_cpus();
    let per = (usable.len() / 3).max(1);
    for ordinal in 0..3usize {
        let cpus = health["members"][ordinal]["cpus"].as_str().unwrap_or_default().to_owned();
        assert!(cpus.contains(&format!("cargo -j {per}")), "member {ordinal}: {cpus}");
        let share: Vec<usize> = (0..per).map(|k| usable[(ordinal * per + k) % usable.len()]).collect();
        if share.len() < usable.len() {
            let list = share.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            assert!(cpus.contains(&format!("pinned to CPU set {list}")), "member {ordinal}: {cpus}");
        }
        // This farm's member, by its data directory: other tests' farms run members
        // of the same hostnames at the same time.
        let member_dir = format!("{}/member-{ordinal}", data_dir.display());
        let pid = processes_mentioning(&member_dir)
            .into_iter()
            .find(|(_, command)| {
                command.contains(" server ") && command.contains(&format!("kiln-compiler-server-{ordinal}"))
            })
            .map(|(pid, _)| pid)
            .unwrap_or_else(|| panic!("member {ordinal}'s process"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let allowed = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .to_owned();
        let expected = share.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        if share.len() == 1 {
            assert_eq!(allowed, expected, "member {ordinal} runs on its own CPU");
        }
    }

    let dirs = example_dirs();
    let mut submit = vec!["submit".to_owned()];
    submit.extend(dirs.iter().map(|d| d.display().to_string()));
    submit.extend(["--wait".to_owned(), "--timeout=5m".to_owned(), leader.clone()]);
    let submitted = kiln(&submit.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(submitted.status.success(), "kiln submit --wait: {}", text(&submitted));

    let status = kiln(&["status", "--json", &leader]);
    assert!(status.status.success(), "{}", text(&status));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(records.len(), 4);
    for record in &records {
        let id = record["id"].as_u64().unwrap();
        assert_eq!(record["status"], "success", "{record}");
        assert_eq!(record["worker"].as_u64().unwrap(), id % 3, "pipeline {id} built on ordinal id % 3");
        assert_eq!(record["attempt"], 1, "built once: {record}");
        for field in ["name", "version", "source_sha256", "binary_sha256", "error", "cache"] {
            assert!(record.get(field).is_some(), "status --json has {field}");
        }
        let name = record["name"].as_str().unwrap();
        let binary = dir.path().join(name);
        let download = kiln(&["download", &id.to_string(), "-o", binary.to_str().unwrap(), &leader]);
        assert!(download.status.success(), "{}", text(&download));
        assert_eq!(sha256(&std::fs::read(&binary).unwrap()), record["binary_sha256"].as_str().unwrap());
        let ran = Command::new(&binary).output().unwrap();
        let expected = EXPECTED_OUTPUT.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(String::from_utf8_lossy(&ran.stdout), expected, "{name} prints its answer");
    }

    let stopped = up.terminate();
    assert!(stopped.success(), "kiln up stops cleanly on SIGTERM: {stopped}");
    let left = processes_mentioning(data_dir.to_str().unwrap());
    assert!(left.is_empty(), "no member process is left behind: {left:?}");

    // A quiet terminal (here a pipe): the URLs and a line per member, no
    // member log line; the members' logs are in their files.
    let said = up.output();
    assert!(said.contains(&format!("leader at http://127.0.0.1:{port}")), "the leader's URL: {said}");
    assert!(said.contains(&format!("status page at http://127.0.0.1:{port}/")), "the page's URL: {said}");
    let mut logged = std::collections::HashSet::new();
    for n in 0..3 {
        assert!(said.contains(&format!("kiln up: member-{n} ready")), "member-{n}'s ready line: {said}");
        let log = std::fs::read_to_string(data_dir.join(format!("logs/member-{n}.log"))).unwrap();
        assert!(log.contains("INFO"), "member-{n}'s log is in its file");
        logged.extend(log.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned));
    }
    let member_lines: Vec<&str> = said.lines().filter(|l| l.starts_with("member-") || logged.contains(*l)).collect();
    assert!(member_lines.is_empty(), "no member log line on the terminal: {member_lines:#?}");
}

/// A member that fails the same way before it was ever ready
/// stops `kiln up` with its error and a non-zero exit, rather than a restart loop.
#[tokio::test(flavor = "multi_thread")]
async fn kiln_up_gives_up_on_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join(".kiln");
    let up_args: Vec<String> = vec![
        "up".into(),
        "--workers=2".into(),
        format!("--data-dir={}", data_dir.display()),
        format!("--port={}", free_port()),
        "--profile=dev".into(),
        format!("--depset-cache={}", common::depset_cache().display()),
        "--".into(),
        "--sccache=off".into(),
        "--depset=/nonexistent/depset.toml".into(),
    ];
    let mut up = spawn_kiln("kiln-up", dir.path(), &up_args);
    let status = up.wait_exit(Duration::from_secs(120)).expect("kiln up gives up by itself");
    assert!(!status.success(), "and exits non-zero: {status}");
    let said = up.output();
    assert!(said.contains("times in a row before it was ever ready"), "it says why it stopped: {said}");
    assert!(said.contains("/nonexistent/depset.toml"), "with the member's own error: {said}");
    assert!(said.contains("logs/member-"), "and where its whole log is: {said}");
    let left = processes_mentioning(data_dir.to_str().unwrap());
    assert!(left.is_empty(), "no member process is left behind: {left:?}");
}

/// 2. A compile error ends `compile_error` with rustc's message; a bad program is
/// refused with the rule named; neither disturbs what is already built.
#[tokio::test(flavor = "multi_thread")]
async fn compile_errors_and_bad_programs_are_reported_without_disturbing_others() {
    let mut farm = test_farm(2);
    farm.start(member(0, 2));
    farm.start(member(1, 2));
    farm.wait_healthy(Duration::from_secs(300)).await;

    let good = farm.submit(&[&examples().join("primes")], true);
    assert!(good.status.success(), "{}", text(&good));

    let broken = write_program(
        farm.dir.path(),
        "broken",
        &[
            ("Cargo.toml", &manifest("broken", "")),
            ("src/main.rs", "fn main() {\n    println!(\"{}\", undefined_value);\n}\n"),
        ],
    );
    let failed = farm.submit(&[&broken], true);
    assert!(!failed.status.success(), "a failed build makes submit --wait exit non-zero");
    let output = text(&failed);
    assert!(
        output.contains("cannot find value `undefined_value` in this scope"),
        "rustc's diagnostic is shown: {output}"
    );
    let record = farm.pipeline("broken").await;
    assert_eq!(record["status"], "compile_error");
    assert!(record["error"].as_str().unwrap().contains("error[E0425]"), "{record}");
    let log =
        farm.http.get(format!("{}/v0/pipelines/broken/log", farm.url())).send().await.unwrap().text().await.unwrap();
    assert!(log.contains("src/main.rs:2"), "the log keeps the diagnostics: {log}");

    type Case = (&'static str, Vec<(&'static str, String)>, &'static str);
    let cases: [Case; 4] = [
        (
            "two-bins",
            vec![
                ("Cargo.toml", manifest("two-bins", "other = { path = \"other\" }")),
                ("src/main.rs", "fn main() {}".into()),
                ("other/Cargo.toml", manifest("other", "")),
                ("other/src/main.rs", "fn main() {}".into()),
            ],
            "two binary crates",
        ),
        ("no-bin", vec![("Cargo.toml", manifest("no-bin", "")), ("src/lib.rs", String::new())], "no binary crate"),
        (
            "outside",
            vec![("Cargo.toml", manifest("outside", "tokio = \"1\"")), ("src/main.rs", "fn main() {}".into())],
            "not in the farm's dependency set",
        ),
        (
            "Bad_Name",
            vec![("Cargo.toml", manifest("x", "")), ("src/main.rs", "fn main() {}".into())],
            "invalid pipeline name",
        ),
    ];
    for (name, files, rule) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let dir = write_program(farm.dir.path(), name, &files);
        let refused = farm.submit(&[&dir], false);
        assert!(!refused.status.success(), "{name} is refused");
        assert!(text(&refused).contains(rule), "{name}: the message names the rule {rule:?}: {}", text(&refused));
    }
    let big =
        write_program(farm.dir.path(), "big", &[("Cargo.toml", &manifest("big", "")), ("src/main.rs", "fn main() {}")]);
    std::fs::write(big.join("data.bin"), vec![b'x'; 9 * 1024 * 1024]).unwrap();
    let refused = farm.submit(&[&big], false);
    assert!(text(&refused).contains("over the limit"), "{}", text(&refused));

    let (_, list) = farm.get_json("/v0/pipelines").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "refused programs leave no pipeline: {list}");
    assert_eq!(farm.pipeline("primes").await["status"], "success", "the earlier build is untouched");
    let binary = farm.http.get(format!("{}/v0/pipelines/primes/binary", farm.url())).send().await.unwrap();
    assert_eq!(binary.status(), 200);

    let deleted = farm.http.delete(format!("{}/v0/pipelines/broken", farm.url())).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let (status, body) = farm.get_json("/v0/pipelines/broken").await;
    assert_eq!(status, 404, "a deleted pipeline is gone: {body}");
    assert!(body["error"].as_str().unwrap().contains("no pipeline"), "{body}");
}

/// A new version cancels the build in flight for the old one, whole process group
/// included (here a build script that would sleep for ten minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_cancels_the_build_in_flight() {
    let mut farm = test_farm(1);
    farm.start(member(0, 1));
    farm.wait_healthy(Duration::from_secs(300)).await;
    let slow_build = "fn main() { std::thread::sleep(std::time::Duration::from_secs(600)); }";
    let program = write_program(
        farm.dir.path(),
        "slow",
        &[
            ("Cargo.toml", &manifest("slow", "")),
            ("build.rs", slow_build),
            ("src/main.rs", "fn main() { println!(\"v1\"); }"),
        ],
    );
    assert!(farm.submit(&[&program], false).status.success());
    farm.wait_status("slow", &["compiling"], Duration::from_secs(60)).await;
    let build_root = farm.dir.path().join("member-0/build");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while processes_mentioning(build_root.to_str().unwrap()).iter().all(|(_, cmd)| !cmd.contains("build-script-build"))
    {
        assert!(std::time::Instant::now() < deadline, "the slow build script never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::remove_file(program.join("build.rs")).unwrap();
    std::fs::write(program.join("src/main.rs"), "fn main() { println!(\"v2\"); }").unwrap();
    assert!(farm.submit(&[&program], false).status.success());
    let record = farm.wait_status("slow", &["success", "compile_error", "system_error"], Duration::from_secs(60)).await;
    assert_eq!((record["status"].as_str(), record["version"].as_u64()), (Some("success"), Some(2)), "{record}");
    let left: Vec<_> = processes_mentioning(build_root.to_str().unwrap())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("build-script-build"))
        .collect();
    assert!(left.is_empty(), "the cancelled build's processes are gone: {left:?}");
}

/// 4. The leader stays away longer than the upload budget: `Failed to upload binary`.
#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_upload_budget_is_a_system_error() {
    let mut farm = test_farm(2);
    farm.start(member(0, 2));
    farm.start(Member { ordinal: 1, workers: 2, extra: vec!["--upload-budget=2s".into()] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let submitted = farm.submit(&[&examples().join("hello")], false);
    assert!(submitted.status.success(), "{}", text(&submitted));
    farm.wait_status("1", &["compiling"], Duration::from_secs(60)).await;
    farm.kill(0);
    // The worker gives up once its 2 s budget is spent; only then is the leader back.
    wait_for_log(&mut farm, 1, "Failed to upload binary").await;
    farm.start(member(0, 2));
    farm.wait_leader(Duration::from_secs(30)).await;
    let record = farm.wait_status("1", &["system_error", "success"], Duration::from_secs(60)).await;
    assert_eq!(record["status"], "system_error", "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(error.starts_with("Failed to upload binary: "), "{error}");
}

/// Waits until member `ordinal`'s log says `line`.
async fn wait_for_log(farm: &mut Farm, ordinal: u32, line: &str) {
    let process = farm.member(ordinal);
    let what = format!("member {ordinal} logs {line:?}");
    wait_until(&what, Duration::from_secs(120), Duration::from_millis(100), || {
        let output = process.output();
        async move { if output.contains(line) { Ok(()) } else { Err(output.lines().last().unwrap_or("").to_owned()) } }
    })
    .await
}

async fn grpc(farm: &Farm) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::connect(farm.url()).await.unwrap()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// 5. A stranger's upload is refused and nothing is stored. 8. Calls without the
/// cluster token are refused.
#[tokio::test(flavor = "multi_thread")]
async fn corrupted_uploads_and_calls_without_the_token_are_refused() {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--api-token=user-api-token".into()] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let mut client = grpc(&farm).await;
    let member = kiln_proto::Member { ordinal: 0, workers: 1, incarnation: 7, version: "0.1.0".into() };

    let declared = sha256(b"the real binary");
    let chunks = vec![
        kiln_proto::UploadChunk {
            part: Some(Part::Header(kiln_proto::UploadHeader {
                member: Some(member.clone()),
                claim: None,
                sha256: declared.clone(),
                size: 8,
            })),
        },
        kiln_proto::UploadChunk { part: Some(Part::Data(bytes::Bytes::from_static(b"tampered"))) },
    ];
    // An upload names its claim, and only the claim's holder may send one:
    // a stranger's is refused before any byte is stored. (The hash check of a
    // holder's upload is `artifacts::tests::a_mismatch_leaves_nothing_behind`.)
    let refused = client.upload_artifact(with_token(futures::stream::iter(chunks), TOKEN)).await.unwrap_err();
    assert!([tonic::Code::InvalidArgument, tonic::Code::FailedPrecondition].contains(&refused.code()), "{refused:?}");
    let present = client
        .has_artifact(with_token(kiln_proto::HasArtifactRequest { sha256: declared.clone() }, TOKEN))
        .await
        .unwrap();
    assert!(!present.into_inner().present);
    let artifacts = farm.dir.path().join("member-0/artifacts");
    assert!(!artifacts.join(&declared).exists());
    assert_eq!(std::fs::read_dir(artifacts.join("incoming")).unwrap().count(), 0, "no temporary file is left");

    let heartbeat = kiln_proto::HeartbeatRequest { member: Some(member.clone()), current: None, ..Default::default() };
    let no_token = client.heartbeat(tonic::Request::new(heartbeat.clone())).await.unwrap_err();
    assert_eq!(no_token.code(), tonic::Code::Unauthenticated);
    let wrong = client.heartbeat(with_token(heartbeat, "not-the-cluster-token")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);

    let api = farm.http.get(format!("{}/v0/pipelines", farm.url())).send().await.unwrap();
    assert_eq!(api.status(), 401, "the API wants its token");
    let api = farm.http.get(format!("{}/v0/pipelines", farm.url())).bearer_auth("user-api-token").send().await.unwrap();
    assert_eq!(api.status(), 200);
}

/// 6. A killed worker turns `/cluster_healthz` 503 naming its ordinal within 15 s,
/// and 200 again when it is back.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_health_follows_a_killed_worker() {
    let mut farm = healthy_farm(3).await;
    let (status, body) = farm.get_json("/cluster_healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["all_healthy"], true);
    assert_eq!(body["workers_expected"], 3);

    farm.kill(2);
    let killed_at = std::time::Instant::now();
    let body = loop {
        let (status, body) = farm.get_json("/cluster_healthz").await;
        if status == 503 {
            break body;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(15), "still 200 after 15 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["all_healthy"], false);
    let members = body["members"].as_array().unwrap();
    let unhealthy: Vec<_> = members.iter().filter(|m| m["healthy"] == false).collect();
    assert_eq!(unhealthy.len(), 1, "{body}");
    assert_eq!(unhealthy[0]["ordinal"], 2);
    assert!(unhealthy[0]["message"].as_str().unwrap().starts_with("no report for"), "{body}");

    farm.start(member(2, 3));
    farm.wait_healthy(Duration::from_secs(60)).await;
}

/// 7. A member started with another N, or with ordinal ≥ N, fires the scaling guard
/// with the exact message; what was pending survives the restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_scaling_guard_fires_with_the_exact_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut too_high = spawn_kiln(
        "too-high",
        dir.path(),
        &[
            "server".into(),
            "--hostname=kiln-compiler-server-5".into(),
            "--workers=3".into(),
            format!("--cluster-token={TOKEN}"),
            "--build-root=/nonexistent".into(),
        ],
    );
    let status = too_high.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    assert!(
        too_high
            .output()
            .contains("SCALING DETECTED: StatefulSet has 6 replicas but compiler was started with 3 workers"),
        "{}",
        too_high.output()
    );

    let mut farm = test_farm(2);
    farm.start(member(0, 2));
    farm.wait_leader(Duration::from_secs(60)).await;
    // Pipeline 1 belongs to ordinal 1, which is not running: it stays pending.
    let submitted = farm.submit(&[&examples().join("primes")], false);
    assert!(submitted.status.success(), "{}", text(&submitted));

    farm.start(member(1, 3));
    let leader_exit = farm.member(0).wait_exit(Duration::from_secs(30)).expect("the leader exits");
    assert!(!leader_exit.success());
    let leader_output = farm.member(0).output();
    assert!(
        leader_output.contains("SCALING DETECTED: StatefulSet has 3 replicas but compiler was started with 2 workers"),
        "{leader_output}"
    );
    let worker_exit = farm.member(1).wait_exit(Duration::from_secs(30)).expect("the worker exits");
    assert!(!worker_exit.success());
    let worker_output = farm.member(1).output();
    assert!(
        worker_output.contains("SCALING DETECTED: StatefulSet has 2 replicas but compiler was started with 3 workers"),
        "{worker_output}"
    );

    farm.start(member(0, 2));
    farm.wait_leader(Duration::from_secs(30)).await;
    let record = farm.pipeline("primes").await;
    assert_eq!(record["status"], "pending", "nothing pending is lost: {record}");
}

/// Builds go through the real sccache (local disk here): the figures recorded are
/// read from sccache, and after the build root is wiped an unchanged operator comes
/// back as a cache hit.
#[tokio::test(flavor = "multi_thread")]
async fn builds_through_sccache_record_its_figures() {
    let mut farm = test_farm(1);
    let with_cache = || Member {
        ordinal: 0,
        workers: 1,
        extra: vec!["--sccache=auto".into(), format!("--sccache-binary={}", common::sccache().display())],
    };
    farm.start(with_cache());
    farm.wait_healthy(Duration::from_secs(300)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    assert!(health["members"][0]["cache"].as_str().unwrap().starts_with("sccache on local disk"), "{health}");

    let program = farm.dir.path().join("hello");
    std::fs::create_dir_all(&program).unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", examples().join("hello").display()))
        .arg(&program)
        .status()
        .unwrap();
    assert!(copy.success());
    let first = farm.submit(&[&program], true);
    assert!(first.status.success(), "{}", text(&first));
    let record = farm.pipeline("hello").await;
    assert_eq!(record["cache"]["enabled"], true, "{record}");
    assert!(record["cache"]["misses"].as_u64().unwrap() >= 1, "the operator was compiled through sccache: {record}");

    farm.kill(0);
    std::fs::remove_dir_all(farm.dir.path().join("member-0/build")).unwrap();
    farm.start(with_cache());
    farm.wait_healthy(Duration::from_secs(300)).await;
    std::fs::write(
        program.join("src/main.rs"),
        "fn main() { println!(\"{}\", textops::title_case(\"version two\")); }\n",
    )
    .unwrap();
    let second = farm.submit(&[&program], true);
    assert!(second.status.success(), "{}", text(&second));
    let record = farm.pipeline("hello").await;
    assert_eq!(record["version"], 2);
    assert!(record["cache"]["hits"].as_u64().unwrap() >= 1, "the unchanged operator is a hit: {record}");
    // The local store keeps each entry's compile cost too (beside it, where no
    // build can name it), so the hit says what it saved.
    assert!(record["cache"]["saved_ms"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["cache"]["hits_without_cost"], 0, "{record}");
    let metrics = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("kiln_cache_hits_total") && !l.ends_with(" 0")), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("kiln_cache_saved_seconds_total") && !l.ends_with(" 0.0")),
        "{metrics}"
    );
}

/// A client with the cluster token, but not the member's own
/// incarnation, cannot take over an ordinal while its member reports, claim its
/// work, report or upload for its claim, or finish it with another pipeline's
/// binary; `/cluster_healthz` names the conflict, the real build completes and
/// the victim's download is the real binary.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_cluster_token_cannot_hijack_a_members_claims() {
    let mut farm = test_farm(1);
    farm.start(member(0, 1));
    farm.wait_healthy(Duration::from_secs(300)).await;
    let other = farm.submit(&[&examples().join("hello")], true);
    assert!(other.status.success(), "{}", text(&other));
    let other_sha = farm.pipeline("hello").await["binary_sha256"].as_str().unwrap().to_owned();

    // The victim: a build that stays in flight for a while (its build script sleeps).
    let slow = "fn main() { std::thread::sleep(std::time::Duration::from_secs(8)); }";
    let program = write_program(
        farm.dir.path(),
        "victim",
        &[
            ("Cargo.toml", &manifest("victim", "")),
            ("build.rs", slow),
            ("src/main.rs", "fn main() { println!(\"the real victim\"); }"),
        ],
    );
    assert!(farm.submit(&[&program], false).status.success());
    let record = farm.wait_status("victim", &["compiling"], Duration::from_secs(60)).await;
    let claim = kiln_proto::Claim {
        pipeline_id: record["id"].as_u64().unwrap(),
        version: record["version"].as_u64().unwrap(),
        attempt: record["attempt"].as_u64().unwrap(),
    };

    let mut client = grpc(&farm).await;
    let thief = kiln_proto::Member { ordinal: 0, workers: 1, incarnation: 0x7417, version: "0.1.0".into() };
    let heartbeat = kiln_proto::HeartbeatRequest { member: Some(thief.clone()), ..Default::default() };
    let refused = client.heartbeat(with_token(heartbeat, TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("held by another incarnation"), "{}", refused.message());
    let refused = client.claim(with_token(
        kiln_proto::ClaimRequest { member: Some(thief.clone()), wait_ms: 0, ..Default::default() },
        TOKEN,
    ));
    assert_eq!(refused.await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    for (status, sha) in
        [(kiln_proto::BuildStatus::Success, other_sha.as_str()), (kiln_proto::BuildStatus::SystemError, "")]
    {
        let report = kiln_proto::StatusReport {
            member: Some(thief.clone()),
            claim: Some(claim),
            status: status as i32,
            binary_sha256: sha.into(),
            binary_size: 1,
            error: "hijacked".into(),
            ..Default::default()
        };
        let refused = client.report_status(with_token(report, TOKEN)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    // A success whose build settings are not a fingerprint (they key the binary
    // cache) is refused before anything else is looked at.
    let report = kiln_proto::StatusReport {
        member: Some(thief.clone()),
        claim: Some(claim),
        status: kiln_proto::BuildStatus::Success as i32,
        binary_sha256: other_sha.clone(),
        binary_size: 1,
        build_settings: "../../<script>".into(),
        ..Default::default()
    };
    let refused = client.report_status(with_token(report, TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("build_settings must be empty or a SHA-256"), "{}", refused.message());
    let chunks = vec![
        kiln_proto::UploadChunk {
            part: Some(Part::Header(kiln_proto::UploadHeader {
                member: Some(thief.clone()),
                claim: Some(claim),
                sha256: sha256(b"evil"),
                size: 4,
            })),
        },
        kiln_proto::UploadChunk { part: Some(Part::Data(bytes::Bytes::from_static(b"evil"))) },
    ];
    let refused = client.upload_artifact(with_token(futures::stream::iter(chunks), TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let (status, health) = farm.get_json("/cluster_healthz").await;
    assert_eq!(status, 503, "{health}");
    assert!(health["members"][0]["message"].as_str().unwrap().contains("second incarnation"), "{health}");

    let done =
        farm.wait_status("victim", &["success", "compile_error", "system_error"], Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "the real build completes: {done}");
    assert_ne!(done["binary_sha256"].as_str(), Some(other_sha.as_str()));
    let binary = farm.dir.path().join("victim-binary");
    let download = Command::new(KILN)
        .args(["download", "victim", "-o"])
        .arg(&binary)
        .arg(format!("--leader={}", farm.url()))
        .output()
        .unwrap();
    assert!(download.status.success(), "{}", text(&download));
    let ran = Command::new(&binary).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "the real victim\n");
    assert!(farm.member(0).running(), "the leader keeps running");
    let log = farm.member(0).output();
    let refusal = log.lines().find(|l| l.contains("refused a member call")).unwrap_or("");
    assert!(
        refusal.contains("peer") && refusal.contains("127.0.0.1:"),
        "refusals are logged with the caller's address: {log}"
    );
}

/// A farm whose leader serves TLS (a CA and a certificate made
/// in the test with rcgen) builds the examples end to end: both members report and
/// upload over TLS, the CLI submits, waits and downloads over TLS, and a worker's
/// /healthz is HTTPS too. A client without the CA, or with another CA, gets a plain
/// certificate error naming --tls-ca; a plain-HTTP client (the CLI, and a gRPC
/// client speaking h2c) gets a plain answer saying to use https://; a member that
/// trusts another CA says so in its log; 64 clients that never handshake and one
/// that sends a broken record do not stop it answering. The leader keeps serving
/// throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_farm_over_tls_builds_end_to_end_and_plain_or_untrusted_clients_get_plain_errors() {
    let certs = std::sync::Arc::new(kiln_testkit::TestCertificates::new());
    let mut farm = test_farm(2);
    farm.serve_tls(certs.clone());
    let health_port = free_port();
    farm.start(member(0, 2));
    farm.start(Member { ordinal: 1, workers: 2, extra: vec![format!("--health-listen=127.0.0.1:{health_port}")] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let url = farm.url();
    assert!(url.starts_with("https://"), "{url}");

    // Ids 1 to 4 alternate between the ordinals: both members deliver over TLS.
    let dirs = example_dirs();
    let submitted = farm.submit(&dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>(), true);
    assert!(submitted.status.success(), "kiln submit --wait over TLS: {}", text(&submitted));
    let dir = tempfile::tempdir().unwrap();
    let ca = format!("--tls-ca={}", certs.ca.display());
    for (name, expected) in &EXPECTED_OUTPUT {
        let record = farm.pipeline(name).await;
        assert_eq!(record["status"], "success", "{record}");
        let binary = dir.path().join(name);
        let download = Command::new(KILN)
            .args(["download", name, "-o", binary.to_str().unwrap(), &format!("--leader={url}"), &ca])
            .output()
            .unwrap();
        assert!(download.status.success(), "kiln download over TLS: {}", text(&download));
        assert_eq!(sha256(&std::fs::read(&binary).unwrap()), record["binary_sha256"].as_str().unwrap());
        let ran = Command::new(&binary).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&ran.stdout), *expected, "{name} prints its answer");
    }
    let health = certs.client().get(format!("https://127.0.0.1:{health_port}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "a worker's /healthz serves TLS with the same certificate");

    let status = |args: &[String]| Command::new(KILN).arg("status").args(args).output().unwrap();
    let no_ca = status(&[format!("--leader={url}")]);
    assert!(!no_ca.status.success());
    let message = text(&no_ca);
    assert!(message.contains("not signed by a CA this side trusts") && message.contains("--tls-ca"), "{message}");
    let other_ca = status(&[format!("--leader={url}"), format!("--tls-ca={}", certs.other_ca.display())]);
    assert!(!other_ca.status.success());
    assert!(text(&other_ca).contains("not signed by a CA this side trusts"), "{}", text(&other_ca));

    let plain_url = url.replace("https://", "http://");
    let plain = status(&[format!("--leader={plain_url}")]);
    assert!(!plain.status.success());
    let message = text(&plain);
    assert!(message.contains("serves HTTPS (TLS) only") && message.contains("https://"), "{message}");
    let mut h2c = ClusterClient::connect(plain_url).await.expect("the TCP connection itself is accepted");
    let refused = h2c.heartbeat(with_token(kiln_proto::HeartbeatRequest::default(), TOKEN)).await.unwrap_err();
    assert!(
        refused.message().contains("serves HTTPS (TLS) only"),
        "a gRPC client in plain text is told why: {refused:?}"
    );

    // Clients that connect and never finish a handshake (or send plain garbage)
    // hold nothing but their own connections: the leader still answers others.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(std::net::TcpStream::connect(("127.0.0.1", farm.port)).unwrap());
    }
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", farm.port)).unwrap();
    std::io::Write::write_all(&mut garbage, &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0]).unwrap();
    let answered = farm.http.get(format!("{url}/healthz")).send().await.expect("answered beside 65 stalled clients");
    assert_eq!(answered.status(), 200);
    drop((idle, garbage));

    // A member that trusts another CA never reaches the leader, and says why.
    farm.kill(1);
    farm.start(Member { ordinal: 1, workers: 2, extra: vec![format!("--tls-ca={}", certs.other_ca.display())] });
    wait_for_log(&mut farm, 1, "not signed by a CA this side trusts").await;

    let still = farm.leader().pipeline("hello").await;
    assert_eq!(still.status, kiln_core::api::Status::Success, "the leader kept serving");
}
