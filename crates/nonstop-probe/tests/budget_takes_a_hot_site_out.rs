//! The budget takes a hot site out: over the budget, the trap path asks, the budget's thread
//! (`enforce_budget`) puts the original byte back (no more traps), and puts the `int3` back
//! after the back-off; meanwhile threads running the site compute what they compute
//! without a probe, and after disarm the bytes are the original ones. Own process: the
//! budget is set when the process-global engine starts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nonstop_probe::{Engine, EngineConfig, FIRST_BACKOFF, OutReason, ProbeSpec};

/// 1 µs of trap time per 200 ms: a handful of traps exceed it; the window slides fast, so
/// the budget has room again soon after a site goes out.
fn engine() -> &'static Engine {
    let engine = Engine::init(EngineConfig {
        budget: 5e-6,
        budget_window: Duration::from_millis(200),
        ..EngineConfig::default()
    })
    .unwrap();
    engine.start_budget_thread();
    engine
}

/// Polls `f` every 5 ms until it returns `Some`, for at most `within`.
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

fn byte_at(addr: u64) -> u8 {
    nonstop_probe::text_bytes(addr, 1)[0]
}

#[test]
fn an_over_budget_site_is_taken_out_and_put_back_after_its_back_off() {
    let _s = serial();
    let engine = engine();
    let addr = target_instructions()[0].ip();
    let original = nonstop_probe::text_bytes(addr, 16);
    let id = engine.arm(ProbeSpec::new(addr, empty_plan())).unwrap();
    assert_eq!(byte_at(addr), 0xcc);
    // Calls until the budget's thread has taken the site out (the trap path only asks).
    let mut calls = 0;
    let out = wait_for("the site taken out", Duration::from_secs(10), || {
        for _ in 0..10 {
            assert_eq!(target(calls, 0), expected(calls, 0));
            calls += 1;
        }
        let s = engine.stats(id).unwrap().sampling;
        s.out.then_some(s)
    });
    let stats = engine.stats(id).unwrap();
    let traps = stats.traps;
    assert!(
        traps >= 1 && traps <= calls,
        "{traps} traps in {calls} calls"
    );
    assert!(stats.dropped_budget > 0, "{stats:?}");
    assert_eq!(out.times_out, 1);
    assert_eq!(out.reason, Some(OutReason::Budget));
    assert_eq!(out.backoff, FIRST_BACKOFF);
    // Calling the budget's work again changes nothing while the back-off runs.
    let due = engine.enforce_budget();
    assert!(
        due.is_some_and(|d| d <= FIRST_BACKOFF),
        "due back within the first back-off: {due:?}"
    );
    assert_eq!(engine.stats(id).unwrap().sampling.times_out, 1);
    assert_eq!(nonstop_probe::text_bytes(addr, 16), original);
    // Out: the line runs without trapping.
    for i in 0..1000 {
        assert_eq!(target(i, 20), expected(i, 20));
    }
    assert_eq!(engine.stats(id).unwrap().traps, traps);

    // Back in once the back-off is over (and the window has room again).
    let taken_out = Instant::now();
    let back = wait_for(
        "the site back in after its back-off",
        Duration::from_secs(10),
        || {
            let s = engine.stats(id).unwrap().sampling;
            (!s.out).then_some(s)
        },
    );
    assert!(taken_out.elapsed() >= FIRST_BACKOFF - Duration::from_millis(5));
    assert_eq!(back.backoff, 2 * FIRST_BACKOFF, "{back:?}");
    assert_eq!(byte_at(addr), 0xcc);
    assert_eq!(target(7, 0), expected(7, 0));
    assert_eq!(engine.stats(id).unwrap().traps, traps + 1);

    engine.disarm(id).unwrap();
    assert_eq!(nonstop_probe::text_bytes(addr, 16), original);
}

#[test]
fn threads_running_a_site_the_budget_takes_out_and_puts_back_compute_the_same() {
    let _s = serial();
    let engine = engine();
    let instrs = target_instructions();
    // The entry (emulated push), an out-of-line rip-relative mov, and a call.
    let sites = [
        instrs[0].ip(),
        interesting(&instrs)[1].1.ip(),
        interesting(&instrs)[4].1.ip(),
    ];
    let originals: Vec<Vec<u8>> = sites
        .iter()
        .map(|a| nonstop_probe::text_bytes(*a, 16))
        .collect();
    let ids: Vec<_> = sites
        .iter()
        .map(|a| engine.arm(ProbeSpec::new(*a, empty_plan())).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let calls = Arc::clone(&calls);
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let b = i % 23;
                    assert_eq!(target(i, b), expected(i, b), "thread {t}, call {i}");
                    i = i.wrapping_add(8);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Until every site went out and back in at least twice; this thread also does the
    // budget's work, alongside the budget's own thread.
    wait_for(
        "every site out and back in twice",
        Duration::from_secs(20),
        || {
            engine.enforce_budget();
            ids.iter()
                .all(|id| engine.stats(*id).unwrap().sampling.times_out >= 3)
                .then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a thread computed a wrong result");
    }
    for (id, (addr, original)) in ids.iter().zip(sites.iter().zip(&originals)) {
        let stats = engine.stats(*id).unwrap();
        assert!(stats.traps > 0, "{stats:?}");
        engine.disarm(*id).unwrap();
        assert_eq!(&nonstop_probe::text_bytes(*addr, 16), original);
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    // Drain what was captured; every record parses.
    engine.drain(|hit| {
        nonstop_capture::capture::CapturedMemory::parse(hit.record).expect("record parses");
    });
}
