//! Comparisons 1 to 8 of the performance table. Each returns its row; nothing
//! here judges a time, the table only sets each figure beside its goal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::farm::{self, Farm, S3, Setup, TOKEN, Timed};
use crate::programs;
use crate::stats::{Row, median, percentile};

pub fn ms(value: &serde_json::Value, key: &str) -> anyhow::Result<u64> {
    value[key].as_u64().with_context(|| format!("the record has no {key}: {value}"))
}

/// Lays `dir` out in `root` with `kiln layout` and times a plain `cargo build` of
/// its binary `package` there, in milliseconds.
pub fn plain_cargo(setup: &Setup, root: &Path, dir: &Path, package: &str) -> anyhow::Result<f64> {
    let layout = std::process::Command::new(&setup.kiln)
        .args(["layout", dir.to_str().context("a UTF-8 path")?, "--profile", &setup.profile])
        .arg("--build-root")
        .arg(root)
        .output()?;
    if !layout.status.success() {
        bail!("kiln layout: {}", String::from_utf8_lossy(&layout.stderr));
    }
    let started = Instant::now();
    let status = std::process::Command::new("cargo")
        .args(["build", "--offline", "--quiet", "--profile", &setup.profile])
        .args(["-p", kiln_core::depset::PACKAGE, "-p", package])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .envs(kiln_compiler_worker::builder::FARM_CARGO_ENV)
        .env_remove("RUSTC_WRAPPER")
        .status()?;
    if !status.success() {
        bail!("the plain cargo build failed");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Comparison 1: One pipeline through a 1-worker farm (submission to success, as the leader
/// records it) against a plain `cargo build` of the same crates in the same warm
/// build root; both compile one new binary crate against compiled operators.
pub async fn farm_overhead(setup: &Setup, farm: &Farm, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    let root = farm.build_root(0);
    let program = |variant| programs::write(work, "overhead", variant, 2, 150, 0);
    // Warm: the operators compiled, once, by the farm.
    let id = farm.submit_program("overhead", &program(0)?).await?;
    farm.wait_success(id).await?;
    let (mut through_farm, mut plain, mut queued, mut compiling, mut delivering) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        // The two sides take turns going first, so neither always meets a warmer machine.
        for side in [round % 2, (round + 1) % 2] {
            if side == 0 {
                let id = farm.submit_program("overhead", &program(2 * round + 1)?).await?;
                let record = farm.wait_success(id).await?;
                let (submitted, started) = (ms(&record, "submitted_at_ms")?, ms(&record, "started_at_ms")?);
                through_farm.push((ms(&record, "finished_at_ms")? - submitted) as f64);
                queued.push((started - submitted) as f64);
                compiling.push(ms(&record, "compile_ms")? as f64);
                delivering.push(ms(&record, "upload_ms")? as f64);
            } else {
                plain.push(plain_cargo(setup, &root, &program(2 * round + 2)?, "overhead")?);
            }
        }
    }
    let (farm_ms, plain_ms) = (median(&through_farm), median(&plain));
    // The worker's own trace of each build (its `cargo finished` lines): laying
    // the crates out, making the sandbox, cargo.
    let trace = |key: &str| median(&logged_ms(&farm.member_log(0), "cargo finished", key));
    let (layout, setup, cargo) = (trace("layout_ms"), trace("setup_ms"), trace("cargo_ms"));
    let (queued, compiling, delivering) = (median(&queued), median(&compiling), median(&delivering));
    Ok(Row {
        number: 1,
        what: "farm overhead".into(),
        measured: format!(
            "farm {farm_ms:.0} ms (queued {queued:.0}, build {compiling:.0} = layout {layout:.0} + sandbox {setup:.0} + cargo {cargo:.0} + the rest, delivery {delivering:.0}, claim and reports {:.0}) vs cargo {plain_ms:.0} ms: ratio {:.2}",
            farm_ms - queued - compiling - delivering,
            farm_ms / plain_ms
        ),
        goal: "ratio ≤ 1.05".into(),
        met: Some(farm_ms / plain_ms <= 1.05),
    })
}

/// The values of `key=<n>` in the log lines holding `message` (tracing's text format).
fn logged_ms(log: &str, message: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            line.split_whitespace().find_map(|field| field.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok())
        })
        .collect()
}

