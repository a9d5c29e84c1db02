//! Finding who holds a multihost address, so that a busy address is reported with
//! its holder, and a member left over from an earlier run whose launcher is gone is
//! cleaned up instead of breaking this run.
//!
//! Every member `kiln launch` starts carries [`DEPLOYMENT_ENV`] and [`LAUNCHER_ENV`]
//! in its environment; that is how a leftover is told apart from anything else,
//! which is never touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// The deployment a member belongs to.
pub const DEPLOYMENT_ENV: &str = "KILN_MULTIHOST_DEPLOYMENT";
/// The pid of the launcher that started a member.
pub const LAUNCHER_ENV: &str = "KILN_MULTIHOST_LAUNCHER_PID";

/// The process listening on an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub command_line: String,
    /// Set when the holder is a member of a `kiln launch` run: its deployment and
    /// whether that run's launcher still lives.
    pub member_of: Option<(String, bool)>,
}

impl Holder {
    /// A member whose launcher is gone: nobody will stop it, and it is safe to.
    pub fn is_leftover(&self) -> bool {
        matches!(self.member_of, Some((_, false)))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (`{}`)", self.pid, self.command_line)?;
        match &self.member_of {
            Some((deployment, true)) => {
                write!(f, ", a member of deployment {deployment}, whose `kiln launch` still runs")
            }
            Some((deployment, false)) => write!(f, ", a leftover member of deployment {deployment}"),
            None => Ok(()),
        }
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The process listening on `address` (TCP), if this user can see it.
pub fn holder_of(address: SocketAddr) -> Option<Holder> {
    let inode = procfs::net::tcp()
        .ok()?
        .into_iter()
        .find(|entry| entry.local_address == address && entry.state == procfs::net::TcpState::Listen)?
        .inode;
    for process in procfs::process::all_processes().ok()?.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let holds = fds.flatten().any(|fd| matches!(fd.target, procfs::process::FDTarget::Socket(i) if i == inode));
        if !holds {
            continue;
        }
        let command_line = process.cmdline().map(|c| c.join(" ")).unwrap_or_else(|_| "?".into());
        let member_of = process.environ().ok().and_then(|env| {
            let deployment = env.get(std::ffi::OsStr::new(DEPLOYMENT_ENV))?.to_string_lossy().into_owned();
            let launcher: Option<i32> =
                env.get(std::ffi::OsStr::new(LAUNCHER_ENV)).and_then(|p| p.to_str()?.parse().ok());
            Some((deployment, launcher.is_some_and(alive)))
        });
        return Some(Holder { pid: process.pid, command_line, member_of });
    }
    None
}

/// Stops a leftover member (its whole process group when it leads one) and waits
/// until `address` is free again.
pub fn clean_up(holder: &Holder, address: SocketAddr) -> std::io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(holder.pid);
    if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
    } else {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpListener::bind(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(std::io::Error::other(format!("{address} is still in use 5 s after stopping pid {}", holder.pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_an_address_is_found() {
        let listener = std::net::TcpListener::bind("127.100.9.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let holder = holder_of(address).expect("this process holds it");
        assert_eq!(holder.pid, std::process::id() as i32);
        assert_eq!(holder.member_of, None, "a test process is not a launched member");
        assert!(!holder.is_leftover());
        drop(listener);
        assert_eq!(holder_of(address), None);
    }
}
