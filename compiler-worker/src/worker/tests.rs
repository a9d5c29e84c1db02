//! The worker's decisions, against a scripted leader (`link/fake.rs`) and scripted
//! builds: what reaches the leader after each kind of build, how failures of the
//! leader are retried or given up, and which build a cancellation stops. No cargo,
//! no socket; backoff runs on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::cluster::{ClaimKey, Figures};
use kiln_core::retry::Disposition;
use kiln_core::scaling::ScalingGuard;
use tokio_util::sync::CancellationToken;

use crate::disk::DiskState;
use crate::link::fake::{Call, FakeLink, Script, failure};
use crate::link::{Assignment, Binary, BinaryDigest, BuildStatus, CacheState, HeartbeatAnswer, Progress, StatusReport};
use crate::upload::RetryPolicy;
use crate::worker::claim::Worker;
use crate::worker::deliver::{Delivery, send_final};
use crate::worker::heartbeat::{Beats, act_on_answer, heartbeat_loop};
use crate::worker::result::{BuildResult, Builds, Built, FinalReport};
use crate::worker::shared::{Shared, lock};

/// One step of a scripted build.
enum Step {
    /// The build ends so.
    Ends(Box<BuildResult>),
    /// The worker is told to stop while the build runs.
    ShutdownMidBuild(CancellationToken),
}

/// Builds that play a script, and the disk states between them.
#[derive(Default)]
struct ScriptedBuilds {
    steps: VecDeque<Step>,
    disk: VecDeque<DiskState>,
    /// The claims built, in order.
    built: Vec<ClaimKey>,
}

impl Builds for ScriptedBuilds {
    async fn make_room(&mut self) -> DiskState {
        self.disk.pop_front().unwrap_or_default()
    }

    async fn build(&mut self, assignment: &Assignment, cancel: &CancellationToken) -> BuildResult {
        self.built.push(assignment.claim);
        match self.steps.pop_front().expect("a build the test did not script") {
            Step::Ends(result) => *result,
            Step::ShutdownMidBuild(shutdown) => {
                shutdown.cancel();
                cancel.cancelled().await;
                BuildResult::Cancelled
            }
        }
    }
}

fn ends(result: BuildResult) -> Step {
    Step::Ends(Box::new(result))
}

fn claim(id: u64) -> ClaimKey {
    ClaimKey { pipeline_id: id, version: 1, attempt: 1 }
}

fn assignment(id: u64) -> Assignment {
    Assignment { claim: claim(id), name: format!("pipeline-{id}"), files: Vec::new(), profile: String::new() }
}

fn figures() -> Figures {
    Figures { compile_ms: 1234, ..Figures::default() }
}

/// A built binary of `bytes`, in a file as the worker would hold it.
fn built(bytes: &[u8], submitted_code: Option<&str>) -> Built {
    let file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut &file, bytes).unwrap();
    Built {
        executable: Binary::new(file, "target/release/app".into()),
        sha256: kiln_core::digest::sha256_hex(bytes),
        size: bytes.len() as u64,
        log: "Compiling app\n".into(),
        figures: figures(),
        submitted_code: submitted_code.map(str::to_owned),
    }
}

/// A retry budget of one second, so a leader that stays down outlasts it.
fn tiny_policy() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(1),
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    }
}

fn delivery() -> Delivery {
    Delivery { policy: tiny_policy(), build_settings: "f".repeat(64) }
}

fn worker(link: &Arc<FakeLink>, builds: ScriptedBuilds) -> Worker<FakeLink, ScriptedBuilds> {
    Worker {
        link: link.clone(),
        builds,
        shared: Arc::new(Shared::default()),
        ordinal: 1,
        depset: "depset".into(),
        delivery: delivery(),
        disk_recheck: Duration::from_secs(5),
    }
}

fn builds(steps: Vec<Step>) -> ScriptedBuilds {
    ScriptedBuilds { steps: steps.into(), ..ScriptedBuilds::default() }
}

/// A leader whose claims answer `claims`, then hold on and cancel `shutdown`.
fn leader(
    claims: Vec<Result<Option<Assignment>, kiln_core::retry::Failure>>,
    shutdown: &CancellationToken,
) -> Arc<FakeLink> {
    Arc::new(FakeLink::with(Script {
        claims: claims.into(),
        claims_exhausted: Some(shutdown.clone()),
        ..Script::default()
    }))
}

