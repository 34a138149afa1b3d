//! Metric rules on the server: agents report cumulative series over a real WebSocket or
//! HTTP, `/metrics` exports them summed per service in the Prometheus text format, and
//! `/api/v1/metrics` as JSON.

mod common;

use common::{FakeAgent, TestServer, call};
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, bucket_of};
use nonstop_model::{AgentMessage, MetricKind, MetricSeries, ServerMessage};
use serde_json::{Value, json};

fn series(rule: &str, kind: MetricKind, tags: &[(&str, &str)], count: u64) -> MetricSeries {
    MetricSeries {
        rule: rule.into(),
        name: String::new(),
        kind,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        count,
        sum: 0.0,
        last: None,
        buckets: vec![],
        updated: "2026-11-25T15:00:00Z".into(),
        overflow: 0,
    }
}

fn histogram(rule: &str, values: &[f64]) -> MetricSeries {
    let mut s = series(rule, MetricKind::Histogram, &[], values.len() as u64);
    s.buckets = vec![0; HISTOGRAM_BOUNDS.len() + 1];
    for v in values {
        s.buckets[bucket_of(*v)] += 1;
        s.sum += v;
    }
    s
}

/// Sends the series and waits until the server has handled them (messages of one
/// connection are handled in order, so the pong comes after).
fn report(agent: &mut FakeAgent, series: Vec<MetricSeries>) {
    agent.send(&AgentMessage::Metrics { series });
    agent.send(&AgentMessage::Ping);
    assert_eq!(agent.recv(), ServerMessage::Pong);
}

fn scrape(s: &TestServer) -> String {
    let (status, body) = s.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

const COUNT_RULE: &str = r#"{"id":"adds","at":"src/cart.rs:42","action":"metric","metric":{"kind":"count","name":"cart.add","tags":{"sku":"item.sku"}}}"#;

#[test]
fn metrics_add_up_over_a_services_agents_and_a_repeated_report_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let adds = s.add_rule(COUNT_RULE);
    let depth = s.add_rule(
        r#"{"id":"depth","at":"src/queue.rs:7","action":"metric","metric":{"kind":"gauge","name":"queue_depth","value":"q.len"}}"#,
    );
    let mut a = s.agent("a", "checkout");
    let mut b = s.agent("b", "checkout");
    let mut c = s.agent("c", "billing");
    for agent in [&mut a, &mut b, &mut c] {
        agent.recv_rule_ids();
    }
    let mut gauge_a = series(&depth, MetricKind::Gauge, &[], 2);
    gauge_a.last = Some(4.5);
    gauge_a.sum = 13.5;
    gauge_a.updated = "2026-11-25T15:00:01Z".into();
    let mut gauge_b = series(&depth, MetricKind::Gauge, &[], 1);
    gauge_b.last = Some(9.0);
    gauge_b.sum = 9.0;
    report(
        &mut a,
        vec![
            series(&adds, MetricKind::Count, &[("sku", "A-1")], 3),
            series(&adds, MetricKind::Count, &[("sku", "B\"2")], 1),
            gauge_a,
        ],
    );
    report(
        &mut b,
        vec![
            series(&adds, MetricKind::Count, &[("sku", "A-1")], 4),
            gauge_b,
        ],
    );
    report(
        &mut c,
        vec![series(&adds, MetricKind::Count, &[("sku", "A-1")], 5)],
    );
    let want = "# HELP cart_add_total recorded by nonstop metric rules (cart.add)\n\
                # TYPE cart_add_total counter\n\
                cart_add_total{service=\"billing\",sku=\"A-1\"} 5\n\
                cart_add_total{service=\"checkout\",sku=\"A-1\"} 7\n\
                cart_add_total{service=\"checkout\",sku=\"B\\\"2\"} 1\n\
                # HELP queue_depth recorded by nonstop metric rules (queue_depth)\n\
                # TYPE queue_depth gauge\n\
                queue_depth{service=\"checkout\"} 4.5\n";
    assert_eq!(scrape(&s), want);

    // The same cumulative report again (a resend after a reconnect) changes nothing.
    report(
        &mut b,
        vec![series(&adds, MetricKind::Count, &[("sku", "A-1")], 4)],
    );
    assert_eq!(scrape(&s), want);
    let view = s.get_json(&format!("/api/v1/rules/{adds}"));
    assert_eq!(view["hits"], json!(3 + 1 + 4 + 5));

    // A newer report replaces the agent's older one; an older one arriving late is ignored.
    report(
        &mut b,
        vec![series(&adds, MetricKind::Count, &[("sku", "A-1")], 10)],
    );
    report(
        &mut b,
        vec![series(&adds, MetricKind::Count, &[("sku", "A-1")], 6)],
    );
    let text = scrape(&s);
    assert!(
        text.contains("cart_add_total{service=\"checkout\",sku=\"A-1\"} 13\n"),
        "{text}"
    );
    assert_eq!(
        s.get_json(&format!("/api/v1/rules/{adds}"))["hits"],
        json!(3 + 1 + 10 + 5)
    );

    // The JSON form, per service, of one rule.
    let listed = s.get_json(&format!("/api/v1/metrics?rule={adds}"));
    let brief: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            json!([
                v["service"],
                v["tags"]["sku"],
                v["count"],
                v["agents"],
                v["kind"],
                v["name"]
            ])
        })
        .collect();
    assert_eq!(
        brief,
        vec![
            json!(["billing", "A-1", 5, 1, "count", "cart.add"]),
            json!(["checkout", "A-1", 13, 2, "count", "cart.add"]),
            json!(["checkout", "B\"2", 1, 1, "count", "cart.add"]),
        ]
    );
    let gauges = s.get_json("/api/v1/metrics?rule=depth");
    assert_eq!(
        (&gauges[0]["last"], &gauges[0]["sum"], &gauges[0]["count"]),
        (&json!(4.5), &json!(22.5), &json!(3))
    );
    let (status, body) = s.call("GET", "/api/v1/metrics?rule=no/such", None);
    assert_eq!(status, 400, "{body}");

    // A deleted rule's series are gone from both, and late reports of it are not kept.
    assert_eq!(
        s.call("DELETE", &format!("/api/v1/rules/{adds}"), None).0,
        204
    );
    assert_eq!(a.recv_rule_ids(), vec![depth.clone()]);
    report(
        &mut a,
        vec![series(&adds, MetricKind::Count, &[("sku", "A-1")], 99)],
    );
    assert_eq!(
        scrape(&s),
        "# HELP queue_depth recorded by nonstop metric rules (queue_depth)\n\
         # TYPE queue_depth gauge\n\
         queue_depth{service=\"checkout\"} 4.5\n"
    );
    assert_eq!(
        s.get_json(&format!("/api/v1/metrics?rule={adds}")),
        json!([])
    );
}

