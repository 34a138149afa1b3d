//! 8 threads call a probed function while another thread arms and disarms probes on it
//! 1,000 times: results never change, nothing crashes, and the code is byte-identical
//! afterwards. Own process: the engine and its signal handlers are process-global, and
//! the hammering must not share the CPU budget or ring with other tests.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use nonstop_probe::ProbeSpec;

#[test]
fn hammer_while_arming_and_disarming() {
    let engine = engine();
    let instrs = target_instructions();
    let start = instrs[0].ip();
    let len = (instrs.last().unwrap().next_ip() - start) as usize;
    let original = nonstop_probe::text_bytes(start, len);
    let sites: Vec<_> = interesting(&instrs)
        .into_iter()
        .map(|(_, i)| i.ip())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8u64)
        .map(|t| {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = (n % 5 + t, n % 23);
                    assert_eq!(target(a, b), expected(a, b), "thread {t} call {n}");
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let drainer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += engine.drain(|_| {});
                std::thread::yield_now();
            }
            n
        })
    };
    let mut traps = 0;
    for round in 0..1000 {
        let site = sites[round % sites.len()];
        let id = engine.arm(ProbeSpec::new(site, empty_plan())).unwrap();
        std::thread::yield_now();
        engine.disarm(id).unwrap();
        traps += engine.stats(id).unwrap().traps;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker saw a wrong result");
    }
    drainer.join().unwrap();
    assert_eq!(engine.armed_count(), 0);
    assert_eq!(nonstop_probe::text_bytes(start, len), original);
    eprintln!(
        "{} calls, {traps} traps during 1000 arm/disarm rounds",
        calls.load(Ordering::Relaxed)
    );
    assert!(traps > 0);
}
