//! Pipeline programs: the format, the rules a program must follow to build on the
//! farm, and the content-addressed layout a worker writes into its build root.
//!
//! A program is a directory of files. Every `Cargo.toml` in it that has a `[package]`
//! is a crate rooted at that file's directory; exactly one crate has a binary target
//! (`src/main.rs` or `[[bin]]`), the others are libraries ("operators"). Crates depend
//! on each other by `path` and on registry crates only from the farm's dependency set
//! ([`DepSet`]). A root `Cargo.toml` with only a `[workspace]` is allowed, so that the
//! same directory builds with a plain `cargo build`.
//!
//! The leader calls [`Program::parse`] on every submission (so a program that cannot
//! build is refused with the rule named); a worker calls it again and then
//! [`Program::layout`].

mod features;
mod layout;
mod manifest;
mod parse;
mod rules;
#[cfg(test)]
mod tests;

pub use layout::{LaidOutCrate, Layout};
pub use manifest::{Crate, CrateKind};
pub use parse::Program;
pub use rules::{
    MAX_NAME_LEN, MAX_PACKAGE_NAME_LEN, MAX_PROGRAM_BYTES, MAX_PROGRAM_FILES, ProgramError, ProgramFile,
    check_package_name, source_sha256, validate_name, validate_path,
};
