//! Rules: what a user asks for at one location, in the JSON form of DESIGN.md.

use crate::agent::AgentInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a hit produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Locals and stack.
    Snapshot,
    /// A message rendered from `template`.
    Log,
    /// A count, gauge or histogram of an expression.
    Metric,
}

impl Action {
    /// Its word in rules and the API: `snapshot`, `log` or `metric`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Snapshot => "snapshot",
            Action::Log => "log",
            Action::Metric => "metric",
        }
    }
}

/// The kind of a metric rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Number of hits.
    Count,
    /// Last value of `value`.
    Gauge,
    /// Distribution of `value`.
    Histogram,
}

/// The metric of a `metric` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Count, gauge or histogram.
    pub kind: MetricKind,
    /// The metric's name.
    pub name: String,
    /// The expression measured (gauge, histogram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Tags: name → expression.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Capture limits; unset fields take the defaults of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Pointer/field nesting depth (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// String and byte-slice length (default 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<u32>,
    /// Collection elements (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<u32>,
    /// Fields per struct (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<u32>,
    /// Stack frames (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
}

/// Capture limits with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Pointer/field nesting depth.
    pub depth: u32,
    /// String and byte-slice length.
    pub string: u32,
    /// Collection elements.
    pub collection: u32,
    /// Fields per struct.
    pub fields: u32,
    /// Stack frames.
    pub frames: u32,
}

impl Limits {
    /// These limits with the defaults filled in.
    pub fn resolve(&self) -> CaptureLimits {
        let d = CaptureLimits::default();
        CaptureLimits {
            depth: self.depth.unwrap_or(d.depth),
            string: self.string.unwrap_or(d.string),
            collection: self.collection.unwrap_or(d.collection),
            fields: self.fields.unwrap_or(d.fields),
            frames: self.frames.unwrap_or(d.frames),
        }
    }
}

/// Most watch expressions one rule may carry.
pub const MAX_WATCH: usize = 20;

/// A rule. Only `at` and `action` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its id (the server or the agent assigns one when absent).
    #[serde(default)]
    pub id: String,
    /// Where: `FILE:LINE` or a function name.
    pub at: String,
    /// What a hit produces.
    pub action: Action,
    /// The message template of a `log` rule: `"paid {order.total} for {user.id}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The metric of a `metric` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Watch expressions of a `snapshot` rule: each is evaluated at every hit and shown
    /// beside the locals (`["order.total", "len(cart.items)"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
    /// A condition: only hits where it holds count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Which service's agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Which agents, by the program version they report (`NONSTOP_VERSION`); exact match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Which agents, by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Most hits in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hits: Option<u64>,
    /// How long the rule lives, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Most hits per time per agent, e.g. `1/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Capture limits.
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: Limits,
    /// Targets the responses go to (`ui` always).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
}

impl Rule {
    /// Whether this rule selects the agent `info`: same service and the same version
    /// (exactly, when the rule names them) and every label of the rule present with the
    /// same value.
    pub fn selects(&self, info: &AgentInfo) -> bool {
        self.service.as_deref().is_none_or(|s| s == info.service)
            && self
                .version
                .as_deref()
                .is_none_or(|v| info.version.as_deref() == Some(v))
            && self
                .labels
                .iter()
                .all(|(k, v)| info.labels.get(k) == Some(v))
    }
}

fn is_default_limits(l: &Limits) -> bool {
    *l == Limits::default()
}

/// The state of a rule on one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusKind {
    /// Not yet armed.
    Pending,
    /// Probes are in place.
    Armed,
    /// The rule cannot be armed; the message says why and what to do.
    Error,
    /// Hits are being dropped by a rate limit or the CPU budget.
    RateLimited,
    /// The rule's time ran out.
    Expired,
    /// The rule reached its max hits.
    Done,
    /// The rule is disabled on the server, so the agent disarmed it (the server's view of
    /// an agent's status; agents never report it).
    Disabled,
}

impl StatusKind {
    /// Its word in the API: `pending`, `armed`, `error`, `rate-limited`, `expired`, `done`
    /// or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Pending => "pending",
            StatusKind::Armed => "armed",
            StatusKind::Error => "error",
            StatusKind::RateLimited => "rate-limited",
            StatusKind::Expired => "expired",
            StatusKind::Done => "done",
            StatusKind::Disabled => "disabled",
        }
    }
}

