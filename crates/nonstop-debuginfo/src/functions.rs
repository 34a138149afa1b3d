//! Resolving function names to entry addresses.

use crate::{DebugInfo, Error, Site};

impl DebugInfo {
    pub(crate) fn resolve_function(&self, name: &str) -> Result<Vec<Site>, Error> {
        Err(Error::UnknownFunction {
            name: name.to_string(),
            suggestions: Vec::new(),
        })
    }
}
