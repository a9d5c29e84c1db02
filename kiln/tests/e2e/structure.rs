//! The workspace's shape, as ARCHITECTURE.md states it under "Structure", checked
//! by `scripts/check-structure` on the real tree: no pair of files importing each
//! other, no source file over 700 lines, at most 3 integration-test binaries, no
//! comment citing an issue number. The checker itself is shown to catch each.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::text;

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-structure")
}

fn check(root: &Path) -> std::process::Output {
    Command::new("python3").arg(checker()).arg(root).output().expect("running python3 scripts/check-structure")
}

#[test]
fn the_workspace_keeps_its_structure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = check(&root);
    assert!(output.status.success(), "scripts/check-structure found:\n{}", text(&output));
}

#[test]
fn the_structure_check_catches_a_cycle_a_long_file_an_issue_number_and_a_fourth_test_binary() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, content: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    };
    write("demo/Cargo.toml", "[package]\nname = \"demo\"\n");
    write("demo/src/lib.rs", "//! Demo.\npub mod a;\npub mod b;\npub mod c;\n");
    write("demo/src/a.rs", "use crate::b::{Bee, other::Thing};\npub struct Ay;\n");
    write("demo/src/b.rs", "pub struct Bee;\npub fn f() -> super::a::Ay { todo!() }\n");
    // c names a only in a string and a comment: no import.
    write("demo/src/c.rs", "// crate::a::Ay\nconst S: &str = \"crate::a::Ay\";\n");
    write("demo/src/long.rs", &"// filler\n".repeat(701));
    write("demo/src/why.rs", "// see issue 12 for why\nfn x() {}\n");
    for test in ["one", "two", "three", "four"] {
        write(&format!("demo/tests/{test}.rs"), "#[test]\nfn t() {}\n");
    }
    let output = check(dir.path());
    let found = text(&output);
    assert!(!output.status.success(), "{found}");
    assert!(found.contains("import cycle: demo/src/a.rs and demo/src/b.rs import each other"), "{found}");
    assert!(!found.contains("demo/src/c.rs"), "strings and comments are not imports: {found}");
    // long.rs is not reachable from lib.rs, but every source file counts.
    assert!(found.contains("too long: demo/src/long.rs has 701 lines"), "{found}");
    assert!(found.contains("issue number in a comment: demo/src/why.rs:1"), "{found}");
    assert!(found.contains("4 integration-test binaries (at most 3)"), "{found}");
}
