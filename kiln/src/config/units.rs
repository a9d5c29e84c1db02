//! Durations and sizes as flags take them (`30m`, `500ms`; `64K`, `2G`), and
//! durations written back so that a child's command line reads as its parent meant.

use std::time::Duration;

/// Parses durations such as `30m`, `2s`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 2s, 30m)"))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string().replace(' ', "")
}

/// Parses `500`, `64K`, `10M`, `2G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (examples: 500M, 2G)"))?;
    let factor = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn a_written_duration_reads_back_exactly() {
        for duration in [Duration::from_millis(1500), Duration::from_secs(90), Duration::from_secs(7 * 3600 + 1)] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        let refused = parse_duration("soon").unwrap_err();
        assert!(refused.contains("examples: 500ms"), "{refused}");
    }
}
