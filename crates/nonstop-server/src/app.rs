//! The state every handler shares, and the path of responses: ingest (store, then stream)
//! and the live stream of responses (`GET /api/v1/responses/stream`).

use crate::error::{ApiError, checked_id, query};
use crate::ids::Tokens;
use crate::sources::Sources;
use crate::store::{BatchJob, BatchWrite, Retention, RuleState, Store, StoreError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nonstop_model::{AgentInfo, Response as AgentResponse, Rule};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// A stored response on its way to live streams.
pub(crate) struct LiveResponse {
    /// Its id in the store; live streams send it as the event id.
    pub(crate) id: i64,
    pub(crate) rule: String,
    pub(crate) json: String,
}

/// Where an agent's writes come from, which decides how they reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// An HTTP request: its hello, when it has one, recorded first (as not connected).
    /// Requests carry a batch each; the store's writer, where there is one, groups those
    /// of requests that come at once.
    Request { hello: bool },
    /// A WebSocket session, which groups what its socket has buffered by itself: its
    /// writes go straight to the store (grouping them again measured 20 % slower).
    Session,
}

/// The state every handler shares.
pub(crate) struct App {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: Option<Tokens>,
    pub(crate) retention: Retention,
    /// Bumped whenever any rule changes; each agent session recomputes its set.
    pub(crate) rules_gen: watch::Sender<u64>,
    /// The active, enabled rules as of a generation of `rules_gen`: what every agent's set
    /// is chosen from, read from the store once per change instead of once per request.
    pub(crate) active_rules: Mutex<Option<(u64, Arc<Vec<Rule>>)>>,
    pub(crate) live: broadcast::Sender<Arc<LiveResponse>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Open WebSocket connections per agent id.
    pub(crate) connections: Mutex<HashMap<String, usize>>,
    /// Where the web IDE reads code.
    pub(crate) sources: Arc<Sources>,
    /// The largest capture limits a rule may ask for.
    pub(crate) max_limits: nonstop_model::CaptureLimits,
    /// On a store replicas share: wakes the relay that feeds `live` from the store in id
    /// order (responses ingested here and by other replicas alike), instead of sending
    /// them from `ingest`.
    pub(crate) relay: Option<Arc<tokio::sync::Notify>>,
    /// The delivery pipeline to targets.
    pub(crate) outbox: Arc<crate::outbox::Outbox>,
    /// Where agents' batches are written, grouped, when the store takes one writer at a
    /// time; `None`: each on the blocking pool.
    pub(crate) writer: Option<crate::writer::Writer>,
    /// Agents of the HTTP routes seen within [`SEEN_FOR_MS`], with when: a request naming
    /// one by `?agent=ID` is answered without a store call to check and touch it.
    pub(crate) seen: Mutex<HashMap<String, (AgentInfo, i64)>>,
}

/// How long an HTTP agent's check and `last_seen` touch stand for its next requests.
pub(crate) const SEEN_FOR_MS: i64 = 1_000;
/// The most agents remembered as seen; past it the memory starts over.
const SEEN_MAX: usize = 16_384;

