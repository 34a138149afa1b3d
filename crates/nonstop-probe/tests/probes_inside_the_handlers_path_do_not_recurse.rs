//! A probe on a libc function the trap handler itself calls (`clock_gettime`, when it
//! renews its time base) is hit both by the program and, nested, by the handler: the nested hit only runs the instruction and
//! is counted, and nothing recurses. Probes on the engine's own trap path are refused.
//! Own process: probes a process-wide libc function.

mod common;

use common::*;
use nonstop_probe::{ArmError, ProbeSpec};

#[test]
fn probing_clock_gettime_nests_without_recursion() {
    let engine = engine();
    // SAFETY: dlsym with a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"clock_gettime".as_ptr()) } as u64;
    assert_ne!(f, 0);
    let id = match engine.arm(ProbeSpec::new(f, empty_plan())) {
        Ok(id) => id,
        Err(e) => panic!("cannot probe clock_gettime: {e}"),
    };
    let t = std::time::Instant::now();
    for _ in 0..10 {
        std::hint::black_box(std::time::Instant::now());
    }
    // The handler reads the clock itself when its TSC time base is over ~10 ms old (on
    // every hit without a usable TSC): call again until one of those reads has nested.
    let mut stats = engine.stats(id).unwrap();
    while stats.dropped_nested == 0 && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(11));
        std::hint::black_box(std::time::Instant::now());
        stats = engine.stats(id).unwrap();
    }
    assert!(t.elapsed().as_secs() < 5, "{stats:?}");
    engine.disarm(id).unwrap();
    engine.drain(|_| {});
    assert!(stats.hits >= 11, "{stats:?}");
    assert!(
        stats.dropped_nested >= 1 && stats.dropped_nested <= stats.hits,
        "the handler's own clock reads nest, once each: {stats:?}"
    );
}

#[test]
fn the_engine_refuses_to_probe_its_own_trap_path() {
    let engine = engine();
    // `sigaction` is ours (interposed) but not on the trap path: probing it is allowed.
    let own = nonstop_probe::sigaction as *const () as u64;
    let id = engine.arm(ProbeSpec::new(own, empty_plan())).unwrap();
    engine.disarm(id).unwrap();
    let mut refused = 0;
    // The trap path's section lies somewhere in our text; find one of its functions by
    // trying the section bounds exported for tests.
    let (lo, hi) = nonstop_probe::trap_path_range();
    assert!(hi > lo);
    for addr in [lo, (lo + hi) / 2, hi - 1] {
        if let Err(ArmError::Unsupported { reason, .. }) =
            engine.arm(ProbeSpec::new(addr, empty_plan()))
        {
            assert!(reason.contains("trap path"), "{reason}");
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(target(1, 1), expected(1, 1));
}
