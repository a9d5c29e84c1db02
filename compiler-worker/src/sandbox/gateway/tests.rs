//! The cache gateway's unit tests: the gate's key scoping and reading of ranges,
//! without a socket.

use super::*;

fn gate(prefix: &str) -> Gate {
    Gate {
        backend: Backend::Local { dir: PathBuf::from("/nonexistent"), costs: PathBuf::from("/nonexistent") },
        bucket: "cache".into(),
        prefix: prefix.into(),
        read_only: false,
        scope: Mutex::new(Scope::Shared),
        ledger: Mutex::default(),
    }
}

#[test]
fn the_ledger_times_a_miss_until_it_is_stored_and_sums_what_hits_saved() {
    let mut ledger = Ledger::default();
    assert_eq!(ledger.stored("never-missed"), None, "an entry stored without a miss has no cost");
    ledger.missed("k");
    let first = ledger.missed["k"];
    ledger.missed("k");
    assert_eq!(ledger.missed["k"], first, "the compile started at the first miss");
    assert!(ledger.stored("k").is_some());
    assert_eq!(ledger.stored("k"), None, "a cost is taken once");
    for cost in [Some(1500), None, Some(u64::MAX)] {
        ledger.hit(cost);
    }
    assert_eq!(
        ledger.savings,
        Savings { saved_ms: 1500 + MAX_COST_MS, hits_with_cost: 2, hits_without_cost: 1 },
        "a hostile cost counts at most a day"
    );
    for i in 0..MAX_MISSES_REMEMBERED + 10 {
        ledger.missed(&i.to_string());
    }
    assert_eq!(ledger.missed.len(), MAX_MISSES_REMEMBERED, "a flood of misses is bounded");
    assert_eq!(parse_cost(" 42\n"), Some(42));
    assert_eq!(parse_cost("-1"), None);
    assert_eq!(parse_cost("<script>"), None);
}

fn key(gate: &Gate, uri: &str) -> Option<String> {
    object_key(gate, &uri.parse().unwrap()).ok()
}

#[test]
fn only_keys_of_sccaches_shape_under_the_prefix_of_the_bucket_are_served() {
    let g = gate("sccache/");
    let digest = format!("abc{}", "0".repeat(61));
    let good = format!("/cache/sccache/a/b/c/{digest}");
    assert_eq!(key(&g, &good), Some(format!("sccache/a/b/c/{digest}")));
    assert_eq!(key(&g, "/cache/sccache/.sccache_check").as_deref(), Some("sccache/.sccache_check"));
    let misfiled = format!("/cache/sccache/a/b/d/{digest}");
    let upper = format!("/cache/sccache/A/b/c/A{}", &digest[1..]);
    let short = "/cache/sccache/a/b/c/abc0".to_owned();
    let nested = format!("/cache/sccache/pipelines/x/a/b/c/{digest}");
    for hostile in [
        misfiled.as_str(),
        upper.as_str(),
        short.as_str(),
        nested.as_str(),
        "/cache/sccache/0",
        "/cache/sccache/f",
        "/cache/sccache/a/b/c/abc",
        "/other/sccache/a",
        "/cache/elsewhere/a",
        "/cache/sccache/../elsewhere/a",
        "/cache/sccache//a",
        "/cache/sccache/a/./b",
        "/cache/sccache/%2e%2e/a",
        "/cache/sccache/a?list-type=2",
        "/cache/?list-type=2&prefix=",
        "/cache/sccache/a?uploads",
        "/cache",
        "/",
    ] {
        assert_eq!(key(&g, hostile), None, "{hostile} must be refused");
    }
    assert_eq!(key(&gate(""), &format!("/cache/a/b/c/{digest}")), Some(format!("a/b/c/{digest}")));
    assert_eq!(key(&gate(""), "/cache/a/b"), None);
}

