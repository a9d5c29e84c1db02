//! End-to-end tests of a farm that runs for months: files no pipeline
//! references are collected after the retention, a claim its worker stops
//! reporting goes back to pending after the lease, and a stored binary that fails
//! its hash is rebuilt while downloads say so. Real `kiln server` processes; the
//! silent worker of the lease test is a gRPC client of the test's own, since a
//! real worker that hangs cannot be made to on purpose.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Farm, KILN, Member, TOKEN, manifest, sha256, test_farm, text, wait_until, write_program};
use kiln_proto::cluster_client::ClusterClient;

fn program(parent: &Path, name: &str, greeting: &str) -> PathBuf {
    let main = format!("fn main() {{ println!(\"{greeting}\"); }}\n");
    write_program(parent, name, &[("Cargo.toml", &manifest(name, "")), ("src/main.rs", &main)])
}

async fn submit(farm: &Farm, name: &str, dir: &Path) -> u64 {
    farm.leader().submit_dir(name, dir).await.unwrap().id
}

fn artifact(farm: &Farm, sha: &str) -> PathBuf {
    farm.member_dir(0).join("artifacts").join(sha)
}

/// The value of `/metrics` line `name{labels}`.
async fn metric(farm: &Farm, line: &str) -> f64 {
    let text = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
}

/// Downloads pipeline `key` with the CLI (which verifies the SHA-256) and runs it.
fn download_and_run(farm: &Farm, key: &str) -> String {
    let binary = farm.dir.path().join(format!("{key}-downloaded"));
    let _ = std::fs::remove_file(&binary);
    let download =
        Command::new(KILN).args(["download", key, "-o"]).arg(&binary).arg(format!("--leader={}", farm.url())).output();
    let download = download.unwrap();
    assert!(download.status.success(), "{}", text(&download));
    String::from_utf8_lossy(&Command::new(&binary).output().unwrap().stdout).into_owned()
}

