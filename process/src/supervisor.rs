//! One supervisor for every group of child processes Kiln runs: the members of `kiln
//! up`, and the hosts of a multihost launch (`kiln launch`).
//!
//! Each member runs in its own process group and dies with its parent; its output is
//! prefixed with its name (`member-2 | ...`) on the terminal, or written to its own
//! rotated log file (and shown only with `echo`, or in the last lines an exit
//! carries); when it exits, the [`RestartPolicy`]
//! decides between a restart after a backoff and a fatal error; [`Supervisor::stop`]
//! sends SIGTERM to every group, waits for a grace period, then SIGKILLs what is left.
//!
//! Children are spawned from async tasks, which run on tokio's core worker threads:
//! the parent-death signal is tied to the thread that forked, and those threads live
//! as long as the runtime (blocking-pool threads do not, so never spawn from there).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::process::{own_group_dying_with_parent, signal_group};

/// A process to keep running.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// Shown as the output prefix and in events: `member-2`, `host-0`, `coordinator`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub working_dir: Option<PathBuf>,
    /// The most heap (RLIMIT_DATA) the member may use, in bytes.
    pub memory_limit: Option<u64>,
    /// The CPUs the member (and what it starts) runs on; all when None.
    pub cpus: Option<Vec<usize>>,
    /// Where its output goes: its own log file instead of the terminal.
    pub log: Option<MemberLog>,
}

/// A member's own log file, rotated at [`LOG_ROTATE_BYTES`] with [`LOG_FILES_KEPT`]
/// older files (`member-1.log.1`, ...).
#[derive(Debug, Clone)]
pub struct MemberLog {
    pub path: PathBuf,
    /// Also show each line on the terminal, prefixed (`--verbose`).
    pub echo: bool,
}

pub const LOG_ROTATE_BYTES: usize = 10 * 1024 * 1024;
pub const LOG_FILES_KEPT: usize = 3;
/// How many of a member's last lines an exit event carries.
pub const TAIL_LINES: usize = 20;

/// What happens when a member exits while the supervisor is not stopping.
#[derive(Debug, Clone, Copy)]
pub enum RestartPolicy {
    /// Restart after any exit, like a StatefulSet, with a backoff that doubles from
    /// `min_backoff` up to `max_backoff` and resets once a run lasted `stable_after`.
    Always { min_backoff: Duration, max_backoff: Duration, stable_after: Duration },
    /// Restart only on exit code `code`, after `backoff`, at most `max_restarts`
    /// times within `window`; any other exit, or one restart too many, is fatal.
    OnExitCode { code: i32, backoff: Duration, max_restarts: u32, window: Duration },
}

/// What the supervisor tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        member: String,
        pid: u32,
    },
    /// The member exited and will be started again.
    Restarting {
        member: String,
        exit: String,
        after: Duration,
        /// Its last lines of output before it exited, oldest first.
        last_lines: Vec<String>,
    },
    /// The member exited for good; the owner decides what to do with the others.
    Fatal {
        member: String,
        reason: String,
        last_lines: Vec<String>,
    },
}

/// Each member's name and the pid of its current process.
type PidTable = Arc<Mutex<Vec<(String, Option<u32>)>>>;

#[derive(Debug)]
pub struct Supervisor {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pids: PidTable,
    events: mpsc::UnboundedReceiver<Event>,
    grace: Duration,
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map(|s| s.as_str().to_owned()).unwrap_or_else(|_| signal.to_string());
            format!("killed by {name}")
        }
        _ => status.to_string(),
    }
}

/// Where one member's lines go: the terminal or its log file, and its tail.
struct Output {
    name: String,
    file: Option<Mutex<file_rotate::FileRotate<file_rotate::suffix::AppendCount>>>,
    echo: bool,
    tail: Mutex<VecDeque<String>>,
}

impl Output {
    fn new(spec: &MemberSpec) -> Output {
        let file = spec.log.as_ref().map(|log| {
            if let Some(dir) = log.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            Mutex::new(file_rotate::FileRotate::new(
                &log.path,
                file_rotate::suffix::AppendCount::new(LOG_FILES_KEPT),
                file_rotate::ContentLimit::BytesSurpassed(LOG_ROTATE_BYTES),
                file_rotate::compression::Compression::None,
                Some({
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut options = std::fs::OpenOptions::new();
                    options.read(true).create(true).append(true).mode(0o600);
                    options
                }),
            ))
        });
        Output { name: spec.name.clone(), echo: spec.log.as_ref().is_none_or(|l| l.echo), file, tail: Mutex::default() }
    }

    fn line(&self, line: &str, to_stderr: bool) {
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            // A full disk must not stop the member: its lines are then only in the tail.
            let _ = writeln!(file, "{line}").and_then(|()| file.flush());
        }
        if self.echo {
            if to_stderr {
                eprintln!("{} | {line}", self.name);
            } else {
                println!("{} | {line}", self.name);
            }
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    fn take_tail(&self) -> Vec<String> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }
}