/// Comparison 2: Submission to `compiling` (the leader's own timestamps), over `count`
/// submissions one after another to an idle 1-worker farm.
pub async fn time_to_start(farm: &Farm, work: &Path, count: usize) -> anyhow::Result<Row> {
    let mut waits = Vec::new();
    for variant in 0..count as u64 {
        let dir = programs::write(work, "start", variant, 0, 0, 0)?;
        let id = farm.submit_program("start", &dir).await?;
        let record = farm.wait_success(id).await?;
        waits.push((ms(&record, "started_at_ms")? - ms(&record, "submitted_at_ms")?) as f64);
    }
    let p99 = percentile(&waits, 99.0);
    Ok(Row {
        number: 2,
        what: "time to start".into(),
        measured: format!(
            "p50 {:.0} ms, p99 {p99:.0} ms, max {:.0} ms over {count} submissions",
            percentile(&waits, 50.0),
            percentile(&waits, 100.0)
        ),
        goal: "p99 ≤ 50 ms".into(),
        met: Some(p99 <= 50.0),
    })
}

/// Submits `dir` as `name` so that it lands on `ordinal`: while the next id would
/// go elsewhere, a small filler pipeline takes it.
pub async fn submit_on(
    farm: &Farm,
    work: &Path,
    workers: u32,
    ordinal: u32,
    name: &str,
    dir: &Path,
) -> anyhow::Result<u64> {
    loop {
        let next = farm.next_id().await?;
        if next % u64::from(workers) == u64::from(ordinal) {
            break;
        }
        let filler = programs::write(work, "filler", 0, 0, 0, 0)?;
        let id = farm.submit_program(&format!("filler-{next}"), &filler).await?;
        farm.wait_success(id).await?;
    }
    let id = farm.submit_program(name, dir).await?;
    if id % u64::from(workers) != u64::from(ordinal) {
        bail!("{name} got id {id}, not on ordinal {ordinal}: another client is submitting to this farm");
    }
    Ok(id)
}

/// Comparison 3: Pipeline B on worker 1 after pipeline A, sharing its operators, on worker 0,
/// through sccache on a real S3-compatible store; against B with operators nobody
/// compiled before ("cold"). Every round uses new operator sources, so what is warm
/// is warm only through the shared cache.
pub async fn cache_across_workers(setup: &Setup, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Row::skipped(
            3,
            "cache across workers",
            "needs root for the members' private mounts of one build root",
        ));
    }
    let w = warm_cold(setup, work, rounds, "default", &[]).await?;
    Ok(Row {
        number: 3,
        what: "cache across workers".into(),
        measured: format!(
            "B warm {:.0} ms vs cold {:.0} ms: ratio {:.2}; hit rate {:.0} % by count, {:.0} % by compile time",
            w.warm_ms, w.cold_ms, w.ratio, w.by_count, w.by_time
        ),
        goal: "≤ 0.3; ≥ 95 % both".into(),
        met: Some(w.ratio <= 0.3 && w.by_count >= 95.0 && w.by_time >= 95.0),
    })
}

/// What comparisons 3 and 12 measure, medians over the rounds.
pub struct WarmCold {
    pub ratio: f64,
    pub by_count: f64,
    pub by_time: f64,
    pub warm_ms: f64,
    pub cold_ms: f64,
}

/// The rounds of a warm-vs-cold comparison: each a build of the same program's
/// crates with nothing in the store ("cold") and after another worker compiled
/// them ("warm"), as the leader recorded them.
#[derive(Default)]
pub struct WarmColdRounds {
    ratios: Vec<f64>,
    by_count: Vec<f64>,
    by_time: Vec<f64>,
    cold_walls: Vec<f64>,
    warm_walls: Vec<f64>,
}

impl WarmColdRounds {
    pub fn add(&mut self, cold: &serde_json::Value, warm: &serde_json::Value) -> anyhow::Result<()> {
        let wall = |r: &serde_json::Value| -> anyhow::Result<f64> {
            Ok((ms(r, "finished_at_ms")? - ms(r, "started_at_ms")?) as f64)
        };
        let (cold_wall, warm_wall) = (wall(cold)?, wall(warm)?);
        self.cold_walls.push(cold_wall);
        self.warm_walls.push(warm_wall);
        self.ratios.push(warm_wall / cold_wall);
        let cache = &warm["cache"];
        let (hits, misses) = (ms(cache, "hits")? as f64, ms(cache, "misses")? as f64);
        self.by_count.push(100.0 * hits / (hits + misses).max(1.0));
        // The compile time the warm build's hits saved (as recorded when each was a
        // miss, on the other worker) over that plus what it still compiled.
        let (saved, compiled) = (ms(cache, "saved_ms")? as f64, ms(cache, "miss_compile_ms")? as f64);
        self.by_time.push(100.0 * saved / (saved + compiled).max(1.0));
        Ok(())
    }

