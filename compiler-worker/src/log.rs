//! A build log that cannot grow without bound: the first half of its budget keeps
//! the beginning (where the first errors are), the second half the latest lines,
//! and what was cut in between is said in one marker line. A program that prints
//! without end (a build script, a macro, rustc's diagnostics) costs the worker at
//! most the budget, and its report always fits the leader's message limit.

/// The marker's wording; the leader and the tests look for "left out".
fn marker(cut: u64) -> String {
    format!("\n[... {cut} bytes of the build log left out: it is kept to --max-log-bytes ...]\n")
}

/// The default of `--max-log-bytes`.
pub const DEFAULT_MAX_LOG_BYTES: usize = 2 << 20;
/// The largest `--max-log-bytes`: a final report carries the log, and must fit the
/// leader's message limit with room to spare.
pub const LIMIT_MAX_LOG_BYTES: usize = crate::link::grpc::MAX_MESSAGE_BYTES / 2;

#[derive(Debug, Default)]
pub struct CappedLog {
    max: usize,
    head: String,
    tail: String,
    cut: u64,
}

impl CappedLog {
    /// A log that keeps at most about `max` bytes.
    pub fn new(max: usize) -> CappedLog {
        CappedLog { max, ..CappedLog::default() }
    }

    /// Bytes left out so far.
    pub fn cut(&self) -> u64 {
        self.cut
    }

    pub fn push(&mut self, text: &str) {
        let half = self.max / 2;
        if self.tail.is_empty() && self.head.len() + text.len() <= half {
            self.head.push_str(text);
            return;
        }
        self.tail.push_str(text);
        // Trim in batches, so that a long run of small lines costs linear time.
        if self.tail.len() > 2 * half.max(1) {
            let mut at = self.tail.len() - half;
            while !self.tail.is_char_boundary(at) {
                at += 1;
            }
            self.cut += at as u64;
            self.tail.drain(..at);
        }
    }

    pub fn push_line(&mut self, line: &str) {
        self.push(line);
        self.push("\n");
    }

    /// The log as kept.
    pub fn finish(mut self) -> String {
        let half = self.max / 2;
        if self.tail.len() > half {
            let mut at = self.tail.len() - half;
            while !self.tail.is_char_boundary(at) {
                at += 1;
            }
            self.cut += at as u64;
            self.tail.drain(..at);
        }
        if self.cut == 0 { self.head + &self.tail } else { format!("{}{}{}", self.head, marker(self.cut), self.tail) }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a note of what
/// was cut: for one-line summaries that come from the program.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}... ({} more bytes)", &text[..at], text.len() - at)
}

/// The longest line of cargo's output the worker holds (a JSON message with
/// rustc's rendered diagnostics runs to a few hundred kilobytes at most).
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// One line of a child's output, read with at most `max` bytes kept: a line
/// without end (a build script that prints gigabytes and no newline) costs the
/// worker `max`, and the rest of it is read and dropped. Returns the line (lossy
/// UTF-8, without its newline) and how many bytes were dropped; None at the end.
pub async fn read_capped_line<R>(reader: &mut R, max: usize) -> std::io::Result<Option<(String, u64)>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let (mut kept, mut dropped, mut seen) = (Vec::new(), 0u64, false);
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(seen.then(|| (String::from_utf8_lossy(&kept).into_owned(), dropped)));
        }
        seen = true;
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (&buffer[..at], Some(at + 1)),
            None => (buffer, None),
        };
        let room = max.saturating_sub(kept.len()).min(chunk.len());
        kept.extend_from_slice(&chunk[..room]);
        dropped += (chunk.len() - room) as u64;
        let used = done.unwrap_or(buffer.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some((String::from_utf8_lossy(&kept).into_owned(), dropped)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_without_end_costs_the_cap_and_the_next_line_is_read_whole() {
        let mut input = vec![b'x'; 3 << 20];
        input.extend_from_slice(b"\nnext line\nlast");
        let mut reader = tokio::io::BufReader::new(input.as_slice());
        let (line, dropped) = read_capped_line(&mut reader, 1 << 20).await.unwrap().unwrap();
        assert_eq!((line.len(), dropped), (1 << 20, 2 << 20));
        assert_eq!(read_capped_line(&mut reader, 1 << 20).await.unwrap(), Some(("next line".into(), 0)));
        assert_eq!(read_capped_line(&mut reader, 1 << 20).await.unwrap(), Some(("last".into(), 0)));
        assert_eq!(read_capped_line(&mut reader, 1 << 20).await.unwrap(), None);
    }

    #[test]
    fn a_short_log_is_kept_whole() {
        let mut log = CappedLog::new(100);
        log.push_line("one");
        log.push_line("two");
        assert_eq!(log.finish(), "one\ntwo\n");
    }

    #[test]
    fn a_long_log_keeps_its_ends_and_says_what_was_cut() {
        let mut log = CappedLog::new(1000);
        for i in 0..100_000 {
            log.push_line(&format!("line {i:06} é"));
        }
        let cut = log.cut();
        let kept = log.finish();
        assert!(kept.len() < 1200, "{}", kept.len());
        assert!(kept.starts_with("line 000000"), "the beginning is kept");
        assert!(kept.trim_end().ends_with("line 099999 é"), "the end is kept");
        assert!(kept.contains("bytes of the build log left out"), "{kept}");
        assert!(cut > 1_000_000, "{cut}");
    }

    #[test]
    fn one_huge_line_is_cut_too() {
        let mut log = CappedLog::new(1000);
        log.push_line(&"x".repeat(25 << 20));
        assert!(log.finish().len() < 1200);
        assert_eq!(clip("ééé", 3), "é... (4 more bytes)");
    }
}
