//! What the server's API answers about rules, agents and metric series: one type per view,
//! written by the server and read by the CLI (and any Rust client), so both mean the same
//! JSON.

use crate::{AgentInfo, MetricSeries, Rule, StatusKind};
use serde::{Deserialize, Serialize};

/// The lifecycle state of a rule on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleState {
    /// Sent to matching agents.
    Active,
    /// Reached its max hits.
    Done,
    /// Its time ran out.
    Expired,
}

impl RuleState {
    /// Its word in the API and the store: `active`, `done` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Active => "active",
            RuleState::Done => "done",
            RuleState::Expired => "expired",
        }
    }

    /// Reads a stored word; anything unknown is `expired` (never sent to agents).
    pub fn parse(s: &str) -> RuleState {
        match s {
            "active" => RuleState::Active,
            "done" => RuleState::Done,
            _ => RuleState::Expired,
        }
    }
}

/// A rule with its server-side state and its status on each agent
/// (`GET /api/v1/rules`, `GET /api/v1/rules/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    /// The rule, defaults filled in.
    pub rule: Rule,
    /// `active`, `done` or `expired`.
    pub state: RuleState,
    /// Whether it is sent to agents (`POST /api/v1/rules/{id}/disable` and `/enable`).
    pub enabled: bool,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it expires (RFC 3339).
    pub expires_at: Option<String>,
    /// Hits over all agents: responses stored, or for a metric rule the sum of its
    /// series' counts.
    pub hits: u64,
    /// Its status on each agent that reported one.
    pub agents: Vec<StatusView>,
    /// What was delivered to each of its targets (absent when it routes to none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<DeliveryCounts>,
}

/// Deliveries to one target: how many are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    /// The target.
    pub target: String,
    /// Waiting in its outbox.
    pub pending: u64,
    /// Taken by the receiver.
    pub sent: u64,
    /// Refused by the receiver for good.
    pub failed: u64,
    /// Dropped by the outbox's bounds (age, size).
    pub dropped: u64,
}

/// A configured target (`GET /api/v1/targets`, `GET /api/v1/targets/{name}`): its
/// settings with every secret cut to its last 4 characters, its status and its delivery
/// counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    /// Its name.
    pub name: String,
    /// Its kind: otlp, sentry, datadog, honeycomb, slack, webhook or file.
    pub kind: String,
    /// Its settings as given, secrets redacted (`…abcd`).
    pub spec: serde_json::Value,
    /// `active`, or `disabled: REASON` (a webhook's 410; add the target again to enable it).
    pub status: String,
    /// When it was added (RFC 3339).
    pub created: String,
    /// Waiting in its outbox now.
    pub pending: u64,
    /// Delivered, in all.
    pub sent: u64,
    /// Refused for good, in all.
    pub failed: u64,
    /// Dropped by the outbox's bounds, in all.
    pub dropped: u64,
    /// When the oldest waiting delivery was queued (RFC 3339).
    pub oldest_pending: Option<String>,
    /// The last error a delivery met.
    pub last_error: Option<String>,
}

/// What `POST /api/v1/targets/{name}/test` answers: the outcome of one test event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetTestView {
    /// The target.
    pub target: String,
    /// Whether the receiver took it.
    pub ok: bool,
    /// `sent`, `retry`, `failed`, `disable` or `skipped`.
    pub outcome: String,
    /// What the receiver answered, or what went wrong.
    pub message: String,
}

/// A rule's status on one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The agent.
    pub agent: String,
    /// Its status there.
    pub status: StatusKind,
    /// What a person should know (always set for `error`).
    pub message: Option<String>,
    /// Probes armed.
    pub probes: u32,
    /// Hits on that agent.
    pub hits: u64,
    /// Hits dropped there.
    pub dropped: u64,
    /// When the agent reported it (RFC 3339).
    pub updated: String,
    /// Whether the agent is connected now (a status of a gone agent is its last word).
    pub connected: bool,
    /// What the agent said of the fast path, as it said it (`fast path: 2 of 3 probes; no —
    /// …`); absent when the agent runs without it (`NONSTOP_FAST_PATH=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<String>,
}

/// An agent as the API shows it (`GET /api/v1/agents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    /// Who it is.
    #[serde(flatten)]
    pub info: AgentInfo,
    /// Whether it holds a connection now.
    pub connected: bool,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Last seen (RFC 3339).
    pub last_seen: String,
    /// Responses it dropped because its buffer was full (should be 0).
    pub dropped: u64,
}

/// One series of one service: its agents' series with the same rule and tags, summed
/// (`GET /api/v1/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSeries {
    /// The service.
    pub service: String,
    /// How many of its agents reported this series.
    pub agents: usize,
    /// The summed values: counts, sums, buckets and overflow added up; `last` and
    /// `updated` from the series updated last.
    #[serde(flatten)]
    pub series: MetricSeries,
    /// When the server last received a report of it (RFC 3339).
    pub received: String,
}

/// A named rule template as `GET /api/v1/templates` answers it (the owned, readable form of
/// [`crate::templates::Template`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateView {
    /// Its name: `snapshot`, `log`, `count`, `measure`, `trace`.
    pub name: String,
    /// A short title for buttons.
    pub title: String,
    /// What the rule it makes does.
    pub description: String,
    /// The action of the rule it makes.
    pub action: crate::Action,
    /// The parameters it takes.
    pub params: Vec<ParamView>,
    /// An example `nonstop rules add` command.
    pub example: String,
}

/// One parameter of a [`TemplateView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamView {
    /// Its name (`--param NAME=…` on the CLI).
    pub name: String,
    /// What it means.
    pub description: String,
    /// Whether the template needs it.
    pub required: bool,
    /// The value used when it is not given (optional parameters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// An example value.
    pub example: String,
}

#[cfg(test)]
mod tests {
    use super::RuleState;
    use crate::{Action, StatusKind};
    use serde_json::{Value, to_value};

    #[test]
    fn the_built_in_templates_read_as_template_views() {
        let json = to_value(crate::templates::TEMPLATES).unwrap();
        let views: Vec<super::TemplateView> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(views.len(), crate::templates::TEMPLATES.len());
        assert_eq!(to_value(&views).unwrap(), json);
    }

    #[test]
    fn words_are_the_serde_forms() {
        for s in [RuleState::Active, RuleState::Done, RuleState::Expired] {
            assert_eq!(to_value(s).unwrap(), Value::from(s.as_str()));
            assert_eq!(RuleState::parse(s.as_str()), s);
        }
        assert_eq!(RuleState::parse("garbage"), RuleState::Expired);
        for a in [Action::Snapshot, Action::Log, Action::Metric] {
            assert_eq!(to_value(a).unwrap(), Value::from(a.as_str()));
        }
        for k in [
            StatusKind::Pending,
            StatusKind::Armed,
            StatusKind::Error,
            StatusKind::RateLimited,
            StatusKind::Expired,
            StatusKind::Done,
            StatusKind::Disabled,
        ] {
            assert_eq!(to_value(k).unwrap(), Value::from(k.as_str()));
        }
    }
}
