//! The REST API over real HTTP on a real server: round trips, validation and tokens.

mod common;

use common::{TestServer, call};
use serde_json::{Value, json};

#[test]
fn a_rule_round_trips_with_its_defaults_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let (status, body) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"at":"src/cart.rs:42","action":"snapshot","service":"checkout","when":"n > 2"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["rule"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("r-") && id.len() == 10, "{id}");
    assert_eq!(
        created["rule"],
        json!({"id": id, "at": "src/cart.rs:42", "action": "snapshot", "when": "n > 2",
               "service": "checkout", "max_hits": 100, "expires": "1h", "rate": "1/s"})
    );
    let mut keys: Vec<_> = created.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agents",
            "created",
            "enabled",
            "expires_at",
            "hits",
            "rule",
            "state"
        ]
    );
    assert_eq!(
        (created["state"].clone(), created["hits"].clone()),
        (json!("active"), json!(0))
    );

    let one = s.get_json(&format!("/api/v1/rules/{id}"));
    assert_eq!(one, created);
    let all = s.get_json("/api/v1/rules");
    assert_eq!(all, json!([created]));

    let (status, _) = s.call("DELETE", &format!("/api/v1/rules/{id}"), None);
    assert_eq!(status, 204);
    let (status, body) = s.call("GET", &format!("/api/v1/rules/{id}"), None);
    assert_eq!(status, 404);
    assert!(body.contains("no rule"), "{body}");
    assert_eq!(s.get_json("/api/v1/rules"), json!([]));
}

#[test]
fn bad_requests_get_a_json_error_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let cases: &[(&str, &str, Option<String>, u16, &str)] = &[
        (
            "POST",
            "/api/v1/rules",
            Some(r#"{"at":"#.into()),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/v1/rules",
            Some(r#"{"at":"a.rs:1","action":"snapshot","tmplate":"x"}"#.into()),
            400,
            "unknown field `tmplate`",
        ),
        (
            "POST",
            "/api/v1/rules",
            Some(r#"{"at":"a.rs:1","action":"log"}"#.into()),
            400,
            "needs a template",
        ),
        (
            "POST",
            "/api/v1/rules",
            Some(r#"{"at":"a.rs:1","action":"snapshot","expires":"forever"}"#.into()),
            400,
            "invalid duration",
        ),
        (
            "GET",
            "/api/v1/rules/not%20an%20id",
            None,
            400,
            "invalid rule id",
        ),
        (
            "GET",
            "/api/v1/rules/r-nothere1",
            None,
            404,
            "no rule r-nothere1",
        ),
        (
            "GET",
            "/api/v1/responses?limit=many",
            None,
            400,
            "bad query string",
        ),
        ("GET", "/api/v1/nothing", None, 404, "no such route"),
    ];
    for (method, path, body, want_status, needle) in cases {
        let (status, text) = s.call(method, path, body.as_deref());
        assert_eq!(status, *want_status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }
    // An oversized body is refused from its declared length.
    let (status, text) = common::post_sized(s.addr, "/api/v1/rules", &s.admin, 2 << 20);
    assert_eq!(status, 413);
    assert!(
        text.contains(r#"{"error":"the request body is larger than"#),
        "{text}"
    );
    // A duplicate id is a conflict.
    s.add_rule(r#"{"id":"mine","at":"a.rs:1","action":"snapshot"}"#);
    let (status, _) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"id":"mine","at":"a.rs:2","action":"snapshot"}"#),
    );
    assert_eq!(status, 409);
}

#[test]
fn tokens_guard_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rules = s.url("/api/v1/rules");
    let (status, body) = call(&rules, "GET", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing token"));
    assert_eq!(call(&rules, "GET", Some("wrong"), None).0, 401);
    let (status, body) = call(&rules, "GET", Some(&s.agent), None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(call(&rules, "GET", Some(&s.admin), None).0, 200);
    // Agent routes take either token.
    let poll = s.url("/agent/v1/poll?agent=nobody");
    assert_eq!(call(&poll, "GET", None, None).0, 401);
    assert_eq!(call(&poll, "GET", Some(&s.agent), None).0, 404);
    // Open routes.
    assert_eq!(call(&s.url("/healthz"), "GET", None, None).0, 200);
    let (status, doc) = call(&s.url("/api/v1/openapi.json"), "GET", None, None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in [
        "/api/v1/rules",
        "/api/v1/rules/{id}",
        "/api/v1/agents",
        "/api/v1/responses",
        "/api/v1/responses/stream",
        "/agent/v1/ws",
        "/agent/v1/poll",
        "/agent/v1/responses",
        "/healthz",
    ] {
        assert!(
            doc["paths"].get(route).is_some(),
            "{route} missing from the OpenAPI document"
        );
    }
    // The token files are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.token", "agent.token"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
}

#[test]
fn the_browser_token_in_the_query_becomes_a_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .get(s.url(&format!("/?token={}", s.admin)))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with(&format!("nonstop_token={}", s.admin)) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let resp = agent
        .get(s.url("/api/v1/rules"))
        .header("Cookie", pair)
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn rules_survive_a_restart_with_the_same_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"cart::add","action":"log","template":"added {item}"}"#);
    let before = s.get_json("/api/v1/rules");
    let admin = s.admin.clone();
    s.stop();
    let s = TestServer::start(dir.path());
    assert_eq!(s.admin, admin, "the tokens are kept");
    let after = s.get_json("/api/v1/rules");
    assert_eq!(after, before);
    assert_eq!(after[0]["rule"]["id"], json!(id));
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = nonstop_server::Config::new("0.0.0.0:0".parse().unwrap(), dir.path().into());
    config.auth = false;
    let err = rt.block_on(nonstop_server::serve(config)).err().unwrap();
    assert!(err.to_string().contains("without tokens"), "{err}");
}

#[test]
fn capture_limits_above_the_servers_maximums_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.max_limits = nonstop_server::validate::parse_max_limits("depth=5,string=4096").unwrap();
    });
    let (status, body) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"at":"a.rs:1","action":"snapshot","limits":{"string":5000}}"#),
    );
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "limits.string is 5000, above this server's maximum of 4096: ask for at most 4096 (the server's maximums are set by `nonstop serve --max-limits`)"
    );
    let id =
        s.add_rule(r#"{"at":"a.rs:1","action":"snapshot","limits":{"string":4096,"depth":5}}"#);
    let rule = &s.get_json(&format!("/api/v1/rules/{id}"))["rule"];
    assert_eq!(rule["limits"], json!({"string": 4096, "depth": 5}));
}

