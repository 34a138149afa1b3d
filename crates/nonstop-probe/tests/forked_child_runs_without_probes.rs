//! A forked child inherits the armed probes (`int3`s, or the fast path's `jmp`s into
//! trampolines) but not the agent: the engine's `pthread_atfork` hook restores the original
//! bytes in the child. Own process: forks; the engine runs with the fast path on, and a probe
//! takes it when given its function's bounds.

mod common;

use common::*;
use nonstop_probe::{ArmError, Engine, EngineConfig, FastPath, ProbeSpec};

fn engine() -> &'static Engine {
    Engine::init(EngineConfig {
        budget: 1.0,
        fast_path: true,
        ..EngineConfig::default()
    })
    .expect("engine starts")
}

/// A probe at the target's entry, through `int3` or (`fast`) the fast path.
fn spec(fast: bool) -> ProbeSpec {
    let instrs = target_instructions();
    let entry = instrs[0].ip();
    let mut s = ProbeSpec::new(entry, empty_plan());
    if fast {
        s.function = Some(entry..instrs.last().unwrap().next_ip());
    }
    s
}

fn child_has_original_bytes_and_parent_keeps_its_probe(fast: bool) {
    let _s = serial();
    let engine = engine();
    let entry = target_instructions()[0].ip();
    // The whole span a jmp covers, and more.
    let original = nonstop_probe::text_bytes(entry, 16);
    let id = engine.arm(spec(fast)).unwrap();
    let armed = nonstop_probe::text_bytes(entry, 16);
    let on_fast_path = matches!(engine.stats(id).unwrap().fast_path, FastPath::Yes { .. });
    assert_eq!(
        on_fast_path,
        fast,
        "{}",
        engine.stats(id).unwrap().fast_path
    );
    assert_eq!(armed[0], if fast { 0xe9 } else { 0xcc });
    // SAFETY: the child only calls async-signal-safe-enough code and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = nonstop_probe::text_bytes(entry, 16) == original
            && target(5, 20) == expected(5, 20)
            && target(3, 2) == expected(3, 2)
            && matches!(engine.arm(spec(fast)), Err(ArmError::Forked));
        // SAFETY: leaves the child without running the parent's atexit/test machinery.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child saw probes or wrong bytes"
    );
    assert_eq!(
        nonstop_probe::text_bytes(entry, 16),
        armed,
        "parent still armed"
    );
    assert_eq!(target(5, 20), expected(5, 20));
    assert_eq!(engine.stats(id).unwrap().hits, 1);
    engine.disarm(id).unwrap();
    assert_eq!(nonstop_probe::text_bytes(entry, 16), original);
}

#[test]
fn child_has_original_bytes_and_parent_keeps_its_int3() {
    child_has_original_bytes_and_parent_keeps_its_probe(false);
}

#[test]
fn child_has_original_bytes_and_parent_keeps_its_fast_path_jmp() {
    child_has_original_bytes_and_parent_keeps_its_probe(true);
}