fn forward_lines<R: AsyncRead + Unpin + Send + 'static>(
    output: Arc<Output>,
    reader: R,
    to_stderr: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            output.line(&line, to_stderr);
        }
    })
}

impl Supervisor {
    /// Starts every member. `grace` is how long a stop waits after SIGTERM.
    pub fn start(specs: Vec<MemberSpec>, policy: RestartPolicy, grace: Duration) -> Supervisor {
        let stop = CancellationToken::new();
        let (sender, events) = mpsc::unbounded_channel();
        let pids = Arc::new(Mutex::new(specs.iter().map(|s| (s.name.clone(), None)).collect::<Vec<_>>()));
        let tasks = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                tokio::spawn(supervise(spec, index, policy, grace, stop.clone(), sender.clone(), pids.clone()))
            })
            .collect();
        Supervisor { stop, tasks, pids, events, grace }
    }

    /// The next event; None once every member has ended for good.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Each member's name and the pid of its current process, if one runs.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        self.pids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops every member: SIGTERM to its process group, SIGKILL after the grace
    /// period. Returns when all are gone.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let deadline = self.grace + Duration::from_secs(5);
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(deadline, task).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropped without `stop` (an error path, a panic): kill what still runs.
        if !self.stop.is_cancelled() {
            self.stop.cancel();
            for (_, pid) in self.pids() {
                if let Some(pid) = pid {
                    let _ = signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// A member's restart history under its policy.
#[derive(Debug)]
struct Restarts {
    policy: RestartPolicy,
    backoff: Duration,
    recent: Vec<Instant>,
}

impl Restarts {
    fn new(policy: RestartPolicy) -> Restarts {
        let backoff = match policy {
            RestartPolicy::Always { min_backoff, .. } => min_backoff,
            RestartPolicy::OnExitCode { backoff, .. } => backoff,
        };
        Restarts { policy, backoff, recent: Vec::new() }
    }

    /// After an exit (`code`, described as `exit`) of a run that lasted `ran_for`:
    /// how long to wait before starting again, or why the member is fatal.
    fn after_exit(&mut self, code: Option<i32>, exit: String, ran_for: Duration) -> Result<Duration, String> {
        match self.policy {
            RestartPolicy::Always { min_backoff, max_backoff, stable_after } => {
                if ran_for >= stable_after {
                    self.backoff = min_backoff;
                }
                let after = self.backoff;
                self.backoff = (self.backoff * 2).min(max_backoff);
                Ok(after)
            }
            RestartPolicy::OnExitCode { code: restart_code, backoff, max_restarts, window } => {
                if code != Some(restart_code) {
                    return Err(exit);
                }
                self.recent.retain(|t| t.elapsed() < window);
                if self.recent.len() as u32 >= max_restarts {
                    return Err(format!(
                        "{exit}: more than {max_restarts} coordinated restarts within {}s",
                        window.as_secs()
                    ));
                }
                self.recent.push(Instant::now());
                Ok(backoff)
            }
        }
    }
}

/// The member's command: piped output, its own process group, the parent-death
/// signal and its memory limit.
fn command(spec: &MemberSpec) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    own_group_dying_with_parent(&mut command);
    if let Some(bytes) = spec.memory_limit {
        crate::process::limit_memory(&mut command, bytes);
    }
    if let Some(cpus) = &spec.cpus
        && let Err(e) = crate::process::pin_to_cpus(&mut command, cpus)
    {
        tracing::warn!(member = %spec.name, error = %e, "cannot pin the member to its CPUs: it shares all of them");
    }
    command
}

async fn supervise(
    spec: MemberSpec,
    index: usize,
    policy: RestartPolicy,
    grace: Duration,
    stop: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
    pids: PidTable,
) {
    let set_pid = |pid: Option<u32>| pids.lock().unwrap_or_else(|p| p.into_inner())[index].1 = pid;
    let mut restarts = Restarts::new(policy);
    let output = Arc::new(Output::new(&spec));
    loop {
        let mut child = match command(&spec).spawn() {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("could not start {}: {e}", spec.program.display());
                let _ = events.send(Event::Fatal { member: spec.name.clone(), reason, last_lines: Vec::new() });
                return;
            }
        };
        // `spawn` succeeded, so the child has a pid until it is waited for.
        let pid = child.id().expect("a running child has a pid");
        set_pid(Some(pid));
        let started = Instant::now();
        let _ = events.send(Event::Started { member: spec.name.clone(), pid });
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(forward_lines(output.clone(), out, false));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(forward_lines(output.clone(), err, true));
        }

        let status = tokio::select! {
            status = child.wait() => status,
            () = stop.cancelled() => {
                // The whole group: the member and whatever it started.
                let _ = signal_group(pid, Signal::SIGTERM);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    tracing::warn!(member = %spec.name, "did not stop within {}s of SIGTERM: killing it", grace.as_secs());
                    // Still unreaped, so the group id is still this member's.
                    let _ = signal_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                set_pid(None);
                return;
            }
        };
        // No group signal once the member is reaped: its pid, and so its group id, may
        // already belong to an unrelated process (pids wrap at 32768 on small
        // machines). Its own children die with it (parent-death signal).
        set_pid(None);
        // Its last words are in the pipes still: read them before telling why it ended
        // (bounded: a grandchild may hold a pipe open).
        let _ = tokio::time::timeout(Duration::from_secs(2), futures_join(readers)).await;
        let last_lines = output.take_tail();
        let code = status.as_ref().ok().and_then(|s| s.code());
        let exit = match status {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        match restarts.after_exit(code, exit.clone(), started.elapsed()) {
            Ok(after) => {
                let _ = events.send(Event::Restarting { member: spec.name.clone(), exit, after, last_lines });
                tokio::select! {
                    () = tokio::time::sleep(after) => {}
                    () = stop.cancelled() => return,
                }
            }
            Err(reason) => {
                let _ = events.send(Event::Fatal { member: spec.name.clone(), reason, last_lines });
                return;
            }
        }
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &str, script: &str) -> MemberSpec {
        MemberSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            working_dir: None,
            memory_limit: None,
            cpus: None,
            log: None,
        }
    }

    #[tokio::test]
    async fn a_restart_code_is_bounded_and_other_exits_are_fatal() {
        let policy = RestartPolicy::OnExitCode {
            code: 55,
            backoff: Duration::from_millis(10),
            max_restarts: 2,
            window: Duration::from_secs(60),
        };
        let mut supervisor = Supervisor::start(
            vec![shell("host-0", "exit 55"), shell("host-1", "exit 1")],
            policy,
            Duration::from_secs(1),
        );
        let mut restarts = 0;
        let mut fatal = Vec::new();
        while fatal.len() < 2 {
            match supervisor.next_event().await.unwrap() {
                Event::Restarting { member, .. } => {
                    assert_eq!(member, "host-0");
                    restarts += 1;
                }
                Event::Fatal { member, reason, .. } => fatal.push((member, reason)),
                Event::Started { .. } => {}
            }
        }
        assert_eq!(restarts, 2);
        fatal.sort();
        assert_eq!(fatal[0].0, "host-0");
        assert!(fatal[0].1.contains("more than 2 coordinated restarts"), "{}", fatal[0].1);
        assert_eq!(fatal[1], ("host-1".to_owned(), "exit code 1".to_owned()));
        supervisor.stop().await;
    }

    #[tokio::test]
    async fn stop_leaves_no_process_behind() {
        // The member starts a grandchild; both must be gone after stop.
        let policy = RestartPolicy::Always {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            stable_after: Duration::from_secs(1),
        };
        let mut supervisor =
            Supervisor::start(vec![shell("member-0", "sleep 300 & wait")], policy, Duration::from_secs(2));
        let pid = match supervisor.next_event().await.unwrap() {
            Event::Started { pid, .. } => pid,
            other => panic!("unexpected {other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        supervisor.stop().await;
        // The grandchild is reaped by init, which may take a moment.
        let mut group_alive = true;
        for _ in 0..50 {
            group_alive = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
            if !group_alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert!(!group_alive, "the member's process group is gone");
    }

    #[tokio::test]
    async fn a_logged_member_writes_its_file_and_an_exit_carries_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/member-1.log");
        let mut spec =
            shell("member-1", "for i in $(seq 1 30); do echo line $i; done; echo 'error: no rustc' >&2; exit 3");
        spec.log = Some(MemberLog { path: path.clone(), echo: false });
        let policy = RestartPolicy::OnExitCode {
            code: 55,
            backoff: Duration::from_millis(10),
            max_restarts: 1,
            window: Duration::from_secs(60),
        };
        let mut supervisor = Supervisor::start(vec![spec], policy, Duration::from_secs(1));
        let last_lines = loop {
            match supervisor.next_event().await.unwrap() {
                Event::Fatal { last_lines, reason, .. } => {
                    assert_eq!(reason, "exit code 3");
                    break last_lines;
                }
                Event::Started { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(last_lines.len(), TAIL_LINES, "{last_lines:?}");
        assert!(last_lines.contains(&"error: no rustc".to_owned()), "{last_lines:?}");
        assert!(last_lines.contains(&"line 30".to_owned()), "{last_lines:?}");
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with("line 1\n") && written.contains("error: no rustc"), "{written}");
    }
}
