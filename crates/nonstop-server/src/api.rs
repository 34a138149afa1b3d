//! The REST API under `/api/v1` and the live stream of responses.

use crate::app::App;
use crate::clock::{now_ms, rfc3339};
use crate::error::{ApiError, JsonBody, checked_id, query};
use crate::store::{AgentRecord, AgentRuleStatus, RuleState, StoreError, StoredRule};
use crate::validate;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nonstop_model::{Rule, StatusKind};
use serde::Deserialize;
use std::sync::Arc;

pub use nonstop_model::views::{AgentView, RuleView, StatusView};

/// A rule's view: its reported statuses, plus `pending` for each connected agent it
/// selects that has not reported on it yet.
fn rule_view(r: StoredRule, statuses: Vec<AgentRuleStatus>, agents: &[AgentRecord]) -> RuleView {
    let connected = |id: &str| agents.iter().any(|a| a.info.id == id && a.connected);
    // A rule that ended on the server left every agent's set, and the agents disarmed it;
    // an agent's last word from before ("armed") would say otherwise.
    let ended = match r.state {
        RuleState::Active if !r.enabled => Some((
            StatusKind::Disabled,
            "the rule is disabled; this agent disarmed it (enable it to arm it again)",
        )),
        RuleState::Active => None,
        RuleState::Done => Some((
            StatusKind::Done,
            "the rule reached its max hits over all agents; this agent disarmed it",
        )),
        RuleState::Expired => Some((
            StatusKind::Expired,
            "the rule's time ran out; this agent disarmed it",
        )),
    };
    let mut views: Vec<StatusView> = statuses
        .into_iter()
        .map(|mut s| {
            if let Some((kind, why)) = ended
                && matches!(
                    s.status.status,
                    StatusKind::Pending | StatusKind::Armed | StatusKind::RateLimited
                )
            {
                s.status.status = kind;
                s.status.message = Some(why.to_string());
                s.status.probes = 0;
            }
            s
        })
        .map(|s| StatusView {
            connected: connected(&s.agent),
            agent: s.agent,
            status: s.status.status,
            message: s.status.message,
            probes: s.status.probes,
            hits: s.status.hits,
            dropped: s.status.dropped,
            updated: rfc3339(s.updated_ms),
            fast_path: s.status.fast_path,
        })
        .collect();
    if r.state == RuleState::Active && r.enabled {
        for a in agents {
            if a.connected && r.rule.selects(&a.info) && !views.iter().any(|v| v.agent == a.info.id)
            {
                views.push(StatusView {
                    agent: a.info.id.clone(),
                    status: StatusKind::Pending,
                    message: None,
                    probes: 0,
                    hits: 0,
                    dropped: 0,
                    updated: rfc3339(a.last_seen_ms),
                    connected: true,
                    fast_path: None,
                });
            }
        }
        views.sort_by(|a, b| a.agent.cmp(&b.agent));
    }
    RuleView {
        rule: r.rule,
        state: r.state,
        enabled: r.enabled,
        created: rfc3339(r.created_ms),
        expires_at: r.expires_ms.map(rfc3339),
        hits: r.hits,
        agents: views,
        deliveries: Vec::new(),
    }
}

/// A rule's deliveries per target, from (target, state, count) rows.
fn deliveries(rows: Vec<(String, String, u64)>) -> Vec<nonstop_model::views::DeliveryCounts> {
    let mut out: Vec<nonstop_model::views::DeliveryCounts> = Vec::new();
    for (target, state, n) in rows {
        if out.last().is_none_or(|d| d.target != target) {
            out.push(nonstop_model::views::DeliveryCounts {
                target: target.clone(),
                ..Default::default()
            });
        }
        if let Some(d) = out.last_mut() {
            match state.as_str() {
                "pending" => d.pending += n,
                "sent" | "skipped" => d.sent += n,
                "failed" => d.failed += n,
                _ => d.dropped += n,
            }
        }
    }
    out
}

/// A rule's view with its deliveries.
fn rule_view_in(
    s: &dyn crate::store::Store,
    r: StoredRule,
    statuses: Vec<AgentRuleStatus>,
    agents: &[AgentRecord],
) -> Result<RuleView, StoreError> {
    let rows = if r.rule.to.iter().any(|t| t != "ui") {
        s.rule_deliveries(&r.rule.id)?
    } else {
        Vec::new()
    };
    let mut v = rule_view(r, statuses, agents);
    v.deliveries = deliveries(rows);
    Ok(v)
}

fn agent_view(a: AgentRecord) -> AgentView {
    AgentView {
        info: a.info,
        connected: a.connected,
        first_seen: rfc3339(a.first_seen_ms),
        last_seen: rfc3339(a.last_seen_ms),
        dropped: a.dropped,
    }
}

