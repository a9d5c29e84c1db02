//! The dependency set's anchor crate: it only exists so that cargo builds every crate
//! of the set, with the features pipelines may use, once per worker.
pub use anyhow;
pub use serde;
pub use serde_json;
pub use kiln_pipeline_runtime;
