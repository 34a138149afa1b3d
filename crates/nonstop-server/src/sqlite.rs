//! The SQLite store: one file, WAL, numbered migrations recorded in `schema_migrations`.

use crate::sql;
use crate::store::{
    AgentRecord, AgentRuleStatus, BatchJob, BatchWrite, Inserted, MetricsStored, NewEntry,
    OutboxEntry, OutboxLimits, Retention, RuleState, Settled, Store, StoreError, StoredRule,
    StoredSeries, StoredTarget,
};
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MAX_SERIES_PER_RULE, MetricSeries};
use nonstop_model::{Action, AgentInfo, MetricKind, Response, Rule, RuleStatus, StatusKind};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// Schema migrations, applied in order; the index + 1 is the version recorded.
/// Keep the SQL portable (PostgreSQL would take `BIGSERIAL` for the `INTEGER PRIMARY KEY`).
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
    connected INTEGER NOT NULL,
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    time BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX responses_by_rule ON responses (rule, id);
CREATE INDEX responses_by_time ON responses (time);
"#,
    // The newest cumulative report of each metric series: one row per (rule, agent, tags),
    // `tags` being the tags' JSON (keys sorted), `count` kept beside the JSON so a rule's
    // hits are one SUM.
    r#"
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
"#,
    // Where the web IDE reads each service's code, set through the API (the command line's
    // sources are not stored). `spec` is the source's JSON, its access token included.
    r#"
CREATE TABLE sources (
    service TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated BIGINT NOT NULL
);
"#,
    // Heals counts an older server let overflow: SQLite turned `dropped + n` past its
    // largest integer into a REAL, which no read accepts. Such values become the largest
    // integer (negative ones 0); counts are saturating and bounded from here on.
    r#"
UPDATE agents SET dropped = CASE WHEN dropped < 0 THEN 0 WHEN dropped >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(dropped AS INTEGER) END WHERE typeof(dropped) <> 'integer';
UPDATE rules SET hits = CASE WHEN hits < 0 THEN 0 WHEN hits >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(hits AS INTEGER) END WHERE typeof(hits) <> 'integer';
UPDATE rules SET max_hits = CASE WHEN max_hits < 0 THEN 0 WHEN max_hits >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(max_hits AS INTEGER) END WHERE max_hits IS NOT NULL AND typeof(max_hits) <> 'integer';
UPDATE rule_status SET hits = CASE WHEN hits < 0 THEN 0 WHEN hits >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(hits AS INTEGER) END WHERE typeof(hits) <> 'integer';
UPDATE rule_status SET dropped = CASE WHEN dropped < 0 THEN 0 WHEN dropped >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(dropped AS INTEGER) END WHERE typeof(dropped) <> 'integer';
UPDATE rule_status SET probes = CASE WHEN probes < 0 THEN 0 WHEN probes >= 4294967295.0 THEN 4294967295 ELSE CAST(probes AS INTEGER) END WHERE typeof(probes) <> 'integer';
UPDATE metric_series SET count = CASE WHEN count < 0 THEN 0 WHEN count >= 9223372036854775807.0 THEN 9223372036854775807 ELSE CAST(count AS INTEGER) END WHERE typeof(count) <> 'integer';
"#,
    // Targets (named receivers of responses) and one outbox row per response and target
    // (`crate::outbox`): written in the same transaction as the response.
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    // What the agent said of the fast path (`RuleStatus::fast_path`; NULL when it is off,
    // and for statuses stored before).
    r#"
ALTER TABLE rule_status ADD COLUMN fast_path TEXT;
"#,
];

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    // One connection: SQLite writes one at a time anyway, and calls are short.
    conn: Mutex<Connection>,
    /// How many responses each rule has stored, for the rules counted since start: what
    /// retention compares with its cap, so a write deletes exactly what goes over it, the
    /// oldest first, without walking the newest `per_rule` ids each time. Changed only
    /// with the connection's lock held, after a commit; cleared when rows go another way.
    kept: Mutex<HashMap<String, u64>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        // Room for every statement the store caches (rusqlite keeps 16 by default): one
        // evicted on the ingest path would be parsed again on every write.
        conn.set_prepared_statement_cache_capacity(64);
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db)?;
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL);",
        )
        .map_err(db)?;
        let current: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES (?1, ?2)",
                params![version, crate::clock::now_ms()],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(version, "applied schema migration");
        }
        Ok(SqliteStore {
            kept: Mutex::default(),
            conn: Mutex::new(conn),
        })
    }

    /// Records what a committed batch left per rule (called with the connection held).
    fn note_kept(&self, kept: Kept) {
        let mut map = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.aged {
            map.clear();
        } else {
            map.extend(kept.counts);
        }
    }

    /// Forgets the counts: rows went some other way than a batch's retention.
    fn forget_kept(&self, rule: Option<&str>) {
        let mut map = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match rule {
            Some(rule) => {
                map.remove(rule);
            }
            None => map.clear(),
        }
    }

    /// [`Store::write_batch`] on a connection already locked: one transaction.
    fn write_batch_in(
        &self,
        conn: &mut Connection,
        agent: &str,
        hello: Option<(&AgentInfo, bool)>,
        writes: Vec<BatchWrite>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Vec<Inserted>, StoreError> {
        let tx = conn.transaction().map_err(db)?;
        let mut batch = InsertBatch::default();
        let out = apply_writes(&tx, &mut batch, agent, hello, writes, now_ms)?;
        let kept = batch.retain(&tx, now_ms, retention, &self.kept)?;
        tx.commit().map_err(db)?;
        self.note_kept(kept);
        Ok(out)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable; take it back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A rule's row: json, created, expires_at, state, hits, enabled.
type RuleRow = (String, i64, Option<i64>, String, i64, bool);

fn read_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get::<_, i64>(5)? != 0,
    ))
}

