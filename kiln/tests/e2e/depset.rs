//! End-to-end tests of the operator's dependency set: a set made with
//! `kiln depset create` from real crates of crates.io, vendored once (with the
//! network) and kept in `~/.cache/kiln/test-depsets/`, then used offline by real
//! farms.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{
    KILN, Member, examples, free_port, processes_mentioning, sha256, spawn_kiln, test_farm, text, wait_until,
    write_program,
};

/// The operator's manifest: real crates, with the features the programs use.
const MANIFEST: &str = r#"[package]
name = "team-depset"
version = "0.1.0"
edition = "2021"

[dependencies]
regex = "1"
chrono = "0.4"
itertools = "0.14"
tokio = { version = "1", features = ["rt", "macros"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"
"#;

/// The set, made once per manifest and kept between runs (vendoring needs the
/// network; everything after runs offline).
fn real_set() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()));
    let root = home.join(".cache/kiln/test-depsets");
    let dir = root.join(format!("real-{}", &sha256(MANIFEST.as_bytes())[..12]));
    if dir.join("resolved.json").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&root).unwrap();
    // One maker at a time across the test binaries of a run.
    let lock = std::fs::File::create(root.join(".lock")).unwrap();
    lock.lock().unwrap();
    if !dir.join("resolved.json").is_file() {
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("Cargo.toml"), MANIFEST).unwrap();
        // With a cargo home of its own: resolving against crates.io rewrites the
        // registry's index cache, which the farms of other tests, building offline
        // at the same moment, read (a first run on a fresh machine once saw
        // "no matching package named `serde_json`" in such a farm).
        let cargo_home = root.join("cargo-home");
        std::fs::create_dir_all(&cargo_home).unwrap();
        let own_home = std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
        for config in ["config.toml", "config", "credentials.toml"] {
            // A registry mirror or proxy the user configured applies here too.
            if own_home.join(config).is_file() {
                std::fs::copy(own_home.join(config), cargo_home.join(config)).unwrap();
            }
        }
        let made = Command::new(KILN)
            .env("CARGO_HOME", &cargo_home)
            .args(["depset", "create"])
            .arg(source.path().join("Cargo.toml"))
            .arg("-o")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(made.status.success(), "kiln depset create: {}", text(&made));
    }
    dir
}

fn fingerprint_of(set: &Path) -> String {
    let checked = Command::new(KILN).args(["depset", "check", "--no-build"]).arg(set).output().unwrap();
    assert!(checked.status.success(), "kiln depset check: {}", text(&checked));
    let out = String::from_utf8_lossy(&checked.stdout).to_string();
    out.rsplit("fingerprint ").next().unwrap().trim().to_owned()
}

/// A program that uses every crate of the set.
fn uses_everything(parent: &Path, name: &str, greeting: &str) -> PathBuf {
    let main = format!(
        r#"use itertools::Itertools;
#[derive(serde::Serialize)]
struct Summary {{ words: Vec<String>, date: String }}
#[tokio::main(flavor = "current_thread")]
async fn main() {{
    let re = regex::Regex::new(r"[a-z]+").unwrap();
    let words: Vec<String> = re.find_iter("{greeting} kiln farm").map(|m| m.as_str().to_owned()).sorted().dedup().collect();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 2).unwrap().format("%Y-%m-%d").to_string();
    let joined = tokio::spawn(async move {{ serde_json::to_string(&Summary {{ words, date }}).unwrap() }}).await.unwrap();
    println!("{{joined}}");
}}
"#
    );
    let deps = "regex = \"1\"\nchrono = \"0.4\"\nitertools = \"0.14\"\ntokio = { version = \"1\", features = [\"rt\", \"macros\"] }\nserde = { version = \"1\", features = [\"derive\"] }\nserde_json = \"1\"\n";
    write_program(parent, name, &[("Cargo.toml", &common::manifest(name, deps)), ("src/main.rs", &main)])
}

/// The vendored crate `name-<version>` of the set.
fn vendored(set: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(set.join("vendor"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            file.strip_prefix(&format!("{name}-")).is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("{name} is vendored in the set"))
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

/// A program whose operators are crates.io crates copied as they are (with their
/// dev-dependencies, benches and unused optional dependencies).
fn copied_crates(parent: &Path) -> PathBuf {
    let dir = parent.join("scan");
    std::fs::create_dir_all(dir.join("operators")).unwrap();
    let set = real_set();
    copy_dir(&vendored(&set, "memchr"), &dir.join("operators/memchr"));
    copy_dir(&vendored(&set, "aho-corasick"), &dir.join("operators/aho-corasick"));
    for krate in ["memchr", "aho-corasick"] {
        // The checksums belong to the vendored copy, not to a program.
        let _ = std::fs::remove_file(dir.join("operators").join(krate).join(".cargo-checksum.json"));
    }
    let deps = "memchr = { path = \"operators/memchr\" }\naho-corasick = { path = \"operators/aho-corasick\" }\n";
    std::fs::write(dir.join("Cargo.toml"), common::manifest("scan", deps)).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        r#"fn main() {
    let text = "the farm builds the kiln\nthe cache serves the farm\n";
    let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count();
    let ac = aho_corasick::AhoCorasick::new(["farm", "kiln", "cache"]).unwrap();
    let found: Vec<&str> = ac.find_iter(text).map(|m| &text[m.start()..m.end()]).collect();
    println!("{lines} lines: {}", found.join(","));
}
"#,
    )
    .unwrap();
    dir
}

