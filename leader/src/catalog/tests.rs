//! The catalog's tests, each over a fresh database in a temporary directory:
//! what a worker, a user or the collector does, and what the catalog then holds.

use redb::Database;

use kiln_core::api::{CacheFigures, Change, Status};
use kiln_core::program::ProgramFile;

use super::claims::truncate_log;
use super::tables::{META, NAMES, NEXT_ID, PIPELINES, SOURCES};
use super::upgrade::SCHEMA_KEY;
use super::*;
use crate::rules::{Coverage, Farm, Figures, Pipeline, Report, ReportRefused};
/// A farm of `workers` that submits in release, its own profile.
fn on<'a>(workers: u32, binary_cache: Option<(&'a str, &'a str)>) -> Farm<'a> {
    Farm { profiles: ("release", "release"), workers, binary_cache, sharding: Default::default() }
}

fn src(text: &str) -> Vec<ProgramFile> {
    vec![ProgramFile { path: "src/main.rs".into(), content: text.as_bytes().to_vec(), executable: false }]
}

fn catalog() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap();
    (dir, catalog)
}

#[test]
fn ids_grow_and_versions_follow_the_source() {
    let (_dir, c) = catalog();
    let a = c.submit("a", "s1", &src("src"), on(3, None), 1).unwrap();
    let b = c.submit("b", "s2", &src("src2"), on(3, None), 2).unwrap();
    assert_eq!((a.record.id, b.record.id), (1, 2));
    assert_eq!((a.change, a.record.worker), (Change::Created, 1));
    let same = c.submit("a", "s1", &src("src"), on(3, None), 3).unwrap();
    assert_eq!((same.change, same.record.version), (Change::Unchanged, 1));
    let next = c.submit("a", "s3", &src("src3"), on(3, None), 4).unwrap();
    assert_eq!((next.change, next.record.id, next.record.version), (Change::Updated, 1, 2));
    c.delete(2, 5).unwrap();
    assert_eq!(c.submit("c", "s4", &src("x"), on(3, None), 5).unwrap().record.id, 3, "ids are never reused");
}

#[test]
fn claims_are_exclusive_and_by_ordinal() {
    let (_dir, c) = catalog();
    for name in ["a", "b", "c", "d"] {
        c.submit(name, name, &src(name), on(3, None), 0).unwrap();
    }
    let (first, source) = c.claim(1, "set", &Coverage::default(), 1).unwrap().unwrap();
    assert_eq!((first.id, source), (1, src("a")));
    let (second, _) = c.claim(1, "set", &Coverage::default(), 1).unwrap().unwrap();
    assert_eq!(second.id, 4);
    assert!(c.claim(1, "set", &Coverage::default(), 1).unwrap().is_none(), "nothing is handed out twice");
    assert_eq!(c.claim(0, "set", &Coverage::default(), 1).unwrap().unwrap().0.id, 3);
}

#[test]
fn a_restarted_member_gets_its_work_back_and_old_reports_are_refused() {
    let (dir, c) = catalog();
    c.submit("a", "s", &src("x"), on(2, None), 0).unwrap();
    assert!(c.member_seen(1, 111, 0).unwrap().is_empty());
    let (record, _) = c.claim(1, "set", &Coverage::default(), 1).unwrap().unwrap();
    let old_claim = record.claim_key();
    drop(c);
    let c = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap();
    assert!(
        c.member_seen(1, 111, 2).unwrap().is_empty(),
        "the same incarnation keeps its work across a leader restart"
    );
    assert!(c.is_current(&old_claim).unwrap());
    assert_eq!(c.member_seen(1, 222, 3).unwrap(), vec![1]);
    assert_eq!(c.get(1).unwrap().unwrap().status, Status::Pending);
    let refused = c.report(&old_claim, (1, 111), Report::Compiling, None, 4);
    assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::StaleClaim { .. }))));
    let (again, _) = c.claim(1, "set", &Coverage::default(), 5).unwrap().unwrap();
    assert_eq!(again.attempt, 2);
    let figures = Figures { cache: CacheFigures::default(), ..Figures::default() };
    // Not from another ordinal, nor from the incarnation that restarted away.
    for stranger in [(0, 222), (1, 111)] {
        let refused = c.report(&again.claim_key(), stranger, Report::Compiling, None, 6);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
        let refused = c.record_upload(&again.claim_key(), stranger, &"a".repeat(64), 1, || true, 6);
        assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotTheHolder { .. }))), "{stranger:?}");
    }
    // Success names only what was uploaded under this claim.
    let success = |sha: &str| Report::Success {
        binary_sha256: sha.into(),
        binary_size: 99,
        figures: figures.clone(),
        build_settings: String::new(),
        ran_submitted_code: false,
    };
    let refused = c.report(&again.claim_key(), (1, 222), success(&"b".repeat(64)), None, 6);
    assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotUploaded { .. }))));
    c.record_upload(&again.claim_key(), (1, 222), &"c".repeat(64), 7, || true, 6).unwrap();
    let refused = c.report(&again.claim_key(), (1, 222), success(&"b".repeat(64)), None, 6);
    assert!(matches!(refused, Err(CatalogError::Refused(ReportRefused::NotUploaded { .. }))), "another binary");
    let done = c
        .report(&again.claim_key(), (1, 222), Report::CompileError { error: "e".into(), figures }, Some("log text"), 6)
        .unwrap();
    assert_eq!(done.status, Status::CompileError);
    assert_eq!(c.log(1).unwrap().as_deref(), Some("log text"));
}

