//! Tests of the leader's operations as a worker and a user call them: a real
//! catalog and artifact store in a temporary directory, no sockets, no
//! processes. Time is never waited out: a lease runs out by looking ahead of the
//! clock.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_core::api::{CacheFigures, CacheSettings, Status};
use kiln_core::depset::DepSet;
use kiln_core::disk::Watermarks;
use kiln_core::program::ProgramFile;
use kiln_core::scaling::ScalingGuard;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{LeaderConfig, LeaderState, MemberId};
use crate::error::ApiError;
use crate::health::MemberReport;
use crate::rules::{Figures, Pipeline, Report};

/// The members of the test farm: the leader (ordinal 0) and one worker.
const WORKERS: u32 = 2;
/// The build settings fingerprint the farm's members report.
const SETTINGS: &str = "settings-of-the-farm";

fn config(data_dir: &Path) -> LeaderConfig {
    LeaderConfig {
        data_dir: data_dir.to_owned(),
        workers: WORKERS,
        version: "test".into(),
        cluster_token: "cluster-token".into(),
        api_token: None,
        heartbeat_window: Duration::from_secs(10),
        max_artifact_bytes: 1 << 20,
        n_from_kubernetes: false,
        protect_metrics: false,
        depset: DepSet::embedded(),
        retention: Duration::from_secs(3600),
        claim_lease: Duration::from_secs(60),
        failover_after: Duration::from_secs(20),
        // However full the test machine's disk, these tests are about claims:
        // no watermark stops the leader handing out work.
        watermarks: Watermarks { high: f64::INFINITY, critical: f64::INFINITY },
        cache_settings: CacheSettings::default(),
        serves_tls: false,
        binary_cache: None,
        default_profile: "release".into(),
        max_connections: 16,
    }
}

/// A leader over a fresh data directory, its configuration changed by `change`.
fn leader(change: impl FnOnce(&mut LeaderConfig)) -> (tempfile::TempDir, LeaderState) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    change(&mut config);
    let leader = LeaderState::open(config, ScalingGuard::new(WORKERS)).unwrap();
    (dir, leader)
}

fn member(ordinal: u32, incarnation: u64) -> MemberId {
    MemberId { ordinal, workers: WORKERS, incarnation }
}

/// What `member` says in a heartbeat: healthy, idle, the leader's dependency set.
fn heartbeat_of(leader: &LeaderState, member: MemberId) -> MemberReport {
    MemberReport {
        workers: WORKERS,
        version: "test".into(),
        incarnation: member.incarnation,
        cache_healthy: true,
        cache_message: String::new(),
        preparing: false,
        sandbox: "none (test)".into(),
        sandbox_unavailable: false,
        depset: leader.config.depset.fingerprint().to_owned(),
        disk_used_percent: 10.0,
        disk_critical: String::new(),
        building: None,
        cpus: "all 2 CPUs (not pinned); cargo -j 2 (its default)".into(),
    }
}

