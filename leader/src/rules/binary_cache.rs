//! The binary cache's rules: the key that decides a binary, which keys a
//! submission may be served under, and what a hit makes of the record. The catalog
//! stores the entries; which one a submission gets is decided here.

use kiln_core::api::{self, Status};
use serde::{Deserialize, Serialize};

use crate::rules::pipeline::Pipeline;

/// The binary cache's key: everything that decides a binary. The program's source
/// checksum, the dependency set's fingerprint, the build settings fingerprint a
/// worker reports (toolchain `rustc -vV`, which names the target, the build root,
/// cargo's home, the environment), the build profile; and, for a binary whose
/// build ran code of its submitter, the one pipeline it may be served to
/// (`only_for`): such a build read compile-cache entries only its own pipeline's
/// builds made. Each part is length-prefixed, so no two different tuples hash
/// alike.
pub fn binary_key(
    source_sha256: &str,
    depset: &str,
    build_settings: &str,
    profile: &str,
    only_for: Option<u64>,
) -> String {
    let scope = only_for.map(|id| format!("pipeline {id}")).unwrap_or_default();
    let profile = format!("profile {profile}");
    hex::encode(kiln_core::digest::sha256_of_parts([source_sha256, depset, build_settings, &profile, &scope]))
}

/// A binary the binary cache holds: what a submission of the same key is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedBinary {
    pub sha256: String,
    pub size: u64,
    pub pipeline_id: u64,
    pub version: u64,
    /// That build's compile time.
    pub compile_ms: u64,
}

/// The keys a submission of `source_sha256` in `profile` as pipeline
/// `pipeline_id` may be served under, in the order to try them: a binary any
/// pipeline may be served, or else one built for this pipeline alone (its build
/// ran its submitter's code).
pub fn binary_cache_candidates(
    source_sha256: &str,
    depset: &str,
    settings: &str,
    profile: &str,
    pipeline_id: u64,
) -> [String; 2] {
    [None, Some(pipeline_id)].map(|only_for| binary_key(source_sha256, depset, settings, profile, only_for))
}

/// The build log of a version served from the binary cache: what it was served
/// and why no build ran.
pub fn binary_cache_hit_log(
    source_sha256: &str,
    depset: &str,
    settings: &str,
    profile: &str,
    cached: &CachedBinary,
) -> String {
    format!(
        "binary cache hit: the same source ({source_sha256}), dependency set ({depset}), build settings ({settings}) and profile ({profile}) were built as pipeline {} version {}; its binary {} is served without a build ({} ms of build saved).\n",
        cached.pipeline_id, cached.version, cached.sha256, cached.compile_ms
    )
}

impl Pipeline {
    /// This version is served `cached` from the binary cache under `key`: it ends
    /// `success` at once, without a claim or a build.
    pub fn serve_cached(&mut self, key: String, depset: &str, cached: &CachedBinary, now_ms: u64) {
        self.status = Status::Success;
        self.binary_sha256 = Some(cached.sha256.clone());
        self.binary_size = Some(cached.size);
        self.error = None;
        self.depset = Some(depset.to_owned());
        self.started_at_ms = Some(now_ms);
        self.finished_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        self.compile_ms = Some(0);
        self.upload_ms = Some(0);
        self.binary_key = Some(key);
        self.binary_cache_hit = Some(api::BinaryCacheHit {
            pipeline_id: cached.pipeline_id,
            version: cached.version,
            saved_ms: cached.compile_ms,
        });
        self.note(
            now_ms,
            format!(
                "success from the binary cache: built before as pipeline {} version {} ({} ms of build saved)",
                cached.pipeline_id, cached.version, cached.compile_ms
            ),
        );
    }
}
