//! SQL that the SQLite and the PostgreSQL store share, written once with `?N` parameters
//! (SQLite's form; [`pg`] turns them into PostgreSQL's `$N`). Both schemas use the same
//! names and types (`INTEGER` 0/1 for flags, `BIGINT` for counts and Unix-ms times), so
//! most statements read the same in both dialects; what differs stays in each store. A
//! parameter PostgreSQL cannot type from its use alone is cast (`CAST(?1 AS TEXT) IS NULL`).

// A rule is read from its columns json, created, expires_at, state, hits, enabled.
pub(crate) const INSERT_RULE: &str =
    "INSERT INTO rules (id, json, created, enabled, state, expires_at, max_hits, hits)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(crate) const SELECT_RULES: &str =
    "SELECT json, created, expires_at, state, hits, enabled FROM rules ORDER BY created, id";
pub(crate) const SELECT_RULE: &str =
    "SELECT json, created, expires_at, state, hits, enabled FROM rules WHERE id = ?1";
pub(crate) const SET_ENABLED: &str = "UPDATE rules SET enabled = ?2 WHERE id = ?1";
pub(crate) const DELETE_RULE: [&str; 4] = [
    "DELETE FROM rules WHERE id = ?1",
    "DELETE FROM rule_status WHERE rule = ?1",
    "DELETE FROM metric_series WHERE rule = ?1",
    // Its responses go with it (the index by rule makes this one range).
    "DELETE FROM responses WHERE rule = ?1",
];
pub(crate) const SELECT_STATUSES: &str =
    "SELECT agent, status, message, probes, hits, dropped, updated, fast_path FROM rule_status
     WHERE rule = ?1 ORDER BY agent";
pub(crate) const SELECT_RULES_WITH_STATUSES: &str =
    "SELECT r.json, r.created, r.expires_at, r.state, r.hits, r.enabled, r.id,
            s.agent, s.status, s.message, s.probes, s.hits, s.dropped, s.updated, s.fast_path
     FROM rules r LEFT JOIN rule_status s ON s.rule = r.id
     ORDER BY r.created, r.id, s.agent";
pub(crate) const SELECT_SOURCES: &str = "SELECT service, spec FROM sources ORDER BY service";
pub(crate) const PUT_SOURCE: &str =
    "INSERT INTO sources (service, spec, updated) VALUES (?1, ?2, ?3)
     ON CONFLICT (service) DO UPDATE SET spec = ?2, updated = ?3";

/// One atomic step counts a hit if the rule is active, enabled and below its max (a
/// response still in flight when its rule was disabled is refused).
pub(crate) const COUNT_HIT: &str = "UPDATE rules SET hits = hits + 1
     WHERE id = ?1 AND state = 'active' AND enabled = 1
       AND (max_hits IS NULL OR hits < max_hits)";
pub(crate) const RULE_EXISTS: &str = "SELECT 1 FROM rules WHERE id = ?1";
pub(crate) const INSERT_RESPONSE: &str =
    "INSERT INTO responses (rule, agent, time, json) VALUES (?1, ?2, ?3, ?4) RETURNING id";
pub(crate) const MARK_DONE: &str = "UPDATE rules SET state = 'done'
     WHERE id = ?1 AND state = 'active' AND max_hits IS NOT NULL AND hits >= max_hits";
/// Keeps a rule's newest `?2` responses.
pub(crate) const KEEP_NEWEST: &str = "DELETE FROM responses WHERE rule = ?1 AND id <= (
     SELECT id FROM responses WHERE rule = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)";
/// How many responses a rule has stored (once per rule per start, on SQLite).
pub(crate) const COUNT_RESPONSES_OF_RULE: &str = "SELECT COUNT(*) FROM responses WHERE rule = ?1";
/// Deletes a rule's `?2` oldest responses: from the oldest end of the index, so its cost is
/// what it deletes, not the `per_rule` newest that stay.
pub(crate) const DELETE_OLDEST_OF_RULE: &str = "DELETE FROM responses WHERE id IN (
     SELECT id FROM responses WHERE rule = ?1 ORDER BY id LIMIT ?2)";
pub(crate) const DELETE_OLD_RESPONSES: &str = "DELETE FROM responses WHERE time < ?1";
pub(crate) const RESPONSES_AFTER: &str =
    "SELECT id, json FROM responses WHERE id > ?1 AND (CAST(?2 AS TEXT) IS NULL OR rule = ?2)
     ORDER BY id LIMIT ?3";
pub(crate) const NEWEST_RESPONSES_OF_RULE: &str =
    "SELECT json FROM responses WHERE rule = ?1 ORDER BY id DESC LIMIT ?2";
pub(crate) const NEWEST_RESPONSES: &str = "SELECT json FROM responses ORDER BY id DESC LIMIT ?1";
pub(crate) const LAST_RESPONSE_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM responses";

pub(crate) const SERIES_COUNT: &str =
    "SELECT count FROM metric_series WHERE rule = ?1 AND agent = ?2 AND tags = ?3";
pub(crate) const UPDATE_SERIES: &str =
    "UPDATE metric_series SET service = ?4, count = ?5, json = ?6, updated = ?7
     WHERE rule = ?1 AND agent = ?2 AND tags = ?3";
pub(crate) const SERIES_OF_AGENT: &str =
    "SELECT COUNT(*) FROM metric_series WHERE rule = ?1 AND agent = ?2";
pub(crate) const INSERT_SERIES: &str =
    "INSERT INTO metric_series (rule, agent, tags, service, count, json, updated)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub(crate) const SET_METRIC_HITS: &str = "UPDATE rules SET hits = ?2 WHERE id = ?1";
