//! The member's long-lived sccache server, in a sandbox of its own.
//!
//! A new sccache server hashes the compiler (its ~150 MB driver library) before
//! its first compile: a build that starts its own server pays that every time.
//! Builds in which no code of the submitter runs (no build script, no proc-macro
//! of the program's own: [`kiln_core::program::Layout::submitted_code`]) compile
//! through this one server instead, which keeps what it learned of the compiler
//! between builds. Builds that do run submitted code keep a server of their own in
//! their own sandbox (a proc-macro runs inside the server, and must not stay).
//!
//! Its sandbox has the shape of a build's, with three differences:
//!
//! - `src/` is a directory of the member's ([`CacheServer::ready`] fills it with
//!   copies of the build's crates before each build, nothing else), so the server,
//!   like the build, sees no other program's sources;
//! - no workspace manifest or lock file (it compiles, cargo does the rest);
//! - the gateway's shared door ([`super::gateway::Gateway::open_shared_door`]):
//!   every entry it writes is one every build may read, which holds because no
//!   submitted code ever runs in it; no build's scope reaches it.
//!
//! **What a build sees of it:** its socket, and nothing else; its compiles run in
//! the server's sandbox with the build's `target/`. Such a build's sandbox runs
//! cargo alone (no relay, no server of its own); the member reads the server's
//! figures after the build ([`CacheServer::build_figures`]): what they grew by is
//! the build's.
//!
//! **Invariant:** the server compiles only in the view of the build in hand. Its
//! sandbox shows `target/` (and the dependency set's directories) by their paths
//! at its start; the member renews `target/` for each build, by an overlay that
//! reaches the server through mount propagation (`kiln server` makes the build
//! root a shared mount in its private namespace), or by renames that do not. So
//! before each build the member compares what the server sees at those paths
//! (through `/proc/<pid>/root`) with what it sees itself, device and inode, and
//! restarts the server when they differ or it cannot tell. It also restarts it
//! after a build that was cancelled, timed out or stopped, when it ended or its
//! socket is gone, and when its figures could not be read after a build.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use kiln_process::process::Limits;

use super::{Mounts, Sandbox};
use crate::sccache::stats::{MAX_STATS_BYTES, SccacheStats, parse_stats};

/// How long a new server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may take to say its figures, and the memory of the client
/// that asks (its data segment).
const STATS_TIMEOUT: Duration = Duration::from_secs(30);
const STATS_CLIENT_MEMORY: u64 = 1 << 30;

/// What the member needs to start the server.
#[derive(Debug)]
pub struct CacheServer {
    /// The member's directory for it: `src/` (the view), `run/` (the socket),
    /// `tmp/`, `server.log`.
    dir: PathBuf,
    /// The sandbox's first program (the `kiln` binary) and sccache.
    init: PathBuf,
    sccache: PathBuf,
    /// The gateway's shared door, and the server's settings to reach it.
    door: PathBuf,
    env: Vec<(String, String)>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Why the last server was stopped, until the next one starts.
    stopped: std::sync::Mutex<Option<String>>,
    /// Whether a build was readied since the figures were last read.
    serving: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Running {
    /// bubblewrap, outside the sandbox's namespaces.
    bwrap: tokio::process::Child,
    /// The sandbox's first process, inside them: what it sees is the server's view.
    inside: u32,
    started: Instant,
    /// The builds it served.
    builds: u64,
    /// Why it was started, until its first build is told.
    started_for: Option<String>,
    /// Its figures when its last build ended (nothing yet when it started).
    figures: SccacheStats,
}

/// What the server of a build must match: the sandbox, the build root, and the
/// limits each of its processes has (a build's).
#[derive(Debug, Clone, Copy)]
pub struct ServerBuild<'a> {
    pub sandbox: &'a Sandbox,
    pub root: &'a Path,
    pub limits: Limits,
}

/// How the server came to serve a build, for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The running server, for its `n`th build.
    Kept { builds: u64, since: Duration },
    /// A new server, and why.
    Started(String),
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Served::Kept { builds, since } => write!(
                f,
                "compiled through the member's long-lived sccache server (build {builds} since it started {}s ago)",
                since.as_secs()
            ),
            Served::Started(why) => {
                write!(f, "compiled through the member's long-lived sccache server, started now ({why})")
            }
        }
    }
}