#[test]
fn long_logs_keep_both_ends() {
    let log = format!("{}{}", "a".repeat(MAX_LOG_BYTES), "b".repeat(100));
    let kept = truncate_log(&log);
    assert!(kept.len() < log.len());
    assert!(kept.starts_with('a') && kept.ends_with('b') && kept.contains("left out"));
}

#[test]
fn a_schema_zero_catalog_is_rewritten_once_and_keeps_everything() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    let pipeline = crate::rules::tests::record(1);
    {
        // What Kiln 0.1 wrote: bare JSON records, protobuf sources, no schema key.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut pipelines = txn.open_table(PIPELINES).unwrap();
            pipelines.insert(1, serde_json::to_vec(&pipeline).unwrap().as_slice()).unwrap();
            let mut names = txn.open_table(NAMES).unwrap();
            names.insert(pipeline.name.as_str(), 1).unwrap();
            let mut sources = txn.open_table(SOURCES).unwrap();
            let bundle = kiln_core::cluster::source_bundle(&src("old")).encode_to_vec();
            sources.insert("s", bundle.as_slice()).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(NEXT_ID, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let c = Catalog::open(&path, 0).unwrap();
    assert_eq!(c.get(1).unwrap().unwrap(), pipeline);
    assert_eq!(c.source("s").unwrap().unwrap(), src("old"));
    let (claimed, source) = c.claim(1, "set", &Coverage::default(), 5).unwrap().unwrap();
    assert_eq!((claimed.id, source), (1, src("old")));
    drop(c);
    let c = Catalog::open(&path, 0).unwrap();
    assert_eq!(c.get(1).unwrap().unwrap().status, Status::Compiling, "a second open changes nothing");
}

#[test]
fn a_catalog_from_a_newer_kiln_is_refused_in_words() {
    let (dir, c) = catalog();
    {
        let txn = c.db().unwrap().begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, 99).unwrap();
        txn.commit().unwrap();
    }
    drop(c);
    let error = Catalog::open(&dir.path().join("catalog.redb"), 0).unwrap_err().to_string();
    assert!(error.contains("newer Kiln (catalog schema 99"), "{error}");
}

/// Takes pipeline `name` (on `ordinal` of `workers`) through a build that
/// uploads `sha`, as a worker would.
fn build(c: &Catalog, ordinal: u32, sha: &str, now: u64) -> Pipeline {
    build_running(c, ordinal, sha, now, false)
}

/// [`build`], by a build that ran code of its submitter or not.
fn build_running(c: &Catalog, ordinal: u32, sha: &str, now: u64, ran_submitted_code: bool) -> Pipeline {
    c.member_seen(ordinal, 7, now).unwrap();
    let (record, _) = c.claim(ordinal, "set", &Coverage::default(), now).unwrap().expect("something to claim");
    let claim = record.claim_key();
    c.record_upload(&claim, (ordinal, 7), sha, 10, || true, now).unwrap();
    let success = Report::Success {
        binary_sha256: sha.into(),
        binary_size: 10,
        figures: Figures { compile_ms: 900, ..Figures::default() },
        build_settings: SETTINGS.into(),
        ran_submitted_code,
    };
    c.report(&claim, (ordinal, 7), success, Some("built"), now).unwrap()
}

