//! The PostgreSQL store, for several server replicas on one database
//! (`nonstop serve --store postgres://USER@HOST[:PORT]/DB`).
//!
//! # Overview
//! - [`PgStore`] implements [`Store`] with the SQLite store's semantics (the shared SQL is in
//!   `crate::sql`): a rule's hits are counted by one atomic `UPDATE … WHERE hits < max_hits`,
//!   so max hits hold exactly across replicas.
//! - Replicas learn of each other's changes through `LISTEN/NOTIFY` ([`Store::listen`]): a
//!   rule added, changed, removed, expired or done notifies `nonstop_rules`; stored responses
//!   notify `nonstop_responses` with the newest id, and each replica relays
//!   [`Store::responses_after`] to its live streams.
//! - Responses are inserted under one transaction-scoped advisory lock, so their ids commit in
//!   order and a relay that reads "after the last id it saw" misses none.
//! - Agent presence is a lease ([`AGENT_LEASE`]), renewed by the replica holding the agent's
//!   connection; the database's clock decides (`clock_timestamp()` in the SQL), so replicas'
//!   clocks need not agree.
//!
//! Calls block (the sync `postgres` client, each connection with its own small runtime);
//! the server runs them on tokio's blocking pool, where that is allowed. Connections come
//! from a small pool; a broken one is dropped and replaced on the next call.
//!
//! - Targets and their outboxes use the SQLite store's tables; one replica at a time drains
//!   a target's outbox (a lease in the target's row, [`Store::claim_target`]), so its
//!   deliveries keep their order.

use crate::sql::{self, pg};
use crate::store::{
    AgentRecord, AgentRuleStatus, Change, Inserted, MetricsStored, NewEntry, OutboxEntry,
    OutboxLimits, Retention, RuleState, Settled, Store, StoreError, StoredRule, StoredSeries,
    StoredTarget,
};
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MAX_SERIES_PER_RULE, MetricSeries};
use nonstop_model::{Action, AgentInfo, MetricKind, Response, Rule, RuleStatus};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long an agent counts as connected after the replica holding its connection last
/// renewed the lease; replicas renew every third of it.
pub const AGENT_LEASE: Duration = Duration::from_secs(15);
/// Connections a replica keeps to the database at most.
const POOL_SIZE: usize = 8;
/// Tries of a transaction that lost a deadlock or a serialization race.
const TRIES: u32 = 5;
/// The channels replicas notify.
const RULES_CHANNEL: &str = "nonstop_rules";
const RESPONSES_CHANNEL: &str = "nonstop_responses";
/// The advisory lock that orders response inserts (any number; `nonstop` in ASCII).
const RESPONSES_LOCK: i64 = 0x006e_6f6e_7374_6f70;
/// The advisory lock held while migrating, so replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x006e_6f6e_7374_6f71;

/// Schema migrations, applied in order; the index + 1 is the version recorded. The same
/// tables as the SQLite store's (`crate::sqlite`), in PostgreSQL's dialect, with agent
/// presence as a lease (`lease_until`, `holder`) instead of a flag.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    version TEXT,
    git_commit TEXT,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    labels TEXT NOT NULL,
    started TEXT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    holder TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    dropped BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE rules (
    id TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    created BIGINT NOT NULL,
    enabled INTEGER NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT,
    max_hits BIGINT,
    hits BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE rule_status (
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    probes BIGINT NOT NULL,
    hits BIGINT NOT NULL,
    dropped BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (rule, agent)
);
CREATE TABLE responses (
    id BIGSERIAL PRIMARY KEY,
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    time BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX responses_by_rule ON responses (rule, id);
CREATE INDEX responses_by_time ON responses (time);
CREATE TABLE metric_series (
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    tags TEXT NOT NULL,
    service TEXT NOT NULL,
    count BIGINT NOT NULL,
    json TEXT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (rule, agent, tags)
);
CREATE INDEX metric_series_by_agent ON metric_series (agent);
CREATE TABLE sources (
    service TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // Targets and their outboxes, as in the SQLite store (`crate::outbox`).
    r#"
CREATE TABLE IF NOT EXISTS targets (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created BIGINT NOT NULL,
    disabled TEXT,
    sent BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    dropped BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    target TEXT NOT NULL,
    rule TEXT NOT NULL,
    response BIGINT NOT NULL,
    delivery TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_target ON outbox (target, state, id);
CREATE INDEX IF NOT EXISTS outbox_by_rule ON outbox (rule, target, state);
"#,
    // What the agent said of the fast path, as in the SQLite store.
    r#"
ALTER TABLE rule_status ADD COLUMN IF NOT EXISTS fast_path TEXT;
"#,
];

/// Why a step failed: the database (with its SQLSTATE, to retry races) or the store.
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

fn db(e: postgres::Error) -> StoreError {
    // The server's message (with its detail) says more than the client's summary.
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("{}: {}", d.code().code(), d.message())),
        None => StoreError::Database(e.to_string()),
    }
}

fn fail(f: Fail) -> StoreError {
    match f {
        Fail::Pg(e) => db(e),
        Fail::Store(e) => e,
    }
}

fn is_race(f: &Fail) -> bool {
    matches!(f, Fail::Pg(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One pooled connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

/// A connection (or a transaction on one) with its prepared statements: each shared
/// statement is parsed once per connection.
struct Db<'a, C: GenericClient> {
    c: &'a mut C,
    prepared: &'a mut HashMap<&'static str, Statement>,
}

impl<C: GenericClient> Db<'_, C> {
    fn st(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.c.prepare(&pg(sql))?;
        self.prepared.insert(sql, st.clone());
        Ok(st)
    }

    fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let st = self.st(sql)?;
        self.c.execute(&st, params)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let st = self.st(sql)?;
        self.c.query(&st, params)
    }

    fn opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let st = self.st(sql)?;
        self.c.query_opt(&st, params)
    }
}

