//! The program rules, feature resolution and layout, tested on programs written
//! inline.

use super::*;
use crate::depset::DepSet;

fn file(path: &str, content: &str) -> ProgramFile {
    ProgramFile { path: path.into(), content: content.as_bytes().to_vec(), executable: false }
}

fn manifest(name: &str, deps: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}")
}

fn two_crate_program(ops_source: &str) -> Vec<ProgramFile> {
    vec![
        file("Cargo.toml", &manifest("app", "ops = { path = \"operators/ops\" }\nserde = \"1\"\n")),
        file("src/main.rs", "fn main() { ops::run() }"),
        file("operators/ops/Cargo.toml", &manifest("ops", "")),
        file("operators/ops/src/lib.rs", ops_source),
    ]
}

fn parse(files: Vec<ProgramFile>) -> Result<Program, ProgramError> {
    Program::parse(files, &DepSet::embedded())
}

/// What decides whether a build may write the shared compile cache: the
/// program's own build scripts and proc-macros, however the manifest hides them.
#[test]
fn code_of_the_submitter_that_runs_at_build_time_is_found() {
    let laid = |files: Vec<ProgramFile>| parse(files).unwrap().layout();
    assert_eq!(laid(two_crate_program("pub fn run() {}")).submitted_code(), None, "only compiled");
    let mut with_build_rs = two_crate_program("pub fn run() {}");
    with_build_rs.push(file("operators/ops/build.rs", "fn main() {}"));
    assert_eq!(laid(with_build_rs).submitted_code().as_deref(), Some("crate ops has a build script"));
    let mut renamed = two_crate_program("pub fn run() {}");
    renamed[2] =
        file("operators/ops/Cargo.toml", &(manifest("ops", "").replace("edition", "build = \"gen.rs\"\nedition")));
    renamed.push(file("operators/ops/gen.rs", "fn main() {}"));
    assert_eq!(laid(renamed).submitted_code().as_deref(), Some("crate ops has a build script"));
    for lib in [
        "[lib]\nproc-macro = true\n",
        "[lib]\nproc_macro = true\n",
        "[lib]\ncrate-type = [\"proc-macro\"]\n",
        "[lib]\ncrate_type = [\"rlib\", \"proc-macro\"]\n",
        "[lib]\ncrate-type = \"proc-macro\"\n",
    ] {
        let mut macro_crate = two_crate_program("pub fn run() {}");
        macro_crate[2] = file("operators/ops/Cargo.toml", &format!("{}\n{lib}", manifest("ops", "")));
        assert_eq!(laid(macro_crate).submitted_code().as_deref(), Some("crate ops is a proc-macro"), "{lib}");
    }
    let mut switched_off = two_crate_program("pub fn run() {}");
    switched_off[2] =
        file("operators/ops/Cargo.toml", &manifest("ops", "").replace("edition", "build = false\nedition"));
    switched_off.push(file("operators/ops/build.rs", "fn main() {}"));
    assert_eq!(laid(switched_off).submitted_code(), None, "build = false: cargo runs no build script");
    let mut plain_types = two_crate_program("pub fn run() {}");
    plain_types[2] =
        file("operators/ops/Cargo.toml", &format!("{}\n[lib]\ncrate-type = [\"rlib\"]\n", manifest("ops", "")));
    assert_eq!(laid(plain_types).submitted_code(), None, "an rlib is only compiled");
}

#[test]
fn names_follow_the_rule() {
    for good in ["a", "word-count", "etl_2", &"x".repeat(63)] {
        assert!(validate_name(good).is_ok(), "{good}");
    }
    for bad in ["", "Word", "1abc", "a b", "a/b", "ä", &"x".repeat(64)] {
        assert_eq!(validate_name(bad), Err(ProgramError::InvalidName(bad.into())));
    }
}

