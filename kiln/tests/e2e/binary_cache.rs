//! The leader's binary cache end to end: real `kiln` members, real sandboxed
//! builds. A program built before (same source, dependency set and build
//! settings) is served at once under any name; anything else is built; and the
//! reason that is honest: two farms with the same settings build the same bytes.

use crate::common;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{Farm, KILN, Member, copy_program, examples, sha256, test_farm, text};
use kiln_core::api::Status;

const ENDED: [Status; 4] = [Status::Success, Status::CompileError, Status::SystemError, Status::Cancelled];

async fn started(farm: &mut Farm) {
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_built_before_is_served_at_once_under_any_name_and_nothing_else_is() {
    let mut farm = test_farm(1);
    started(&mut farm).await;
    let leader = farm.leader();
    let hello = examples().join("hello");

    let first = leader.submit_dir("hello", &hello).await.unwrap();
    assert_eq!((first.status, first.binary_cache_hit.as_ref()), (Status::Pending, None), "nothing built yet");
    let first = leader.wait_status("hello", &ENDED, Duration::from_secs(600)).await;
    assert_eq!(first.status, Status::Success, "{first:?}");
    let sha = first.binary_sha256.clone().unwrap();

    // Another team submits the same program under its own name: the answer to the
    // submission itself is the success, with the binary built before.
    let again = leader.submit_dir("hello-for-team-b", &hello).await.unwrap();
    assert_eq!(again.status, Status::Success, "served without a build: {again:?}");
    assert_eq!(again.binary_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(again.binary_size, first.binary_size);
    let hit = again.binary_cache_hit.clone().expect("recorded as a binary cache hit");
    assert_eq!((hit.pipeline_id, hit.version), (first.id, first.version));
    assert_eq!(Some(hit.saved_ms), first.compile_ms, "the build it did not need is what it saved");
    assert_eq!(again.attempt, 0, "no worker was handed it");
    assert!(!again.history.iter().any(|e| e.event.contains("claimed")), "{:?}", again.history);

    // The log, the binary, the metrics and the command line say so.
    let url = farm.url();
    let log = farm.http.get(format!("{url}/v0/pipelines/hello-for-team-b/log")).send().await.unwrap();
    let log = log.text().await.unwrap();
    assert!(log.contains("binary cache hit") && log.contains(&sha), "{log}");
    let binary = farm.http.get(format!("{url}/v0/pipelines/hello-for-team-b/binary")).send().await.unwrap();
    assert_eq!(binary.status(), 200);
    assert_eq!(sha256(&binary.bytes().await.unwrap()), sha, "the binary served is the one built");
    let metrics = farm.http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "kiln_binary_cache_hits_total 1"), "{metrics}");
    let cli = Command::new(KILN)
        .args(["submit", "--name", "hello-for-ci", "--wait"])
        .arg(&hello)
        .arg(format!("--leader={url}"))
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", text(&cli));
    assert!(
        text(&cli).contains("success from the binary cache, built before as pipeline 1 version 1"),
        "{}",
        text(&cli)
    );

    // Hostile near-misses: one more line in one file is another program, built
    // on its own; the cache serves nothing it was not asked for exactly.
    let changed = farm.dir.path().join("hello-changed");
    copy_program(&hello, &changed);
    let main = changed.join("src/main.rs");
    let source = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{source}\n// one more line\n")).unwrap();
    let other = leader.submit_dir("hello-changed", &changed).await.unwrap();
    assert_eq!((other.status, other.binary_cache_hit.as_ref()), (Status::Pending, None), "{other:?}");
    let other = leader.wait_status("hello-changed", &ENDED, Duration::from_secs(600)).await;
    assert_eq!((other.status, other.attempt), (Status::Success, 1), "built by its worker: {other:?}");

    // Nothing lost: the first pipeline is as it was, and the farm is healthy.
    let first_now = leader.pipeline("hello").await;
    assert_eq!((first_now.status, first_now.binary_sha256.as_deref()), (Status::Success, Some(sha.as_str())));
    farm.wait_healthy(Duration::from_secs(30)).await;
}

