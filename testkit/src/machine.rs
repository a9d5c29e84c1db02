//! What a test asks of the machine it runs on: a free loopback port, an installed
//! tool, root.

use std::path::PathBuf;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port on loopback");
    listener.local_addr().expect("a bound socket has an address").port()
}

/// A tool that `scripts/install-deps` installs (on PATH or in ~/.cargo/bin).
pub fn installed(binary: &str) -> PathBuf {
    kiln_process::find_tool(binary).unwrap_or_else(|| panic!("{binary} is not installed: run scripts/install-deps"))
}

/// Stops a test that needs root with one clear message, up front, before it has
/// started anything.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}); run the suite as root, as CI does (scripts/test)"
    );
}