#[test]
fn a_histogram_exports_cumulative_buckets_sum_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(
        r#"{"at":"src/cart.rs:42","action":"metric","metric":{"kind":"histogram","name":"sq","value":"square"}}"#,
    );
    let mut a = s.agent("a", "ticker");
    let mut b = s.agent("b", "ticker");
    a.recv_rule_ids();
    b.recv_rule_ids();
    report(&mut a, vec![histogram(&rule, &[0.0, 9.0, 36.0])]);
    report(&mut b, vec![histogram(&rule, &[1.0, 400.0])]);
    let text = scrape(&s);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + HISTOGRAM_BOUNDS.len() + 3, "{text}");
    assert_eq!(lines[0], "# HELP sq recorded by nonstop metric rules (sq)");
    assert_eq!(lines[1], "# TYPE sq histogram");
    for want in [
        "sq_bucket{service=\"ticker\",le=\"0.001\"} 1",
        "sq_bucket{service=\"ticker\",le=\"1\"} 2",
        "sq_bucket{service=\"ticker\",le=\"10\"} 3",
        "sq_bucket{service=\"ticker\",le=\"50\"} 4",
        "sq_bucket{service=\"ticker\",le=\"250\"} 4",
        "sq_bucket{service=\"ticker\",le=\"500\"} 5",
        "sq_bucket{service=\"ticker\",le=\"5000000000\"} 5",
        "sq_bucket{service=\"ticker\",le=\"+Inf\"} 5",
        "sq_sum{service=\"ticker\"} 446",
        "sq_count{service=\"ticker\"} 5",
    ] {
        assert!(lines.contains(&want), "no {want:?} in\n{text}");
    }
    // More buckets than the fixed bounds allow is not a series the server keeps.
    let mut bad = histogram(&rule, &[1.0; 100]);
    bad.buckets.push(0);
    report(&mut a, vec![bad]);
    assert!(scrape(&s).contains("sq_count{service=\"ticker\"} 5\n"));
}