    pub fn medians(&self) -> WarmCold {
        WarmCold {
            ratio: median(&self.ratios),
            by_count: median(&self.by_count),
            by_time: median(&self.by_time),
            warm_ms: median(&self.warm_walls),
            cold_ms: median(&self.cold_walls),
        }
    }
}

/// Comparison 3's measurement on a 2-worker farm over a real S3 store, its members
/// given `extra` too; `tag` keeps the build roots of several farms apart.
async fn warm_cold(setup: &Setup, work: &Path, rounds: usize, tag: &str, extra: &[String]) -> anyhow::Result<WarmCold> {
    let s3_dir = tempfile::Builder::new().prefix("kiln-bench-s3-").tempdir()?;
    let s3 = S3::start(s3_dir.path())?;
    let mut flags = s3.member_flags()?;
    flags.extend(extra.iter().cloned());
    let root = PathBuf::from(format!("/tmp/kiln-bench-build-root-{tag}"));
    let farm = farm::start(setup, 2, Some(root), &flags).await?;
    let work = work.join(format!("warm-cold-{tag}"));
    let work = work.as_path();
    let (operators, functions) = (4, 250);
    let mut rounds_seen = WarmColdRounds::default();
    for round in 0..rounds as u64 {
        let base = 1_000_000 * u64::from(std::process::id()) + 10 * round;
        let cold_dir = programs::write(work, "cache-b", 3 * round, operators, functions, base)?;
        let id = submit_on(&farm, work, 2, 1, &format!("cache-b-cold-{round}"), &cold_dir).await?;
        let cold = farm.wait_success(id).await?;

        let a_dir = programs::write(work, "cache-a", 3 * round + 1, operators, functions, base + 1)?;
        let id = submit_on(&farm, work, 2, 0, &format!("cache-a-{round}"), &a_dir).await?;
        farm.wait_success(id).await?;
        let b_dir = programs::write(work, "cache-b", 3 * round + 2, operators, functions, base + 1)?;
        let id = submit_on(&farm, work, 2, 1, &format!("cache-b-warm-{round}"), &b_dir).await?;
        let warm = farm.wait_success(id).await?;

        rounds_seen.add(&cold, &warm)?;
    }
    Ok(rounds_seen.medians())
}

/// Submits eight new pipelines at once and returns the seconds until all succeeded.
async fn batch(farm: &Farm, work: &Path, tag: &str, serial: u64) -> anyhow::Result<f64> {
    let mut ids = Vec::new();
    let started = Instant::now();
    for k in 0..8u64 {
        // Each pipeline's operator is new to cargo: every build compiles.
        let variant = 1_000_000 * u64::from(std::process::id()) + 100 * serial + k;
        let dir = programs::write(work, &format!("scale-{tag}-{k}"), variant, 1, 200, variant)?;
        ids.push(farm.submit_program(&format!("scale-{tag}-{k}"), &dir).await?);
    }
    for id in ids {
        farm.wait_success(id).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Comparison 4: Eight new pipelines submitted at once, on a 1-worker and a 2-worker farm:
/// from the first submission to the last success.
pub async fn scale_out(one: &Farm, two: &Farm, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    let (mut single, mut double) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let serial = 2 * round as u64;
        single.push(batch(one, work, &format!("one-{round}"), serial).await?);
        double.push(batch(two, work, &format!("two-{round}"), serial + 1).await?);
    }
    let (a, b) = (median(&single), median(&double));
    Ok(Row {
        number: 4,
        what: "scale-out".into(),
        measured: format!("8 pipelines: 1 worker {a:.1} s, 2 workers {b:.1} s: speed-up {:.2}", a / b),
        goal: "speed-up ≥ 1.6".into(),
        met: Some(a / b >= 1.6),
    })
}

/// Writes `bytes` of pseudo-random data (incompressible, different per `seed`).
async fn write_artifact(path: &Path, bytes: u64, seed: u64) -> anyhow::Result<()> {
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(path).await?);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).await?;
    }
    file.flush().await?;
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A member of the leader's farm played by this process: ordinal 1 of 2 (the
/// leader's own worker builds nothing of ordinal 1), holding a real claim, since
/// the leader takes uploads only under a claim from the member that holds it.
struct Uploader {
    client: kiln_proto::cluster_client::ClusterClient<tonic::transport::Channel>,
    member: kiln_proto::Member,
    claim: kiln_proto::Claim,
}

