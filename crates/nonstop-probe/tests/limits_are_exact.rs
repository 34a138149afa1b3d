//! Max hits, the rate limit and the per-hit time cap, checked in the trap path. Own process:
//! the engine (ring, budget) is process-global.

mod common;

use std::time::Duration;

use common::*;
use nonstop_probe::{DisarmReason, ProbeSpec, RateLimit};

fn entry() -> u64 {
    target_instructions()[0].ip()
}

#[test]
fn max_hits_gives_exactly_that_many_records() {
    let _s = serial();
    let engine = engine();
    let mut spec = ProbeSpec::new(entry(), empty_plan());
    spec.max_hits = Some(5);
    let id = engine.arm(spec).unwrap();
    for i in 0..20 {
        assert_eq!(target(i, i), expected(i, i));
    }
    let stats = engine.stats(id).unwrap();
    assert_eq!((stats.traps, stats.hits), (20, 5));
    assert!(stats.done);
    assert_eq!(stats.disarm_reason, Some(DisarmReason::MaxHits));
    engine.disarm(id).unwrap();
    let records = drain_for(engine, id);
    assert_eq!(records.len(), 5);
    let firsts: Vec<u64> = records.iter().map(|r| r.regs.gpr[5]).collect();
    assert_eq!(firsts, vec![0, 1, 2, 3, 4]);
}

#[test]
fn rate_limit_drops_and_counts() {
    let _s = serial();
    let engine = engine();
    let mut spec = ProbeSpec::new(entry(), empty_plan());
    spec.rate = Some(RateLimit {
        per_second: 1.0,
        burst: 3,
    });
    let id = engine.arm(spec).unwrap();
    for i in 0..100 {
        assert_eq!(target(i, 1), expected(i, 1));
    }
    let stats = engine.stats(id).unwrap();
    engine.disarm(id).unwrap();
    assert_eq!(stats.traps, 100);
    assert_eq!(stats.hits, 3, "the burst");
    assert_eq!(stats.dropped_rate, 97);
    assert!(!stats.done);
    assert_eq!(drain_for(engine, id).len(), 3);
}

#[test]
fn a_slow_hit_marks_the_probe_for_disarm() {
    let _s = serial();
    let engine = engine();
    let mut spec = ProbeSpec::new(entry(), empty_plan());
    spec.time_cap = Duration::from_nanos(1);
    let id = engine.arm(spec).unwrap();
    for i in 0..3 {
        assert_eq!(target(i, 1), expected(i, 1));
    }
    let stats = engine.stats(id).unwrap();
    engine.disarm(id).unwrap();
    assert!(stats.done);
    assert_eq!(stats.hits, 1, "no capture after the probe is done");
    assert_eq!(stats.traps, 3);
    assert!(
        matches!(stats.disarm_reason, Some(DisarmReason::TimeCap { .. })),
        "{stats:?}"
    );
    assert_eq!(drain_for(engine, id).len(), 1);
}

#[test]
fn hits_carry_time_and_thread() {
    let _s = serial();
    let engine = engine();
    let id = engine.arm(ProbeSpec::new(entry(), empty_plan())).unwrap();
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let other = std::thread::spawn(|| {
        target(1, 1);
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_gettid) as u32 }
    })
    .join()
    .unwrap();
    target(2, 2);
    engine.disarm(id).unwrap();
    let mut seen = Vec::new();
    engine.drain(|h| {
        if h.probe == id {
            seen.push((h.tid, h.time_ns));
        }
    });
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].0, seen[1].0), (other, me));
    assert!(seen[0].1 <= seen[1].1 && seen[0].1 > 0);
}
