//! Hostile programs against a real farm: what a submitted program does must stay
//! the program's problem. Each test asserts what a user would check (the status,
//! the error, the log) and that the farm goes on building.

mod common;

use std::time::Duration;

use common::{Farm, Member, examples, manifest, write_program};

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn one_member_farm() -> Farm {
    let mut farm = Farm::new(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    farm
}

async fn log_of(farm: &Farm, key: &str) -> String {
    let url = format!("{}/v0/pipelines/{key}/log", farm.url());
    farm.http.get(url).send().await.unwrap().text().await.unwrap()
}

/// A build script that writes 25 MiB to stderr and then fails, and a program whose
/// rustc diagnostics run to megabytes: each ends `compile_error` (the program's
/// fault, not the farm's) with a capped log that says how much was cut, and the
/// next pipeline of the same ordinal builds normally.
#[tokio::test(flavor = "multi_thread")]
async fn floods_of_output_end_as_the_programs_errors_with_a_capped_log() {
    let farm = one_member_farm().await;
    let flood = write_program(
        farm.dir.path(),
        "flood",
        &[
            ("Cargo.toml", &manifest("flood", "")),
            (
                "build.rs",
                r#"use std::io::Write;
fn main() {
    let line = [b'x'; 1023];
    let mut err = std::io::stderr().lock();
    for _ in 0..25 * 1024 { err.write_all(&line).unwrap(); err.write_all(b"\n").unwrap(); }
    panic!("the build script gives up after its flood");
}"#,
            ),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    // 20,000 type errors: megabytes of rustc diagnostics from 300 KB of source.
    let source = "fn main() {}\n".to_owned()
        + &(0..200).map(|i| format!("fn f{i}() {{ {} }}\n", "let _: () = 1; ".repeat(100))).collect::<String>();
    let errors =
        write_program(farm.dir.path(), "errors", &[("Cargo.toml", &manifest("errors", "")), ("src/main.rs", &source)]);
    for (dir, what) in [(&flood, "failed to run custom build command for `flood"), (&errors, "mismatched types")] {
        let output = farm.submit(&[dir.as_path()], true);
        assert!(!output.status.success(), "the build fails: {}", text(&output));
        let name = dir.file_name().unwrap().to_str().unwrap();
        let record = farm.pipeline(name).await;
        assert_eq!(record["status"], "compile_error", "the program's own failure: {record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(what), "the error names it: {error}");
        assert!(error.len() < 8 * 1024, "the error is a summary, not the flood ({} bytes)", error.len());
        let log = log_of(&farm, name).await;
        assert!(log.contains("bytes of the build log left out"), "the log says it was cut");
        assert!(log.len() < 3 << 20, "the log is capped: {} bytes", log.len());
    }
    let flood_log = log_of(&farm, "flood").await;
    assert!(flood_log.contains("the build script gives up after its flood"), "the end of the log is kept");

    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "the next pipeline builds: {}", text(&output));
    assert_eq!(farm.pipeline("hello").await["status"], "success");
}

/// Downloads pipeline `name`'s binary with the real CLI and runs it: its output.
fn download_and_run(farm: &Farm, name: &str) -> String {
    let binary = farm.dir.path().join(format!("{name}-binary"));
    let download = std::process::Command::new(common::KILN)
        .args(["download", name, "-o"])
        .arg(&binary)
        .arg(format!("--leader={}", farm.url()))
        .output()
        .unwrap();
    assert!(download.status.success(), "{}", text(&download));
    String::from_utf8(std::process::Command::new(&binary).output().unwrap().stdout).unwrap()
}

/// What a snooping build script tries, reported into the binary it builds.
const SNOOP_BUILD_RS: &str = r#"use std::process::Command;
fn read(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!("READ {} bytes", bytes.len()),
        Err(e) => format!("denied ({:?})", e.kind()),
    }
}
fn main() {
    let mut report = String::new();
    for path in [SECRET, CATALOG, "/proc/1/environ"] {
        report += &format!("{path}: {}\n", read(path));
    }
    let mut environs = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path().join("environ")) {
            if String::from_utf8_lossy(&bytes).contains("KILN_CLUSTER_TOKEN") { environs += 1; }
        }
    }
    report += &format!("environs holding the token: {environs}\n");
    let listing = match std::fs::read_dir(DATA_DIR) {
        Ok(entries) => { let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(); names.sort(); names.join(",") }
        Err(e) => format!("denied ({:?})", e.kind()),
    };
    report += &format!("data dir holds: {listing}\n");
    let sources = match std::fs::read_dir(SRC_DIR) {
        Ok(entries) => { let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(); names.sort(); names.join(",") }
        Err(e) => format!("denied ({:?})", e.kind()),
    };
    report += &format!("sources: {sources}\n");
    report += &format!("leader: {}\n", match std::net::TcpStream::connect(LEADER) { Ok(_) => "CONNECTED".to_owned(), Err(e) => format!("unreachable ({:?})", e.kind()) });
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    report += &format!("uid: {uid}\n");
    // Two sleepers that try to outlive the build, detached as daemons are (a new
    // session, or a double fork, and none of the build's pipes).
    use std::process::Stdio;
    let _ = Command::new("setsid").args(["-f", "sleep", "3131"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let _ = Command::new("sh").args(["-c", "(sleep 3132 </dev/null >/dev/null 2>&1 &) &"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    std::fs::write(format!("{}/report.txt", std::env::var("OUT_DIR").unwrap()), report).unwrap();
}
"#;

/// 1. and 3. A build script reads what it should not and starts processes that try
/// to outlive the build: nothing is reachable, the build runs as neither root nor
/// the member's user, has no network, and leaves no process behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_reaches_no_secret_no_network_and_leaves_no_process() {
    common::require_root("builds run as an unprivileged build user only when the member is root");
    let farm = one_member_farm().await;
    let data_dir = farm.member_dir(0);
    // A careless, world-readable secret in the member's directory.
    let secret = data_dir.join("secret.txt");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let build_rs = format!(
        "const SECRET: &str = {:?};\nconst CATALOG: &str = {:?};\nconst DATA_DIR: &str = {:?};\nconst SRC_DIR: &str = {:?};\nconst LEADER: &str = \"127.0.0.1:{}\";\n{SNOOP_BUILD_RS}",
        secret.display().to_string(),
        data_dir.join("catalog.redb").display().to_string(),
        data_dir.display().to_string(),
        farm.build_root(0).join("src").display().to_string(),
        farm.port,
    );
    // Another program built first on the same worker: its sources stay its own.
    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "{}", text(&output));
    let snoop = write_program(
        farm.dir.path(),
        "snoop",
        &[
            ("Cargo.toml", &manifest("snoop", "")),
            ("build.rs", &build_rs),
            ("src/main.rs", r#"fn main() { print!("{}", include_str!(concat!(env!("OUT_DIR"), "/report.txt"))); }"#),
        ],
    );
    let output = farm.submit(&[snoop.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let report = download_and_run(&farm, "snoop");
    assert_eq!(report.lines().count(), 8, "{report}");
    let sources = report.lines().find_map(|l| l.strip_prefix("sources: ")).unwrap();
    assert!(sources.starts_with("snoop-") && !sources.contains(','), "only its own crate is in view: {sources}");
    for line in report.lines() {
        assert!(!["READ", "CONNECTED"].iter().any(|w| line.contains(w)), "the build reached it: {line}");
    }
    // The member's directory shows at most the empty mount points of what the
    // sandbox mounts (the build root, the cache gateway's socket).
    let listing = report.lines().find_map(|l| l.strip_prefix("data dir holds: ")).unwrap();
    for hidden in ["catalog.redb", "artifacts", "secret.txt"] {
        assert!(!listing.contains(hidden), "the build sees {hidden}: {listing}");
    }
    assert!(report.contains("environs holding the token: 0"), "{report}");
    let uid = report.lines().find_map(|l| l.strip_prefix("uid: ")).unwrap();
    assert_ne!(uid, "0", "the build does not run as root: {report}");
    let sleepers: Vec<_> = common::processes_mentioning("sleep 313");
    assert!(sleepers.is_empty(), "nothing the build started outlives it: {sleepers:?}");
    let (_, health) = farm.get_json("/cluster_healthz").await;
    let sandbox = health["members"][0]["sandbox"].as_str().unwrap_or("");
    assert!(sandbox.starts_with("sandbox: on (bubblewrap"), "{health}");
}

/// 7. A member that cannot make its sandbox says why and builds nothing; with
/// `--sandbox=off` it builds, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_sandbox_a_member_refuses_to_build_unless_told_to() {
    let mut farm = Farm::new(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--sandbox-bwrap=/nonexistent/bwrap".into()] });
    farm.wait_leader(Duration::from_secs(300)).await;
    let output = farm.submit(&[&examples().join("hello")], false);
    assert!(output.status.success(), "{}", text(&output));
    let health = common::wait_until(
        "the member reports its sandbox",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let (status, health) = farm.get_json("/cluster_healthz").await;
            let message = health["members"][0]["message"].as_str().unwrap_or("").to_owned();
            if status == 503 && message.contains("sandbox: unavailable") { Ok(health) } else { Err(health.to_string()) }
        },
    )
    .await;
    let message = health["members"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("/nonexistent/bwrap") && message.contains("--sandbox=off"),
        "says why and the way out: {message}"
    );
    assert_eq!(farm.pipeline("hello").await["status"], "pending", "nothing was built");

    let mut farm = farm;
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--sandbox=off".into()] });
    farm.wait_healthy(Duration::from_secs(120)).await;
    let record =
        farm.wait_status("hello", &["success", "compile_error", "system_error"], Duration::from_secs(120)).await;
    assert_eq!(record["status"], "success", "{record}");
    let (_, health) = farm.get_json("/cluster_healthz").await;
    assert!(health["members"][0]["sandbox"].as_str().unwrap().starts_with("sandbox: off"), "{health}");
}

/// A build script that tries to write everything it can reach.
const POISON_BUILD_RS: &str = r#"use std::path::{Path, PathBuf};
fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() { walk(&path, found) } else { found.push(path) }
        }
    }
}
fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut written = 0;
    // A cargo config at every level from the crate up to /.
    for dir in here.ancestors() {
        let config = dir.join(".cargo");
        let _ = std::fs::create_dir_all(&config);
        if std::fs::write(config.join("config.toml"), "[build]\nrustflags = [\"--cfg\", \"poisoned\"]\n").is_ok() { written += 1; }
    }
    // Every file under the build root (and the target directory inside it).
    let root = here.parent().and_then(|p| p.parent()).unwrap().to_owned();
    let mut files = Vec::new();
    walk(&root, &mut files);
    for file in files {
        use std::io::Write;
        if file.starts_with(&here) { continue; }
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&file) {
            let text = if file.extension().is_some_and(|e| e == "rs") { "\ncompile_error!(\"poisoned\");\n" } else { "poison" };
            if f.write_all(text.as_bytes()).is_ok() { written += 1; }
        }
        // Or replace it with something of the build's own.
        let _ = std::fs::remove_file(&file).and_then(|()| std::fs::write(&file, b"poison")).map(|()| written += 1);
    }
    println!("cargo:warning=poison wrote {written} files");
}
"#;

