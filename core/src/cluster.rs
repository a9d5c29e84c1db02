//! The member-to-leader contract in domain terms, and the one place where those
//! terms are converted from and to the protobuf of `kiln-proto`. The leader's gRPC
//! layer and the worker both convert here, so the two sides cannot read a field
//! differently.

use kiln_proto as pb;

use crate::api::CacheFigures;
use crate::program::ProgramFile;

/// A member's identity as it comes with every worker call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberId {
    pub ordinal: u32,
    pub workers: u32,
    pub incarnation: u64,
}

/// A claim on one build: only the holder of the current claim may report on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimKey {
    pub pipeline_id: u64,
    pub version: u64,
    pub attempt: u64,
}

/// Timings and cache figures that come with a build's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub compile_ms: u64,
    pub upload_ms: u64,
    pub upload_retries: u32,
    pub cache: CacheFigures,
}

/// A required field that a call left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call carries no {0}")]
pub struct Missing(pub &'static str);

impl MemberId {
    pub fn from_pb(member: Option<&pb::Member>) -> Result<MemberId, Missing> {
        let m = member.ok_or(Missing("member identity"))?;
        Ok(MemberId { ordinal: m.ordinal, workers: m.workers, incarnation: m.incarnation })
    }
}

impl ClaimKey {
    pub fn from_pb(claim: Option<pb::Claim>) -> Result<ClaimKey, Missing> {
        claim.map(ClaimKey::from).ok_or(Missing("claim"))
    }
}

impl From<pb::Claim> for ClaimKey {
    fn from(c: pb::Claim) -> Self {
        ClaimKey { pipeline_id: c.pipeline_id, version: c.version, attempt: c.attempt }
    }
}

impl From<ClaimKey> for pb::Claim {
    fn from(c: ClaimKey) -> Self {
        pb::Claim { pipeline_id: c.pipeline_id, version: c.version, attempt: c.attempt }
    }
}

impl From<pb::CacheFigures> for CacheFigures {
    fn from(c: pb::CacheFigures) -> Self {
        CacheFigures {
            enabled: c.enabled,
            hits: c.hits,
            misses: c.misses,
            non_cacheable: c.non_cacheable,
            hit_read_ms: c.hit_read_ms,
            miss_compile_ms: c.miss_compile_ms,
            saved_ms: c.saved_ms,
            hits_without_cost: c.hits_without_cost,
            time_from_cache_percent: CacheFigures::percent_from_cache(c.saved_ms, c.miss_compile_ms),
            note: c.note,
        }
    }
}

impl From<CacheFigures> for pb::CacheFigures {
    fn from(c: CacheFigures) -> Self {
        pb::CacheFigures {
            enabled: c.enabled,
            hits: c.hits,
            misses: c.misses,
            non_cacheable: c.non_cacheable,
            note: c.note,
            hit_read_ms: c.hit_read_ms,
            miss_compile_ms: c.miss_compile_ms,
            saved_ms: c.saved_ms,
            hits_without_cost: c.hits_without_cost,
        }
    }
}

impl From<Option<pb::BuildFigures>> for Figures {
    fn from(f: Option<pb::BuildFigures>) -> Self {
        let f = f.unwrap_or_default();
        Figures {
            compile_ms: f.compile_ms,
            upload_ms: f.upload_ms,
            upload_retries: f.upload_retries,
            cache: f.cache.unwrap_or_default().into(),
        }
    }
}

impl From<Figures> for pb::BuildFigures {
    fn from(f: Figures) -> Self {
        pb::BuildFigures {
            compile_ms: f.compile_ms,
            upload_ms: f.upload_ms,
            upload_retries: f.upload_retries,
            cache: Some(f.cache.into()),
        }
    }
}

/// A program as an assignment carries it: files sorted by path.
pub fn source_bundle(files: &[ProgramFile]) -> pb::SourceBundle {
    let mut files: Vec<&ProgramFile> = files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    pb::SourceBundle {
        files: files
            .into_iter()
            .map(|f| pb::SourceFile { path: f.path.clone(), content: f.content.clone(), executable: f.executable })
            .collect(),
    }
}

/// The program an assignment carries.
pub fn program_files(bundle: pb::SourceBundle) -> Vec<ProgramFile> {
    bundle
        .files
        .into_iter()
        .map(|f| ProgramFile { path: f.path, content: f.content, executable: f.executable })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_survive_the_wire() {
        let figures = Figures {
            compile_ms: 12,
            upload_ms: 3,
            upload_retries: 2,
            cache: CacheFigures {
                enabled: true,
                hits: 5,
                misses: 1,
                non_cacheable: 2,
                hit_read_ms: 30,
                miss_compile_ms: 70,
                saved_ms: 280,
                hits_without_cost: 1,
                time_from_cache_percent: 80,
                note: "n".into(),
            },
        };
        assert_eq!(Figures::from(Some(pb::BuildFigures::from(figures.clone()))), figures);
        let claim = ClaimKey { pipeline_id: 1, version: 2, attempt: 3 };
        assert_eq!(ClaimKey::from(pb::Claim::from(claim)), claim);
        assert_eq!(ClaimKey::from_pb(None), Err(Missing("claim")));
    }

    #[test]
    fn a_bundle_is_sorted_and_gives_back_its_files() {
        let file = |path: &str| ProgramFile { path: path.into(), content: path.as_bytes().to_vec(), executable: false };
        let files = vec![file("src/main.rs"), file("Cargo.toml")];
        let bundle = source_bundle(&files);
        assert_eq!(bundle.files[0].path, "Cargo.toml");
        let mut back = program_files(bundle);
        back.reverse();
        assert_eq!(back, files);
    }
}
