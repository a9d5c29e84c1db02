//! Reading a cargo run: its JSON messages and its log, collected as they arrive
//! (the log capped, the first errors summarised, the binary's path, how many of
//! the program's crates are done), and what its exit means: a binary, the
//! program's compile error (naming the limit it hit, if any), or a failure of the
//! farm.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use tokio::io::BufReader;

use crate::log::{CappedLog, MAX_LINE_BYTES, clip, read_capped_line};

/// How a build ended.
#[derive(Debug)]
pub enum BuildOutcome {
    Built { executable: PathBuf, log: String, elapsed: Duration },
    CompileError { summary: String, log: String, elapsed: Duration },
    Cancelled,
}

/// What a build that hit one of its limits says, with the setting that raises it:
/// read from the signs the limit leaves in the log.
fn limit_hit(log: &str, limits: &kiln_process::process::Limits) -> Option<String> {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    if log.contains("memory allocation of") || log.contains("Cannot allocate memory") {
        return Some(format!(
            "the build hit its memory limit of {} per process (--build-memory)",
            gib(limits.memory_bytes)
        ));
    }
    if log.contains("Resource temporarily unavailable") || log.contains("WouldBlock") {
        return Some(format!("the build hit its limit of {} processes (--build-processes)", limits.processes));
    }
    if log.contains("No space left on device") {
        return Some("the build ran out of space: its /tmp holds --build-tmp-size, its target/ the disk's room".into());
    }
    if log.contains("File size limit exceeded") || log.contains("SIGXFSZ") || log.contains("File too large") {
        return Some(format!("the build hit its file size limit of {} (--build-file-size)", gib(limits.file_bytes)));
    }
    None
}

/// Collects cargo's output: rendered diagnostics and cargo's own lines in arrival
/// order, the first errors, and the binary's path.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub(super) log: CappedLog,
    errors: Vec<String>,
    error_count: usize,
    executable: Option<PathBuf>,
    /// cargo's line when a build script of the program failed.
    build_script_failed: Option<String>,
    /// The manifests of the program's crates cargo has finished (fresh or built).
    crates_done: std::collections::HashSet<String>,
}

impl Collected {
    /// Nothing collected yet; the log kept to `max_log_bytes`.
    pub(super) fn new(max_log_bytes: usize) -> Collected {
        Collected { log: CappedLog::new(max_log_bytes), ..Collected::default() }
    }
}

/// How far a build has come: the program's crates cargo has finished, of all of
/// them. Written as cargo's messages arrive, read by the heartbeat.
#[derive(Debug, Default)]
pub struct BuildProgress {
    done: std::sync::atomic::AtomicU32,
    total: std::sync::atomic::AtomicU32,
}

impl BuildProgress {
    pub fn start(&self, total: usize) {
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
        self.total.store(u32::try_from(total).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    fn set_done(&self, done: usize) {
        self.done.store(u32::try_from(done).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    /// (crates done, crates to build).
    pub fn get(&self) -> (u32, u32) {
        (self.done.load(std::sync::atomic::Ordering::Relaxed), self.total.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Longest summary of one error taken from the program's output.
const MAX_ERROR_SUMMARY_BYTES: usize = 1024;

fn collect_json_line(collected: &mut Collected, line: &str, binary_manifest: &Path) {
    // The program's crates sit in `<build root>/src/`, beside the binary's.
    let program_dir = binary_manifest.parent().and_then(Path::parent).unwrap_or(binary_manifest);
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
        collected.log.push_line(line);
        return;
    };
    match message["reason"].as_str() {
        Some("compiler-message") => {
            let diagnostic = &message["message"];
            if let Some(rendered) = diagnostic["rendered"].as_str() {
                collected.log.push(rendered);
            }
            if diagnostic["level"].as_str() == Some("error") {
                collected.error_count += 1;
                if collected.errors.len() < 3 {
                    let code = diagnostic["code"]["code"].as_str().map(|c| format!("[{c}]")).unwrap_or_default();
                    let text = diagnostic["message"].as_str().unwrap_or("error");
                    let span = diagnostic["spans"]
                        .as_array()
                        .and_then(|s| s.iter().find(|s| s["is_primary"].as_bool() == Some(true)))
                        .map(|s| format!(" at {}:{}", s["file_name"].as_str().unwrap_or("?"), s["line_start"]))
                        .unwrap_or_default();
                    collected.errors.push(clip(&format!("error{code}: {text}{span}"), MAX_ERROR_SUMMARY_BYTES));
                }
            }
        }
        Some("compiler-artifact") => {
            let is_binary = message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            let manifest = message["manifest_path"].as_str().map(Path::new);
            if is_binary && manifest == Some(binary_manifest) {
                collected.executable = message["executable"].as_str().map(PathBuf::from);
            }
            let build_script =
                message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "custom-build"));
            if let Some(manifest) = manifest
                && !build_script
                && manifest.starts_with(program_dir)
            {
                collected.crates_done.insert(manifest.display().to_string());
            }
        }
        _ => {}
    }
}

/// Reads cargo's JSON messages (stdout) and its log (stderr) into `collected`.
pub(super) fn read_output(
    child: &mut tokio::process::Child,
    collected: &Arc<Mutex<Collected>>,
    binary_manifest: PathBuf,
    progress: Arc<BuildProgress>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Both pipes are taken right after spawning with `Stdio::piped()`.
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_task = {
        let collected = collected.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some((line, dropped))) = read_capped_line(&mut reader, MAX_LINE_BYTES).await {
                let mut c = collected.lock().unwrap_or_else(|p| p.into_inner());
                if dropped > 0 {
                    c.log.push_line(&format!(
                        "[a line of cargo's output was cut: {dropped} bytes past the first {MAX_LINE_BYTES} left out]"
                    ));
                }
                collect_json_line(&mut c, &line, &binary_manifest);
                progress.set_done(c.crates_done.len());
            }
        })
    };
    let err_task = {
        let collected = collected.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            while let Ok(Some((line, dropped))) = read_capped_line(&mut reader, MAX_LINE_BYTES).await {
                let mut c = collected.lock().unwrap_or_else(|p| p.into_inner());
                if dropped > 0 {
                    c.log.push_line(&format!("[a line of the build's output was cut: {dropped} bytes past the first {MAX_LINE_BYTES} left out]"));
                }
                if c.build_script_failed.is_none() && line.starts_with("error: failed to run custom build command for")
                {
                    c.build_script_failed = Some(clip(&line, MAX_ERROR_SUMMARY_BYTES));
                }
                c.log.push_line(&line);
            }
        })
    };
    vec![out_task, err_task]
}