#[test]
fn package_names_follow_cargo_and_never_make_a_path() {
    for good in ["app", "word-count", "etl_2", "_private", "A1", &"x".repeat(64)] {
        assert_eq!(check_package_name(good), Ok(()), "{good}");
    }
    for bad in [
        "../../escaped",
        "/tmp/x",
        "a/b",
        ".",
        "..",
        "con",
        "COM1",
        "lpt9",
        "x\u{0}",
        "x\0y",
        "",
        "1abc",
        "ä",
        "a b",
        "std",
        "kiln-depset",
        "kiln-pipeline-runtime",
        &"x".repeat(65),
    ] {
        assert!(check_package_name(bad).is_err(), "{bad:?} must be refused");
    }
    // In a program: refused with the manifest, the name and the rule.
    for (name, rule) in [("../../escaped", "ASCII letters"), ("con", "Windows reserves"), ("", "empty")] {
        let files = vec![file("Cargo.toml", &manifest(name, "")), file("src/main.rs", "fn main() {}")];
        let error = parse(files).unwrap_err();
        assert!(matches!(&error, ProgramError::InvalidPackageName { name: n, .. } if n == name), "{error}");
        let text = error.to_string();
        assert!(text.contains("Cargo.toml") && text.contains(rule), "{text}");
    }
    let library = vec![
        file("Cargo.toml", &manifest("app", "x = { path = \"ops\" }")),
        file("src/main.rs", "fn main() {}"),
        file("ops/Cargo.toml", &manifest("/tmp/x", "")),
        file("ops/src/lib.rs", ""),
    ];
    assert!(matches!(parse(library), Err(ProgramError::InvalidPackageName { .. })), "a library's name too");
}

#[test]
fn paths_may_not_escape() {
    for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", ""] {
        assert!(matches!(validate_path(bad), Err(ProgramError::PathEscapes(_))), "{bad}");
    }
    assert!(validate_path("operators/ops/src/lib.rs").is_ok());
}

#[test]
fn a_binary_with_an_operator_parses() {
    let program = parse(two_crate_program("pub fn run() {}")).unwrap();
    assert_eq!(program.binary().package, "app");
    assert_eq!(program.crates().len(), 2);
}

#[test]
fn rules_are_named_in_errors() {
    let only_lib = vec![file("Cargo.toml", &manifest("lib", "")), file("src/lib.rs", "")];
    assert!(matches!(parse(only_lib), Err(ProgramError::NoBinary { .. })));

    let mut two = two_crate_program("");
    two.push(file("operators/ops/src/main.rs", "fn main() {}"));
    let error = parse(two).unwrap_err();
    assert!(error.to_string().starts_with("two binary crates"), "{error}");

    let outside = vec![file("Cargo.toml", &manifest("app", "tokio = \"1\"\n")), file("src/main.rs", "")];
    let error = parse(outside).unwrap_err().to_string();
    assert!(error.contains("tokio, which is not in the farm's dependency set"), "{error}");
    assert!(error.contains("serde_json"), "lists what is allowed: {error}");

    let old = vec![file("Cargo.toml", &manifest("app", "serde = \"0.9\"\n")), file("src/main.rs", "")];
    assert!(matches!(parse(old), Err(ProgramError::VersionMismatch { .. })));

    let feature = vec![
        file("Cargo.toml", &manifest("app", "serde = { version = \"1\", features = [\"rc\"] }\n")),
        file("src/main.rs", ""),
    ];
    let error = parse(feature).unwrap_err();
    assert!(matches!(error, ProgramError::FeatureOutsideSet { .. }));
    assert!(error.to_string().contains("feature `rc` of serde") && error.to_string().contains("built: "), "{error}");

    let git = vec![
        file("Cargo.toml", &manifest("app", "x = { git = \"https://example.com/x\" }\n")),
        file("src/main.rs", ""),
    ];
    assert!(matches!(parse(git), Err(ProgramError::UnsupportedSource { source_kind: "git", .. })));

    let escaping = vec![file("Cargo.toml", &manifest("app", "x = { path = \"../x\" }\n")), file("src/main.rs", "")];
    assert!(matches!(parse(escaping), Err(ProgramError::PathNotACrate { .. })));

    let too_big =
        vec![file("Cargo.toml", &manifest("app", "")), file("src/main.rs", &"x".repeat(MAX_PROGRAM_BYTES as usize))];
    assert!(matches!(parse(too_big), Err(ProgramError::TooLarge { .. })));

    let escaping_file = vec![file("Cargo.toml", &manifest("app", "")), file("../main.rs", "")];
    assert!(matches!(parse(escaping_file), Err(ProgramError::PathEscapes(_))));

    assert_eq!(parse(vec![file("src/main.rs", "")]).unwrap_err(), ProgramError::NoManifest);
}