fn program(main: &str) -> Vec<ProgramFile> {
    let file = |path: &str, content: &str| ProgramFile {
        path: path.into(),
        content: content.as_bytes().to_vec(),
        executable: false,
    };
    vec![
        file("Cargo.toml", "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        file("src/main.rs", main),
    ]
}

/// `member`'s claim, answered at once: its next pipeline, or None.
async fn claim(leader: &LeaderState, member: MemberId) -> Option<(Pipeline, Vec<ProgramFile>)> {
    let depset = leader.config.depset.fingerprint().to_owned();
    leader.claim(member, &depset, Duration::ZERO).await.unwrap()
}

/// Stores `bytes` as an artifact, as an upload's bytes are: its hash and size.
async fn store(leader: &LeaderState, bytes: &[u8]) -> (String, u64) {
    let sha = hex::encode(Sha256::digest(bytes));
    let mut writer = leader.artifacts.begin(&sha, bytes.len() as u64).unwrap();
    writer.write(bytes.to_vec()).await.unwrap();
    let size = writer.finish().await.unwrap();
    (sha, size)
}

fn uploading() -> Report {
    Report::Uploading { compile_ms: 5, cache: CacheFigures::default() }
}

fn success(sha: &str) -> Report {
    Report::Success {
        binary_sha256: sha.into(),
        // The worker's word; the leader records its own measure of the upload.
        binary_size: 1,
        figures: Figures::default(),
        build_settings: SETTINGS.into(),
        ran_submitted_code: false,
    }
}

/// `member` claims its next pipeline and builds it into `binary`, as a worker does.
async fn build(leader: &LeaderState, member: MemberId, binary: &[u8]) -> Pipeline {
    let (record, _) = claim(leader, member).await.expect("a pipeline to build");
    let key = record.claim_key();
    leader.report(member, key, uploading(), None).await.unwrap();
    let (sha, size) = store(leader, binary).await;
    leader.uploaded(member, key, sha.clone(), size).await.unwrap();
    leader.report(member, key, success(&sha), Some("built".into())).await.unwrap()
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, ApiError>) -> bool {
    matches!(result, Err(ApiError::Conflict(_)))
}

#[tokio::test]
async fn a_claim_hands_a_member_its_ordinals_pipeline_and_another_ordinal_nothing() {
    let (_dir, leader) = leader(|_| {});
    let submitted = leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap().record;
    assert_eq!((submitted.id, submitted.worker, submitted.status), (1, 1, Status::Pending));

    assert!(claim(&leader, member(0, 10)).await.is_none(), "pipeline 1 is ordinal 1's, not ordinal 0's");
    let (claimed, source) = claim(&leader, member(1, 11)).await.expect("ordinal 1 gets its pipeline");
    assert_eq!((claimed.id, claimed.status, claimed.attempt), (1, Status::Compiling, 1));
    assert_eq!(source, program("fn main() {}"), "the claim carries the submitted source");
    assert_eq!(leader.find("alpha").await.unwrap().status, Status::Compiling);
    assert!(claim(&leader, member(1, 11)).await.is_none(), "a pipeline is handed out once");
}

#[tokio::test]
async fn a_build_that_uploads_its_binary_and_reports_success_ends_success() {
    let (_dir, leader) = leader(|_| {});
    leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap();
    let holder = member(1, 11);
    let (claimed, _) = claim(&leader, holder).await.unwrap();
    let key = claimed.claim_key();
    assert_eq!(leader.report(holder, key, uploading(), None).await.unwrap().status, Status::Uploading);

    let absent = leader.report(holder, key, success(&"f".repeat(64)), None).await;
    assert!(matches!(absent, Err(ApiError::NotFound(_))), "success names a binary the leader holds: {absent:?}");
    let (sha, size) = store(&leader, b"the binary").await;
    let not_recorded = leader.report(holder, key, success(&sha), None).await;
    assert!(is_conflict(&not_recorded), "stored, but not uploaded under this claim: {not_recorded:?}");

    leader.holds(holder, key).await.unwrap();
    leader.uploaded(holder, key, sha.clone(), size).await.unwrap();
    let done = leader.report(holder, key, success(&sha), Some("the log".into())).await.unwrap();
    assert_eq!(
        (done.status, done.binary_sha256.as_deref(), done.binary_size),
        (Status::Success, Some(&*sha), Some(size))
    );

    let (found, log) = leader.log("alpha").await.unwrap();
    assert_eq!((found, log.as_deref()), (done, Some("the log")));
    let (served, mut file, served_size) = leader.open_binary(&leader.find("1").await.unwrap()).await.unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();
    assert_eq!((served, served_size, bytes.as_slice()), (sha, size, b"the binary".as_slice()));
}

#[tokio::test]
async fn reports_and_uploads_from_another_ordinal_are_refused_and_change_nothing() {
    let (_dir, leader) = leader(|_| {});
    leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap();
    let (holder, stranger) = (member(1, 11), member(0, 10));
    let (claimed, _) = claim(&leader, holder).await.unwrap();
    let key = claimed.claim_key();
    let (sha, size) = store(&leader, b"the binary").await;
    let before = leader.find("alpha").await.unwrap();

    for report in [Report::Compiling, uploading(), success(&sha)] {
        let refused = leader.report(stranger, key, report, Some("not mine".into())).await;
        assert!(is_conflict(&refused), "{refused:?}");
        assert!(format!("{refused:?}").contains("claimed by ordinal 1"), "{refused:?}");
    }
    assert!(is_conflict(&leader.uploaded(stranger, key, sha.clone(), size).await));
    assert!(is_conflict(&leader.holds(stranger, key).await));
    let drop_it = leader.heartbeat(stranger, heartbeat_of(&leader, stranger), Some(key)).await.unwrap();
    assert!(drop_it, "a member naming another's build is told to drop it");

    assert_eq!(leader.find("alpha").await.unwrap(), before);
    assert_eq!(leader.log("alpha").await.unwrap().1, None, "the refused report's log was not kept");
    leader.uploaded(holder, key, sha.clone(), size).await.unwrap();
    assert_eq!(leader.report(holder, key, success(&sha), None).await.unwrap().status, Status::Success);
}

#[tokio::test]
async fn an_old_incarnations_reports_and_uploads_are_refused_and_change_nothing() {
    let (_dir, mut leader) = leader(|_| {});
    // As if the leader had been up longer than a heartbeat window, so that a
    // member it has not heard from within one is not alive any more.
    let window = leader.config.heartbeat_window;
    leader.started = Instant::now().checked_sub(2 * window).expect("the machine has been up for 20 s");
    leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap();
    let (old, new) = (member(1, 111), member(1, 222));
    let (first, _) = claim(&leader, old).await.unwrap();

    // The ordinal restarts: its new incarnation gets the build back, as attempt 2.
    let (second, _) = claim(&leader, new).await.expect("the restarted member's build is pending again");
    assert_eq!((second.id, second.attempt), (1, 2));
    let drop_it = leader.heartbeat(new, heartbeat_of(&leader, new), Some(second.claim_key())).await.unwrap();
    assert!(!drop_it, "the new incarnation holds the build");
    let (sha, size) = store(&leader, b"the binary").await;
    let before = leader.find("alpha").await.unwrap();

    // The old incarnation, still running somewhere, speaks for its build and the new one's.
    for key in [first.claim_key(), second.claim_key()] {
        let refused = leader.report(old, key, uploading(), None).await;
        assert!(is_conflict(&refused), "{refused:?}");
        let refused = leader.uploaded(old, key, sha.clone(), size).await;
        assert!(is_conflict(&refused), "{refused:?}");
    }
    assert_eq!(leader.find("alpha").await.unwrap(), before);
    assert_eq!(leader.report(new, second.claim_key(), uploading(), None).await.unwrap().status, Status::Uploading);
}

#[tokio::test]
async fn a_claim_whose_lease_runs_out_is_pending_again_for_its_ordinal_and_the_late_report_is_refused() {
    let (_dir, leader) = leader(|_| {});
    let lease = leader.config.claim_lease;
    leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap();
    let holder = member(1, 11);
    let (claimed, _) = claim(&leader, holder).await.unwrap();
    let key = claimed.claim_key();
    assert_eq!(leader.expire_leases().await.unwrap(), 0, "within its lease");
    assert_eq!(leader.expire_leases_looking_ahead(lease / 2).await.unwrap(), 0, "half of it gone");

    assert_eq!(leader.expire_leases_looking_ahead(lease + Duration::from_secs(1)).await.unwrap(), 1);
    let requeued = leader.find("alpha").await.unwrap();
    assert_eq!((requeued.status, requeued.worker, requeued.attempt), (Status::Pending, 1, 1));
    let event = &requeued.history.last().unwrap().event;
    assert!(event.contains("longer than the claim lease"), "{event}");

    let late = leader.report(holder, key, uploading(), None).await;
    assert!(is_conflict(&late) && format!("{late:?}").contains("no longer current"), "{late:?}");
    let (sha, size) = store(&leader, b"the binary").await;
    assert!(is_conflict(&leader.uploaded(holder, key, sha, size).await));
    let drop_it = leader.heartbeat(holder, heartbeat_of(&leader, holder), Some(key)).await.unwrap();
    assert!(drop_it, "the late holder is told to drop the build");
    assert_eq!(leader.find("alpha").await.unwrap(), requeued, "the late calls changed nothing");

    assert!(claim(&leader, member(0, 10)).await.is_none(), "it stays with its ordinal");
    let (again, _) = claim(&leader, holder).await.expect("its ordinal claims it again");
    assert_eq!((again.id, again.attempt), (1, 2));
}

#[tokio::test]
async fn the_binary_cache_serves_an_identical_submission_only_while_the_artifact_is_stored() {
    let (_dir, leader) = leader(|config| {
        config.binary_cache = Some(SETTINGS.into());
        config.retention = Duration::ZERO;
    });
    let source = program("fn main() { println!(\"cached\") }");
    leader.submit("first".into(), source.clone(), None).await.unwrap();
    let built = build(&leader, member(1, 11), b"the binary").await;
    assert_eq!(built.status, Status::Success);

    let served = leader.submit("second".into(), source.clone(), None).await.unwrap().record;
    assert_eq!((served.status, &served.binary_sha256), (Status::Success, &built.binary_sha256));
    assert_eq!(served.binary_cache_hit.as_ref().map(|hit| (hit.pipeline_id, hit.version)), Some((1, 1)));
    assert!(claim(&leader, member(0, 10)).await.is_none(), "nothing to build for pipeline 2");

    // Pipeline 2 still references the artifact: it stays, and is served again.
    leader.delete("first").await.unwrap();
    assert_eq!(leader.collect().await.unwrap().artifacts, 0);
    let third = leader.submit("third".into(), source.clone(), None).await.unwrap().record;
    assert_eq!(third.status, Status::Success);

    for name in ["second", "third"] {
        leader.delete(name).await.unwrap();
    }
    assert_eq!(leader.collect().await.unwrap().artifacts, 1);
    assert!(!leader.artifacts.contains(built.binary_sha256.as_deref().unwrap()));
    let fourth = leader.submit("fourth".into(), source, None).await.unwrap().record;
    assert_eq!((fourth.status, fourth.binary_cache_hit), (Status::Pending, None), "its artifact is gone: built again");
}

/// Failover through the leader's operations: ordinal 2 of 3 goes silent while it
/// builds. Once --failover-after has passed (waited for, as it is short here),
/// its claim goes back to pending, the healthy members build its pipelines,
/// its late report is refused, health names who covers, and the failover is
/// counted. With --failover-after 0 nothing moves.
#[tokio::test]
async fn a_silent_members_pipelines_are_built_by_the_healthy_ones() {
    let three = |ordinal: u32, incarnation: u64| MemberId { ordinal, workers: 3, incarnation };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.workers = 3;
    config.heartbeat_window = Duration::from_millis(200);
    config.failover_after = Duration::from_millis(400);
    let leader = LeaderState::open(config, ScalingGuard::new(3)).unwrap();
    let (m0, m1, m2) = (three(0, 10), three(1, 11), three(2, 12));
    let beat = |m: MemberId| {
        let mut report = heartbeat_of(&leader, m);
        report.workers = 3;
        report
    };
    for m in [m0, m1, m2] {
        leader.heartbeat(m, beat(m), None).await.unwrap();
    }
    // ids 1..=6: ordinal 2 has 2 and 5.
    for id in 1..=6 {
        leader.submit(format!("p{id}"), program(&format!("fn main() {{ let _ = {id}; }}")), None).await.unwrap();
    }
    let (held, _) = claim(&leader, m2).await.unwrap();
    assert_eq!(held.id, 2);

    // Ordinals 0 and 1 keep reporting; ordinal 2 is silent until it is missing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for m in [m0, m1] {
            leader.heartbeat(m, beat(m), None).await.unwrap();
        }
        if leader.fail_over().await.unwrap().missing == vec![2] {
            break;
        }
        assert!(Instant::now() < deadline, "ordinal 2 never counted as missing: {:?}", leader.coverage());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requeued = leader.find("p2").await.unwrap();
    assert_eq!(requeued.status, Status::Pending);
    assert!(requeued.history.last().unwrap().event.contains("--failover-after"), "{:?}", requeued.history);
    let health = leader.cluster_health();
    let missing = &health.members[2];
    assert!(!health.all_healthy && missing.missing && missing.covered_by == vec![0, 1], "{missing:?}");
    assert!(missing.message.contains("ordinals 0, 1 build its pipelines (failover)"), "{}", missing.message);

    let mut built_for_2 = Vec::new();
    for m in [m0, m1] {
        while let Some((record, _)) = claim(&leader, m).await {
            if record.worker == 2 {
                assert_eq!(record.built_by, Some(m.ordinal));
                built_for_2.push(record.id);
                let (sha, size) = store(&leader, format!("binary {}", record.id).as_bytes()).await;
                leader.uploaded(m, record.claim_key(), sha.clone(), size).await.unwrap();
                let done = leader.report(m, record.claim_key(), success(&sha), None).await.unwrap();
                assert_eq!(done.to_api().builder(), format!("ordinal {} for ordinal 2 (failover)", m.ordinal));
            }
        }
    }
    built_for_2.sort_unstable();
    assert_eq!(built_for_2, vec![2, 5], "each of ordinal 2's pipelines once");
    let late = leader.report(m2, held.claim_key(), uploading(), None).await;
    assert!(is_conflict(&late), "the silent member's late report is refused: {late:?}");
    let metrics = leader.metrics_text().await.unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("kiln_failover_claims_total{") && l.contains("for_ordinal=\"2\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 2, "{metrics}");
    assert!(metrics.contains("kiln_member_missing{ordinal=\"2\"} 1"), "{metrics}");

    // Back: its next new pipeline is its own.
    leader.heartbeat(m2, beat(m2), None).await.unwrap();
    assert!(leader.fail_over().await.unwrap().missing.is_empty());
    for id in [7, 8] {
        leader.submit(format!("p{id}"), program(&format!("fn main() {{ let _ = {id}; }}")), None).await.unwrap();
    }
    let submitted = leader.find("p8").await.unwrap();
    assert_eq!(submitted.worker, 2);
    assert!(claim(&leader, m0).await.is_none(), "ordinal 0 covers for nobody now");
    assert_eq!(claim(&leader, m2).await.map(|(r, _)| (r.id, r.built_by)), Some((submitted.id, None)));
}

/// `--failover-after 0`: a silent member's pipelines wait for it, as in the seed.
#[tokio::test]
async fn without_failover_a_silent_members_pipelines_wait_for_it() {
    let (_dir, mut leader) = leader(|config| config.failover_after = Duration::ZERO);
    let window = leader.config.heartbeat_window;
    leader.started = Instant::now().checked_sub(100 * window).expect("the machine has been up for 1000 s");
    leader.submit("alpha".into(), program("fn main() {}"), None).await.unwrap(); // ordinal 1 of 2
    assert!(leader.fail_over().await.unwrap().missing.is_empty());
    assert!(claim(&leader, member(0, 10)).await.is_none(), "ordinal 1's pipeline waits for it");
    assert!(!leader.cluster_health().members[1].missing);
}

/// A submission names its profile or gets the farm's; an unknown one is refused
/// with the known ones, storing nothing; the binary cache never serves a binary
/// built in one profile to a submission in another.
#[tokio::test]
async fn profiles_are_checked_recorded_and_kept_apart_by_the_binary_cache() {
    let (_dir, leader) = leader(|config| config.binary_cache = Some(SETTINGS.into()));
    let source = program("fn main() { println!(\"profiled\") }");
    let refused = leader.submit("turbo".into(), source.clone(), Some("turbo".into())).await;
    let Err(ApiError::BadRequest(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("\"turbo\"") && message.contains("dev, release"), "{message}");
    assert!(leader.find("turbo").await.is_err(), "nothing stored");

    let farm_default = leader.submit("default".into(), source.clone(), None).await.unwrap().record;
    assert_eq!(farm_default.profile.as_deref(), Some("release"));
    let release = build(&leader, member(1, 11), b"release binary").await;
    assert_eq!((release.id, release.status), (farm_default.id, Status::Success));

    let dev = leader.submit("dev".into(), source.clone(), Some("dev".into())).await.unwrap().record;
    assert_eq!((dev.status, dev.profile.as_deref(), &dev.binary_cache_hit), (Status::Pending, Some("dev"), &None));
    let again = leader.submit("again".into(), source, Some("release".into())).await.unwrap().record;
    assert_eq!(again.binary_cache_hit.map(|hit| hit.pipeline_id), Some(release.id), "the release build serves release");
}

/// `--on-scaling=reshard` through the leader's operations: a member started for
/// a bigger set grows N (never trips the guard) and the pending pipelines move; an
/// old member's report of the old N changes nothing; the last member leaving
/// shrinks N, its build in flight goes back to pending, and a late call of it is
/// refused.
#[tokio::test]
async fn under_reshard_the_set_grows_and_shrinks_and_pending_pipelines_follow() {
    use kiln_core::scaling::OnScaling;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.workers = 3;
    let leader = LeaderState::open(config, ScalingGuard::with(3, OnScaling::Reshard)).unwrap();
    let of = |ordinal: u32, workers: u32, incarnation: u64| MemberId { ordinal, workers, incarnation };
    for id in 1..=30 {
        leader.submit(format!("p{id}"), program(&format!("fn main() {{ let _ = {id}; }}")), None).await.unwrap();
    }
    let sharding = crate::rules::Sharding::Rendezvous;
    assert_eq!(leader.find("p7").await.unwrap().worker, sharding.ordinal(7, 3), "spread by rendezvous");

    // Ordinal 1 reports N = 3 (as started): nothing changes. A new member 3 for 4: N = 4.
    leader.heartbeat(of(1, 3, 11), heartbeat_of(&leader, of(1, 3, 11)), None).await.unwrap();
    assert_eq!(leader.workers(), 3);
    let newcomer = of(3, 4, 33);
    leader.heartbeat(newcomer, heartbeat_of(&leader, newcomer), None).await.unwrap();
    assert_eq!((leader.workers(), leader.guard.detected()), (4, None));
    // A token holder posing as a far ordinal with a huge N: refused, N unchanged.
    let hostile = of(9, u32::MAX, 77);
    let refused = leader.heartbeat(hostile, heartbeat_of(&leader, hostile), None).await;
    assert!(is_conflict(&refused), "{refused:?}");
    assert_eq!(leader.workers(), 4, "no member's word makes the set huge");
    let on_3: Vec<u64> = (1..=30).filter(|id| sharding.ordinal(*id, 4) == 3).collect();
    // (The housekeeping loop does this when N changes.)
    assert_eq!(leader.reshard().await.unwrap(), (on_3.len(), 30), "only the new ordinal's moved");
    assert_eq!(leader.reshard().await.unwrap(), (0, 30), "once");
    for id in 1..=30u64 {
        assert_eq!(leader.find(&format!("p{id}")).await.unwrap().worker, sharding.ordinal(id, 4), "p{id}");
    }
    assert!(!on_3.is_empty() && on_3.len() < 15, "about a quarter moved: {on_3:?}");
    // A stale report of N = 3 from an old member does not shrink the set.
    leader.heartbeat(of(2, 3, 22), heartbeat_of(&leader, of(2, 3, 22)), None).await.unwrap();
    assert_eq!(leader.workers(), 4);

    // A second incarnation of ordinal 3 (a stolen token, a stale pod) says it
    // leaves while the first still reports: refused, nothing changes.
    let impostor = of(3, 4, 99);
    let refused = leader.member_leaving(impostor).await;
    assert!(is_conflict(&refused), "{refused:?}");
    assert_eq!(leader.workers(), 4, "an impostor's leaving shrinks nothing");

    // Member 3 claims one of its pipelines, then leaves: N = 3, its build pending again.
    let (held, _) = claim(&leader, newcomer).await.expect("ordinal 3 has work");
    leader.member_leaving(newcomer).await.unwrap();
    assert_eq!(leader.workers(), 3);
    let back = leader.find(&held.name).await.unwrap();
    assert_eq!(back.status, Status::Pending);
    assert!(back.worker < 3, "{back:?}");
    assert!(back.history.iter().any(|e| e.event.contains("left the set")), "{:?}", back.history);
    let late = leader.heartbeat(newcomer, heartbeat_of(&leader, newcomer), None).await;
    assert!(is_conflict(&late), "a call after leaving is refused: {late:?}");
    assert_eq!(leader.workers(), 3, "and does not grow the set again");
    for id in 1..=30u64 {
        assert!(leader.find(&format!("p{id}")).await.unwrap().worker < 3, "p{id} on a member of the set");
    }
}