const SETTINGS: &str = "settings-of-the-farm";

/// A binary whose build ran its submitter's code read compile-cache entries
/// only that pipeline's builds made: served again to that pipeline, to no other.
#[test]
fn a_binary_built_running_submitted_code_is_served_to_its_own_pipeline_only() {
    let (_dir, c) = catalog();
    let farm = Some(("set", SETTINGS));
    let sha = "b".repeat(64);
    c.submit("scripted", "s", &src("same"), on(1, farm), 0).unwrap();
    build_running(&c, 0, &sha, 1, true);
    let other = c.submit("other", "s", &src("same"), on(1, farm), 2).unwrap().record;
    assert_eq!((other.status, other.binary_cache_hit), (Status::Pending, None), "not to another pipeline");
    c.delete(other.id, 2).unwrap();
    c.submit("scripted", "t", &src("changed"), on(1, farm), 3).unwrap();
    let back = c.submit("scripted", "s", &src("same"), on(1, farm), 4).unwrap().record;
    assert_eq!((back.status, back.binary_sha256.as_deref()), (Status::Success, Some(sha.as_str())), "{back:?}");
    assert_eq!(back.binary_cache_hit.as_ref().map(|h| (h.pipeline_id, h.version)), Some((1, 1)));
}

#[test]
fn a_known_binary_is_served_at_once_while_it_is_stored_and_never_after_it_is_lost() {
    let (_dir, c) = catalog();
    let farm = Some(("set", SETTINGS));
    let sha = "a".repeat(64);
    let first = c.submit("first", "s", &src("same"), on(1, farm), 0).unwrap();
    assert_eq!(first.record.status, Status::Pending, "nothing is known yet");
    build(&c, 0, &sha, 1);

    // The same source under another name: success at once, no claim.
    let again = c.submit("again", "s", &src("same"), on(1, farm), 2).unwrap().record;
    assert_eq!((again.status, again.binary_sha256.as_deref(), again.attempt), (Status::Success, Some(sha.as_str()), 0));
    let hit = again.binary_cache_hit.as_ref().expect("recorded as a binary cache hit");
    assert_eq!((hit.pipeline_id, hit.version, hit.saved_ms), (1, 1, 900));
    assert!(c.log(again.id).unwrap().unwrap().contains("binary cache hit"));
    assert!(c.claim(0, "set", &Coverage::default(), 3).unwrap().is_none(), "nothing to build");

    // Other settings, another set, another source: built.
    for (name, source, farm) in [
        ("toolchain", "s", Some(("set", "other-settings"))),
        ("depset", "s", Some(("other-set", SETTINGS))),
        ("source", "t", farm),
        ("off", "s", None),
    ] {
        let r = c.submit(name, source, &src(source), on(1, farm), 4).unwrap().record;
        assert_eq!((r.status, r.binary_cache_hit), (Status::Pending, None), "{name}");
        c.delete(r.id, 4).unwrap();
    }

    // Still served while unreferenced but not collected; not once collected.
    for id in [1, 2] {
        c.delete(id, 10).unwrap();
    }
    let kept = c.submit("kept", "s", &src("same"), on(1, farm), 11).unwrap().record;
    assert_eq!(kept.status, Status::Success, "the artifact is still stored");
    c.delete(kept.id, 12).unwrap();
    c.collect(10_000, 1000, |_| Ok(())).unwrap();
    let collected = c.submit("collected", "s", &src("same"), on(1, farm), 10_001).unwrap().record;
    assert_eq!(collected.status, Status::Pending, "its artifact is gone: built again");

    // A binary that failed its hash is never served again.
    build(&c, 0, &"b".repeat(64), 10_002);
    c.artifact_lost(&"b".repeat(64), "its bytes failed their hash", 10_003).unwrap();
    let lost = c.submit("lost", "s", &src("same"), on(1, farm), 10_004).unwrap().record;
    assert_eq!(lost.status, Status::Pending, "a lost binary is not served");
}

