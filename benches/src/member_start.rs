//! Comparison 9: how soon a new member claims work when the operator's dependency
//! set is about a hundred crates of crates.io. Building the set is the slow part
//! of a new pod's start; the member compiles it through sccache on the shared
//! store, so a pod that starts after another (a second member, or every pod after
//! an upgrade) mostly reads hits. Cold: a new store. Warm: the store the cold
//! member just filled. Both members start from nothing of their own (an empty
//! build root at the same path, an empty cache of prebuilt sets, a new data
//! directory), exactly as a new pod with an empty volume does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::farm::{self, S3, Setup, Timed};
use crate::programs;
use crate::stats::{Row, median};

/// The operator's set: crates generated programs commonly use, with their
/// dependencies about a hundred crates compiled for Linux.
const MANIFEST: &str = r#"[package]
name = "bench-depset"
version = "0.1.0"
edition = "2021"

[dependencies]
anyhow = "1"
base64 = "0.22"
bytes = "1"
chrono = "0.4"
clap = { version = "4", features = ["derive"] }
csv = "1"
hex = "0.4"
indexmap = "2"
itertools = "0.14"
rand = "0.9"
rayon = "1"
regex = "1"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
sha2 = "0.10"
smallvec = "1"
thiserror = "2"
tokio = { version = "1", features = ["rt-multi-thread", "macros", "sync", "time"] }
tracing = "0.1"
url = "2"
uuid = { version = "1", features = ["v4"] }
"#;

/// Where a new member builds: one path for every start (sccache's keys name the
/// build root), privately mounted over each member's own empty directory.
const BUILD_ROOT: &str = "/tmp/kiln-bench-build-root-member-start";

/// The set, made with `kiln depset create` on the first run (vendoring needs the
/// network that once) and kept under `sets` for later, offline, runs.
fn operator_set(kiln: &Path, sets: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let dir = sets.join(format!("set-{}", &hex::encode(sha2::Sha256::digest(MANIFEST))[..12]));
    if dir.join("resolved.json").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(sets).with_context(|| format!("creating {}", sets.display()))?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("Cargo.toml"), MANIFEST)?;
    // Made beside its final place and renamed, so an interrupted run leaves no half set.
    let partial = sets.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let made = std::process::Command::new(kiln)
        .args(["depset", "create"])
        .arg(source.path().join("Cargo.toml"))
        .arg("-o")
        .arg(&partial)
        .output()
        .context("running kiln depset create")?;
    if !made.status.success() {
        bail!("kiln depset create (needs the network on the first run): {}", String::from_utf8_lossy(&made.stderr));
    }
    std::fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// One member's start, as it measured.
struct Start {
    /// From the process's start to the leader's record of the first claim.
    claim_ms: f64,
    /// The set's compilations through the cache: hits and misses.
    hits: u64,
    misses: u64,
}

fn now_ms() -> anyhow::Result<u64> {
    Ok(u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?)
}

/// `key=<number>` on `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Starts a new member (leader and worker, N = 1) with the set and `store`'s
/// cache, submits a small program as soon as the leader answers, and returns when
/// it was claimed: a member claims only once its prebuilt set is ready.
async fn start_member(setup: &Setup, set: &Path, store: &S3, work: &Path, variant: u64) -> anyhow::Result<Start> {
    let prebuilt = tempfile::Builder::new().prefix("kiln-bench-prebuilt-").tempdir()?;
    let mut extra = store.member_flags()?;
    extra.push(format!("--depset={}", set.display()));
    let started = now_ms()?;
    let farm = farm::spawn_leader(
        setup,
        prebuilt.path(),
        Some(PathBuf::from(BUILD_ROOT)),
        1,
        &extra,
        "warn,kiln_compiler_worker=info",
    );
    let program = programs::write(work, "first-claim", variant, 0, 0, 0)?;
    let answering = Instant::now();
    let id = loop {
        match farm.submit_program("first-claim", &program).await {
            Ok(id) => break id,
            Err(e) if answering.elapsed() > Duration::from_secs(60) => {
                return Err(e.context("the new member's leader did not answer within a minute"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let record = farm.wait_success(id).await?;
    let claimed = record["started_at_ms"].as_u64().context("the record has no started_at_ms")?;
    let log = farm.member_log(0);
    let line = log
        .lines()
        .find(|l| l.contains("the dependency set's compilations through the cache"))
        .with_context(|| format!("the member did not log its set's cache figures:\n{log}"))?;
    Ok(Start {
        claim_ms: claimed.saturating_sub(started) as f64,
        hits: field(line, "hits").context("no hits= in the member's log")?,
        misses: field(line, "misses").context("no misses= in the member's log")?,
    })
}

/// Comparison 9: a new member's start to its first claim, cold store vs warm store.
/// Each round has a store of its own: the cold member fills it, then a warm
/// member starts from nothing against it.
pub async fn member_start(setup: &Setup, sets: &Path, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Row::skipped(9, "new member ready", "needs root for the members' private mounts of one build root"));
    }
    let set = operator_set(&setup.kiln, sets)?;
    let vendored = std::fs::read_dir(set.join("vendor"))?.count();
    let work = work.join("member-start");
    let (mut cold, mut warm, mut ratios, mut compiled, mut warm_hits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        let store_dir = tempfile::Builder::new().prefix("kiln-bench-s3-").tempdir()?;
        let store = S3::start(store_dir.path())?;
        let first = start_member(setup, &set, &store, &work, 2 * round).await?;
        let second = start_member(setup, &set, &store, &work, 2 * round + 1).await?;
        eprintln!(
            "  round {}: cold {:.1} s ({} hits, {} misses), warm {:.1} s ({} hits, {} misses)",
            round + 1,
            first.claim_ms / 1000.0,
            first.hits,
            first.misses,
            second.claim_ms / 1000.0,
            second.hits,
            second.misses
        );
        ratios.push(second.claim_ms / first.claim_ms);
        compiled.push((first.hits + first.misses) as f64);
        warm_hits.push(100.0 * second.hits as f64 / (second.hits + second.misses).max(1) as f64);
        cold.push(first.claim_ms);
        warm.push(second.claim_ms);
    }
    let ratio = median(&ratios);
    Ok(Row {
        number: 9,
        what: "new member ready".into(),
        measured: format!(
            "set of {vendored} vendored crates ({:.0} compilations): start to first claim warm {:.1} s vs cold {:.1} s: ratio {ratio:.2}; warm hit rate {:.0} %",
            median(&compiled),
            median(&warm) / 1000.0,
            median(&cold) / 1000.0,
            median(&warm_hits)
        ),
        goal: "ratio ≤ 0.3".into(),
        met: Some(ratio <= 0.3),
    })
}
