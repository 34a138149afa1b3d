//! A trap or fault that is not ours ends the process exactly as it would without nonstop
//! (default action, same signal), when the program has no handler of its own. Own process:
//! forks children that die on purpose.

use nonstop_probe::Engine;

/// Runs `f` in a forked child (no core dump) and returns the signal that killed it.
fn death_signal(f: fn()) -> Option<i32> {
    // SAFETY: the child only runs `f` and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
}

#[test]
fn a_stray_int3_kills_with_sigtrap() {
    Engine::get().unwrap();
    let sig = death_signal(|| {
        // SAFETY: a breakpoint with no handler of the program's: fatal, on purpose.
        unsafe { std::arch::asm!("int3") }
    });
    assert_eq!(sig, Some(libc::SIGTRAP));
}

#[test]
fn a_null_dereference_kills_with_sigsegv() {
    Engine::get().unwrap();
    let sig = death_signal(|| {
        // SAFETY: not safe at all: a null read, on purpose, in a child.
        unsafe { std::ptr::read_volatile(std::hint::black_box(8usize) as *const u64) };
    });
    assert_eq!(sig, Some(libc::SIGSEGV));
}

#[test]
fn a_user_sent_sigtrap_still_kills() {
    Engine::get().unwrap();
    let sig = death_signal(|| {
        // SAFETY: raise is always fine to call.
        unsafe { libc::raise(libc::SIGTRAP) };
    });
    assert_eq!(sig, Some(libc::SIGTRAP));
}
