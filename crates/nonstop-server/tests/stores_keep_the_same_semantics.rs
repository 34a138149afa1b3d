//! The store's test suite, run against both stores: SQLite (a file per test) and a real
//! PostgreSQL (a throwaway cluster of the testkit, a database per test). Each check takes a
//! [`Backend`] that opens as many stores on one database as it needs (two PostgreSQL stores
//! are two replicas).

use nonstop_model::metrics::{MAX_SERIES_PER_RULE, MetricSeries};
use nonstop_model::{Action, AgentInfo, MetricKind, Response, Rule};
use nonstop_server::postgres::PgStore;
use nonstop_server::sqlite::SqliteStore;
use nonstop_server::store::{
    BatchJob, BatchWrite, Change, Retention, RuleState, Store, StoreError, StoredRule,
};
use nonstop_testkit::postgres::{Cluster, Database};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where one test's stores live.
enum Backend {
    Sqlite(PathBuf),
    Postgres(Database),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(nonstop_testkit::tempdir("store").join("nonstop.db"))
    }

    fn postgres() -> Backend {
        Backend::Postgres(Cluster::shared().database())
    }

    /// A store on this backend's database (another one on each call).
    fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(path) => Arc::new(SqliteStore::open(path).unwrap()),
            Backend::Postgres(db) => Arc::new(PgStore::connect(&db.url).unwrap()),
        }
    }
}

/// Each check, once per store.
macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $check() { super::$check(&super::Backend::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $check() { super::$check(&super::Backend::postgres()) } )*
        }
    };
}

on_both_stores!(
    a_disabled_rule_keeps_its_hits_refuses_responses_and_counts_on_when_enabled,
    max_hits_and_retention_hold,
    retention_keeps_exactly_the_newest_across_batches_deletes_and_restarts,
    metric_series_keep_the_newest_report_within_the_cap,
    max_hits_hold_exactly_across_stores_writing_at_once,
    rules_statuses_sources_and_agents_read_back,
    a_group_of_batches_keeps_each_batch_s_own_semantics,
);

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
    let mut rule: Rule = serde_json::from_str(r#"{"at":"a.rs:1","action":"snapshot"}"#).unwrap();
    rule.id = id.into();
    rule.max_hits = max_hits;
    StoredRule {
        rule,
        created_ms: 1,
        expires_ms: Some(1000),
        state: RuleState::Active,
        enabled: true,
        hits: 0,
    }
}

fn a_disabled_rule_keeps_its_hits_refuses_responses_and_counts_on_when_enabled(b: &Backend) {
    let s = b.open();
    s.insert_rule(&stored("r-a", Some(3))).unwrap();
    let keep = Retention::default();
    let ins = s
        .insert_responses(vec![response("r-a", 0)], 10, keep)
        .unwrap();
    assert_eq!(ins.stored.len(), 1);
    let off = s.set_enabled("r-a", false).unwrap().unwrap();
    assert_eq!(
        (off.enabled, off.hits, off.state),
        (false, 1, RuleState::Active)
    );
    let ins = s
        .insert_responses(vec![response("r-a", 1)], 11, keep)
        .unwrap();
    assert_eq!((ins.stored.len(), ins.refused), (0, 1));
    assert_eq!(s.responses(Some("r-a"), 10).unwrap().len(), 1);
    assert!(s.set_enabled("r-a", true).unwrap().unwrap().enabled);
    let batch = (2..6).map(|n| response("r-a", n)).collect();
    let ins = s.insert_responses(batch, 12, keep).unwrap();
    // One hit before the pause counts toward the max of 3.
    assert_eq!((ins.stored.len(), ins.refused), (2, 2));
    let done = s.rule("r-a").unwrap().unwrap();
    assert_eq!(
        (done.state, done.hits, done.enabled),
        (RuleState::Done, 3, true)
    );
    assert!(s.set_enabled("r-none", true).unwrap().is_none());
}

