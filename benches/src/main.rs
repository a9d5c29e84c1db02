//! `kiln-bench`: Kiln's performance table, measured side by side in one run.
//!
//! Every comparison starts real `kiln` processes (and, for the cache, a real sccache
//! and S3-compatible server), runs several rounds with the two sides alternating,
//! and reports medians and ratios. Nothing asserts a time: the table sets each
//! figure beside its goal, and `benches/RESULTS.md` keeps the latest full run's (the
//! analysis written below its table is kept when the table is replaced; a quick
//! or partial run only prints its table).
//!
//! Run it through `scripts/bench` (which builds Kiln in release first).

mod farm;
mod healing;
mod large;
mod measures;
mod member_start;
mod programs;
mod scale;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kiln-bench", about = "Kiln's performance table, measured side by side")]
struct Args {
    /// Fewer rounds and shorter loads: finishes within 10 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// The kiln binary to measure (a release build).
    #[arg(long)]
    kiln: PathBuf,
    /// Where the prebuilt dependency set is kept between runs.
    #[arg(long, default_value_os_t = default_depset_cache())]
    depset_cache: PathBuf,
    /// Where comparison 9 keeps its dependency set (vendored from crates.io on the
    /// first run, which needs the network that once).
    #[arg(long, default_value_os_t = cache_dir().join("bench-depsets"))]
    sets: PathBuf,
    /// Only these comparisons (e.g. `--only 1,5`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// The large program's operator crates (comparisons 11 to 14); default 40,
    /// or 8 with --quick.
    #[arg(long)]
    large_operators: Option<usize>,
    /// The large program's views per operator crate; default 32 (about 40,000
    /// lines with 40 operators), or 6 with --quick.
    #[arg(long)]
    large_functions: Option<usize>,
    /// Write a full run's table into this file (between its table markers).
    #[arg(long)]
    results: Option<PathBuf>,
    /// The command line recorded with the results.
    #[arg(long, default_value = "scripts/bench")]
    command: String,
}

fn cache_dir() -> PathBuf {
    Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/kiln")
}

fn default_depset_cache() -> PathBuf {
    cache_dir().join("bench-depset")
}

const BEGIN: &str = "<!-- table: written by kiln-bench -->";
const END: &str = "<!-- end of table -->";

fn read_first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().find(|l| l.starts_with(prefix))?.split(':').nth(1)?.trim().to_owned())
}

/// The machine and toolchain the figures come from.
fn machine() -> String {
    let cpu = read_first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = read_first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {memory}, Linux {}, {rustc}", kernel.trim())
}