/// A rule's status on one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule.
    pub rule: String,
    /// The state.
    pub status: StatusKind,
    /// What a person should know (always set for `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Probes armed for the rule.
    #[serde(default)]
    pub probes: u32,
    /// Hits so far.
    #[serde(default)]
    pub hits: u64,
    /// Hits dropped (rate limit, budget, full buffer).
    #[serde(default)]
    pub dropped: u64,
    /// With the fast path on (the default; `NONSTOP_FAST_PATH=0` turns it off): how many of the probes got it, and
    /// why the others did not (`fast path: 2 of 3 probes; no — a branch at 0x… lands inside
    /// the patched bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_rule_parses_and_unknown_fields_are_refused() {
        let r: Rule = serde_json::from_str(r#"{"at":"main.rs:33","action":"snapshot"}"#).unwrap();
        assert_eq!(r.at, "main.rs:33");
        assert_eq!(r.action, Action::Snapshot);
        assert_eq!(r.limits.resolve(), CaptureLimits::default());
        let err = serde_json::from_str::<Rule>(r#"{"at":"a.rs:1","action":"log","tmplate":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `tmplate`"), "{err}");
    }

    #[test]
    fn watch_expressions_round_trip_and_are_left_out_when_there_are_none() {
        let json = r#"{"id":"w","at":"a.rs:1","action":"snapshot","watch":["order.total","len(cart.items)"]}"#;
        let r: Rule = serde_json::from_str(json).unwrap();
        assert_eq!(r.watch, ["order.total", "len(cart.items)"]);
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
        let r: Rule = serde_json::from_str(r#"{"at":"a.rs:1","action":"snapshot"}"#).unwrap();
        assert!(r.watch.is_empty());
        assert!(!serde_json::to_string(&r).unwrap().contains("watch"));
    }

    #[test]
    fn rules_select_agents_by_service_and_labels() {
        let info: AgentInfo = serde_json::from_str(
            r#"{"id":"a","service":"checkout","labels":{"region":"eu","canary":"1"}}"#,
        )
        .unwrap();
        let rule = |j: &str| serde_json::from_str::<Rule>(j).unwrap();
        assert!(rule(r#"{"at":"a.rs:1","action":"snapshot"}"#).selects(&info));
        assert!(
            rule(
                r#"{"at":"a.rs:1","action":"snapshot","service":"checkout","labels":{"region":"eu"}}"#
            )
            .selects(&info)
        );
        assert!(!rule(r#"{"at":"a.rs:1","action":"snapshot","service":"cart"}"#).selects(&info));
        assert!(
            !rule(r#"{"at":"a.rs:1","action":"snapshot","labels":{"region":"us"}}"#).selects(&info)
        );
    }

    #[test]
    fn rules_select_agents_by_exact_version() {
        let agent = |j: &str| serde_json::from_str::<AgentInfo>(j).unwrap();
        let v12 = agent(r#"{"id":"a","service":"checkout","version":"1.2.0"}"#);
        let v13 = agent(r#"{"id":"b","service":"checkout","version":"1.3.0"}"#);
        let unknown = agent(r#"{"id":"c","service":"checkout"}"#);
        let rule = serde_json::from_str::<Rule>(
            r#"{"at":"a.rs:1","action":"snapshot","service":"checkout","version":"1.2.0"}"#,
        )
        .unwrap();
        assert!(rule.selects(&v12));
        assert!(!rule.selects(&v13));
        assert!(!rule.selects(&unknown));
        let any = serde_json::from_str::<Rule>(r#"{"at":"a.rs:1","action":"snapshot"}"#).unwrap();
        assert!(any.selects(&v13) && any.selects(&unknown));
        let prefix =
            serde_json::from_str::<Rule>(r#"{"at":"a.rs:1","action":"snapshot","version":"1.2"}"#)
                .unwrap();
        assert!(
            !prefix.selects(&v12),
            "versions match exactly, not by prefix"
        );
    }
}
