//! Comparisons 11 to 15: programs of the size users build. A
//! generated SQL-shaped program (`programs::write_sql`: a schema crate and K
//! operator crates of F views each, about 40,000 lines by default) through the
//! farm against plain cargo, across workers through the shared cache, eight at
//! once on one and two workers; the memory a large build takes; and the binary
//! cache's answer to a program built before.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::farm::{self, Farm, S3, Setup, Timed};
use crate::measures::{WarmColdRounds, ms, plain_cargo, submit_on};
use crate::programs::{self, SqlShape};
use crate::stats::{Row, median, percentile};

/// A number no earlier run used: every round writes operators nobody compiled.
fn fresh(round: u64, side: u64) -> u64 {
    1_000_000 * u64::from(std::process::id()) + 100 * round + side
}

fn shape_text(shape: SqlShape, lines: usize) -> String {
    format!("{} operator crates × {} views, {} lines", shape.operators, shape.functions, lines)
}

/// Comparison 11: the large program through a 1-worker farm (submission to
/// success) against a plain `cargo build` of it in the same build root; both
/// compile every crate of the program (new operators each time; the dependency
/// set prebuilt for both), same profile, no compile cache. A third side, a
/// 1-worker farm with `--sandbox=off`, measures how much of the difference is
/// the sandbox's rather than the farm's.
pub async fn large_vs_cargo(
    setup: &Setup,
    farm: &Farm,
    work: &Path,
    shape: SqlShape,
    rounds: usize,
) -> anyhow::Result<Row> {
    let unsandboxed = farm::start(setup, 1, None, &["--sccache=off".to_owned(), "--sandbox=off".to_owned()]).await?;
    let root = farm.build_root(0);
    let work = work.join("large-vs-cargo");
    let (mut through_farm, mut plain, mut without_sandbox) = (Vec::new(), Vec::new(), Vec::new());
    let mut lines = 0;
    for round in 0..rounds as u64 {
        for side in [round % 3, (round + 1) % 3, (round + 2) % 3] {
            let variant = fresh(round, side);
            let (dir, n) = programs::write_sql(&work, "large", variant, shape, variant, |_| variant)?;
            lines = n;
            match side {
                0 => through_farm.push(build_time(farm, &dir).await?),
                1 => plain.push(plain_cargo(setup, &root, &dir, "large")?),
                _ => without_sandbox.push(build_time(&unsandboxed, &dir).await?),
            }
        }
    }
    let (farm_ms, plain_ms, unsandboxed_ms) = (median(&through_farm), median(&plain), median(&without_sandbox));
    let ratio = farm_ms / plain_ms;
    Ok(Row {
        number: 11,
        what: "large program, farm vs cargo".into(),
        measured: format!(
            "{}: farm {:.1} s vs cargo {:.1} s: ratio {ratio:.3} (a farm with --sandbox=off: {:.1} s, ratio {:.3})",
            shape_text(shape, lines),
            farm_ms / 1000.0,
            plain_ms / 1000.0,
            unsandboxed_ms / 1000.0,
            unsandboxed_ms / plain_ms
        ),
        goal: "ratio ≤ 1.02".into(),
        met: Some(ratio <= 1.02),
    })
}

/// Submission to success of one new program, as the leader records it.
async fn build_time(farm: &Farm, dir: &Path) -> anyhow::Result<f64> {
    let id = farm.submit_program("large", dir).await?;
    let record = farm.wait_success(id).await?;
    Ok((ms(&record, "finished_at_ms")? - ms(&record, "submitted_at_ms")?) as f64)
}

/// Resident memory, in KiB, of `pid` and of every process below it.
fn memory_below(pid: i32) -> (u64, u64, u64) {
    let page_kib = procfs::page_size() / 1024;
    let Ok(all) = procfs::process::all_processes() else { return (0, 0, 0) };
    let stats: Vec<procfs::process::Stat> = all.filter_map(|p| p.ok()?.stat().ok()).collect();
    let mut below = vec![pid];
    let mut grew = true;
    while grew {
        grew = false;
        for s in &stats {
            if below.contains(&s.ppid) && !below.contains(&s.pid) {
                below.push(s.pid);
                grew = true;
            }
        }
    }
    let rss = |p: i32| stats.iter().find(|s| s.pid == p).map_or(0, |s| s.rss * page_kib);
    let children: Vec<u64> = below[1..].iter().map(|&p| rss(p)).collect();
    (rss(pid), children.iter().sum(), children.iter().copied().max().unwrap_or(0))
}

