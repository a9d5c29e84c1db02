//! Which part of the input a host works on, and which host owns a key after the
//! exchange.

use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

/// Host `index` of `count`. A pipeline run alone is share 0 of 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// This share's bytes of an input of `len` bytes: the shares cover the input
    /// exactly, in order, and differ in size by at most one byte.
    pub fn byte_range(&self, len: u64) -> Range<u64> {
        let at = |i: u32| (u128::from(len) * u128::from(i) / u128::from(self.count)) as u64;
        at(self.index)..at(self.index + 1)
    }

    /// Reads the lines of `path` that belong to this share: those whose first byte
    /// lies in [`Share::byte_range`]. Every line of the file belongs to exactly one
    /// share. `f` gets each line without its line ending.
    pub fn for_each_line(&self, path: &Path, mut f: impl FnMut(&str)) -> std::io::Result<()> {
        let mut file = std::fs::File::open(path)?;
        let range = self.byte_range(file.metadata()?.len());
        // A line starting before our range belongs to the share before: skip to
        // the first line that starts inside it.
        let mut position = range.start;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start - 1))?;
        }
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        if range.start > 0 {
            position = range.start - 1 + reader.read_until(b'\n', &mut line)? as u64;
            line.clear();
        }
        while position < range.end {
            let read = reader.by_ref().read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            position += read as u64;
            let text = String::from_utf8_lossy(&line);
            f(text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
        Ok(())
    }
}

/// The host that owns `key` after the exchange. Every host runs the same binary, so
/// they all agree (std's `DefaultHasher::new` is the same in every instance).
pub fn owner(key: &str, hosts: u32) -> u32 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % u64::from(hosts.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_input_exactly() {
        for count in 1..=7 {
            let mut next = 0;
            for index in 0..count {
                let range = Share { index, count }.byte_range(1000);
                assert_eq!(range.start, next);
                next = range.end;
            }
            assert_eq!(next, 1000);
        }
    }

    #[test]
    fn every_line_is_read_by_exactly_one_share() {
        let dir = std::env::temp_dir().join(format!("kiln-share-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input.txt");
        let lines: Vec<String> = (0..500).map(|i| format!("line {i} {}", "x".repeat(i % 13))).collect();
        std::fs::write(&path, lines.join("\n")).unwrap(); // no final newline on purpose
        for count in [1, 2, 3, 4, 9, 254] {
            let mut seen = Vec::new();
            for index in 0..count {
                Share { index, count }.for_each_line(&path, |l| seen.push(l.to_owned())).unwrap();
            }
            assert_eq!(seen, lines, "with {count} shares");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn owners_are_in_range_and_stable() {
        for key in ["a", "the", "kiln", ""] {
            assert!(owner(key, 3) < 3);
            assert_eq!(owner(key, 3), owner(key, 3));
            assert_eq!(owner(key, 1), 0);
        }
    }
}
