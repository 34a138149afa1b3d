//! The SQLite store: one file, WAL, numbered migrations recorded in `schema_migrations`.

use crate::store::{
    AgentRecord, AgentRuleStatus, Inserted, Retention, RuleState, Store, StoreError, StoredRule,
};
use nonstop_model::{AgentInfo, Response, Rule, RuleStatus, StatusKind};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Schema migrations, applied in order; the index + 1 is the version recorded.
/// Keep the SQL portable (PostgreSQL would take `BIGSERIAL` for the `INTEGER PRIMARY KEY`).
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    // One connection: SQLite writes one at a time anyway, and calls are short.
    conn: Mutex<Connection>,
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
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable; take it back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const RULE_COLUMNS: &str = "json, created, expires_at, state, hits";

fn read_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, Option<i64>, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_stored_rule(
    (json, created_ms, expires_ms, state, hits): (String, i64, Option<i64>, String, i64),
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
        started: r.get(7)?,
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

fn status_word(s: StatusKind) -> &'static str {
    match s {
        StatusKind::Pending => "pending",
        StatusKind::Armed => "armed",
        StatusKind::Error => "error",
        StatusKind::RateLimited => "rate-limited",
        StatusKind::Expired => "expired",
        StatusKind::Done => "done",
    }
}

fn parse_status_word(s: &str) -> StatusKind {
    match s {
        "armed" => StatusKind::Armed,
        "error" => StatusKind::Error,
        "rate-limited" => StatusKind::RateLimited,
        "expired" => StatusKind::Expired,
        "done" => StatusKind::Done,
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
            "INSERT INTO rules (id, json, created, enabled, state, expires_at, max_hits, hits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.rule.id,
                json,
                r.created_ms,
                r.state == RuleState::Active,
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
        let mut st = conn
            .prepare(&format!(
                "SELECT {RULE_COLUMNS} FROM rules ORDER BY created, id"
            ))
            .map_err(db)?;
        let rows = st.query_map([], read_rule).map_err(db)?;
        rows.map(|r| to_stored_rule(r.map_err(db)?)).collect()
    }

    fn rule(&self, id: &str) -> Result<Option<StoredRule>, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {RULE_COLUMNS} FROM rules WHERE id = ?1"),
                [id],
                read_rule,
            )
            .optional()
            .map_err(db)?;
        row.map(to_stored_rule).transpose()
    }

    fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute("DELETE FROM rules WHERE id = ?1", [id])
            .map_err(db)?;
        tx.execute("DELETE FROM rule_status WHERE rule = ?1", [id])
            .map_err(db)?;
        tx.commit().map_err(db)?;
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
            "UPDATE rules SET state = 'expired', enabled = 0 WHERE state = 'active' AND expires_at <= ?1",
            [now_ms],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    fn upsert_agent(&self, a: &AgentInfo, connected: bool, now_ms: i64) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&a.labels).map_err(|source| StoreError::Corrupt {
            what: "agent labels",
            source,
        })?;
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, 0)
                     ON CONFLICT (id) DO UPDATE SET service = ?2, version = ?3, git_commit = ?4, host = ?5,
                        pid = ?6, labels = ?7, started = ?8, connected = ?9, last_seen = ?10"
                ),
                params![
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
                ],
            )
            .map_err(db)?;
        Ok(())
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
        self.conn()
            .execute(
                "UPDATE agents SET dropped = dropped + ?2 WHERE id = ?1",
                params![agent, to_i64(dropped)],
            )
            .map_err(db)?;
        Ok(())
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
        for s in statuses {
            tx.execute(
                "INSERT INTO rule_status (rule, agent, status, message, probes, hits, dropped, updated)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM rules WHERE id = ?1)
                 ON CONFLICT (rule, agent) DO UPDATE SET status = ?3, message = ?4, probes = ?5,
                    hits = ?6, dropped = ?7, updated = ?8",
                params![
                    s.rule,
                    agent,
                    status_word(s.status),
                    s.message,
                    i64::from(s.probes),
                    to_i64(s.hits),
                    to_i64(s.dropped),
                    now_ms
                ],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn statuses(&self, rule: &str) -> Result<Vec<AgentRuleStatus>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT agent, status, message, probes, hits, dropped, updated FROM rule_status
                 WHERE rule = ?1 ORDER BY agent",
            )
            .map_err(db)?;
        let rows = st
            .query_map([rule], |r| {
                Ok(AgentRuleStatus {
                    agent: r.get(0)?,
                    status: RuleStatus {
                        rule: rule.to_string(),
                        status: parse_status_word(&r.get::<_, String>(1)?),
                        message: r.get(2)?,
                        probes: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                        hits: to_u64(r.get(4)?),
                        dropped: to_u64(r.get(5)?),
                    },
                    updated_ms: r.get(6)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn insert_responses(
        &self,
        responses: Vec<Response>,
        now_ms: i64,
        retention: Retention,
    ) -> Result<Inserted, StoreError> {
        let mut out = Inserted::default();
        if responses.is_empty() {
            return Ok(out);
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut touched: Vec<String> = Vec::new();
        for resp in responses {
            // One atomic step counts the hit if the rule is active and below its max.
            let counted = tx
                .execute(
                    "UPDATE rules SET hits = hits + 1
                     WHERE id = ?1 AND state = 'active' AND (max_hits IS NULL OR hits < max_hits)",
                    [&resp.rule],
                )
                .map_err(db)?;
            if counted == 0 {
                out.refused += 1;
                continue;
            }
            let json = serde_json::to_string(&resp).map_err(|source| StoreError::Corrupt {
                what: "response",
                source,
            })?;
            let rid: i64 = tx
                .query_row(
                    "INSERT INTO responses (rule, agent, time, json) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                    params![resp.rule, resp.agent, now_ms, json],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let finished = tx
                .execute(
                    "UPDATE rules SET state = 'done', enabled = 0
                     WHERE id = ?1 AND state = 'active' AND max_hits IS NOT NULL AND hits >= max_hits",
                    [&resp.rule],
                )
                .map_err(db)?;
            if finished > 0 {
                out.done.push(resp.rule.clone());
            }
            if !touched.contains(&resp.rule) {
                touched.push(resp.rule.clone());
            }
            out.stored.push((rid, resp));
        }
        for rule in &touched {
            tx.execute(
                "DELETE FROM responses WHERE rule = ?1 AND id <= (
                    SELECT id FROM responses WHERE rule = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![rule, to_i64(retention.per_rule)],
            )
            .map_err(db)?;
        }
        tx.execute(
            "DELETE FROM responses WHERE time < ?1",
            [now_ms.saturating_sub(retention.max_age_ms)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn prune_responses(&self, now_ms: i64, retention: Retention) -> Result<u64, StoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM responses WHERE time < ?1",
                [now_ms.saturating_sub(retention.max_age_ms)],
            )
            .map_err(db)?;
        Ok(n as u64)
    }

    fn responses_after(
        &self,
        rule: Option<&str>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, Response)>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, json FROM responses WHERE id > ?1 AND (?2 IS NULL OR rule = ?2)
                 ORDER BY id LIMIT ?3",
            )
            .map_err(db)?;
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
                let mut st = conn
                    .prepare("SELECT json FROM responses WHERE rule = ?1 ORDER BY id DESC LIMIT ?2")
                    .map_err(db)?;
                st.query_map(params![rule, limit], |r| r.get(0))
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?
            }
            None => {
                let mut st = conn
                    .prepare("SELECT json FROM responses ORDER BY id DESC LIMIT ?1")
                    .map_err(db)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(rule: &str, n: u32) -> Response {
        Response {
            rule: rule.into(),
            agent: "a1".into(),
            service: "svc".into(),
            time: "2026-01-01T00:00:00Z".into(),
            thread: "main".into(),
            location: Default::default(),
            message: Some(format!("hit {n}")),
            frames: vec![],
            locals: Default::default(),
            watch: Default::default(),
        }
    }

    fn stored(id: &str, max_hits: Option<u64>) -> StoredRule {
        let mut rule: Rule =
            serde_json::from_str(r#"{"at":"a.rs:1","action":"snapshot"}"#).unwrap();
        rule.id = id.into();
        rule.max_hits = max_hits;
        StoredRule {
            rule,
            created_ms: 1,
            expires_ms: Some(1000),
            state: RuleState::Active,
            hits: 0,
        }
    }

    #[test]
    fn max_hits_and_retention_hold() {
        let s = SqliteStore::in_memory().unwrap();
        s.insert_rule(&stored("r-a", Some(3))).unwrap();
        s.insert_rule(&stored("r-b", None)).unwrap();
        assert!(matches!(
            s.insert_rule(&stored("r-a", None)),
            Err(StoreError::DuplicateRule(_))
        ));
        let keep = Retention {
            per_rule: 2,
            max_age_ms: 1_000_000,
        };
        let batch = (0..5).map(|n| response("r-a", n)).collect();
        let ins = s.insert_responses(batch, 10, keep).unwrap();
        assert_eq!(
            (ins.stored.len(), ins.refused, ins.done.clone()),
            (3, 2, vec!["r-a".to_string()])
        );
        assert_eq!(s.rule("r-a").unwrap().unwrap().state, RuleState::Done);
        let batch = (0..5).map(|n| response("r-b", n)).collect();
        s.insert_responses(batch, 10, keep).unwrap();
        let kept = s.responses(Some("r-b"), 100).unwrap();
        let msgs: Vec<_> = kept.iter().map(|r| r.message.clone().unwrap()).collect();
        assert_eq!(msgs, ["hit 3", "hit 4"]);
        let after = s.responses_after(Some("r-b"), 0, 100).unwrap();
        let ids: Vec<i64> = after.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
        assert_eq!(
            s.responses_after(Some("r-b"), ids[0], 100).unwrap().len(),
            1
        );
        assert_eq!(s.responses_after(None, 0, 100).unwrap().len(), 4);
        let old = Retention {
            per_rule: 100,
            max_age_ms: 5,
        };
        assert_eq!(s.prune_responses(15, old).unwrap(), 0);
        assert_eq!(s.prune_responses(16, old).unwrap(), 4);
        assert_eq!(s.expire_rules(999).unwrap(), Vec::<String>::new());
        assert_eq!(s.expire_rules(1000).unwrap(), vec!["r-b".to_string()]);
    }
}