fn authorized<T>(message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(request)
}

impl Uploader {
    async fn claim(farm: &Farm, work: &Path) -> anyhow::Result<Uploader> {
        let mut client =
            kiln_proto::cluster_client::ClusterClient::connect(farm.url()).await?.max_decoding_message_size(64 << 20);
        let member = kiln_proto::Member { ordinal: 1, workers: 2, incarnation: 0x0b1e, version: "bench".into() };
        let (_, settings) = farm.get_json("/v0/cache-settings").await;
        let depset = settings["depset"].as_str().context("the leader names its dependency set")?.to_owned();
        // Pipeline 1 is ordinal 1's.
        let dir = programs::write(work, "upload", 0, 0, 0, 0)?;
        let id = farm.submit_program("upload", &dir).await?;
        if id % 2 != 1 {
            bail!("the upload pipeline got id {id}, not ordinal 1's: the farm was not new");
        }
        let call = kiln_proto::ClaimRequest { member: Some(member.clone()), wait_ms: 5000, depset };
        let assignment = client.claim(authorized(call)?).await?.into_inner().assignment;
        let claim = assignment.and_then(|a| a.claim).context("the leader handed out no claim")?;
        Ok(Uploader { client, member, claim })
    }

    /// Uploads `path` as a worker does (gRPC client stream, 256 KiB chunks).
    async fn upload(&mut self, path: &Path, sha256: &str, size: u64) -> anyhow::Result<()> {
        use kiln_proto::upload_chunk::Part;
        let header = kiln_proto::UploadChunk {
            part: Some(Part::Header(kiln_proto::UploadHeader {
                member: Some(self.member.clone()),
                claim: Some(self.claim),
                sha256: sha256.to_owned(),
                size,
            })),
        };
        let file = tokio::fs::File::open(path).await?;
        let data = tokio_util::io::ReaderStream::with_capacity(file, kiln_proto::UPLOAD_CHUNK_BYTES)
            .map(|chunk| kiln_proto::UploadChunk { part: Some(Part::Data(chunk.unwrap_or_default())) });
        let stream = futures::stream::once(std::future::ready(header)).chain(data);
        self.client.upload_artifact(authorized(stream)?).await?;
        Ok(())
    }
}

/// The same bytes over a plain loopback TCP connection into a file on the same
/// disk, fsynced: what moving them costs with nothing else (blocking I/O on two
/// threads, 1 MiB buffers).
fn raw_copy(path: &Path, into: &Path) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let into = into.to_path_buf();
    let receiver = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut socket, _) = listener.accept()?;
        let mut file = std::fs::File::create(&into)?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = socket.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])?;
        }
        file.sync_all()?;
        Ok(())
    });
    let started = Instant::now();
    let mut socket = std::net::TcpStream::connect(address)?;
    std::io::copy(&mut std::fs::File::open(path)?, &mut socket)?;
    socket.shutdown(std::net::Shutdown::Write)?;
    receiver.join().map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    Ok(started.elapsed().as_secs_f64())
}

