//! The artifact store: built binaries in the leader's data directory, each named by
//! its SHA-256.
//!
//! **Invariant:** a file under `artifacts/<sha256>` always hashes to its name. A
//! received binary is streamed to a temporary file in the same directory, hashed on
//! the way, fsynced and only then renamed into place (and the directory fsynced); a
//! mismatch or any error removes the temporary file. Files are hashed again before
//! they are served.
//!
//! Writing runs on a blocking thread of its own, fed through a small bounded
//! channel, while the receiving task hashes: hashing a chunk overlaps with writing
//! the one before, and an upload holds at most [`BUFFERED_CHUNKS`] chunks in memory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Chunks an upload may have in flight between the network and the disk.
pub const BUFFERED_CHUNKS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    InvalidSha(#[from] kiln_core::digest::InvalidDigest),
    #[error("artifact hash mismatch: declared {declared}, received bytes hash to {actual}; nothing was stored")]
    Mismatch { declared: String, actual: String },
    #[error("artifact size mismatch: declared {declared} bytes, received {received}; nothing was stored")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("artifact of {size} bytes is over the leader's limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the leader's disk is full, so the artifact could not be stored: free space in its data directory")]
    DiskFull,
    #[error("stored artifact {sha256} is corrupt (its bytes hash to {actual}): it was removed; rebuild the pipeline")]
    Corrupt { sha256: String, actual: String },
    #[error("artifact store: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ArtifactError {
    fn from(error: io::Error) -> Self {
        let full = error.kind() == io::ErrorKind::StorageFull
            || error.kind() == io::ErrorKind::QuotaExceeded
            || error.raw_os_error() == Some(nix::libc::ENOSPC);
        if full { ArtifactError::DiskFull } else { ArtifactError::Io(error) }
    }
}

/// Checks that `sha` is a SHA-256 in lowercase hex (so it is also a safe file name).
pub fn validate_sha(sha: &str) -> Result<(), ArtifactError> {
    Ok(kiln_core::digest::validate(sha)?)
}

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    temp_dir: PathBuf,
    max_bytes: u64,
    usage: Arc<Usage>,
}

/// How many artifacts the store holds and their bytes: counted once at open, then
/// moved by every store and removal, so `/metrics` never lists the directory.
#[derive(Debug, Default)]
struct Usage {
    count: AtomicU64,
    bytes: AtomicU64,
}

impl Usage {
    fn add(&self, bytes: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        let _ = self.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(1)));
        let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(bytes)));
    }
}

/// An upload in progress. Dropping it without [`ArtifactWriter::finish`] leaves nothing.
#[derive(Debug)]
pub struct ArtifactWriter {
    /// To the thread that writes; closed to finish.
    chunks: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// That thread: the fsynced temporary file.
    sink: tokio::task::JoinHandle<io::Result<tempfile::TempPath>>,
    hasher: Sha256,
    written: u64,
    declared_sha: String,
    declared_size: u64,
    target: PathBuf,
    dir: PathBuf,
    usage: Arc<Usage>,
}

impl ArtifactStore {
    /// Opens the store, removing temporary files a crash left behind.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<ArtifactStore> {
        let temp_dir = dir.join("incoming");
        std::fs::create_dir_all(&temp_dir)?;
        // Whatever is there is a crash's leftover, whatever it is (a directory or a
        // link put there by hand must not stop the leader from starting).
        for entry in std::fs::read_dir(&temp_dir)? {
            let path = entry?.path();
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
        }
        let store = ArtifactStore { dir: dir.to_owned(), temp_dir, max_bytes, usage: Arc::default() };
        for sha in store.stored()? {
            store.usage.add(std::fs::metadata(dir.join(&sha)).map(|m| m.len()).unwrap_or(0));
        }
        Ok(store)
    }

    /// The names (SHA-256) of the stored artifacts; anything else in the
    /// directory is not one and is left alone.
    pub fn stored(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_sha(&name).is_ok() && entry.file_type()?.is_file() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Stored artifacts: how many, and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        (self.usage.count.load(Ordering::Relaxed), self.usage.bytes.load(Ordering::Relaxed))
    }

    /// Removes a stored artifact (the collector's, once nothing references it).
    /// One already gone is not an error.
    pub fn remove(&self, sha: &str) -> io::Result<()> {
        let path = self.path(sha).map_err(io::Error::other)?;
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.usage.sub(size);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self, sha: &str) -> Result<PathBuf, ArtifactError> {
        validate_sha(sha)?;
        Ok(self.dir.join(sha))
    }

    pub fn contains(&self, sha: &str) -> bool {
        self.path(sha).is_ok_and(|p| p.is_file())
    }

    /// Starts receiving an artifact declared to hash to `sha` and to be `size` bytes.
    pub fn begin(&self, sha: &str, size: u64) -> Result<ArtifactWriter, ArtifactError> {
        let target = self.path(sha)?;
        if size > self.max_bytes {
            return Err(ArtifactError::TooLarge { size, limit: self.max_bytes });
        }
        // The temporary file lives in the store's own file system, so the final
        // rename is atomic.
        let temp = tempfile::Builder::new().prefix("upload-").tempfile_in(&self.temp_dir)?;
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(BUFFERED_CHUNKS);
        let sink = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let (mut file, temp_path) = temp.into_parts();
            // Ends when the writer is finished or dropped; a dropped writer's
            // temporary file goes with `temp_path`.
            while let Some(chunk) = chunks.blocking_recv() {
                file.write_all(&chunk)?;
            }
            file.sync_all()?;
            Ok(temp_path)
        });
        Ok(ArtifactWriter {
            chunks: Some(sender),
            sink,
            hasher: Sha256::new(),
            written: 0,
            declared_sha: sha.to_owned(),
            declared_size: size,
            target,
            dir: self.dir.clone(),
            usage: self.usage.clone(),
        })
    }

    /// Opens a stored artifact after hashing it again. A corrupt file is removed.
    pub async fn open_verified(&self, sha: &str) -> Result<Option<(tokio::fs::File, u64)>, ArtifactError> {
        let path = self.path(sha)?;
        let (actual, size) = match kiln_core::digest::hash_file(&path).await {
            Ok(hashed) => hashed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if actual != sha {
            tracing::error!(sha256 = sha, actual, "stored artifact is corrupt; removing it");
            tokio::fs::remove_file(&path).await?;
            self.usage.sub(size);
            return Err(ArtifactError::Corrupt { sha256: sha.to_owned(), actual });
        }
        Ok(Some((tokio::fs::File::open(&path).await?, size)))
    }
}

