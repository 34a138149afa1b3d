//! Sentry, Datadog, Honeycomb and Slack into loopback receivers that check the documented
//! request formats.

mod support;

use nonstop_model::metrics::MetricSeries;
use nonstop_model::{Data, MetricKind, Value};
use nonstop_sinks::{Delivery, Outcome, Payload, TargetKind, TargetSpec, build, build_with};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;
use support::{Req, answering, context, delivery, receiver};

fn target(kind: TargetKind) -> TargetSpec {
    TargetSpec {
        name: "t".into(),
        kind,
    }
}

// ---- Sentry ----

/// Parses an envelope line by line: header, then items of `{type, length}` + payload.
fn envelope(body: &[u8]) -> (Json, Vec<(Json, Json)>) {
    let text = std::str::from_utf8(body).unwrap();
    let (header, mut rest) = text.split_once('\n').unwrap();
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (item_header, after) = rest.split_once('\n').unwrap();
        let item_header: Json = serde_json::from_str(item_header).unwrap();
        let len = item_header["length"].as_u64().unwrap() as usize;
        let payload: Json = serde_json::from_str(&after[..len]).unwrap();
        rest = after[len..].strip_prefix('\n').unwrap_or(&after[len..]);
        items.push((item_header, payload));
    }
    (serde_json::from_str(header).unwrap(), items)
}

fn sentry(url: &str) -> TargetSpec {
    let dsn = url.replace("http://", "http://pubkey42@") + "/sub/1234";
    target(TargetKind::Sentry { dsn })
}

#[tokio::test]
async fn sentry_events_go_in_envelopes_with_the_auth_header() {
    let rx = answering(200).await;
    let sink = build_with(&sentry(&rx.url), &context()).unwrap();
    let batch = [
        delivery("out-1", None),
        delivery("out-2", Some("added 3 x widget")),
    ];
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 2]);
    assert_eq!(sink.send(&batch[..1]).await, vec![Outcome::Sent]);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3, "one envelope per event");
    let r = &reqs[0];
    assert_eq!(r.path, "/sub/api/1234/envelope/");
    assert_eq!(r.header("content-type"), "application/x-sentry-envelope");
    assert_eq!(
        r.header("x-sentry-auth"),
        format!(
            "Sentry sentry_version=7, sentry_client=nonstop/{}, sentry_key=pubkey42",
            env!("CARGO_PKG_VERSION")
        )
    );
    let (header, items) = envelope(&r.body);
    assert_eq!(items.len(), 1);
    let (item, e) = &items[0];
    assert_eq!(item["type"], "event");
    assert_eq!(header["event_id"], e["event_id"]);
    assert!(header["sent_at"].as_str().unwrap().ends_with('Z'));
    let id = e["event_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // The same delivery again: the same event_id (Sentry drops the duplicate).
    assert_eq!(envelope(&reqs[2].body).1[0].1["event_id"], id);
    assert_ne!(envelope(&reqs[1].body).1[0].1["event_id"], id);
    assert_eq!(e["platform"], "native");
    assert_eq!(e["level"], "info");
    assert_eq!(e["timestamp"], "2026-12-04T10:00:00.250Z");
    assert_eq!(e["release"], "1.4.2");
    assert_eq!(e["server_name"], "web-1");
    assert_eq!(
        e["tags"],
        json!({"service": "shop", "rule": "r-7", "agent": "web-1-4242-ab12", "location": "src/cart.rs:42", "kind": "snapshot"})
    );
    let frames = e["threads"]["values"][0]["stacktrace"]["frames"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = frames
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["shop::main", "shop::api::handle", "shop::cart::add"],
        "oldest first"
    );
    let vars = &frames[2]["vars"];
    assert_eq!(vars["qty"], 3);
    assert_eq!(vars["name"], "widget-deluxe…");
    assert_eq!(vars["cart"]["items"][0]["sku"], "A1");
    assert_eq!(vars["cart"]["owner"], json!({"Some": ["ann"]}));
    assert_eq!(vars["token"], "[redacted]");
    assert_eq!(vars["gone"], "<error: optimized out>");
    assert!(frames[0].get("vars").is_none());
    assert_eq!(frames[2]["lineno"], 42);
    assert_eq!(e["extra"]["watch"]["qty * 2"], 6);
    let log = &envelope(&reqs[1].body).1[0].1;
    assert_eq!(log["message"]["formatted"], "added 3 x widget");
}

