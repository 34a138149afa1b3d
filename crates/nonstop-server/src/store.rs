//! The store interface: rules, agents, statuses, the recent window of responses, and the
//! newest metric series of each agent.
//!
//! Calls block; the server runs them on tokio's blocking pool. [`crate::sqlite::SqliteStore`]
//! is the store of one server; [`crate::postgres::PgStore`] the one several replicas share
//! (counters such as a rule's hits are single atomic `UPDATE`s, not read-modify-write, so
//! they hold across replicas). A shared store ([`Store::shared`]) tells each replica what
//! the others changed ([`Store::listen`]) and keeps agent presence as a lease that the
//! replica holding the connection renews ([`Store::renew_leases`]).

use nonstop_model::metrics::MetricSeries;
use nonstop_model::{AgentInfo, Response, Rule, RuleStatus};
use std::sync::atomic::AtomicBool;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(String),
    /// Stored JSON could not be read back.
    #[error("stored {what} is not valid JSON: {source}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A rule with this id exists already.
    #[error("a rule with id {0} exists already")]
    DuplicateRule(String),
}

pub use nonstop_model::views::RuleState;

/// A rule as stored, with its server-side state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    /// The rule, defaults filled in.
    pub rule: Rule,
    /// Created, Unix ms.
    pub created_ms: i64,
    /// When it expires, Unix ms.
    pub expires_ms: Option<i64>,
    /// Its state.
    pub state: RuleState,
    /// Whether it is sent to agents. A disabled rule keeps its state, hits, statuses and
    /// responses; its time keeps running toward `expires_ms`.
    pub enabled: bool,
    /// Responses stored for it so far, over all agents.
    /// Hits so far over all agents: responses stored, or for a metric rule the sum of its
    /// series' counts.
    pub hits: u64,
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// What it said in its hello.
    pub info: AgentInfo,
    /// Whether it holds a WebSocket connection now.
    pub connected: bool,
    /// First seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last seen, Unix ms.
    pub last_seen_ms: i64,
    /// Responses it reported dropped, in all.
    pub dropped: u64,
}

/// A rule's status on one agent, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRuleStatus {
    /// The agent.
    pub agent: String,
    /// The status it reported.
    pub status: RuleStatus,
    /// When, Unix ms.
    pub updated_ms: i64,
}

/// How long stored responses are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most responses kept per rule (the newest).
    pub per_rule: u64,
    /// Oldest response kept, in ms.
    pub max_age_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            per_rule: 10_000,
            max_age_ms: 7 * 86_400_000,
        }
    }
}

/// What [`Store::insert_responses`] did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The responses stored (and so to stream), in order, with their ids (which increase).
    pub stored: Vec<(i64, Response)>,
    /// Responses refused: unknown or inactive rule, or past the rule's max hits.
    pub refused: usize,
    /// The rules of refused responses that the store does not know (deleted, or never
    /// created), each once.
    pub unknown: Vec<String>,
    /// Rules that reached their max hits with this batch.
    pub done: Vec<String>,
    /// Outbox entries queued for targets with this batch.
    pub queued: usize,
}

/// One write of an agent's batch ([`Store::write_batch`]), in the order the agent sent it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BatchWrite {
    /// A `responses` message: its drops are added to the agent's count
    /// ([`Store::add_dropped`]), its responses stored ([`Store::insert_responses`]).
    Responses {
        /// The responses, already speaking for the sender (agent and service of its hello).
        responses: Vec<Response>,
        /// How many the agent dropped.
        dropped: u64,
    },
    /// A `status` message ([`Store::put_statuses`]).
    Statuses(Vec<RuleStatus>),
}

/// One agent's [`Store::write_batch`] as a part of [`Store::write_batches`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    /// The sender, as its hello said.
    pub agent: AgentInfo,
    /// `Some(connected)` records `agent` first (its hello), with whether it is connected.
    pub hello: Option<bool>,
    /// The writes, in the order the agent sent them.
    pub writes: Vec<BatchWrite>,
}

impl BatchJob {
    /// How many responses the job stores at most.
    pub fn responses(&self) -> usize {
        responses_in(&self.writes)
    }

