//! The rules' tests, without a database or a network: each builds records in
//! memory, applies a rule, and checks what the leader would store or answer.
//! `record` is shared with the catalog's and the records' tests.

use kiln_core::api::{CacheFigures, Change, Status};

use super::pipeline::first_line;
use super::*;

/// Submissions in release, the farm's profile.
const REL: (&str, &str) = ("release", "release");

/// A farm of `workers` members, `id % N`, the submission in `profiles`.
fn farm(profiles: (&'static str, &'static str), workers: u32) -> Farm<'static> {
    Farm { profiles, workers, binary_cache: None, sharding: Sharding::Modulo }
}

pub(crate) fn record(id: u64) -> Pipeline {
    Pipeline::new(id, &format!("p{id}"), "s", "release", 3, 0)
}

fn success() -> Report {
    Report::Success {
        binary_sha256: "ab".into(),
        binary_size: 3,
        figures: Figures::default(),
        build_settings: "settings".into(),
        ran_submitted_code: false,
    }
}

/// A build that kills its member (its pod) three times ends `system_error`
/// with that reason instead of going back to the queue for ever; submitting it
/// again tries again, and a new version starts counting afresh.
#[test]
fn a_version_whose_builds_keep_killing_their_member_ends_system_error() {
    let mut r = record(4);
    for lost in 1..MAX_MEMBER_LOSSES {
        r.claim(r.worker, lost as u64);
        r.status = Status::Compiling;
        r.member_lost(1, 10 + lost as u64);
        assert_eq!(r.status, Status::Pending, "loss {lost}");
    }
    r.claim(r.worker, 20);
    r.status = Status::Compiling;
    r.member_lost(1, 21);
    assert_eq!(r.status, Status::SystemError);
    let error = r.error.clone().unwrap();
    assert!(error.contains("stopped their member 3 times") && error.contains("ordinal 1"), "{error}");
    assert_eq!(r.finished_at_ms, Some(21));
    r.requeue(22, "submitted again after it ended system_error");
    assert_eq!((r.status, r.members_lost), (Status::Pending, 0));
    r.members_lost = 2;
    r.new_version("t".into(), "release", 23);
    assert_eq!(r.members_lost, 0);
}

#[test]
fn ordinals_follow_the_modulus() {
    assert_eq!(assigned_ordinal(1, 3), 1);
    assert_eq!(assigned_ordinal(3, 3), 0);
    assert_eq!(assigned_ordinal(7, 1), 0);
}

#[test]
fn a_build_goes_forward_under_its_claim() {
    let mut r = record(4);
    let claim = r.claim(r.worker, 10);
    assert_eq!((r.status, r.attempt), (Status::Compiling, 1));
    r.apply(&claim, Report::Uploading { compile_ms: 5, cache: CacheFigures::default() }, 11).unwrap();
    let refused = r.apply(&claim, success(), 12);
    assert!(matches!(refused, Err(ReportRefused::NotUploaded { .. })), "success needs its upload first");
    r.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
    r.apply(&claim, success(), 12).unwrap();
    assert_eq!(r.status, Status::Success);
    assert_eq!(r.binary_sha256.as_deref(), Some("ab"));
    assert_eq!(r.binary_size, Some(7), "the size is the leader's measure, not the report's");
    assert_eq!(r.finished_at_ms, Some(12));
    let again = r.apply(&claim, success(), 13);
    assert!(matches!(again, Err(ReportRefused::StaleClaim { .. })), "a finished build takes no more reports");
}

#[test]
fn a_new_version_or_a_requeue_makes_old_claims_stale() {
    let mut r = record(2);
    let first = r.claim(r.worker, 1);
    r.requeue(2, "a test");
    let second = r.claim(r.worker, 3);
    assert_eq!(second.attempt, 2);
    assert!(matches!(r.apply(&first, success(), 4), Err(ReportRefused::StaleClaim { .. })));
    r.new_version("t".into(), "release", 5);
    assert_eq!((r.version, r.status, r.attempt), (2, Status::Pending, 0));
    assert!(matches!(r.apply(&second, success(), 6), Err(ReportRefused::StaleClaim { .. })));
}

