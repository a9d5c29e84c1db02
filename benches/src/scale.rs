//! Comparison 10: the catalog at scale, by simulation past this machine. The real
//! leader (a `kiln server` process, N = 257) serves 256 simulated members, gRPC
//! clients in this process that heartbeat every second and claim, and no builds:
//! the leader's own worker is left without a sandbox, so it builds nothing. The
//! catalog is filled to 1,000 and then to 100,000 pipelines; at each size the same
//! figures are taken side by side: submission and claim latency, the leader's CPU
//! while the members only heartbeat, a page of the list, `/metrics`, and the
//! leader's memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use futures::StreamExt;
use kiln_proto::cluster_client::ClusterClient;

use crate::farm::{self, Farm, Setup, TOKEN};
use crate::stats::{Row, median, percentile};

/// Simulated members, ordinals 1..=256; the leader is ordinal 0.
const MEMBERS: u32 = 256;
const WORKERS: u32 = MEMBERS + 1;

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {TOKEN}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn member(ordinal: u32) -> kiln_proto::Member {
    kiln_proto::Member {
        ordinal,
        workers: WORKERS,
        incarnation: 0xbe9c_0000 + u64::from(ordinal),
        version: "bench".into(),
    }
}

/// A tiny program of its own (so every pipeline stores a source of its own).
fn program(n: u64) -> serde_json::Value {
    let encode = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let name = format!("scale-{n}");
    serde_json::json!({
        "name": name,
        "files": [
            {"path": "Cargo.toml", "content_base64": encode(format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"))},
            {"path": "src/main.rs", "content_base64": encode(format!("fn main() {{ println!(\"{n}\"); }}\n"))},
        ]
    })
}

async fn submit(http: &reqwest::Client, url: &str, n: u64) -> anyhow::Result<()> {
    let response = http.post(format!("{url}/v0/pipelines")).json(&program(n)).send().await?;
    if !response.status().is_success() {
        bail!("submission {n}: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    Ok(())
}

/// The leader's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("reading /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / procfs::ticks_per_second() as f64)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<f64> {
        let kib: f64 = status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Ok((field("VmRSS:").unwrap_or(0.0), field("VmHWM:").unwrap_or(0.0)))
}

/// Milliseconds of one GET, and the bytes of its body.
async fn time_get(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, usize)> {
    let started = Instant::now();
    let response = http.get(url).send().await?.error_for_status()?;
    let bytes = response.bytes().await?.len();
    Ok((started.elapsed().as_secs_f64() * 1000.0, bytes))
}

/// What one size measured.
struct AtSize {
    pipelines: u64,
    submit_p50: f64,
    submit_p99: f64,
    claim_p50: f64,
    claim_p99: f64,
    heartbeat_cpu_percent: f64,
    page_ms: f64,
    page_kib: f64,
    metrics_ms: f64,
    rss_mib: f64,
    peak_mib: f64,
}

/// Fills the catalog to `to` pipelines, `concurrency` submissions in flight.
async fn fill(http: &reqwest::Client, url: &str, from: u64, to: u64, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = from;
    let mut submissions = futures::stream::iter(from..to).map(|n| submit(http, url, n)).buffer_unordered(16);
    while let Some(result) = submissions.next().await {
        result?;
        done += 1;
        if done.is_multiple_of(10_000) {
            say(&format!("  {done} pipelines in the catalog ({:.0} s)", started.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}

async fn measure(
    farm: &Farm,
    clients: &[ClusterClient<tonic::transport::Channel>],
    depset: &str,
    pipelines: u64,
    quiet_seconds: u64,
) -> anyhow::Result<AtSize> {
    let url = farm.url();
    let pid = farm.leader_pid();
    // The leader's CPU while the 256 members only heartbeat.
    let (cpu_before, wall) = (cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(quiet_seconds)).await;
    let heartbeat_cpu_percent = 100.0 * (cpu_seconds(pid)? - cpu_before) / wall.elapsed().as_secs_f64();

    // Submissions one after another over one keep-alive connection.
    let http = reqwest::Client::new();
    let mut submits = Vec::new();
    for n in 0..300 {
        let started = Instant::now();
        submit(&http, &url, 1_000_000_000 + pipelines * 1000 + n).await?;
        submits.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // Claims that find work: each member in turn, twice round.
    let mut claims = Vec::new();
    for _ in 0..2 {
        for ordinal in 1..=MEMBERS {
            let mut client = clients[(ordinal as usize) % clients.len()].clone();
            let call =
                kiln_proto::ClaimRequest { member: Some(member(ordinal)), wait_ms: 0, depset: depset.to_owned() };
            let started = Instant::now();
            let answer = client.claim(request(call)).await?.into_inner();
            if answer.assignment.is_some() {
                claims.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let (mut pages, mut page_bytes, mut scrapes) = (Vec::new(), 0, Vec::new());
    for _ in 0..5 {
        let (ms, bytes) = time_get(&http, &format!("{url}/v0/pipelines?limit=500&after={}", pipelines / 2)).await?;
        pages.push(ms);
        page_bytes = bytes;
        scrapes.push(time_get(&http, &format!("{url}/metrics")).await?.0);
    }
    let (rss_mib, peak_mib) = memory_mib(pid)?;
    Ok(AtSize {
        pipelines,
        submit_p50: percentile(&submits, 50.0),
        submit_p99: percentile(&submits, 99.0),
        claim_p50: percentile(&claims, 50.0),
        claim_p99: percentile(&claims, 99.0),
        heartbeat_cpu_percent,
        page_ms: median(&pages),
        page_kib: page_bytes as f64 / 1024.0,
        metrics_ms: median(&scrapes),
        rss_mib,
        peak_mib,
    })
}

/// Comparison 10: the real leader with 256 simulated members, at 1,000 and at
/// `large` pipelines.
pub async fn catalog_at_scale(setup: &Setup, large: u64, quick: bool, say: &dyn Fn(&str)) -> anyhow::Result<Row> {
    let prebuilt = tempfile::Builder::new().prefix("kiln-bench-scale-").tempdir()?;
    let extra = [
        // The leader's own worker cannot make its sandbox, so it builds nothing
        // (and says so): the members here are all simulated.
        "--sandbox-bwrap=/nonexistent/kiln-bench-no-bwrap".to_owned(),
        "--sccache=off".to_owned(),
        "--claim-lease=1h".to_owned(),
        "--heartbeat-window=10s".to_owned(),
    ];
    let farm = farm::spawn_leader(setup, prebuilt.path(), None, WORKERS, &extra, "warn");
    let http = reqwest::Client::new();
    let url = farm.url();
    let answering = Instant::now();
    let health = loop {
        if let Ok(response) = http.get(format!("{url}/cluster_healthz")).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
        {
            break body;
        }
        if answering.elapsed() > Duration::from_secs(60) {
            bail!("the leader did not answer within a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let depset = health["depset"].as_str().context("the leader names its dependency set")?.to_owned();
    // 16 connections, 16 members on each, as members behind a few nodes would be.
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(ClusterClient::connect(url.clone()).await?);
    }
    let clients = Arc::new(clients);
    let beating = tokio_util::sync::CancellationToken::new();
    for ordinal in 1..=MEMBERS {
        let mut client = clients[(ordinal as usize) % clients.len()].clone();
        let stop = beating.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            // Spread the members over the second, as independent pods are.
            tokio::time::sleep(Duration::from_millis(u64::from(ordinal) * 1000 / u64::from(MEMBERS))).await;
            while !stop.is_cancelled() {
                ticker.tick().await;
                let beat = kiln_proto::HeartbeatRequest {
                    member: Some(member(ordinal)),
                    cache: Some(kiln_proto::CacheState { healthy: true, message: "simulated".into() }),
                    sandbox: "simulated member".into(),
                    ..Default::default()
                };
                let _ = client.heartbeat(request(beat)).await;
            }
        });
    }
    let quiet = if quick { 5 } else { 10 };
    say("  filling the catalog to 1,000 pipelines");
    fill(&http, &url, 0, 1_000, say).await?;
    let small = measure(&farm, &clients, &depset, 1_000, quiet).await?;
    say(&format!("  filling the catalog to {large} pipelines"));
    fill(&http, &url, 1_000, large, say).await?;
    let big = measure(&farm, &clients, &depset, large, quiet).await?;
    beating.cancel();

    let pair = |f: fn(&AtSize) -> f64, digits: usize| format!("{:.*} / {:.*}", digits, f(&small), digits, f(&big));
    let submit_ok =
        big.submit_p99 <= 5.0 && small.submit_p99 <= 5.0 && big.submit_p99 <= 2.0 * small.submit_p99.max(0.5);
    let claim_ok = big.claim_p99 <= 5.0 && small.claim_p99 <= 5.0 && big.claim_p99 <= 2.0 * small.claim_p99.max(0.5);
    let met = submit_ok && claim_ok && big.heartbeat_cpu_percent < 10.0 && big.peak_mib < 256.0;
    Ok(Row {
        number: 10,
        what: "catalog at scale".into(),
        measured: format!(
            "at {} / {} pipelines, 256 members: submission p50 {} ms, p99 {} ms; claim p50 {} ms, p99 {} ms; \
             heartbeats {} % of a core; a page of 500 {} ms ({:.0} KiB); /metrics {} ms; leader memory {} MiB (peak {} MiB)",
            small.pipelines,
            big.pipelines,
            pair(|m| m.submit_p50, 2),
            pair(|m| m.submit_p99, 2),
            pair(|m| m.claim_p50, 2),
            pair(|m| m.claim_p99, 2),
            pair(|m| m.heartbeat_cpu_percent, 1),
            pair(|m| m.page_ms, 1),
            big.page_kib,
            pair(|m| m.metrics_ms, 1),
            pair(|m| m.rss_mib, 0),
            pair(|m| m.peak_mib, 0),
        ),
        goal: "p99 ≤ 5 ms and within 2x; heartbeats < 10 %; memory < 256 MiB".into(),
        met: Some(met),
    })
}
