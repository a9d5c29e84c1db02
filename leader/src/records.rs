//! What the catalog stores, and how: its own types, each in an envelope that names
//! its schema version, never the API's or the wire's shapes.
//!
//! - a pipeline: JSON `{"v": 1, "pipeline": {...}}` of [`Pipeline`];
//! - a source: CBOR of [`StoredSource`] (`v`, then the files with their bytes).
//!
//! Reading a record of a newer schema fails with a message that says so, rather
//! than misreading it. Schema 0 is what Kiln 0.1 wrote (a bare pipeline JSON, and a
//! protobuf `SourceBundle`); [`migrate_source`] and [`decode_pipeline`] read it, and
//! the catalog rewrites a schema-0 database once when it opens it.

use serde::{Deserialize, Serialize};

use crate::rules::Pipeline;
use kiln_core::program::ProgramFile;

/// The schema this build writes.
pub const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Unreadable(String),
    #[error(
        "it was written by a newer Kiln (schema {found}; this one reads up to {SCHEMA}): run that version, or restore a backup"
    )]
    Newer { found: u32 },
}

#[derive(Serialize, Deserialize)]
struct PipelineEnvelope<T> {
    v: u32,
    pipeline: T,
}

/// One program file as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub path: String,
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    #[serde(default)]
    pub executable: bool,
}

/// A program's source as the catalog keeps it, files sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSource {
    pub v: u32,
    pub files: Vec<StoredFile>,
}

pub fn encode_pipeline(pipeline: &Pipeline) -> Vec<u8> {
    // A pipeline is plain data (strings, numbers, enums): serializing it cannot fail.
    serde_json::to_vec(&PipelineEnvelope { v: SCHEMA, pipeline }).expect("a pipeline serializes")
}

pub fn decode_pipeline(bytes: &[u8]) -> Result<Pipeline, RecordError> {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u32>,
    }
    let unreadable = |e: serde_json::Error| RecordError::Unreadable(e.to_string());
    match serde_json::from_slice::<Version>(bytes).map_err(unreadable)?.v {
        // Schema 0: the bare record, without an envelope.
        None => serde_json::from_slice(bytes).map_err(unreadable),
        Some(v) if v <= SCHEMA => {
            Ok(serde_json::from_slice::<PipelineEnvelope<Pipeline>>(bytes).map_err(unreadable)?.pipeline)
        }
        Some(found) => Err(RecordError::Newer { found }),
    }
}

pub fn encode_source(files: &[ProgramFile]) -> Vec<u8> {
    let mut files: Vec<StoredFile> = files
        .iter()
        .map(|f| StoredFile { path: f.path.clone(), content: f.content.clone(), executable: f.executable })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut bytes = Vec::new();
    // Writing plain data into a Vec cannot fail.
    ciborium::into_writer(&StoredSource { v: SCHEMA, files }, &mut bytes).expect("a source serializes");
    bytes
}

pub fn decode_source(bytes: &[u8]) -> Result<Vec<ProgramFile>, RecordError> {
    let source: StoredSource = ciborium::from_reader(bytes).map_err(|e| RecordError::Unreadable(e.to_string()))?;
    if source.v > SCHEMA {
        return Err(RecordError::Newer { found: source.v });
    }
    Ok(source
        .files
        .into_iter()
        .map(|f| ProgramFile { path: f.path, content: f.content, executable: f.executable })
        .collect())
}

/// Reads a schema-0 source (a protobuf `SourceBundle`) and writes it in this schema.
pub fn migrate_source(legacy: &[u8]) -> Result<Vec<u8>, RecordError> {
    use prost::Message;
    let bundle = kiln_proto::SourceBundle::decode(legacy)
        .map_err(|e| RecordError::Unreadable(format!("schema-0 source: {e}")))?;
    Ok(encode_source(&kiln_core::cluster::program_files(bundle)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<ProgramFile> {
        vec![
            ProgramFile { path: "src/main.rs".into(), content: vec![0, 159, 146, 150], executable: true },
            ProgramFile { path: "Cargo.toml".into(), content: b"[package]".to_vec(), executable: false },
        ]
    }

    #[test]
    fn records_read_back_and_carry_their_schema() {
        let pipeline = crate::rules::tests::record(7);
        let bytes = encode_pipeline(&pipeline);
        assert!(String::from_utf8_lossy(&bytes).starts_with("{\"v\":1,"));
        assert_eq!(decode_pipeline(&bytes).unwrap(), pipeline);

        let mut sorted = files();
        sorted.reverse();
        assert_eq!(decode_source(&encode_source(&files())).unwrap(), sorted);
    }

    #[test]
    fn schema_zero_reads_and_a_newer_schema_is_refused_in_words() {
        let pipeline = crate::rules::tests::record(3);
        let bare = serde_json::to_vec(&pipeline).unwrap();
        assert_eq!(decode_pipeline(&bare).unwrap(), pipeline);

        let newer = serde_json::to_vec(&PipelineEnvelope { v: SCHEMA + 1, pipeline: &pipeline }).unwrap();
        let error = decode_pipeline(&newer).unwrap_err().to_string();
        assert!(error.contains("newer Kiln"), "{error}");

        use prost::Message;
        let legacy = kiln_core::cluster::source_bundle(&files()).encode_to_vec();
        let migrated = migrate_source(&legacy).unwrap();
        let mut sorted = files();
        sorted.reverse();
        assert_eq!(decode_source(&migrated).unwrap(), sorted);
        assert!(decode_source(b"\x00garbage").is_err(), "garbage is an error, not a panic");
    }
}