impl App {
    /// The agent `id` when it was checked and touched within [`SEEN_FOR_MS`] of `now_ms`.
    pub(crate) fn seen_recently(&self, id: &str, now_ms: i64) -> Option<AgentInfo> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(id)
            .filter(|(_, at)| now_ms.saturating_sub(*at) < SEEN_FOR_MS)
            .map(|(info, _)| info.clone())
    }

    /// Remembers that `info` was checked (or registered) and touched at `now_ms`.
    pub(crate) fn note_seen(&self, info: &AgentInfo, now_ms: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SEEN_MAX && !seen.contains_key(&info.id) {
            seen.clear();
        }
        seen.insert(info.id.clone(), (info.clone(), now_ms));
    }

    /// Runs a store call on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    pub(crate) fn rules_changed(&self) {
        self.rules_gen.send_modify(|g| *g += 1);
    }

    /// The active, enabled rules that select `info`.
    pub(crate) async fn rules_for(&self, info: &AgentInfo) -> Result<Vec<Rule>, StoreError> {
        Ok(self
            .active_rules()
            .await?
            .iter()
            .filter(|r| r.selects(info))
            .cloned()
            .collect())
    }

    /// The active, enabled rules, from the cache while no rule changed since it was filled.
    async fn active_rules(&self) -> Result<Arc<Vec<Rule>>, StoreError> {
        // The generation is read before the store: a change that lands in between bumps it
        // again after, so what is cached is never older than its generation says.
        let generation = *self.rules_gen.borrow();
        if let Some((g, rules)) = &*self.active_rules.lock().unwrap_or_else(|p| p.into_inner())
            && *g == generation
        {
            return Ok(rules.clone());
        }
        let rules: Arc<Vec<Rule>> = Arc::new(
            self.blocking(|s| {
                Ok(s.rules()?
                    .into_iter()
                    .filter(|r| r.state == RuleState::Active && r.enabled)
                    .map(|r| r.rule)
                    .collect())
            })
            .await?,
        );
        let mut cache = self.active_rules.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the newest generation when two requests filled the cache at once.
        if cache.as_ref().is_none_or(|(g, _)| *g <= generation) {
            *cache = Some((generation, rules.clone()));
        }
        Ok(rules)
    }

    /// Stores responses, streams the stored ones, and pushes new rule sets when a rule
    /// reached its max hits. Returns a note for the agent when some responses were for rules
    /// the server does not know (deleted or never created). [`App::write_batch`] with one write.
    pub(crate) async fn ingest(
        &self,
        info: &AgentInfo,
        responses: Vec<AgentResponse>,
        dropped: u64,
    ) -> Result<Option<String>, StoreError> {
        let notes = self
            .write_batch(
                info,
                Link::Session,
                vec![BatchWrite::Responses { responses, dropped }],
            )
            .await?;
        Ok(notes.into_iter().next().flatten())
    }

    /// Applies an agent's writes in order in one store call, recording its hello first when
    /// `link` is a request with one; streams the stored responses and pushes new
    /// rule sets when a rule reached its max hits. A response speaks for its sender: its
    /// `agent` and `service` are the sender's hello's. Returns, per write, a note for the
    /// agent when some of its responses were for rules the server does not know (deleted or
    /// never created).
    pub(crate) async fn write_batch(
        &self,
        info: &AgentInfo,
        link: Link,
        mut writes: Vec<BatchWrite>,
    ) -> Result<Vec<Option<String>>, StoreError> {
        for w in &mut writes {
            if let BatchWrite::Responses { responses, .. } = w {
                for r in responses {
                    if r.agent != info.id {
                        r.agent.clone_from(&info.id);
                    }
                    if r.service != info.service {
                        r.service.clone_from(&info.service);
                    }
                }
            }
        }
        let (hello, grouped) = match link {
            Link::Request { hello } => (hello, true),
            Link::Session => (false, false),
        };
        let job = BatchJob {
            agent: info.clone(),
            hello: hello.then_some(false),
            writes,
        };
        let done = match &self.writer {
            Some(writer) if grouped => writer.write(job).await?,
            _ => {
                let retention = self.retention;
                self.blocking(move |s| job.write_alone(s, crate::clock::now_ms(), retention))
                    .await?
            }
        };
        let mut notes = Vec::with_capacity(done.len());
        let (mut stored, mut queued, mut finished) = (Vec::new(), 0, Vec::new());
        for ins in done {
            if ins.refused > 0 {
                tracing::debug!(
                    agent = %info.id,
                    refused = ins.refused,
                    "responses for inactive or full rules dropped"
                );
            }
            notes.push((!ins.unknown.is_empty()).then(|| {
                format!(
                    "responses for unknown rules were not kept: {} (deleted, or never created on this server); \
                     the agent's next rule set leaves them out",
                    ins.unknown.join(", ")
                )
            }));
            stored.extend(ins.stored);
            queued += ins.queued;
            finished.extend(ins.done);
        }
        if let Some(relay) = &self.relay {
            if !stored.is_empty() {
                relay.notify_one();
            }
        } else {
            self.send_live(stored);
        }
        if queued > 0 {
            self.outbox.wake();
        }
        if !finished.is_empty() {
            tracing::info!(rules = ?finished, "rules reached their max hits");
            self.rules_changed();
        }
        Ok(notes)
    }

    /// Sends stored responses to the live streams of this server.
    pub(crate) fn send_live(&self, stored: Vec<(i64, AgentResponse)>) {
        for (id, r) in stored {
            if let Ok(json) = serde_json::to_string(&r) {
                let live = LiveResponse {
                    id,
                    rule: r.rule,
                    json,
                };
                let _ = self.live.send(Arc::new(live));
            }
        }
    }

    /// Stores an agent's metric series and pushes new rule sets when a metric rule
    /// reached its max hits.
    pub(crate) async fn ingest_metrics(
        &self,
        agent: &str,
        series: Vec<nonstop_model::MetricSeries>,
    ) -> Result<(), StoreError> {
        let id = agent.to_string();
        let (done, queued) = self
            .blocking(move |s| {
                let now = crate::clock::now_ms();
                let done = s.upsert_metrics(&id, &series, now)?;
                let entries = crate::outbox::metric_entries(s, &id, &series, now)?;
                let queued = if entries.is_empty() {
                    0
                } else {
                    s.enqueue_outbox(&entries, now)?
                };
                Ok((done, queued))
            })
            .await?;
        if queued > 0 {
            self.outbox.wake();
        }
        if done.refused > 0 || done.stale > 0 {
            tracing::debug!(
                agent,
                refused = done.refused,
                stale = done.stale,
                "metric series for inactive rules, past the series cap, or older than stored were not kept"
            );
        }
        if !done.done.is_empty() {
            tracing::info!(rules = ?done.done, "metric rules reached their max hits");
            self.rules_changed();
        }
        Ok(())
    }

    pub(crate) fn connection_opened(&self, agent: &str) {
        let mut c = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(agent.to_string()).or_default() += 1;
    }

    pub(crate) async fn connection_closed(&self, agent: &str) {
        let last = {
            let mut c = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            let n = c.entry(agent.to_string()).or_default();
            *n = n.saturating_sub(1);
            let last = *n == 0;
            if last {
                c.remove(agent);
            }
            last
        };
        if last {
            let id = agent.to_string();
            let _ = self
                .blocking(move |s| s.touch_agent(&id, Some(false), crate::clock::now_ms()))
                .await;
        }
    }
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
    rx: tokio::sync::broadcast::Receiver<Arc<LiveResponse>>,
    rule: Option<String>,
    /// The id of the last response sent, or the one it starts after (the newest stored
    /// when it opened, or the resumed one).
    last: i64,
    /// Every response with an id up to this one is handled (sent, or not this stream's
    /// rule): a live response with the next id can be sent as it comes; one further on
    /// means some before it are not here yet.
    seen: i64,
    /// The highest id of a live response not sent because it came too early: everything
    /// up to it is read from the store, in store order, before anything newer is sent.
    gap_to: i64,
    /// Responses read from the store, not yet sent.
    backlog: std::collections::VecDeque<(i64, String)>,
    /// Whether the store may hold more than the backlog (a full page was read).
    behind: bool,
    /// A `missed` event to send before the backlog: ids after `last` that the store no
    /// longer holds (pruned by retention, or deleted with their rule, before this stream
    /// got them).
    missed: Option<Missed>,
}