/// What the counters say, checked against a scan of every record.
fn assert_counts_match_a_scan(c: &Catalog) {
    let counts = c.counts().unwrap();
    let all = c.page(&PageQuery { limit: MAX_PAGE, ..PageQuery::default() }).unwrap().records;
    for status in Status::ALL {
        let scanned = all.iter().filter(|r| r.status == status).count() as u64;
        assert_eq!(counts.by_status[&status], scanned, "{status}");
    }
    for ordinal in 0..3 {
        let scanned = all.iter().filter(|r| r.status == Status::Pending && r.worker == ordinal).count() as u64;
        assert_eq!(counts.pending_by_ordinal.get(&ordinal).copied().unwrap_or(0), scanned, "ordinal {ordinal}");
    }
}

#[test]
fn pages_follow_ids_and_filter_by_status_and_name() {
    let (_dir, c) = catalog();
    for i in 1..=10 {
        let name = if i % 2 == 0 { format!("even-{i}") } else { format!("odd-{i}") };
        c.submit(&name, &format!("s{i}"), &src(&name), on(3, None), i).unwrap();
    }
    let first = c.page(&PageQuery { limit: 4, ..PageQuery::default() }).unwrap();
    assert_eq!(first.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(first.next_after, Some(4));
    let last = c.page(&PageQuery { after: 8, limit: 4, ..PageQuery::default() }).unwrap();
    assert_eq!(last.records.iter().map(|r| r.id).collect::<Vec<_>>(), [9, 10]);
    assert_eq!(last.next_after, None, "no page after the last");

    build(&c, 1, &"a".repeat(64), 20);
    let pending = c.page(&PageQuery { limit: 100, status: Some(Status::Pending), ..PageQuery::default() }).unwrap();
    assert_eq!(pending.records.len(), 9);
    let done = c.page(&PageQuery { limit: 100, status: Some(Status::Success), ..PageQuery::default() }).unwrap();
    assert_eq!(done.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    let even = c.page(&PageQuery { limit: 2, name_prefix: Some("even-".into()), ..PageQuery::default() }).unwrap();
    assert_eq!(even.records.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 4]);
    assert_eq!(even.next_after, Some(4));
    let odd_pending =
        PageQuery { limit: 100, status: Some(Status::Pending), name_prefix: Some("odd".into()), after: 0 };
    assert_eq!(c.page(&odd_pending).unwrap().records.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 5, 7, 9]);
}

#[test]
fn counters_move_with_every_write() {
    let (_dir, c) = catalog();
    for i in 1..=9 {
        c.submit(&format!("p{i}"), &format!("s{i}"), &src("x"), on(3, None), i).unwrap();
    }
    assert_counts_match_a_scan(&c);
    build(&c, 1, &"a".repeat(64), 10);
    c.member_seen(2, 1, 11).unwrap();
    c.claim(2, "set", &Coverage::default(), 11).unwrap().unwrap();
    assert_counts_match_a_scan(&c);
    c.member_seen(2, 2, 12).unwrap();
    c.delete(3, 13).unwrap();
    c.submit("p4", "changed", &src("y"), on(3, None), 14).unwrap();
    assert_counts_match_a_scan(&c);
    let counts = c.counts().unwrap();
    assert_eq!((counts.sources, counts.unreferenced["source"]), (10, 2), "s3 (deleted) and s4 (replaced) wait");
}

#[test]
fn an_unreadable_record_is_skipped_and_blocks_nothing() {
    let (_dir, c) = catalog();
    for i in 1..=4 {
        c.submit(&format!("p{i}"), &format!("s{i}"), &src("x"), on(1, None), i).unwrap();
    }
    {
        let txn = c.db().unwrap().begin_write().unwrap();
        txn.open_table(PIPELINES).unwrap().insert(2, b"{not json".as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let page = c.page(&PageQuery { limit: 10, ..PageQuery::default() }).unwrap();
    assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 4]);
    assert_eq!(page.unreadable, [2]);
    assert_eq!(c.claim(0, "set", &Coverage::default(), 5).unwrap().unwrap().0.id, 1);
    assert_eq!(
        c.claim(0, "set", &Coverage::default(), 5).unwrap().unwrap().0.id,
        3,
        "the unreadable record is passed over"
    );
    assert_eq!(c.claim(0, "set", &Coverage::default(), 5).unwrap().unwrap().0.id, 4);
    assert!(c.claim(0, "set", &Coverage::default(), 5).unwrap().is_none());
    assert!(matches!(c.get(2), Err(CatalogError::Corrupt { .. })), "asked for by id, it is an error naming it");
}

