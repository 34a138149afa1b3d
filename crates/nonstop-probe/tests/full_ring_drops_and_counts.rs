//! A full hit ring drops hits and counts them; draining makes room again. Own process: the
//! ring's size is fixed when the process-global engine starts.

mod common;

use common::*;
use nonstop_probe::{Engine, EngineConfig, ProbeSpec};

#[test]
fn full_ring_drops_and_counts() {
    let engine = Engine::init(EngineConfig {
        ring_slots: 4,
        ring_slot_size: 4096,
        ..EngineConfig::default()
    })
    .unwrap();
    let id = engine
        .arm(ProbeSpec::new(target_instructions()[0].ip(), empty_plan()))
        .unwrap();
    for i in 0..10 {
        assert_eq!(target(i, 0), expected(i, 0));
    }
    let stats = engine.stats(id).unwrap();
    assert_eq!((stats.traps, stats.hits, stats.dropped_full), (10, 4, 6));
    assert_eq!(drain_for(engine, id).len(), 4);
    target(99, 0);
    let records = drain_for(engine, id);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].regs.gpr[5], 99);
    engine.disarm(id).unwrap();
}