impl ArtifactWriter {
    /// Hashes `chunk` and hands it to the writing thread; waits only when
    /// [`BUFFERED_CHUNKS`] are already in flight.
    pub async fn write(&mut self, chunk: impl Into<bytes::Bytes>) -> Result<(), ArtifactError> {
        let chunk = chunk.into();
        self.written += chunk.len() as u64;
        if self.written > self.declared_size {
            return Err(ArtifactError::SizeMismatch { declared: self.declared_size, received: self.written });
        }
        self.hasher.update(&chunk);
        let sender = self.chunks.as_ref().ok_or_else(|| io::Error::other("the upload was already finished"))?;
        if sender.send(chunk).await.is_err() {
            // The thread stopped early: its error says why.
            self.chunks = None;
            return match (&mut self.sink).await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(io::Error::other("the artifact writer stopped").into()),
            };
        }
        Ok(())
    }

    /// Verifies size and hash, then makes the artifact durable under its name.
    pub async fn finish(mut self) -> Result<u64, ArtifactError> {
        drop(self.chunks.take());
        let temp_path = (&mut self.sink).await.map_err(|e| io::Error::other(e.to_string()))??;
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.written != self.declared_size {
            return Err(ArtifactError::SizeMismatch { declared: self.declared_size, received: self.written });
        }
        if actual != self.declared_sha {
            return Err(ArtifactError::Mismatch { declared: self.declared_sha, actual });
        }
        let target = self.target;
        let dir = self.dir;
        let usage = self.usage.clone();
        let written = self.written;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let new = !target.exists();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&temp_path, std::fs::Permissions::from_mode(0o755))?;
            }
            temp_path.persist(&target).map_err(|e| e.error)?;
            if new {
                usage.add(written);
            }
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[tokio::test]
    async fn a_verified_upload_is_stored_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let data = b"binary bytes".repeat(1000);
        let mut writer = store.begin(&sha(&data), data.len() as u64).unwrap();
        for chunk in data.chunks(777) {
            writer.write(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        assert!(store.contains(&sha(&data)));
        let (_, size) = store.open_verified(&sha(&data)).await.unwrap().unwrap();
        assert_eq!(size, data.len() as u64);
    }

    #[tokio::test]
    async fn a_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let claimed = sha(b"what was built");
        let mut writer = store.begin(&claimed, 8).unwrap();
        writer.write(&b"tampered"[..]).await.unwrap();
        assert!(matches!(writer.finish().await, Err(ArtifactError::Mismatch { .. })));
        assert!(!store.contains(&claimed));
        assert_eq!(std::fs::read_dir(dir.path().join("incoming")).unwrap().count(), 0);
    }

    /// A file on disk: a directory and a link left in incoming/ do not stop the
    /// store from opening (they did: the leader crash-looped), and what the link
    /// points at is left alone.
    #[test]
    fn leftovers_of_any_kind_in_incoming_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("keep"), b"kept").unwrap();
        std::fs::create_dir_all(dir.path().join("incoming/a-directory/inside")).unwrap();
        std::fs::write(dir.path().join("incoming/a-directory/inside/file"), b"x").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("incoming/a-link")).unwrap();
        ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("incoming")).unwrap().count(), 0);
        assert_eq!(std::fs::read(elsewhere.path().join("keep")).unwrap(), b"kept", "the link's target is untouched");
    }

    #[tokio::test]
    async fn bad_names_sizes_and_corruption_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 10).unwrap();
        assert!(matches!(store.begin("../../etc/passwd", 1), Err(ArtifactError::InvalidSha(_))));
        assert!(matches!(store.begin(&sha(b"x"), 11), Err(ArtifactError::TooLarge { .. })));
        let mut writer = store.begin(&sha(b"x"), 1).unwrap();
        assert!(matches!(writer.write(&b"xy"[..]).await, Err(ArtifactError::SizeMismatch { .. })));

        let name = sha(b"good");
        std::fs::write(dir.path().join(&name), b"evil").unwrap();
        assert!(matches!(store.open_verified(&name).await, Err(ArtifactError::Corrupt { .. })));
        assert!(!store.contains(&name), "a corrupt artifact is removed, not served");
    }
}