    /// The job as one [`Store::write_batch`] call of its own.
    pub fn write_alone<S: Store + ?Sized>(
        self,
        store: &S,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Vec<Inserted>, StoreError> {
        let hello = self.hello.map(|connected| (&self.agent, connected));
        store.write_batch(&self.agent.id, hello, self.writes, now_ms, retention)
    }
}

/// How many responses `writes` store at most.
pub fn responses_in(writes: &[BatchWrite]) -> usize {
    writes
        .iter()
        .map(|w| match w {
            BatchWrite::Responses { responses, .. } => responses.len(),
            BatchWrite::Statuses(_) => 0,
        })
        .sum()
}

/// What [`Store::upsert_metrics`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MetricsStored {
    /// Series stored (new, or replacing an older report of the same series).
    pub stored: usize,
    /// Series refused: unknown, deleted, inactive or non-metric rule, a malformed
    /// histogram, or a new series past [`nonstop_model::metrics::MAX_SERIES_PER_RULE`]
    /// for that rule on that agent.
    pub refused: usize,
    /// Series ignored because the store holds a newer report of them (a higher count).
    pub stale: usize,
    /// Rules that reached their max hits with this report.
    pub done: Vec<String>,
}

/// One agent's newest report of one metric series.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSeries {
    /// The agent that reported it.
    pub agent: String,
    /// That agent's service.
    pub service: String,
    /// The cumulative values, as reported (name and kind as the rule says).
    pub series: MetricSeries,
    /// When the server received it, Unix ms.
    pub updated_ms: i64,
}

/// What another server on the same store changed, as [`Store::listen`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A rule was added, changed, removed, expired or finished: read the rules again.
    Rules,
    /// Responses were stored: read what came after the last one seen.
    Responses,
}

/// A target as stored, with its delivery counts.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTarget {
    /// Its name.
    pub name: String,
    /// Its settings: a `nonstop_sinks::TargetSpec`'s JSON, secrets whole.
    pub spec_json: String,
    /// Added (or last replaced), Unix ms.
    pub created_ms: i64,
    /// Why it is disabled (a webhook's 410), if it is; adding it again enables it.
    pub disabled: Option<String>,
    /// Deliveries the receiver took, in all.
    pub sent: u64,
    /// Deliveries the receiver refused for good, in all.
    pub failed: u64,
    /// Deliveries dropped by the outbox's bounds (age, size), in all.
    pub dropped: u64,
    /// The last error a delivery met (refused, retried, disabled).
    pub last_error: Option<String>,
    /// Deliveries waiting now.
    pub pending: u64,
    /// When the oldest waiting one was queued, Unix ms.
    pub oldest_pending_ms: Option<i64>,
}

/// One waiting item of a target's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Its row id (increasing: the order of delivery).
    pub id: i64,
    /// The delivery id, derived from the response when queued: the same on every send.
    pub delivery: String,
    /// `response` (the payload is a Response's JSON) or `metric`.
    pub kind: String,
    /// The payload's JSON.
    pub payload: String,
    /// Sends tried so far.
    pub attempts: u64,
    /// Queued, Unix ms.
    pub created_ms: i64,
    /// The rule it came from.
    pub rule: String,
}

/// What became of one outbox entry after a send.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The receiver took it.
    Sent,
    /// Refused for good, with the reason.
    Failed(String),
    /// The target does not take this kind of payload.
    Skipped,
    /// Still pending: tried once more, with what went wrong.
    Retry(String),
}

/// An entry to queue on a target's outbox ([`Store::enqueue_outbox`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// The target.
    pub target: String,
    /// The rule it comes from.
    pub rule: String,
    /// The delivery id (stable: the same payload gets the same id).
    pub delivery: String,
    /// `response` or `metric`.
    pub kind: String,
    /// The payload's JSON.
    pub payload: String,
}

/// Bounds of each target's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Pending entries older than this (ms) are dropped.
    pub max_age_ms: i64,
    /// Most pending entries per target (the newest kept).
    pub max_pending: u64,
    /// How long finished entries stay queryable (ms).
    pub keep_finished_ms: i64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_age_ms: 7 * 86_400_000,
            max_pending: 100_000,
            keep_finished_ms: 7 * 86_400_000,
        }
    }
}