/// `kiln up --depset` with a set of real crates builds a
/// program using all of them on each ordinal; a program of crates copied from
/// crates.io builds as it is and matches a plain `cargo build`; programs asking for
/// a crate, a version or a feature the set lacks are refused, naming it and what
/// the set has. Every record names the set's fingerprint.
#[tokio::test(flavor = "multi_thread")]
async fn a_farm_builds_programs_against_the_operators_set_and_refuses_what_it_lacks() {
    let set = real_set();
    let fingerprint = fingerprint_of(&set);
    assert_eq!(fingerprint.len(), 32, "{fingerprint}");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let leader = format!("--leader=http://127.0.0.1:{port}");
    let up_args: Vec<String> = vec![
        "up".into(),
        "--workers=2".into(),
        format!("--data-dir={}", dir.path().join(".kiln").display()),
        format!("--port={port}"),
        "--profile=dev".into(),
        format!("--depset={}", set.display()),
        format!("--depset-cache={}", common::depset_cache().display()),
        "--".into(),
        "--sccache=off".into(),
        "--no-api-token=true".into(),
    ];
    let mut up = spawn_kiln("kiln-up", dir.path(), &up_args);
    let mut farm = test_farm(0);
    farm.port = port;
    farm.wait_healthy(Duration::from_secs(900)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    assert_eq!(health["depset"], fingerprint.as_str(), "{health}");

    let programs = tempfile::tempdir().unwrap();
    let first = uses_everything(programs.path(), "everything", "hello");
    let second = uses_everything(programs.path(), "everything-again", "goodbye");
    let scan = copied_crates(programs.path());
    let kiln = |args: &[&str]| Command::new(KILN).args(args).current_dir(dir.path()).output().unwrap();
    let submitted = kiln(&[
        "submit",
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        scan.to_str().unwrap(),
        "--wait",
        "--timeout=10m",
        &leader,
    ]);
    assert!(submitted.status.success(), "{}", text(&submitted));
    let expected = [
        ("everything", "{\"words\":[\"farm\",\"hello\",\"kiln\"],\"date\":\"2026-12-02\"}\n".to_owned()),
        ("everything-again", "{\"words\":[\"farm\",\"goodbye\",\"kiln\"],\"date\":\"2026-12-02\"}\n".to_owned()),
    ];
    let mut ordinals = std::collections::BTreeSet::new();
    for (name, output) in &expected {
        let record = farm.pipeline(name).await;
        assert_eq!(record["status"], "success", "{record}");
        assert_eq!(record["depset"], fingerprint.as_str(), "the record names the set: {record}");
        ordinals.insert(record["worker"].as_u64().unwrap());
        let binary = dir.path().join(name);
        let download = kiln(&["download", name, "-o", binary.to_str().unwrap(), &leader]);
        assert!(download.status.success(), "{}", text(&download));
        let ran = Command::new(&binary).output().unwrap();
        assert_eq!(&String::from_utf8_lossy(&ran.stdout), output, "{name} prints its answer");
    }
    assert_eq!(ordinals.len(), 2, "built on each ordinal");

    // The copied crates build on the farm as they are, and as a plain cargo build.
    let binary = dir.path().join("scan-bin");
    let download = kiln(&["download", "scan", "-o", binary.to_str().unwrap(), &leader]);
    assert!(download.status.success(), "{}", text(&download));
    let on_farm = Command::new(&binary).output().unwrap();
    let plain_target = tempfile::tempdir().unwrap();
    let plain = Command::new("cargo")
        .arg("--config")
        .arg("source.crates-io.replace-with=\"vendored\"")
        .arg("--config")
        .arg(format!("source.vendored.directory={:?}", set.join("vendor").display().to_string()))
        .args(["run", "--offline", "--quiet"])
        .arg("--target-dir")
        .arg(plain_target.path())
        .current_dir(&scan)
        .output()
        .unwrap();
    assert!(plain.status.success(), "plain cargo build of the same program: {}", text(&plain));
    assert_eq!(String::from_utf8_lossy(&on_farm.stdout), String::from_utf8_lossy(&plain.stdout));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "2 lines: farm,kiln,cache,farm\n");

    // What the set lacks is refused at submission, naming it and what it has.
    for (name, deps, says) in [
        ("wants-rand", "rand = \"0.8\"\n", vec!["rand", "not in the farm's dependency set"]),
        ("old-regex", "regex = \"=1.10.0\"\n", vec!["regex =1.10.0", "dependency set has regex 1."]),
        (
            "tokio-fs",
            "tokio = { version = \"1\", features = [\"fs\"] }\n",
            vec!["feature `fs` of tokio", "built: ", "macros", "rt"],
        ),
    ] {
        let program = write_program(
            programs.path(),
            name,
            &[("Cargo.toml", &common::manifest(name, deps)), ("src/main.rs", "fn main() {}")],
        );
        let refused = kiln(&["submit", program.to_str().unwrap(), &leader]);
        assert!(!refused.status.success(), "{name} is refused");
        let message = text(&refused);
        for part in says {
            assert!(message.contains(part), "{name}: {message:?} should say {part:?}");
        }
    }

    let stopped = up.terminate();
    assert!(stopped.success(), "{stopped}");
    let left = processes_mentioning(dir.path().to_str().unwrap());
    assert!(left.is_empty(), "{left:?}");
}

