//! A member's (or the coordinator's) command line, written back from its parsed
//! arguments one `--flag=value` at a time: `kiln up` and `kiln launch` start their
//! children with it, and each option group writes its own flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::units::format_duration;

/// A command line being written, one `--flag=value` at a time.
pub(crate) struct CommandLine(pub(crate) Vec<OsString>);

impl CommandLine {
    pub(crate) fn value(&mut self, flag: &str, value: &impl std::fmt::Display) {
        self.0.push(format!("{flag}={value}").into());
    }

    pub(crate) fn opt(&mut self, flag: &str, value: &Option<impl std::fmt::Display>) {
        if let Some(value) = value {
            self.value(flag, value);
        }
    }

    pub(crate) fn flag(&mut self, flag: &str, on: bool) {
        self.value(flag, &on);
    }

    pub(crate) fn path(&mut self, flag: &str, path: &std::path::Path) {
        let mut arg = OsString::from(format!("{flag}="));
        arg.push(path);
        self.0.push(arg);
    }

    pub(crate) fn opt_path(&mut self, flag: &str, path: &Option<PathBuf>) {
        if let Some(path) = path {
            self.path(flag, path);
        }
    }

    pub(crate) fn duration(&mut self, flag: &str, duration: Duration) {
        self.value(flag, &format_duration(duration));
    }
}