/// A status read from `row`'s columns `at..at + 8`: agent, status, message, probes, hits,
/// dropped, updated, fast_path.
fn read_status(
    row: &rusqlite::Row<'_>,
    at: usize,
    rule: &str,
) -> rusqlite::Result<AgentRuleStatus> {
    Ok(AgentRuleStatus {
        agent: row.get(at)?,
        status: RuleStatus {
            rule: rule.to_string(),
            status: parse_status_word(&row.get::<_, String>(at + 1)?),
            message: row.get(at + 2)?,
            probes: u32::try_from(row.get::<_, i64>(at + 3)?).unwrap_or(0),
            hits: to_u64(row.get(at + 4)?),
            dropped: to_u64(row.get(at + 5)?),
            fast_path: row.get(at + 7)?,
        },
        updated_ms: row.get(at + 6)?,
    })
}

fn to_stored_rule(
    (json, created_ms, expires_ms, state, hits, enabled): RuleRow,
) -> Result<StoredRule, StoreError> {
    let rule: Rule = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
        what: "rule",
        source,
    })?;
    Ok(StoredRule {
        rule,
        created_ms,
        expires_ms,
        state: RuleState::parse(&state),
        enabled,
        hits: to_u64(hits),
    })
}

const AGENT_COLUMNS: &str = "id, service, version, git_commit, host, pid, labels, started, connected, first_seen, last_seen, dropped";