#[test]
fn unreferenced_files_go_after_the_retention_and_shared_ones_stay() {
    let (_dir, c) = catalog();
    let sha = "b".repeat(64);
    c.submit("one", "s-shared", &src("same"), on(1, None), 0).unwrap();
    build(&c, 0, &sha, 1);
    c.submit("two", "s-shared", &src("same"), on(1, None), 2).unwrap();
    build(&c, 0, &sha, 3);
    c.delete(1, 100).unwrap();
    let mut removed = Vec::new();
    let mut remove = |sha: &str| {
        removed.push(sha.to_owned());
        Ok(())
    };
    let collected = c.collect(10_000, 1000, &mut remove).unwrap();
    assert_eq!(collected, Collected::default(), "pipeline two still uses the source and the artifact");
    c.delete(2, 200).unwrap();
    assert_eq!(c.collect(1000, 1000, |_| panic!("too early")).unwrap(), Collected::default());
    let collected = c.collect(1200, 1000, &mut remove).unwrap();
    assert_eq!(collected, Collected { sources: 1, artifacts: 1 });
    assert_eq!(removed, std::slice::from_ref(&sha));
    assert!(c.source("s-shared").unwrap().is_none());
    assert_eq!(c.counts().unwrap().sources, 0);

    // A file that fails to go stays scheduled; one referenced again is kept.
    c.adopt_artifacts(&["c".repeat(64)], 300).unwrap();
    let failed = c.collect(2000, 1000, |_| Err(std::io::Error::other("busy"))).unwrap();
    assert_eq!(failed.artifacts, 0);
    assert_eq!(c.counts().unwrap().unreferenced["artifact"], 1);
    c.submit("three", "s3", &src("3"), on(1, None), 2100).unwrap();
    build(&c, 0, &"c".repeat(64), 2100);
    assert_eq!(c.collect(9000, 1000, |_| panic!("it is referenced")).unwrap(), Collected::default());
}

#[test]
fn a_lost_artifact_sends_every_pipeline_using_it_back_to_be_rebuilt() {
    let (_dir, c) = catalog();
    let sha = "d".repeat(64);
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        c.submit(name, "same", &src("same"), on(1, None), i as u64).unwrap();
        build(&c, 0, &sha, i as u64);
    }
    let rebuilt = c.artifact_lost(&sha, "its bytes failed their hash", 50).unwrap();
    assert_eq!(rebuilt.len(), 2);
    for record in rebuilt {
        assert_eq!((record.status, record.binary_sha256.as_deref()), (Status::Pending, None));
        assert!(record.rebuilding.as_deref().is_some_and(|r| r.contains("failed their hash")));
        assert!(record.history.last().unwrap().event.contains("failed their hash"));
    }
    let again = build(&c, 0, &"e".repeat(64), 60);
    assert_eq!((again.attempt, again.rebuilding), (2, None), "attempt numbers show the rebuild");
}

#[test]
fn a_claim_whose_lease_ran_out_goes_back_to_its_ordinal() {
    let (_dir, c) = catalog();
    c.submit("a", "s", &src("x"), on(2, None), 0).unwrap();
    c.member_seen(1, 9, 0).unwrap();
    let (record, _) = c.claim(1, "set", &Coverage::default(), 1).unwrap().unwrap();
    assert_eq!(c.in_flight().unwrap(), vec![(record.claim_key(), 1)]);
    let requeued = c.requeue_claim(&record.claim_key(), "its lease ran out", 2).unwrap().unwrap();
    assert_eq!((requeued.status, requeued.worker), (Status::Pending, 1));
    assert!(c.requeue_claim(&record.claim_key(), "again", 3).unwrap().is_none(), "only a current claim");
    assert_eq!(c.claim(1, "set", &Coverage::default(), 4).unwrap().unwrap().0.attempt, 2);
}