/// `GET /api/v1/rules`
pub async fn list_rules(State(app): State<Arc<App>>) -> Result<Json<Vec<RuleView>>, ApiError> {
    let views = app
        .blocking(|s| {
            let agents = s.agents()?;
            s.rules_with_statuses()?
                .into_iter()
                .map(|(r, st)| rule_view_in(s, r, st, &agents))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(views))
}

/// `POST /api/v1/rules`
pub async fn create_rule(
    State(app): State<Arc<App>>,
    JsonBody(mut rule): JsonBody<Rule>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    validate::check_and_fill(&mut rule, &app.max_limits).map_err(ApiError::bad_request)?;
    crate::targets::check_routes(&app, &rule.to).await?;
    let generated = rule.id.is_empty();
    let created_ms = now_ms();
    let expires_ms = match &rule.expires {
        Some(e) => {
            let d = validate::parse_expires(e).map_err(ApiError::bad_request)?;
            Some(created_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let mut stored = StoredRule {
        rule,
        created_ms,
        expires_ms,
        state: RuleState::Active,
        enabled: true,
        hits: 0,
    };
    let mut attempts = 0;
    loop {
        if generated {
            stored.rule.id = validate::new_rule_id();
        }
        let s = stored.clone();
        match app.blocking(move |st| st.insert_rule(&s)).await {
            Ok(()) => break,
            Err(StoreError::DuplicateRule(id)) if !generated || attempts >= 3 => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("a rule with id {id} exists already: pick another id or leave it out"),
                ));
            }
            Err(StoreError::DuplicateRule(_)) => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(rule = %stored.rule.id, at = %stored.rule.at, "rule added");
    app.rules_changed();
    Ok((
        StatusCode::CREATED,
        Json(rule_view(stored, Vec::new(), &[])),
    ))
}

/// `GET /api/v1/rules/{id}`
pub async fn get_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    checked_id(&id)?;
    let key = id.clone();
    let found = app
        .blocking(move |s| match s.rule(&key)? {
            Some(r) => Ok(Some(rule_view_in(s, r, s.statuses(&key)?, &s.agents()?)?)),
            None => Ok(None),
        })
        .await?;
    found.map(Json).ok_or_else(|| no_rule(&id))
}

fn no_rule(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no rule {id}: list the rules with GET /api/v1/rules (`nonstop rules list`)"),
    )
}

/// `DELETE /api/v1/rules/{id}`
pub async fn delete_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    checked_id(&id)?;
    let key = id.clone();
    if app.blocking(move |s| s.delete_rule(&key)).await? {
        tracing::info!(rule = %id, "rule removed");
        app.rules_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_rule(&id))
    }
}

/// `POST /api/v1/rules/{id}/enable`: sends the rule to its agents again; hits go on
/// counting toward its max hits. A `done` or `expired` rule cannot be enabled (409).
pub async fn enable_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    set_enabled(app, id, true).await
}

/// `POST /api/v1/rules/{id}/disable`: takes the rule from its agents (they disarm it and
/// restore the program's bytes); its hits, statuses and responses are kept.
pub async fn disable_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    set_enabled(app, id, false).await
}

async fn set_enabled(app: Arc<App>, id: String, enabled: bool) -> Result<Json<RuleView>, ApiError> {
    checked_id(&id)?;
    let key = id.clone();
    let current = app.blocking(move |s| s.rule(&key)).await?;
    let current = current.ok_or_else(|| no_rule(&id))?;
    if enabled && current.state != RuleState::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "rule {id} is {} and cannot run again: add a new rule (`nonstop rules add`)",
                current.state.as_str()
            ),
        ));
    }
    let key = id.clone();
    let view = app
        .blocking(move |s| match s.set_enabled(&key, enabled)? {
            Some(r) => Ok(Some(rule_view_in(s, r, s.statuses(&key)?, &s.agents()?)?)),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| no_rule(&id))?;
    if current.enabled != enabled {
        let what = if enabled { "enabled" } else { "disabled" };
        tracing::info!(rule = %id, "rule {what}");
        app.rules_changed();
    }
    Ok(Json(view))
}

/// `GET /api/v1/templates`: the named rule templates, with their parameters.
pub async fn list_templates() -> Json<&'static [nonstop_model::templates::Template]> {
    Json(nonstop_model::templates::TEMPLATES)
}

/// `GET /api/v1/agents`
pub async fn list_agents(State(app): State<Arc<App>>) -> Result<Json<Vec<AgentView>>, ApiError> {
    let agents = app.blocking(|s| s.agents()).await?;
    Ok(Json(agents.into_iter().map(agent_view).collect()))
}

/// The largest `limit` of `GET /api/v1/responses` (the OpenAPI document's maximum).
const MAX_RESPONSES_LIMIT: u64 = 10_000;

/// The query of `GET /api/v1/responses`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesQuery {
    /// Only this rule's responses.
    pub rule: Option<String>,
    /// At most this many, the newest (default 100, at most 10,000).
    pub limit: Option<u64>,
    /// The UI's token (read by the auth layer, ignored here).
    #[serde(default, rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// `GET /api/v1/responses`
pub async fn list_responses(
    State(app): State<Arc<App>>,
    q: Result<Query<ResponsesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    if let Some(r) = &q.rule {
        checked_id(r)?;
    }
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_RESPONSES_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit={limit} is too large: at most {MAX_RESPONSES_LIMIT} responses per request"
        )));
    }
    let responses = app
        .blocking(move |s| s.responses(q.rule.as_deref(), limit))
        .await?;
    Ok(Json(responses).into_response())
}
