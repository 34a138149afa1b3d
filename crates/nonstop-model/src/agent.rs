//! Who an agent is, as its hello tells the server and as rules select it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who an agent is: one running process of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique per process (e.g. `HOST-PID-RANDOM`); the same across reconnects.
    pub id: String,
    /// The service the process is an instance of.
    pub service: String,
    /// The program's version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The git commit the program was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Host name.
    #[serde(default)]
    pub host: String,
    /// Process id.
    #[serde(default)]
    pub pid: u32,
    /// Labels that rules select agents by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the process started (RFC 3339, UTC).
    #[serde(default)]
    pub started: String,
}