/// A member started with another set is named in
/// /cluster_healthz (503) and given no work until it matches; the records name the
/// leader's set.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_with_another_set_gets_no_work_until_it_matches() {
    let set = real_set();
    let fingerprint = fingerprint_of(&set);
    let with_set = vec![format!("--depset={}", set.display())];
    let mut farm = test_farm(2);
    farm.start(Member { ordinal: 0, workers: 2, extra: with_set.clone() });
    // Member 1 runs the built-in set.
    farm.start(Member { ordinal: 1, workers: 2, extra: Vec::new() });
    let leader = farm.leader();
    wait_until("member 1 is named for its set", Duration::from_secs(900), Duration::from_millis(200), || async {
        let (status, body) = leader.cluster_health().await?;
        let message = body["members"][1]["message"].as_str().unwrap_or("").to_owned();
        if status == 503 && body["members"][0]["healthy"] == true && message.contains("dependency set") {
            Ok(message)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    // hello is id 1, so ordinal 1's.
    let submitted = leader.submit_dir("hello", &examples().join("hello")).await.unwrap();
    assert_eq!(submitted.worker, 1);
    let process = farm.member(0);
    wait_until("the leader refuses member 1 work", Duration::from_secs(120), Duration::from_millis(100), || {
        let output = process.output();
        async move { if output.contains("dependency set differs") { Ok(()) } else { Err("not yet".to_owned()) } }
    })
    .await;
    assert_eq!(leader.pipeline("hello").await.status, kiln_core::api::Status::Pending, "not handed to member 1");

    farm.start(Member { ordinal: 1, workers: 2, extra: with_set });
    let done = leader.wait_status("hello", &[kiln_core::api::Status::Success], Duration::from_secs(900)).await;
    assert_eq!(done.depset.as_deref(), Some(fingerprint.as_str()));
    farm.wait_healthy(Duration::from_secs(60)).await;
}

/// `kiln depset check` names the vendored crate whose file was
/// altered, and a member refuses to install such a set.
#[test]
fn an_altered_set_is_refused_naming_the_crate() {
    let set = real_set();
    let copy = tempfile::tempdir().unwrap();
    let altered = copy.path().join("set");
    // Hard links: cheap, and the file is replaced below, never written through.
    let status = Command::new("cp").arg("-al").arg(&set).arg(&altered).status().unwrap();
    assert!(status.success());
    let itertools = vendored(&altered, "itertools");
    let lib = itertools.join("src/lib.rs");
    let mut source = std::fs::read_to_string(&lib).unwrap();
    source.push_str("\npub fn planted() {}\n");
    std::fs::remove_file(&lib).unwrap();
    std::fs::write(&lib, source).unwrap();
    let checked = Command::new(KILN).args(["depset", "check", "--no-build"]).arg(&altered).output().unwrap();
    assert!(!checked.status.success());
    let message = text(&checked);
    assert!(message.contains("itertools") && message.contains("src/lib.rs was changed"), "{message}");
    assert!(
        std::fs::read_to_string(itertools_of(&set)).unwrap() != std::fs::read_to_string(&lib).unwrap(),
        "the original set is untouched"
    );
}

fn itertools_of(set: &Path) -> PathBuf {
    vendored(set, "itertools").join("src/lib.rs")
}
