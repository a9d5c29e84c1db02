//! Spawning children so that none outlives its parent: each in its own process group
//! (so a stop reaches its grandchildren too), and with a parent-death signal (so even
//! a SIGKILLed parent takes its children along).

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Puts the child of `command` in a new process group and has the kernel send it
/// SIGKILL when the spawning thread's process dies.
pub fn own_group_dying_with_parent(command: &mut tokio::process::Command) {
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl(2), which is async-signal-safe; it touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Sends `signal` to the process group led by `pid`. A group that is already gone is
/// not an error.
pub fn signal_group(pid: u32, signal: Signal) -> std::io::Result<()> {
    let Ok(pid) = i32::try_from(pid) else {
        return Err(std::io::Error::other(format!("pid {pid} out of range")));
    };
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The CPUs this process may run on (its affinity), in order.
pub fn usable_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count()).filter(|cpu| set.is_set(*cpu).unwrap_or(false)).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Pins the child of `command` (and everything it starts, which inherits the
/// affinity) to `cpus`, as a pod's CPU request gives it its share of a node.
/// CPUs outside this process's own set are left out; none left: not pinned.
pub fn pin_to_cpus(command: &mut tokio::process::Command, cpus: &[usize]) -> std::io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    let mut any = false;
    for cpu in cpus {
        set.set(*cpu).map_err(std::io::Error::from)?;
        any = true;
    }
    if !any {
        return Ok(());
    }
    // SAFETY: runs in the forked child before exec and calls only
    // sched_setaffinity(2), which is async-signal-safe; the set was built before
    // the fork and is only read.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sched::sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}

/// Limits the child of `command` to `bytes` of data segment (RLIMIT_DATA: the heap
/// and private writable mappings), so that a member over its share of memory fails
/// its own allocations rather than starving the others.
pub fn limit_memory(command: &mut tokio::process::Command, bytes: u64) {
    // SAFETY: runs in the forked child before exec and calls only setrlimit(2), which
    // is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, bytes, bytes)
                .map_err(std::io::Error::from)
        });
    }
}

/// Resource limits for a child and everything it starts (rlimits are inherited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_DATA of each process: its heap and private writable mappings.
    pub memory_bytes: u64,
    /// RLIMIT_NPROC: processes of the child's (real) user. Not enforced for root, so
    /// it takes effect once the child has become an unprivileged user.
    pub processes: u64,
    /// RLIMIT_FSIZE: the largest file a process may write.
    pub file_bytes: u64,
}

/// Applies `limits` to the child of `command`.
pub fn limit(command: &mut tokio::process::Command, limits: Limits) {
    use nix::sys::resource::{Resource, setrlimit};
    // SAFETY: runs in the forked child before exec and calls only setrlimit(2), which
    // is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            for (resource, value) in [
                (Resource::RLIMIT_DATA, limits.memory_bytes),
                (Resource::RLIMIT_NPROC, limits.processes),
                (Resource::RLIMIT_FSIZE, limits.file_bytes),
            ] {
                setrlimit(resource, value, value).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Why a server's socket never answered.
#[derive(Debug)]
pub enum NotListening {
    /// The server ended first, with this status.
    Ended(std::process::ExitStatus),
    /// The server could not be waited for.
    Wait(std::io::Error),
    /// Nothing accepted a connection within the time given.
    TimedOut(std::time::Duration),
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotListening::Ended(status) => write!(f, "it ended before it listened ({status})"),
            NotListening::Wait(e) => write!(f, "it cannot be waited for ({e})"),
            NotListening::TimedOut(after) => write!(f, "it did not listen within {}s", after.as_secs()),
        }
    }
}

impl std::error::Error for NotListening {}

/// Waits until `server` (a child just spawned) accepts a connection on the Unix
/// socket at `socket`, for at most `timeout`; stops as soon as `server` ends.
pub async fn wait_until_listening(
    server: &mut tokio::process::Child,
    socket: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<(), NotListening> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = server.try_wait().map_err(NotListening::Wait)? {
            return Err(NotListening::Ended(status));
        }
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(NotListening::TimedOut(timeout));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