fn read_agent(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AgentInfo, String, bool, i64, i64, i64)> {
    let info = AgentInfo {
        id: r.get(0)?,
        service: r.get(1)?,
        version: r.get(2)?,
        commit: r.get(3)?,
        host: r.get(4)?,
        pid: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        labels: Default::default(),
        // An agent that did not say when it started (serverless, old agents) shows when
        // the server first saw it, so `started` is always a date-time as documented.
        started: match r.get::<_, String>(7)? {
            s if s.is_empty() => crate::clock::rfc3339(r.get(9)?),
            s => s,
        },
    };
    Ok((
        info,
        r.get(6)?,
        r.get::<_, i64>(8)? != 0,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn to_agent(
    (mut info, labels, connected, first, last, dropped): (AgentInfo, String, bool, i64, i64, i64),
) -> Result<AgentRecord, StoreError> {
    info.labels = serde_json::from_str(&labels).map_err(|source| StoreError::Corrupt {
        what: "agent labels",
        source,
    })?;
    Ok(AgentRecord {
        info,
        connected,
        first_seen_ms: first,
        last_seen_ms: last,
        dropped: to_u64(dropped),
    })
}

pub(crate) fn status_word(s: StatusKind) -> &'static str {
    match s {
        StatusKind::Pending => "pending",
        StatusKind::Armed => "armed",
        StatusKind::Error => "error",
        StatusKind::RateLimited => "rate-limited",
        StatusKind::Expired => "expired",
        StatusKind::Done => "done",
        StatusKind::Disabled => "disabled",
    }
}

pub(crate) fn parse_status_word(s: &str) -> StatusKind {
    match s {
        "armed" => StatusKind::Armed,
        "error" => StatusKind::Error,
        "rate-limited" => StatusKind::RateLimited,
        "expired" => StatusKind::Expired,
        "done" => StatusKind::Done,
        "disabled" => StatusKind::Disabled,
        _ => StatusKind::Pending,
    }
}

impl Store for SqliteStore {
    fn insert_rule(&self, r: &StoredRule) -> Result<(), StoreError> {
        let json = serde_json::to_string(&r.rule).map_err(|source| StoreError::Corrupt {
            what: "rule",
            source,
        })?;
        let res = self.conn().execute(
            sql::INSERT_RULE,
            params![
                r.rule.id,
                json,
                r.created_ms,
                r.enabled,
                r.state.as_str(),
                r.expires_ms,
                r.rule.max_hits.map(to_i64),
                to_i64(r.hits)
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::DuplicateRule(r.rule.id.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }

    fn rules(&self) -> Result<Vec<StoredRule>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::SELECT_RULES).map_err(db)?;
        let rows = st.query_map([], read_rule).map_err(db)?;
        rows.map(|r| to_stored_rule(r.map_err(db)?)).collect()
    }

    fn rule(&self, id: &str) -> Result<Option<StoredRule>, StoreError> {
        let row = self
            .conn()
            .query_row(sql::SELECT_RULE, [id], read_rule)
            .optional()
            .map_err(db)?;
        row.map(to_stored_rule).transpose()
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<Option<StoredRule>, StoreError> {
        let n = self
            .conn()
            .execute(sql::SET_ENABLED, params![id, enabled])
            .map_err(db)?;
        if n == 0 {
            return Ok(None);
        }
        self.rule(id)
    }

    fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx.execute(sql::DELETE_RULE[0], [id]).map_err(db)?;
        for sql in &sql::DELETE_RULE[1..] {
            tx.execute(sql, [id]).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        self.forget_kept(Some(id));
        Ok(n > 0)
    }

    fn expire_rules(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let ids = {
            let mut st = tx
                .prepare("SELECT id FROM rules WHERE state = 'active' AND expires_at <= ?1")
                .map_err(db)?;
            let rows = st
                .query_map([now_ms], |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)?
        };
        tx.execute(
            "UPDATE rules SET state = 'expired' WHERE state = 'active' AND expires_at <= ?1",
            [now_ms],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    fn upsert_agent(&self, a: &AgentInfo, connected: bool, now_ms: i64) -> Result<(), StoreError> {
        upsert_agent_in(&self.conn(), a, connected, now_ms)
    }

    fn touch_agent(
        &self,
        id: &str,
        connected: Option<bool>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = match connected {
            Some(c) => conn.execute(
                "UPDATE agents SET last_seen = ?2, connected = ?3 WHERE id = ?1",
                params![id, now_ms, c],
            ),
            None => conn.execute(
                "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
                params![id, now_ms],
            ),
        }
        .map_err(db)?;
        Ok(n > 0)
    }

    fn disconnect_all(&self) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE agents SET connected = 0", [])
            .map_err(db)?;
        Ok(())
    }

    fn add_dropped(&self, agent: &str, dropped: u64) -> Result<(), StoreError> {
        add_dropped_in(&self.conn(), agent, dropped)
    }

    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"),
                [id],
                read_agent,
            )
            .optional()
            .map_err(db)?;
        row.map(to_agent).transpose()
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents ORDER BY last_seen DESC, id"
            ))
            .map_err(db)?;
        let rows = st.query_map([], read_agent).map_err(db)?;
        rows.map(|r| to_agent(r.map_err(db)?)).collect()
    }

    fn put_statuses(
        &self,
        agent: &str,
        statuses: &[RuleStatus],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        put_statuses_in(&tx, agent, statuses, now_ms)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn statuses(&self, rule: &str) -> Result<Vec<AgentRuleStatus>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::SELECT_STATUSES).map_err(db)?;
        let rows = st
            .query_map([rule], |r| read_status(r, 0, rule))
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn rules_with_statuses(&self) -> Result<Vec<(StoredRule, Vec<AgentRuleStatus>)>, StoreError> {
        let conn = self.conn();
        // One read: each rule's row repeated for each of its statuses (or once, with NULLs).
        let mut st = conn.prepare(sql::SELECT_RULES_WITH_STATUSES).map_err(db)?;
        let mut rows = st.query([]).map_err(db)?;
        let mut out: Vec<(StoredRule, Vec<AgentRuleStatus>)> = Vec::new();
        let mut last_id: Option<String> = None;
        while let Some(row) = rows.next().map_err(db)? {
            let id: String = row.get(6).map_err(db)?;
            if last_id.as_deref() != Some(id.as_str()) {
                out.push((to_stored_rule(read_rule(row).map_err(db)?)?, Vec::new()));
                last_id = Some(id.clone());
            }
            if row.get::<_, Option<String>>(7).map_err(db)?.is_some()
                && let Some((_, statuses)) = out.last_mut()
            {
                statuses.push(read_status(row, 7, &id).map_err(db)?);
            }
        }
        Ok(out)
    }

    fn sources(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::SELECT_SOURCES).map_err(db)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn put_source(&self, service: &str, spec_json: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn()
            .execute(sql::PUT_SOURCE, params![service, spec_json, now_ms])
            .map_err(db)?;
        Ok(())
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
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut batch = InsertBatch::default();
        let out = batch.insert(&tx, responses, now_ms)?;
        let kept = batch.retain(&tx, now_ms, retention, &self.kept)?;
        tx.commit().map_err(db)?;
        self.note_kept(kept);
        Ok(out)
    }

    fn write_batch(
        &self,
        agent: &str,
        hello: Option<(&AgentInfo, bool)>,
        writes: Vec<BatchWrite>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Vec<Inserted>, StoreError> {
        self.write_batch_in(&mut self.conn(), agent, hello, writes, now_ms, retention)
    }

    fn write_now(
        &self,
        job: BatchJob,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Result<Vec<Inserted>, StoreError>, Box<BatchJob>> {
        let mut conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            // A panic while holding the lock leaves the connection usable, as in `conn`.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(Box::new(job)),
        };
        let hello = job.hello.map(|connected| (&job.agent, connected));
        Ok(self.write_batch_in(
            &mut conn,
            &job.agent.id,
            hello,
            job.writes,
            now_ms,
            retention,
        ))
    }

    fn write_batches(
        &self,
        jobs: Vec<BatchJob>,
        now_ms: i64,
        retention: Retention,
    ) -> Vec<Result<Vec<Inserted>, StoreError>> {
        if let [_] = jobs.as_slice() {
            // One job needs no savepoint: its failure rolls back the transaction, its own.
            return jobs
                .into_iter()
                .map(|job| job.write_alone(self, now_ms, retention))
                .collect();
        }
        let n = jobs.len();
        let all_failed = |e: StoreError| {
            let message = e.to_string();
            (0..n)
                .map(|_| Err(StoreError::Database(message.clone())))
                .collect()
        };
        let mut conn = self.conn();
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return all_failed(db(e)),
        };
        let mut batch = InsertBatch::default();
        let mut out = Vec::with_capacity(n);
        for job in jobs {
            match apply_job(&tx, &mut batch, job, now_ms) {
                Ok(done) => out.push(done),
                Err(e) => return all_failed(e),
            }
        }
        let kept = match batch.retain(&tx, now_ms, retention, &self.kept) {
            Ok(kept) => kept,
            Err(e) => return all_failed(e),
        };
        if let Err(e) = tx.commit() {
            return all_failed(db(e));
        }
        self.note_kept(kept);
        out
    }

    fn groups_writes(&self) -> bool {
        // One connection behind a lock: writers take turns whatever calls them.
        true
    }

    fn prune_responses(&self, now_ms: i64, retention: Retention) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let responses = tx
            .execute(sql::DELETE_OLD_RESPONSES, [cutoff])
            .map_err(db)?;
        // A gone agent's series leave the sums once it has not been seen for as long.
        let series = tx
            .execute(
                "DELETE FROM metric_series WHERE agent NOT IN (
                    SELECT id FROM agents WHERE connected = 1 OR last_seen >= ?1)",
                [cutoff],
            )
            .map_err(db)?;
        tx.commit().map_err(db)?;
        if responses > 0 {
            self.forget_kept(None);
        }
        Ok((responses + series) as u64)
    }

    fn responses_after(
        &self,
        rule: Option<&str>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, Response)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::RESPONSES_AFTER).map_err(db)?;
        let rows = st
            .query_map(params![after, rule, to_i64(limit)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(db)?;
            let resp = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                what: "response",
                source,
            })?;
            out.push((id, resp));
        }
        Ok(out)
    }

    fn responses(&self, rule: Option<&str>, limit: u64) -> Result<Vec<Response>, StoreError> {
        let conn = self.conn();
        let limit = to_i64(limit);
        let jsons: Vec<String> = match rule {
            Some(rule) => {
                let mut st = conn.prepare(sql::NEWEST_RESPONSES_OF_RULE).map_err(db)?;
                st.query_map(params![rule, limit], |r| r.get(0))
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?
            }
            None => {
                let mut st = conn.prepare(sql::NEWEST_RESPONSES).map_err(db)?;
                st.query_map([limit], |r| r.get(0))
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?
            }
        };
        jsons
            .iter()
            .rev()
            .map(|j| {
                serde_json::from_str(j).map_err(|source| StoreError::Corrupt {
                    what: "response",
                    source,
                })
            })
            .collect()
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
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let out = Self::upsert_metrics_in(&tx, agent, series, now_ms)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn last_response_id(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row(sql::LAST_RESPONSE_ID, [], |r| r.get(0))
            .map_err(db)
    }

    fn metric_series(&self, rule: Option<&str>) -> Result<Vec<StoredSeries>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::SELECT_SERIES).map_err(db)?;
        let rows = st
            .query_map([rule], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (agent, service, json, updated_ms) = row.map_err(db)?;
            let series = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                what: "metric series",
                source,
            })?;
            out.push(StoredSeries {
                agent,
                service,
                series,
                updated_ms,
            });
        }
        Ok(out)
    }

    fn put_target(&self, name: &str, spec_json: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let existed = tx
            .query_row(sql::TARGET_EXISTS, [name], |_| Ok(()))
            .optional()
            .map_err(db)?
            .is_some();
        tx.execute(sql::PUT_TARGET, params![name, spec_json, now_ms])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(!existed)
    }

    fn targets(&self) -> Result<Vec<StoredTarget>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql::SELECT_TARGETS).map_err(db)?;
        let rows = st.query_map([], read_target).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn target(&self, name: &str) -> Result<Option<StoredTarget>, StoreError> {
        self.conn()
            .query_row(sql::SELECT_TARGET, [name], read_target)
            .optional()
            .map_err(db)
    }

    fn delete_target(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx.execute(sql::DELETE_TARGET[0], [name]).map_err(db)?;
        tx.execute(sql::DELETE_TARGET[1], [name]).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }

    fn claim_target(
        &self,
        name: &str,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                sql::CLAIM_TARGET,
                params![name, holder, now_ms.saturating_add(lease_ms), now_ms],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn outbox_pending(&self, target: &str, limit: u64) -> Result<Vec<OutboxEntry>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql::PENDING).map_err(db)?;
        let rows = st
            .query_map(params![target, to_i64(limit)], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    delivery: r.get(1)?,
                    kind: r.get(2)?,
                    payload: r.get(3)?,
                    attempts: to_u64(r.get(4)?),
                    created_ms: r.get(5)?,
                    rule: r.get(6)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn settle_outbox(
        &self,
        target: &str,
        settled: &[(i64, Settled)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let (mut sent, mut failed) = (0i64, 0i64);
        let mut last_error: Option<&str> = None;
        for (id, s) in settled {
            let n = match s {
                Settled::Sent => {
                    tx.execute(sql::FINISH, params![id, "sent", None::<String>, now_ms])
                }
                Settled::Skipped => {
                    tx.execute(sql::FINISH, params![id, "skipped", None::<String>, now_ms])
                }
                Settled::Failed(why) => {
                    last_error = Some(why);
                    tx.execute(sql::FINISH, params![id, "failed", why, now_ms])
                }
                Settled::Retry(why) => {
                    last_error = Some(why);
                    tx.execute(sql::RETRY, params![id, why, now_ms]).map(|_| 0)
                }
            }
            .map_err(db)?;
            match s {
                Settled::Sent => sent += n as i64,
                Settled::Failed(_) => failed += n as i64,
                _ => {}
            }
        }
        tx.execute(
            sql::COUNT_DELIVERIES,
            params![target, sent, failed, 0i64, last_error],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn disable_target(&self, name: &str, reason: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(sql::DISABLE_TARGET, params![name, reason])
            .map_err(db)?;
        Ok(())
    }

    fn bound_outbox(
        &self,
        target: &str,
        limits: OutboxLimits,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let old = tx
            .execute(
                sql::DROP_OLD,
                params![target, now_ms.saturating_sub(limits.max_age_ms), now_ms],
            )
            .map_err(db)?;
        let over = tx
            .execute(
                sql::DROP_OVER,
                params![target, to_i64(limits.max_pending), now_ms],
            )
            .map_err(db)?;
        tx.execute(
            sql::FORGET_FINISHED,
            params![target, now_ms.saturating_sub(limits.keep_finished_ms)],
        )
        .map_err(db)?;
        let dropped = (old + over) as i64;
        if dropped > 0 {
            tx.execute(
                sql::COUNT_DELIVERIES,
                params![target, 0i64, 0i64, dropped, None::<String>],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(dropped as u64)
    }

    fn enqueue_outbox(&self, entries: &[NewEntry], now_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut n = 0;
        for e in entries {
            n += tx
                .execute(
                    sql::ENQUEUE,
                    params![
                        e.target, e.rule, 0i64, e.delivery, now_ms, e.kind, e.payload
                    ],
                )
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn rule_deliveries(&self, rule: &str) -> Result<Vec<(String, String, u64)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql::RULE_DELIVERIES).map_err(db)?;
        let rows = st
            .query_map([rule], |r| Ok((r.get(0)?, r.get(1)?, to_u64(r.get(2)?))))
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }
}

/// [`Store::write_batch`]'s writes inside a transaction, with `batch` collecting what
/// retention needs.
fn apply_writes(
    tx: &Connection,
    batch: &mut InsertBatch,
    agent: &str,
    hello: Option<(&AgentInfo, bool)>,
    writes: Vec<BatchWrite>,
    now_ms: i64,
) -> Result<Vec<Inserted>, StoreError> {
    if let Some((info, connected)) = hello {
        upsert_agent_in(tx, info, connected, now_ms)?;
    }
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            BatchWrite::Responses { responses, dropped } => {
                if dropped > 0 {
                    add_dropped_in(tx, agent, dropped)?;
                }
                batch.insert(tx, responses, now_ms)?
            }
            BatchWrite::Statuses(statuses) => {
                put_statuses_in(tx, agent, &statuses, now_ms)?;
                Inserted::default()
            }
        });
    }
    Ok(out)
}

/// One job of [`Store::write_batches`] in a savepoint of `tx`: when it fails, what it wrote
/// is rolled back and counts for nothing in `batch`, and the other jobs go on. The outer
/// error: the savepoint itself failed, and with it the transaction (every job of the group).
fn apply_job(
    tx: &Connection,
    batch: &mut InsertBatch,
    job: BatchJob,
    now_ms: i64,
) -> Result<Result<Vec<Inserted>, StoreError>, StoreError> {
    // Cached statements rather than rusqlite's `Savepoint`, which parses its SQL each time.
    let run = |sql: &str| {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map_err(db)
    };
    run("SAVEPOINT job")?;
    // The job's own counts; the rule routes read are true whatever the job does.
    let mut part = InsertBatch {
        touched: Vec::new(),
        routes: std::mem::take(&mut batch.routes),
    };
    let hello = job.hello.map(|connected| (&job.agent, connected));
    let done = apply_writes(tx, &mut part, &job.agent.id, hello, job.writes, now_ms);
    batch.routes = std::mem::take(&mut part.routes);
    let out = match done {
        Ok(out) => out,
        Err(e) => {
            // Back to the savepoint, which is then let go.
            run("ROLLBACK TO job")?;
            run("RELEASE job")?;
            return Ok(Err(e));
        }
    };
    run("RELEASE job")?;
    for (rule, added) in &part.touched {
        batch.touch(rule, *added);
    }
    Ok(Ok(out))
}

fn upsert_agent_in(
    conn: &Connection,
    a: &AgentInfo,
    connected: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    let labels = serde_json::to_string(&a.labels).map_err(|source| StoreError::Corrupt {
        what: "agent labels",
        source,
    })?;
    conn.prepare_cached(&format!(
        "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, 0)
         ON CONFLICT (id) DO UPDATE SET service = ?2, version = ?3, git_commit = ?4, host = ?5,
            pid = ?6, labels = ?7, started = ?8, connected = ?9, last_seen = ?10"
    ))
    .and_then(|mut st| {
        st.execute(params![
            a.id,
            a.service,
            a.version,
            a.commit,
            a.host,
            i64::from(a.pid),
            labels,
            a.started,
            connected,
            now_ms
        ])
    })
    .map_err(db)?;
    Ok(())
}

fn add_dropped_in(conn: &Connection, agent: &str, dropped: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        // Saturating: `dropped + n` past the largest integer would turn into a REAL.
        "UPDATE agents SET dropped = CASE WHEN dropped > 9223372036854775807 - ?2
            THEN 9223372036854775807 ELSE dropped + ?2 END WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![agent, to_i64(dropped)]))
    .map_err(db)?;
    Ok(())
}

