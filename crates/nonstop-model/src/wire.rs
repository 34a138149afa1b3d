//! The agent ↔ server wire protocol.
//!
//! Messages are JSON objects tagged by `"type"`, one per WebSocket text frame on
//! `/agent/v1/ws`. The HTTP path for serverless agents carries the same objects:
//! `POST /agent/v1/responses` takes one [`AgentMessage`] or a JSON array of them, and
//! `GET /agent/v1/poll?agent=ID` answers with a [`ServerMessage::Rules`].
//!
//! A session on the WebSocket:
//! 1. the agent sends [`AgentMessage::Hello`] first (anything else closes the connection);
//! 2. the server answers with [`ServerMessage::Rules`]: every rule that selects this agent;
//! 3. the server sends `Rules` again, whole, whenever that set changes (added, removed, done,
//!    expired); the agent arms what is new and disarms what is gone;
//! 4. the agent sends [`AgentMessage::Status`] when a rule's state changes,
//!    [`AgentMessage::Responses`] in batches, [`AgentMessage::Metrics`] (cumulative
//!    series of its metric rules) about once a second while they change, and
//!    [`AgentMessage::Ping`] every 10 s.
//!
//! After a reconnect the agent starts again at step 1, so it never needs to remember
//! what the server sent before. Unknown fields are ignored so that agents and servers
//! of neighbouring versions can talk.

pub use crate::agent::AgentInfo;
use crate::metrics::MetricSeries;
use crate::response::Response;
use crate::rule::{Rule, RuleStatus};
use serde::{Deserialize, Serialize};

/// A message from an agent to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The first message of every connection: who is speaking.
    Hello {
        /// The agent.
        agent: AgentInfo,
    },
    /// The state of some rules on this agent (only those that changed need be sent).
    Status {
        /// One entry per rule.
        statuses: Vec<RuleStatus>,
    },
    /// A batch of responses.
    Responses {
        /// The responses, oldest first.
        responses: Vec<Response>,
        /// Responses the agent dropped since its last batch because its buffer was full.
        /// Should be 0; if greater, data is missing.
        #[serde(default)]
        dropped: u64,
    },
    /// The series of this agent's metric rules that changed, each with its cumulative
    /// values since the agent started (so a lost or repeated report changes nothing).
    Metrics {
        /// The series.
        series: Vec<MetricSeries>,
    },
    /// Keep-alive, every 10 s; the server answers with [`ServerMessage::Pong`].
    Ping,
}

/// A message from the server to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The full set of rules that select this agent. Replaces any set sent before.
    Rules {
        /// The rules, with every default filled in by the server.
        rules: Vec<Rule>,
    },
    /// The answer to a [`AgentMessage::Ping`].
    Pong,
    /// The server could not use a message; the text says why. On the WebSocket a
    /// close frame follows when the connection cannot go on.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Action;

    #[test]
    fn messages_have_the_documented_json_form() {
        let ping = serde_json::to_string(&AgentMessage::Ping).unwrap();
        assert_eq!(ping, r#"{"type":"ping"}"#);
        let hello: AgentMessage = serde_json::from_str(
            r#"{"type":"hello","agent":{"id":"a1","service":"checkout","host":"h","pid":7,"started":"2026-01-01T00:00:00Z","future_field":1}}"#,
        )
        .unwrap();
        let AgentMessage::Hello { agent } = hello else {
            panic!("not a hello")
        };
        assert_eq!((agent.id.as_str(), agent.pid), ("a1", 7));
        let batch: AgentMessage =
            serde_json::from_str(r#"{"type":"responses","responses":[]}"#).unwrap();
        assert_eq!(
            batch,
            AgentMessage::Responses {
                responses: vec![],
                dropped: 0
            }
        );
        let rules = ServerMessage::Rules {
            rules: vec![
                serde_json::from_str::<Rule>(r#"{"id":"r-1","at":"a.rs:3","action":"snapshot"}"#)
                    .unwrap(),
            ],
        };
        assert_eq!(
            serde_json::to_string(&rules).unwrap(),
            r#"{"type":"rules","rules":[{"id":"r-1","at":"a.rs:3","action":"snapshot"}]}"#
        );
        let ServerMessage::Rules { rules } = rules else {
            unreachable!()
        };
        assert_eq!(rules[0].action, Action::Snapshot);
    }
}