#[test]
fn cycles_are_refused() {
    let files = vec![
        file("Cargo.toml", &manifest("app", "a = { path = \"a\" }\n")),
        file("src/main.rs", ""),
        file("a/Cargo.toml", &manifest("a", "b = { path = \"../b\" }\n")),
        file("a/src/lib.rs", ""),
        file("b/Cargo.toml", &manifest("b", "a = { path = \"../a\" }\n")),
        file("b/src/lib.rs", ""),
    ];
    assert!(matches!(parse(files), Err(ProgramError::DependencyCycle(_))));
}

#[test]
fn the_same_operator_gets_the_same_address_in_any_program() {
    let first = parse(two_crate_program("pub fn run() {}")).unwrap().layout();
    let mut other = two_crate_program("pub fn run() {}");
    other[1] = file("src/main.rs", "fn main() { ops::run(); ops::run() }");
    let second = parse(other).unwrap().layout();
    assert_eq!(first.crates[0], second.crates[0], "the operator is identical");
    assert_ne!(first.binary().dir_name, second.binary().dir_name);

    let changed = parse(two_crate_program("pub fn run() { println!() }")).unwrap().layout();
    assert_ne!(first.crates[0].dir_name, changed.crates[0].dir_name);
    assert_ne!(first.binary().dir_name, changed.binary().dir_name, "a dependency's change reaches its dependents");
}

#[test]
fn path_dependencies_are_rewritten_to_sibling_addresses() {
    let layout = parse(two_crate_program("pub fn run() {}")).unwrap().layout();
    let ops_dir = &layout.crates[0].dir_name;
    assert!(ops_dir.starts_with("ops-"));
    let manifest = layout.binary().files.iter().find(|f| f.path == "Cargo.toml").unwrap();
    let text = String::from_utf8(manifest.content.clone()).unwrap();
    assert!(text.contains(&format!("path = \"../{ops_dir}\"")), "{text}");
    assert!(
        layout.binary().files.iter().all(|f| !f.path.starts_with("operators/")),
        "nested crates are not copied into the binary"
    );
}

#[test]
fn source_checksum_ignores_submission_order() {
    let files = two_crate_program("");
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(source_sha256(&files), source_sha256(&reversed));
}

/// A crate as crates.io publishes it: dev-dependencies, benches, tests and
/// examples, an optional dependency nothing enables, another one a default
/// feature enables, and a weak feature.
const COPIED: &str = r#"[package]
name = "copied"
version = "1.2.3"
edition = "2021"
autobenches = false

[lib]
path = "src/lib.rs"

[[bench]]
name = "speed"
harness = false

[[test]]
name = "integration"

[[example]]
name = "demo"

[features]
default = ["std", "json"]
std = ["serde?/std"]
json = ["dep:serde_json"]
logging = ["dep:log"]
fuzzing = ["arbitrary"]

[dependencies.serde_json]
version = "1"
optional = true

[dependencies.serde]
version = "1"
optional = true
default-features = false

[dependencies.log]
version = "0.4"
optional = true

[dependencies.arbitrary]
version = "1"
optional = true

[dev-dependencies.quickcheck]
version = "1"

[target.'cfg(unix)'.dev-dependencies]
criterion = "0.5"
"#;

fn copied_program(app_dependency: &str) -> Vec<ProgramFile> {
    vec![
        file("Cargo.toml", &manifest("app", app_dependency)),
        file("src/main.rs", "fn main() {}"),
        file("copied/Cargo.toml", COPIED),
        file("copied/src/lib.rs", ""),
        file("copied/benches/speed.rs", ""),
    ]
}

