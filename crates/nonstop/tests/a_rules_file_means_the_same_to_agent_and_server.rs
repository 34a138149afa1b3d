//! One grammar and one set of bounds: a rule an agent runs from an offline rules file is
//! one the server takes (and one it refuses, the server refuses too, with the same words).
//! Random rules with durations, rates and max hits around the bounds, checked by both.

use nonstop_model::Rule;
use nonstop_server::validate::{DEFAULT_MAX_LIMITS, check_and_fill};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s", "1ms", "0.5s", "30m", "1h", "24h", "29d", "30d", "30.0001d", "31d", "366d",
            "367d", "720h", "721h", "5 weeks", "1.5h", "90", "-1s", "",
        ])
        .prop_map(str::to_owned),
        (
            0u64..2_000_000,
            prop::sample::select(vec!["ms", "s", "m", "h", "d", ""])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

fn rate() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1/s",
            "0.5/s",
            "1000000/s",
            "1000001/s",
            "60000000/m",
            "60000001/m",
            "3600000000/h",
            "0/s",
            "fast",
            "1/d",
        ])
        .prop_map(str::to_owned),
        (0u64..300_000, prop::sample::select(vec!["s", "m", "h"]))
            .prop_map(|(n, p)| format!("{n}/{p}")),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    let at = prop::sample::select(vec![
        "src/main.rs:12",
        "src/main.rs:0",
        ":3",
        "shop::cart::add",
        " src/a.rs:1",
    ]);
    let action = prop::sample::select(vec![
        r#""action":"snapshot""#,
        r#""action":"log","template":"paid {order.total}""#,
        r#""action":"metric","metric":{"kind":"count","name":"paid"}"#,
        r#""action":"log""#,
    ]);
    (
        at,
        action,
        prop::option::of(duration()),
        prop::option::of(rate()),
        prop::option::of(prop_oneof![0u64..3, 999_999u64..1_000_002, any::<u64>()]),
    )
        .prop_map(|(at, action, expires, rate, max_hits)| {
            let mut json = format!(r#"{{"at":"{at}",{action}"#);
            if let Some(e) = expires {
                json.push_str(&format!(r#","expires":{e:?}"#));
            }
            if let Some(r) = rate {
                json.push_str(&format!(r#","rate":{r:?}"#));
            }
            if let Some(n) = max_hits {
                json.push_str(&format!(r#","max_hits":{n}"#));
            }
            json.push('}');
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn the_agent_and_the_server_accept_and_refuse_the_same_rules(rule in rule()) {
        let agent = nonstop_agent::check_rule(&rule);
        let server = check_and_fill(&mut rule.clone(), &DEFAULT_MAX_LIMITS);
        prop_assert_eq!(agent, server, "{:?}", rule);
    }
}

#[test]
fn the_bounds_are_the_servers() {
    let rule = |extra: &str| -> Rule {
        serde_json::from_str(&format!(
            r#"{{"at":"src/a.rs:3","action":"snapshot",{extra}}}"#
        ))
        .unwrap()
    };
    assert_eq!(
        nonstop_agent::check_rule(&rule(r#""expires":"31d""#)),
        Err("duration \"31d\" must be more than 0s and at most 30d".into())
    );
    assert_eq!(
        nonstop_agent::check_rule(&rule(r#""rate":"2000000/s""#)),
        Err("rate \"2000000/s\" must allow at most 1000000 hits per second".into())
    );
    assert_eq!(
        nonstop_agent::check_rule(&rule(r#""max_hits":0"#)),
        Err("max_hits must be between 1 and 1000000, not 0".into())
    );
    assert_eq!(
        nonstop_agent::check_rule(&rule(r#""expires":"30d","rate":"1000000/s""#)),
        Ok(())
    );
}