/// Comparison 5: A 512 MiB artifact to the leader against a raw loopback copy of the same
/// bytes, and the leader's resident memory while it receives.
pub async fn upload_throughput(setup: &Setup, work: &Path, rounds: usize, mib: u64) -> anyhow::Result<Row> {
    let bytes = mib << 20;
    let off = ["--sccache=off".to_owned(), "--claim-lease=1h".to_owned()];
    let farm = farm::spawn_leader(setup, &setup.depset_cache, None, 2, &off, "warn");
    farm.wait_leader(std::time::Duration::from_secs(120)).await;
    let farm = &farm;
    let mut uploader = Uploader::claim(farm, work).await?;
    let (mut leader_rates, mut raw_rates, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        let path = work.join("artifact.bin");
        write_artifact(&path, bytes, round + u64::from(std::process::id())).await?;
        let (sha, size) = kiln_core::digest::hash_file(&path).await?;
        let pid = farm.leader_pid();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = rss_kib(pid).context("reading the leader's memory")?;
        let sampling = tokio_util::sync::CancellationToken::new();
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while !sampling.is_cancelled() {
                    peak = peak.max(rss_kib(pid).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                peak
            })
        };
        let raw_copy_of = |path: PathBuf, into: PathBuf| tokio::task::spawn_blocking(move || raw_copy(&path, &into));
        let raw_first = round % 2 == 1;
        let mut raw_seconds = 0.0;
        if raw_first {
            raw_seconds = raw_copy_of(path.clone(), work.join("raw-copy.bin")).await??;
        }
        let started = Instant::now();
        uploader.upload(&path, &sha, size).await?;
        let leader_seconds = started.elapsed().as_secs_f64();
        sampling.cancel();
        let peak = sampler.await?;
        peaks.push(peak.saturating_sub(idle) as f64 / 1024.0);
        if !raw_first {
            raw_seconds = raw_copy_of(path.clone(), work.join("raw-copy.bin")).await??;
        }
        leader_rates.push(mib as f64 / leader_seconds);
        raw_rates.push(mib as f64 / raw_seconds);
        std::fs::remove_file(work.join("raw-copy.bin"))?;
    }
    let (leader, raw, peak) = (median(&leader_rates), median(&raw_rates), percentile(&peaks, 100.0));
    // Each round's own ratio (both sides on the same disk within seconds): their
    // spread against the spread of the raw copy alone tells the disk's noise from
    // the path's cost.
    let ratios: Vec<f64> = leader_rates.iter().zip(&raw_rates).map(|(l, r)| l / r).collect();
    let spread = |v: &[f64]| (percentile(v, 0.0), percentile(v, 100.0));
    let ((low, high), (raw_low, raw_high)) = (spread(&ratios), spread(&raw_rates));
    Ok(Row {
        number: 5,
        what: "upload".into(),
        measured: format!(
            "{mib} MiB, {rounds} rounds: leader {leader:.0} MiB/s vs raw copy {raw:.0} MiB/s: {:.2} of raw (rounds {low:.2} to {high:.2}; raw copy alone {raw_low:.0} to {raw_high:.0} MiB/s); leader peak +{peak:.1} MiB above idle",
            leader / raw
        ),
        goal: "≥ 0.8 of raw; ≤ 64 MiB above idle".into(),
        met: Some(leader / raw >= 0.8 && peak <= 64.0),
    })
}

/// Comparison 6: `/cluster_healthz` latency under an open-loop load of 200 requests per second
/// from this process, over loopback.
pub async fn health_probe(farm: &Farm, seconds: u64) -> anyhow::Result<Row> {
    let client = reqwest::Client::new();
    let url = format!("{}/cluster_healthz", farm.url());
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        ticker.tick().await;
        let (client, url) = (client.clone(), url.clone());
        requests.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client.get(&url).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, ok))
        }));
    }
    let mut latencies = Vec::new();
    let mut unhealthy = 0;
    for request in requests {
        let (latency, ok) = request.await??;
        latencies.push(latency);
        unhealthy += usize::from(!ok);
    }
    let p99 = percentile(&latencies, 99.0);
    Ok(Row {
        number: 6,
        what: "health probe".into(),
        measured: format!(
            "{} requests: p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({unhealthy} answered 503)",
            latencies.len(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 100.0)
        ),
        goal: "p99 ≤ 5 ms".into(),
        met: Some(p99 <= 5.0),
    })
}