/// Through a real local store: a build that runs submitted code writes only its
/// pipeline's namespace and reads it back; no other build reads it; a build
/// without submitted code writes where every build reads.
#[tokio::test]
async fn a_pipelines_own_entries_are_read_back_by_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::LocalDisk { dir: dir.path().to_owned(), read_only: false };
    let gateway = Gateway::start(&store, &dir.path().join("gateway.sock")).await.unwrap();
    let gate = gateway.gate.clone();
    let digest = format!("abc{}", "1".repeat(61));
    let uri: Uri = format!("/{LOCAL_BUCKET}/a/b/c/{digest}").parse().unwrap();
    let call = |method: Method, body: &'static [u8]| {
        let gate = gate.clone();
        let uri = uri.clone();
        async move {
            let door = Door { gate, fixed: None };
            handle(State(door), method, uri, HeaderMap::new(), Bytes::from_static(body)).await.status()
        }
    };
    gateway.set_scope(Scope::Pipeline("forger".into()));
    assert_eq!(call(Method::PUT, b"forged").await, StatusCode::OK);
    assert!(dir.path().join(format!("gateway/pipelines/forger/a/b/c/{digest}")).exists());
    assert!(!dir.path().join(format!("gateway/a/b/c/{digest}")).exists(), "not where everyone reads");
    assert_eq!(call(Method::GET, b"").await, StatusCode::OK, "its own entry, read back");
    gateway.set_scope(Scope::Pipeline("victim".into()));
    assert_eq!(call(Method::GET, b"").await, StatusCode::NOT_FOUND, "another pipeline's is not read");
    gateway.set_scope(Scope::Shared);
    assert_eq!(call(Method::HEAD, b"").await, StatusCode::NOT_FOUND);
    assert_eq!(call(Method::PUT, b"honest").await, StatusCode::OK);
    assert_eq!(std::fs::read(dir.path().join(format!("gateway/a/b/c/{digest}"))).unwrap(), b"honest");
    gateway.set_scope(Scope::Pipeline("forger".into()));
    assert_eq!(call(Method::PUT, b"again").await, StatusCode::OK);
    assert_eq!(
        std::fs::read(dir.path().join(format!("gateway/a/b/c/{digest}"))).unwrap(),
        b"honest",
        "the shared entry stays"
    );

    // sccache's startup check is answered without the store.
    let check: Uri = format!("/{LOCAL_BUCKET}/.sccache_check").parse().unwrap();
    let door = Door { gate: gate.clone(), fixed: None };
    let status =
        |method| handle(State(door.clone()), method, check.clone(), HeaderMap::new(), Bytes::from_static(b"Hello"));
    assert_eq!(status(Method::GET).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(status(Method::PUT).await.status(), StatusCode::OK);
    assert!(!dir.path().join("gateway/.sccache_check").exists(), "the check stores nothing");

    let read_only = CacheStore::LocalDisk { dir: dir.path().join("ro"), read_only: true };
    let gateway = Gateway::start(&read_only, &dir.path().join("ro.sock")).await.unwrap();
    let door = Door { gate: gateway.gate.clone(), fixed: None };
    let status =
        handle(State(door), Method::PUT, uri.clone(), HeaderMap::new(), Bytes::from_static(b"x")).await.status();
    assert_eq!(status, StatusCode::FORBIDDEN, "--sccache-read-only holds on a local store");
    assert!(gateway.sandbox_env().contains(&("SCCACHE_S3_RW_MODE".into(), "READ_ONLY".into())));
    assert!(gateway.writers().starts_with("read-only"));
}

/// The long-lived cache server's door, over its real socket: whatever scope the
/// worker last set for a build, its writes land where every build reads, and it
/// reads no pipeline's own entries.
#[tokio::test]
async fn the_shared_door_writes_shared_whatever_the_builds_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::LocalDisk { dir: dir.path().to_owned(), read_only: false };
    let mut gateway = Gateway::start(&store, &dir.path().join("gateway.sock")).await.unwrap();
    let door = dir.path().join("shared.sock");
    gateway.open_shared_door(&door).unwrap();
    let digest = format!("abc{}", "2".repeat(61));
    let path = format!("/{LOCAL_BUCKET}/a/b/c/{digest}");
    gateway.set_scope(Scope::Pipeline("forger".into()));
    let request = |socket: PathBuf, method: &'static str, body: &'static str| {
        let path = path.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer.lines().next().unwrap_or_default().to_owned()
        }
    };
    let scoped = dir.path().join("gateway.sock");
    assert!(request(scoped.clone(), "PUT", "forged").await.contains("200"));
    assert!(dir.path().join(format!("gateway/pipelines/forger/a/b/c/{digest}")).exists());
    assert!(request(door.clone(), "GET", "").await.contains("404"), "the door reads no pipeline's own entry");
    assert!(request(door.clone(), "PUT", "compiled").await.contains("200"));
    assert_eq!(std::fs::read(dir.path().join(format!("gateway/a/b/c/{digest}"))).unwrap(), b"compiled");
    assert!(request(door, "DELETE", "").await.contains("405"), "the door refuses what the gateway refuses");
}

#[test]
fn ranges_are_read_as_s3_reads_them() {
    assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
    assert_eq!(parse_range("bytes=2-4", 10), Some((2, 3)));
    assert_eq!(parse_range("bytes=5-100", 10), Some((5, 5)));
    assert_eq!(parse_range("bytes=-3", 10), Some((7, 3)));
    assert_eq!(parse_range("bytes=10-", 10), None);
    assert_eq!(parse_range("bytes=0-", 0), None);
    assert_eq!(parse_range("items=0-1", 10), None);
    assert_eq!(parse_content_range("bytes 2-4/10"), Some((2, 10)));
}