fn put_statuses_in(
    conn: &Connection,
    agent: &str,
    statuses: &[RuleStatus],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut st = conn
        .prepare_cached(
            "INSERT INTO rule_status (rule, agent, status, message, probes, hits, dropped, updated, fast_path)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE EXISTS (SELECT 1 FROM rules WHERE id = ?1)
             ON CONFLICT (rule, agent) DO UPDATE SET status = ?3, message = ?4, probes = ?5,
                hits = ?6, dropped = ?7, updated = ?8, fast_path = ?9",
        )
        .map_err(db)?;
    for s in statuses {
        st.execute(params![
            s.rule,
            agent,
            status_word(s.status),
            s.message,
            i64::from(s.probes),
            to_i64(s.hits),
            to_i64(s.dropped),
            now_ms,
            s.fast_path
        ])
        .map_err(db)?;
    }
    Ok(())
}

/// Responses stored within one transaction: the rules they touched (retention is applied
/// to each once, at the end) and each rule's targets (read once).
#[derive(Default)]
struct InsertBatch {
    /// The rules written to, with how many responses each got.
    touched: Vec<(String, u64)>,
    routes: HashMap<String, Vec<String>>,
}

impl InsertBatch {
    /// Counts `added` more responses of `rule` for retention.
    fn touch(&mut self, rule: &str, added: u64) {
        match self.touched.iter_mut().find(|(r, _)| r == rule) {
            Some((_, n)) => *n += added,
            None => self.touched.push((rule.to_string(), added)),
        }
    }