#[test]
fn a_crate_copied_from_crates_io_builds_as_it_is() {
    let program = parse(copied_program("copied = { path = \"copied\" }\n"))
        .expect("log, arbitrary and the dev-dependencies are not needed");
    let layout = program.layout();
    let copied = layout.crates.iter().find(|c| c.package == "copied").unwrap();
    let text =
        String::from_utf8(copied.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
    let written: toml_edit::DocumentMut = text.parse().unwrap();
    for gone in ["dev-dependencies", "bench", "test", "example"] {
        assert!(written.get(gone).is_none(), "{gone} is dropped: {text}");
    }
    assert!(!text.contains("dev-dependencies") && !text.contains("criterion"), "none in target tables: {text}");
    let dependencies = written["dependencies"].as_table_like().unwrap();
    assert!(dependencies.get("serde_json").is_some(), "json (a default feature) uses it");
    assert!(dependencies.get("log").is_none() && dependencies.get("arbitrary").is_none(), "{text}");
    assert_eq!(written["features"]["logging"].as_array().unwrap().len(), 0, "no feature names a dropped dependency");
    assert_eq!(written["features"]["fuzzing"].as_array().unwrap().len(), 0);
    assert!(dependencies.get("serde").is_none(), "a weak `serde?/std` does not use serde: {text}");
    assert_eq!(written["features"]["std"].as_array().unwrap().len(), 0, "{text}");
    assert_eq!(written["package"]["autobenches"].as_bool(), Some(false));
    assert_eq!(written["package"]["autotests"].as_bool(), Some(false));
}

#[test]
fn a_feature_that_activates_an_optional_dependency_is_checked_against_the_set() {
    // `fuzzing` activates arbitrary (through its implicit feature), which the
    // built-in set does not hold.
    let error = parse(copied_program("copied = { path = \"copied\", features = [\"fuzzing\"] }\n")).unwrap_err();
    assert!(
        matches!(&error, ProgramError::OutsideDependencySet { dependency, .. } if dependency == "arbitrary"),
        "{error}"
    );
    // `logging` activates log, which the set holds (tiny_http uses it).
    parse(copied_program("copied = { path = \"copied\", features = [\"logging\"] }\n")).expect("log is in the set");
    // Without default features, serde_json is not used either.
    let program = parse(copied_program("copied = { path = \"copied\", default-features = false }\n")).unwrap();
    let layout = program.layout();
    let copied = layout.crates.iter().find(|c| c.package == "copied").unwrap();
    let text =
        String::from_utf8(copied.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
    assert!(!text.contains("serde_json"), "{text}");
}

/// Hostile feature tables: cycles, features naming nothing, a weak feature of a
/// dependency that does not exist, a feature of a path crate that activates the
/// binary's own crate back. Parsing ends, and only what is real is checked.
#[test]
fn hostile_feature_graphs_end_and_are_judged_on_what_they_use() {
    let ops = "[package]\nname = \"ops\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
               [features]\ndefault = [\"a\"]\na = [\"b\", \"ghost\", \"nobody?/x\"]\nb = [\"a\", \"dep:serde\"]\n\n\
               [dependencies]\nserde = { version = \"1\", optional = true, features = [\"derive\"] }\n\
               tokio = { version = \"1\", optional = true }\n";
    let files = vec![
        file("Cargo.toml", &manifest("app", "ops = { path = \"ops\" }\n")),
        file("src/main.rs", "fn main() {}"),
        file("ops/Cargo.toml", ops),
        file("ops/src/lib.rs", ""),
    ];
    let program = parse(files).expect("cycles end; tokio is never activated, so never checked");
    let layout = program.layout();
    let ops = layout.crates.iter().find(|c| c.package == "ops").unwrap();
    let text = String::from_utf8(ops.files.iter().find(|f| f.path == "Cargo.toml").unwrap().content.clone()).unwrap();
    assert!(text.contains("serde") && !text.contains("tokio"), "{text}");

    // The same crate, asked for tokio through a feature, is refused for it.
    let asked = "[package]\nname = \"ops\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                 [features]\ndefault = [\"rt\"]\nrt = [\"tokio/rt\", \"rt\"]\n\n\
                 [dependencies]\ntokio = { version = \"1\", optional = true }\n";
    let files = vec![
        file("Cargo.toml", &manifest("app", "ops = { path = \"ops\" }\n")),
        file("src/main.rs", "fn main() {}"),
        file("ops/Cargo.toml", asked),
        file("ops/src/lib.rs", ""),
    ];
    let error = parse(files).unwrap_err();
    assert!(
        matches!(&error, ProgramError::OutsideDependencySet { dependency, .. } if dependency == "tokio"),
        "{error}"
    );
}

#[test]
fn a_transitive_crate_of_the_set_may_be_used_at_its_features() {
    // serde_derive is in the built-in set's lockfile only as serde's dependency.
    let files = vec![file("Cargo.toml", &manifest("app", "serde_derive = \"1\"\n")), file("src/main.rs", "")];
    parse(files).expect("a crate of the set's lockfile");
    let near = vec![file("Cargo.toml", &manifest("app", "serde_derive = \"=1.0.0\"\n")), file("src/main.rs", "")];
    let error = parse(near).unwrap_err().to_string();
    assert!(
        error.contains("asks for serde_derive =1.0.0, but the farm's dependency set has serde_derive 1."),
        "{error}"
    );
}