/// A [`Store`] in a PostgreSQL database that several replicas share.
pub struct PgStore {
    config: postgres::Config,
    /// This replica, as the holder of the agent leases it renews.
    replica: String,
    idle: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

/// A connection taken from the pool; back to it when dropped, unless broken.
struct Taken<'a> {
    store: &'a PgStore,
    conn: Option<Conn>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool();
        match self.conn.take() {
            Some(c) if !c.client.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        self.store.freed.notify_one();
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or the key=value
    /// form) and runs pending migrations.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e| {
            StoreError::Database(format!(
                "{url} is not a PostgreSQL URL ({e}): write postgres://USER@HOST[:PORT]/DB"
            ))
        })?;
        config.application_name("nonstop");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let mut replica = [0u8; 8];
        crate::ids::fill_random(&mut replica);
        let store = PgStore {
            config,
            replica: replica.iter().map(|b| format!("{b:02x}")).collect(),
            idle: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding the lock leaves the pool usable; take it back.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> Result<Client, StoreError> {
        self.config.connect(NoTls).map_err(|e| {
            StoreError::Database(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                self.describe()
            ))
        })
    }

    /// Host, port and database, for messages (never the password).
    fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let dbname = self.config.get_dbname().unwrap_or("(default)");
        format!("{host}:{port}/{dbname}")
    }

    fn take(&self) -> Result<Taken<'_>, StoreError> {
        let mut pool = self.pool();
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(Taken {
                    store: self,
                    conn: Some(conn),
                });
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return match self.open() {
                    Ok(client) => Ok(Taken {
                        store: self,
                        conn: Some(Conn {
                            client,
                            prepared: HashMap::new(),
                        }),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `f` on a pooled connection, outside a transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut taken = self.take()?;
        let Some(Conn { client, prepared }) = taken.conn.as_mut() else {
            return Err(StoreError::Database("no connection".into()));
        };
        f(&mut Db {
            c: client,
            prepared,
        })
        .map_err(fail)
    }

    /// Runs `f` in a transaction, again (a few times) when it lost a deadlock or a
    /// serialization race to another replica.
    fn tx<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut taken = self.take()?;
        let Some(Conn { client, prepared }) = taken.conn.as_mut() else {
            return Err(StoreError::Database("no connection".into()));
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let run = (|| -> Result<T, Fail> {
                let mut tx = client.transaction()?;
                let out = f(&mut Db {
                    c: &mut tx,
                    prepared: &mut *prepared,
                })?;
                tx.commit()?;
                Ok(out)
            })();
            match run {
                Err(e) if tries < TRIES && is_race(&e) => {
                    tracing::debug!("a store transaction lost a race; trying again");
                }
                other => return other.map_err(fail),
            }
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.open()?;
        let mut run = || -> Result<(), postgres::Error> {
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
            )?;
            let current: i64 = client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate() {
                let version = i as i64 + 1;
                if version <= current {
                    continue;
                }
                let mut tx = client.transaction()?;
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                    &[&version, &crate::clock::now_ms()],
                )?;
                tx.commit()?;
                tracing::info!(version, "applied schema migration (PostgreSQL)");
            }
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
            Ok(())
        };
        run().map_err(db)
    }
}

/// A rule's row: json, created, expires_at, state, hits, enabled (at `at..at + 6`).
fn rule_from(row: &Row, at: usize) -> Result<StoredRule, Fail> {
    let json: String = row.try_get(at)?;
    let rule: Rule = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
        what: "rule",
        source,
    })?;
    Ok(StoredRule {
        rule,
        created_ms: row.try_get(at + 1)?,
        expires_ms: row.try_get(at + 2)?,
        state: RuleState::parse(row.try_get::<_, &str>(at + 3)?),
        hits: to_u64(row.try_get(at + 4)?),
        enabled: row.try_get::<_, i32>(at + 5)? != 0,
    })
}