fn max_hits_and_retention_hold(b: &Backend) {
    let s = b.open();
    assert_eq!(s.last_response_id().unwrap(), 0);
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
    let mut batch: Vec<Response> = (0..5).map(|n| response("r-b", n)).collect();
    batch.push(response("r-gone", 9));
    let ins = s.insert_responses(batch, 10, keep).unwrap();
    assert_eq!(
        (ins.stored.len(), ins.refused, ins.unknown),
        (5, 1, vec!["r-gone".to_string()])
    );
    assert_eq!(
        s.last_response_id().unwrap(),
        ins.stored.last().unwrap().0,
        "the newest id is the last one stored"
    );
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
    assert_eq!(s.responses(None, 3).unwrap().len(), 3);
    let old = Retention {
        per_rule: 100,
        max_age_ms: 5,
    };
    assert_eq!(s.prune_responses(15, old).unwrap(), 0);
    assert_eq!(s.prune_responses(16, old).unwrap(), 4);
    assert_eq!(s.expire_rules(999).unwrap(), Vec::<String>::new());
    assert_eq!(s.expire_rules(1000).unwrap(), vec!["r-b".to_string()]);
    assert_eq!(s.rule("r-b").unwrap().unwrap().state, RuleState::Expired);
    assert!(s.delete_rule("r-a").unwrap());
    assert!(!s.delete_rule("r-a").unwrap());
    assert_eq!(
        s.rules()
            .unwrap()
            .iter()
            .map(|r| r.rule.id.as_str())
            .collect::<Vec<_>>(),
        ["r-b"]
    );
}

/// One response per batch (what an agent sending as it hits does) past the cap: after each,
/// the rule holds exactly its newest `per_rule`; a batch over the cap by itself keeps its
/// own newest; a second store on the same database (a restart, or a replica) counts on from
/// what is stored; a deleted rule's responses go with it, and a rule of the same id starts
/// from none.
fn retention_keeps_exactly_the_newest_across_batches_deletes_and_restarts(b: &Backend) {
    let keep = Retention {
        per_rule: 3,
        max_age_ms: 1_000_000,
    };
    let messages = |s: &dyn Store, rule: &str| -> Vec<String> {
        let mut kept: Vec<String> = s
            .responses(Some(rule), 100)
            .unwrap()
            .into_iter()
            .map(|r| r.message.unwrap())
            .collect();
        kept.sort_by_key(|m| m[4..].parse::<u32>().unwrap());
        kept
    };
    let s = b.open();
    s.insert_rule(&stored("r-a", None)).unwrap();
    s.insert_rule(&stored("r-b", None)).unwrap();
    for n in 0..5 {
        s.insert_responses(vec![response("r-a", n)], 10, keep)
            .unwrap();
        let want: Vec<String> = (n.saturating_sub(2)..=n)
            .map(|k| format!("hit {k}"))
            .collect();
        assert_eq!(messages(&*s, "r-a"), want, "after hit {n}");
    }
    s.insert_responses(vec![response("r-b", 0)], 10, keep)
        .unwrap();
    let batch = (5..12).map(|n| response("r-a", n)).collect();
    s.insert_responses(batch, 10, keep).unwrap();
    assert_eq!(messages(&*s, "r-a"), ["hit 9", "hit 10", "hit 11"]);
    assert_eq!(
        messages(&*s, "r-b"),
        ["hit 0"],
        "another rule's are its own"
    );

    let again = b.open();
    again
        .insert_responses(vec![response("r-a", 12)], 10, keep)
        .unwrap();
    assert_eq!(messages(&*again, "r-a"), ["hit 10", "hit 11", "hit 12"]);
    s.insert_responses(vec![response("r-a", 13)], 10, keep)
        .unwrap();
    assert_eq!(messages(&*s, "r-a"), ["hit 11", "hit 12", "hit 13"]);

    assert!(s.delete_rule("r-a").unwrap());
    assert_eq!(messages(&*s, "r-a"), Vec::<String>::new());
    s.insert_rule(&stored("r-a", None)).unwrap();
    for n in 20..22 {
        s.insert_responses(vec![response("r-a", n)], 10, keep)
            .unwrap();
    }
    assert_eq!(messages(&*s, "r-a"), ["hit 20", "hit 21"]);
    assert_eq!(s.responses_after(None, 0, 100).unwrap().len(), 3);
}