    fn insert(
        &mut self,
        tx: &Connection,
        responses: Vec<Response>,
        now_ms: i64,
    ) -> Result<Inserted, StoreError> {
        let mut out = Inserted::default();
        for resp in responses {
            let counted = tx
                .prepare_cached(sql::COUNT_HIT)
                .and_then(|mut st| st.execute([&resp.rule]))
                .map_err(db)?;
            if counted == 0 {
                out.refused += 1;
                if !out.unknown.contains(&resp.rule) {
                    let known = tx
                        .prepare_cached(sql::RULE_EXISTS)
                        .and_then(|mut st| st.query_row([&resp.rule], |_| Ok(())))
                        .optional()
                        .map_err(db)?
                        .is_some();
                    if !known {
                        out.unknown.push(resp.rule.clone());
                    }
                }
                continue;
            }
            let json = serde_json::to_string(&resp).map_err(|source| StoreError::Corrupt {
                what: "response",
                source,
            })?;
            let rid: i64 = tx
                .prepare_cached(sql::INSERT_RESPONSE)
                .and_then(|mut st| {
                    st.query_row(params![resp.rule, resp.agent, now_ms, json], |r| r.get(0))
                })
                .map_err(db)?;
            let finished = tx
                .prepare_cached(sql::MARK_DONE)
                .and_then(|mut st| st.execute([&resp.rule]))
                .map_err(db)?;
            if finished > 0 {
                out.done.push(resp.rule.clone());
            }
            if !self.routes.contains_key(&resp.rule) {
                let rule_json: Option<String> = tx
                    .prepare_cached(sql::RULE_JSON)
                    .and_then(|mut st| st.query_row([&resp.rule], |r| r.get(0)))
                    .optional()
                    .map_err(db)?;
                let to = rule_json
                    .map(|j| crate::outbox::routes(&j))
                    .unwrap_or_default();
                self.routes.insert(resp.rule.clone(), to);
            }
            for target in self.routes.get(&resp.rule).into_iter().flatten() {
                let n = tx
                    .prepare_cached(sql::ENQUEUE)
                    .and_then(|mut st| {
                        st.execute(params![
                            target,
                            resp.rule,
                            rid,
                            crate::outbox::delivery_id(rid, &json),
                            now_ms,
                            "response",
                            json
                        ])
                    })
                    .map_err(db)?;
                out.queued += n;
            }
            self.touch(&resp.rule, 1);
            out.stored.push((rid, resp));
        }
        Ok(out)
    }