/// What cargo's exit and output mean: a binary, a compile error, or a failure of
/// the farm (resolution, I/O, a missing crate).
pub(super) fn outcome(
    status: std::process::ExitStatus,
    collected: Collected,
    elapsed: Duration,
    package: &str,
    limits: &kiln_process::process::Limits,
    group_hit: Option<String>,
) -> anyhow::Result<BuildOutcome> {
    let log = collected.log.finish();
    let limit = if status.success() { None } else { group_hit.or_else(|| limit_hit(&log, limits)) };
    let with_limit = |summary: String| match &limit {
        Some(limit) => format!("{summary} ({limit})"),
        None => summary,
    };
    if status.success() {
        let executable =
            collected.executable.ok_or_else(|| anyhow::anyhow!("cargo succeeded but named no binary for {package}"))?;
        return Ok(BuildOutcome::Built { executable, log, elapsed });
    }
    if collected.error_count > 0 {
        let mut summary = collected.errors.join("; ");
        if collected.error_count > collected.errors.len() {
            summary.push_str(&format!(" (and {} more errors)", collected.error_count - collected.errors.len()));
        }
        return Ok(BuildOutcome::CompileError { summary: with_limit(summary), log, elapsed });
    }
    // A build script of the program failed: the program's error, with its output
    // in the log (the dependency set's build scripts ran when it was prebuilt).
    if let Some(line) = collected.build_script_failed {
        let summary = line.trim_start_matches("error: ").to_owned();
        return Ok(BuildOutcome::CompileError { summary: with_limit(summary), log, elapsed });
    }
    // cargo itself stopped by a limit of the sandbox (a build script's 3 GiB of
    // output held in cargo's memory, say): the program's doing.
    if let Some(limit) = limit {
        return Ok(BuildOutcome::CompileError { summary: format!("cargo failed ({status}): {limit}"), log, elapsed });
    }
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    bail!(
        "cargo failed ({status}) without a compiler error:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn compiler_errors_are_summarised_and_the_binary_found() {
        let manifest = Path::new("/b/src/app-1/Cargo.toml");
        let mut c = Collected { log: CappedLog::new(1 << 20), ..Collected::default() };
        let error = r#"{"reason":"compiler-message","message":{"rendered":"error[E0425]: cannot find value `x`\n","level":"error","message":"cannot find value `x` in this scope","code":{"code":"E0425"},"spans":[{"is_primary":true,"file_name":"src/main.rs","line_start":3}]}}"#;
        collect_json_line(&mut c, error, manifest);
        let artifact = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/app-1/Cargo.toml","target":{"kind":["bin"]},"executable":"/b/target/release/app"}"#;
        collect_json_line(&mut c, artifact, manifest);
        let other = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/ops-1/Cargo.toml","target":{"kind":["lib"]},"executable":null}"#;
        collect_json_line(&mut c, other, manifest);
        assert_eq!(c.errors, vec!["error[E0425]: cannot find value `x` in this scope at src/main.rs:3"]);
        assert_eq!(c.executable, Some(PathBuf::from("/b/target/release/app")));
        // Progress counts the program's crates once each, not build scripts nor the set's.
        let script = r#"{"reason":"compiler-artifact","manifest_path":"/b/src/ops-1/Cargo.toml","target":{"kind":["custom-build"]}}"#;
        collect_json_line(&mut c, script, manifest);
        collect_json_line(&mut c, other, manifest);
        let set = r#"{"reason":"compiler-artifact","manifest_path":"/b/depset/vendor/itoa/Cargo.toml","target":{"kind":["lib"]}}"#;
        collect_json_line(&mut c, set, manifest);
        assert_eq!(c.crates_done.len(), 2, "{:?}", c.crates_done);
        assert!(c.log.finish().contains("error[E0425]"));
    }
}
