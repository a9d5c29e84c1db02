//! `--depset DIR`, read the same way by every command that takes it (`kiln server`,
//! `kiln prepare`, `kiln ci-env`, `kiln layout`): the operator's set, or Kiln's
//! built-in one without the flag.

use std::path::Path;
use std::sync::Arc;

use kiln_core::depset::DepSet;

/// The dependency set of `--depset DIR`, or the built-in one.
pub fn load_depset(dir: Option<&Path>) -> anyhow::Result<Arc<DepSet>> {
    match dir {
        None => Ok(DepSet::embedded()),
        Some(dir) => Ok(Arc::new(DepSet::load(dir)?)),
    }
}