/// A status from `row`'s columns `at..at + 8`: agent, status, message, probes, hits,
/// dropped, updated, fast_path.
fn status_from(row: &Row, at: usize, rule: &str) -> Result<AgentRuleStatus, Fail> {
    Ok(AgentRuleStatus {
        agent: row.try_get(at)?,
        status: RuleStatus {
            rule: rule.to_string(),
            status: crate::sqlite::parse_status_word(row.try_get::<_, &str>(at + 1)?),
            message: row.try_get(at + 2)?,
            probes: u32::try_from(row.try_get::<_, i64>(at + 3)?).unwrap_or(0),
            hits: to_u64(row.try_get(at + 4)?),
            dropped: to_u64(row.try_get(at + 5)?),
            fast_path: row.try_get(at + 7)?,
        },
        updated_ms: row.try_get(at + 6)?,
    })
}

fn agent_from(r: &Row) -> Result<AgentRecord, Fail> {
    let first_seen: i64 = r.try_get(9)?;
    let labels: String = r.try_get(6)?;
    let started: String = r.try_get(7)?;
    let info = AgentInfo {
        id: r.try_get(0)?,
        service: r.try_get(1)?,
        version: r.try_get(2)?,
        commit: r.try_get(3)?,
        host: r.try_get(4)?,
        pid: u32::try_from(r.try_get::<_, i64>(5)?).unwrap_or(0),
        labels: serde_json::from_str(&labels).map_err(|source| StoreError::Corrupt {
            what: "agent labels",
            source,
        })?,
        // As in the SQLite store: an agent that did not say when it started shows when
        // the server first saw it.
        started: if started.is_empty() {
            crate::clock::rfc3339(first_seen)
        } else {
            started
        },
    };
    Ok(AgentRecord {
        info,
        connected: r.try_get(8)?,
        first_seen_ms: first_seen,
        last_seen_ms: r.try_get(10)?,
        dropped: to_u64(r.try_get(11)?),
    })
}

fn response_from(json: &str) -> Result<Response, Fail> {
    serde_json::from_str(json).map_err(|source| {
        Fail::Store(StoreError::Corrupt {
            what: "response",
            source,
        })
    })
}

fn target_from(r: &Row) -> Result<StoredTarget, Fail> {
    Ok(StoredTarget {
        name: r.try_get(0)?,
        spec_json: r.try_get(1)?,
        created_ms: r.try_get(2)?,
        disabled: r.try_get(3)?,
        sent: to_u64(r.try_get(4)?),
        failed: to_u64(r.try_get(5)?),
        dropped: to_u64(r.try_get(6)?),
        last_error: r.try_get(7)?,
        pending: to_u64(r.try_get(8)?),
        oldest_pending_ms: r.try_get(9)?,
    })
}

fn notify_rules<C: GenericClient>(d: &mut Db<'_, C>) -> Result<(), postgres::Error> {
    d.exec("SELECT pg_notify('nonstop_rules', '')", &[])?;
    Ok(())
}

impl Store for PgStore {
    fn insert_rule(&self, r: &StoredRule) -> Result<(), StoreError> {
        let json = serde_json::to_string(&r.rule).map_err(|source| StoreError::Corrupt {
            what: "rule",
            source,
        })?;
        let res = self.tx(|d| {
            d.exec(
                sql::INSERT_RULE,
                &[
                    &r.rule.id,
                    &json,
                    &r.created_ms,
                    &i32::from(r.enabled),
                    &r.state.as_str(),
                    &r.expires_ms,
                    &r.rule.max_hits.map(to_i64),
                    &to_i64(r.hits),
                ],
            )?;
            notify_rules(d)?;
            Ok(())
        });
        match res {
            Err(StoreError::Database(m)) if m.starts_with(SqlState::UNIQUE_VIOLATION.code()) => {
                Err(StoreError::DuplicateRule(r.rule.id.clone()))
            }
            other => other,
        }
    }

    fn rules(&self) -> Result<Vec<StoredRule>, StoreError> {
        self.read(|d| {
            d.query(sql::SELECT_RULES, &[])?
                .iter()
                .map(|r| rule_from(r, 0))
                .collect()
        })
    }

    fn rule(&self, id: &str) -> Result<Option<StoredRule>, StoreError> {
        self.read(|d| {
            d.opt(sql::SELECT_RULE, &[&id])?
                .map(|r| rule_from(&r, 0))
                .transpose()
        })
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<Option<StoredRule>, StoreError> {
        self.tx(|d| {
            if d.exec(sql::SET_ENABLED, &[&id, &i32::from(enabled)])? == 0 {
                return Ok(None);
            }
            notify_rules(d)?;
            d.opt(sql::SELECT_RULE, &[&id])?
                .map(|r| rule_from(&r, 0))
                .transpose()
        })
    }

    fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        self.tx(|d| {
            let n = d.exec(sql::DELETE_RULE[0], &[&id])?;
            for sql in &sql::DELETE_RULE[1..] {
                d.exec(sql, &[&id])?;
            }
            if n > 0 {
                notify_rules(d)?;
            }
            Ok(n > 0)
        })
    }

