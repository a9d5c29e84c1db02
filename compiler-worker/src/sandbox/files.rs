//! The member's own file operations in a build's space (`target/`, a pipeline's
//! layer): what it reads, hashes, uploads, copies or deletes there after a build.
//!
//! A build writes that space, so anything in it may be a trap: a symbolic link to a
//! root-only file, to `/proc/self/environ` or to `/dev/zero`, a FIFO that blocks a
//! reader for good, a link to a directory whose files a cleanup would delete.
//!
//! **Invariants:**
//! - Called only once the sandbox's last process is gone (bubblewrap's PID
//!   namespace ends with the build), so nothing changes under these calls.
//! - A path is resolved below a directory the member opened itself, with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no link is followed, on the
//!   last component or on any before it, and nothing outside is reached.
//! - Where a regular file is expected, anything else is refused with its kind in
//!   plain words, never opened for reading (a FIFO is opened non-blocking and
//!   refused by its type).
//! - Walks for deletion look at each entry's own type (`DirEntry::file_type`, which
//!   does not follow links): a link is removed as a link, never entered.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use sha2::{Digest, Sha256};

/// Why the member refused a file a build left.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{path} is {kind}, not a regular file: the build replaced what cargo wrote")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is {size} bytes, more than the {max} a binary may have")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("reading {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// Opens `relative` (plain components) below the directory `dir` without following
/// any link, for reading; refuses anything but a regular file.
pub fn open_regular(dir: &Path, relative: &Path) -> Result<File, Refused> {
    let shown = || dir.join(relative).display().to_string();
    let io = |error: std::io::Error| Refused::Io { path: shown(), error };
    let base = File::open(dir).map_err(io)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&base, relative, how) {
        Ok(fd) => fd,
        // ELOOP: a link on the way or at the end; EXDEV: the path leaves `dir`.
        Err(nix::errno::Errno::ELOOP) => {
            return Err(Refused::NotRegular { path: shown(), kind: "a symbolic link (or has one on its way)" });
        }
        Err(nix::errno::Errno::EXDEV) => {
            return Err(Refused::NotRegular { path: shown(), kind: "outside its directory" });
        }
        Err(nix::errno::Errno::ENXIO) => return Err(Refused::NotRegular { path: shown(), kind: "a socket" }),
        Err(e) => return Err(io(e.into())),
    };
    let file = File::from(fd);
    let file_type = file.metadata().map_err(io)?.file_type();
    let kind = if file_type.is_file() {
        return Ok(file);
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(Refused::NotRegular { path: shown(), kind })
}

/// Opens the regular file `relative` below `dir` and hashes it through the open
/// descriptor, which the member then keeps and uploads from: the bytes it
/// delivers are the bytes it hashed, whatever the path names later. At most
/// `max` bytes. Returns the file, its SHA-256 (hex) and size.
pub fn take(dir: &Path, relative: &Path, max: u64) -> Result<(File, String, u64), Refused> {
    let shown = || dir.join(relative).display().to_string();
    let io = |error: std::io::Error| Refused::Io { path: shown(), error };
    let mut file = open_regular(dir, relative)?;
    let size = file.metadata().map_err(io)?.size();
    if size > max {
        return Err(Refused::TooLarge { path: shown(), size, max });
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > max {
            return Err(Refused::TooLarge { path: shown(), size: read, max });
        }
        hasher.update(&buffer[..n]);
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((file, hex::encode(hasher.finalize()), read))
}

/// Removes every entry of the directory `dir` that is not a directory (files, and
/// links as links: never what they point to), leaving its subdirectories.
pub fn remove_non_directories(dir: &Path, keep: impl Fn(&std::ffi::OsStr) -> bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() && !keep(&entry.file_name()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The bytes of the regular files under `dirs` changed at or after `since` (their
/// status-change time, which no build can set back), without following links:
/// what a build wrote to its space. The pristine set's files, linked or copied
/// before the build, do not count.
pub fn written_since(dirs: &[std::path::PathBuf], since: std::time::SystemTime) -> u64 {
    let since =
        since.duration_since(std::time::UNIX_EPOCH).map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos() as i64));
    let mut total = 0u64;
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir).follow_links(false).into_iter().filter_map(Result::ok) {
            if let Ok(metadata) = entry.metadata()
                && metadata.file_type().is_file()
                && (metadata.ctime(), metadata.ctime_nsec()) >= since
            {
                // The blocks it holds on disk (a sparse file costs what it wrote).
                total = total.saturating_add(metadata.blocks().saturating_mul(512));
            }
        }
    }
    total
}

