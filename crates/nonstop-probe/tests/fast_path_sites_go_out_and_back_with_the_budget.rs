//! A fast-path site over its budget goes out like an `int3` site: the budget's thread puts
//! every original byte of the span back (in the reverse order of patching), and after the
//! back-off patches the `jmp` again; meanwhile the function computes what it computes, and
//! after disarm the bytes are the original ones. Own process: the budget is set when the
//! process-global engine starts, with the fast path on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nonstop_probe::{Engine, EngineConfig, FastPath, OutReason, ProbeSpec};

fn engine() -> &'static Engine {
    let engine = Engine::init(EngineConfig {
        budget: 5e-6,
        budget_window: Duration::from_millis(200),
        fast_path: true,
        ..EngineConfig::default()
    })
    .unwrap();
    engine.start_budget_thread();
    engine
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_over_budget_fast_path_site_is_taken_out_and_patched_again_after_its_back_off() {
    let engine = engine();
    let instrs = target_instructions();
    let start = instrs[0].ip();
    let end = instrs.last().unwrap().next_ip();
    let original = nonstop_probe::text_bytes(start, (end - start) as usize);
    let mut spec = ProbeSpec::new(start, empty_plan());
    spec.function = Some(start..end);
    let id = engine.arm(spec).unwrap();
    let fast = engine.stats(id).unwrap().fast_path;
    assert!(matches!(fast, FastPath::Yes { .. }), "{fast}");
    assert_eq!(nonstop_probe::text_bytes(start, 1), [0xe9]);
    let mut calls = 0;
    let out = wait_for("the site taken out", Duration::from_secs(10), || {
        for _ in 0..10 {
            assert_eq!(target(calls, 0), expected(calls, 0));
            calls += 1;
        }
        let s = engine.stats(id).unwrap().sampling;
        s.out.then_some(s)
    });
    assert_eq!(out.reason, Some(OutReason::Budget));
    assert_eq!(
        nonstop_probe::text_bytes(start, original.len()),
        original,
        "every byte of the span back while out"
    );
    let traps = engine.stats(id).unwrap().traps;
    for i in 0..1000 {
        assert_eq!(target(i, 20), expected(i, 20));
    }
    assert_eq!(engine.stats(id).unwrap().traps, traps, "no hits while out");
    wait_for("the site back in", Duration::from_secs(10), || {
        let s = engine.stats(id).unwrap().sampling;
        (!s.out).then_some(())
    });
    assert_eq!(
        nonstop_probe::text_bytes(start, 1),
        [0xe9],
        "the jmp is patched again"
    );
    assert_eq!(target(7, 0), expected(7, 0));
    assert_eq!(engine.stats(id).unwrap().traps, traps + 1);
    engine.disarm(id).unwrap();
    engine.drain(|_| {});
    assert_eq!(nonstop_probe::text_bytes(start, original.len()), original);
}
