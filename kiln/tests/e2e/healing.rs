//! A farm that heals: a killed member's pipelines built by the others
//! (failover), and a killed leader whose restart loses nothing. Real `kiln`
//! processes on loopback, real cargo builds, real SIGKILLs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Farm, KILN, Member, examples, manifest, test_farm, text, wait_until, write_program};

const ENDED: [&str; 4] = ["success", "compile_error", "system_error", "cancelled"];

/// `count` programs, each its own: a few hundred functions, so that a build
/// lasts long enough (seconds) to be caught in flight.
fn programs(dir: &Path, from: usize, count: usize) -> Vec<PathBuf> {
    (from..from + count)
        .map(|i| {
            let name = format!("heal-{i}");
            let functions: String =
                (0..300).map(|f| format!("fn f{f}(x: u64) -> u64 {{ x.wrapping_mul({f}) ^ {i} }}\n")).collect();
            let calls: String = (0..300).map(|f| format!("f{f}(1)")).collect::<Vec<_>>().join(" ^ ");
            let main = format!("{functions}\nfn main() {{ println!(\"pipeline {i}: {{}}\", {calls}); }}\n");
            write_program(dir, &name, &[("Cargo.toml", &manifest(&name, "")), ("src/main.rs", &main)])
        })
        .collect()
}

fn submit(farm: &Farm, dirs: &[PathBuf]) {
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let submitted = farm.submit(&dirs, false);
    assert!(submitted.status.success(), "{}", text(&submitted));
}

/// Waits until every pipeline in `ids` has ended; returns their records.
async fn wait_ended(farm: &Farm, ids: impl IntoIterator<Item = u64>) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for id in ids {
        records.push(farm.wait_status(&id.to_string(), &ENDED, Duration::from_secs(600)).await);
    }
    records
}

/// History events of `record` that start with `prefix`.
fn events(record: &serde_json::Value, prefix: &str) -> usize {
    record["history"].as_array().unwrap().iter().filter(|e| e["event"].as_str().unwrap().starts_with(prefix)).count()
}

fn member(ordinal: u32, workers: u32, extra: &[&str]) -> Member {
    Member { ordinal, workers, extra: extra.iter().map(|s| s.to_string()).collect() }
}

