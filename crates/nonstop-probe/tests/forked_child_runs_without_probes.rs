//! A forked child inherits the armed `int3`s but not the agent: the engine's
//! `pthread_atfork` hook restores the original bytes in the child. Own process: forks.

mod common;

use common::*;
use nonstop_probe::{ArmError, ProbeSpec};

#[test]
fn child_has_original_bytes_and_parent_keeps_its_probe() {
    let engine = engine();
    let entry = target_instructions()[0].ip();
    let original = nonstop_probe::text_bytes(entry, 4);
    let id = engine.arm(ProbeSpec::new(entry, empty_plan())).unwrap();
    // SAFETY: the child only calls async-signal-safe-enough code and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = nonstop_probe::text_bytes(entry, 4) == original
            && target(5, 20) == expected(5, 20)
            && matches!(
                engine.arm(ProbeSpec::new(entry, empty_plan())),
                Err(ArmError::Forked)
            );
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
        nonstop_probe::text_bytes(entry, 1),
        vec![0xcc],
        "parent still armed"
    );
    assert_eq!(target(5, 20), expected(5, 20));
    assert_eq!(engine.stats(id).unwrap().hits, 1);
    engine.disarm(id).unwrap();
    assert_eq!(nonstop_probe::text_bytes(entry, 4), original);
}