/// With `--retention 2s`, a deleted pipeline's binary and source
/// are removed shortly after; a pipeline sharing them keeps them, and still
/// downloads.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_pipelines_files_go_after_the_retention_and_shared_ones_stay() {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec!["--retention=2s".into()] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let shared = program(farm.dir.path(), "shared", "built once, used twice");
    let alone = program(farm.dir.path(), "alone", "nobody else's");
    for (name, dir) in [("first", &shared), ("second", &shared), ("alone", &alone)] {
        submit(&farm, name, dir).await;
    }
    let mut shas = Vec::new();
    for name in ["first", "second", "alone"] {
        let done =
            farm.wait_status(name, &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
        assert_eq!(done["status"], "success", "{done}");
        shas.push(done["binary_sha256"].as_str().unwrap().to_owned());
    }
    assert_eq!(shas[0], shas[1], "one program under two names is one binary");
    assert_eq!(metric(&farm, "kiln_stored_objects{kind=\"source\"}").await, 2.0);
    assert_eq!(metric(&farm, "kiln_stored_objects{kind=\"artifact\"}").await, 2.0);

    for name in ["first", "alone"] {
        let response = farm.http.delete(format!("{}/v0/pipelines/{name}", farm.url())).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let gone = artifact(&farm, &shas[2]);
    wait_until("the deleted pipeline's binary is removed", Duration::from_secs(60), Duration::from_millis(100), || {
        let exists = gone.exists();
        async move { if exists { Err("still there".to_owned()) } else { Ok(()) } }
    })
    .await;
    wait_until("its source is removed", Duration::from_secs(60), Duration::from_millis(100), || async {
        let sources = metric(&farm, "kiln_stored_objects{kind=\"source\"}").await;
        if sources == 1.0 { Ok(()) } else { Err(format!("{sources} sources")) }
    })
    .await;
    assert!(artifact(&farm, &shas[0]).is_file(), "the binary that `second` still uses stays");
    assert_eq!(metric(&farm, "kiln_stored_objects{kind=\"artifact\"}").await, 1.0);
    assert_eq!(metric(&farm, "kiln_unreferenced_objects{kind=\"source\"}").await, 0.0);
    assert_eq!(download_and_run(&farm, "second"), "built once, used twice\n");
    // The shared source is still there: submitting it again changes nothing.
    let again = farm.leader().submit_dir("second", &shared).await.unwrap();
    assert_eq!(again.status.as_str(), "success");
}

/// A byte of a stored binary flipped on disk. The next download
/// answers 503 "being rebuilt" (not 404), every pipeline that used that binary is
/// built again (attempt 2, the reason in its history), and the new download
/// verifies and runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_binary_is_rebuilt_and_downloads_say_so_meanwhile() {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec![] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let dir = program(farm.dir.path(), "fragile", "rebuilt after a bad disk");
    for name in ["fragile", "twin"] {
        submit(&farm, name, &dir).await;
        let done =
            farm.wait_status(name, &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    let sha = farm.pipeline("fragile").await["binary_sha256"].as_str().unwrap().to_owned();
    let twin = farm.pipeline("twin").await;
    assert_eq!(twin["binary_cache_hit"]["pipeline_id"], 1, "the twin was served fragile's binary: {twin}");
    let path = artifact(&farm, &sha);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let response = farm.http.get(format!("{}/v0/pipelines/fragile/binary", farm.url())).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "being_rebuilt", "{body}");
    assert!(body["error"].as_str().unwrap().contains("being rebuilt"), "{body}");
    assert!(sha256(&std::fs::read(&path).unwrap_or_default()) != sha, "the corrupt file is not kept as it was");

    // Both are built again (the twin for the first time: it had been served from
    // the binary cache, which no longer offers the lost binary).
    for (name, attempt) in [("fragile", 2), ("twin", 1)] {
        let done =
            farm.wait_status(name, &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
        assert_eq!(done["status"], "success", "{done}");
        assert_eq!(done["attempt"], attempt, "{done}");
        assert!(done["binary_cache_hit"].is_null(), "built, not served: {done}");
        let history = done["history"].to_string();
        assert!(history.contains("failed its hash"), "{history}");
    }
    assert_eq!(download_and_run(&farm, "fragile"), "rebuilt after a bad disk\n");
    assert_eq!(download_and_run(&farm, "twin"), "rebuilt after a bad disk\n");
    assert!(farm.member(0).running());
}

/// A worker that claims a build and then stops reporting it
/// (a gRPC client of the test's: it claims, then heartbeats naming no build) has
/// it put back to pending for its ordinal after the lease, the reason in the
/// record's history; the real worker of that ordinal then builds it (attempt 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_its_worker_stops_reporting_goes_back_after_the_lease() {
    let mut farm = test_farm(2);
    farm.start(Member { ordinal: 0, workers: 2, extra: vec!["--claim-lease=2s".into()] });
    farm.wait_leader(Duration::from_secs(300)).await;
    let dir = program(farm.dir.path(), "orphan", "built by the real worker");
    let id = submit(&farm, "orphan", &dir).await;
    assert_eq!(id % 2, 1, "the first pipeline is ordinal 1's");

    let mut client = ClusterClient::connect(farm.url()).await.unwrap();
    let silent = kiln_proto::Member { ordinal: 1, workers: 2, incarnation: 0x5113, version: "0.1.0".into() };
    let with_token = |message| {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request
    };
    let depset = {
        let (_, health) = farm.get_json("/cluster_healthz").await;
        health["depset"].as_str().expect("the leader names its dependency set").to_owned()
    };
    let claimed = client
        .claim(with_token(kiln_proto::ClaimRequest { member: Some(silent.clone()), wait_ms: 10_000, depset }))
        .await
        .unwrap()
        .into_inner();
    let claim = claimed.assignment.expect("the silent worker got the build").claim.unwrap();
    assert_eq!((claim.pipeline_id, claim.attempt), (id, 1));

    // Alive, heartbeating, but no longer naming the build.
    let beating = tokio::spawn({
        let mut client = client.clone();
        let heartbeat = kiln_proto::HeartbeatRequest { member: Some(silent.clone()), ..Default::default() };
        async move {
            loop {
                let mut request = tonic::Request::new(heartbeat.clone());
                request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                let _ = client.heartbeat(request).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    let requeued = farm.wait_status("orphan", &["pending"], Duration::from_secs(60)).await;
    beating.abort();
    assert_eq!((requeued["worker"].as_u64(), requeued["attempt"].as_u64()), (Some(1), Some(1)), "{requeued}");
    let history = requeued["history"].to_string();
    assert!(history.contains("claim lease"), "the reason is in the history: {history}");

    farm.start(Member { ordinal: 1, workers: 2, extra: vec![] });
    let done =
        farm.wait_status("orphan", &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!((done["worker"].as_u64(), done["attempt"].as_u64()), (Some(1), Some(2)), "{done}");
    assert_eq!(download_and_run(&farm, "orphan"), "built by the real worker\n");
}

/// A small volume mounted for a test (tmpfs), with a directory of the real disk
/// bound inside it; both unmounted when dropped, even when the test fails.
struct SmallVolume {
    at: PathBuf,
    bound: Vec<PathBuf>,
}

impl SmallVolume {
    fn mount(at: &Path, mib: u64) -> SmallVolume {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "kiln-test-volume"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        SmallVolume { at: at.to_owned(), bound: Vec::new() }
    }

    /// Binds `real` (on the real disk) at `inside` of the volume.
    fn bind(&mut self, real: &Path, inside: &str) {
        let target = self.at.join(inside);
        std::fs::create_dir_all(real).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        assert!(Command::new("mount").arg("--bind").arg(real).arg(&target).status().unwrap().success());
        self.bound.push(target);
    }

    /// Fills the volume with a file until `leave` bytes are free (about).
    fn fill(&self, name: &str, leave: u64) {
        use std::io::Write;
        let stat = nix::sys::statvfs::statvfs(&self.at).unwrap();
        let free = stat.blocks_available() * stat.fragment_size();
        let mut file = std::fs::File::create(self.at.join(name)).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = file.sync_all();
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        for bound in self.bound.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(bound).status();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// The leader's data volume (a 48 MiB tmpfs made for the test;
/// the build root is bound in from the real disk) fills up. An upload that does not
/// fit is refused as "disk full" and retried, not lost; past the critical watermark
/// `/healthz` and `/cluster_healthz` name the volume and no work is handed out; a
/// submission is stored or refused with 507, never a 500; what was stored stays
/// downloadable. Once space is freed the farm builds again, the upload goes
/// through, and nothing was restarted.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_volume_loses_nothing_and_the_farm_builds_again_once_space_is_freed() {
    common::require_root("mounting a small volume");
    let mut farm = test_farm(2);
    let real_build = tempfile::tempdir().unwrap();
    let mut volume = SmallVolume::mount(&farm.member_dir(0), 48);
    volume.bind(real_build.path(), "build");
    // The product's default watermarks, not the test kit's.
    let marks = kiln_core::disk::Watermarks::default();
    let watermarks = || {
        vec![format!("--disk-high-watermark={}", marks.high), format!("--disk-critical-watermark={}", marks.critical)]
    };
    farm.start(Member { ordinal: 0, workers: 2, extra: watermarks() });
    farm.start(Member { ordinal: 1, workers: 2, extra: watermarks() });
    farm.wait_healthy(Duration::from_secs(300)).await;

    let before = program(farm.dir.path(), "before", "stored before the disk filled");
    submit(&farm, "before", &before).await;
    let done =
        farm.wait_status("before", &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
    assert_eq!(done["status"], "success", "{done}");

    // Room for the catalog, not for a binary of 16 MiB and more.
    volume.fill("filler-1", 6 << 20);
    let big_main = "static DATA: [u8; 16 << 20] = [7; 16 << 20];\n\
                    fn main() { println!(\"big: {}\", std::hint::black_box(&DATA).iter().map(|b| *b as u64).sum::<u64>()); }\n";
    let big = write_program(farm.dir.path(), "big", &[("Cargo.toml", &manifest("big", "")), ("src/main.rs", big_main)]);
    let big_id = submit(&farm, "big", &big).await;
    assert_eq!(big_id % 2, 0, "the leader's own worker builds it");
    let leader_log = farm.member(0).log.clone();
    wait_until("the upload is refused for a full disk", Duration::from_secs(300), Duration::from_millis(100), || {
        let log = std::fs::read_to_string(&leader_log).unwrap_or_default();
        async move { if log.contains("disk is full") { Ok(()) } else { Err("not yet".to_owned()) } }
    })
    .await;
    assert_eq!(farm.pipeline("big").await["status"], "uploading", "waiting to deliver, not failed");

    // Past the critical watermark: the health endpoints say so, no work goes out.
    volume.fill("filler-2", 0);
    let (status, health) = farm.get_json("/healthz").await;
    assert_eq!(status, 503, "{health}");
    assert!(health["reason"].as_str().unwrap().contains("data volume"), "{health}");
    let (status, cluster) = farm.get_json("/cluster_healthz").await;
    assert_eq!(status, 503, "{cluster}");
    assert!(cluster["members"][0]["message"].as_str().unwrap().contains("data volume"), "{cluster}");
    assert_eq!(download_and_run(&farm, "before"), "stored before the disk filled\n", "stored binaries still serve");
    let during = program(farm.dir.path(), "during", "submitted while the disk was full");
    let body = serde_json::json!({"name": "during", "files": [
        {"path": "Cargo.toml", "content_base64": base64_of(&std::fs::read(during.join("Cargo.toml")).unwrap())},
        {"path": "src/main.rs", "content_base64": base64_of(&std::fs::read(during.join("src/main.rs")).unwrap())},
    ]});
    let response = farm.http.post(format!("{}/v0/pipelines", farm.url())).json(&body).send().await.unwrap();
    let answered = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(answered == 201 || (answered == 507 && text.contains("disk is full")), "{answered}: {text}");

    // Space is back: everything resumes without a restart.
    std::fs::remove_file(volume.at.join("filler-1")).unwrap();
    std::fs::remove_file(volume.at.join("filler-2")).unwrap();
    let done = farm.wait_status("big", &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["attempt"], 1, "the same build, delivered late: {done}");
    if answered == 507 {
        submit(&farm, "during", &during).await;
    }
    let done =
        farm.wait_status("during", &["success", "compile_error", "system_error"], Duration::from_secs(300)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(download_and_run(&farm, "during"), "submitted while the disk was full\n");
    assert_eq!(download_and_run(&farm, "big"), format!("big: {}\n", 7u64 * (16 << 20)));
    assert_eq!(download_and_run(&farm, "before"), "stored before the disk filled\n", "nothing stored was lost");
    farm.wait_healthy(Duration::from_secs(60)).await;
    assert!(farm.member(0).running() && farm.member(1).running(), "no member was restarted");
}

/// A member whose volume is always above its high watermark (1 %) prunes every
/// crate and older layer it can before each claim: it still builds each version
/// and each profile, the first release build prebuilding the release set in a
/// build root whose last workspace names crates pruned since.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_prunes_before_every_claim_still_builds_every_version_and_profile() {
    let mut farm = test_farm(1);
    let watermarks = vec!["--disk-high-watermark=1".to_owned(), "--disk-critical-watermark=100".to_owned()];
    farm.start(Member { ordinal: 0, workers: 1, extra: watermarks });
    farm.wait_healthy(Duration::from_secs(300)).await;
    let url = farm.url();
    let submit = |dir: &Path, name: &str, profile: &str| {
        let output = Command::new(KILN)
            .arg("submit")
            .arg(dir)
            .args(["--name", name, "--profile", profile, "--wait", "--timeout=15m", &format!("--leader={url}")])
            .output()
            .unwrap();
        assert!(output.status.success(), "{name} ({profile}) builds: {}", text(&output));
    };
    let first = program(farm.dir.path(), "pruned", "version one");
    submit(&first, "pruned", "dev");
    assert_eq!(download_and_run(&farm, "pruned"), "version one\n");
    std::fs::write(first.join("src/main.rs"), "fn main() { println!(\"version two\"); }\n").unwrap();
    submit(&first, "pruned", "dev");
    assert_eq!(download_and_run(&farm, "pruned"), "version two\n");
    submit(&first, "pruned-release", "release");
    assert_eq!(download_and_run(&farm, "pruned-release"), "version two\n");
    let log = farm.member_log(0);
    assert!(log.contains("pruned the least recently used crates"), "the member pruned before its claims");
    assert!(log.contains("dependency set prebuilt in this profile"), "the release set was prebuilt on demand");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The list API pages: pages follow the `Link` header to the
/// end, filters by status and name prefix hold, `kiln status` sees every page, and
/// hostile queries get a 400 that says what was wrong (or, for a name, are only
/// ever echoed encoded), never a 500 or a forged header.
#[tokio::test(flavor = "multi_thread")]
async fn the_list_pages_and_refuses_hostile_queries_in_words() {
    let mut farm = test_farm(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: vec![] });
    farm.wait_healthy(Duration::from_secs(300)).await;
    for n in 0..5 {
        let name = if n % 2 == 0 { format!("even-{n}") } else { format!("odd-{n}") };
        submit(&farm, &name, &program(farm.dir.path(), &name, &name)).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v0/pipelines?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let response = farm.http.get(format!("{}{path}", farm.url())).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let next = response.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<serde_json::Value> = response.json().await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| r["id"].as_u64().unwrap()));
        pages += 1;
        match next {
            Some(link) => path = link.trim_start_matches('<').split('>').next().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!((seen, pages), (vec![1, 2, 3, 4, 5], 3));
    let (_, odd) = farm.get_json("/v0/pipelines?name=odd-").await;
    let names: Vec<&str> = odd.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["odd-1", "odd-3"]);

    let status =
        Command::new(KILN).args(["status", "--json"]).arg(format!("--leader={}", farm.url())).output().unwrap();
    assert!(status.status.success(), "{}", text(&status));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(listed.len(), 5, "kiln status lists every pipeline");

    for (query, says) in [
        ("limit=0", "limit must be between 1 and 5000"),
        ("limit=99999999999999999999", "limit must be a whole number"),
        ("limit=-1", "limit must be a whole number"),
        ("after=abc", "after must be a whole number"),
        ("status=exploded", "status \"exploded\" is not a status"),
    ] {
        let response = farm.http.get(format!("{}/v0/pipelines?{query}", farm.url())).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(says), "{query}: {body}");
    }
    // A name prefix that tries to end the header and start another is only echoed
    // percent-encoded in the next page's link.
    let evil = "/v0/pipelines?limit=1&name=%0D%0ASet-Cookie:%20x=1%0D%0A";
    let response = farm.http.get(format!("{}{evil}", farm.url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(farm.member(0).running());
}
