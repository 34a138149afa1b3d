//! The data model of nonstop: rules, responses, typed values, wire messages.
//!
//! # Overview
//! - [`Rule`]: what a user asks for at a location (the API body and the rules file form).
//! - [`Response`]: what one hit produced, with its [`Value`]s.
//! - [`views`]: what the server's API answers about rules, agents and metric series.
//! - [`templates::Template`]: the named templates ("dump frame", "log line", …) that
//!   expand into plain rules.
//!
//! No I/O here; every type's serde form is the JSON contract of DESIGN.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod check;
pub mod debug;
pub mod defaults;
pub mod grammar;
pub mod metrics;
pub mod response;
pub mod rule;
pub mod templates;
pub mod value;
pub mod views;
pub mod wire;

pub use grammar::{Rate, parse_duration, parse_rate};
pub use metrics::MetricSeries;
pub use response::{
    Frame, Locals, Response, SourceLocation, fold_runtime_frames, is_runtime_frame,
};
pub use rule::{Action, CaptureLimits, Limits, Metric, MetricKind, Rule, RuleStatus, StatusKind};
pub use value::{Data, RefCounts, Value};
pub use wire::{AgentInfo, AgentMessage, ServerMessage};