/// A catalog written by Kiln before the indexes (catalog schema 1, the code of
/// commit 7eea469): it opens, every record reads, and the books built from it
/// agree with the records.
#[test]
fn the_previous_schemas_catalog_opens_and_serves_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catalog-schema-1.redb"), &path).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/catalog-schema-1.json")).unwrap();
    let c = Catalog::open(&path, 1_000).unwrap();
    let all = c.page(&PageQuery { limit: MAX_PAGE, ..PageQuery::default() }).unwrap();
    assert!(all.unreadable.is_empty());
    let expected = expected.as_array().unwrap();
    assert_eq!(all.records.len(), expected.len());
    for (record, want) in all.records.iter().zip(expected) {
        assert_eq!(serde_json::to_value(record.to_api()).unwrap()["status"], want["status"]);
        assert_eq!(record.id, want["id"].as_u64().unwrap());
        assert_eq!(record.name, want["name"].as_str().unwrap());
        assert_eq!(record.binary_sha256.as_deref(), want["binary_sha256"].as_str());
        assert!(c.source(&record.source_sha256).unwrap().is_some(), "the source of {} reads", record.name);
    }
    assert_counts_match_a_scan(&c);
    // The queue works from the built index: the first pending id of ordinal 1.
    let pending = all.records.iter().find(|r| r.status == Status::Pending && r.worker == 1).map(|r| r.id);
    c.member_seen(1, 77, 2_000).unwrap();
    assert_eq!(c.claim(1, "set", &Coverage::default(), 2_000).unwrap().map(|(r, _)| r.id), pending);
}

/// With ordinal 2 missing, ordinals 0 and 1 take its pending pipelines after
/// their own, each the ones it wins, each once; the record says so; a build in
/// flight is found under its holder when that member restarts; once ordinal 2
/// is back, its new pipelines go to it.
#[test]
fn a_missing_members_pipelines_go_to_the_members_that_win_them() {
    let (_dir, c) = catalog();
    // ids 1..=12 on 3 members: 4 per ordinal (2, 5, 8, 11 are ordinal 2's).
    for id in 1..=12u64 {
        let name = format!("p{id}");
        c.submit(&name, &name, &src(&name), on(3, None), 0).unwrap();
    }
    for ordinal in [0, 1] {
        c.member_seen(ordinal, 10, 0).unwrap();
    }
    let coverage = Coverage { missing: vec![2], healthy: vec![0, 1] };
    let mut taken: Vec<(u32, u64)> = Vec::new();
    for ordinal in [0, 1] {
        while let Some((record, _)) = c.claim(ordinal, "set", &coverage, 1).unwrap() {
            taken.push((ordinal, record.id));
        }
    }
    let mut ids: Vec<u64> = taken.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=12).collect::<Vec<_>>(), "each once: {taken:?}");
    for (ordinal, id) in &taken {
        let record = c.get(*id).unwrap().unwrap();
        assert_eq!(record.holder(), *ordinal);
        if id % 3 == 2 {
            assert_eq!(record.built_by, Some(*ordinal), "pipeline {id}");
            assert_eq!(Coverage::covering_member(*id, &[0, 1]), Some(*ordinal), "pipeline {id} went to its winner");
        } else {
            assert_eq!((record.built_by, record.worker), (None, *ordinal), "its own ordinal's pipeline {id}");
        }
    }
    // Its own queue first: ordinal 0's first claim was one of its own.
    assert_eq!(taken.iter().find(|(o, _)| *o == 0).map(|(_, id)| id % 3), Some(0));
    // A member covering for ordinal 2 restarts: the failover builds it held are found.
    let covered_by_1 = taken.iter().filter(|(o, id)| *o == 1 && id % 3 == 2).count();
    let held_by_1 = taken.iter().filter(|(o, _)| *o == 1).count();
    assert_eq!(c.member_seen(1, 11, 3).unwrap().len(), held_by_1, "{covered_by_1} of them for ordinal 2");
    // Ordinal 2 is back: what is pending of its ordinal (the builds ordinal 1's
    // restart sent back), and what is new (id 14), is its own.
    for name in ["p13", "p14"] {
        c.submit(name, name, &src(name), on(3, None), 4).unwrap();
    }
    let back = Coverage { missing: vec![], healthy: vec![0, 1, 2] };
    assert!(c.claim(0, "set", &back, 5).unwrap().is_none(), "nothing of ordinal 2's goes to ordinal 0 now");
    let mut own = Vec::new();
    while let Some((record, _)) = c.claim(2, "set", &back, 5).unwrap() {
        own.push((record.id, record.built_by));
    }
    assert!(own.contains(&(14, None)), "its new pipeline: {own:?}");
    assert!(own.iter().all(|(id, by)| id % 3 == 2 && by.is_none()), "{own:?}");
}