/// Comparison 14: the peak memory of the member (`kiln server`: leader and
/// worker in one process) and of the build's processes below it (bubblewrap,
/// cargo, rustc, build scripts) while it builds the large program, sampled every
/// 100 ms (a build of its own, after comparison 11, so no timed build is sampled).
pub async fn large_memory(farm: &Farm, work: &Path, shape: SqlShape) -> anyhow::Result<Row> {
    let variant = fresh(99, 0);
    let (dir, lines) = programs::write_sql(&work.join("large-memory"), "memory", variant, shape, variant, |_| variant)?;
    let pid = farm.leader_pid() as i32;
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let sampling = sampling.clone();
        tokio::task::spawn_blocking(move || {
            let mut peak = (0, 0, 0);
            while !sampling.is_cancelled() {
                let now = memory_below(pid);
                peak = (peak.0.max(now.0), peak.1.max(now.1), peak.2.max(now.2));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let id = farm.submit_program("memory", &dir).await?;
    let built = farm.wait_success(id).await;
    sampling.cancel();
    let (member, build, largest) = sampler.await?;
    let built = built?;
    let seconds = (ms(&built, "finished_at_ms")? - ms(&built, "submitted_at_ms")?) as f64 / 1000.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Row {
        number: 14,
        what: "peak memory of a large build".into(),
        measured: format!(
            "{} (built in {seconds:.0} s): member process {:.0} MiB; its build's processes {:.0} MiB together, the largest one {:.0} MiB",
            shape_text(shape, lines),
            mib(member),
            mib(build),
            mib(largest)
        ),
        goal: "reported (sizes the chart's requests and limits)".into(),
        met: None,
    })
}

/// Comparison 12: the second program (all but two operators shared with the
/// first) on worker 1, after the first on worker 0, through sccache on a real
/// S3-compatible store; against the second program with operators nobody
/// compiled ("cold"). Hit rates of the warm build by count and by compile time
/// (the compile time its hits saved, as recorded when each was a miss, over that
/// plus what it compiled).
pub async fn large_across_workers(setup: &Setup, work: &Path, shape: SqlShape, rounds: usize) -> anyhow::Result<Row> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Row::skipped(12, "large program across workers", "needs root for the members' private mounts"));
    }
    let s3_dir = tempfile::Builder::new().prefix("kiln-bench-s3-").tempdir()?;
    let s3 = S3::start(s3_dir.path())?;
    let root = std::path::PathBuf::from("/tmp/kiln-bench-build-root-large");
    let farm = farm::start(setup, 2, Some(root), &s3.member_flags()?).await?;
    let work = work.join("large-across");
    let changed = 2;
    let mut measured = WarmColdRounds::default();
    let mut lines = 0;
    for round in 0..rounds as u64 {
        let (cold_base, warm_base) = (fresh(round, 0), fresh(round, 1));
        let (cold_dir, n) = programs::write_sql(&work, "second", cold_base, shape, cold_base, |_| cold_base)?;
        lines = n;
        let id = submit_on(&farm, &work, 2, 1, &format!("second-cold-{round}"), &cold_dir).await?;
        let cold = farm.wait_success(id).await?;

        let (a_dir, _) = programs::write_sql(&work, "first", warm_base, shape, warm_base, |_| warm_base)?;
        let id = submit_on(&farm, &work, 2, 0, &format!("first-{round}"), &a_dir).await?;
        farm.wait_success(id).await?;
        let (b_dir, _) = programs::write_sql(&work, "second", warm_base + 1, shape, warm_base, |i| {
            if i < changed { warm_base + 2 } else { warm_base }
        })?;
        let id = submit_on(&farm, &work, 2, 1, &format!("second-warm-{round}"), &b_dir).await?;
        let warm = farm.wait_success(id).await?;

        measured.add(&cold, &warm)?;
    }
    let w = measured.medians();
    let (ratio, count, time) = (w.ratio, w.by_count, w.by_time);
    Ok(Row {
        number: 12,
        what: "large program across workers".into(),
        measured: format!(
            "{}, {changed} operators new: second program warm {:.1} s vs cold {:.1} s: ratio {ratio:.2}; hit rate {count:.1} % by count, {time:.1} % by compile time",
            shape_text(shape, lines),
            w.warm_ms / 1000.0,
            w.cold_ms / 1000.0
        ),
        goal: "≤ 0.15; ≥ 95 % both".into(),
        met: Some(ratio <= 0.15 && count >= 95.0 && time >= 95.0),
    })
}