fn write_results(path: &Path, table: &str, header: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{header}\n\n{table}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(start), Some(end)) if start < end => format!("{}{block}{}", &old[..start], &old[end + END.len()..]),
        _ => format!("# Benchmark results\n\n{block}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted = |n: u32| args.only.is_empty() || args.only.contains(&n);
    let rounds = if args.quick { 3 } else { 7 };
    let default_shape =
        if args.quick { programs::SqlShape { operators: 8, functions: 6 } } else { programs::SqlShape::LARGE };
    let shape = programs::SqlShape {
        operators: args.large_operators.unwrap_or(default_shape.operators),
        functions: args.large_functions.unwrap_or(default_shape.functions),
    };
    let setup = farm::Setup {
        kiln: args.kiln.canonicalize().with_context(|| format!("no kiln binary at {}", args.kiln.display()))?,
        depset_cache: args.depset_cache.clone(),
        profile: "release".into(),
    };
    let work = tempfile::Builder::new().prefix("kiln-bench-work-").tempdir()?;
    let started = Instant::now();
    let say = |line: &str| eprintln!("[{:>5.0}s] {line}", started.elapsed().as_secs_f64());
    let mut rows = Vec::new();

    say("starting a 1-worker farm (the first run builds the dependency set in release, about a minute)");
    let off = ["--sccache=off".to_owned()];
    let one = farm::start(&setup, 1, None, &off).await?;
    if wanted(1) {
        say("1. farm overhead");
        // Each round is half a second: more of them steady the ratio.
        keep(&mut rows, measures::farm_overhead(&setup, &one, work.path(), 3 * rounds).await?, &say);
    }
    if wanted(2) {
        say("2. time to start (100 submissions)");
        keep(&mut rows, measures::time_to_start(&one, work.path(), 100).await?, &say);
    }
    if wanted(11) {
        say(&format!(
            "11. large program ({} operators × {} views), farm vs plain cargo",
            shape.operators, shape.functions
        ));
        keep(
            &mut rows,
            large::large_vs_cargo(&setup, &one, work.path(), shape, if args.quick { 2 } else { 3 }).await?,
            &say,
        );
    }
    if wanted(14) {
        say("14. peak memory of a large build");
        keep(&mut rows, large::large_memory(&one, work.path(), shape).await?, &say);
    }
    if wanted(15) {
        say("15. binary cache: a known program under a new name");
        keep(&mut rows, large::binary_cache(&one, work.path(), if args.quick { 20 } else { 50 }).await?, &say);
    }
    if wanted(3) {
        say("3. cache across workers (sccache on a local S3-compatible store)");
        keep(&mut rows, measures::cache_across_workers(&setup, work.path(), rounds).await?, &say);
    }
    if wanted(12) {
        say("12. large program across workers, warm vs cold store (sccache on a local S3-compatible store)");
        keep(
            &mut rows,
            large::large_across_workers(&setup, work.path(), shape, if args.quick { 1 } else { 2 }).await?,
            &say,
        );
    }
    if wanted(4) || wanted(6) || wanted(13) {
        say("starting a 2-worker farm");
        let two = farm::start(&setup, 2, None, &off).await?;
        if wanted(4) {
            say("4. scale-out (8 pipelines, 1 vs 2 workers)");
            keep(&mut rows, measures::scale_out(&one, &two, work.path(), rounds).await?, &say);
        }
        if wanted(13) {
            say("13. eight large programs, 1 vs 2 workers");
            keep(&mut rows, large::large_scale_out(&one, &two, work.path(), shape, 1).await?, &say);
            say("13. eight large programs, 1 vs 2 members with a core each");
            keep(&mut rows, large::large_scale_out_pinned(&setup, work.path(), shape, 1).await?, &say);
        }
        if wanted(6) {
            say("6. health probe under 200 requests/s");
            keep(&mut rows, measures::health_probe(&two, if args.quick { 10 } else { 30 }).await?, &say);
        }
    }
    if wanted(5) {
        say("5. upload of 512 MiB, leader vs raw loopback copy");
        // The disk's own noise is large (ARCHITECTURE.md): enough rounds to tell it
        // from the path's cost.
        let upload_rounds = if args.quick { rounds } else { 3 * rounds };
        keep(&mut rows, measures::upload_throughput(&setup, work.path(), upload_rounds, 512).await?, &say);
    }
    if wanted(7) {
        say("7. multihost start, kiln launch --hosts 4");
        keep(&mut rows, measures::multihost_start(&setup, &one, work.path(), rounds.max(5)).await?, &say);
    }
    if wanted(8) {
        say("8. sandbox cost, sandbox on vs --sandbox=off");
        keep(
            &mut rows,
            measures::sandbox_cost(&setup, work.path(), if args.quick { rounds } else { rounds.max(5) }).await?,
            &say,
        );
    }
    if wanted(9) {
        say("9. new member ready, dependency set of about 100 crates, cold vs warm store");
        // Each round builds the set twice in release: a few minutes.
        let rounds = if args.quick { 1 } else { 3 };
        keep(&mut rows, member_start::member_start(&setup, &args.sets, work.path(), rounds).await?, &say);
    }
    if wanted(10) {
        say("10. catalog at scale: the real leader, 256 simulated members, 1,000 vs 100,000 pipelines");
        // Filling the catalog to 100,000 takes minutes: --quick stops at 20,000.
        let large = if args.quick { 20_000 } else { 100_000 };
        keep(&mut rows, scale::catalog_at_scale(&setup, large, args.quick, &say).await?, &say);
    }
    if wanted(16) {
        say("16. failover: a member killed in flight, until its pipeline compiles on another");
        keep(&mut rows, healing::failover(&setup, work.path(), 5).await?, &say);
    }
    rows.sort_by_key(|r| r.number);

    let table = stats::table(&rows);
    println!("{table}");
    let header = format!(
        "Measured {} on {}, with `{}` ({} rounds per comparison, {:.0} s in all).",
        humantime_now(),
        machine(),
        args.command,
        rounds,
        started.elapsed().as_secs_f64()
    );
    println!("{header}");
    // The file keeps a full run's table: a quick or partial run (fewer rounds, a
    // smaller program, some rows only) would replace it with figures that are not
    // comparable, so it is printed only.
    let full = !args.quick && args.only.is_empty() && args.large_operators.is_none() && args.large_functions.is_none();
    match &args.results {
        Some(path) if full => {
            write_results(path, &table, &header)?;
            say(&format!("table written to {}", path.display()));
        }
        Some(path) => say(&format!(
            "a quick or partial run: the table is printed above, and {} keeps the last full run's",
            path.display()
        )),
        None => {}
    }
    Ok(())
}

/// Keeps a row, and says it at once: a later comparison that fails loses nothing
/// of what was measured before it.
fn keep(rows: &mut Vec<stats::Row>, row: stats::Row, say: &dyn Fn(&str)) {
    say(stats::table(std::slice::from_ref(&row)).lines().last().unwrap_or_default());
    rows.push(row);
}

/// Today's date and time (UTC), from `date`, which every machine here has.
fn humantime_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
