//! How full a volume is, and the two watermarks every member keeps: above the high
//! one it makes room (prunes what it can rebuild), above the critical one it stops
//! taking work and says so in its health until space is back.

use std::path::Path;

/// The watermarks, in percent of a volume's space in use (as `df` counts it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    pub high: f64,
    pub critical: f64,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks { high: 85.0, critical: 95.0 }
    }
}

/// Where a volume stands against the watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    Normal,
    High,
    Critical,
}

impl Watermarks {
    /// Checks that the two are percentages with high below critical.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |p: f64| (1.0..=100.0).contains(&p);
        if !ok(self.high) || !ok(self.critical) || self.high >= self.critical {
            return Err(format!(
                "the disk watermarks must be percentages with the high one below the critical one (got high {}, critical {})",
                self.high, self.critical
            ));
        }
        Ok(())
    }

    pub fn pressure(&self, used_percent: f64) -> Pressure {
        if used_percent >= self.critical {
            Pressure::Critical
        } else if used_percent >= self.high {
            Pressure::High
        } else {
            Pressure::Normal
        }
    }
}

/// The share of the volume holding `path` that is in use, in percent, as `df`
/// shows it: used / (used + available to unprivileged users).
pub fn used_percent(path: &Path) -> std::io::Result<f64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let used = stat.blocks().saturating_sub(stat.blocks_free()) as f64;
    let available = stat.blocks_available() as f64;
    if used + available == 0.0 {
        return Ok(0.0);
    }
    Ok(100.0 * used / (used + available))
}

/// Whether `error` (or what it wraps) is a full disk or quota.
pub fn is_full(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || error.raw_os_error() == Some(nix::libc::ENOSPC)
        || error.raw_os_error() == Some(nix::libc::EDQUOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_watermarks() {
        let marks = Watermarks::default();
        assert_eq!(marks.pressure(10.0), Pressure::Normal);
        assert_eq!(marks.pressure(85.0), Pressure::High);
        assert_eq!(marks.pressure(99.5), Pressure::Critical);
        assert!(Watermarks { high: 95.0, critical: 90.0 }.validate().is_err());
        assert!(Watermarks { high: 0.0, critical: 90.0 }.validate().is_err());
        assert!(marks.validate().is_ok());
        let used = used_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&used), "{used}");
    }
}