pub(crate) const FINISH_METRIC_RULE: &str = "UPDATE rules SET state = 'done', enabled = 0
     WHERE id = ?1 AND state = 'active' AND max_hits IS NOT NULL AND hits >= max_hits";
pub(crate) const SELECT_SERIES: &str = "SELECT agent, service, json, updated FROM metric_series
     WHERE (CAST(?1 AS TEXT) IS NULL OR rule = ?1) ORDER BY rule, agent, tags";
pub(crate) const AGENT_SERVICE: &str = "SELECT service FROM agents WHERE id = ?1";

// Targets and their outboxes (`crate::outbox`). A target's row keeps its settings (the
// spec's JSON, secrets whole), a status when disabled, and cumulative counts; each outbox
// row is one response (or metric report) for one target, `pending` until its worker marks
// it `sent`, `failed`, `skipped` or `dropped` (its payload then cleared).
pub(crate) const TARGET_EXISTS: &str = "SELECT 1 FROM targets WHERE name = ?1";
pub(crate) const PUT_TARGET: &str = "INSERT INTO targets (name, spec, created) VALUES (?1, ?2, ?3)
     ON CONFLICT (name) DO UPDATE SET spec = ?2, disabled = NULL";
pub(crate) const SELECT_TARGETS: &str =
    "SELECT t.name, t.spec, t.created, t.disabled, t.sent, t.failed, t.dropped, t.last_error,
        (SELECT COUNT(*) FROM outbox o WHERE o.target = t.name AND o.state = 'pending'),
        (SELECT MIN(o.created) FROM outbox o WHERE o.target = t.name AND o.state = 'pending')
     FROM targets t ORDER BY t.name";
pub(crate) const SELECT_TARGET: &str =
    "SELECT t.name, t.spec, t.created, t.disabled, t.sent, t.failed, t.dropped, t.last_error,
        (SELECT COUNT(*) FROM outbox o WHERE o.target = t.name AND o.state = 'pending'),
        (SELECT MIN(o.created) FROM outbox o WHERE o.target = t.name AND o.state = 'pending')
     FROM targets t WHERE t.name = ?1";
pub(crate) const DELETE_TARGET: [&str; 2] = [
    "DELETE FROM targets WHERE name = ?1",
    "DELETE FROM outbox WHERE target = ?1",
];
pub(crate) const RULE_JSON: &str = "SELECT json FROM rules WHERE id = ?1";
/// Queues a payload for a target unless the target is gone or disabled.
pub(crate) const ENQUEUE: &str =
    "INSERT INTO outbox (target, rule, response, delivery, created, updated, state, attempts, kind, payload)
     SELECT name, CAST(?2 AS TEXT), CAST(?3 AS BIGINT), CAST(?4 AS TEXT), CAST(?5 AS BIGINT),
            CAST(?5 AS BIGINT), 'pending', 0, CAST(?6 AS TEXT), CAST(?7 AS TEXT)
     FROM targets WHERE name = ?1 AND disabled IS NULL";
pub(crate) const PENDING: &str =
    "SELECT id, delivery, kind, payload, attempts, created, rule FROM outbox
     WHERE target = ?1 AND state = 'pending' ORDER BY id LIMIT ?2";
pub(crate) const FINISH: &str =
    "UPDATE outbox SET state = ?2, error = CAST(?3 AS TEXT), updated = ?4, payload = ''
     WHERE id = ?1 AND state = 'pending'";
pub(crate) const RETRY: &str = "UPDATE outbox SET attempts = attempts + 1, error = ?2, updated = ?3
     WHERE id = ?1 AND state = 'pending'";
pub(crate) const COUNT_DELIVERIES: &str =
    "UPDATE targets SET sent = sent + ?2, failed = failed + ?3, dropped = dropped + ?4,
        last_error = COALESCE(CAST(?5 AS TEXT), last_error)
     WHERE name = ?1";
pub(crate) const DISABLE_TARGET: &str =
    "UPDATE targets SET disabled = ?2, last_error = ?2 WHERE name = ?1";
pub(crate) const DROP_OLD: &str =
    "UPDATE outbox SET state = 'dropped', error = 'older than the outbox keeps (--outbox-max-age)',
        payload = '', updated = ?3
     WHERE target = ?1 AND state = 'pending' AND created < ?2";
/// Keeps a target's newest `?2` pending entries.
pub(crate) const DROP_OVER: &str =
    "UPDATE outbox SET state = 'dropped', error = 'the outbox was full (--outbox-max-size)',
        payload = '', updated = ?3
     WHERE target = ?1 AND state = 'pending' AND id <= (
        SELECT id FROM outbox WHERE target = ?1 AND state = 'pending' ORDER BY id DESC LIMIT 1 OFFSET ?2)";
pub(crate) const FORGET_FINISHED: &str =
    "DELETE FROM outbox WHERE target = ?1 AND state <> 'pending' AND updated < ?2";
pub(crate) const CLAIM_TARGET: &str = "UPDATE targets SET holder = ?2, lease_until = ?3
     WHERE name = ?1 AND disabled IS NULL AND (holder IS NULL OR holder = ?2 OR lease_until < ?4)";
pub(crate) const RULE_DELIVERIES: &str = "SELECT target, state, COUNT(*) FROM outbox WHERE rule = ?1 GROUP BY target, state ORDER BY target, state";

/// `sql` with SQLite's `?N` parameters as PostgreSQL's `$N`.
pub(crate) fn pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_become_dollars_outside_quotes() {
        assert_eq!(
            super::pg("SELECT '?1', ?1 WHERE a = ?12 AND b = '?'"),
            "SELECT '?1', $1 WHERE a = $12 AND b = '?'"
        );
    }
}