#[test]
fn the_history_keeps_the_latest_events_and_says_why() {
    let mut r = record(5);
    let claim = r.claim(r.worker, 1);
    r.requeue(2, "its lease ran out");
    assert!(r.history.last().unwrap().event.contains("its lease ran out"), "{:?}", r.history);
    for t in 0..100 {
        r.note(t, format!("event {t}"));
    }
    assert_eq!(r.history.len(), HISTORY_LEN);
    assert_eq!(r.history.last().unwrap().event, "event 99");
    let _ = claim;
    assert_eq!(first_line("é".repeat(300).as_str()).len(), 200);
}

#[test]
fn a_cancelled_build_takes_no_more_reports_and_an_ended_one_cannot_be_cancelled() {
    let mut r = record(6);
    let claim = r.claim(r.worker, 1);
    r.cancel(2, "by the API").unwrap();
    assert_eq!(r.status, Status::Cancelled);
    assert!(r.status.finished());
    assert!(matches!(r.apply(&claim, success(), 3), Err(ReportRefused::StaleClaim { .. })));
    let again = r.cancel(4, "by the API").unwrap_err();
    assert!(again.to_string().contains("already ended (cancelled)"), "{again}");
    let mut pending = record(7);
    pending.cancel(1, "by the API").unwrap();
    assert!(pending.history.last().unwrap().event.contains("cancelled while pending"));
}

#[test]
fn a_success_is_keyed_by_source_depset_and_settings_and_a_new_version_forgets_the_key() {
    let mut r = record(8);
    r.depset = Some("set".into());
    let claim = r.claim(r.worker, 1);
    r.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
    r.apply(&claim, success(), 2).unwrap();
    assert_eq!(r.binary_key.as_deref(), Some(binary_key("s", "set", "settings", "release", None).as_str()));
    assert_ne!(
        binary_key("s", "set", "settings", "release", None),
        binary_key("s", "sets", "ettings", "release", None),
        "parts cannot run together"
    );
    assert_ne!(
        binary_key("s", "set", "settings", "release", None),
        binary_key("s", "set", "settings", "release", Some(8))
    );
    let mut own = record(8);
    own.depset = Some("set".into());
    let claim = own.claim(own.worker, 1);
    own.uploaded = Some(Uploaded { attempt: claim.attempt, sha256: "ab".into(), size: 7 });
    let ran_code = match success() {
        Report::Success { binary_sha256, binary_size, figures, build_settings, .. } => {
            Report::Success { binary_sha256, binary_size, figures, build_settings, ran_submitted_code: true }
        }
        _ => unreachable!(),
    };
    own.apply(&claim, ran_code, 2).unwrap();
    assert_eq!(
        own.binary_key.as_deref(),
        Some(binary_key("s", "set", "settings", "release", Some(8)).as_str()),
        "a build that ran submitted code is keyed for its own pipeline only"
    );
    r.new_version("t".into(), "release", 3);
    assert_eq!((r.binary_key.as_ref(), r.binary_cache_hit.as_ref()), (None, None));
    let cached = CachedBinary { sha256: "cd".into(), size: 9, pipeline_id: 8, version: 1, compile_ms: 500 };
    r.serve_cached("k".into(), "set", &cached, 4);
    assert_eq!((r.status, r.binary_sha256.as_deref(), r.binary_size), (Status::Success, Some("cd"), Some(9)));
    assert_eq!(r.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.saved_ms)), Some((8, 500)));
    assert!(r.history.last().unwrap().event.contains("binary cache"), "{:?}", r.history);
}

#[test]
fn no_going_backwards() {
    let mut r = record(1);
    let claim = r.claim(r.worker, 1);
    r.apply(&claim, Report::Uploading { compile_ms: 1, cache: CacheFigures::default() }, 2).unwrap();
    let back = r.apply(&claim, Report::Compiling, 3);
    assert!(matches!(back, Err(ReportRefused::BadTransition { .. })));
}

/// `success` carrying `sha`, with the settings the binary cache keys it by.
fn success_of(sha: &str) -> Report {
    match success() {
        Report::Success { binary_size, figures, build_settings, ran_submitted_code, .. } => {
            Report::Success { binary_sha256: sha.into(), binary_size, figures, build_settings, ran_submitted_code }
        }
        _ => unreachable!("success() is a success"),
    }
}