fn report_of(call: &Call) -> Option<&StatusReport> {
    match call {
        Call::Report(report) => Some(report),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_assignment_is_claimed_built_delivered_and_the_loop_claims_again() {
    let shutdown = CancellationToken::new();
    let link = leader(vec![Ok(Some(assignment(7)))], &shutdown);
    let mut worker = worker(&link, builds(vec![ends(BuildResult::Built(built(b"ELF", None)))]));
    worker.claim_loop(&shutdown).await.unwrap();

    let calls = link.calls();
    assert!(calls.iter().all(|(_, accepted)| *accepted), "{calls:?}");
    let calls: Vec<Call> = calls.into_iter().map(|(call, _)| call).collect();
    assert_eq!(calls.len(), 5, "claim, uploading, upload, success, claim again: {calls:?}");
    assert_eq!(calls[0], Call::Claim);
    let uploading = report_of(&calls[1]).expect("the uploading report first");
    assert_eq!((uploading.claim, uploading.status), (claim(7), BuildStatus::Uploading));
    let sha256 = kiln_core::digest::sha256_hex(b"ELF");
    assert_eq!(calls[2], Call::Upload { claim: claim(7), sha256: sha256.clone(), size: 3, bytes: b"ELF".to_vec() });
    let success = report_of(&calls[3]).expect("the success report last");
    assert_eq!((success.claim, success.status), (claim(7), BuildStatus::Success));
    assert_eq!(success.binary, Some(BinaryDigest { sha256, size: 3 }));
    assert_eq!(calls[4], Call::Claim, "the loop claims again after a delivery");
    assert_eq!(worker.builds.built, vec![claim(7)]);
    assert_eq!(worker.shared.current_claim(), None, "no build in hand after it was delivered");
}

#[tokio::test(start_paused = true)]
async fn transient_and_stale_claim_failures_are_retried_and_the_loop_goes_on() {
    let shutdown = CancellationToken::new();
    let link = leader(
        vec![
            Err(failure(Disposition::Transient, "leader restarting (Unavailable)")),
            Err(failure(Disposition::Stale, "another dependency set (FailedPrecondition)")),
            Ok(Some(assignment(3))),
        ],
        &shutdown,
    );
    let compile_error = BuildResult::CompileError { summary: "e".into(), log: String::new(), figures: figures() };
    let mut worker = worker(&link, builds(vec![ends(compile_error)]));
    worker.claim_loop(&shutdown).await.unwrap();

    let claims: Vec<bool> =
        link.calls().into_iter().filter(|(call, _)| *call == Call::Claim).map(|(_, accepted)| accepted).collect();
    assert_eq!(claims, vec![false, false, true, true], "two refused claims, the assignment, the next claim");
    assert_eq!(worker.builds.built, vec![claim(3)], "the assignment after the failures was built");
    assert_eq!(link.reports().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_stops_the_worker_with_an_error_naming_it() {
    let shutdown = CancellationToken::new();
    let link = leader(vec![Err(failure(Disposition::Permanent, "wrong cluster token (Unauthenticated)"))], &shutdown);
    let mut worker = worker(&link, ScriptedBuilds::default());
    let error = worker.claim_loop(&shutdown).await.unwrap_err().to_string();
    assert_eq!(error, "the leader refuses this member: wrong cluster token (Unauthenticated)");
    assert_eq!(link.calls().len(), 1, "asked once: asking again changes nothing");
    assert!(!shutdown.is_cancelled(), "the worker stopped on its own");
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_build_ends_the_loop_cleanly_with_nothing_reported() {
    let shutdown = CancellationToken::new();
    let link = Arc::new(FakeLink::with(Script { claims: vec![Ok(Some(assignment(5)))].into(), ..Script::default() }));
    let mut worker = worker(&link, builds(vec![Step::ShutdownMidBuild(shutdown.clone())]));
    worker.claim_loop(&shutdown).await.unwrap();
    // A claim may go out as the loop comes round (the shutdown wins the race for
    // what happens next), but no build ends up reported.
    let calls = link.calls();
    assert_eq!(calls[0], (Call::Claim, true));
    assert!(calls.iter().all(|(call, _)| *call == Call::Claim), "no report for a cancelled build: {calls:?}");
    assert_eq!(worker.builds.built, vec![claim(5)], "nothing built after the shutdown");
    assert_eq!(worker.shared.current_claim(), None);
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_takes_no_work_until_space_is_back() {
    let shutdown = CancellationToken::new();
    let link = leader(vec![], &shutdown);
    let full = DiskState { used_percent: 99.0, critical: Some("the build root's volume is full".into()), pruned: 0 };
    let builds = ScriptedBuilds { disk: vec![full.clone(), full].into(), ..ScriptedBuilds::default() };
    let mut worker = worker(&link, builds);
    let started = tokio::time::Instant::now();
    worker.claim_loop(&shutdown).await.unwrap();
    assert_eq!(link.calls(), vec![(Call::Claim, true)], "one claim, once space was back");
    assert_eq!(started.elapsed(), Duration::from_secs(10), "two looks at a full disk, 5 s apart");
    assert_eq!(lock(&worker.shared.disk).critical, None, "the heartbeats see the space that is back");
}

#[tokio::test(start_paused = true)]
async fn a_compile_error_sends_one_final_report_with_its_summary_and_log() {
    let link = Arc::new(FakeLink::default());
    let result = BuildResult::CompileError {
        summary: "error[E0425]: cannot find value `x`".into(),
        log: "the whole log".into(),
        figures: figures(),
    };
    let mut worker = worker(&link, builds(vec![ends(result)]));
    worker.handle(assignment(2), &CancellationToken::new()).await;
    let expected = StatusReport {
        error: "error[E0425]: cannot find value `x`".into(),
        log: "the whole log".into(),
        ..StatusReport::new(claim(2), BuildStatus::CompileError, figures())
    };
    assert_eq!(link.calls(), vec![(Call::Report(expected), true)]);
}

#[tokio::test(start_paused = true)]
async fn a_system_error_sends_one_system_error_report() {
    let link = Arc::new(FakeLink::default());
    let result = BuildResult::SystemError {
        error: "the build took longer than 600s".into(),
        log: String::new(),
        figures: Figures::default(),
    };
    let mut worker = worker(&link, builds(vec![ends(result)]));
    worker.handle(assignment(2), &CancellationToken::new()).await;
    let reports = link.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, BuildStatus::SystemError);
    assert_eq!(reports[0].error, "the build took longer than 600s");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_build_sends_nothing() {
    let link = Arc::new(FakeLink::default());
    let mut worker = worker(&link, builds(vec![ends(BuildResult::Cancelled)]));
    let none = worker.conclude(claim(2), BuildResult::Cancelled, &CancellationToken::new()).await;
    assert_eq!(none, None);
    worker.handle(assignment(2), &CancellationToken::new()).await;
    assert_eq!(link.calls(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_sends_the_success_report_with_the_digest_and_the_build_settings() {
    let link = FakeLink::default();
    let left =
        delivery().deliver(&link, claim(4), built(b"binary", Some("a build script")), &CancellationToken::new()).await;
    assert_eq!(left, None, "nothing left to say once delivered");
    let reports = link.reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0], StatusReport::new(claim(4), BuildStatus::Uploading, figures()), "uploading says no more");
    let success = &reports[1];
    assert_eq!(success.status, BuildStatus::Success);
    assert_eq!(success.binary, Some(BinaryDigest { sha256: kiln_core::digest::sha256_hex(b"binary"), size: 6 }));
    assert_eq!(success.build_settings, "f".repeat(64));
    assert!(success.ran_submitted_code, "a build that ran its submitter's code says so");
    assert_eq!(success.log, "Compiling app\n");
    assert_eq!((success.figures.compile_ms, success.figures.upload_retries), (1234, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_upload_is_retried_with_its_reports_as_one_unit() {
    let link = FakeLink::with(Script {
        upload_failures: vec![failure(Disposition::Transient, "reset (Unavailable)")].into(),
        ..Script::default()
    });
    let left = delivery().deliver(&link, claim(4), built(b"binary", None), &CancellationToken::new()).await;
    assert_eq!(left, None);
    let kinds: Vec<(&str, bool)> = link
        .calls()
        .iter()
        .map(|(call, accepted)| match call {
            Call::Report(r) if r.status == BuildStatus::Uploading => ("uploading", *accepted),
            Call::Report(r) if r.status == BuildStatus::Success => ("success", *accepted),
            Call::Upload { .. } => ("upload", *accepted),
            other => panic!("unexpected call {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("uploading", true), ("upload", false), ("uploading", true), ("upload", true), ("success", true)]
    );
    assert_eq!(link.reports()[2].figures.upload_retries, 1, "the success counts the retry");
}

#[tokio::test(start_paused = true)]
async fn a_stale_answer_drops_the_build_without_a_final_report() {
    let link = Arc::new(FakeLink::with(Script {
        report_failures: vec![failure(Disposition::Stale, "a newer version (FailedPrecondition)")].into(),
        ..Script::default()
    }));
    let mut worker = worker(&link, builds(vec![ends(BuildResult::Built(built(b"x", None)))]));
    worker.handle(assignment(9), &CancellationToken::new()).await;
    let reports: Vec<BuildStatus> =
        link.calls().iter().filter_map(|(call, _)| report_of(call)).map(|r| r.status).collect();
    assert_eq!(reports, vec![BuildStatus::Uploading], "the refused uploading report, then nothing");
}

#[tokio::test(start_paused = true)]
async fn a_leader_down_past_the_upload_budget_gets_a_system_error_report() {
    let link = Arc::new(FakeLink::with(Script {
        down_until: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        ..Script::default()
    }));
    let mut worker = worker(&link, builds(vec![ends(BuildResult::Built(built(b"x", None)))]));
    worker.handle(assignment(9), &CancellationToken::new()).await;
    let reports = link.reports();
    assert_eq!(reports.len(), 1, "only the final report landed, once the leader was back: {reports:?}");
    assert_eq!(reports[0].status, BuildStatus::SystemError);
    assert_eq!(reports[0].error, "Failed to upload binary: the leader is down (Unavailable)");
    assert_eq!(reports[0].log, "Compiling app\n", "the build's log goes with it");
    assert!(!link.calls().iter().any(|(call, _)| report_of(call).is_some_and(|r| r.status == BuildStatus::Success)));
}

fn final_report() -> FinalReport {
    FinalReport { status: BuildStatus::SystemError, error: "e".into(), log: "l".into(), figures: Figures::default() }
}

#[tokio::test(start_paused = true)]
async fn a_final_report_is_retried_through_transient_failures_until_it_lands() {
    let link = FakeLink::with(Script {
        report_failures: vec![
            failure(Disposition::Transient, "down (Unavailable)"),
            failure(Disposition::Damaged, "garbled (DataLoss)"),
            failure(Disposition::Transient, "down (Unavailable)"),
        ]
        .into(),
        ..Script::default()
    });
    send_final(&link, claim(1), final_report(), &CancellationToken::new()).await;
    let accepted: Vec<bool> = link.calls().into_iter().map(|(_, accepted)| accepted).collect();
    assert_eq!(accepted, vec![false, false, false, true]);
    assert_eq!(link.reports(), vec![final_report().into_report(claim(1))]);
}

#[tokio::test(start_paused = true)]
async fn a_stale_or_permanent_refusal_gives_the_final_report_up() {
    for disposition in [Disposition::Stale, Disposition::Permanent] {
        let link = FakeLink::with(Script {
            report_failures: vec![failure(disposition, "refused")].into(),
            ..Script::default()
        });
        send_final(&link, claim(1), final_report(), &CancellationToken::new()).await;
        assert_eq!(link.calls().len(), 1, "{disposition:?}: sent once, not again");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancel_answer_cancels_the_build_in_hand() {
    let link = Arc::new(FakeLink::with(Script {
        heartbeats: vec![Ok(HeartbeatAnswer { leader_workers: 2, cancel_current: true })].into(),
        ..Script::default()
    }));
    let shared = Arc::new(Shared::default());
    let build = CancellationToken::new();
    *lock(&shared.current) = Some((claim(8), build.clone()));
    shared.progress.start(3);
    let shutdown = CancellationToken::new();
    let beats = Beats { ordinal: 1, depset: "depset".into(), interval: Duration::from_secs(1) };
    let heartbeats =
        tokio::spawn(heartbeat_loop(link.clone(), beats, shared.clone(), ScalingGuard::new(2), shutdown.clone()));
    build.cancelled().await;
    shutdown.cancel();
    heartbeats.await.unwrap();
    let Some((Call::Heartbeat(beat), true)) = link.calls().into_iter().next() else { panic!("a heartbeat first") };
    assert_eq!(beat.current, Some((claim(8), Progress { crates_done: 0, crates_total: 3 })));
    assert_eq!(beat.depset, "depset");
    assert_eq!(beat.cache, CacheState::default());
}

#[test]
fn a_cancel_answer_spares_a_newer_claim_and_feeds_the_scaling_guard() {
    let shared = Shared::default();
    let (older, newer) = (CancellationToken::new(), CancellationToken::new());
    // The heartbeat named claim 1; claim 2 was taken while the answer was on its way.
    *lock(&shared.current) = Some((claim(2), newer.clone()));
    let guard = ScalingGuard::new(2);
    let answer = HeartbeatAnswer { leader_workers: 3, cancel_current: true };
    act_on_answer(answer, Some((claim(1), older.clone())), &shared, &guard, 1);
    assert!(!newer.is_cancelled(), "the newer build was not the one the leader meant");
    assert!(!older.is_cancelled(), "the older build is no longer in hand");
    assert!(guard.detected().is_some(), "a leader with another N trips the guard");
}
