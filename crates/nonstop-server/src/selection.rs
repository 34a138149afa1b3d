//! Which agents a rule selects.

use nonstop_model::{AgentInfo, Rule};

/// Whether `rule` selects the agent `info`: same service and the same version (exactly,
/// when the rule names them) and every label of the rule present with the same value.
pub fn selects(rule: &Rule, info: &AgentInfo) -> bool {
    rule.service.as_deref().is_none_or(|s| s == info.service)
        && rule
            .version
            .as_deref()
            .is_none_or(|v| info.version.as_deref() == Some(v))
        && rule
            .labels
            .iter()
            .all(|(k, v)| info.labels.get(k) == Some(v))
}