#[test]
fn the_same_source_again_changes_nothing_while_the_version_is_alive_or_succeeded() {
    let mut r = record(4);
    let again = resubmit(&r, "s", &farm(REL, 3), 5);
    assert_eq!((again.change, &again.record), (Change::Unchanged, &r), "pending: nothing changes");
    let claim = r.claim(r.worker, 1);
    assert_eq!(resubmit(&r, "s", &farm(REL, 3), 5).change, Change::Unchanged, "compiling: the build goes on");
    r.upload_received(&claim, "ab", 7);
    r.apply(&claim, success(), 2).unwrap();
    let again = resubmit(&r, "s", &farm(REL, 3), 5);
    assert_eq!((again.change, &again.record), (Change::Unchanged, &r), "success: its binary stays");
}

#[test]
fn the_same_source_after_a_system_error_or_a_cancellation_is_retried_as_the_same_version() {
    for end in [Status::SystemError, Status::Cancelled] {
        let mut r = record(4);
        let claim = r.claim(r.worker, 1);
        match end {
            Status::SystemError => {
                let report = Report::SystemError { error: "disk gone".into(), figures: Figures::default() };
                r.apply(&claim, report, 2).unwrap();
            }
            _ => r.cancel(2, "by the API").unwrap(),
        }
        let again = resubmit(&r, "s", &farm(REL, 3), 9);
        let retried = &again.record;
        assert_eq!(again.change, Change::Updated, "{end}");
        assert_eq!((retried.status, retried.version, retried.worker), (Status::Pending, 1, 1), "{end}");
        assert_eq!((retried.error.as_ref(), retried.finished_at_ms), (None, None), "{end}");
        assert_eq!(retried.attempt, 1, "{end}: the next claim is attempt 2, so the old one stays stale");
        let event = &retried.history.last().unwrap().event;
        assert!(event.contains(&format!("submitted again after it ended {end}")), "{event}");
    }
}

#[test]
fn another_source_is_a_new_version_for_the_ordinal_the_set_assigns_now() {
    let mut r = record(4);
    let claim = r.claim(r.worker, 1);
    r.upload_received(&claim, "ab", 7);
    r.apply(&claim, success(), 2).unwrap();
    // Submitted into a set of 3, now submitted again into a set of 2.
    let next = resubmit(&r, "t", &farm(REL, 2), 9);
    let v2 = &next.record;
    assert_eq!(next.change, Change::Updated);
    assert_eq!((v2.version, v2.status, v2.worker, v2.attempt), (2, Status::Pending, 0, 0));
    assert_eq!((v2.source_sha256.as_str(), v2.binary_sha256.as_ref(), v2.submitted_at_ms), ("t", None, 9));
    assert!(matches!(resubmit(v2, "t", &farm(REL, 2), 10).change, Change::Unchanged), "the new source again: nothing");
}

#[test]
fn only_the_current_incarnation_of_the_claims_ordinal_holds_it() {
    let mut r = record(4);
    let claim = r.claim(r.worker, 1);
    let holder = (1, 7);
    assert_eq!(held_by(Some(r.clone()), &claim, holder, Some(7)), Ok(r.clone()));
    let not_the_holder = |refused| matches!(refused, Err(ReportRefused::NotTheHolder { id: 4, holder: 1, .. }));
    assert!(not_the_holder(held_by(Some(r.clone()), &claim, (0, 7), Some(7))), "another ordinal");
    assert!(not_the_holder(held_by(Some(r.clone()), &claim, (1, 6), Some(7))), "an old incarnation");
    assert!(not_the_holder(held_by(Some(r.clone()), &claim, holder, None)), "an ordinal the catalog never saw");
    let stale = |refused| matches!(refused, Err(ReportRefused::StaleClaim { pipeline_id: 4, .. }));
    assert!(stale(held_by(None, &claim, holder, Some(7))), "a deleted pipeline");
    r.requeue(2, "its lease ran out");
    assert!(stale(held_by(Some(r.clone()), &claim, holder, Some(7))), "a requeued claim, even from its holder");
    let next = r.claim(r.worker, 3);
    assert!(stale(held_by(Some(r.clone()), &claim, holder, Some(7))), "the previous attempt");
    assert!(held_by(Some(r), &next, holder, Some(7)).is_ok());
}