fn metric_rule(id: &str, max_hits: Option<u64>) -> StoredRule {
    let mut r = stored(id, max_hits);
    r.rule.action = Action::Metric;
    r.rule.metric = Some(serde_json::from_str(r#"{"kind":"count","name":"ticks"}"#).unwrap());
    r
}

fn count(rule: &str, tag: &str, n: u64) -> MetricSeries {
    MetricSeries {
        rule: rule.into(),
        name: "agent-says".into(),
        kind: MetricKind::Gauge,
        tags: [("k".to_string(), tag.to_string())].into(),
        count: n,
        sum: 0.0,
        last: None,
        buckets: vec![],
        updated: "2026-01-01T00:00:00Z".into(),
        overflow: 0,
    }
}

fn agent_info(id: &str) -> AgentInfo {
    serde_json::from_value(
        serde_json::json!({"id": id, "service": "svc", "labels": {"env": "test"}}),
    )
    .unwrap()
}

fn agent(s: &dyn Store, id: &str, now_ms: i64) {
    s.upsert_agent(&agent_info(id), false, now_ms).unwrap();
}

fn metric_series_keep_the_newest_report_within_the_cap(b: &Backend) {
    let s = b.open();
    let s = s.as_ref();
    s.insert_rule(&metric_rule("m", Some(10))).unwrap();
    s.insert_rule(&stored("snap", None)).unwrap();
    agent(s, "a", 0);
    agent(s, "b", 0);
    let got = s
        .upsert_metrics(
            "a",
            &[
                count("m", "x", 3),
                count("snap", "x", 1),
                count("gone", "x", 1),
            ],
            5,
        )
        .unwrap();
    assert_eq!((got.stored, got.refused, got.stale), (1, 2, 0));
    // The same report again, then an older one arriving late: nothing changes.
    s.upsert_metrics("a", &[count("m", "x", 3)], 6).unwrap();
    let late = s.upsert_metrics("a", &[count("m", "x", 2)], 7).unwrap();
    assert_eq!((late.stored, late.stale), (0, 1));
    let all = s.metric_series(None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (
            all[0].series.count,
            all[0].series.name.as_str(),
            all[0].series.kind
        ),
        (3, "ticks", MetricKind::Count),
        "the rule names the metric, not the agent"
    );
    assert_eq!((all[0].service.as_str(), all[0].updated_ms), ("svc", 6));
    assert_eq!(s.rule("m").unwrap().unwrap().hits, 3);
    // An unknown agent's series are refused.
    let stranger = s
        .upsert_metrics("nobody", &[count("m", "y", 1)], 8)
        .unwrap();
    assert_eq!((stranger.stored, stranger.refused), (0, 1));

    // One agent may hold MAX_SERIES_PER_RULE series of a rule; another has its own room.
    s.insert_rule(&metric_rule("wide", None)).unwrap();
    let many: Vec<_> = (0..MAX_SERIES_PER_RULE + 5)
        .map(|i| count("wide", &i.to_string(), 1))
        .collect();
    let got = s.upsert_metrics("a", &many, 9).unwrap();
    assert_eq!((got.stored, got.refused), (MAX_SERIES_PER_RULE, 5));
    let again = s.upsert_metrics("a", &many[..3], 10).unwrap();
    assert_eq!(
        (again.stored, again.refused),
        (3, 0),
        "known series still update"
    );
    let got = s.upsert_metrics("b", &many[..2], 10).unwrap();
    assert_eq!(got.stored, 2);
    assert_eq!(
        s.rule("wide").unwrap().unwrap().hits,
        MAX_SERIES_PER_RULE as u64 + 2
    );
    assert!(s.delete_rule("wide").unwrap());
    assert_eq!(s.metric_series(Some("wide")).unwrap().len(), 0);

    // Max hits over agents: 3 + 7 reaches 10 and the rule is done; later reports are refused.
    let got = s.upsert_metrics("b", &[count("m", "x", 7)], 11).unwrap();
    assert_eq!(got.done, vec!["m".to_string()]);
    let rule = s.rule("m").unwrap().unwrap();
    assert_eq!((rule.state, rule.hits), (RuleState::Done, 10));
    let after = s.upsert_metrics("b", &[count("m", "x", 8)], 12).unwrap();
    assert_eq!((after.stored, after.refused), (0, 1));

    // A gone agent's series are pruned with old responses; a recently seen one stays.
    agent(s, "b", 1_000);
    let keep = Retention {
        per_rule: 100,
        max_age_ms: 500,
    };
    assert_eq!(s.prune_responses(1_400, keep).unwrap(), 1);
    let left: Vec<_> = s.metric_series(None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].agent, "b");
}

/// Two stores on one database (two replicas; one store for SQLite), four writers each, one rule with max hits
/// 50: exactly 50 responses are stored, the ids all differ, and the rule is done.
fn max_hits_hold_exactly_across_stores_writing_at_once(b: &Backend) {
    let one = b.open();
    // One SQLite store serves one server; two PostgreSQL stores are two replicas.
    let two = match b {
        Backend::Sqlite(_) => one.clone(),
        Backend::Postgres(_) => b.open(),
    };
    one.insert_rule(&stored("r-max", Some(50))).unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = if w % 2 == 0 { one.clone() } else { two.clone() };
            std::thread::spawn(move || {
                let mut stored = Vec::new();
                for batch in 0..5 {
                    let responses = (0..5).map(|n| response("r-max", w * 100 + batch * 5 + n));
                    let ins = s
                        .insert_responses(responses.collect(), 10, Retention::default())
                        .unwrap();
                    stored.extend(ins.stored.into_iter().map(|(id, _)| id));
                }
                stored
            })
        })
        .collect();
    let mut ids: Vec<i64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "200 tries, max hits 50");
    let rule = two.rule("r-max").unwrap().unwrap();
    assert_eq!((rule.hits, rule.state), (50, RuleState::Done));
    assert_eq!(one.responses(Some("r-max"), 1000).unwrap().len(), 50);
}