/// 2. Poisoning: a build script tries to write every file it can find under the
/// build root and above it. wordcount built on the same worker afterwards is
/// byte-identical to the wordcount it built before.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_cannot_change_what_a_later_build_sees() {
    // No mount namespace of its own: target/ is renewed by hard links.
    let mut farm = poison_then_rebuild(one_member_farm().await).await;
    assert!(!farm.member(0).output().contains("as an overlay"), "hard links, not an overlay");
}

/// 2. again, on a member with a mount namespace of its own (as under `kiln up`),
/// where target/ is an overlay of the pristine set, thrown away after each build.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_cannot_change_what_a_later_build_sees_through_an_overlay() {
    common::require_root("a member's private mount namespace needs root here");
    let mut farm = Farm::new(1);
    farm.shared_build_root = Some(farm.dir.path().join("shared-root"));
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let mut farm = poison_then_rebuild(farm).await;
    let output = farm.member(0).output();
    assert!(output.contains("target/ is renewed as an overlay"), "the overlay was used: {output}");
}

async fn poison_then_rebuild(farm: Farm) -> Farm {
    let wordcount = examples().join("wordcount");
    let before = farm.dir.path().join("wordcount-before");
    let after = farm.dir.path().join("wordcount-after");
    for copy in [&before, &after] {
        let status = std::process::Command::new("cp").arg("-r").arg(&wordcount).arg(copy).status().unwrap();
        assert!(status.success());
    }
    let output = farm.submit(&[before.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let poison = write_program(
        farm.dir.path(),
        "poison",
        &[("Cargo.toml", &manifest("poison", "")), ("build.rs", POISON_BUILD_RS), ("src/main.rs", "fn main() {}")],
    );
    let output = farm.submit(&[poison.as_path()], true);
    let poisoned = farm.pipeline("poison").await;
    assert!(
        ["success", "compile_error"].contains(&poisoned["status"].as_str().unwrap()),
        "the poison ends as the program's own outcome: {poisoned} {}",
        text(&output)
    );
    let output = farm.submit(&[after.as_path()], true);
    assert!(output.status.success(), "wordcount still builds: {}", text(&output));
    let (first, second) = (farm.pipeline("wordcount-before").await, farm.pipeline("wordcount-after").await);
    assert_eq!(first["binary_sha256"], second["binary_sha256"], "the same binary before and after the poison");
    let here = examples().join("wordcount/src/main.rs");
    assert!(!std::fs::read_to_string(here).unwrap().contains("poisoned"), "the repository is untouched");
    farm
}

/// 5. A build that allocates without bound, and a fork bomb, each end with the limit
/// named; nothing the bomb started is left, and the worker builds the next pipeline.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_and_a_fork_bomb_hit_their_limits_and_the_worker_goes_on() {
    common::require_root("the process limit counts the build user's processes, and only a root member has one");
    let mut farm = Farm::new(1);
    // Its own build user, so the bomb's process count is this farm's alone.
    let extra = ["--build-memory=512M", "--build-processes=48", "--build-uid=64123"].map(String::from).to_vec();
    farm.start(Member { ordinal: 0, workers: 1, extra });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let hog = write_program(
        farm.dir.path(),
        "hog",
        &[
            ("Cargo.toml", &manifest("hog", "")),
            ("build.rs", "fn main() { let mut kept = Vec::new(); loop { kept.push(vec![1u8; 64 << 20]); } }"),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    let bomb = write_program(
        farm.dir.path(),
        "bomb",
        &[
            ("Cargo.toml", &manifest("bomb", "")),
            (
                "build.rs",
                r#"use std::process::{Command, Stdio};
fn main() {
    let mut children = Vec::new();
    loop {
        match Command::new("sleep").arg("4242").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => children.push(child),
            Err(e) => panic!("fork bomb stopped after {} processes: {e:?}", children.len()),
        }
    }
}"#,
            ),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    for (dir, setting) in [(&hog, "--build-memory"), (&bomb, "--build-processes")] {
        let output = farm.submit(&[dir.as_path()], true);
        assert!(!output.status.success(), "{}", text(&output));
        let name = dir.file_name().unwrap().to_str().unwrap();
        let record = farm.pipeline(name).await;
        assert_eq!(record["status"], "compile_error", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(setting), "the error names the limit and its setting: {error}");
    }
    let left = common::processes_mentioning("sleep 4242");
    assert!(left.is_empty(), "the bomb's processes are gone: {left:?}");
    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "the next pipeline builds: {}", text(&output));
}

/// `kiln up` on a machine where the sandbox cannot be made stops at once and says
/// why, instead of waiting for members that will never build.
#[tokio::test(flavor = "multi_thread")]
async fn kiln_up_stops_and_says_why_when_no_sandbox_can_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::KILN)
        .arg("up")
        .arg("--workers=1")
        .arg(format!("--data-dir={}", dir.path().join("farm").display()))
        .arg(format!("--port={}", common::free_port()))
        .arg("--profile=dev")
        .arg(format!("--depset-cache={}", common::depset_cache().display()))
        .args(["--", "--sccache=off", "--sandbox-bwrap=/nonexistent/bwrap"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("sandbox: unavailable") && said.contains("--sandbox=off"), "{said}");
    assert!(common::processes_mentioning(&dir.path().display().to_string()).is_empty(), "no member is left");
}

/// A proc-macro that snoops from inside rustc. With the compile cache on, rustc
/// runs under the build's own sccache server: the macro must be as confined as a
/// build script, and the cache gateway must refuse what a cache client never needs.
const SNOOP_MACRO_RS: &str = r#"extern crate proc_macro;
use std::io::{Read, Write};
fn read(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!("READ {} bytes", bytes.len()),
        Err(e) => format!("denied ({:?})", e.kind()),
    }
}
fn connect(address: &str) -> String {
    match std::net::TcpStream::connect(address) { Ok(_) => "CONNECTED".to_owned(), Err(e) => format!("unreachable ({:?})", e.kind()) }
}
/// The status code the cache gateway answers `request` with.
fn gateway(request: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:4566") else { return "no gateway".to_owned() };
    let _ = stream.write_all(format!("{request} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_whitespace().nth(1).unwrap_or("none").to_owned()
}
#[proc_macro]
pub fn snoop(_: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let mut report = String::new();
    for path in [S3_SECRET_FILE, TOKEN_FILE, CATALOG] {
        report += &format!("{path}: {}\n", read(path));
    }
    let mut environs = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path().join("environ")) {
            let text = String::from_utf8_lossy(&bytes);
            if text.contains(S3_SECRET) || text.contains("AWS_SECRET_ACCESS_KEY") || text.contains("KILN_CLUSTER_TOKEN") { environs += 1; }
        }
    }
    report += &format!("environs holding a secret: {environs}\n");
    report += &format!("leader: {}\n", connect(LEADER));
    report += &format!("store: {}\n", connect(STORE));
    report += &format!("gateway list: {}\n", gateway(&format!("GET /{BUCKET}/?list-type=2")));
    report += &format!("gateway delete: {}\n", gateway(&format!("DELETE /{BUCKET}/sccache/.kiln-preflight/x")));
    report += &format!("gateway outside the prefix: {}\n", gateway(&format!("PUT /{BUCKET}/elsewhere/x")));
    report += &format!("gateway escape: {}\n", gateway(&format!("GET /{BUCKET}/sccache/../../etc/passwd")));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    report += &format!("uid: {uid}\n");
    use std::process::{Command, Stdio};
    let _ = Command::new("setsid").args(["-f", "sleep", "3141"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    format!("{report:?}").parse().unwrap()
}
"#;

/// 1., 3. and the cache: with sccache on an S3 store, a proc-macro run by rustc under
/// the build's sccache server reaches no credential, no network but the cache
/// gateway, which refuses a listing, a deletion and keys outside the prefix; it
/// leaves no process; and the farm goes on building through the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_proc_macro_under_the_compile_cache_is_confined_like_a_build_script() {
    common::require_root("builds run as an unprivileged build user only when the member is root");
    let mut farm = Farm::new(1);
    let s3 = common::start_s3(farm.dir.path());
    let mut extra = vec!["--sccache=auto".to_owned(), format!("--sccache-binary={}", common::sccache().display())];
    extra.extend(s3.flags(common::S3_BUCKET, common::S3_SECRET_KEY));
    farm.start(Member { ordinal: 0, workers: 1, extra });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let data_dir = farm.member_dir(0);
    let macro_rs = format!(
        "const S3_SECRET_FILE: &str = {:?};\nconst S3_SECRET: &str = {:?};\nconst TOKEN_FILE: &str = {:?};\nconst CATALOG: &str = {:?};\nconst LEADER: &str = \"127.0.0.1:{}\";\nconst STORE: &str = {:?};\nconst BUCKET: &str = {:?};\n{SNOOP_MACRO_RS}",
        s3.credentials_dir(common::S3_SECRET_KEY).join("secret_access_key").display().to_string(),
        common::S3_SECRET_KEY,
        data_dir.join("cluster-token").display().to_string(),
        data_dir.join("catalog.redb").display().to_string(),
        farm.port,
        s3.endpoint(),
        common::S3_BUCKET,
    );
    let program = write_program(
        farm.dir.path(),
        "macrosnoop",
        &[
            ("Cargo.toml", &manifest("macrosnoop", "snooplib = { path = \"operators/snooplib\" }")),
            ("src/main.rs", "fn main() { print!(\"{}\", snooplib::REPORT); }"),
            ("operators/snooplib/Cargo.toml", &manifest("snooplib", "snoopmac = { path = \"../snoopmac\" }")),
            ("operators/snooplib/src/lib.rs", "pub const REPORT: &str = snoopmac::snoop!();"),
            ("operators/snoopmac/Cargo.toml", &(manifest("snoopmac", "") + "\n[lib]\nproc-macro = true\n")),
            ("operators/snoopmac/src/lib.rs", &macro_rs),
        ],
    );
    let output = farm.submit(&[program.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let record = farm.pipeline("macrosnoop").await;
    assert!(
        record["cache"]["misses"].as_u64().unwrap_or(0) >= 1,
        "the operator that runs the macro was compiled by the build's sccache server: {record}"
    );
    let report = download_and_run(&farm, "macrosnoop");
    assert_eq!(report.lines().count(), 11, "{report}");
    for line in report.lines() {
        assert!(!["READ", "CONNECTED"].iter().any(|w| line.contains(w)), "the macro reached it: {line}");
    }
    assert!(report.contains("environs holding a secret: 0"), "{report}");
    assert!(report.contains("gateway list: 403"), "no listing of the cache: {report}");
    assert!(report.contains("gateway delete: 405"), "no deletion: {report}");
    assert!(report.contains("gateway outside the prefix: 403"), "{report}");
    assert!(report.contains("gateway escape: 403"), "{report}");
    let uid = report.lines().find_map(|l| l.strip_prefix("uid: ")).unwrap();
    assert_ne!(uid, "0", "rustc under sccache does not run as root: {report}");
    let sleepers = common::processes_mentioning("sleep 3141");
    assert!(sleepers.is_empty(), "nothing the macro started outlives the build: {sleepers:?}");
    assert!(s3.objects("elsewhere").is_empty(), "nothing was stored outside the key prefix");

    // The farm goes on, through the cache: the same program again is all hits.
    let again = write_program(farm.dir.path(), "macrosnoop2", &[]);
    std::process::Command::new("cp").arg("-r").arg(format!("{}/.", program.display())).arg(&again).status().unwrap();
    std::fs::write(again.join("Cargo.toml"), manifest("macrosnoop2", "snooplib = { path = \"operators/snooplib\" }"))
        .unwrap();
    let output = farm.submit(&[again.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let record = farm.pipeline("macrosnoop2").await;
    assert_eq!(record["status"], "success", "{record}");
    assert!(record["cache"]["hits"].as_u64().unwrap_or(0) >= 1, "the operator came from the cache: {record}");
}

/// A file on disk: a build root whose `target/` holds what earlier builds left (an
/// older Kiln's worker, or a planted file) and no pristine set yet. The pristine set
/// every later build starts from is made from nothing, not from that `target/`.
#[tokio::test(flavor = "multi_thread")]
async fn leftovers_in_target_never_become_the_pristine_set() {
    let mut farm = Farm::new(1);
    let root = farm.build_root(0);
    let planted = root.join("target/debug/deps/libplanted-0123456789abcdef.rlib");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, "poison").unwrap();
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    assert!(!planted.exists(), "the leftover was cleared");
    let in_pristine = root.join("prebuilt/debug/deps/libplanted-0123456789abcdef.rlib");
    assert!(root.join("prebuilt").is_dir() && !in_pristine.exists(), "the pristine set holds no leftover");
    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "{}", text(&output));
}

/// What a build leaves is reused by the same pipeline's next version only: its
/// operators are not compiled again (no compile cache here), while another pipeline
/// that uses the same operator compiles it itself (on each way of renewing target/).
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_reuses_only_its_own_earlier_outputs() {
    for private_mounts in [false, true] {
        if private_mounts && !nix::unistd::geteuid().is_root() {
            continue;
        }
        let mut farm = Farm::new(1);
        if private_mounts {
            farm.shared_build_root = Some(farm.dir.path().join("shared-root"));
        }
        farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
        farm.wait_healthy(Duration::from_secs(300)).await;
        let hello = farm.dir.path().join("hello");
        let status = std::process::Command::new("cp").arg("-r").arg(examples().join("hello")).arg(&hello).status();
        assert!(status.unwrap().success());
        let compiled_textops = |log: &str| log.lines().any(|l| l.contains("Compiling textops"));
        let output = farm.submit(&[hello.as_path()], true);
        assert!(output.status.success(), "{}", text(&output));
        assert!(compiled_textops(&log_of(&farm, "hello").await), "the first build compiles the operator");

        let output = farm.submit(&[&examples().join("wordfreq")], true);
        assert!(output.status.success(), "{}", text(&output));
        let log = log_of(&farm, "wordfreq").await;
        assert!(compiled_textops(&log), "another pipeline does not get hello's outputs: {log}");

        let main = hello.join("src/main.rs");
        let source = std::fs::read_to_string(&main).unwrap() + "\n// version 2\n";
        std::fs::write(&main, source).unwrap();
        let output = farm.submit(&[hello.as_path()], true);
        assert!(output.status.success(), "{}", text(&output));
        let record = farm.pipeline("hello").await;
        assert_eq!(record["version"], 2, "{record}");
        let log = log_of(&farm, "hello").await;
        assert!(!compiled_textops(&log), "version 2 reuses its own operator (private mounts: {private_mounts}): {log}");
    }
}

/// A build script that starts a `setsid` sleeper and a double-forked one, then
/// blocks, for test 3.
fn lingering_program(parent: &std::path::Path, name: &str, tag: &str) -> std::path::PathBuf {
    let build_rs = format!(
        r#"use std::process::{{Command, Stdio}};
fn main() {{
    let _ = Command::new("setsid").args(["-f", "sleep", "{tag}1"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let _ = Command::new("sh").args(["-c", "(sleep {tag}2 </dev/null >/dev/null 2>&1 &) &"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    std::thread::sleep(std::time::Duration::from_secs(600));
}}"#
    );
    write_program(
        parent,
        name,
        &[("Cargo.toml", &manifest(name, "")), ("build.rs", &build_rs), ("src/main.rs", "fn main() {}")],
    )
}

async fn wait_for_sleepers(tag: &str, count: usize) {
    common::wait_until(
        "the build script's sleepers start",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let found = common::processes_mentioning(&format!("sleep {tag}"));
            if found.len() >= count { Ok(()) } else { Err(format!("{found:?}")) }
        },
    )
    .await;
}

async fn wait_for_no_sleepers(tag: &str, after: &str) {
    common::wait_until(
        &format!("the sleepers are gone after {after}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let found = common::processes_mentioning(&format!("sleep {tag}"));
            if found.is_empty() { Ok(()) } else { Err(format!("{found:?}")) }
        },
    )
    .await;
}

/// 3. Processes that detach from the build (a new session, a double fork) end with
/// it when it is cancelled by a new version and when it times out.
#[tokio::test(flavor = "multi_thread")]
async fn detached_processes_end_with_a_cancelled_or_timed_out_build() {
    let mut farm = Farm::new(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--build-timeout=20s".into()] });
    farm.wait_healthy(Duration::from_secs(300)).await;

    // Cancelled by a new version.
    let program = lingering_program(farm.dir.path(), "lingering", "3161");
    assert!(farm.submit(&[&program], false).status.success());
    wait_for_sleepers("3161", 2).await;
    std::fs::remove_file(program.join("build.rs")).unwrap();
    std::fs::write(program.join("src/main.rs"), "fn main() { println!(\"v2\"); }").unwrap();
    let output = farm.submit(&[&program], true);
    assert!(output.status.success(), "{}", text(&output));
    wait_for_no_sleepers("3161", "a cancellation").await;

    // Timed out.
    let program = lingering_program(farm.dir.path(), "timeout", "3171");
    assert!(farm.submit(&[&program], false).status.success());
    wait_for_sleepers("3171", 2).await;
    let record =
        farm.wait_status("timeout", &["success", "compile_error", "system_error"], Duration::from_secs(120)).await;
    let error = record["error"].as_str().unwrap_or("");
    assert!(error.contains("--build-timeout"), "the build timed out: {record}");
    wait_for_no_sleepers("3171", "a timeout").await;
    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "the worker goes on: {}", text(&output));
}

/// Issue 12, test 1: package names that would make a path are refused at
/// submission and by `kiln layout`, naming the rule, and nothing is written
/// outside the build root.
#[tokio::test(flavor = "multi_thread")]
async fn package_names_that_would_make_a_path_are_refused() {
    let farm = one_member_farm().await;
    // As TOML strings: the NUL goes in as TOML's escape.
    let names = ["../../x", "/tmp/x", "a/b", ".", "con", "x\\u0000"];
    for (index, name) in names.iter().enumerate() {
        for library in [false, true] {
            let dir_name = format!("bad-{index}-{library}");
            let manifest_of = |n: &str, deps: &str| {
                format!("[package]\nname = \"{n}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")
            };
            let files: Vec<(String, String)> = if library {
                vec![
                    ("Cargo.toml".into(), manifest_of("app", "ops = { path = \"ops\" }")),
                    ("src/main.rs".into(), "fn main() {}".into()),
                    ("ops/Cargo.toml".into(), manifest_of(name, "")),
                    ("ops/src/lib.rs".into(), String::new()),
                ]
            } else {
                vec![("Cargo.toml".into(), manifest_of(name, "")), ("src/main.rs".into(), "fn main() {}".into())]
            };
            let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
            let program = write_program(farm.dir.path(), &dir_name, &files);
            let output = farm.submit(&[program.as_path()], false);
            let said = text(&output);
            assert!(!output.status.success(), "{name:?} (library: {library}) is refused: {said}");
            assert!(
                said.contains("invalid package name") && said.contains("a package name"),
                "the rule is named: {said}"
            );

            let build_root = farm.dir.path().join(format!("layout-{index}-{library}/root"));
            let layout = std::process::Command::new(common::KILN)
                .arg("layout")
                .arg(&program)
                .arg(format!("--build-root={}", build_root.display()))
                .output()
                .unwrap();
            assert!(!layout.status.success(), "kiln layout refuses {name:?}: {}", text(&layout));
            assert!(text(&layout).contains("invalid package name"), "{}", text(&layout));
            let beside: Vec<_> = std::fs::read_dir(build_root.parent().unwrap())
                .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(beside.iter().all(|n| n == "root"), "nothing beside the build root: {beside:?}");
        }
    }
    let (_, list) = farm.get_json("/v0/pipelines").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "no bad program was stored: {list}");
    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "the farm goes on: {}", text(&output));
}