/// Where the server keeps its state.
pub trait Store: Send + Sync + 'static {
    /// Adds a rule; [`StoreError::DuplicateRule`] when its id is taken.
    fn insert_rule(&self, rule: &StoredRule) -> Result<(), StoreError>;
    /// Every rule, oldest first.
    fn rules(&self) -> Result<Vec<StoredRule>, StoreError>;
    /// One rule.
    fn rule(&self, id: &str) -> Result<Option<StoredRule>, StoreError>;
    /// Enables or disables a rule; `None` when there is no such rule, else the rule after.
    fn set_enabled(&self, id: &str, enabled: bool) -> Result<Option<StoredRule>, StoreError>;
    /// Deletes a rule, its statuses and its metric series; false when there was none.
    fn delete_rule(&self, id: &str) -> Result<bool, StoreError>;
    /// Marks active rules whose time is up as expired; returns their ids.
    fn expire_rules(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Records an agent's hello (insert or update) and whether it is connected.
    fn upsert_agent(
        &self,
        info: &AgentInfo,
        connected: bool,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Updates an agent's last-seen time and, when given, its connection state.
    /// False when the agent is unknown.
    fn touch_agent(
        &self,
        id: &str,
        connected: Option<bool>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Marks every agent disconnected (on server start).
    fn disconnect_all(&self) -> Result<(), StoreError>;
    /// Adds to an agent's dropped-responses count.
    fn add_dropped(&self, agent: &str, dropped: u64) -> Result<(), StoreError>;
    /// One agent.
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// Every agent, most recently seen first.
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Records the statuses an agent reported.
    fn put_statuses(
        &self,
        agent: &str,
        statuses: &[RuleStatus],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// A rule's status on each agent that reported one.
    fn statuses(&self, rule: &str) -> Result<Vec<AgentRuleStatus>, StoreError>;
    /// Every rule, oldest first, each with its status on each agent that reported one
    /// (by agent): [`Store::rules`] and [`Store::statuses`] in one read.
    fn rules_with_statuses(&self) -> Result<Vec<(StoredRule, Vec<AgentRuleStatus>)>, StoreError>;

    /// The sources set through the API: service and the source's JSON (a
    /// `sources::SourceSpec`, token included), by service.
    fn sources(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Sets a service's source (its JSON); replaces the one before.
    fn put_source(&self, service: &str, spec_json: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Stores responses for active, enabled rules, up to each rule's max hits over all agents, then
    /// applies `retention`.
    fn insert_responses(
        &self,
        responses: Vec<Response>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Inserted, StoreError>;
    /// Records `hello` when given (with whether the agent is connected), then applies
    /// `writes` of agent `agent` in order, each with the semantics of its own call; returns
    /// what each did (an empty [`Inserted`] for statuses). Retention is applied once, after
    /// the last. One transaction where the store can (SQLite); by default the calls one by
    /// one, as before this method existed.
    fn write_batch(
        &self,
        agent: &str,
        hello: Option<(&AgentInfo, bool)>,
        writes: Vec<BatchWrite>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Vec<Inserted>, StoreError> {
        if let Some((info, connected)) = hello {
            self.upsert_agent(info, connected, now_ms)?;
        }
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(match w {
                BatchWrite::Responses { responses, dropped } => {
                    if dropped > 0 {
                        self.add_dropped(agent, dropped)?;
                    }
                    self.insert_responses(responses, now_ms, retention)?
                }
                BatchWrite::Statuses(statuses) => {
                    self.put_statuses(agent, &statuses, now_ms)?;
                    Inserted::default()
                }
            });
        }
        Ok(out)
    }
    /// Several [`Store::write_batch`] calls, of any agents, each with its own result, in one
    /// transaction where the store can (SQLite): the commit is shared, and a job that fails
    /// is rolled back alone. Retention is applied once, after the last. By default one call
    /// per job.
    fn write_batches(
        &self,
        jobs: Vec<BatchJob>,
        now_ms: i64,
        retention: Retention,
    ) -> Vec<Result<Vec<Inserted>, StoreError>> {
        jobs.into_iter()
            .map(|job| job.write_alone(self, now_ms, retention))
            .collect()
    }
    /// Writes `job` at once on the calling thread when the store is free this instant (no
    /// other call holds it), never waiting: for a small write that would cost less than its
    /// hand-off to another thread. Gives the job back when the store is busy, or cannot
    /// write without waiting (the default: a server store's client has a runtime of its own).
    fn write_now(
        &self,
        job: BatchJob,
        _now_ms: i64,
        _retention: Retention,
    ) -> Result<Result<Vec<Inserted>, StoreError>, Box<BatchJob>> {
        Err(Box::new(job))
    }
    /// Whether writes are best made by one writer that groups what waits into one
    /// [`Store::write_batches`] call: true for a store that takes one writer at a time
    /// anyway (SQLite), false by default (a server store takes writers in parallel).
    fn groups_writes(&self) -> bool {
        false
    }
    /// Deletes responses older than `retention` allows (inserts do this too; this covers
    /// rules that stopped receiving), and the metric series of agents not seen for that
    /// long. Returns how many rows went.
    fn prune_responses(&self, now_ms: i64, retention: Retention) -> Result<u64, StoreError>;
    /// Up to `limit` responses stored after the one with id `after` (of one rule, or all),
    /// oldest first, with their ids: what a live stream missed.
    fn responses_after(
        &self,
        rule: Option<&str>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, Response)>, StoreError>;
    /// The newest `limit` responses (of one rule, or all), oldest first.
    fn responses(&self, rule: Option<&str>, limit: u64) -> Result<Vec<Response>, StoreError>;

    /// Stores an agent's report of cumulative metric series: each replaces the agent's
    /// older report of the same (rule, tags) unless that one has a higher count. Only
    /// active metric rules take series, at most `MAX_SERIES_PER_RULE` per rule and agent.
    /// A metric rule's hits become the sum of its series' counts over all agents, and the
    /// rule turns `done` when that reaches its max hits.
    fn upsert_metrics(
        &self,
        agent: &str,
        series: &[MetricSeries],
        now_ms: i64,
    ) -> Result<MetricsStored, StoreError>;
    /// The newest series of every agent (of one rule, or all), by rule, agent and tags.
    fn metric_series(&self, rule: Option<&str>) -> Result<Vec<StoredSeries>, StoreError>;

    /// The id of the newest stored response (0 when there is none).
    fn last_response_id(&self) -> Result<i64, StoreError>;

    /// Adds a target, or replaces the settings of one with that name (and enables it
    /// again); true when it is new.
    fn put_target(&self, name: &str, spec_json: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Every target, by name.
    fn targets(&self) -> Result<Vec<StoredTarget>, StoreError>;
    /// One target.
    fn target(&self, name: &str) -> Result<Option<StoredTarget>, StoreError>;
    /// Deletes a target and its outbox; false when there was none.
    fn delete_target(&self, name: &str) -> Result<bool, StoreError>;
    /// Takes (or renews) the right to deliver for a target until `now_ms + lease_ms`:
    /// one server at a time drains a target's outbox, in order. False when another
    /// holds it, or the target is gone or disabled.
    fn claim_target(
        &self,
        name: &str,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` pending entries of a target's outbox, oldest first.
    fn outbox_pending(&self, target: &str, limit: u64) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Records what became of entries of a target's outbox (and counts them).
    fn settle_outbox(
        &self,
        target: &str,
        settled: &[(i64, Settled)],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Disables a target with the reason (a webhook's 410); its entries stay pending.
    fn disable_target(&self, name: &str, reason: &str) -> Result<(), StoreError>;
    /// Applies `limits` to a target's outbox: drops pending entries past its age and size
    /// (counted as dropped), forgets finished ones kept long enough. Returns how many
    /// were dropped.
    fn bound_outbox(
        &self,
        target: &str,
        limits: OutboxLimits,
        now_ms: i64,
    ) -> Result<u64, StoreError>;
    /// Queues entries on targets' outboxes (one that names a target gone or disabled is
    /// not queued); returns how many were.
    fn enqueue_outbox(&self, entries: &[NewEntry], now_ms: i64) -> Result<usize, StoreError>;
    /// A rule's deliveries: (target, state, count), by target and state.
    fn rule_deliveries(&self, rule: &str) -> Result<Vec<(String, String, u64)>, StoreError>;

    /// Whether several servers share this store: then agent presence is a lease renewed
    /// with [`Store::renew_leases`] (and [`Store::disconnect_all`] changes nothing), and
    /// [`Store::listen`] reports what the other servers change. False by default.
    fn shared(&self) -> bool {
        false
    }

    /// Renews the presence of the agents whose connections this server holds (a shared
    /// store's lease). Nothing by default: one server's connection flags are exact.
    fn renew_leases(&self, _agents: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The tokens every server on this store accepts: a shared store keeps the first
    /// `proposed` it is given and answers those; by default `proposed` itself.
    fn agree_tokens(
        &self,
        proposed: &crate::ids::Tokens,
    ) -> Result<crate::ids::Tokens, StoreError> {
        Ok(proposed.clone())
    }

    /// Calls `on_change` for each change other servers (and this one) make, until `stop`
    /// is set; after a lost connection it reports every kind of change once, since some
    /// may have been missed. Returns at once for a store only one server uses (the default).
    fn listen(
        &self,
        _on_change: &mut dyn FnMut(Change),
        _stop: &AtomicBool,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
