//! Hostile programs against a real farm: what a submitted program does must stay
//! the program's problem. Each test asserts what a user would check (the status,
//! the error, the log) and that the farm goes on building.

mod common;

use std::time::Duration;

use common::{Farm, Member, examples, manifest, write_program};

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn one_member_farm() -> Farm {
    let mut farm = Farm::new(1);
    farm.start(Member { ordinal: 0, workers: 1, extra: Vec::new() });
    farm.wait_healthy(Duration::from_secs(300)).await;
    farm
}

async fn log_of(farm: &Farm, key: &str) -> String {
    let url = format!("{}/v0/pipelines/{key}/log", farm.url());
    farm.http.get(url).send().await.unwrap().text().await.unwrap()
}

/// A build script that writes 25 MiB to stderr and then fails, and a program whose
/// rustc diagnostics run to megabytes: each ends `compile_error` (the program's
/// fault, not the farm's) with a capped log that says how much was cut, and the
/// next pipeline of the same ordinal builds normally.
#[tokio::test(flavor = "multi_thread")]
async fn floods_of_output_end_as_the_programs_errors_with_a_capped_log() {
    let farm = one_member_farm().await;
    let flood = write_program(
        farm.dir.path(),
        "flood",
        &[
            ("Cargo.toml", &manifest("flood", "")),
            (
                "build.rs",
                r#"use std::io::Write;
fn main() {
    let line = [b'x'; 1023];
    let mut err = std::io::stderr().lock();
    for _ in 0..25 * 1024 { err.write_all(&line).unwrap(); err.write_all(b"\n").unwrap(); }
    panic!("the build script gives up after its flood");
}"#,
            ),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    // 20,000 type errors: megabytes of rustc diagnostics from 300 KB of source.
    let source = "fn main() {}\n".to_owned()
        + &(0..200).map(|i| format!("fn f{i}() {{ {} }}\n", "let _: () = 1; ".repeat(100))).collect::<String>();
    let errors =
        write_program(farm.dir.path(), "errors", &[("Cargo.toml", &manifest("errors", "")), ("src/main.rs", &source)]);
    for (dir, what) in [(&flood, "failed to run custom build command for `flood"), (&errors, "mismatched types")] {
        let output = farm.submit(&[dir.as_path()], true);
        assert!(!output.status.success(), "the build fails: {}", text(&output));
        let name = dir.file_name().unwrap().to_str().unwrap();
        let record = farm.pipeline(name).await;
        assert_eq!(record["status"], "compile_error", "the program's own failure: {record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(what), "the error names it: {error}");
        assert!(error.len() < 8 * 1024, "the error is a summary, not the flood ({} bytes)", error.len());
        let log = log_of(&farm, name).await;
        assert!(log.contains("bytes of the build log left out"), "the log says it was cut");
        assert!(log.len() < 3 << 20, "the log is capped: {} bytes", log.len());
    }
    let flood_log = log_of(&farm, "flood").await;
    assert!(flood_log.contains("the build script gives up after its flood"), "the end of the log is kept");

    let output = farm.submit(&[&examples().join("hello")], true);
    assert!(output.status.success(), "the next pipeline builds: {}", text(&output));
    assert_eq!(farm.pipeline("hello").await["status"], "success");
}
