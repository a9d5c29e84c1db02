//! The member's long-lived sccache server end to end: real members (root with a
//! private build root, whose `target/` overlays reach the server by mount
//! propagation; and non-root, the chart's case, whose `target/` moves by renames),
//! real sccache, real bubblewrap.

use crate::common;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Farm, Member, log_of, manifest, test_farm, test_farm_as, text, write_program};

/// The one file under `dir` whose path ends with `tail` and holds `part`.
fn find(dir: &Path, part: &str, tail: &str) -> PathBuf {
    let found: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| p.to_string_lossy().contains(part) && p.to_string_lossy().ends_with(tail))
        // Not the mount points bubblewrap made in a build's /tmp on disk.
        .filter(|p| !p.to_string_lossy().contains(".kiln-tmp"))
        .collect();
    assert_eq!(found.len(), 1, "one {part}…{tail} under {}: {found:?}", dir.display());
    found.into_iter().next().unwrap()
}

/// A program with an operator of its own and no build script: its binary prints
/// what the operator says.
fn plain(parent: &Path, name: &str, operator: &str, says: &str) -> PathBuf {
    write_program(
        parent,
        name,
        &[
            ("Cargo.toml", &manifest(name, &format!("{operator} = {{ path = \"operators/{operator}\" }}"))),
            ("src/main.rs", &format!("fn main() {{ print!(\"{{}}\", {operator}::says()); }}")),
            (&format!("operators/{operator}/Cargo.toml"), &manifest(operator, "")),
            (&format!("operators/{operator}/src/lib.rs"), &format!("pub fn says() -> &'static str {{ {says:?} }}\n")),
        ],
    )
}

async fn success(farm: &Farm, dir: &Path) -> serde_json::Value {
    let output = farm.submit(&[dir], true);
    assert!(output.status.success(), "{}", text(&output));
    let record = farm.pipeline(dir.file_name().unwrap().to_str().unwrap()).await;
    assert_eq!(record["status"], "success", "{record}");
    assert_eq!(record["cache"]["enabled"], true, "{record}");
    record
}

/// Builds that run no submitted code compile through one server the member keeps,
/// across pipelines (so across `target/` renewals); it compiles in the view of the
/// build in hand only: another program's sources, read at compile time by their
/// path in the build root, are not there. A build with a build script starts its
/// own server and cannot reach the member's; the next plain build keeps it.
async fn one_server_serves_plain_builds_in_their_own_view(mut farm: Farm, sccache: PathBuf, what: &str) {
    let store = farm.dir.path().join("store");
    let extra = vec![
        "--sccache=auto".to_owned(),
        format!("--sccache-binary={}", sccache.display()),
        format!("--sccache-dir={}", store.display()),
    ];
    farm.start(Member { ordinal: 0, workers: 1, extra });
    farm.wait_healthy(Duration::from_secs(600)).await;

    let secret = plain(farm.dir.path(), "secret", "secretop", "TOP SECRET 4711");
    let record = success(&farm, &secret).await;
    assert!(record["cache"]["misses"].as_u64().unwrap() >= 1, "{what}: the operator was compiled: {record}");
    let log = log_of(&farm, "secret").await;
    assert!(
        log.contains(
            "compiled through the member's long-lived sccache server, started now (the first build it serves)"
        ),
        "{what}: {log}"
    );

    // The secret's operator source, at the path every build of this member sees it by.
    let source = find(&farm.build_root(0), "/src/secretop-", "/src/lib.rs");
    let inside = farm_build_root(&farm).join(source.strip_prefix(farm.build_root(0)).unwrap());
    let snoop = write_program(
        farm.dir.path(),
        "snoop",
        &[
            ("Cargo.toml", &manifest("snoop", "")),
            (
                "src/main.rs",
                &format!("const S: &str = include_str!({:?});\nfn main() {{ print!(\"{{S}}\"); }}\n", inside),
            ),
        ],
    );
    let output = farm.submit(&[snoop.as_path()], true);
    assert!(!output.status.success(), "{what}: {}", text(&output));
    let record = farm.pipeline("snoop").await;
    assert_eq!(record["status"], "compile_error", "{what}: {record}");
    let log = log_of(&farm, "snoop").await;
    assert!(log.contains("couldn't read"), "{what}: rustc found no such file: {log}");
    assert!(!log.contains("TOP SECRET"), "{what}: nothing of the other program leaked: {log}");
    assert!(log.contains("long-lived sccache server (build 2 since"), "{what}: the same server, kept: {log}");

    // A build script that looks for the member's server: absent from its view.
    let socket = find(farm.dir.path(), "cache-server/run/", "sccache.sock");
    let probe = format!(
        "fn main() {{ let s = {:?}; println!(\"cargo:warning=member server: {{}}\", if std::path::Path::new(s).exists() || std::os::unix::net::UnixStream::connect(s).is_ok() {{ \"reachable\" }} else {{ \"absent\" }}); }}",
        socket.display().to_string()
    );
    let scripted = write_program(
        farm.dir.path(),
        "scripted",
        &[("Cargo.toml", &manifest("scripted", "")), ("build.rs", &probe), ("src/main.rs", "fn main() {}")],
    );
    success(&farm, &scripted).await;
    let log = log_of(&farm, "scripted").await;
    assert!(log.contains("member server: absent"), "{what}: {log}");
    assert!(!log.contains("long-lived sccache server"), "{what}: its own server: {log}");
    // Its next version has no build script, but builds on what the last one's
    // build script may have planted in the pipeline's target/: still its own server
    // and its own cache namespace.
    std::fs::remove_file(scripted.join("build.rs")).unwrap();
    success(&farm, &scripted).await;
    let log = log_of(&farm, "scripted").await;
    assert!(
        log.contains("an earlier build of this pipeline on this worker ran code of its submitter"),
        "{what}: the layer's past counts: {log}"
    );
    assert!(!log.contains("long-lived sccache server"), "{what}: its own server again: {log}");

    // The next plain build, of yet another pipeline: the same server, and right.
    let record = success(&farm, &plain(farm.dir.path(), "after", "afterop", "after answer")).await;
    let log = log_of(&farm, "after").await;
    assert!(log.contains("long-lived sccache server (build 3 since"), "{what}: {log} {record}");
    let binary = farm.dir.path().join("after-binary");
    let download = std::process::Command::new(common::KILN)
        .args(["download", "after", "-o"])
        .arg(&binary)
        .arg(format!("--leader={}", farm.url()))
        .output()
        .unwrap();
    assert!(download.status.success(), "{}", text(&download));
    let ran = std::process::Command::new(&binary).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "after answer", "{what}");

    // A build's cache figures are its own, though the server's add up: another
    // program with the same operator finds it in the cache and compiles nothing.
    let record = success(&farm, &plain(farm.dir.path(), "again", "afterop", "after answer")).await;
    assert_eq!(record["cache"]["misses"], 0, "{what}: this build's figures only: {record}");
    assert!(record["cache"]["hits"].as_u64().unwrap() >= 1, "{what}: the operator came from the cache: {record}");
    assert!(log_of(&farm, "again").await.contains("long-lived sccache server (build 4 since"), "{what}");
}