/// Comparison 7: `kiln launch --hosts 4` of the farm-built word count, from the command until
/// the coordinator reports every host ready and started.
pub async fn multihost_start(setup: &Setup, farm: &Farm, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines/wordcount");
    let id = farm.submit_program("wordcount", &examples).await?;
    farm.wait_success(id).await?;
    let binary = work.join("wordcount");
    let bytes = farm.http.get(format!("{}/v0/pipelines/{id}/binary", farm.url())).send().await?.error_for_status()?;
    std::fs::write(&binary, bytes.bytes().await?)?;
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // A slow run, so that it is still going when it is stopped.
    let input = work.join("input.txt");
    std::fs::write(&input, "the kiln farm builds pipelines\n".repeat(50_000))?;
    let config = work.join("config.json");
    std::fs::write(&config, serde_json::json!({"input": input, "kiln": {"pace_ms": 1000}}).to_string())?;
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let mut times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let mut launch = tokio::process::Command::new(&setup.kiln)
            .args(["launch", "--hosts", "4"])
            .arg("--binary")
            .arg(&binary)
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        loop {
            if let Ok(response) = http.get("http://127.100.255.1:28080/status").send().await
                && let Ok(status) = response.json::<serde_json::Value>().await
                && status["state"] == "running"
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("kiln launch --hosts 4 was not running after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(pid) = launch.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        launch.wait().await?;
    }
    let time = median(&times);
    Ok(Row {
        number: 7,
        what: "multihost start".into(),
        measured: format!("{time:.0} ms until 4 hosts ready and started (max {:.0} ms)", percentile(&times, 100.0)),
        goal: "≤ 2 s".into(),
        met: Some(time <= 2000.0),
    })
}

/// Comparison 8: the build sandbox's cost. Two 1-worker farms, one with the sandbox
/// (the default) and one with `--sandbox=off`, both building through sccache on a
/// local disk cache; the same new binary crate against the same warm operators,
/// the two farms taking turns. Submission to success, as each leader records it.
pub async fn sandbox_cost(setup: &Setup, work: &Path, rounds: usize) -> anyhow::Result<Row> {
    let sccache = kiln_process::find_tool("sccache").context("sccache is not installed: run scripts/install-deps")?;
    let cached = |extra: &str| {
        vec!["--sccache=auto".to_owned(), format!("--sccache-binary={}", sccache.display()), extra.to_owned()]
    };
    // As under `kiln up`: each member in a mount namespace of its own (so, with
    // the sandbox, target/ is an overlay of the pristine set) when root allows it.
    let private =
        |side: &str| nix::unistd::geteuid().is_root().then(|| PathBuf::from(format!("/tmp/kiln-bench-sandbox-{side}")));
    let on = farm::start(setup, 1, private("on"), &cached("--sandbox=auto")).await?;
    let off = farm::start(setup, 1, private("off"), &cached("--sandbox=off")).await?;
    let program = |side: &str, variant| programs::write(&work.join(side), "sandbox", variant, 2, 150, 0);
    for (side, farm) in [("on", &on), ("off", &off)] {
        let id = farm.submit_program("sandbox", &program(side, 0)?).await?;
        farm.wait_success(id).await?;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        for side in [round % 2, (round + 1) % 2] {
            let (name, farm, samples) = if side == 0 { ("on", &on, &mut with) } else { ("off", &off, &mut without) };
            let id = farm.submit_program("sandbox", &program(name, round + 1)?).await?;
            let record = farm.wait_success(id).await?;
            samples.push((ms(&record, "finished_at_ms")? - ms(&record, "submitted_at_ms")?) as f64);
        }
    }
    let (with_ms, without_ms) = (median(&with), median(&without));
    let ratio = with_ms / without_ms;
    // Comparison 3's cross-worker ratio, both ways (root only: private mounts).
    let across = if nix::unistd::geteuid().is_root() {
        let on = warm_cold(setup, work, rounds, "sandbox-on", &["--sandbox=auto".to_owned()]).await?;
        let off = warm_cold(setup, work, rounds, "sandbox-off", &["--sandbox=off".to_owned()]).await?;
        format!(
            "; across workers warm/cold {:.2} on ({:.0} vs {:.0} ms) vs {:.2} off ({:.0} vs {:.0} ms)",
            on.ratio, on.warm_ms, on.cold_ms, off.ratio, off.warm_ms, off.cold_ms
        )
    } else {
        String::new()
    };
    Ok(Row {
        number: 8,
        what: "sandbox cost".into(),
        measured: format!(
            "farm-overhead program: sandbox on {with_ms:.0} ms vs off {without_ms:.0} ms: ratio {ratio:.2}, {:+.0} ms per build{across}",
            with_ms - without_ms
        ),
        goal: "≤ 20 ms and ratio ≤ 1.10 per build".into(),
        met: Some(ratio <= 1.10 && with_ms - without_ms <= 20.0),
    })
}