#[test]
fn an_upload_is_what_a_success_of_the_same_attempt_may_name() {
    let mut r = record(4);
    let first = r.claim(r.worker, 1);
    r.upload_received(&first, "aa", 7);
    assert_eq!(r.uploaded, Some(Uploaded { attempt: 1, sha256: "aa".into(), size: 7 }));
    r.requeue(2, "its worker restarted");
    let second = r.claim(r.worker, 3);
    let refused = r.apply(&second, success_of("aa"), 4);
    assert!(matches!(refused, Err(ReportRefused::NotUploaded { .. })), "an earlier attempt's upload: {refused:?}");
    r.upload_received(&second, "bb", 9);
    r.upload_received(&second, "cc", 11);
    let refused = r.apply(&second, success_of("bb"), 4);
    assert!(matches!(refused, Err(ReportRefused::NotUploaded { .. })), "only the last upload counts");
    r.apply(&second, success_of("cc"), 5).unwrap();
    assert_eq!((r.status, r.binary_sha256.as_deref(), r.binary_size), (Status::Success, Some("cc"), Some(11)));
}

#[test]
fn a_submission_tries_the_shared_binary_before_its_own() {
    let [shared, own] = binary_cache_candidates("s", "set", "settings", "release", 8);
    assert_eq!(shared, binary_key("s", "set", "settings", "release", None));
    assert_eq!(own, binary_key("s", "set", "settings", "release", Some(8)));
    let cached = CachedBinary { sha256: "cd".into(), size: 9, pipeline_id: 3, version: 2, compile_ms: 500 };
    let log = binary_cache_hit_log("s", "set", "settings", "release", &cached);
    assert!(log.contains("pipeline 3 version 2") && log.contains("500 ms of build saved"), "{log}");
}

/// Failover's choice: every member computes the same winner for a pipeline; the
/// work of a missing member spreads over the healthy ones; one more member
/// leaving moves only the pipelines it had won.
#[test]
fn the_covering_member_is_deterministic_spread_and_stable() {
    let healthy = [0, 1, 3];
    let winners: Vec<u32> = (0..3_000).map(|id| Coverage::covering_member(id, &healthy).unwrap()).collect();
    let again: Vec<u32> = (0..3_000).map(|id| Coverage::covering_member(id, &[3, 1, 0]).unwrap()).collect();
    assert_eq!(winners, again, "the order the members are listed in changes nothing");
    for ordinal in healthy {
        let won = winners.iter().filter(|w| **w == ordinal).count();
        assert!((800..=1_200).contains(&won), "ordinal {ordinal} wins {won} of 3000 (a third is 1000)");
    }
    let fewer: Vec<u32> = (0..3_000).map(|id| Coverage::covering_member(id, &[0, 1]).unwrap()).collect();
    for (id, (before, after)) in winners.iter().zip(&fewer).enumerate() {
        if *before != 3 {
            assert_eq!(before, after, "pipeline {id} moved although its winner stayed");
        }
    }
    assert_eq!(Coverage::covering_member(7, &[]), None, "nobody healthy, nobody covers");
}

/// Who is missing: silent for longer than --failover-after; who may cover:
/// reported within the heartbeat window and able to build. Zero turns failover
/// off.
#[test]
fn coverage_follows_silence() {
    use std::time::Duration;
    let silence = |ordinal: u32| Duration::from_secs([1, 5, 200, 30][ordinal as usize]);
    let (after, window) = (Duration::from_secs(120), Duration::from_secs(10));
    let coverage = Coverage::of(4, silence, |_| true, after, window);
    assert_eq!(coverage, Coverage { missing: vec![2], healthy: vec![0, 1] }, "ordinal 3 is neither");
    assert_eq!(coverage.healthy_with(3), vec![0, 1, 3], "a member asking for work is alive");
    assert!(Coverage::of(4, silence, |_| true, Duration::ZERO, window).missing.is_empty(), "0: never");
    let unable = Coverage::of(4, silence, |ordinal| ordinal != 1, after, window);
    assert_eq!(unable.healthy, vec![0], "a member that takes no work (another dependency set) covers for nobody");
}