    /// Applies `retention` to the rules touched (each keeps its newest `per_rule`, counted
    /// from what `known` says it stored before this batch), and to all by age. What it
    /// returns goes into [`SqliteStore::kept`] once the transaction commits.
    fn retain(
        &self,
        tx: &Connection,
        now_ms: i64,
        retention: Retention,
        known: &Mutex<HashMap<String, u64>>,
    ) -> Result<Kept, StoreError> {
        let mut out = Kept::default();
        if self.touched.is_empty() {
            return Ok(out);
        }
        for (rule, added) in &self.touched {
            let before = known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(rule)
                .copied();
            let stored = match before {
                Some(n) => n.saturating_add(*added),
                // Not counted since start: the count includes this batch's rows.
                None => to_u64(
                    tx.prepare_cached(sql::COUNT_RESPONSES_OF_RULE)
                        .and_then(|mut st| st.query_row([rule], |r| r.get(0)))
                        .map_err(db)?,
                ),
            };
            let over = stored.saturating_sub(retention.per_rule);
            if over > 0 {
                tx.prepare_cached(sql::DELETE_OLDEST_OF_RULE)
                    .and_then(|mut st| st.execute(params![rule, to_i64(over)]))
                    .map_err(db)?;
            }
            out.counts.push((rule.clone(), stored - over));
        }
        let aged = tx
            .prepare_cached(sql::DELETE_OLD_RESPONSES)
            .and_then(|mut st| st.execute([now_ms.saturating_sub(retention.max_age_ms)]))
            .map_err(db)?;
        out.aged = aged > 0;
        Ok(out)
    }
}