/// Where a member's builds see the build root (the shared path, or its own).
fn farm_build_root(farm: &Farm) -> PathBuf {
    farm.shared_build_root.clone().unwrap_or_else(|| farm.build_root(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_server_serves_plain_builds_in_their_own_view_as_root() {
    common::require_root("the member builds at one path through a private mount namespace");
    let mut farm = test_farm(1);
    farm.shared_build_root = Some(PathBuf::from("/tmp/kiln-test-cache-server"));
    one_server_serves_plain_builds_in_their_own_view(farm, common::sccache(), "root, overlays").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_server_serves_plain_builds_in_their_own_view_as_a_non_root_member() {
    common::require_root("the test makes the non-root user's home and becomes that user with setpriv");
    let user =
        std::sync::Arc::new(kiln_testkit::NonRoot::prepare(std::path::Path::new(common::KILN), &common::sccache()));
    let farm = test_farm_as(1, user.clone());
    one_server_serves_plain_builds_in_their_own_view(farm, user.sccache(), "non-root, renames").await;
}

/// A program without a build script whose operator never finishes compiling (an
/// endless constant, its lint allowed): the compile runs in the member's server,
/// not in the build's sandbox. When the build times out, nothing of it stays
/// running there: the server is stopped with it, the next build starts a new one
/// and says why, and builds right.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_build_that_never_ends_leaves_nothing_in_the_members_server() {
    common::require_root("the member builds at one path through a private mount namespace");
    let mut farm = test_farm(1);
    farm.shared_build_root = Some(PathBuf::from("/tmp/kiln-test-cache-server-spin"));
    let store = farm.dir.path().join("store");
    farm.start(Member {
        ordinal: 0,
        workers: 1,
        extra: vec![
            "--sccache=auto".to_owned(),
            format!("--sccache-binary={}", common::sccache().display()),
            format!("--sccache-dir={}", store.display()),
            "--build-timeout=20s".to_owned(),
        ],
    });
    farm.wait_healthy(Duration::from_secs(600)).await;
    let spinner = write_program(
        farm.dir.path(),
        "spinner",
        &[
            ("Cargo.toml", &manifest("spinner", "spinop4242 = { path = \"operators/spinop4242\" }")),
            ("src/main.rs", "fn main() { print!(\"{}\", spinop4242::SPIN); }"),
            ("operators/spinop4242/Cargo.toml", &manifest("spinop4242", "")),
            (
                "operators/spinop4242/src/lib.rs",
                "#![allow(long_running_const_eval)]\npub const SPIN: u64 = { let mut i: u64 = 1; while i != 0 { i = i.wrapping_add(1); } i };\n",
            ),
        ],
    );
    assert!(farm.submit(&[spinner.as_path()], false).status.success());
    kiln_testkit::wait_until(
        "the operator compiling in the member's server",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let found = kiln_testkit::processes_mentioning("--crate-name spinop4242");
            if found.is_empty() { Err("not yet".to_owned()) } else { Ok(()) }
        },
    )
    .await;
    let record =
        farm.wait_status("spinner", &["success", "compile_error", "system_error"], Duration::from_secs(180)).await;
    assert!(record["error"].as_str().unwrap_or("").contains("--build-timeout"), "the build timed out: {record}");
    kiln_testkit::wait_until(
        "no compile of it left running",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let found = kiln_testkit::processes_mentioning("--crate-name spinop4242");
            if found.is_empty() { Ok(()) } else { Err(format!("{found:?}")) }
        },
    )
    .await;

    let record = success(&farm, &plain(farm.dir.path(), "next", "nextop", "next answer")).await;
    let log = log_of(&farm, "next").await;
    assert!(
        log.contains("started now (the last one was stopped: the build it served was stopped)"),
        "a new server, and why: {log} {record}"
    );
}