#[test]
fn metrics_need_the_admin_token_and_say_how_to_configure_the_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let url = s.url("/metrics");
    for (token, status) in [
        (None, 401),
        (Some("nope"), 401),
        (Some(s.agent.as_str()), 403),
    ] {
        let (got, body) = call(&url, "GET", token, None);
        assert_eq!(got, status, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains("authorization: {credentials_file: DATA/admin.token}"),
            "{message}"
        );
    }
    // With the token: the Prometheus content type, and nothing before any series exist.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .header("Authorization", format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(resp.body_mut().read_to_string().unwrap(), "");
    let (status, _) = call(&s.url("/api/v1/metrics"), "GET", None, None);
    assert_eq!(status, 401);
    let (_, doc) = call(&s.url("/api/v1/openapi.json"), "GET", None, None);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for route in ["/metrics", "/api/v1/metrics"] {
        assert!(
            doc["paths"].get(route).is_some(),
            "{route} not in the OpenAPI document"
        );
    }
}

#[test]
fn a_serverless_agent_reports_metrics_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(COUNT_RULE);
    let post = |body: Value| {
        let (status, text) = call(
            &s.url("/agent/v1/responses"),
            "POST",
            Some(&s.agent),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let first = post(json!([
        {"type": "hello", "agent": common::info("fn-1", "lambda")},
        {"type": "metrics", "series": [series(&rule, MetricKind::Count, &[("sku", "A-1")], 2)]}
    ]));
    assert_eq!(first["rules"][0]["id"], json!(rule));
    // Later invocations name the agent in the query; the report is cumulative.
    let (status, text) = call(
        &s.url("/agent/v1/responses?agent=fn-1"),
        "POST",
        Some(&s.agent),
        Some(
            &json!({"type": "metrics", "series": [series(&rule, MetricKind::Count, &[("sku", "A-1")], 5)]})
                .to_string(),
        ),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        scrape(&s),
        "# HELP cart_add_total recorded by nonstop metric rules (cart.add)\n\
         # TYPE cart_add_total counter\n\
         cart_add_total{service=\"lambda\",sku=\"A-1\"} 5\n"
    );
}

#[test]
fn a_metric_rule_is_done_when_its_counts_over_agents_reach_max_hits() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(
        r#"{"at":"src/cart.rs:42","action":"metric","metric":{"kind":"count","name":"adds"},"max_hits":10}"#,
    );
    let mut a = s.agent("a", "checkout");
    let mut b = s.agent("b", "checkout");
    assert_eq!(a.recv_rule_ids(), vec![rule.clone()]);
    assert_eq!(b.recv_rule_ids(), vec![rule.clone()]);
    report(&mut a, vec![series(&rule, MetricKind::Count, &[], 6)]);
    report(&mut b, vec![series(&rule, MetricKind::Count, &[], 3)]);
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(
        (&view["state"], &view["hits"]),
        (&json!("active"), &json!(9))
    );
    // The tenth hit, on either agent, ends the rule everywhere.
    b.send(&AgentMessage::Metrics {
        series: vec![series(&rule, MetricKind::Count, &[], 4)],
    });
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    assert_eq!(b.recv_rule_ids(), Vec::<String>::new());
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(
        (&view["state"], &view["hits"]),
        (&json!("done"), &json!(10))
    );
    // What agents report after the end is not counted.
    report(&mut a, vec![series(&rule, MetricKind::Count, &[], 7)]);
    let text = scrape(&s);
    assert!(
        text.contains("adds_total{service=\"checkout\"} 10\n"),
        "{text}"
    );
    assert_eq!(
        s.get_json(&format!("/api/v1/rules/{rule}"))["hits"],
        json!(10)
    );
}

#[test]
fn hits_the_agents_dropped_are_exported_beside_the_counts_they_are_missing_from() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(
        r#"{"id":"hot","at":"src/cart.rs:42","action":"metric","metric":{"kind":"count","name":"adds"},"rate":"10/s"}"#,
    );
    let mut a = s.agent("a", "checkout");
    let mut b = s.agent("b", "checkout");
    a.recv_rule_ids();
    b.recv_rule_ids();
    for (agent, hits, dropped) in [(&mut a, 40, 5), (&mut b, 30, 7)] {
        agent.send(&AgentMessage::Status {
            statuses: vec![
                serde_json::from_value(json!({"rule": rule, "status": "rate-limited",
                    "probes": 1, "hits": hits, "dropped": dropped}))
                .unwrap(),
            ],
        });
        report(agent, vec![series(&rule, MetricKind::Count, &[], hits)]);
    }
    assert_eq!(
        scrape(&s),
        "# HELP adds_total recorded by nonstop metric rules (adds)\n\
         # TYPE adds_total counter\n\
         adds_total{service=\"checkout\"} 70\n\
         # HELP nonstop_metric_dropped_hits_total hits of a metric rule its agents did not record (rate limit, CPU budget, full buffer): its values undercount by this much\n\
         # TYPE nonstop_metric_dropped_hits_total counter\n\
         nonstop_metric_dropped_hits_total{metric=\"adds\",rule=\"hot\"} 12\n"
    );
}