impl CacheServer {
    pub fn new(dir: PathBuf, init: PathBuf, sccache: PathBuf, door: PathBuf, env: Vec<(String, String)>) -> Self {
        CacheServer {
            dir,
            init,
            sccache,
            door,
            env,
            running: tokio::sync::Mutex::new(None),
            stopped: std::sync::Mutex::new(None),
            serving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The server's socket, at the same path inside its sandbox, a build's and outside.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("sccache.sock")
    }

    fn view(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// Before `target/` is renewed for a build, with the last build's overlay
    /// unmounted (see [`super::target::unmount_target`]): keeps a server that sees
    /// `target/` as the member does, else starts one now, which binds the plain
    /// directory and so follows every overlay mounted on it later.
    pub async fn follow(&self, build: &ServerBuild<'_>) -> anyhow::Result<()> {
        let mut running = self.running.lock().await;
        if let Err(why) = self.check(running.as_mut(), build.root) {
            self.restart(&mut running, build, why).await?;
        }
        Ok(())
    }

    /// Readies the server for a build of `crates` (which runs no submitted code),
    /// after `target/` was renewed: shows the server those crates, and keeps the
    /// running server if it sees this build's `target/`, else starts one.
    pub async fn ready(&self, build: &ServerBuild<'_>, crates: &[String]) -> anyhow::Result<Served> {
        show_sources(&self.view(), build.root, crates).context("showing the build's crates to the cache server")?;
        let mut running = self.running.lock().await;
        if let Err(why) = self.check(running.as_mut(), build.root) {
            self.restart(&mut running, build, why).await?;
        }
        let server = running.as_mut().context("no cache server runs")?;
        server.builds += 1;
        self.serving.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(match server.started_for.take() {
            Some(why) => Served::Started(why),
            None => Served::Kept { builds: server.builds, since: server.started.elapsed() },
        })
    }

    /// After a build, this build's figures if it compiled through the server (it
    /// was [readied](Self::ready) since the last call); none for a build that did
    /// not. The server serves one build at a time, so what its figures grew by
    /// since the last build ended is this build's; nothing runs inside the build's
    /// sandbox to count them, and nothing is zeroed before it. A server whose
    /// figures cannot be read, or that ended, is replaced for the next build (its
    /// later figures would mix builds).
    pub async fn build_figures(&self) -> Option<anyhow::Result<SccacheStats>> {
        if !self.serving.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut running = self.running.lock().await;
        let Some(server) = running.as_mut() else {
            return Some(Err(anyhow::anyhow!(
                "the member's cache server was stopped before its figures were read (the build did not end by itself)"
            )));
        };
        let read = self.figures().await.and_then(|now| match server.bwrap.try_wait() {
            Ok(None) => Ok(now),
            Ok(Some(status)) => Err(anyhow::anyhow!("the member's cache server ended during the build ({status})")),
            Err(e) => Err(anyhow::anyhow!("the member's cache server cannot be waited for ({e})")),
        });
        match read {
            Ok(now) => {
                let build = now.since(&server.figures);
                server.figures = now;
                Some(Ok(build))
            }
            Err(e) => {
                if let Some(mut old) = running.take() {
                    stop(&mut old).await;
                }
                *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("its figures could not be read: {e:#}"));
                Some(Err(e))
            }
        }
    }

    /// The server's figures since it started. The member asks with sccache's own
    /// client, outside every sandbox: asked for figures, the client never starts a
    /// server (with none listening it says zeros, which the caller refuses when
    /// the server ended). The answer comes from the server's sandbox, so the client
    /// gets nothing of the member's environment (a home of its own, no
    /// configuration), a bounded memory and time, and only its first
    /// [`MAX_STATS_BYTES`] are read; the socket must be a socket, not a link.
    async fn figures(&self) -> anyhow::Result<SccacheStats> {
        use std::os::unix::fs::FileTypeExt;
        use tokio::io::AsyncReadExt;
        let socket = self.socket();
        let kind = std::fs::symlink_metadata(&socket).context("the cache server's socket")?.file_type();
        anyhow::ensure!(kind.is_socket(), "{} is not a socket", socket.display());
        let mut command = tokio::process::Command::new(&self.sccache);
        command
            .args(["--show-stats", "--stats-format=json"])
            .env_clear()
            .env("HOME", &self.dir)
            .env("SCCACHE_CONF", self.dir.join("no-sccache-config.toml"))
            .env("SCCACHE_SERVER_UDS", &socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        kiln_process::process::limit_memory(&mut command, STATS_CLIENT_MEMORY);
        let read = async {
            let mut child = command.spawn().with_context(|| format!("running {}", self.sccache.display()))?;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut stdout = child.stdout.take().context("sccache's output")?.take(MAX_STATS_BYTES + 1);
            let mut stderr = child.stderr.take().context("sccache's errors")?.take(4096);
            let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            o.and(e).context("reading sccache --show-stats")?;
            anyhow::ensure!(out.len() as u64 <= MAX_STATS_BYTES, "the cache server's figures are too large");
            let status = child.wait().await?;
            anyhow::ensure!(
                status.success(),
                "sccache --show-stats failed ({status}): {}",
                String::from_utf8_lossy(&err).trim()
            );
            parse_stats(&String::from_utf8_lossy(&out))
        };
        tokio::time::timeout(STATS_TIMEOUT, read)
            .await
            .context("the member's cache server did not say its figures in time")?
    }

    /// Whether `server` runs, answers and sees what the member sees; why not.
    fn check(&self, server: Option<&mut Running>, build_root: &Path) -> Result<(), String> {
        let Some(server) = server else {
            let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(stopped
                .map_or("the first build it serves".to_owned(), |why| format!("the last one was stopped: {why}")));
        };
        match server.bwrap.try_wait() {
            Ok(Some(status)) => Err(format!("the last one ended ({status})")),
            Err(e) => Err(format!("the last one cannot be waited for ({e})")),
            Ok(None) if !self.socket().exists() => Err("the last one's socket is gone".to_owned()),
            Ok(None) => stale_view(server.inside, build_root, &self.view()).map_or(Ok(()), Err),
        }
    }

    async fn restart(&self, running: &mut Option<Running>, build: &ServerBuild<'_>, why: String) -> anyhow::Result<()> {
        if let Some(mut old) = running.take() {
            stop(&mut old).await;
        }
        tracing::info!(reason = %why, "starting the member's long-lived sccache server");
        let mut server = self.start(build).await?;
        server.started_for = Some(why);
        *running = Some(server);
        Ok(())
    }

    /// Stops the server (after a build that did not end by itself: what it left
    /// running in the server is gone with it).
    pub async fn stop(&self, why: &str) {
        if let Some(mut server) = self.running.lock().await.take() {
            tracing::info!(reason = why, "stopping the member's long-lived sccache server");
            stop(&mut server).await;
            *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
        }
    }

    async fn start(&self, build: &ServerBuild<'_>) -> anyhow::Result<Running> {
        let sandbox = build.sandbox;
        let (run, tmp) = (self.dir.join("run"), self.dir.join("tmp"));
        // The view exists before its first build fills it (bubblewrap binds it).
        std::fs::create_dir_all(self.view())?;
        for dir in [&run, &tmp] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            std::fs::create_dir_all(dir)?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
        super::hand_over(sandbox, &[&run], &[]).context("handing the server's socket directory to the build user")?;
        let mounts = Mounts {
            build_root: build.root.to_owned(),
            crates: Vec::new(),
            sources: Some(self.view()),
            lockfile: None,
            tmp,
            writable: vec![run, self.door.clone()],
            programs: vec![self.init.clone(), self.sccache.clone()],
        };
        let args: Vec<std::ffi::OsString> = vec![
            "sandbox-init".into(),
            "--serve".into(),
            "--relay-port".into(),
            super::gateway::SANDBOX_PORT.to_string().into(),
            "--gateway".into(),
            self.door.clone().into(),
            "--sccache".into(),
            self.sccache.clone().into(),
        ];
        let log = std::fs::File::create(self.dir.join("server.log")).context("creating the cache server's log")?;
        let mut command = sandbox.command(&mounts, &self.init, &args);
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SCCACHE_SERVER_UDS", self.socket())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        kiln_process::process::own_group_dying_with_parent(&mut command);
        kiln_process::process::limit(&mut command, build.limits);
        let mut bwrap = command.spawn().context("starting the cache server's sandbox")?;
        if let Err(e) = kiln_process::process::wait_until_listening(&mut bwrap, &self.socket(), START_TIMEOUT).await {
            let _ = bwrap.kill().await;
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!("the cache server did not listen on {}: {e}: {}", self.socket().display(), log.trim());
        }
        let inside = first_child(bwrap.id().context("bubblewrap has no pid")?)
            .context("finding the cache server's sandbox process")?;
        Ok(Running {
            bwrap,
            inside,
            started: Instant::now(),
            builds: 0,
            started_for: None,
            figures: SccacheStats::default(),
        })
    }
}

async fn stop(server: &mut Running) {
    if let Some(pid) = server.bwrap.id() {
        let _ = kiln_process::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = server.bwrap.wait().await;
}

/// The first child of `pid` (bubblewrap's, inside the namespaces it made).
fn first_child(pid: u32) -> anyhow::Result<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    children.split_whitespace().next().and_then(|p| p.parse().ok()).context("bubblewrap has no child")
}

/// The paths whose identity the server's view must share with the member's.
const FOLLOWED: [&str; 4] = ["target", "depset", "pipeline-runtime", ".cargo"];

/// Why the server's view (that of process `inside`) is not the member's at one of
/// [`FOLLOWED`], or its `src/` not the member's `view`, if it is not; None when
/// every one is the same file.
fn stale_view(inside: u32, build_root: &Path, view: &Path) -> Option<String> {
    let seen = |path: &Path| PathBuf::from(format!("/proc/{inside}/root")).join(path.strip_prefix("/").unwrap_or(path));
    let pairs = FOLLOWED.iter().map(|name| (*name, build_root.join(name), seen(&build_root.join(name))));
    for (name, ours, theirs) in pairs.chain([("src", view.to_owned(), seen(&build_root.join("src")))]) {
        match (std::fs::metadata(&ours), std::fs::metadata(&theirs)) {
            (Err(_), Err(_)) => {}
            (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()) => {}
            (Ok(a), Ok(b)) => {
                return Some(format!(
                    "{name}/ was renewed where the last one cannot see it: file {}:{} here, {}:{} there",
                    a.dev(),
                    a.ino(),
                    b.dev(),
                    b.ino()
                ));
            }
            (_, Err(e)) => return Some(format!("what the last one sees of {name}/ cannot be read ({e})")),
            (Err(e), _) => return Some(format!("{name}/ cannot be read ({e})")),
        }
    }
    None
}

/// Makes `view` hold copies of the build's `crates` (their regular files and
/// directories, links not followed) and nothing else.
fn show_sources(view: &Path, build_root: &Path, crates: &[String]) -> anyhow::Result<()> {
    // The directory itself stays: the server's sandbox binds it.
    std::fs::create_dir_all(view)?;
    for entry in std::fs::read_dir(view)? {
        let path = entry?.path();
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    for krate in crates {
        let from = build_root.join("src").join(krate);
        for entry in walkdir::WalkDir::new(&from).follow_links(false) {
            let entry = entry?;
            let to = view.join(krate).join(entry.path().strip_prefix(&from)?);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&to)?;
            } else if entry.file_type().is_file() {
                std::fs::copy(entry.path(), &to)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_holds_the_builds_crates_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let view = root.path().join("view");
        for (krate, file) in [("app-1", "src/main.rs"), ("op-2", "src/lib.rs"), ("other-3", "src/lib.rs")] {
            let path = root.path().join("src").join(krate).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, krate).unwrap();
        }
        std::os::unix::fs::symlink("/etc/shadow", root.path().join("src/app-1/src/link")).unwrap();
        show_sources(&view, root.path(), &["other-3".into()]).unwrap();
        show_sources(&view, root.path(), &["app-1".into(), "op-2".into()]).unwrap();
        let mut seen: Vec<String> = walkdir::WalkDir::new(&view)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(&view).unwrap().display().to_string())
            .collect();
        seen.sort();
        assert_eq!(seen, ["", "app-1", "app-1/src", "app-1/src/main.rs", "op-2", "op-2/src", "op-2/src/lib.rs"]);
        assert_eq!(std::fs::read_to_string(view.join("app-1/src/main.rs")).unwrap(), "app-1");
    }

    #[test]
    fn a_view_is_stale_when_a_followed_directory_was_replaced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("target")).unwrap();
        // This process's own root is the member's: the same files, not stale.
        std::fs::create_dir_all(root.path().join("src")).unwrap();
        assert_eq!(stale_view(std::process::id(), root.path(), &root.path().join("src")), None);
        // A view that is another directory than the server's src/.
        let other = root.path().join("view");
        std::fs::create_dir_all(&other).unwrap();
        let why = stale_view(std::process::id(), root.path(), &other).unwrap();
        assert!(why.starts_with("src/ was renewed"), "{why}");
        // A process that does not exist: it cannot tell, so stale.
        assert!(stale_view(u32::MAX, root.path(), &root.path().join("src")).is_some());
    }

    /// A server in `dir` that was never started, whose figures `sccache` reads.
    fn server_in(dir: &Path, sccache: PathBuf) -> CacheServer {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        CacheServer::new(dir.to_owned(), "/nonexistent/kiln".into(), sccache, "/nonexistent/door".into(), Vec::new())
    }

    /// The server's directory is the build user's: a link planted at the socket,
    /// to another socket (another member's server, say), is not talked through.
    #[tokio::test]
    async fn the_figures_are_never_read_through_a_link_at_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Refused before any client runs: had it run, this one would not start.
        let server = server_in(dir.path(), "/nonexistent/sccache".into());
        let elsewhere = dir.path().join("another-servers.sock");
        let listener = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::os::unix::fs::symlink(&elsewhere, server.socket()).unwrap();

        let err = format!("{:#}", server.figures().await.unwrap_err());
        assert!(err.contains("is not a socket"), "{err}");
        let nobody = listener.accept().unwrap_err();
        assert_eq!(nobody.kind(), std::io::ErrorKind::WouldBlock, "nothing connected to the other socket");
    }

    /// What answers at the socket is as hostile as a build could make it: a frame
    /// that says it is 4 GiB long, then bytes without end. The real client's
    /// reading of it is an error the member reports, not a flood it takes in:
    /// sccache 0.16 allocates the frame whole, and the client's memory limit
    /// aborts it before it has read a 64th of it.
    #[tokio::test]
    async fn a_hostile_answer_at_the_socket_is_an_error_not_a_flood() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sccache = kiln_process::find_tool("sccache").expect("sccache is installed: run scripts/install-deps");
        let server = server_in(dir.path(), sccache);
        let listener = tokio::net::UnixListener::bind(server.socket()).unwrap();
        let (answers, sent) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
        let (counted, written) = (answers.clone(), sent.clone());
        let hostile = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let written = written.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 256];
                    let _ = conn.read(&mut request).await;
                    let _ = conn.write_all(&u32::MAX.to_be_bytes()).await;
                    let junk = vec![0xA5u8; 1 << 20];
                    while conn.write_all(&junk).await.is_ok() {
                        written.fetch_add(junk.len() as u64, Ordering::SeqCst);
                    }
                });
            }
        });

        let err = format!("{:#}", server.figures().await.unwrap_err());
        hostile.abort();
        assert!(answers.load(Ordering::SeqCst) >= 1, "the client asked the hostile server");
        assert!(err.contains("sccache --show-stats failed"), "{err}");
        let taken = sent.load(Ordering::SeqCst);
        assert!(taken < 64 << 20, "the client stopped before taking in the flood: {taken} bytes were sent");
    }
}
