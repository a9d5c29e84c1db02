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

/// The shape of a generated program as a SQL-to-Rust compiler emits it: a schema
/// crate of row types shared by every operator, `operators` operator crates of
/// `functions` query functions each (a small serde-derived row struct, a filter
/// and map through closures, a sort and a dedup), and a binary that runs them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlShape {
    pub operators: usize,
    pub functions: usize,
}

impl SqlShape {
    /// The default large case of the benchmarks: 40 operator crates, about
    /// 40,000 lines in all.
    pub const LARGE: SqlShape = SqlShape { operators: 40, functions: 32 };
}

const SCHEMA: &str = r#"//! The program's row types, as the SQL compiler declares its tables.
use serde::{Deserialize, Serialize};

pub const VARIANT: u64 = SCHEMA_VARIANT;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    pub id: i64,
    pub name: String,
    pub amount: i64,
    pub region: u32,
    pub active: bool,
    pub tag: Option<String>,
}

/// A deterministic input of `n` records.
pub fn input(n: usize) -> Vec<Record> {
    (0..n as i64)
        .map(|i| Record {
            id: i,
            name: format!("customer-{}", i % 97),
            amount: (i * 7919) % 10_007 - 5_000,
            region: (i % 13) as u32,
            active: i % 3 != 0,
            tag: (i % 5 == 0).then(|| format!("t{}", i % 11)),
        })
        .collect()
}
"#;

/// One query function of an operator: its own row type and a pipeline of
/// closures over the input, as generated code is (one per SQL view).
fn sql_function(op: usize, f: usize, variant: u64) -> String {
    let m = 3 + (op * 7 + f) % 11;
    let k = (op + f) % m;
    let c = (variant % 1000) as usize * 31 + op * 131 + f * 17 + 1;
    format!(
        r#"
/// View {f} of operator {op}.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Row{f} {{
    pub id: i64,
    pub key: String,
    pub total: i64,
    pub region: u32,
    pub flag: Option<bool>,
}}

pub fn view_{f}(input: &[Record]) -> Vec<Row{f}> {{
    let mut rows: Vec<Row{f}> = input
        .iter()
        .filter(|r| r.amount.rem_euclid({m}) != {k} && (r.active || r.tag.is_some()))
        .map(|r| Row{f} {{
            id: r.id.wrapping_mul({c}),
            key: format!("{{}}/{{}}", r.name, r.region + {f}),
            total: r.amount.saturating_add({c}),
            region: r.region ^ {f},
            flag: r.tag.as_ref().map(|t| t.len() % 2 == 0),
        }})
        .collect();
    rows.sort_by(|a, b| a.region.cmp(&b.region).then_with(|| b.total.cmp(&a.total)).then_with(|| a.key.cmp(&b.key)));
    rows.dedup_by(|a, b| a.key == b.key && a.region == b.region);
    rows
}}
"#
    )
}

fn sql_operator(op: usize, functions: usize, variant: u64) -> String {
    let mut source = format!(
        "//! Operator {op}, variant {variant}: generated, as a SQL compiler emits its views.\n\
         #![allow(clippy::all)]\nuse schema::Record;\nuse serde::{{Deserialize, Serialize}};\n"
    );
    for f in 0..functions {
        source.push_str(&sql_function(op, f, variant));
    }
    source.push_str("\n/// Runs every view; the digest of their JSON.\npub fn run(input: &[Record]) -> u64 {\n    let mut digest = 0u64;\n");
    for f in 0..functions {
        source.push_str(&format!(
            "    for row in view_{f}(input).iter().take(3) {{\n        \
             digest = digest.wrapping_mul(31).wrapping_add(serde_json::to_string(row).map_or(0, |s| s.len() as u64));\n    }}\n"
        ));
    }
    source.push_str("    digest\n}\n");
    source
}

/// Writes a generated SQL-shaped program under `parent` as `<name>`: the binary
/// (`variant` in its source), the schema crate at `schema_variant`, and operator
/// `op-<i>` at `operator_variant(i)`, so that two programs share exactly the
/// crates whose variants agree (an operator's address covers the schema's).
/// Returns its directory and its number of lines.
pub fn write_sql(
    parent: &Path,
    name: &str,
    variant: u64,
    shape: SqlShape,
    schema_variant: u64,
    operator_variant: impl Fn(usize) -> u64,
) -> anyhow::Result<(PathBuf, usize)> {
    let dir = parent.join(format!("{name}-{variant}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut lines = 0;
    let mut write = |path: PathBuf, text: &str| -> anyhow::Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
        lines += text.lines().count();
        std::fs::write(path, text)?;
        Ok(())
    };
    let serde = "serde = { version = \"1\", features = [\"derive\"] }\nserde_json = \"1\"\n";
    write(dir.join("operators/schema/Cargo.toml"), &manifest("schema", serde))?;
    write(dir.join("operators/schema/src/lib.rs"), &SCHEMA.replace("SCHEMA_VARIANT", &schema_variant.to_string()))?;
    let mut dependencies = String::from("schema = { path = \"operators/schema\" }\n");
    let mut calls = String::new();
    for op in 0..shape.operators {
        let crate_name = format!("op-{op}");
        let deps = format!("schema = {{ path = \"../schema\" }}\n{serde}");
        write(dir.join(format!("operators/{crate_name}/Cargo.toml")), &manifest(&crate_name, &deps))?;
        let source = sql_operator(op, shape.functions, operator_variant(op));
        write(dir.join(format!("operators/{crate_name}/src/lib.rs")), &source)?;
        dependencies.push_str(&format!("{crate_name} = {{ path = \"operators/{crate_name}\" }}\n"));
        calls.push_str(&format!("    digest = digest.wrapping_add(op_{op}::run(&input));\n"));
    }
    write(dir.join("Cargo.toml"), &manifest(name, &dependencies))?;
    let main = format!(
        "//! Generated pipeline {name}, variant {variant}.\nfn main() {{\n    let input = schema::input(2000);\n    \
         let mut digest = {variant}u64;\n{calls}    println!(\"{name} {{digest}}\");\n}}\n"
    );
    write(dir.join("src/main.rs"), &main)?;
    Ok((dir, lines))
}
