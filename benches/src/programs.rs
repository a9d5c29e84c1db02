//! Pipeline programs written for the benchmarks: a binary crate and some operators,
//! each with a `variant` number in its source, so a benchmark decides exactly which
//! crates are new to cargo and to the cache (a new variant is a new content address).

use std::path::{Path, PathBuf};

/// An operator crate with `functions` functions: enough code that compiling it is
/// real work, as in a pipeline's operators.
fn operator_source(name: &str, functions: usize, variant: u64) -> String {
    let mut source = format!("//! Operator {name}, variant {variant}.\npub const VARIANT: u64 = {variant};\n\n");
    for i in 0..functions {
        source.push_str(&format!(
            "#[inline(never)]\npub fn step_{i}(values: &[u64]) -> u64 {{\n    \
             values.iter().enumerate().map(|(k, v)| match (k + {i}) % 4 {{\n        \
             0 => v.wrapping_mul({m}).rotate_left({r}),\n        1 => v ^ (v >> {r}),\n        \
             2 => v.wrapping_add({i}).wrapping_mul(3),\n        _ => v.count_ones() as u64 + {i},\n    \
             }}).fold(VARIANT, |a, b| a.wrapping_mul(31).wrapping_add(b))\n}}\n\n",
            m = 2 * i + 1,
            r = i % 63 + 1,
        ));
    }
    source.push_str("pub fn run(values: &[u64]) -> u64 {\n    let mut total = 0u64;\n");
    for i in 0..functions {
        source.push_str(&format!("    total = total.wrapping_add(step_{i}(values));\n"));
    }
    source.push_str("    total\n}\n");
    source
}

fn manifest(name: &str, dependencies: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{dependencies}")
}

/// Writes a program under `parent`: a binary `name` (its own `variant`) using the
/// operators `ops-<i>` at `operator_variant`, each of `functions` functions.
pub fn write(
    parent: &Path,
    name: &str,
    variant: u64,
    operators: usize,
    functions: usize,
    operator_variant: u64,
) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("{name}-{variant}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut dependencies = String::new();
    let mut calls = String::new();
    for i in 0..operators {
        let op = format!("ops-{i}");
        let ops_dir = dir.join("operators").join(&op);
        std::fs::create_dir_all(ops_dir.join("src"))?;
        std::fs::write(ops_dir.join("Cargo.toml"), manifest(&op, ""))?;
        std::fs::write(ops_dir.join("src/lib.rs"), operator_source(&op, functions, operator_variant))?;
        dependencies.push_str(&format!("{op} = {{ path = \"operators/{op}\" }}\n"));
        calls.push_str(&format!("    total = total.wrapping_add(ops_{i}::run(&values));\n"));
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), manifest(name, &dependencies))?;
    let main = format!(
        "//! Benchmark pipeline {name}, variant {variant}.\nfn main() {{\n    \
         let values: Vec<u64> = (0..1000).collect();\n    let mut total = {variant}u64;\n{calls}    \
         println!(\"{name} {{total}}\");\n}}\n"
    );
    std::fs::write(dir.join("src/main.rs"), main)?;
    Ok(dir)
}