/// The same build root path for both farms (each member sees its own directory
/// there, through a private mount), as every member of one farm does.
fn repro_root() -> PathBuf {
    PathBuf::from("/tmp/kiln-test-repro-root")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_farms_with_the_same_settings_build_the_same_bytes() {
    common::require_root("both farms build at one path through private mount namespaces");
    let mut shas = Vec::new();
    for farm_number in 0..2 {
        let mut farm = test_farm(1);
        farm.shared_build_root = Some(repro_root());
        started(&mut farm).await;
        let leader = farm.leader();
        // The word count links the pipeline runtime and serde from the dependency
        // set: paths of the build root and of cargo's registry are in its binary.
        leader.submit_dir("wordcount", &examples().join("wordcount")).await.unwrap();
        let built = leader.wait_status("wordcount", &ENDED, Duration::from_secs(600)).await;
        assert_eq!((built.status, built.attempt), (Status::Success, 1), "farm {farm_number} built it: {built:?}");
        shas.push(built.binary_sha256.unwrap());
        farm.kill(0);
    }
    assert_eq!(shas[0], shas[1], "the same program, set and settings give the same binary on another farm");
}

/// A build profile per pipeline: the same source submitted with `--profile dev`
/// and `--profile release` gives two binaries, each record naming its profile,
/// both running; the member prebuilds the release set the first time a pipeline
/// asks for it. The binary cache serves each profile its own binary and never one
/// for the other; an unknown profile is refused with the known ones, storing
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn each_profile_gets_its_own_binary_and_the_binary_cache_keeps_them_apart() {
    let mut farm = test_farm(1);
    started(&mut farm).await; // the farm's profile is dev (the tests' preset)
    let leader = farm.leader();
    let hello = examples().join("hello");
    let url = farm.url();
    let submit = |name: &str, profile: &str| {
        Command::new(KILN)
            .args(["submit", hello.to_str().unwrap(), "--name", name, "--profile", profile, &format!("--leader={url}")])
            .output()
            .unwrap()
    };

    let refused = submit("hello-turbo", "turbo");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("unknown build profile \"turbo\": the known profiles are dev, release"),
        "{}",
        text(&refused)
    );
    assert!(leader.pipelines().await.is_empty(), "nothing stored");

    let mut binaries = Vec::new();
    for profile in ["dev", "release"] {
        let name = format!("hello-{profile}");
        let submitted = submit(&name, profile);
        assert!(submitted.status.success(), "{}", text(&submitted));
        assert!(text(&submitted).contains(&format!(", {profile})")), "{}", text(&submitted));
        let record = leader.wait_status(&name, &ENDED, Duration::from_secs(900)).await;
        assert_eq!((record.status, record.profile.as_deref()), (Status::Success, Some(profile)), "{record:?}");
        let binary =
            farm.http.get(format!("{url}/v0/pipelines/{name}/binary")).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(sha256(&binary), record.binary_sha256.clone().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(&name);
        std::fs::write(&path, &binary).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ran = Command::new(&path).output().unwrap();
        assert_eq!(text(&ran), "Hello From The Kiln Farm (5 words)\n", "{profile}");
        binaries.push((record.id, record.binary_sha256.unwrap()));
    }
    assert_ne!(binaries[0].1, binaries[1].1, "two profiles, two binaries");
    let log = farm.member_log(0);
    let prebuilt = log.lines().find(|l| l.contains("dependency set prebuilt in this profile"));
    eprintln!("{}", prebuilt.expect("the release set was prebuilt on demand"));

    // Served from the binary cache, each profile its own.
    for (profile, (id, sha)) in ["dev", "release"].iter().zip(&binaries) {
        let name = format!("hello-{profile}-again");
        let submitted = submit(&name, profile);
        assert!(submitted.status.success(), "{}", text(&submitted));
        let record = leader.pipeline(&name).await;
        assert_eq!(record.status, Status::Success, "{record:?}");
        assert_eq!(record.binary_cache_hit.as_ref().map(|hit| hit.pipeline_id), Some(*id), "{profile}: {record:?}");
        assert_eq!(record.binary_sha256.as_ref(), Some(sha));
    }
}