/// Submits eight new large programs at once and returns the seconds until all
/// succeeded.
async fn batch(farm: &Farm, work: &Path, shape: SqlShape, serial: u64) -> anyhow::Result<f64> {
    let mut dirs = Vec::new();
    for k in 0..8u64 {
        let variant = fresh(serial, k);
        dirs.push(programs::write_sql(work, &format!("batch-{k}"), variant, shape, variant, |_| variant)?.0);
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    for (k, dir) in dirs.iter().enumerate() {
        ids.push(farm.submit_program(&format!("batch-{serial}-{k}"), dir).await?);
    }
    for id in ids {
        farm.wait_success(id).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The machine's busy and total CPU time so far, in jiffies (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Comparison 13: eight new large programs submitted at once to a 1-worker and a
/// 2-worker farm (no compile cache): from the first submission to the last success.
/// Beside it, how busy the machine's cores were while one worker built them: what
/// a second worker on the same machine could still use.
pub async fn large_scale_out(
    one: &Farm,
    two: &Farm,
    work: &Path,
    shape: SqlShape,
    rounds: usize,
) -> anyhow::Result<Row> {
    let work = work.join("large-scale");
    let (mut single, mut double) = (Vec::new(), Vec::new());
    let mut busy = Vec::new();
    for round in 0..rounds as u64 {
        let before = cpu_jiffies();
        single.push(batch(one, &work, shape, 200 + 2 * round).await?);
        let after = cpu_jiffies();
        busy.push((after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64);
        double.push(batch(two, &work, shape, 201 + 2 * round).await?);
    }
    let (a, b) = (median(&single), median(&double));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Row {
        number: 13,
        what: "large programs, scale-out, all cores shared".into(),
        measured: format!(
            "8 programs of {} operator crates × {} views: 1 worker {a:.0} s, 2 workers {b:.0} s: speed-up {:.2}; one worker kept {:.0} % of the {cores} cores busy",
            shape.operators,
            shape.functions,
            a / b,
            100.0 * median(&busy)
        ),
        goal: "reported beside the row below".into(),
        met: None,
    })
}

/// Comparison 13 with a core per member, as pods with a CPU request of 1 run: a
/// farm of 1 member pinned to CPU 0 against 2 members pinned to CPUs 0 and 1, each
/// building with `cargo -j 1`, the same 8 large programs.
pub async fn large_scale_out_pinned(
    setup: &crate::farm::Setup,
    work: &Path,
    shape: SqlShape,
    rounds: usize,
) -> anyhow::Result<Row> {
    let cpus = kiln_process::process::usable_cpus();
    if cpus.len() < 2 {
        return Ok(Row::skipped(13, "large programs, scale-out, a core per member", "fewer than 2 CPUs here"));
    }
    let off = ["--sccache=off".to_owned()];
    let one = crate::farm::start_pinned(setup, &cpus[..1], &off).await?;
    let two = crate::farm::start_pinned(setup, &cpus[..2], &off).await?;
    let work = work.join("large-scale-pinned");
    let (mut single, mut double) = (Vec::new(), Vec::new());
    for round in 0..rounds as u64 {
        single.push(batch(&one, &work, shape, 300 + 2 * round).await?);
        double.push(batch(&two, &work, shape, 301 + 2 * round).await?);
    }
    let (a, b) = (median(&single), median(&double));
    Ok(Row {
        number: 13,
        what: "large programs, scale-out, a core per member".into(),
        measured: format!(
            "8 programs of {} operator crates × {} views, each member pinned to a CPU of its own with cargo -j 1: 1 member {a:.0} s, 2 members {b:.0} s: speed-up {:.2}",
            shape.operators,
            shape.functions,
            a / b
        ),
        goal: "speed-up ≥ 1.8".into(),
        met: Some(a / b >= 1.8),
    })
}

/// Comparison 15: a program the farm built before, submitted again under a new
/// name (another team, a CI job): from sending the submission to the answer,
/// which already says `success` (the binary cache), over `count` submissions.
pub async fn binary_cache(farm: &Farm, work: &Path, count: usize) -> anyhow::Result<Row> {
    let dir = programs::write(&work.join("binary-cache"), "known", fresh(98, 0), 2, 50, fresh(98, 0))?;
    let first = farm.submit_program("known", &dir).await?;
    let built = farm.wait_success(first).await?;
    let sha = built["binary_sha256"].as_str().context("a binary")?.to_owned();
    let mut times = Vec::new();
    for i in 0..count {
        // As `kiln submit` does it: the program read from disk, sent, answered.
        let started = Instant::now();
        let p = farm.submit_record(&format!("known-again-{i}"), &dir).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if p.status != kiln_core::api::Status::Success || p.binary_sha256.as_deref() != Some(sha.as_str()) {
            anyhow::bail!("a known program was not served from the binary cache: {p:?}");
        }
    }
    let p99 = percentile(&times, 99.0);
    Ok(Row {
        number: 15,
        what: "binary cache".into(),
        measured: format!(
            "a known program under a new name, submission to success: p50 {:.1} ms, p99 {p99:.1} ms over {count} (it took {:.1} s to build)",
            median(&times),
            ms(&built, "compile_ms")? as f64 / 1000.0
        ),
        goal: "≤ 50 ms".into(),
        met: Some(p99 <= 50.0),
    })
}
