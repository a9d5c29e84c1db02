//! The one way a secret is read from a file: the cluster token, the API token, the
//! cache's S3 credentials, and the tokens `kiln up` and a leader make for themselves.
//! Every such file is read the same way — trimmed, its path and the flag that named
//! it in the error, and a warning when users other than its owner can read it — so
//! that a secret left world-readable is reported whichever flag brought it in.

use std::path::Path;

use anyhow::Context;

/// A file holding one secret, described for the messages about it.
#[derive(Debug, Clone, Copy)]
pub struct SecretFile<'a> {
    pub path: &'a Path,
    /// What the file holds, in words: "the API token file".
    pub what: &'a str,
    /// The flag that names the file (or the directory it is made in), for the fix.
    pub flag: &'a str,
}

impl SecretFile<'_> {
    /// The secret, trimmed of surrounding whitespace (a trailing newline an editor
    /// or `echo` left is not part of the token). Warns when users other than the
    /// file's owner can read it, naming the file and its flag.
    pub fn read(&self) -> anyhow::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let file = self.path;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading {} {} ({})", self.what, file.display(), self.flag))?;
        if let Ok(metadata) = std::fs::metadata(file)
            && metadata.mode() & 0o077 != 0
        {
            // The file is named by its flag and its own name, not its whole path:
            // a directory may be named after what it holds (a Secret's name, or
            // in the tests the secret itself).
            tracing::warn!(
                file = %file.file_name().unwrap_or(file.as_os_str()).to_string_lossy(),
                flag = self.flag,
                mode = format!("{:o}", metadata.mode() & 0o777),
                "{} is readable by other users: chmod 600 it (in the chart, the Secret's defaultMode)",
                self.what
            );
        }
        Ok(text.trim().to_owned())
    }

    /// The secret kept in the file, made (32 random bytes, hex, mode 0600) on first
    /// use; then read as [`SecretFile::read`] reads it.
    pub fn read_or_create(&self) -> anyhow::Result<String> {
        let file = self.path;
        if !file.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let secret: [u8; 32] = rand::random();
            match std::fs::OpenOptions::new().mode(0o600).write(true).create_new(true).open(file) {
                Ok(mut out) => out.write_all(hex::encode(secret).as_bytes())?,
                // Made by another process meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {}", file.display()))),
            }
        }
        self.read()
    }
}

/// A secret given on the command line (or in the environment), else the one read
/// from its file, else none: how every token flag pair (`--x-token`,
/// `--x-token-file`) is read.
pub fn given_or_read(given: Option<&String>, file: Option<SecretFile<'_>>) -> anyhow::Result<Option<String>> {
    match (given, file) {
        (Some(secret), _) => Ok(Some(secret.clone())),
        (None, Some(file)) => file.read().map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    /// What the code logs while `f` runs, as text.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).without_time().finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        (value, text)
    }

    fn secret(path: &Path) -> SecretFile<'_> {
        SecretFile { path, what: "the cluster token file", flag: "--cluster-token-file" }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_the_file_and_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-token");
        let error = format!("{:#}", secret(&missing).read().unwrap_err());
        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(error.contains("the cluster token file") && error.contains("--cluster-token-file"), "{error}");
    }

    #[test]
    fn a_file_others_can_read_is_read_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (token, log) = logged(|| secret(&file).read());
        assert_eq!(token.unwrap(), "s3cret-token", "surrounding whitespace and the newline are not the token");
        assert!(log.contains("the cluster token file is readable by other users: chmod 600 it"), "{log}");
        assert!(log.contains("644") && log.contains("--cluster-token-file"), "the mode and flag are shown: {log}");
        assert!(!log.contains(&dir.path().display().to_string()), "only the file's own name is logged: {log}");
        assert!(!log.contains("s3cret-token"), "the secret itself is never logged: {log}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (token, log) = logged(|| secret(&file).read());
        assert_eq!(token.unwrap(), "s3cret-token");
        assert!(!log.contains("readable by other users"), "a private file reads quietly: {log}");
    }

    #[test]
    fn a_secret_made_on_first_use_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join("api-token");
        let first = secret(&file).read_or_create().unwrap();
        assert_eq!(first.len(), 64, "32 random bytes, hex: {first}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only its owner reads a secret it made");
        assert_eq!(secret(&file).read_or_create().unwrap(), first, "the second use reads the first one's secret");
    }
}