#[tokio::test]
async fn sentry_rate_limits_hold_the_next_sends() {
    let rx = receiver(|_, n| match n {
        0 => (
            429,
            vec![
                (
                    "x-sentry-rate-limits".into(),
                    "120:error;default:organization".into(),
                ),
                ("retry-after".into(), "5".into()),
            ],
            vec![],
        ),
        _ => (200, vec![], vec![]),
    })
    .await;
    let sink = build(&sentry(&rx.url)).unwrap();
    let got = sink.send(&[delivery("a", None), delivery("b", None)]).await;
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(120)),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(120))
    );
    // Held: nothing is sent while the limit lasts.
    let got = sink.send(&[delivery("c", None)]).await;
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(a), reason } if *a <= Duration::from_secs(120) && reason.contains("rate limit"))
    );
    assert_eq!(rx.requests().len(), 1);

    // Retry-After alone, and the default 60 s without either.
    let rx = receiver(|_, n| match n {
        0 => (429, vec![("retry-after".into(), "9".into())], vec![]),
        _ => (429, vec![], vec![]),
    })
    .await;
    let got = build(&sentry(&rx.url))
        .unwrap()
        .send(&[delivery("a", None)])
        .await;
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(9))
    );
    let got = build(&sentry(&rx.url))
        .unwrap()
        .send(&[delivery("a", None)])
        .await;
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(60))
    );
    let rx = answering(403).await;
    let got = build(&sentry(&rx.url))
        .unwrap()
        .send(&[delivery("a", None)])
        .await;
    assert_eq!(
        got[0],
        Outcome::Failed {
            reason: "Sentry answered HTTP 403".into()
        }
    );
}

// ---- Datadog ----

fn datadog(url: &str) -> TargetSpec {
    target(TargetKind::Datadog {
        api_key: "dd-key-1234".into(),
        site: "datadoghq.eu".into(),
        url: Some(url.into()),
    })
}

fn gunzip(body: &[u8]) -> Json {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn count_metric(id: &str) -> Delivery {
    Delivery {
        id: id.into(),
        payload: Payload::Metric {
            agent: "web-1-4242-ab12".into(),
            service: "shop".into(),
            series: MetricSeries {
                rule: "m-2".into(),
                name: "cart.adds".into(),
                kind: MetricKind::Count,
                tags: BTreeMap::from([("route".to_string(), "/cart".to_string())]),
                count: 17,
                sum: 0.0,
                last: None,
                buckets: vec![],
                updated: "2026-12-04T10:00:00Z".into(),
                overflow: 0,
            },
            time_ms: 1_796_378_400_000,
        },
        link: None,
    }
}

#[tokio::test]
async fn datadog_logs_are_gzipped_json_with_the_reserved_attributes() {
    let rx = answering(202).await;
    let sink = build_with(&datadog(&rx.url), &context()).unwrap();
    assert_eq!(sink.limits().max_batch, 1000);
    let batch = [
        delivery("d1", None),
        delivery("d2", Some("added 3 x widget")),
        count_metric("m1"),
    ];
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 3]);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let logs = &reqs[0];
    assert_eq!(logs.path, "/api/v2/logs");
    assert_eq!(logs.header("dd-api-key"), "dd-key-1234");
    assert_eq!(logs.header("content-encoding"), "gzip");
    assert_eq!(logs.header("content-type"), "application/json");
    let entries = gunzip(&logs.body);
    let e = &entries[0];
    assert_eq!(e["ddsource"], "nonstop");
    assert_eq!(
        e["ddtags"],
        "rule:r-7,agent:web-1-4242-ab12,location:src/cart.rs:42,kind:snapshot"
    );
    assert_eq!(e["service"], "shop");
    assert_eq!(e["hostname"], "web-1");
    assert_eq!(
        e["message"],
        "snapshot at src/cart.rs:42 in shop::cart::add (7 locals), 1 watched"
    );
    assert_eq!(e["timestamp"], 1_796_378_400_250u64);
    assert_eq!(e["nonstop"]["hit_id"], "d1");
    assert_eq!(e["nonstop"]["locals"]["cart"]["id"], 7);
    assert_eq!(entries[1]["message"], "added 3 x widget");
    let series = &reqs[1];
    assert_eq!(series.path, "/api/v2/series");
    assert_eq!(series.header("dd-api-key"), "dd-key-1234");
    let s = &gunzip(&series.body)["series"][0];
    assert_eq!(s["metric"], "cart.adds");
    assert_eq!(s["type"], 3);
    assert_eq!(
        s["points"],
        json!([{"timestamp": 1_796_378_400i64, "value": 17.0}])
    );
    assert_eq!(
        s["tags"],
        json!([
            "service:shop",
            "rule:m-2",
            "agent:web-1-4242-ab12",
            "route:/cart"
        ])
    );
    assert_eq!(s["resources"], json!([{"name": "web-1", "type": "host"}]));
}

