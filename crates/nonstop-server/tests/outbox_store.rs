//! Targets and their outboxes in both stores (SQLite, and a real PostgreSQL of the
//! testkit): a response routed to targets is queued for each in its own transaction, in
//! order, with a delivery id that depends on the response only; settling counts; the
//! bounds drop and count; one server at a time holds a target.

use nonstop_model::{Response, Rule};
use nonstop_server::postgres::PgStore;
use nonstop_server::sqlite::SqliteStore;
use nonstop_server::store::{OutboxLimits, Retention, RuleState, Settled, Store, StoredRule};
use nonstop_testkit::postgres::{Cluster, Database};
use std::path::PathBuf;
use std::sync::Arc;

enum Backend {
    Sqlite(PathBuf),
    Postgres(Database),
}

impl Backend {
    fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(path) => Arc::new(SqliteStore::open(path).unwrap()),
            Backend::Postgres(db) => Arc::new(PgStore::connect(&db.url).unwrap()),
        }
    }
}

#[test]
fn sqlite() {
    outbox_follows_the_responses(&Backend::Sqlite(
        nonstop_testkit::tempdir("outbox").join("nonstop.db"),
    ));
}

#[test]
fn postgres() {
    outbox_follows_the_responses(&Backend::Postgres(Cluster::shared().database()));
}

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

fn rule(id: &str, to: &[&str]) -> StoredRule {
    let mut rule: Rule =
        serde_json::from_str(r#"{"at":"a.rs:1","action":"log","template":"x"}"#).unwrap();
    rule.id = id.into();
    rule.to = to.iter().map(|s| s.to_string()).collect();
    StoredRule {
        rule,
        created_ms: 1,
        expires_ms: None,
        state: RuleState::Active,
        enabled: true,
        hits: 0,
    }
}

const HOOK: &str = r#"{"name":"hook","kind":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","headers":{}}"#;
const FILE: &str = r#"{"name":"file","kind":"file","path":"/tmp/x.jsonl","max_size":100000000}"#;

fn outbox_follows_the_responses(b: &Backend) {
    let s = b.open();
    assert!(s.put_target("hook", HOOK, 10).unwrap());
    assert!(s.put_target("file", FILE, 10).unwrap());
    assert!(
        !s.put_target("file", FILE, 11).unwrap(),
        "replaced, not new"
    );
    let names: Vec<String> = s.targets().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["file", "hook"]);
    s.insert_rule(&rule("r1", &["ui", "hook", "file"])).unwrap();
    s.insert_rule(&rule("r2", &["ui"])).unwrap();
    let ins = s
        .insert_responses(
            vec![response("r1", 1), response("r2", 2), response("r1", 3)],
            100,
            Retention::default(),
        )
        .unwrap();
    assert_eq!(ins.stored.len(), 3);
    assert_eq!(ins.queued, 4, "two responses of r1 for two targets each");

    let pending = s.outbox_pending("hook", 10).unwrap();
    assert_eq!(pending.len(), 2);
    let texts: Vec<String> = pending
        .iter()
        .map(|e| {
            serde_json::from_str::<Response>(&e.payload)
                .unwrap()
                .message
                .unwrap()
        })
        .collect();
    assert_eq!(texts, ["hit 1", "hit 3"]);
    assert!(
        pending
            .iter()
            .all(|e| e.kind == "response" && e.rule == "r1")
    );
    assert!(pending[0].id < pending[1].id);
    let file_pending = s.outbox_pending("file", 10).unwrap();
    assert_eq!(
        file_pending.iter().map(|e| &e.delivery).collect::<Vec<_>>(),
        pending.iter().map(|e| &e.delivery).collect::<Vec<_>>(),
        "a response's delivery id is the same for every target"
    );
    assert_ne!(pending[0].delivery, pending[1].delivery);
    let hook = s.target("hook").unwrap().unwrap();
    assert_eq!((hook.pending, hook.oldest_pending_ms), (2, Some(100)));

    // A retry keeps the entry (and its id); sent and failed settle and count.
    s.settle_outbox(
        "hook",
        &[(pending[0].id, Settled::Retry("503".into()))],
        200,
    )
    .unwrap();
    let again = s.outbox_pending("hook", 10).unwrap();
    assert_eq!(again[0].delivery, pending[0].delivery);
    assert_eq!(again[0].attempts, 1);
    s.settle_outbox(
        "hook",
        &[
            (pending[0].id, Settled::Sent),
            (pending[1].id, Settled::Failed("400 bad".into())),
        ],
        300,
    )
    .unwrap();
    // Settling twice changes nothing (a worker that lost its lease mid-batch).
    s.settle_outbox("hook", &[(pending[0].id, Settled::Sent)], 301)
        .unwrap();
    let hook = s.target("hook").unwrap().unwrap();
    assert_eq!(
        (hook.pending, hook.sent, hook.failed, hook.dropped),
        (0, 1, 1, 0)
    );
    assert_eq!(hook.last_error.as_deref(), Some("400 bad"));
    assert_eq!(
        s.rule_deliveries("r1").unwrap(),
        [
            ("file".to_string(), "pending".to_string(), 2),
            ("hook".to_string(), "failed".to_string(), 1),
            ("hook".to_string(), "sent".to_string(), 1),
        ]
    );

    // Bounds: size keeps the newest, age drops the old; both count as dropped.
    let limits = OutboxLimits {
        max_age_ms: 1_000_000,
        max_pending: 1,
        keep_finished_ms: 1_000_000,
    };
    assert_eq!(s.bound_outbox("file", limits, 400).unwrap(), 1);
    let left = s.outbox_pending("file", 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].delivery, pending[1].delivery);
    let aged = OutboxLimits {
        max_age_ms: 10,
        ..limits
    };
    assert_eq!(s.bound_outbox("file", aged, 400).unwrap(), 1);
    let file = s.target("file").unwrap().unwrap();
    assert_eq!((file.pending, file.dropped), (0, 2));

    // One holder at a time; a lapsed lease passes on; a disabled target is held by none.
    assert!(s.claim_target("hook", "me", 1000, 500).unwrap());
    let other = b.open();
    assert!(!other.claim_target("hook", "you", 1000, 600).unwrap());
    assert!(other.claim_target("hook", "you", 1000, 1600).unwrap());
    s.disable_target("hook", "410 gone").unwrap();
    assert!(!s.claim_target("hook", "me", 1000, 5000).unwrap());
    let hook = s.target("hook").unwrap().unwrap();
    assert_eq!(hook.disabled.as_deref(), Some("410 gone"));
    // A disabled target queues nothing; adding it again enables it.
    s.insert_responses(vec![response("r1", 4)], 700, Retention::default())
        .unwrap();
    assert_eq!(s.target("hook").unwrap().unwrap().pending, 0);
    s.put_target("hook", HOOK, 800).unwrap();
    assert_eq!(s.target("hook").unwrap().unwrap().disabled, None);

    // A deleted target takes its outbox along; a rule naming it queues nothing for it.
    assert!(s.delete_target("file").unwrap());
    assert!(!s.delete_target("file").unwrap());
    let ins = s
        .insert_responses(vec![response("r1", 5)], 900, Retention::default())
        .unwrap();
    assert_eq!(ins.queued, 1);
}