/// A failover claim: the record says who builds it for whom, only that member
/// may report under it, and a requeue gives it back to its own ordinal.
#[test]
fn a_failover_claim_is_held_by_the_covering_member() {
    let mut r = record(5); // ordinal 2 of 3
    let claim = r.claim(1, 10);
    assert_eq!((r.worker, r.built_by, r.holder(), r.queue_ordinal()), (2, Some(1), 1, 1));
    let event = &r.history.last().unwrap().event;
    assert_eq!(event, "claimed by ordinal 1 for ordinal 2 (failover, attempt 1)");
    assert_eq!(r.to_api().builder(), "ordinal 1 for ordinal 2 (failover)");
    assert!(held_by(Some(r.clone()), &claim, (1, 11), Some(11)).is_ok());
    let refused = held_by(Some(r.clone()), &claim, (2, 22), Some(22)).unwrap_err();
    assert_eq!(refused, ReportRefused::NotTheHolder { id: 5, holder: 1, ordinal: 2 });
    r.requeue(11, "its holder went missing");
    assert_eq!((r.status, r.built_by, r.queue_ordinal()), (Status::Pending, None, 2));
    r.claim(2, 12);
    assert_eq!((r.built_by, r.to_api().builder()), (None, "ordinal 2".to_owned()));
}

/// The profile is part of a version: the same source in another profile is a new
/// version in that profile; a record stored before profiles were per pipeline
/// counts as the farm's; the binary cache's key differs by profile.
#[test]
fn a_profile_is_part_of_the_version_and_of_the_binary_key() {
    let mut r = record(1);
    r.status = Status::Success;
    let dev = resubmit(&r, "s", &farm(("dev", "release"), 3), 5);
    assert_eq!((dev.change, dev.record.version, dev.record.profile.as_deref()), (Change::Updated, 2, Some("dev")));
    assert_eq!(dev.record.status, Status::Pending);
    assert!(dev.record.history.last().unwrap().event.ends_with("(dev)"), "{:?}", dev.record.history);
    assert_eq!(resubmit(&dev.record, "s", &farm(("dev", "release"), 3), 6).change, Change::Unchanged);
    let mut old = record(2);
    old.status = Status::Success;
    old.profile = None;
    assert_eq!(
        resubmit(&old, "s", &farm(("release", "release"), 3), 7).change,
        Change::Unchanged,
        "stored before: the farm's"
    );
    assert_eq!(resubmit(&old, "s", &farm(("dev", "release"), 3), 7).change, Change::Updated);
    assert_ne!(binary_key("s", "set", "settings", "dev", None), binary_key("s", "set", "settings", "release", None));
}

/// Rendezvous sharding: every ordinal of 0..N gets about 1/N; growing to N + 1
/// moves only pipelines to the new ordinal (about 1/(N + 1) of them), shrinking
/// back moves only the last ordinal's; modulo moves most.
#[test]
fn rendezvous_sharding_moves_about_one_nth() {
    let ids = 1..=4_000u64;
    let on = |sharding: Sharding, n: u32| ids.clone().map(|id| sharding.ordinal(id, n)).collect::<Vec<u32>>();
    let (three, four) = (on(Sharding::Rendezvous, 3), on(Sharding::Rendezvous, 4));
    let moved: Vec<(u32, u32)> = three.iter().zip(&four).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
    assert!(moved.iter().all(|(_, to)| *to == 3), "growing moves pipelines to the new ordinal only");
    assert!((800..=1_200).contains(&moved.len()), "{} of 4000 moved (1/4 is 1000)", moved.len());
    let modulo = on(Sharding::Modulo, 3).iter().zip(&on(Sharding::Modulo, 4)).filter(|(a, b)| a != b).count();
    assert!(modulo > 2_500, "id % N moves most: {modulo}");
    for ordinal in 0..3 {
        let share = three.iter().filter(|o| **o == ordinal).count();
        assert!((1_150..=1_520).contains(&share), "ordinal {ordinal} has {share} of 4000");
    }
    let mut r = record(7);
    let to = Sharding::Rendezvous.ordinal(7, 5);
    r.worker = (to + 1) % 5;
    assert!(r.reshard(Sharding::Rendezvous, 5, 9));
    assert_eq!(r.worker, to);
    assert!(r.history.last().unwrap().event.contains("resharding"), "{:?}", r.history);
    assert!(!r.reshard(Sharding::Rendezvous, 5, 10), "already there");
    r.claim(to, 11);
    r.worker = (to + 1) % 5;
    assert!(!r.reshard(Sharding::Rendezvous, 5, 12), "a build in flight finishes where it is");
}