#[test]
fn a_type_mismatch_in_a_condition_is_refused_at_submit_time_with_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let (status, body) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"at":"a.rs:1","action":"snapshot","when":"\"a\" > 3"}"#),
    );
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "when: cannot compare a string with a number: \"a\" > 3\n\"a\" > 3\n^"
    );
    assert_eq!(s.get_json("/api/v1/rules"), json!([]));
}

#[test]
fn the_templates_are_listed_with_their_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let list = s.get_json("/api/v1/templates");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["snapshot", "log", "count", "measure", "trace"]);
    assert_eq!(list[4]["title"], "Trace arguments");
    assert_eq!(list[4]["params"][0]["name"], "args");
    assert_eq!(list[4]["params"][0]["required"], true);
}

#[test]
fn watch_expressions_are_kept_and_bad_ones_are_refused_naming_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let (status, body) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"at":"src/cart.rs:42","action":"snapshot","watch":["order.total","len(cart.items)"]}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        created["rule"]["watch"],
        json!(["order.total", "len(cart.items)"])
    );
    let id = created["rule"]["id"].as_str().unwrap();
    assert_eq!(
        s.get_json(&format!("/api/v1/rules/{id}"))["rule"]["watch"],
        json!(["order.total", "len(cart.items)"])
    );

    let error_of = |body: &str| -> String {
        let (status, text) = s.call("POST", "/api/v1/rules", Some(body));
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["error"].as_str().unwrap().to_owned()
    };
    // The caret points into the watch that does not parse, and the message says which one.
    assert_eq!(
        error_of(
            r#"{"at":"a.rs:1","action":"snapshot","watch":["order.total","order.total > )"]}"#
        ),
        "watch 2 `order.total > )`: unexpected `)` at column 15: expected an expression\n\
         order.total > )\n              ^"
    );
    assert_eq!(
        error_of(r#"{"at":"a.rs:1","action":"log","template":"{n}","watch":["n"]}"#),
        "watch is only used by snapshot rules: in a log rule, put the expressions in the \
         template (\"paid {order.total}\"), or use \"action\": \"snapshot\""
    );
    let many: Vec<String> = (0..21).map(|i| format!("x{i}")).collect();
    let body = json!({"at": "a.rs:1", "action": "snapshot", "watch": many}).to_string();
    assert_eq!(
        error_of(&body),
        "21 watch expressions: a rule takes at most 20; remove some or split the rule"
    );
    assert_eq!(s.get_json("/api/v1/rules").as_array().unwrap().len(), 1);
}