/// What retention left of the rules a batch touched, for [`SqliteStore::kept`].
#[derive(Default)]
struct Kept {
    counts: Vec<(String, u64)>,
    /// The age limit removed rows of any rule: every count is unknown again.
    aged: bool,
}

fn read_target(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredTarget> {
    Ok(StoredTarget {
        name: r.get(0)?,
        spec_json: r.get(1)?,
        created_ms: r.get(2)?,
        disabled: r.get(3)?,
        sent: to_u64(r.get(4)?),
        failed: to_u64(r.get(5)?),
        dropped: to_u64(r.get(6)?),
        last_error: r.get(7)?,
        pending: to_u64(r.get(8)?),
        oldest_pending_ms: r.get(9)?,
    })
}

/// The metric of a rule that takes series now: an active `metric` rule's name and kind.
fn active_metric(
    tx: &rusqlite::Transaction<'_>,
    rule: &str,
) -> Result<Option<(String, MetricKind)>, StoreError> {
    let json: Option<String> = tx
        .query_row(
            "SELECT json FROM rules WHERE id = ?1 AND state = 'active'",
            [rule],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let Some(json) = json else { return Ok(None) };
    let rule: Rule = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
        what: "rule",
        source,
    })?;
    Ok(match (rule.action, rule.metric) {
        (Action::Metric, Some(m)) => Some((m.name, m.kind)),
        _ => None,
    })
}