/// The subdirectories of `dir` (real ones: a link to a directory is not one).
pub fn subdirectories(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every trap a build can leave where the member expects its binary.
    #[test]
    fn links_fifos_devices_and_directories_are_refused_and_a_file_is_copied() {
        let space = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "the member's secret").unwrap();
        let dir = space.path().join("debug");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("to-secret")).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", dir.join("to-environ")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("to-zero")).unwrap();
        std::os::unix::fs::symlink("../../", dir.join("up")).unwrap();
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink(outside.path(), space.path().join("linked-dir")).unwrap();
        std::fs::create_dir(dir.join("a-dir")).unwrap();
        for (name, kind) in [
            ("debug/to-secret", "a symbolic link"),
            ("debug/to-environ", "a symbolic link"),
            ("debug/to-zero", "a symbolic link"),
            ("debug/fifo", "a FIFO"),
            ("debug/a-dir", "a directory"),
            ("linked-dir/secret", "a symbolic link"),
            ("debug/up/secret", "a symbolic link"),
        ] {
            match take(space.path(), Path::new(name), 1 << 20) {
                Err(Refused::NotRegular { kind: found, .. }) => assert!(found.starts_with(kind), "{name}: {found}"),
                other => panic!("{name} must be refused as {kind}: {other:?}"),
            }
        }
        assert!(matches!(
            take(space.path(), Path::new("/etc/passwd"), 1 << 20),
            Err(Refused::NotRegular { kind: "outside its directory", .. })
        ));
        std::fs::write(dir.join("app"), b"\x7fELF binary").unwrap();
        let (mut file, sha, size) = take(space.path(), Path::new("debug/app"), 1 << 20).unwrap();
        assert_eq!((sha.as_str(), size), (kiln_core::digest::sha256_hex(b"\x7fELF binary").as_str(), 11));
        // What the path names afterwards changes nothing of what is held.
        std::fs::remove_file(dir.join("app")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("app")).unwrap();
        let mut held = Vec::new();
        file.read_to_end(&mut held).unwrap();
        assert_eq!(held, b"\x7fELF binary", "read from its start, the bytes that were hashed");
        std::fs::write(dir.join("big"), b"\x7fELF binary").unwrap();
        assert!(matches!(
            take(space.path(), Path::new("debug/big"), 4),
            Err(Refused::TooLarge { size: 11, max: 4, .. })
        ));
    }

    #[test]
    fn what_a_build_wrote_is_counted_without_following_links() {
        let space = tempfile::tempdir().unwrap();
        std::fs::create_dir(space.path().join("deps")).unwrap();
        std::fs::write(space.path().join("deps/new"), vec![1u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/usr", space.path().join("link")).unwrap();
        let dirs = [space.path().to_owned(), space.path().join("missing")];
        let written = written_since(&dirs, std::time::UNIX_EPOCH);
        assert!((300_000..400_000).contains(&written), "only the file, not what /usr holds: {written}");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(written_since(&dirs, later), 0, "nothing changed after the build started");
    }

    /// A cleanup of a build's space removes a planted link, never what it leads to.
    #[test]
    fn a_cleanup_removes_links_and_never_enters_them() {
        let space = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        std::fs::write(canary.path().join("precious"), "keep me").unwrap();
        std::fs::create_dir(space.path().join("debug")).unwrap();
        std::fs::write(space.path().join("debug/stale"), "").unwrap();
        std::os::unix::fs::symlink(canary.path(), space.path().join("planted")).unwrap();
        std::os::unix::fs::symlink(canary.path(), space.path().join("debug/planted")).unwrap();
        let subdirectories = subdirectories(space.path()).unwrap();
        assert_eq!(subdirectories, vec![space.path().join("debug")], "a link to a directory is not one");
        remove_non_directories(space.path(), |_| false).unwrap();
        remove_non_directories(&space.path().join("debug"), |_| false).unwrap();
        assert!(std::fs::symlink_metadata(space.path().join("planted")).is_err(), "the link itself is gone");
        assert!(std::fs::read_dir(space.path().join("debug")).unwrap().next().is_none());
        assert_eq!(std::fs::read_to_string(canary.path().join("precious")).unwrap(), "keep me");
    }
}
