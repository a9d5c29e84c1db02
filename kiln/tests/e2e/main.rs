//! Kiln's end-to-end tests, one binary (compiled and linked once) with a module
//! per area. Each starts the real `kiln` binary as processes on loopback, with real
//! cargo builds, sccache, s3s-fs, helm and chromium, through the test kit
//! (`kiln-testkit`) and this binary's defaults ([`common`]).

mod common;

mod binary_cache;
mod cache;
mod cache_server;
mod depset;
mod farm;
mod healing;
mod helm;
mod hostile;
mod lifecycle;
mod multihost;
mod page;
mod structure;
