//! SHA-256, the name of everything Kiln stores: sources and artifacts.
//!
//! **Invariant** (of every store that uses these): a stored file hashes to its name.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A string that is not a SHA-256 in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256: expected 64 lowercase hex digits")]
pub struct InvalidDigest(pub String);

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 over `parts`, each prefixed with its length (8 bytes, little-endian),
/// so that no two different lists of parts hash alike ("ab" + "c" is not
/// "a" + "bc"): the keys and fingerprints made of several fields.
pub fn sha256_of_parts<P: AsRef<[u8]>>(parts: impl IntoIterator<Item = P>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        let part = part.as_ref();
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Whether a presented secret (a token) is the expected one, in constant time: both
/// are hashed to SHA-256 first, so the comparison (`subtle`'s `ct_eq`, which reads
/// every byte whatever it finds) takes the same time for any input, its length
/// included.
pub fn same_secret(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    Sha256::digest(presented.as_bytes()).ct_eq(&Sha256::digest(expected.as_bytes())).into()
}

/// Checks that `sha` is 64 lowercase hex digits, so it is safe as a file name.
pub fn validate(sha: &str) -> Result<(), InvalidDigest> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(InvalidDigest(sha.to_owned()))
    }
}

/// SHA-256 and size of a file, read in 1 MiB blocks on a blocking thread (one
/// thread hand-off in all, rather than one per read).
pub async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || hash_file_blocking(&path))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// [`hash_file`] for code that is already on a blocking thread.
pub fn hash_file_blocking(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        let joined = |parts: &[&str]| hex::encode(sha256_of_parts(parts));
        assert_ne!(joined(&["ab", "c"]), joined(&["a", "bc"]));
        assert_ne!(joined(&["abc"]), joined(&["abc", ""]));
        let mut by_hand = Vec::new();
        for part in ["ab", "c"] {
            by_hand.extend((part.len() as u64).to_le_bytes());
            by_hand.extend(part.as_bytes());
        }
        assert_eq!(joined(&["ab", "c"]), sha256_hex(&by_hand), "the keys already stored stay the same");
    }

    #[test]
    fn only_lowercase_hex_of_the_right_length_is_a_digest() {
        assert!(validate(&sha256_hex(b"x")).is_ok());
        for bad in ["", "../../etc/passwd", &"A".repeat(64), &"a".repeat(63), &"g".repeat(64)] {
            assert_eq!(validate(bad), Err(InvalidDigest(bad.to_owned())));
        }
    }

    #[tokio::test]
    async fn a_file_hashes_like_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes = vec![7u8; (1 << 20) + 3];
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(hash_file(&path).await.unwrap(), (sha256_hex(&bytes), bytes.len() as u64));
    }
}
