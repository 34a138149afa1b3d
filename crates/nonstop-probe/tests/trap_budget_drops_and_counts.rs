//! The global trap budget: once the handler time in the window exceeds the budget, hits are
//! dropped and counted as budget drops. Own process: the budget is set when the
//! process-global engine starts.

mod common;

use std::time::Duration;

use common::*;
use nonstop_probe::{Engine, EngineConfig, ProbeSpec};

#[test]
fn over_budget_hits_are_dropped_and_counted() {
    let engine = Engine::init(EngineConfig {
        budget: 1e-6, // 1 µs of handler time per 1 s window
        budget_window: Duration::from_secs(1),
        ..EngineConfig::default()
    })
    .unwrap();
    let id = engine
        .arm(ProbeSpec::new(target_instructions()[0].ip(), empty_plan()))
        .unwrap();
    for i in 0..200 {
        assert_eq!(target(i, 0), expected(i, 0));
    }
    let stats = engine.stats(id).unwrap();
    engine.disarm(id).unwrap();
    assert_eq!(stats.traps, 200);
    assert!(stats.hits >= 1 && stats.hits < 10, "{stats:?}");
    assert_eq!(stats.hits + stats.dropped_budget, 200);
}
