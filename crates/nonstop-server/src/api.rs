//! The REST API under `/api/v1` and the live stream of responses.

use crate::App;
use crate::clock::{now_ms, rfc3339};
use crate::store::{AgentRecord, AgentRuleStatus, RuleState, StoreError, StoredRule};
use crate::validate;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nonstop_model::{AgentInfo, Rule, StatusKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;

/// An error answered as `{"error": "…"}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and a message that says what to do.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server's store failed ({e}); see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// A JSON body whose every failure (too large, malformed, unknown field) is an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this route accepts: send less at once",
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rej}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body into `T`, with an error that says where it went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "invalid JSON body"
        } else {
            "malformed JSON"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

pub(crate) fn checked_id(id: &str) -> Result<(), ApiError> {
    if validate::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid rule id {id:?}: ids are 1-64 letters, digits, `-`, `_` or `.`; list them with GET /api/v1/rules"
        )))
    }
}

/// A rule with its server-side state and its status on each agent.
#[derive(Debug, Serialize)]
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
}

/// A rule's status on one agent.
#[derive(Debug, Serialize)]
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
}

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
    }
}

/// An agent as the API shows it.
#[derive(Debug, Serialize)]
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
            let mut out = Vec::new();
            for r in s.rules()? {
                let st = s.statuses(&r.rule.id)?;
                out.push(rule_view(r, st, &agents));
            }
            Ok(out)
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
            Some(r) => Ok(Some(rule_view(r, s.statuses(&key)?, &s.agents()?))),
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
            Some(r) => Ok(Some(rule_view(r, s.statuses(&key)?, &s.agents()?))),
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
    let limit = q.limit.unwrap_or(100).min(10_000);
    let responses = app
        .blocking(move |s| s.responses(q.rule.as_deref(), limit))
        .await?;
    Ok(Json(responses).into_response())
}

/// The query of `GET /api/v1/responses/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this rule's responses.
    pub rule: Option<String>,
    /// Start after the response with this event id (as the `Last-Event-ID` header does).
    pub after: Option<i64>,
    /// The UI's token (read by the auth layer, ignored here).
    #[serde(default, rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// Responses read from the store per step when a stream catches up.
const CATCH_UP: u64 = 1000;

/// The state of one live stream.
struct Stream {
    app: Arc<App>,
    rx: tokio::sync::broadcast::Receiver<Arc<crate::LiveResponse>>,
    rule: Option<String>,
    /// The id of the last response sent (or resumed after); 0 before any.
    last: i64,
    /// Responses read from the store, not yet sent.
    backlog: std::collections::VecDeque<(i64, String)>,
    /// Whether the store may hold more than the backlog (a full page was read).
    behind: bool,
}

impl Stream {
    /// Reads the next page of what was stored after `last`.
    async fn catch_up(&mut self) {
        let (rule, after) = (self.rule.clone(), self.last);
        match self
            .app
            .blocking(move |s| s.responses_after(rule.as_deref(), after, CATCH_UP))
            .await
        {
            Ok(page) => {
                self.behind = page.len() as u64 == CATCH_UP;
                self.backlog.extend(
                    page.into_iter()
                        .filter_map(|(id, r)| serde_json::to_string(&r).ok().map(|j| (id, j))),
                );
            }
            Err(e) => {
                tracing::error!("a live stream cannot catch up: {e}");
                self.behind = false;
            }
        }
    }

    /// The next event, or `None` when the server stops.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Stream)> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if self.backlog.is_empty() && self.behind {
                self.catch_up().await;
            }
            if let Some((id, json)) = self.backlog.pop_front() {
                self.last = id;
                let event = Event::default().id(id.to_string()).data(json);
                return Some((Ok(event), self));
            }
            match self.rx.recv().await {
                Ok(live) => {
                    let wanted = self.rule.as_deref().is_none_or(|r| r == live.rule);
                    if live.id > self.last && wanted {
                        self.last = live.id;
                        let event = Event::default()
                            .id(live.id.to_string())
                            .data(live.json.as_str());
                        return Some((Ok(event), self));
                    }
                }
                // Fallen behind the live channel: what was missed is in the store.
                Err(RecvError::Lagged(n)) if self.last > 0 => {
                    tracing::debug!(missed = n, "a live stream catches up from the store");
                    self.behind = true;
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "a live stream fell behind before its first response"
                    );
                    let note = Event::default().comment("missed responses: the stream fell behind");
                    return Some((Ok(note), self));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /api/v1/responses/stream`: Server-Sent Events, each event's data one Response JSON
/// and its id the response's id in the store. A client that reconnects with
/// `Last-Event-ID` (or `?after=ID`) first gets what it missed, then the live ones.
pub async fn stream_responses(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    if let Some(r) = &q.rule {
        checked_id(r)?;
    }
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event id this stream sent")
                })?,
        ),
        None => q.after,
    };
    // Subscribe before reading the store, so nothing falls between the two.
    let stream = Stream {
        rx: app.live.subscribe(),
        rule: q.rule,
        last: resume.unwrap_or(0).max(0),
        backlog: Default::default(),
        behind: resume.is_some(),
        app: app.clone(),
    };
    let mut shutdown = app.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let events = futures_util::stream::unfold(stream, Stream::next).take_until(Box::pin(stop));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
