//! The worker's side of the disk watermarks. Before each claim it looks at the
//! volume of its build root: above the high watermark it makes room, taking first
//! what is cheapest to make again (the least recently used pipeline layers of
//! `target/` and crate directories of `src/`, then the oldest entries of a local
//! compile cache), until the volume is below the high watermark again; above the
//! critical one even after that, it takes no work and says why in its heartbeats.
//!
//! Nothing it removes is needed: the build root is a cache (see the crate's
//! invariant). The prebuilt dependency set, the pipeline runtime and the layer of
//! the last build (still mounted as `target/`) are never touched, and pruning runs
//! only between builds.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_core::disk::{Pressure, Watermarks, used_percent};

/// What a worker prunes and against which marks.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    pub build_root: PathBuf,
    /// sccache's local directory, when the cache is on local disk.
    pub local_cache: Option<PathBuf>,
    pub marks: Watermarks,
}

/// Where the volume stands after making room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskState {
    pub used_percent: f64,
    /// Above the critical watermark even after pruning: why no work is taken.
    pub critical: Option<String>,
    /// What was removed this time.
    pub pruned: usize,
}

fn modified(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The build root's prunable directories, least recently used first: every
/// crate of `src/` and every pipeline layer but the newest (the one `target/`
/// may be mounted over).
fn build_root_candidates(root: &Path) -> Vec<PathBuf> {
    let list = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default()
    };
    let mut layers = list(root.join(crate::sandbox::target::LAYERS));
    layers.sort_by_key(|p| modified(p));
    layers.pop();
    let mut candidates: Vec<PathBuf> = list(root.join("src")).into_iter().chain(layers).collect();
    candidates.sort_by_key(|p| modified(p));
    candidates
}

/// The files of a local compile cache, oldest first.
fn cache_candidates(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(SystemTime, PathBuf)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.metadata().ok().and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH), e.into_path()))
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
}

impl DiskWatch {
    /// Measures the build root's volume and, above the high watermark, prunes until
    /// it is below it or nothing prunable is left. Blocking: run it off the
    /// runtime's threads.
    pub fn make_room(&self) -> DiskState {
        let measure = || used_percent(&self.build_root).unwrap_or(0.0);
        let mut used = measure();
        let mut pruned = 0;
        if self.marks.pressure(used) >= Pressure::High {
            let before = used;
            let mut candidates = build_root_candidates(&self.build_root);
            if let Some(cache) = &self.local_cache {
                candidates.extend(cache_candidates(cache));
            }
            for path in candidates {
                if used < self.marks.high {
                    break;
                }
                match remove(&path) {
                    Ok(()) => pruned += 1,
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not prune"),
                }
                used = measure();
            }
            tracing::warn!(
                build_root = %self.build_root.display(),
                before = format!("{before:.1}%"),
                after = format!("{used:.1}%"),
                high_watermark = format!("{:.0}%", self.marks.high),
                pruned,
                "volume above the high watermark: pruned the least recently used crates, targets and cache entries"
            );
        }
        let critical = (self.marks.pressure(used) == Pressure::Critical).then(|| {
            format!(
                "its build root's volume is {used:.0}% full (critical watermark {:.0}%) even after pruning: it takes no work until space is freed in {}",
                self.marks.critical,
                self.build_root.display()
            )
        });
        DiskState { used_percent: used, critical, pruned }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_least_recently_used_first_and_spare_the_newest_layer() {
        let root = tempfile::tempdir().unwrap();
        let at = |secs: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs);
        let make = |path: PathBuf, secs: u64| {
            std::fs::create_dir_all(&path).unwrap();
            std::fs::File::open(&path).unwrap().set_times(std::fs::FileTimes::new().set_modified(at(secs))).unwrap();
            path
        };
        let old_crate = make(root.path().join("src/old-1"), 10);
        let new_crate = make(root.path().join("src/new-2"), 30);
        let old_layer = make(root.path().join("layers/7"), 20);
        let _mounted = make(root.path().join("layers/9"), 40);
        std::fs::create_dir_all(root.path().join("prebuilt")).unwrap();
        assert_eq!(build_root_candidates(root.path()), vec![old_crate, old_layer, new_crate]);
    }

    #[test]
    fn below_the_high_watermark_nothing_is_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("src/a-1")).unwrap();
        let watch = DiskWatch {
            build_root: root.path().to_owned(),
            local_cache: None,
            marks: Watermarks { high: 99.98, critical: 99.99 },
        };
        let state = watch.make_room();
        assert_eq!((state.pruned, state.critical), (0, None));
        assert!(root.path().join("src/a-1").is_dir());
        // Every volume is "above" a watermark of 1 %: everything prunable goes, and
        // the member says why it takes no work.
        let watch = DiskWatch { marks: Watermarks { high: 1.0, critical: 2.0 }, ..watch };
        let state = watch.make_room();
        assert_eq!(state.pruned, 1);
        assert!(!root.path().join("src/a-1").exists());
        assert!(state.critical.unwrap().contains("takes no work"));
    }
}
