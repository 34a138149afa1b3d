//! Standard Webhooks into a loopback receiver that checks the signature.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use nonstop_sinks::{Outcome, TargetKind, TargetSpec, build};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Req, delivery, receiver};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn spec(url: &str) -> TargetSpec {
    TargetSpec {
        name: "hook".into(),
        kind: TargetKind::Webhook {
            url: format!("{url}/hooks/nonstop"),
            secret: Some(format!("whsec_{}", STANDARD.encode(KEY))),
            headers: BTreeMap::from([("x-team".to_string(), "payments".to_string())]),
        },
    }
}

/// The receiver's side of Standard Webhooks, written from the spec: HMAC-SHA256 of
/// `id.timestamp.body` under the decoded secret, base64, as `v1,…`.
fn verify(req: &Req) -> bool {
    let id = req.header("webhook-id");
    let ts = req.header("webhook-timestamp");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&req.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    req.header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test]
async fn posts_are_signed_and_the_id_is_stable_across_sends() {
    let rx = receiver(|req: &Req, _| {
        if verify(req) {
            (204, vec![], vec![])
        } else {
            (401, vec![], vec![])
        }
    })
    .await;
    let sink = build(&spec(&rx.url)).unwrap();
    let batch = [
        delivery("out-17", None),
        delivery("out-18", Some("added 3 x widget")),
    ];
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 2]);
    // The same delivery sent again (a retry after a crash): the same webhook-id.
    assert_eq!(sink.send(&batch[..1]).await, vec![Outcome::Sent]);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3, "one POST per delivery");
    for r in &reqs {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/hooks/nonstop")
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-team"), "payments");
        assert!(verify(r));
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        assert!(ts > 1_700_000_000);
    }
    assert_eq!(reqs[0].header("webhook-id"), "out-17");
    assert_eq!(reqs[1].header("webhook-id"), "out-18");
    assert_eq!(reqs[2].header("webhook-id"), "out-17");
    let snap = reqs[0].json();
    assert_eq!(snap["type"], "nonstop.snapshot");
    assert_eq!(snap["timestamp"], "2026-12-04T10:00:00.250Z");
    assert_eq!(snap["link"], "http://nonstop.test/responses/out-17");
    // `data` is the response in its JSON form.
    let expected = serde_json::to_value(support::response(None)).unwrap();
    assert_eq!(snap["data"], expected);
    assert_eq!(snap["data"]["locals"]["name"]["truncated"], true);
    let log = reqs[1].json();
    assert_eq!(log["type"], "nonstop.log");
    assert_eq!(log["data"]["message"], "added 3 x widget");
    // A tampered body does not verify.
    let mut bad = reqs[0].clone();
    bad.body.push(b' ');
    assert!(!verify(&bad));
}

#[tokio::test]
async fn gone_disables_and_throttling_retries_in_order() {
    let rx = receiver(|req: &Req, _| match req.header("webhook-id") {
        "gone" => (410, vec![], b"endpoint removed".to_vec()),
        "slow" => (429, vec![("retry-after".into(), "30".into())], vec![]),
        "bad" => (400, vec![], b"schema mismatch".to_vec()),
        "down" => (503, vec![], vec![]),
        _ => (200, vec![], vec![]),
    })
    .await;
    let sink = build(&spec(&rx.url)).unwrap();
    let got = sink
        .send(&[
            delivery("ok", None),
            delivery("gone", None),
            delivery("next", None),
        ])
        .await;
    assert_eq!(got[0], Outcome::Sent);
    assert!(
        matches!(&got[1], Outcome::Disable { reason } if reason.contains("410") && reason.contains("endpoint removed")),
        "{got:?}"
    );
    assert!(matches!(&got[2], Outcome::Disable { .. }));
    let got = sink
        .send(&[
            delivery("bad", None),
            delivery("slow", None),
            delivery("after", None),
        ])
        .await;
    assert_eq!(
        got[0],
        Outcome::Failed {
            reason: "the webhook answered HTTP 400: schema mismatch".into()
        }
    );
    assert_eq!(
        got[1],
        Outcome::Retry {
            after: Some(Duration::from_secs(30)),
            reason: "the webhook answered HTTP 429".into()
        }
    );
    // Not tried after a retry: the order per rule is kept.
    assert!(
        matches!(&got[2], Outcome::Retry { after: Some(a), .. } if *a == Duration::from_secs(30))
    );
    let got = sink.send(&[delivery("down", None)]).await;
    assert!(matches!(&got[0], Outcome::Retry { after: None, .. }));
    let ids: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids, ["ok", "gone", "bad", "slow", "down"]);
}

#[test]
fn a_secret_that_is_not_base64_is_refused_with_a_fix() {
    let mut s = spec("http://127.0.0.1:9");
    if let TargetKind::Webhook { secret, .. } = &mut s.kind {
        *secret = Some("whsec_not base64!".into());
    }
    let err = build(&s).err().unwrap().to_string();
    assert!(err.contains("openssl rand -base64 32"), "{err}");
}