impl SqliteStore {
    fn upsert_metrics_in(
        tx: &rusqlite::Transaction<'_>,
        agent: &str,
        series: &[MetricSeries],
        now_ms: i64,
    ) -> Result<MetricsStored, StoreError> {
        let mut out = MetricsStored::default();
        let service: Option<String> = tx
            .query_row(sql::AGENT_SERVICE, [agent], |r| r.get(0))
            .optional()
            .map_err(db)?;
        let Some(service) = service else {
            out.refused = series.len();
            return Ok(out);
        };
        let mut metrics: HashMap<String, Option<(String, MetricKind)>> = HashMap::new();
        // Series this agent has per rule, read once per rule and kept up to date.
        let mut per_rule: HashMap<String, usize> = HashMap::new();
        let mut touched: Vec<String> = Vec::new();
        for s in series {
            if !metrics.contains_key(&s.rule) {
                metrics.insert(s.rule.clone(), active_metric(tx, &s.rule)?);
            }
            let Some(Some((name, kind))) = metrics.get(&s.rule) else {
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
            let held: Option<i64> = tx
                .query_row(sql::SERIES_COUNT, params![s.rule, agent, tags], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            match held {
                // Counts only grow on an agent: a lower one is an older report arriving late.
                Some(held) if to_u64(held) > s.count => {
                    out.stale += 1;
                    continue;
                }
                Some(_) => {
                    tx.execute(
                        sql::UPDATE_SERIES,
                        params![s.rule, agent, tags, service, to_i64(s.count), json, now_ms],
                    )
                    .map_err(db)?;
                }
                None => {
                    let n = match per_rule.get_mut(&s.rule) {
                        Some(n) => n,
                        None => {
                            let n: i64 = tx
                                .query_row(sql::SERIES_OF_AGENT, params![s.rule, agent], |r| {
                                    r.get(0)
                                })
                                .map_err(db)?;
                            per_rule.entry(s.rule.clone()).or_insert(to_u64(n) as usize)
                        }
                    };
                    if *n >= MAX_SERIES_PER_RULE {
                        out.refused += 1;
                        continue;
                    }
                    *n += 1;
                    tx.execute(
                        sql::INSERT_SERIES,
                        params![s.rule, agent, tags, service, to_i64(s.count), json, now_ms],
                    )
                    .map_err(db)?;
                }
            }
            out.stored += 1;
            if !touched.contains(&s.rule) {
                touched.push(s.rule.clone());
            }
        }
        for rule in touched {
            // Summed saturating here: SQL's SUM fails with `integer overflow` past the largest
            // integer, which would refuse every later report of the rule.
            let hits = {
                let mut st = tx
                    .prepare_cached("SELECT count FROM metric_series WHERE rule = ?1")
                    .map_err(db)?;
                let counts = st.query_map([&rule], |r| r.get::<_, i64>(0)).map_err(db)?;
                let mut hits = 0i64;
                for c in counts {
                    hits = hits.saturating_add(c.map_err(db)?.max(0));
                }
                hits
            };
            tx.execute(sql::SET_METRIC_HITS, params![&rule, hits])
                .map_err(db)?;
            let finished = tx.execute(sql::FINISH_METRIC_RULE, [&rule]).map_err(db)?;
            if finished > 0 {
                out.done.push(rule);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(agent: &str) -> BatchJob {
        let info: AgentInfo =
            serde_json::from_value(serde_json::json!({"id": agent, "service": "svc"}))
                .expect("agent info");
        let response: Response = serde_json::from_value(serde_json::json!({
            "rule": "r1", "agent": agent, "service": "svc",
            "time": "2026-01-01T00:00:00Z", "thread": "main", "message": "hit 1",
            "location": {"file": "a.rs", "line": 1, "function": "a::f"},
            "frames": [], "locals": {}
        }))
        .expect("response");
        BatchJob {
            agent: info,
            hello: Some(false),
            writes: vec![BatchWrite::Responses {
                responses: vec![response],
                dropped: 2,
            }],
        }
    }

    #[test]
    fn a_write_now_gives_the_job_back_untouched_while_the_store_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("nonstop.db")).expect("open");
        let mut rule: Rule =
            serde_json::from_str(r#"{"at":"a.rs:1","action":"log","template":"m"}"#).expect("rule");
        rule.id = "r1".into();
        store
            .insert_rule(&StoredRule {
                rule,
                created_ms: 1,
                expires_ms: None,
                state: RuleState::Active,
                enabled: true,
                hits: 0,
            })
            .expect("rule stored");
        let keep = Retention::default();

        let held = store.conn();
        let back = store.write_now(job("a1"), 10, keep);
        assert_eq!(back.err(), Some(Box::new(job("a1"))));
        drop(held);
        assert!(store.responses(None, 10).expect("responses").is_empty());
        assert!(store.agents().expect("agents").is_empty());

        let done = store
            .write_now(job("a1"), 10, keep)
            .expect("the store is free")
            .expect("written");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].stored.len(), 1);
        let stored = store.responses(None, 10).expect("responses");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].message.as_deref(), Some("hit 1"));
        let agents = store.agents().expect("agents");
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].info.id, "a1");
        assert_eq!(agents[0].dropped, 2);
    }
}