#[tokio::test]
async fn datadog_splits_a_full_batch_at_five_megabytes() {
    let rx = answering(202).await;
    let sink = build(&datadog(&rx.url)).unwrap();
    // 1000 hits of ~6 KB each: over 5 MB in all, so two requests, each under it.
    let big = "x".repeat(6000);
    let batch: Vec<Delivery> = (0..1000)
        .map(|i| {
            let mut d = delivery(&format!("d{i}"), None);
            if let Payload::Response(r) = &mut d.payload {
                r.locals
                    .0
                    .push(("blob".into(), Value::new("String", Data::Str(big.clone()))));
            }
            d
        })
        .collect();
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 1000]);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let mut total = 0;
    let mut ids = Vec::new();
    for r in &reqs {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(r.body.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert!(raw.len() <= 5_000_000, "{} bytes", raw.len());
        let entries: Vec<Json> = serde_json::from_slice(&raw).unwrap();
        assert!(entries.len() <= 1000);
        total += entries.len();
        ids.extend(
            entries
                .iter()
                .map(|e| e["nonstop"]["hit_id"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(total, 1000);
    let expected: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
    assert_eq!(ids, expected, "in order, each once");
}

#[tokio::test]
async fn datadog_answers_are_classified_as_documented() {
    for (status, retried) in [
        (408, true),
        (429, true),
        (500, true),
        (503, true),
        (400, false),
        (401, false),
        (403, false),
        (413, false),
    ] {
        let rx = answering(status).await;
        let got = build(&datadog(&rx.url))
            .unwrap()
            .send(&[delivery("d", None)])
            .await;
        match (&got[0], retried) {
            (Outcome::Retry { .. }, true) | (Outcome::Failed { .. }, false) => {}
            other => panic!("HTTP {status}: {other:?}"),
        }
    }
}

// ---- Honeycomb ----

#[tokio::test]
async fn honeycomb_reads_the_per_event_statuses() {
    let rx = receiver(|_, _| {
        (
            200,
            vec![],
            br#"[{"status":202},{"status":400,"error":"field too long"},{"status":202}]"#.to_vec(),
        )
    })
    .await;
    let spec = target(TargetKind::Honeycomb {
        key: "hc-key-9".into(),
        dataset: "shop prod".into(),
        url: Some(rx.url.clone()),
    });
    let sink = build(&spec).unwrap();
    let got = sink
        .send(&[
            delivery("h1", None),
            delivery("h2", Some("added 3 x widget")),
            count_metric("m1"),
        ])
        .await;
    assert_eq!(
        got,
        vec![
            Outcome::Sent,
            Outcome::Failed {
                reason: "Honeycomb rejected the event (status 400): field too long".into()
            },
            Outcome::Sent
        ]
    );
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/1/batch/shop%20prod");
    assert_eq!(r.header("x-honeycomb-team"), "hc-key-9");
    let events = r.json();
    let e = &events[0];
    assert_eq!(e["time"], "2026-12-04T10:00:00.250Z");
    let d = &e["data"];
    assert_eq!(d["name"], "nonstop.snapshot");
    assert_eq!(d["service.name"], "shop");
    assert_eq!(d["code.file.path"], "src/cart.rs");
    assert_eq!(d["code.line.number"], 42);
    assert_eq!(d["nonstop.hit.id"], "h1");
    assert_eq!(d["local.qty"], 3);
    assert_eq!(
        d["local.cart"],
        r#"{"id":7,"items":[{"qty":-2,"sku":"A1"}],"owner":{"Some":["ann"]}}"#
    );
    assert_eq!(d["watch.qty * 2"], 6);
    assert_eq!(events[1]["data"]["name"], "nonstop.log");
    assert_eq!(events[2]["data"]["metric.count"], 17);

    let rx = receiver(|_, _| (429, vec![("retry-after".into(), "11".into())], vec![])).await;
    let spec = target(TargetKind::Honeycomb {
        key: "k".into(),
        dataset: "d".into(),
        url: Some(rx.url.clone()),
    });
    let got = build(&spec).unwrap().send(&[delivery("h1", None)]).await;
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(11))
    );
}

// ---- Slack ----

fn slack(url: &str) -> TargetSpec {
    target(TargetKind::Slack {
        webhook: format!("{url}/services/T000/B000/XXXX"),
    })
}

#[tokio::test]
async fn slack_folds_a_burst_into_one_block_kit_message() {
    let rx = answering(200).await;
    let sink = build(&slack(&rx.url)).unwrap();
    assert_eq!(sink.limits().min_interval, Duration::from_secs(1));
    let mut batch: Vec<Delivery> = (0..13).map(|i| delivery(&format!("s{i}"), None)).collect();
    batch.push(count_metric("m1"));
    let got = sink.send(&batch).await;
    assert_eq!(got[..13], vec![Outcome::Sent; 13]);
    assert_eq!(got[13], Outcome::Skipped);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "one message for the burst");
    assert_eq!(reqs[0].path, "/services/T000/B000/XXXX");
    let m = reqs[0].json();
    let blocks = m["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert_eq!(
        blocks[0]["text"]["text"],
        "*shop* · `src/cart.rs:42` in `shop::cart::add`"
    );
    let vars = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        vars.starts_with("`qty * 2` = `6`\n`qty` = `3`\n`name` = `\"widget-deluxe…\"`"),
        "{vars}"
    );
    assert_eq!(vars.lines().count(), 6);
    let ctx = blocks[2]["elements"][0]["text"].as_str().unwrap();
    assert!(ctx.contains("rule `r-7`"), "{ctx}");
    assert!(
        ctx.ends_with("<http://nonstop.test/responses/s0|open in nonstop>"),
        "{ctx}"
    );
    assert_eq!(
        blocks[3]["elements"][0]["text"],
        "12 more hits (`src/cart.rs:42`)"
    );
    assert!(m["text"].as_str().unwrap().ends_with("(12 more hits)"));

    let got = sink
        .send(&[delivery("l", Some("added 3 x <widget>"))])
        .await;
    assert_eq!(got, vec![Outcome::Sent]);
    let m = rx.requests()[1].json();
    assert_eq!(m["blocks"][1]["text"]["text"], "> added 3 x &lt;widget&gt;");
    assert_eq!(m["blocks"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn slack_429_is_retried_after_what_it_says() {
    let rx = receiver(|_: &Req, _| {
        (
            429,
            vec![("retry-after".into(), "5".into())],
            b"rate_limited".to_vec(),
        )
    })
    .await;
    let sink = build(&slack(&rx.url)).unwrap();
    let got = sink.send(&[delivery("a", None), delivery("b", None)]).await;
    assert_eq!(
        got,
        vec![
            Outcome::Retry {
                after: Some(Duration::from_secs(5)),
                reason: "Slack answered HTTP 429: rate_limited".into()
            };
            2
        ]
    );
    let rx = receiver(|_: &Req, _| (404, vec![], b"channel_not_found".to_vec())).await;
    let got = build(&slack(&rx.url))
        .unwrap()
        .send(&[delivery("a", None)])
        .await;
    assert_eq!(
        got[0],
        Outcome::Failed {
            reason: "Slack answered HTTP 404: channel_not_found".into()
        }
    );
}
