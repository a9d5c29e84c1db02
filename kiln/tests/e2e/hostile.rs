//! Hostile programs against a real farm: what a submitted program does must stay
//! the program's problem. Each test asserts what a user would check (the status,
//! the error, the log) and that the farm goes on building.

use crate::common;
use std::time::Duration;

use crate::common::{Farm, Member, examples, log_of, manifest, test_farm, test_farm_as, text, write_program};

async fn one_member_farm() -> Farm {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    farm
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
    let mut farm = test_farm(1);
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
    let mut farm = test_farm(1);
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
    let mut farm = test_farm(1);
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
    report += &format!("gateway delete: {}\n", gateway(&format!("DELETE /{BUCKET}/sccache/a/b/c/abc{}", "0".repeat(61))));
    report += &format!("gateway odd key: {}\n", gateway(&format!("PUT /{BUCKET}/sccache/0")));
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
    let mut farm = test_farm(1);
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
    assert_eq!(report.lines().count(), 12, "{report}");
    for line in report.lines() {
        assert!(!["READ", "CONNECTED"].iter().any(|w| line.contains(w)), "the macro reached it: {line}");
    }
    assert!(report.contains("environs holding a secret: 0"), "{report}");
    assert!(report.contains("gateway list: 403"), "no listing of the cache: {report}");
    assert!(report.contains("gateway delete: 405"), "no deletion: {report}");
    assert!(report.contains("gateway outside the prefix: 403"), "{report}");
    assert!(report.contains("gateway escape: 403"), "{report}");
    assert!(report.contains("gateway odd key: 403"), "only keys of sccache's shape: {report}");
    let uid = report.lines().find_map(|l| l.strip_prefix("uid: ")).unwrap();
    assert_ne!(uid, "0", "rustc under sccache does not run as root: {report}");
    let sleepers = common::processes_mentioning("sleep 3141");
    assert!(sleepers.is_empty(), "nothing the macro started outlives the build: {sleepers:?}");
    assert!(s3.objects("elsewhere").is_empty(), "nothing was stored outside the key prefix");

    // The build ran its submitter's code (a proc-macro of its own): what it stored
    // is its pipeline's. Another pipeline with the same crates reads none of it...
    let again = write_program(farm.dir.path(), "macrosnoop2", &[]);
    std::process::Command::new("cp").arg("-r").arg(format!("{}/.", program.display())).arg(&again).status().unwrap();
    std::fs::write(again.join("Cargo.toml"), manifest("macrosnoop2", "snooplib = { path = \"operators/snooplib\" }"))
        .unwrap();
    let output = farm.submit(&[again.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let record = farm.pipeline("macrosnoop2").await;
    assert_eq!(record["status"], "success", "{record}");
    assert_eq!(record["cache"]["hits"], 0, "nothing the macro's build stored reaches another pipeline: {record}");
    assert!(!s3.objects("sccache/pipelines/macrosnoop").is_empty(), "stored in its own namespace");
    // ... and the farm goes on: its own next version builds (reading its own
    // entries back is the gateway's unit test's, `a_pipelines_own_entries_...`).
    std::fs::write(program.join("src/main.rs"), "fn main() { println!(\"{}\", snooplib::REPORT); }").unwrap();
    let output = farm.submit(&[program.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let record = farm.pipeline("macrosnoop").await;
    assert_eq!((record["status"].as_str(), record["version"].as_u64()), (Some("success"), Some(2)), "{record}");
}

/// A file on disk: a build root whose `target/` holds what earlier builds left (an
/// older Kiln's worker, or a planted file) and no pristine set yet. The pristine set
/// every later build starts from is made from nothing, not from that `target/`.
#[tokio::test(flavor = "multi_thread")]
async fn leftovers_in_target_never_become_the_pristine_set() {
    let mut farm = test_farm(1);
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
        let mut farm = test_farm(1);
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
    let mut farm = test_farm(1);
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

/// Package names that would make a path are refused at
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

/// The shared compile cache's store, as a test reads it: the objects under
/// sccache's keys, by key (prefix stripped), and their bytes.
enum Store {
    Local(std::path::PathBuf),
    S3(common::S3Server),
}

impl Store {
    fn start(kind: &str, dir: &std::path::Path) -> Store {
        match kind {
            "local" => Store::Local(dir.to_owned()),
            _ => Store::S3(common::start_s3(dir)),
        }
    }

    fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--sccache=auto".to_owned(), format!("--sccache-binary={}", common::sccache().display())];
        match self {
            Store::Local(dir) => flags.push(format!("--sccache-dir={}", dir.display())),
            Store::S3(s3) => flags.extend(s3.flags(common::S3_BUCKET, common::S3_SECRET_KEY)),
        }
        flags
    }

    /// Where the objects live, and the key prefix the farm uses there.
    fn root(&self) -> (std::path::PathBuf, &'static str) {
        match self {
            Store::Local(dir) => (dir.join("gateway"), ""),
            Store::S3(s3) => (s3.root.join(&s3.bucket), "sccache/"),
        }
    }

    /// Every entry of sccache's shape: key (below the prefix) -> bytes.
    fn entries(&self, namespace: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let (root, prefix) = self.root();
        let base = root.join(prefix).join(namespace);
        kiln_testkit::s3::walk(&base)
            .into_iter()
            .filter_map(|path| {
                let key = path.strip_prefix(&base).ok()?.to_str()?.to_owned();
                let digest = key.rsplit('/').next()?;
                let shaped =
                    key.split('/').count() == 4 && digest.len() >= 32 && digest.bytes().all(|b| b.is_ascii_hexdigit());
                shaped.then(|| (key, std::fs::read(&path).unwrap()))
            })
            .collect()
    }
}

/// The honest program: an operator crate, and a binary that prints what it says.
fn honest(parent: &std::path::Path, name: &str, answer: &str) -> std::path::PathBuf {
    write_program(
        parent,
        name,
        &[
            ("Cargo.toml", &manifest(name, "victimop = { path = \"operators/victimop\" }")),
            ("src/main.rs", "fn main() { print!(\"{}\", victimop::answer()); }"),
            ("operators/victimop/Cargo.toml", &manifest("victimop", "")),
            ("operators/victimop/src/lib.rs", &format!("pub fn answer() -> &'static str {{ {answer:?} }}\n")),
        ],
    )
}

/// A build script that stores each file of its crate's `forged/` directory in the
/// compile cache, through the relay its sandbox has, under the key the file is
/// named by (`a_b_c_<digest>` for `a/b/c/<digest>`), and counts the stores
/// answered 200.
const FORGER_BUILD_RS: &str = r#"use std::io::{Read, Write};
fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("forged");
    let mut stored = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let key = entry.file_name().to_string_lossy().replace('_', "/");
        let body = std::fs::read(entry.path()).unwrap();
        let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:4566") else { continue };
        let head = format!("PUT /{BUCKET}/{PREFIX}{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if answer.split_whitespace().nth(1) == Some("200") { stored += 1; }
    }
    println!("cargo:warning=forger stored {stored} entries");
}
"#;

/// A build script plants a forged entry under the key of a crate that
/// another program will compile, the key learnt on another farm with the same
/// settings (same build root, toolchain, dependency set, sccache). The victim's
/// binary is still its own, no other submission is served a forged binary, and
/// the forged entry sits in the forger's own namespace, never where others read.
async fn a_forged_cache_entry_reaches_no_other_program(kind: &str) {
    common::require_root("every member builds at one path through a private mount namespace");
    let build_root = std::path::PathBuf::from(format!("/tmp/kiln-test-forge-{kind}"));
    // The attacker's own farm: learns the honest crate's key, and an entry of the
    // same crate with other contents.
    let (learnt, evil_entry) = {
        let mut farm = test_farm(1);
        farm.shared_build_root = Some(build_root.clone());
        let store = Store::start(kind, &farm.dir.path().join("store"));
        farm.start(Member { ordinal: 0, workers: 1, extra: store.flags() });
        farm.wait_healthy(Duration::from_secs(300)).await;
        let output = farm.submit(&[honest(farm.dir.path(), "victim", "honest answer").as_path()], true);
        assert!(output.status.success(), "{}", text(&output));
        let learnt = store.entries("");
        assert_eq!(learnt.len(), 1, "one library crate, one entry: {:?}", learnt.keys());
        let output = farm.submit(&[honest(farm.dir.path(), "evil", "EVIL answer").as_path()], true);
        assert!(output.status.success(), "{}", text(&output));
        let evil: Vec<Vec<u8>> =
            store.entries("").into_iter().filter(|(k, _)| !learnt.contains_key(k)).map(|(_, v)| v).collect();
        assert_eq!(evil.len(), 1, "the evil crate's own entry");
        (learnt.into_keys().next().unwrap(), evil.into_iter().next().unwrap())
    };

    // The victim's farm, same settings, a store of its own.
    let mut farm = test_farm(1);
    farm.shared_build_root = Some(build_root);
    let store = Store::start(kind, &farm.dir.path().join("store"));
    farm.start(Member { ordinal: 0, workers: 1, extra: store.flags() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    let cache = health["members"][0]["cache"].as_str().unwrap().to_owned();
    assert!(
        cache.contains("builds that do write only their pipeline's own namespace"),
        "health says who writes: {cache}"
    );

    let (bucket, prefix) = match kind {
        "local" => ("kiln-local-cache", ""),
        _ => (common::S3_BUCKET, "sccache/"),
    };
    let forger_build = FORGER_BUILD_RS.replace("{BUCKET}", bucket).replace("{PREFIX}", prefix);
    let forger = write_program(
        farm.dir.path(),
        "forger",
        &[("Cargo.toml", &manifest("forger", "")), ("build.rs", &forger_build), ("src/main.rs", "fn main() {}")],
    );
    std::fs::create_dir_all(forger.join("forged")).unwrap();
    std::fs::write(forger.join("forged").join(learnt.replace('/', "_")), &evil_entry).unwrap();
    let output = farm.submit(&[forger.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let log = log_of(&farm, "forger").await;
    assert!(log.contains("forger stored 1 entries"), "the store was answered as written: {log}");
    assert!(log.contains("crate forger has a build script"), "the log says why its entries are its own: {log}");
    assert!(!store.entries("").contains_key(&learnt), "nothing under the honest key where every build reads");
    assert_eq!(
        store.entries("pipelines/forger/").get(&learnt),
        Some(&evil_entry),
        "the forged entry is kept for the forger alone"
    );

    // The honest program, built after the forgery: its own answer, compiled here.
    let output = farm.submit(&[honest(farm.dir.path(), "victim", "honest answer").as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let victim = farm.pipeline("victim").await;
    assert_eq!(victim["status"], "success", "{victim}");
    assert_eq!(victim["cache"]["hits"], 0, "no hit on the forged entry: {victim}");
    assert_eq!(download_and_run(&farm, "victim"), "honest answer");
    assert_eq!(
        store.entries("").get(&learnt).map(|e| e != &evil_entry),
        Some(true),
        "the victim stored its own entry under the key the forger aimed at"
    );

    // The same honest source under another name: the victim's binary, not a forged one.
    let output = farm.submit(&[honest(farm.dir.path(), "victim2", "honest answer").as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(download_and_run(&farm, "victim2"), "honest answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_cache_entry_reaches_no_other_program_on_a_local_store() {
    a_forged_cache_entry_reaches_no_other_program("local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_cache_entry_reaches_no_other_program_on_s3() {
    a_forged_cache_entry_reaches_no_other_program("s3").await;
}

/// A build script that leaves a process behind which, the moment cargo has put the
/// binary in place, renames `REPLACEMENT` (prepared beforehand: a link, or a FIFO)
/// over it: the member would then read what the link leads to.
const SWAPPER_BUILD_RS: &str = r#"use std::path::Path;
fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    let profile_dir = Path::new(&out).ancestors().nth(3).unwrap().to_owned();
    let binary = profile_dir.join(env!("CARGO_PKG_NAME"));
    let prepared = profile_dir.join(".swap");
    let _ = std::fs::remove_file(&prepared);
    match REPLACEMENT {
        "fifo" => { std::process::Command::new("mkfifo").arg(&prepared).status().unwrap(); }
        target => std::os::unix::fs::symlink(target, &prepared).unwrap(),
    }
    if std::env::var_os("SWAPPER").is_none() {
        use std::process::Stdio;
        std::process::Command::new(std::env::current_exe().unwrap())
            .env("SWAPPER", "1")
            .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
            .spawn().unwrap();
        return;
    }
    loop {
        if std::fs::symlink_metadata(&binary).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::rename(&prepared, &binary);
            return;
        }
        std::thread::yield_now();
    }
}
"#;

/// A build script that plants, in `target/` and in its profile directory, links
/// to a directory of the host's (the test's canary) for a later build's cleanup.
const PLANTER_BUILD_RS: &str = r#"use std::path::Path;
fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    let profile_dir = Path::new(&out).ancestors().nth(3).unwrap().to_owned();
    for dir in [profile_dir.parent().unwrap(), profile_dir.as_path()] {
        let _ = std::os::unix::fs::symlink(CANARY, dir.join("planted"));
    }
}
"#;

/// Links a build plants lead nowhere. A process left behind
/// renames a link (to a root-only secret, to `/proc/self/environ`, to `/dev/zero`)
/// or a FIFO over the binary as soon as cargo has made it: no download holds a
/// secret, the build ends `compile_error` saying what it found, and the ordinal
/// builds the next program. A link to a canary directory planted in `target/` by
/// version 1 of a pipeline deletes nothing when version 2 builds.
#[tokio::test(flavor = "multi_thread")]
async fn links_a_build_plants_lead_nowhere() {
    common::require_root("builds run as an unprivileged build user only when the member is root");
    links_lead_nowhere(one_member_farm().await, None).await;
}

/// The same as the kit's non-root member, whose builds share its uid: the secret
/// and the canary are the member's own.
#[tokio::test(flavor = "multi_thread")]
async fn links_a_build_plants_lead_nowhere_as_a_non_root_member() {
    common::require_root("the test makes the non-root user's home and becomes that user with setpriv");
    let user =
        std::sync::Arc::new(kiln_testkit::NonRoot::prepare(std::path::Path::new(common::KILN), &common::sccache()));
    let mut farm = test_farm_as(1, user.clone());
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(600)).await;
    links_lead_nowhere(farm, Some(&user)).await;
}

async fn links_lead_nowhere(farm: Farm, user: Option<&kiln_testkit::NonRoot>) {
    let give = |path: &std::path::Path| {
        if let Some(user) = user {
            user.give(path);
        }
    };
    give(farm.dir.path());
    let secret_file = farm.dir.path().join("member-only-secret");
    let secret = "MEMBER-ONLY-SECRET-5f3a";
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    give(&secret_file);

    let mut refused = 0;
    for (name, replacement) in [
        ("swap-secret", secret_file.display().to_string()),
        ("swap-environ", "/proc/self/environ".to_owned()),
        ("swap-zero", "/dev/zero".to_owned()),
        ("swap-fifo", "fifo".to_owned()),
    ] {
        let build_rs = format!("const REPLACEMENT: &str = {replacement:?};\n{SWAPPER_BUILD_RS}");
        let program = write_program(
            farm.dir.path(),
            name,
            &[
                ("Cargo.toml", &manifest(name, "")),
                ("build.rs", &build_rs),
                ("src/main.rs", "fn main() { print!(\"honest\"); }"),
            ],
        );
        let _ = farm.submit(&[program.as_path()], true);
        let record = farm.pipeline(name).await;
        match record["status"].as_str().unwrap() {
            "success" => assert_eq!(download_and_run(&farm, name), "honest", "{name}: the binary cargo made, or none"),
            "compile_error" => {
                let error = record["error"].as_str().unwrap();
                assert!(
                    error.contains("the binary was refused") && error.contains("not a regular file"),
                    "{name}: {error}"
                );
                refused += 1;
            }
            other => panic!("{name} ended {other}: {record}"),
        }
        let download = std::process::Command::new(common::KILN)
            .args(["download", name, "-o"])
            .arg(farm.dir.path().join(format!("{name}.download")))
            .arg(format!("--leader={}", farm.url()))
            .output()
            .unwrap();
        let got = std::fs::read(farm.dir.path().join(format!("{name}.download"))).unwrap_or_default();
        let got = String::from_utf8_lossy(&got);
        assert!(!got.contains(secret) && !got.contains("KILN_LOG="), "{name} leaked: {}", text(&download));
    }
    assert!(refused >= 1, "at least one swap landed before the sandbox ended, and was refused");

    // Planted links to a canary directory, then version 2 of the same pipeline.
    let canary = farm.dir.path().join("canary");
    std::fs::create_dir_all(canary.join("inner")).unwrap();
    std::fs::write(canary.join("precious"), "keep").unwrap();
    std::fs::write(canary.join("inner/precious"), "keep").unwrap();
    for path in ["", "inner", "precious", "inner/precious"] {
        give(&canary.join(path));
    }
    let build_rs = format!("const CANARY: &str = {:?};\n{PLANTER_BUILD_RS}", canary.display().to_string());
    for version in ["one", "two"] {
        let program = write_program(
            farm.dir.path(),
            "planter",
            &[
                ("Cargo.toml", &manifest("planter", "")),
                ("build.rs", &build_rs),
                ("src/main.rs", &format!("fn main() {{ print!(\"{version}\"); }}")),
            ],
        );
        let output = farm.submit(&[program.as_path()], true);
        assert!(output.status.success(), "{}", text(&output));
        assert_eq!(download_and_run(&farm, "planter"), version);
    }
    assert_eq!(
        std::fs::read_to_string(canary.join("precious")).unwrap(),
        "keep",
        "nothing outside the build was deleted"
    );
    assert_eq!(std::fs::read_to_string(canary.join("inner/precious")).unwrap(), "keep");

    // The ordinal is free: the next program builds, and the member stops on SIGTERM
    // (a link to /dev/zero once kept it reading for good).
    let output = farm.submit(&[examples().join("hello").as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let mut farm = farm;
    let _ = farm.member(0).terminate();
}

/// A pipeline whose builds take their member down (here the member
/// is SIGKILLed while it builds, as an OOM kill of its pod would) is built again
/// twice, then ends `system_error` saying why, instead of going back to the queue
/// for good; the member then builds the next program.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_keeps_killing_its_member_ends_system_error() {
    let mut farm = test_farm(2);
    let member = |ordinal| Member { ordinal, workers: 2, extra: Vec::new() };
    farm.start(member(0));
    farm.start(member(1));
    farm.wait_healthy(Duration::from_secs(300)).await;
    let killer = write_program(
        farm.dir.path(),
        "killer",
        &[
            ("Cargo.toml", &manifest("killer", "")),
            ("build.rs", "fn main() { loop { std::thread::park(); } }"),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    let output = farm.submit(&[killer.as_path()], false);
    assert!(output.status.success(), "{}", text(&output));
    for attempt in 1..=3u64 {
        let what = format!("attempt {attempt} of killer is being built");
        common::wait_until(&what, Duration::from_secs(300), Duration::from_millis(100), || async {
            let record = farm.pipeline("killer").await;
            let building = record["status"] == "compiling" && record["attempt"] == attempt;
            if building { Ok(()) } else { Err(record.to_string()) }
        })
        .await;
        farm.kill(1);
        farm.start(member(1));
    }
    let record = farm.wait_status("killer", &FINISHED, Duration::from_secs(300)).await;
    assert_eq!(record["status"], "system_error", "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("stopped their member 3 times"), "{error}");
    // Ids 2 and 3: both ordinals build on.
    let output = farm.submit(&[examples().join("hello").as_path(), examples().join("wordfreq").as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
}

/// A fork bomb, a build that writes 1 GiB to /tmp over and over, one
/// that prints a 3 GiB line without a newline, and one that fills its `target/`
/// past `--build-disk` and waits, each on ordinal 0 of a
/// two-member farm, while ordinal 1 builds honest programs: each attack fails its
/// build with a reason, the other member's builds succeed, and the attacked
/// member's own memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn attacks_on_one_member_fail_their_builds_while_the_other_builds() {
    common::require_root("the build's cgroup, its sized /tmp and its own build user need a root member");
    let mut farm = test_farm(2);
    farm.shared_build_root = Some(std::path::PathBuf::from("/tmp/kiln-test-containment"));
    let limits = ["--build-processes=128", "--build-tmp-size=512M", "--build-disk=1G"].map(String::from).to_vec();
    farm.start(Member { ordinal: 0, workers: 2, extra: limits });
    farm.start(Member { ordinal: 1, workers: 2, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    let sandbox = health["members"][0]["sandbox"].as_str().unwrap().to_owned();
    assert!(sandbox.contains("build user 64000") || sandbox.contains("build user"), "{sandbox}");
    assert_ne!(health["members"][0]["sandbox"], health["members"][1]["sandbox"], "a build user per member: {health}");

    let attack = |name: &str, build_rs: &str| {
        write_program(
            farm.dir.path(),
            name,
            &[("Cargo.toml", &manifest(name, "")), ("build.rs", build_rs), ("src/main.rs", "fn main() {}")],
        )
    };
    let bomb = attack(
        "bomb",
        r#"fn main() {
    let mut children = Vec::new();
    loop {
        let null = std::process::Stdio::null;
        match std::process::Command::new("sleep").arg("4343").stdin(null()).stdout(null()).stderr(null()).spawn() {
            Ok(child) => children.push(child),
            Err(e) => panic!("fork bomb stopped after {} processes: {e:?}", children.len()),
        }
    }
}"#,
    );
    let flood = attack(
        "tmpflood",
        r#"use std::io::Write;
fn main() {
    let chunk = vec![7u8; 64 << 20];
    for round in 0.. {
        let path = format!("/tmp/flood-{round}");
        let mut file = std::fs::File::create(&path).unwrap();
        for _ in 0..16 {
            if let Err(e) = file.write_all(&chunk) { panic!("writing {path}: {e}"); }
        }
    }
}"#,
    );
    let line = attack(
        "longline",
        r#"use std::io::Write;
fn main() {
    let chunk = vec![b'x'; 64 << 20];
    let mut err = std::io::stderr().lock();
    for _ in 0..48 { err.write_all(&chunk).unwrap(); }
    std::process::exit(1);
}"#,
    );
    let fill = attack(
        "diskfill",
        r#"use std::io::Write;
fn main() {
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("fill");
    let mut file = std::fs::File::create(out).unwrap();
    let chunk = vec![9u8; 64 << 20];
    for _ in 0..24 { file.write_all(&chunk).unwrap(); }
    loop { std::thread::park(); }
}"#,
    );
    // Ids alternate between the ordinals: 1, 3, 5, 7 on ordinal 1; 2, 4, 6, 8 on 0.
    let mut honest = Vec::new();
    for (i, hostile) in [&bomb, &flood, &line, &fill].into_iter().enumerate() {
        let name = format!("honest{i}");
        let dir = farm.dir.path().join(&name);
        common::copy_program(&examples().join("hello"), &dir);
        let output = farm.submit(&[dir.as_path(), hostile.as_path()], false);
        assert!(output.status.success(), "{}", text(&output));
        honest.push(name);
    }
    for name in &honest {
        let record = farm.wait_status(name, &FINISHED, Duration::from_secs(600)).await;
        assert_eq!((record["status"].as_str(), record["worker"].as_u64()), (Some("success"), Some(1)), "{record}");
    }
    // The long line either reaches the worker (cut to the line cap) or stops cargo,
    // which holds a build script's output in memory, at the build's memory limit.
    for (name, reasons) in [
        ("bomb", &["--build-processes"][..]),
        ("tmpflood", &["--build-tmp-size"]),
        ("longline", &["left out", "--build-memory", "--build-disk"]),
        ("diskfill", &["--build-disk"]),
    ] {
        let record = farm.wait_status(name, &FINISHED, Duration::from_secs(600)).await;
        assert_eq!(
            (record["status"].as_str(), record["worker"].as_u64()),
            (Some("compile_error"), Some(0)),
            "{record}"
        );
        let said = format!("{} {}", record["error"], log_of(&farm, name).await);
        assert!(
            reasons.iter().any(|r| said.contains(r)),
            "{name} fails saying why ({reasons:?}): {}",
            &said[..said.len().min(2000)]
        );
    }
    let left = common::processes_mentioning("sleep 4343");
    assert!(left.is_empty(), "the bomb's processes are gone: {left:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", farm.member(0).pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    println!("ordinal 0's peak resident memory through the attacks: {} MiB", peak_kib / 1024);
    assert!(peak_kib < 512 * 1024, "the member's own memory stayed bounded: {peak_kib} KiB");
    // Ids 9 and 10: the next program of each ordinal builds.
    let output = farm.submit(&[examples().join("wordfreq").as_path(), examples().join("json-report").as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(farm.pipeline("json-report").await["worker"], 0);
}

const FINISHED: [&str; 4] = ["success", "compile_error", "system_error", "cancelled"];

/// A build script that tries what a build could do to its member on the chart's
/// path: read the secrets the chart mounts under /etc/kiln, and rewrite every
/// rlib it finds in `target/` (hard links into the prebuilt set, were they
/// shared with the member's uid).
const REWRITER_BUILD_RS: &str = r#"use std::io::Write;
fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, found),
            Ok(t) if t.is_file() => found.push(path),
            _ => {}
        }
    }
}
fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    let target = std::path::Path::new(&out).ancestors().nth(4).unwrap().to_owned();
    let mut found = Vec::new();
    walk(&target, &mut found);
    let mut rewritten = 0;
    for rlib in found.iter().filter(|p| p.extension().is_some_and(|e| e == "rlib")) {
        if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(rlib) {
            if file.write_all(b"poisoned rlib").is_ok() { rewritten += 1; }
        }
    }
    let mut report = format!("rewritten {rewritten}\n");
    for secret in SECRETS {
        let seen = match std::fs::read(secret) { Ok(_) => "READ".to_owned(), Err(e) => format!("{:?}", e.kind()) };
        report += &format!("{secret}: {seen}\n");
    }
    let path = std::path::Path::new(&out).join("report.txt");
    std::fs::write(path, report).unwrap();
}
"#;

/// The chart's path. A member that is not root, renewing `target/`
/// without a mount namespace of its own (as the chart's pod without user
/// namespaces does), with secrets where the chart mounts them: a build reads no
/// secret, and its rewrite of every rlib it can find leaves the member's prebuilt
/// set as it was, so the next program that uses serde_json builds.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_members_build_reads_no_secret_and_leaves_its_prebuilt_set_alone() {
    common::require_root("the test makes the non-root user's home and becomes that user with setpriv");
    let user =
        std::sync::Arc::new(kiln_testkit::NonRoot::prepare(std::path::Path::new(common::KILN), &common::sccache()));
    // The chart's places: /etc/kiln/<secret>/..., the member's own (mode 0400).
    let chart_dir = std::path::PathBuf::from(format!("/etc/kiln/test-{}", std::process::id()));
    let secrets: Vec<std::path::PathBuf> =
        ["cluster-token/token", "api-token/token", "s3-credentials/secret_access_key", "tls/tls.key"]
            .iter()
            .map(|s| chart_dir.join(s))
            .collect();
    for secret in &secrets {
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(secret, "chart-secret").unwrap();
        std::fs::set_permissions(secret, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        user.give(secret);
    }
    let mut farm = test_farm_as(1, user.clone());
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(600)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    let sandbox = health["members"][0]["sandbox"].as_str().unwrap().to_owned();
    assert!(sandbox.contains("builds share the member's uid"), "health says so: {sandbox}");
    let pristine = farm.build_root(0).join("prebuilt");
    let digest_of_set = || {
        let mut files: Vec<(String, String)> = kiln_testkit::s3::walk(&pristine)
            .into_iter()
            .map(|p| (p.display().to_string(), common::sha256(&std::fs::read(&p).unwrap())))
            .collect();
        files.sort();
        files
    };
    let before = digest_of_set();
    assert!(before.iter().any(|(p, _)| p.contains("libserde_json-")), "the set holds serde_json");

    let list = secrets.iter().map(|s| format!("{:?}", s.display().to_string())).collect::<Vec<_>>().join(", ");
    let build_rs = format!("const SECRETS: [&str; {}] = [{list}];\n{REWRITER_BUILD_RS}", secrets.len());
    let program = write_program(
        farm.dir.path(),
        "rewriter",
        &[
            ("Cargo.toml", &manifest("rewriter", "")),
            ("build.rs", &build_rs),
            ("src/main.rs", r#"fn main() { print!("{}", include_str!(concat!(env!("OUT_DIR"), "/report.txt"))); }"#),
        ],
    );
    let output = farm.submit(&[program.as_path()], true);
    assert!(output.status.success(), "{}", text(&output));
    let report = download_and_run(&farm, "rewriter");
    assert!(report.starts_with("rewritten "), "{report}");
    assert!(!report.contains("READ"), "a secret in the chart's places was read: {report}");
    assert_eq!(digest_of_set(), before, "the prebuilt set is unchanged ({report})");
    let output = farm.submit(&[examples().join("json-report").as_path()], true);
    assert!(output.status.success(), "the next program using serde_json builds: {}", text(&output));
    let _ = std::fs::remove_dir_all(&chart_dir);
}

/// Holds COUNT connections to the port given, silent, and says "ready"; then
/// reports each one the leader closes, and exits once all are closed.
const SILENT_CLIENT_PY: &str = r#"
import selectors, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
print("ready", flush=True)
sel = selectors.DefaultSelector()
for s in held:
    sel.register(s, selectors.EVENT_READ)
left = count
while left:
    for key, _ in sel.select():
        try:
            data = key.fileobj.recv(1)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            left -= 1
print("all closed", flush=True)
"#;

/// 20,000 connections that never send a byte (held by two client
/// processes, as one process may hold only 20,000 files here), against a leader
/// whose cap is 2,000. A new connection takes the place of the oldest silent one,
/// so `/healthz` still answers (its time is printed; speed is the benchmarks' to
/// judge), and every silent connection is closed by the leader: by eviction or
/// after the first-byte timeout.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_silent_connections_neither_lock_out_a_probe_nor_stay_open() {
    use std::io::BufRead;
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--max-connections=2000".into()] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut child = std::process::Command::new("python3")
            .args(["-c", SILENT_CLIENT_PY, &farm.port.to_string(), "10000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        clients.push((child, lines));
    }
    for (_, lines) in &mut clients {
        assert_eq!(lines.next().unwrap().unwrap(), "ready", "10,000 silent connections held");
    }

    let probe = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(30), probe.get(format!("{}/healthz", farm.url())).send())
        .await
        .expect("/healthz answers while 20,000 silent connections are held")
        .unwrap();
    assert_eq!(answer.status(), 200);
    println!("/healthz answered in {} ms with 20,000 silent connections held", started.elapsed().as_millis());

    // A client that starts a request and never finishes its headers (slowloris) is
    // closed too, after the header-read timeout.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", farm.port)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut rest = Vec::new();
    let ended = std::io::Read::read_to_end(&mut slow, &mut rest);
    assert!(
        ended.is_ok() || ended.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("healthy"), "never answered: {}", String::from_utf8_lossy(&rest));

    // Every silent connection is closed by the leader (end of stream, or a reset).
    for (mut child, mut lines) in clients {
        let closed = tokio::task::spawn_blocking(move || lines.next().map(|l| l.unwrap())).await.unwrap();
        assert_eq!(closed.as_deref(), Some("all closed"));
        assert!(child.wait().unwrap().success());
    }
    let output = farm.submit(&[examples().join("hello").as_path()], true);
    assert!(output.status.success(), "the farm goes on: {}", text(&output));
}