/// Data of a `missed` event: the stream goes on at `next` after `after`, and the responses
/// stored between them (at most `count`) are gone from the store.
#[derive(serde::Serialize)]
struct Missed {
    after: i64,
    next: i64,
    count: i64,
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
                // Ids are handed out one after another, so a first id past the next one
                // means responses were removed before this stream read them. Only an
                // unfiltered stream can tell: a rule's ids are interleaved with others'.
                if self.rule.is_none()
                    && let Some((first, _)) = page.first()
                    && *first > self.last.saturating_add(1)
                {
                    self.missed = Some(Missed {
                        after: self.last,
                        next: *first,
                        count: first - self.last - 1,
                    });
                }
                if !self.behind {
                    // The store was read after the early response was stored, and the
                    // store hands out ids in commit order: nothing up to it is still to come.
                    self.seen = self.seen.max(self.gap_to);
                }
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
            if let Some(m) = self.missed.take() {
                tracing::debug!(
                    after = m.after,
                    next = m.next,
                    "a live stream missed pruned responses"
                );
                let data = serde_json::to_string(&m).unwrap_or_default();
                return Some((Ok(Event::default().event("missed").data(data)), self));
            }
            if let Some((id, json)) = self.backlog.pop_front() {
                self.last = id;
                self.seen = self.seen.max(id);
                let event = Event::default().id(id.to_string()).data(json);
                return Some((Ok(event), self));
            }
            match self.rx.recv().await {
                Ok(live) if live.id <= self.seen => {}
                // Sessions store in turn but broadcast as they finish, so a response can
                // come before one stored just ahead of it. The next id is safe to send; a
                // later one waits for the store, which holds both in order.
                Ok(live) if live.id == self.seen.saturating_add(1) => {
                    self.seen = live.id;
                    if self.rule.as_deref().is_none_or(|r| r == live.rule) {
                        self.last = live.id;
                        let event = Event::default()
                            .id(live.id.to_string())
                            .data(live.json.as_str());
                        return Some((Ok(event), self));
                    }
                }
                Ok(live) => {
                    self.gap_to = self.gap_to.max(live.id);
                    self.behind = true;
                }
                // Fallen behind the live channel: what was missed is in the store.
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "a live stream catches up from the store");
                    self.behind = true;
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
    let rx = app.live.subscribe();
    let last = match resume {
        Some(id) => id.max(0),
        // A new stream starts after the newest response stored now.
        None => app.blocking(|s| s.last_response_id()).await?,
    };
    let stream = Stream {
        rx,
        rule: q.rule,
        last,
        seen: last,
        gap_to: last,
        backlog: Default::default(),
        behind: resume.is_some(),
        missed: None,
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
