//! A SIGTRAP handler the program installs after the engine (through the interposed
//! `sigaction`/`signal` this crate exports) still receives the program's own `int3`s, and
//! the probes keep working. Own process: signal dispositions are process-global.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use nonstop_probe::ProbeSpec;

static PROGRAM_TRAPS: AtomicU64 = AtomicU64::new(0);
static PLAIN_TRAPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    assert_eq!(sig, libc::SIGTRAP);
    assert!(!info.is_null());
    PROGRAM_TRAPS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn plain_handler(_: libc::c_int) {
    PLAIN_TRAPS.fetch_add(1, Ordering::SeqCst);
}

fn program_int3() {
    // SAFETY: a breakpoint instruction; the program's handler returns past it.
    unsafe { std::arch::asm!("int3") };
}

#[test]
fn program_handler_installed_later_is_chained_behind_ours() {
    let _s = serial();
    let engine = engine();
    // SAFETY: plain data.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = program_handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: plain data.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; binds to the crate's interposed `sigaction`.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, &act, &mut old) }, 0);
    assert_eq!(
        old.sa_sigaction,
        libc::SIG_DFL,
        "the program sees what it would without us"
    );
    assert!(engine.signals_owned(), "our handler stays installed");

    program_int3();
    program_int3();
    assert_eq!(PROGRAM_TRAPS.load(Ordering::SeqCst), 2);

    let entry = target_instructions()[0].ip();
    let id = engine.arm(ProbeSpec::new(entry, empty_plan())).unwrap();
    assert_eq!(target(1, 2), expected(1, 2));
    program_int3();
    assert_eq!(engine.stats(id).unwrap().hits, 1);
    assert_eq!(
        PROGRAM_TRAPS.load(Ordering::SeqCst),
        3,
        "probe hits do not reach the program"
    );
    engine.disarm(id).unwrap();

    // Reading back the action gives the program's handler.
    // SAFETY: plain data.
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut cur) };
    assert_eq!(cur.sa_sigaction, program_handler as *const () as usize);
}

#[test]
fn signal_without_siginfo_is_chained_too() {
    let _s = serial();
    let engine = engine();
    // SAFETY: installs a plain handler through the interposed `signal`.
    let prev = unsafe { libc::signal(libc::SIGTRAP, plain_handler as *const () as usize) };
    assert_ne!(prev, libc::SIG_ERR);
    program_int3();
    assert_eq!(PLAIN_TRAPS.load(Ordering::SeqCst), 1);
    assert!(engine.signals_owned());
    // SAFETY: puts the previous handler back.
    unsafe { libc::signal(libc::SIGTRAP, prev) };
}