/// Failover. A 3-member farm has 12 pipelines queued, 4 per ordinal; member 2 is
/// SIGKILLed while it builds. All 12 end `success`, each exactly once by its
/// history (the killed build once more, saying why); ordinal 2's are built by
/// ordinals 0 and 1 "for ordinal 2 (failover)"; `/cluster_healthz` is 503 and
/// names who covers; `kiln status` and `/metrics` say so. Restarted, member 2
/// builds the next new pipeline of its ordinal itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_members_pipelines_are_built_once_by_the_others_and_it_gets_its_own_back() {
    const FAILOVER: &str = "--failover-after=5s";
    let mut farm = test_farm(3);
    for ordinal in 0..3 {
        farm.start(member(ordinal, 3, &[FAILOVER]));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    let dir = tempfile::tempdir().unwrap();
    submit(&farm, &programs(dir.path(), 1, 12));
    farm.wait_status("2", &["compiling"], Duration::from_secs(120)).await;
    farm.kill(2);
    let killed = Instant::now();

    // While it is missing: 503, naming who covers for it.
    let health = wait_until(
        "cluster health names who covers for ordinal 2",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let (status, body) = farm.get_json("/cluster_healthz").await;
            if status == 503 && body["members"][2]["covered_by"] == serde_json::json!([0, 1]) {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    let message = health["members"][2]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("ordinals 0, 1 build its pipelines (failover)"), "{message}");

    let records = wait_ended(&farm, 1..=12).await;
    let healed = killed.elapsed();
    for record in &records {
        let id = record["id"].as_u64().unwrap();
        assert_eq!(record["status"], "success", "{record}");
        assert_eq!(events(record, "success"), 1, "built to success exactly once: {record}");
        assert_eq!(record["worker"].as_u64().unwrap(), id % 3, "{record}");
        if id % 3 == 2 {
            let by = record["built_by"].as_u64().unwrap_or_else(|| panic!("built by another ordinal: {record}"));
            assert!(by == 0 || by == 1, "{record}");
            let claimed = format!("claimed by ordinal {by} for ordinal 2 (failover");
            assert_eq!(events(record, &claimed), 1, "{record}");
        } else {
            assert!(record["built_by"].is_null(), "{record}");
            assert_eq!(record["attempt"], 1, "a pipeline whose member lived is built once: {record}");
        }
    }
    let killed_build = &records[1];
    let history = killed_build["history"].to_string();
    assert_eq!(killed_build["attempt"], 2, "the build in flight on the killed member, once more: {history}");
    assert!(history.contains("ordinal 2 sent no heartbeat for longer than --failover-after (5s)"), "{history}");
    eprintln!(
        "failover: 12 pipelines ended success {:.1} s after member 2 was killed (--failover-after 5s)",
        healed.as_secs_f64()
    );

    let status = Command::new(KILN).args(["status", &format!("--leader={}", farm.url())]).output().unwrap();
    let table = text(&status);
    assert!(table.contains(" for 2 ") && table.contains("built by ordinal "), "{table}");
    let metrics = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("kiln_failover_claims_total{") && l.contains("for_ordinal=\"2\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 4, "{metrics}");

    // Back: the next new pipeline of ordinal 2 (id 14) is its own.
    farm.start(member(2, 3, &[FAILOVER]));
    farm.wait_healthy(Duration::from_secs(120)).await;
    submit(&farm, &programs(dir.path(), 13, 2));
    let records = wait_ended(&farm, [13, 14]).await;
    let own = &records[1];
    assert_eq!((&own["status"], &own["worker"]), (&serde_json::json!("success"), &serde_json::json!(2)), "{own}");
    assert!(own["built_by"].is_null(), "built by ordinal 2 itself: {own}");
}

/// `--failover-after 0`: the seed's behaviour. A killed member's pipeline waits
/// for it while the other member builds what was submitted after it; health
/// names nobody covering; the member back builds it.
#[tokio::test(flavor = "multi_thread")]
async fn without_failover_a_killed_members_pipeline_waits_for_it() {
    const NEVER: &str = "--failover-after=0";
    let mut farm = test_farm(2);
    for ordinal in 0..2 {
        farm.start(member(ordinal, 2, &[NEVER]));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    farm.kill(1);
    wait_until("ordinal 1 unhealthy", Duration::from_secs(60), Duration::from_millis(100), || async {
        let (status, body) = farm.get_json("/cluster_healthz").await;
        if status == 503 { Ok(()) } else { Err(body.to_string()) }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // id 1 is ordinal 1's, id 2 ordinal 0's.
    submit(&farm, &programs(dir.path(), 1, 2));
    let later = farm.wait_status("2", &ENDED, Duration::from_secs(300)).await;
    assert_eq!(later["status"], "success", "{later}");
    let waiting = farm.pipeline("1").await;
    assert_eq!(
        (&waiting["status"], &waiting["attempt"]),
        (&serde_json::json!("pending"), &serde_json::json!(0)),
        "{waiting}"
    );
    let (_, health) = farm.get_json("/cluster_healthz").await;
    assert!(
        health["members"][1].get("covered_by").is_none() && health["members"][1].get("missing").is_none(),
        "{health}"
    );

    farm.start(member(1, 2, &[NEVER]));
    let own = farm.wait_status("1", &ENDED, Duration::from_secs(300)).await;
    assert_eq!(own["status"], "success", "{own}");
    assert!(own["built_by"].is_null(), "{own}");
}

/// The leader is SIGKILLed with builds in flight on ordinals 1 and 2 and the rest
/// queued (12 pipelines), and restarted: the workers' uploads are retried and
/// accepted, all 12 end `success`, none is lost, and none whose member lived is
/// built twice. The leader's own worker died with it: its build in flight is
/// built again, and its history says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_restart_loses_nothing() {
    let mut farm = test_farm(3);
    for ordinal in 0..3 {
        farm.start(member(ordinal, 3, &[]));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut dirs: Vec<PathBuf> = ["hello", "wordfreq"].iter().map(|name| examples().join(name)).collect();
    dirs.extend(programs(dir.path(), 3, 10));
    submit(&farm, &dirs);
    farm.wait_status("1", &["compiling"], Duration::from_secs(120)).await;
    farm.wait_status("2", &["compiling"], Duration::from_secs(120)).await;
    let (_, list) = farm.get_json("/v0/pipelines").await;
    let queued = list.as_array().unwrap().iter().filter(|r| r["status"] == "pending").count();
    farm.kill(0);
    // The workers finish compiling and find the leader gone: wait until both say so.
    for ordinal in [1, 2] {
        let process = farm.member(ordinal);
        let what = format!("member {ordinal} retries its upload");
        wait_until(&what, Duration::from_secs(120), Duration::from_millis(100), || async {
            if process.output().contains("upload failed; retrying") { Ok(()) } else { Err(String::new()) }
        })
        .await;
    }
    farm.start(member(0, 3, &[]));
    farm.wait_leader(Duration::from_secs(30)).await;
    let records = wait_ended(&farm, 1..=12).await;
    let mut retried = 0;
    for record in &records {
        assert_eq!(record["status"], "success", "{record}");
        assert_eq!(events(record, "success"), 1, "{record}");
        if record["worker"] != 0 {
            assert_eq!(record["attempt"], 1, "a pipeline whose worker lived is built once: {record}");
            retried += record["upload_retries"].as_u64().unwrap();
        } else if record["attempt"] != 1 {
            let history = record["history"].to_string();
            assert!(history.contains("its worker restarted"), "a second build says why: {history}");
        }
    }
    assert!(retried > 0, "uploads were really pending while the leader was down");
    let (_, list) = farm.get_json("/v0/pipelines").await;
    assert_eq!(list.as_array().unwrap().len(), 12, "nothing lost");
    eprintln!("leader restart: killed with 2 builds in flight on ordinals 1 and 2 and {queued} queued; all 12 success");
}

/// Waits until `/cluster_healthz` answers 200 for a set of `n` members.
async fn healthy_set_of(farm: &Farm, n: u64) {
    wait_until(&format!("a healthy set of {n}"), Duration::from_secs(120), Duration::from_millis(100), || async {
        let (status, body) = farm.get_json("/cluster_healthz").await;
        if status == 200 && body["workers_expected"] == n { Ok(()) } else { Err(body.to_string()) }
    })
    .await
}

/// The leader's "resharded" log lines: (N, moved, pending) of each.
fn reshards(log: &str) -> Vec<(u64, u64, u64)> {
    let field = |line: &str, name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}")) + name.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    log.lines()
        .filter(|l| l.contains("resharded: pending pipelines moved"))
        .map(|l| (field(l, "workers"), field(l, "moved"), field(l, "pending")))
        .collect()
}

/// At most 1/N of `pending` plus three standard deviations of a binomial draw
/// (each pending pipeline moves with probability 1/N under rendezvous hashing).
fn moved_bound(pending: u64, n: u64) -> f64 {
    let (p, n) = (pending as f64, n as f64);
    p / n + 3.0 * (p * (n - 1.0)).sqrt() / n
}

/// Resharding: with `--on-scaling=reshard` the farm goes 3 -> 4 -> 3 members with
/// 40 pipelines queued. No process restarts (the three first members and the
/// leader run throughout), none of the 40 is lost, none succeeds twice, and each
/// change moves at most 1/N of what was pending plus the binomial slack; the
/// counts are printed. The fourth member leaves with SIGTERM, as a StatefulSet
/// scaled down stops its last pod: its build in flight goes back to pending.
#[tokio::test(flavor = "multi_thread")]
async fn with_reshard_the_farm_grows_and_shrinks_without_a_restart() {
    const RESHARD: &str = "--on-scaling=reshard";
    let mut farm = test_farm(4);
    for ordinal in 0..3 {
        farm.start(member(ordinal, 3, &[RESHARD]));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    let pids: Vec<i32> = (0..3).map(|o| farm.member(o).pid()).collect();
    let dir = tempfile::tempdir().unwrap();
    submit(&farm, &programs(dir.path(), 1, 40));

    farm.start(member(3, 4, &[RESHARD]));
    healthy_set_of(&farm, 4).await;
    // The fourth member builds some of the 40, then leaves.
    wait_until("ordinal 3 builds", Duration::from_secs(300), Duration::from_millis(100), || async {
        let (_, list) = farm.get_json("/v0/pipelines").await;
        let on_3 = list.as_array().unwrap().iter().filter(|r| r["worker"] == 3 && r["status"] != "pending").count();
        if on_3 > 0 { Ok(()) } else { Err(format!("{on_3}")) }
    })
    .await;
    let left = farm.member(3).terminate();
    assert!(left.success(), "member 3 stops cleanly on SIGTERM: {left:?}");
    healthy_set_of(&farm, 3).await;

    let records = wait_ended(&farm, 1..=40).await;
    for record in &records {
        assert_eq!(record["status"], "success", "{record}");
        assert_eq!(events(record, "success"), 1, "no duplicate success: {record}");
    }
    let (_, list) = farm.get_json("/v0/pipelines").await;
    assert_eq!(list.as_array().unwrap().len(), 40, "nothing lost");
    for (ordinal, pid) in pids.iter().enumerate() {
        let process = farm.member(ordinal as u32);
        assert!(process.running() && process.pid() == *pid, "member {ordinal} ran throughout");
    }
    let log = farm.member_log(0);
    let changes = reshards(&log);
    assert!(changes.iter().any(|(n, _, _)| *n == 4) && changes.iter().any(|(n, _, _)| *n == 3), "{changes:?}");
    for (n, moved, pending) in &changes {
        // Growing to N moves about 1/N of the pending; shrinking from N + 1 moves
        // what the leaving member had, about 1/(N + 1).
        let share = if *n == 4 { 4 } else { n + 1 };
        let bound = moved_bound(*pending, share);
        eprintln!("resharding to N = {n}: {moved} of {pending} pending pipelines moved (bound {bound:.1})");
        assert!((*moved as f64) <= bound, "to N = {n}: {moved} of {pending} moved, more than {bound:.1}");
    }
    let metrics = farm.http.get(format!("{}/metrics", farm.url())).send().await.unwrap().text().await.unwrap();
    let counted: u64 = changes.iter().map(|(_, moved, _)| moved).sum();
    assert!(metrics.contains(&format!("kiln_resharded_pipelines_total {counted}")), "{metrics}");
}

/// Hostile calls of a cluster-token holder against a farm under
/// `--on-scaling=reshard`, over real gRPC: a far ordinal with N = 2^32 - 1 is
/// refused and N stays; a second incarnation of a live member saying it leaves is
/// refused and the member stays; a next ordinal that joins with megabyte-long
/// words in its heartbeat has them cut in health, and its own "leaving" shrinks
/// the set back. The farm builds throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_holders_hostile_calls_cannot_bend_the_set() {
    use kiln_proto::cluster_client::ClusterClient;
    const RESHARD: &str = "--on-scaling=reshard";
    let mut farm = test_farm(2);
    for ordinal in 0..2 {
        farm.start(member(ordinal, 2, &[RESHARD]));
    }
    farm.wait_healthy(Duration::from_secs(300)).await;
    let mut client = ClusterClient::connect(farm.url()).await.unwrap();
    let beat = |ordinal: u32, workers: u32, incarnation: u64, leaving: bool| {
        let mut request = tonic::Request::new(kiln_proto::HeartbeatRequest {
            member: Some(kiln_proto::Member { ordinal, workers, incarnation, version: "0.1.0".into() }),
            leaving,
            cpus: "c".repeat(1 << 20),
            sandbox: "s".repeat(1 << 20),
            ..Default::default()
        });
        request.metadata_mut().insert("authorization", format!("Bearer {}", crate::common::TOKEN).parse().unwrap());
        request
    };
    let expected = |farm: &Farm| {
        let farm = farm.leader();
        async move { farm.get_json("/cluster_healthz").await.1["workers_expected"].as_u64().unwrap() }
    };

    let far = client.heartbeat(beat(9, u32::MAX, 0xbad, false)).await.unwrap_err();
    assert_eq!(far.code(), tonic::Code::FailedPrecondition, "{far:?}");
    assert!(far.message().contains("one member at a time"), "{far:?}");
    assert_eq!(expected(&farm).await, 2, "N stays");

    let impostor = client.heartbeat(beat(1, 2, 0xbad, true)).await.unwrap_err();
    assert_eq!(impostor.code(), tonic::Code::FailedPrecondition, "{impostor:?}");
    farm.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(expected(&farm).await, 2, "the live member 1 stays in the set");

    client.heartbeat(beat(2, 3, 0xbad, false)).await.expect("the next ordinal joins");
    assert_eq!(expected(&farm).await, 3);
    let (_, health) = farm.get_json("/cluster_healthz").await;
    for field in ["cpus", "sandbox"] {
        let said = health["members"][2][field].as_str().unwrap_or_default();
        assert!(said.len() <= 600, "{field} is cut: {} bytes", said.len());
    }
    client.heartbeat(beat(2, 3, 0xbad, true)).await.expect("it leaves");
    farm.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(expected(&farm).await, 2, "and the set is back to 2");

    let dir = tempfile::tempdir().unwrap();
    submit(&farm, &programs(dir.path(), 1, 2));
    for record in wait_ended(&farm, 1..=2).await {
        assert_eq!(record["status"], "success", "the farm builds on: {record}");
    }
}