    fn expire_rules(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.tx(|d| {
            let ids: Vec<String> = d
                .query(
                    "UPDATE rules SET state = 'expired' WHERE state = 'active' AND expires_at <= ?1
                     RETURNING id",
                    &[&now_ms],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if !ids.is_empty() {
                notify_rules(d)?;
            }
            Ok(ids)
        })
    }

    fn upsert_agent(&self, a: &AgentInfo, connected: bool, now_ms: i64) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&a.labels).map_err(|source| StoreError::Corrupt {
            what: "agent labels",
            source,
        })?;
        let lease = to_i64(AGENT_LEASE.as_millis() as u64);
        self.read(|d| {
            // Connected: this replica holds the agent and its lease starts now. Not
            // connected: a lease this replica holds ends; another replica's stays.
            d.exec(
                "INSERT INTO agents (id, service, version, git_commit, host, pid, labels, started,
                    lease_until, holder, first_seen, last_seen, dropped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                    CASE WHEN ?9 THEN (extract(epoch from clock_timestamp()) * 1000)::bigint + ?11 ELSE 0 END,
                    CASE WHEN ?9 THEN ?12 END, ?10, ?10, 0)
                 ON CONFLICT (id) DO UPDATE SET service = ?2, version = ?3, git_commit = ?4,
                    host = ?5, pid = ?6, labels = ?7, started = ?8, last_seen = ?10,
                    lease_until = CASE WHEN ?9 THEN EXCLUDED.lease_until
                        WHEN agents.holder IS DISTINCT FROM ?12 THEN agents.lease_until ELSE 0 END,
                    holder = CASE WHEN ?9 THEN ?12 ELSE agents.holder END",
                &[
                    &a.id,
                    &a.service,
                    &a.version,
                    &a.commit,
                    &a.host,
                    &i64::from(a.pid),
                    &labels,
                    &a.started,
                    &connected,
                    &now_ms,
                    &lease,
                    &self.replica,
                ],
            )?;
            Ok(())
        })
    }

    fn touch_agent(
        &self,
        id: &str,
        connected: Option<bool>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let lease = to_i64(AGENT_LEASE.as_millis() as u64);
        self.read(|d| {
            let n = match connected {
                Some(true) => d.exec(
                    "UPDATE agents SET last_seen = ?2, holder = ?3,
                        lease_until = (extract(epoch from clock_timestamp()) * 1000)::bigint + ?4
                     WHERE id = ?1",
                    &[&id, &now_ms, &self.replica, &lease],
                )?,
                Some(false) => d.exec(
                    "UPDATE agents SET last_seen = ?2,
                        lease_until = CASE WHEN holder = ?3 THEN 0 ELSE lease_until END
                     WHERE id = ?1",
                    &[&id, &now_ms, &self.replica],
                )?,
                None => d.exec(
                    "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
                    &[&id, &now_ms],
                )?,
            };
            Ok(n > 0)
        })
    }

    /// Nothing: other replicas hold connections, and a dead replica's leases run out.
    fn disconnect_all(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn add_dropped(&self, agent: &str, dropped: u64) -> Result<(), StoreError> {
        self.read(|d| {
            d.exec(
                // Saturating: `dropped + n` past the largest integer is an error in PostgreSQL.
                "UPDATE agents SET dropped = LEAST(dropped, 9223372036854775807 - ?2) + ?2 WHERE id = ?1",
                &[&agent, &to_i64(dropped)],
            )?;
            Ok(())
        })
    }

    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        const ONE: &str = "SELECT id, service, version, git_commit, host, pid, labels, started,
                lease_until > (extract(epoch from clock_timestamp()) * 1000)::bigint,
                first_seen, last_seen, dropped
             FROM agents WHERE id = ?1";
        self.read(|d| d.opt(ONE, &[&id])?.map(|r| agent_from(&r)).transpose())
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        const ALL: &str = "SELECT id, service, version, git_commit, host, pid, labels, started,
                lease_until > (extract(epoch from clock_timestamp()) * 1000)::bigint,
                first_seen, last_seen, dropped
             FROM agents ORDER BY last_seen DESC, id";
        self.read(|d| d.query(ALL, &[])?.iter().map(agent_from).collect())
    }

    fn put_statuses(
        &self,
        agent: &str,
        statuses: &[RuleStatus],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx(|d| {
            for s in statuses {
                d.exec(
                    "INSERT INTO rule_status (rule, agent, status, message, probes, hits, dropped, updated, fast_path)
                     SELECT ?1::text, ?2::text, ?3::text, ?4::text, ?5::bigint, ?6::bigint, ?7::bigint, ?8::bigint, ?9::text
                     WHERE EXISTS (SELECT 1 FROM rules WHERE id = ?1)
                     ON CONFLICT (rule, agent) DO UPDATE SET status = ?3, message = ?4, probes = ?5,
                        hits = ?6, dropped = ?7, updated = ?8, fast_path = ?9",
                    &[
                        &s.rule,
                        &agent,
                        &crate::sqlite::status_word(s.status),
                        &s.message,
                        &i64::from(s.probes),
                        &to_i64(s.hits),
                        &to_i64(s.dropped),
                        &now_ms,
                        &s.fast_path,
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn statuses(&self, rule: &str) -> Result<Vec<AgentRuleStatus>, StoreError> {
        self.read(|d| {
            d.query(sql::SELECT_STATUSES, &[&rule])?
                .iter()
                .map(|r| status_from(r, 0, rule))
                .collect()
        })
    }

    fn rules_with_statuses(&self) -> Result<Vec<(StoredRule, Vec<AgentRuleStatus>)>, StoreError> {
        self.read(|d| {
            let mut out: Vec<(StoredRule, Vec<AgentRuleStatus>)> = Vec::new();
            let mut last_id: Option<String> = None;
            for row in d.query(sql::SELECT_RULES_WITH_STATUSES, &[])? {
                let id: String = row.try_get(6)?;
                if last_id.as_deref() != Some(id.as_str()) {
                    out.push((rule_from(&row, 0)?, Vec::new()));
                    last_id = Some(id.clone());
                }
                if row.try_get::<_, Option<String>>(7)?.is_some()
                    && let Some((_, statuses)) = out.last_mut()
                {
                    statuses.push(status_from(&row, 7, &id)?);
                }
            }
            Ok(out)
        })
    }

    fn sources(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|d| {
            d.query(sql::SELECT_SOURCES, &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }

    fn put_source(&self, service: &str, spec_json: &str, now_ms: i64) -> Result<(), StoreError> {
        self.read(|d| {
            d.exec(sql::PUT_SOURCE, &[&service, &spec_json, &now_ms])?;
            Ok(())
        })
    }

    fn insert_responses(
        &self,
        responses: Vec<Response>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Inserted, StoreError> {
        if responses.is_empty() {
            return Ok(Inserted::default());
        }
        let jsons = responses
            .iter()
            .map(|r| {
                serde_json::to_string(r).map_err(|source| StoreError::Corrupt {
                    what: "response",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.tx(|d| {
            let mut out = Inserted::default();
            // Ids commit in order: a replica relaying "what came after the last id it saw"
            // misses none.
            d.exec("SELECT pg_advisory_xact_lock(?1)", &[&RESPONSES_LOCK])?;
            let mut touched: Vec<&str> = Vec::new();
            let mut routes: HashMap<String, Vec<String>> = HashMap::new();
            for (resp, json) in responses.iter().zip(&jsons) {
                if d.exec(sql::COUNT_HIT, &[&resp.rule])? == 0 {
                    out.refused += 1;
                    if !out.unknown.contains(&resp.rule)
                        && d.opt(sql::RULE_EXISTS, &[&resp.rule])?.is_none()
                    {
                        out.unknown.push(resp.rule.clone());
                    }
                    continue;
                }
                let rid: i64 = d
                    .query(
                        sql::INSERT_RESPONSE,
                        &[&resp.rule, &resp.agent, &now_ms, json],
                    )?
                    .first()
                    .map(|r| r.try_get(0))
                    .transpose()?
                    .unwrap_or(0);
                if d.exec(sql::MARK_DONE, &[&resp.rule])? > 0 {
                    out.done.push(resp.rule.clone());
                }
                if !routes.contains_key(&resp.rule) {
                    let to = match d.opt(sql::RULE_JSON, &[&resp.rule])? {
                        Some(row) => crate::outbox::routes(row.try_get::<_, &str>(0)?),
                        None => Vec::new(),
                    };
                    routes.insert(resp.rule.clone(), to);
                }
                for target in routes.get(&resp.rule).into_iter().flatten() {
                    let delivery = crate::outbox::delivery_id(rid, json);
                    out.queued += d.exec(
                        sql::ENQUEUE,
                        &[
                            target,
                            &resp.rule,
                            &rid,
                            &delivery,
                            &now_ms,
                            &"response",
                            json,
                        ],
                    )? as usize;
                }
                if !touched.contains(&resp.rule.as_str()) {
                    touched.push(&resp.rule);
                }
                out.stored.push((rid, resp.clone()));
            }
            for rule in &touched {
                d.exec(sql::KEEP_NEWEST, &[rule, &to_i64(retention.per_rule)])?;
            }
            d.exec(
                sql::DELETE_OLD_RESPONSES,
                &[&now_ms.saturating_sub(retention.max_age_ms)],
            )?;
            if let Some((last, _)) = out.stored.last() {
                d.exec(
                    "SELECT pg_notify('nonstop_responses', ?1::bigint::text)",
                    &[last],
                )?;
            }
            if !out.done.is_empty() {
                notify_rules(d)?;
            }
            Ok(out)
        })
    }

    fn prune_responses(&self, now_ms: i64, retention: Retention) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        self.tx(|d| {
            let responses = d.exec(sql::DELETE_OLD_RESPONSES, &[&cutoff])?;
            // A gone agent's series leave the sums once it has not been seen for as long.
            let series = d.exec(
                "DELETE FROM metric_series WHERE agent NOT IN (
                    SELECT id FROM agents WHERE last_seen >= ?1
                        OR lease_until > (extract(epoch from clock_timestamp()) * 1000)::bigint)",
                &[&cutoff],
            )?;
            Ok(responses + series)
        })
    }

    fn responses_after(
        &self,
        rule: Option<&str>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, Response)>, StoreError> {
        self.read(|d| {
            d.query(sql::RESPONSES_AFTER, &[&after, &rule, &to_i64(limit)])?
                .iter()
                .map(|r| {
                    let json: String = r.try_get(1)?;
                    Ok((r.try_get(0)?, response_from(&json)?))
                })
                .collect()
        })
    }

    fn responses(&self, rule: Option<&str>, limit: u64) -> Result<Vec<Response>, StoreError> {
        let limit = to_i64(limit);
        self.read(|d| {
            let rows = match rule {
                Some(rule) => d.query(sql::NEWEST_RESPONSES_OF_RULE, &[&rule, &limit])?,
                None => d.query(sql::NEWEST_RESPONSES, &[&limit])?,
            };
            rows.iter()
                .rev()
                .map(|r| response_from(&r.try_get::<_, String>(0)?))
                .collect()
        })
    }

    fn upsert_metrics(
        &self,
        agent: &str,
        series: &[MetricSeries],
        now_ms: i64,
    ) -> Result<MetricsStored, StoreError> {
        if series.is_empty() {
            return Ok(MetricsStored::default());
        }
        self.tx(|d| upsert_metrics_in(d, agent, series, now_ms))
    }

    fn metric_series(&self, rule: Option<&str>) -> Result<Vec<StoredSeries>, StoreError> {
        self.read(|d| {
            d.query(sql::SELECT_SERIES, &[&rule])?
                .iter()
                .map(|r| {
                    let json: String = r.try_get(2)?;
                    Ok(StoredSeries {
                        agent: r.try_get(0)?,
                        service: r.try_get(1)?,
                        series: serde_json::from_str(&json).map_err(|source| {
                            StoreError::Corrupt {
                                what: "metric series",
                                source,
                            }
                        })?,
                        updated_ms: r.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    fn put_target(&self, name: &str, spec_json: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.tx(|d| {
            let existed = d.opt(sql::TARGET_EXISTS, &[&name])?.is_some();
            d.exec(sql::PUT_TARGET, &[&name, &spec_json, &now_ms])?;
            Ok(!existed)
        })
    }

    fn targets(&self) -> Result<Vec<StoredTarget>, StoreError> {
        self.read(|d| {
            d.query(sql::SELECT_TARGETS, &[])?
                .iter()
                .map(target_from)
                .collect()
        })
    }

    fn target(&self, name: &str) -> Result<Option<StoredTarget>, StoreError> {
        self.read(|d| {
            d.opt(sql::SELECT_TARGET, &[&name])?
                .as_ref()
                .map(target_from)
                .transpose()
        })
    }

    fn delete_target(&self, name: &str) -> Result<bool, StoreError> {
        self.tx(|d| {
            let n = d.exec(sql::DELETE_TARGET[0], &[&name])?;
            d.exec(sql::DELETE_TARGET[1], &[&name])?;
            Ok(n > 0)
        })
    }

    fn claim_target(
        &self,
        name: &str,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let until = now_ms.saturating_add(lease_ms);
        self.read(|d| Ok(d.exec(sql::CLAIM_TARGET, &[&name, &holder, &until, &now_ms])? > 0))
    }

    fn outbox_pending(&self, target: &str, limit: u64) -> Result<Vec<OutboxEntry>, StoreError> {
        let limit = to_i64(limit);
        self.read(|d| {
            d.query(sql::PENDING, &[&target, &limit])?
                .iter()
                .map(|r| {
                    Ok(OutboxEntry {
                        id: r.try_get(0)?,
                        delivery: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        payload: r.try_get(3)?,
                        attempts: to_u64(r.try_get(4)?),
                        created_ms: r.try_get(5)?,
                        rule: r.try_get(6)?,
                    })
                })
                .collect()
        })
    }

    fn settle_outbox(
        &self,
        target: &str,
        settled: &[(i64, Settled)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx(|d| {
            let (mut sent, mut failed) = (0i64, 0i64);
            let mut last_error: Option<&str> = None;
            let none: Option<&str> = None;
            for (id, s) in settled {
                match s {
                    Settled::Sent => {
                        sent += d.exec(sql::FINISH, &[id, &"sent", &none, &now_ms])? as i64
                    }
                    Settled::Skipped => {
                        d.exec(sql::FINISH, &[id, &"skipped", &none, &now_ms])?;
                    }
                    Settled::Failed(why) => {
                        last_error = Some(why);
                        failed += d
                            .exec(sql::FINISH, &[id, &"failed", &Some(why.as_str()), &now_ms])?
                            as i64;
                    }
                    Settled::Retry(why) => {
                        last_error = Some(why);
                        d.exec(sql::RETRY, &[id, why, &now_ms])?;
                    }
                }
            }
            d.exec(
                sql::COUNT_DELIVERIES,
                &[&target, &sent, &failed, &0i64, &last_error],
            )?;
            Ok(())
        })
    }

    fn disable_target(&self, name: &str, reason: &str) -> Result<(), StoreError> {
        self.read(|d| {
            d.exec(sql::DISABLE_TARGET, &[&name, &reason])?;
            Ok(())
        })
    }

    fn bound_outbox(
        &self,
        target: &str,
        limits: OutboxLimits,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let age_cut = now_ms.saturating_sub(limits.max_age_ms);
        let keep_cut = now_ms.saturating_sub(limits.keep_finished_ms);
        let max = to_i64(limits.max_pending);
        self.tx(|d| {
            let old = d.exec(sql::DROP_OLD, &[&target, &age_cut, &now_ms])?;
            let over = d.exec(sql::DROP_OVER, &[&target, &max, &now_ms])?;
            d.exec(sql::FORGET_FINISHED, &[&target, &keep_cut])?;
            let dropped = to_i64(old + over);
            if dropped > 0 {
                let none: Option<&str> = None;
                d.exec(
                    sql::COUNT_DELIVERIES,
                    &[&target, &0i64, &0i64, &dropped, &none],
                )?;
            }
            Ok(to_u64(dropped))
        })
    }

    fn enqueue_outbox(&self, entries: &[NewEntry], now_ms: i64) -> Result<usize, StoreError> {
        self.tx(|d| {
            let mut n = 0;
            for e in entries {
                n += d.exec(
                    sql::ENQUEUE,
                    &[
                        &e.target,
                        &e.rule,
                        &0i64,
                        &e.delivery,
                        &now_ms,
                        &e.kind,
                        &e.payload,
                    ],
                )? as usize;
            }
            Ok(n)
        })
    }

    fn rule_deliveries(&self, rule: &str) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|d| {
            d.query(sql::RULE_DELIVERIES, &[&rule])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, to_u64(r.try_get(2)?))))
                .collect()
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn renew_leases(&self, agents: &[String]) -> Result<(), StoreError> {
        if agents.is_empty() {
            return Ok(());
        }
        let lease = to_i64(AGENT_LEASE.as_millis() as u64);
        self.read(|d| {
            d.exec(
                "UPDATE agents SET holder = ?2,
                    lease_until = (extract(epoch from clock_timestamp()) * 1000)::bigint + ?3
                 WHERE id = ANY(?1)",
                &[&agents, &self.replica, &lease],
            )?;
            Ok(())
        })
    }

    fn agree_tokens(
        &self,
        proposed: &crate::ids::Tokens,
    ) -> Result<crate::ids::Tokens, StoreError> {
        self.tx(|d| {
            d.exec(
                "INSERT INTO tokens (name, value) VALUES ('admin', ?1), ('agent', ?2)
                 ON CONFLICT (name) DO NOTHING",
                &[&proposed.admin, &proposed.agent],
            )?;
            let mut agreed = proposed.clone();
            for row in d.query("SELECT name, value FROM tokens", &[])? {
                match row.try_get::<_, &str>(0)? {
                    "admin" => agreed.admin = row.try_get(1)?,
                    "agent" => agreed.agent = row.try_get(1)?,
                    _ => {}
                }
            }
            Ok(agreed)
        })
    }

    fn last_response_id(&self) -> Result<i64, StoreError> {
        self.read(|d| Ok(d.query(sql::LAST_RESPONSE_ID, &[])?[0].try_get(0)?))
    }

    fn listen(
        &self,
        on_change: &mut dyn FnMut(Change),
        stop: &AtomicBool,
    ) -> Result<(), StoreError> {
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            let mut client = match self.open() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot listen for other replicas' changes: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if let Err(e) = client.batch_execute(&format!(
                "LISTEN {RULES_CHANNEL}; LISTEN {RESPONSES_CHANNEL};"
            )) {
                tracing::error!("cannot listen for other replicas' changes: {}", db(e));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if !first {
                // What was notified while no one listened: read it all again.
                on_change(Change::Rules);
                on_change(Change::Responses);
            }
            first = false;
            while !stop.load(Ordering::Relaxed) && !client.is_closed() {
                let mut notifications = client.notifications();
                let mut it = notifications.timeout_iter(Duration::from_millis(250));
                loop {
                    match it.next() {
                        Ok(Some(n)) if n.channel() == RULES_CHANNEL => on_change(Change::Rules),
                        Ok(Some(n)) if n.channel() == RESPONSES_CHANNEL => {
                            on_change(Change::Responses)
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("lost the notification connection: {}", db(e));
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// [`Store::upsert_metrics`] in one transaction: the rules of the report are locked first
/// (in id order, so two replicas never deadlock), so each rule's sum sees every other
/// agent's committed series.
fn upsert_metrics_in(
    d: &mut Db<'_, postgres::Transaction<'_>>,
    agent: &str,
    series: &[MetricSeries],
    now_ms: i64,
) -> Result<MetricsStored, Fail> {
    let mut out = MetricsStored::default();
    let service: Option<String> = d
        .opt(sql::AGENT_SERVICE, &[&agent])?
        .map(|r| r.try_get(0))
        .transpose()?;
    let Some(service) = service else {
        out.refused = series.len();
        return Ok(out);
    };
    let mut ids: Vec<&str> = series.iter().map(|s| s.rule.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut metrics: HashMap<String, (String, MetricKind)> = HashMap::new();
    for row in d.query(
        "SELECT id, json FROM rules WHERE id = ANY(?1) AND state = 'active' ORDER BY id FOR UPDATE",
        &[&ids],
    )? {
        let json: String = row.try_get(1)?;
        let rule: Rule = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
            what: "rule",
            source,
        })?;
        if let (Action::Metric, Some(m)) = (rule.action, rule.metric) {
            metrics.insert(row.try_get(0)?, (m.name, m.kind));
        }
    }
    let mut per_rule: HashMap<String, usize> = HashMap::new();
    let mut touched: Vec<String> = Vec::new();
    for s in series {
        let Some((name, kind)) = metrics.get(&s.rule) else {
            out.refused += 1;
            continue;
        };
        if s.buckets.len() > HISTOGRAM_BOUNDS.len() + 1 {
            out.refused += 1;
            continue;
        }
        // The rule, not the agent, says what the metric is called and what it is.
        let mut s = s.clone();
        s.name = name.clone();
        s.kind = *kind;
        let tags = serde_json::to_string(&s.tags).map_err(|source| StoreError::Corrupt {
            what: "metric tags",
            source,
        })?;
        let json = serde_json::to_string(&s).map_err(|source| StoreError::Corrupt {
            what: "metric series",
            source,
        })?;
        let held: Option<i64> = d
            .opt(sql::SERIES_COUNT, &[&s.rule, &agent, &tags])?
            .map(|r| r.try_get(0))
            .transpose()?;
        match held {
            // Counts only grow on an agent: a lower one is an older report arriving late.
            Some(held) if to_u64(held) > s.count => {
                out.stale += 1;
                continue;
            }
            Some(_) => {
                d.exec(
                    sql::UPDATE_SERIES,
                    &[
                        &s.rule,
                        &agent,
                        &tags,
                        &service,
                        &to_i64(s.count),
                        &json,
                        &now_ms,
                    ],
                )?;
            }
            None => {
                let n = match per_rule.get_mut(&s.rule) {
                    Some(n) => n,
                    None => {
                        let n: i64 =
                            d.query(sql::SERIES_OF_AGENT, &[&s.rule, &agent])?[0].try_get(0)?;
                        per_rule.entry(s.rule.clone()).or_insert(to_u64(n) as usize)
                    }
                };
                if *n >= MAX_SERIES_PER_RULE {
                    out.refused += 1;
                    continue;
                }
                *n += 1;
                d.exec(
                    sql::INSERT_SERIES,
                    &[
                        &s.rule,
                        &agent,
                        &tags,
                        &service,
                        &to_i64(s.count),
                        &json,
                        &now_ms,
                    ],
                )?;
            }
        }
        out.stored += 1;
        if !touched.contains(&s.rule) {
            touched.push(s.rule.clone());
        }
    }
    for rule in touched {
        // SUM of BIGINT is NUMERIC here: no overflow, clamped to the largest integer.
        d.exec(
            "UPDATE rules SET hits = (SELECT LEAST(COALESCE(SUM(GREATEST(count, 0)), 0), 9223372036854775807)::bigint
                 FROM metric_series WHERE rule = ?1) WHERE id = ?1",
            &[&rule],
        )?;
        if d.exec(sql::FINISH_METRIC_RULE, &[&rule])? > 0 {
            out.done.push(rule);
        }
    }
    if !out.done.is_empty() {
        notify_rules(d)?;
    }
    Ok(out)
}