/// A fast-path summary as an agent words it (`nonstop_agent`'s `fast_path_summary`).
const FAST_PATH_SAID: &str =
    "fast path: 2 of 3 probes; no — a branch at 0x4a3f12 lands inside the patched bytes";

fn rules_statuses_sources_and_agents_read_back(b: &Backend) {
    let s = b.open();
    s.insert_rule(&stored("r-1", None)).unwrap();
    s.insert_rule(&stored("r-2", Some(4))).unwrap();
    s.upsert_agent(&agent_info("ag"), true, 100).unwrap();
    let status: nonstop_model::RuleStatus = serde_json::from_value(serde_json::json!({
        "rule": "r-1", "status": "error", "message": "no code at a.rs:1", "probes": 0, "hits": 0
    }))
    .unwrap();
    let mut gone = status.clone();
    gone.rule = "r-unknown".into();
    s.put_statuses("ag", &[status.clone(), gone], 110).unwrap();
    let st = s.statuses("r-1").unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(
        (st[0].agent.as_str(), &st[0].status, st[0].updated_ms),
        ("ag", &status, 110)
    );
    assert!(s.statuses("r-unknown").unwrap().is_empty());
    let all = s.rules_with_statuses().unwrap();
    assert_eq!(
        all.iter()
            .map(|(r, st)| (r.rule.id.as_str(), st.len()))
            .collect::<Vec<_>>(),
        [("r-1", 1), ("r-2", 0)]
    );

    // What the agent says of the fast path reads back as it said it, in both reads, and
    // goes when the agent stops saying it.
    let mut fast = status.clone();
    fast.rule = "r-2".into();
    fast.status = nonstop_model::StatusKind::Armed;
    fast.message = None;
    fast.probes = 3;
    fast.fast_path = Some(FAST_PATH_SAID.into());
    s.put_statuses("ag", std::slice::from_ref(&fast), 130)
        .unwrap();
    assert_eq!(s.statuses("r-2").unwrap()[0].status, fast);
    let all = s.rules_with_statuses().unwrap();
    assert_eq!(
        all[1].1[0].status.fast_path.as_deref(),
        Some(FAST_PATH_SAID)
    );
    assert_eq!(all[0].1[0].status.fast_path, None);
    fast.fast_path = None;
    s.put_statuses("ag", std::slice::from_ref(&fast), 140)
        .unwrap();
    assert_eq!(s.statuses("r-2").unwrap()[0].status, fast);

    s.put_source("svc", r#"{"path":"/src"}"#, 5).unwrap();
    s.put_source("svc", r#"{"path":"/src2"}"#, 6).unwrap();
    assert_eq!(
        s.sources().unwrap(),
        [("svc".to_string(), r#"{"path":"/src2"}"#.to_string())]
    );

    let a = s.agent("ag").unwrap().unwrap();
    assert_eq!(
        (a.connected, a.first_seen_ms, a.last_seen_ms, a.dropped),
        (true, 100, 100, 0)
    );
    assert_eq!(a.info.labels.get("env").map(String::as_str), Some("test"));
    s.add_dropped("ag", 7).unwrap();
    s.add_dropped("ag", u64::MAX).unwrap();
    assert_eq!(s.agent("ag").unwrap().unwrap().dropped, i64::MAX as u64);
    assert!(s.touch_agent("ag", Some(false), 120).unwrap());
    let a = s.agent("ag").unwrap().unwrap();
    assert_eq!((a.connected, a.last_seen_ms), (false, 120));
    assert!(!s.touch_agent("nobody", None, 120).unwrap());
    assert_eq!(s.agents().unwrap().len(), 1);
}

/// Replicas on one PostgreSQL database: presence is a lease held by the replica that holds
/// the connection, and start-up of another replica does not end it.
#[test]
fn postgres_presence_is_a_lease_of_the_replica_holding_the_connection() {
    let b = Backend::postgres();
    let (one, two) = (b.open(), b.open());
    assert!(one.shared() && two.shared());
    one.upsert_agent(&agent_info("ag"), true, 1).unwrap();
    two.disconnect_all().unwrap();
    assert!(two.agent("ag").unwrap().unwrap().connected);
    // The agent moved to replica two; replica one's session then closes.
    two.touch_agent("ag", Some(true), 2).unwrap();
    one.touch_agent("ag", Some(false), 3).unwrap();
    assert!(
        one.agent("ag").unwrap().unwrap().connected,
        "a replica ends only a lease it holds"
    );
    one.renew_leases(&["ag".to_string()]).unwrap();
    two.touch_agent("ag", Some(false), 4).unwrap();
    assert!(
        two.agent("ag").unwrap().unwrap().connected,
        "renewed by replica one"
    );
    one.touch_agent("ag", Some(false), 5).unwrap();
    assert!(!two.agent("ag").unwrap().unwrap().connected);
}

#[test]
fn sqlite_start_up_marks_every_agent_disconnected() {
    let b = Backend::sqlite();
    let s = b.open();
    assert!(!s.shared());
    s.upsert_agent(&agent_info("ag"), true, 1).unwrap();
    s.disconnect_all().unwrap();
    assert!(!s.agent("ag").unwrap().unwrap().connected);
}

/// What one replica changes reaches another's listener: rules, then responses.
#[test]
fn postgres_replicas_hear_each_others_changes() {
    let b = Backend::postgres();
    let (one, two) = (b.open(), b.open());
    let heard = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let (heard, stop) = (heard.clone(), stop.clone());
        std::thread::spawn(move || {
            two.listen(&mut |c| heard.lock().unwrap().push(c), &stop)
                .unwrap()
        })
    };
    // The listener is up once it hears a change: add rules until it does.
    let mut n = 0;
    nonstop_testkit::wait_for(
        "the listener hears a new rule",
        Duration::from_secs(10),
        || {
            one.insert_rule(&stored(&format!("r-{n}"), None)).unwrap();
            n += 1;
            heard.lock().unwrap().contains(&Change::Rules).then_some(())
        },
    );
    one.insert_responses(vec![response("r-0", 1)], 10, Retention::default())
        .unwrap();
    nonstop_testkit::wait_for(
        "the listener hears new responses",
        Duration::from_secs(10),
        || {
            heard
                .lock()
                .unwrap()
                .contains(&Change::Responses)
                .then_some(())
        },
    );
    let before = heard.lock().unwrap().len();
    assert!(one.delete_rule("r-0").unwrap());
    nonstop_testkit::wait_for(
        "the listener hears a deleted rule",
        Duration::from_secs(10),
        || (heard.lock().unwrap()[before..].contains(&Change::Rules)).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
}

/// Batches of several agents written as one group (what the server's writer does with the
/// batches waiting for it): each gets its own result, in order, exactly as if written alone
/// one after the other — max hits counted across the group, unknown rules named to their
/// sender only, hellos and drops recorded, retention over the group's rows.
fn a_group_of_batches_keeps_each_batch_s_own_semantics(b: &Backend) {
    let s = b.open();
    s.insert_rule(&stored("g-max", Some(3))).unwrap();
    s.insert_rule(&stored("g-all", None)).unwrap();
    let keep = Retention {
        per_rule: 4,
        max_age_ms: 1_000_000,
    };
    let job = |agent: &str, hello: Option<bool>, rules: &[(&str, u32)], dropped: u64| BatchJob {
        agent: agent_info(agent),
        hello,
        writes: vec![BatchWrite::Responses {
            responses: rules
                .iter()
                .map(|(rule, n)| Response {
                    agent: agent.into(),
                    ..response(rule, *n)
                })
                .collect(),
            dropped,
        }],
    };
    let results = s.write_batches(
        vec![
            job(
                "g1",
                Some(false),
                &[("g-max", 1), ("g-max", 2), ("g-all", 1)],
                5,
            ),
            job(
                "g2",
                Some(false),
                &[("g-max", 3), ("g-max", 4), ("g-gone", 1)],
                0,
            ),
            job(
                "g3",
                None,
                &[("g-all", 2), ("g-all", 3), ("g-all", 4), ("g-all", 5)],
                0,
            ),
        ],
        10,
        keep,
    );
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("each job is written").remove(0))
        .collect();
    let seen: Vec<_> = results
        .iter()
        .map(|i| {
            let msgs: Vec<_> = i
                .stored
                .iter()
                .map(|(_, r)| r.message.clone().unwrap())
                .collect();
            (msgs, i.refused, i.unknown.clone(), i.done.clone())
        })
        .collect();
    let strings = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    assert_eq!(
        seen,
        [
            (strings(&["hit 1", "hit 2", "hit 1"]), 0, vec![], vec![]),
            (
                strings(&["hit 3"]),
                2,
                strings(&["g-gone"]),
                strings(&["g-max"])
            ),
            (
                strings(&["hit 2", "hit 3", "hit 4", "hit 5"]),
                0,
                vec![],
                vec![]
            ),
        ]
    );
    let ids: Vec<i64> = results
        .iter()
        .flat_map(|i| i.stored.iter().map(|(id, _)| *id))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids rise in job order: {ids:?}"
    );
    assert_eq!(s.rule("g-max").unwrap().unwrap().state, RuleState::Done);
    assert_eq!(s.rule("g-max").unwrap().unwrap().hits, 3);
    assert_eq!(s.agent("g1").unwrap().unwrap().dropped, 5);
    assert!(s.agent("g2").unwrap().is_some(), "g2's hello is recorded");
    assert!(s.agent("g3").unwrap().is_none(), "g3 sent no hello");
    // Retention applies over the group: `g-all` got 5 and keeps its newest 4.
    let kept: Vec<_> = s
        .responses(Some("g-all"), 100)
        .unwrap()
        .iter()
        .map(|r| r.message.clone().unwrap())
        .collect();
    assert_eq!(kept, ["hit 2", "hit 3", "hit 4", "hit 5"]);
}

/// A job of a group that the database refuses halfway (here a trigger aborts the insert of
/// one agent's responses) is rolled back alone: it writes nothing, counts no hit, and the
/// jobs before and after it are stored.
#[test]
fn sqlite_rolls_back_a_failing_job_of_a_group_alone() {
    let b = Backend::sqlite();
    let Backend::Sqlite(path) = &b else {
        unreachable!()
    };
    let s = b.open();
    s.insert_rule(&stored("f-rule", None)).unwrap();
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON responses WHEN NEW.agent = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        )
        .unwrap();
    let job = |agent: &str, n: u32| BatchJob {
        agent: agent_info(agent),
        hello: Some(false),
        writes: vec![BatchWrite::Responses {
            responses: vec![Response {
                agent: agent.into(),
                ..response("f-rule", n)
            }],
            dropped: 7,
        }],
    };
    let keep = Retention {
        per_rule: 100,
        max_age_ms: 1_000_000,
    };
    let results = s.write_batches(vec![job("ok1", 1), job("bad", 2), job("ok2", 3)], 10, keep);
    let stored: Vec<_> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|ins| ins[0].stored.len())
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(stored[0], Ok(1));
    assert!(
        stored[1]
            .as_ref()
            .is_err_and(|e| e.contains("refused for the test")),
        "{stored:?}"
    );
    assert_eq!(stored[2], Ok(1));
    let msgs: Vec<_> = s
        .responses(Some("f-rule"), 100)
        .unwrap()
        .iter()
        .map(|r| (r.agent.clone(), r.message.clone().unwrap()))
        .collect();
    assert_eq!(
        msgs,
        [
            ("ok1".to_string(), "hit 1".to_string()),
            ("ok2".to_string(), "hit 3".to_string())
        ]
    );
    assert_eq!(
        s.rule("f-rule").unwrap().unwrap().hits,
        2,
        "the failed job's hit is not counted"
    );
    assert!(
        s.agent("bad").unwrap().is_none(),
        "nor its hello, nor its drops"
    );
    assert_eq!(s.agent("ok2").unwrap().unwrap().dropped, 7);
}
