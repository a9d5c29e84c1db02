//! sccache's statistics: what `sccache --show-stats --stats-format=json` says,
//! reduced to the figures a build's log and record carry, and the difference
//! between two readings of one server (a build's share of a server that outlives it).

use std::path::Path;

use anyhow::{Context, bail};

/// One build's figures, read from sccache (or a server's, since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SccacheStats {
    pub hits: u64,
    pub misses: u64,
    pub non_cacheable: u64,
    /// Reads and writes of the store that failed (sccache then compiles locally).
    pub store_errors: u64,
    /// Time spent serving hits from the store, and compiling misses.
    pub hit_read_ms: u64,
    pub miss_compile_ms: u64,
    /// Compile time the hits saved (what those compilations cost as misses, as
    /// the cache gateway recorded it with each entry), and the hits whose entry
    /// had no recorded cost (all of them when builds do not pass the gateway).
    pub saved_ms: u64,
    pub hits_without_cost: u64,
    /// Why sccache did not cache some calls, with counts ("crate-type (bin)": 1).
    pub not_cached: Vec<(String, u64)>,
}

impl SccacheStats {
    /// What happened between `earlier` and this reading of the same server. A
    /// server that started again in between counts from nothing: its figures are
    /// all since then, and a figure that went down says it did.
    pub fn since(&self, earlier: &SccacheStats) -> SccacheStats {
        let restarted = self.hits < earlier.hits
            || self.misses < earlier.misses
            || self.non_cacheable < earlier.non_cacheable
            || self.store_errors < earlier.store_errors
            || self.hit_read_ms < earlier.hit_read_ms
            || self.miss_compile_ms < earlier.miss_compile_ms;
        if restarted {
            return self.clone();
        }
        let before = |key: &str| earlier.not_cached.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n);
        SccacheStats {
            hits: self.hits - earlier.hits,
            misses: self.misses - earlier.misses,
            non_cacheable: self.non_cacheable - earlier.non_cacheable,
            store_errors: self.store_errors - earlier.store_errors,
            hit_read_ms: self.hit_read_ms - earlier.hit_read_ms,
            miss_compile_ms: self.miss_compile_ms - earlier.miss_compile_ms,
            saved_ms: self.saved_ms.saturating_sub(earlier.saved_ms),
            hits_without_cost: self.hits_without_cost.saturating_sub(earlier.hits_without_cost),
            not_cached: self
                .not_cached
                .iter()
                .map(|(key, n)| (key.clone(), n.saturating_sub(before(key))))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// The most of a statistics file that is read (a build could write any amount).
pub(crate) const MAX_STATS_BYTES: u64 = 1 << 20;

/// The statistics a build's server left in `file`, which the build could have
/// written anything into: read up to [`MAX_STATS_BYTES`], refused unless they parse.
pub(crate) fn read_stats(file: &Path) -> anyhow::Result<SccacheStats> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .with_context(|| format!("opening {}", file.display()))?
        .take(MAX_STATS_BYTES)
        .read_to_end(&mut bytes)
        .context("reading the build's cache statistics")?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("the build's sccache server left no statistics");
    }
    parse_stats(&String::from_utf8_lossy(&bytes))
}

fn sum_counts(value: &serde_json::Value) -> u64 {
    value["counts"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).fold(0, u64::saturating_add))
}

fn duration_ms(value: &serde_json::Value) -> u64 {
    let secs = value["secs"].as_u64().unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(value["nanos"].as_u64().unwrap_or(0) / 1_000_000)
}

/// Reads the figures out of `sccache --show-stats --stats-format=json`.
pub fn parse_stats(json: &str) -> anyhow::Result<SccacheStats> {
    let value: serde_json::Value = serde_json::from_str(json).context("sccache statistics are not JSON")?;
    let stats = &value["stats"];
    if !stats.is_object() {
        bail!("sccache statistics have no \"stats\" object");
    }
    // The figures come from a server in a sandbox (or a file a build wrote): no
    // sum of them may overflow.
    let count = |key: &str| stats[key].as_u64().unwrap_or(0);
    Ok(SccacheStats {
        hits: sum_counts(&stats["cache_hits"]),
        misses: sum_counts(&stats["cache_misses"]),
        non_cacheable: count("non_cacheable_compilations").saturating_add(count("requests_not_cacheable")),
        store_errors: sum_counts(&stats["cache_errors"])
            .saturating_add(count("cache_read_errors"))
            .saturating_add(count("cache_write_errors"))
            .saturating_add(count("cache_timeouts")),
        hit_read_ms: duration_ms(&stats["cache_read_hit_duration"]),
        miss_compile_ms: duration_ms(&stats["compiler_write_duration"]),
        not_cached: stats["not_cached"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default(),
        ..SccacheStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file a build wrote: garbage, a flood, or nothing is an error, never a panic
    /// or an unbounded read.
    #[test]
    fn a_builds_statistics_file_is_read_with_suspicion() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stats.json");
        for hostile in [Vec::new(), b"{not json".to_vec(), vec![0xff; 3 << 20], b"{\"stats\": 1}".repeat(1 << 18)] {
            std::fs::write(&file, &hostile).unwrap();
            assert!(read_stats(&file).is_err(), "{} bytes of hostile statistics are refused", hostile.len());
        }
        assert!(read_stats(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn stats_are_summed_over_languages() {
        let json = r#"{"stats":{"cache_hits":{"counts":{"Rust":7,"C/C++":1}},"cache_misses":{"counts":{"Rust":2}},"non_cacheable_compilations":1,"requests_not_cacheable":3,
            "cache_read_hit_duration":{"secs":1,"nanos":500000000},"compiler_write_duration":{"secs":3,"nanos":0}}}"#;
        let stats = parse_stats(json).unwrap();
        assert_eq!((stats.hits, stats.misses, stats.non_cacheable, stats.store_errors), (8, 2, 4, 0));
        assert_eq!((stats.hit_read_ms, stats.miss_compile_ms), (1500, 3000));
        assert!(parse_stats("{}").is_err());
        let huge = format!(
            r#"{{"stats":{{"cache_hits":{{"counts":{{"a":{m},"b":{m}}}}},"cache_read_errors":{m},"cache_timeouts":{m},"cache_read_hit_duration":{{"secs":{m},"nanos":0}}}}}}"#,
            m = u64::MAX
        );
        let stats = parse_stats(&huge).unwrap();
        assert_eq!((stats.hits, stats.store_errors, stats.hit_read_ms), (u64::MAX, u64::MAX, u64::MAX));
    }

    /// A long-lived server's figures are cumulative: a build's are the difference,
    /// and a server that started again in between is counted from nothing.
    #[test]
    fn a_builds_share_of_a_long_lived_server() {
        let reading = |hits, misses, not_cached: &[(&str, u64)]| SccacheStats {
            hits,
            misses,
            hit_read_ms: hits * 10,
            miss_compile_ms: misses * 100,
            not_cached: not_cached.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..SccacheStats::default()
        };
        let first = reading(5, 3, &[("crate-type (bin)", 2)]);
        let second = reading(9, 4, &[("crate-type (bin)", 3), ("incremental", 1)]);
        let build = second.since(&first);
        assert_eq!((build.hits, build.misses, build.hit_read_ms, build.miss_compile_ms), (4, 1, 40, 100));
        assert_eq!(build.not_cached, vec![("crate-type (bin)".to_owned(), 1), ("incremental".to_owned(), 1)]);
        let after_restart = reading(1, 2, &[]);
        assert_eq!(after_restart.since(&second), after_restart, "a restarted server counts from nothing");
        assert_eq!(first.since(&SccacheStats::default()), first);
    }
}
