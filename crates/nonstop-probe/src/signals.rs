//! Signal ownership: our SIGTRAP/SIGSEGV/SIGBUS handlers, chaining to what was installed
//! before, and the interposed `sigaction`/`signal` that keep a handler installed later by
//! the program behind ours instead of in place of ours.
//!
//! Interposition works when the symbols `sigaction` and `signal` of this crate are the
//! ones the program's calls bind to: the crate is linked into the executable (its
//! definitions take precedence over libc's at link time for code in that executable) or
//! the agent is loaded with `LD_PRELOAD` (its exported symbols come before libc's). Calls
//! made from inside other shared libraries of a linked build still reach libc directly;
//! `Engine::signals_owned` re-checks the installation so the agent can notice.
//!
//! Flags: SIGSEGV/SIGBUS use `SA_SIGINFO | SA_ONSTACK | SA_NODEFER` (ONSTACK so a program's
//! stack-overflow handler chained behind ours still runs on the alternate stack; NODEFER so
//! a guarded read may fault inside any of our handlers). SIGTRAP uses `SA_SIGINFO |
//! SA_NODEFER` *without* `SA_ONSTACK`: the capture runs on a preallocated stack of ours, and
//! a fault in a guarded read there makes the kernel put the SIGSEGV frame at the top of the
//! alternate stack (the capture stack is not it); had the SIGTRAP frame been on the
//! alternate stack, that frame would overwrite it. So the trap frame goes on the thread's
//! own stack (below its red zone) and the alternate stack stays free; when the interrupted
//! code was itself on the alternate stack, the handler reads with system calls instead.
//! NODEFER on SIGTRAP because a probed function may run inside another signal handler that
//! interrupted ours: with SIGTRAP blocked the kernel would turn that trap into a kill. The
//! handler detects nesting on the same thread and then only runs the displaced instruction.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::asm;
use crate::arch::context::Context;
use crate::sys;

/// The signals we own, in chain order.
const OWNED: [libc::c_int; 3] = [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS];

/// A sigaction kept for chaining, readable in a handler (a seqlock over atomics).
struct Chained {
    seq: AtomicU32,
    handler: AtomicUsize,
    flags: AtomicU64,
    mask: [AtomicU64; 16],
}

impl Chained {
    const fn new() -> Chained {
        Chained {
            seq: AtomicU32::new(0),
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicU64::new(0),
            mask: [const { AtomicU64::new(0) }; 16],
        }
    }

    fn load(&self) -> libc::sigaction {
        // Bounded: the writer may be the very thread this handler interrupted, which cannot
        // finish until we return; after a while take what is there.
        let mut spins = 0u32;
        loop {
            spins += 1;
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 && spins < 10_000 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: sigaction is plain data; all-zero is a valid value.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = self.handler.load(Ordering::Relaxed);
            act.sa_flags = self.flags.load(Ordering::Relaxed) as libc::c_int;
            let words = mask_words_mut(&mut act.sa_mask);
            for (w, m) in words.iter_mut().zip(self.mask.iter()) {
                *w = m.load(Ordering::Relaxed);
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 || spins >= 10_000 {
                return act;
            }
        }
    }

    fn store(&self, act: &libc::sigaction) {
        // Writers may be signal handlers (sigaction is async-signal-safe), so spin, don't
        // lock; bounded, because the other writer may be the thread this one interrupted.
        let mut spins = 0u32;
        let locked = loop {
            spins += 1;
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break true;
            }
            if spins >= 10_000 {
                // Write under the interrupted writer's odd count; it finishes afterwards.
                break false;
            }
            std::hint::spin_loop();
        };
        std::sync::atomic::fence(Ordering::Release);
        self.handler.store(act.sa_sigaction, Ordering::Relaxed);
        self.flags.store(act.sa_flags as u64, Ordering::Relaxed);
        for (m, w) in self.mask.iter().zip(mask_words(&act.sa_mask).iter()) {
            m.store(*w, Ordering::Relaxed);
        }
        if locked {
            self.seq.fetch_add(1, Ordering::Release);
        }
    }
}

fn mask_words(set: &libc::sigset_t) -> [u64; 16] {
    // SAFETY: glibc's sigset_t is 128 bytes of plain bits, the size of [u64; 16].
    unsafe { std::mem::transmute_copy(set) }
}

fn mask_words_mut(set: &mut libc::sigset_t) -> &mut [u64; 16] {
    const _: () = assert!(std::mem::size_of::<libc::sigset_t>() == 128);
    // SAFETY: same size, u64 alignment is met by sigset_t (an array of c_ulong), plain bits.
    unsafe { &mut *(set as *mut libc::sigset_t).cast::<[u64; 16]>() }
}

static CHAIN: [Chained; 3] = [Chained::new(), Chained::new(), Chained::new()];
static INSTALLED: AtomicBool = AtomicBool::new(false);
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGNAL: AtomicUsize = AtomicUsize::new(0);

fn chain_for(sig: libc::c_int) -> Option<&'static Chained> {
    OWNED
        .iter()
        .position(|&s| s == sig)
        .and_then(|i| CHAIN.get(i))
}

type SigactionFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;
type SignalFn = unsafe extern "C" fn(libc::c_int, libc::sighandler_t) -> libc::sighandler_t;

fn lookup_next(cache: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let f = cache.load(Ordering::Relaxed);
    if f != 0 {
        return f;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; the result is checked.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    cache.store(f, Ordering::Relaxed);
    f
}

/// Calls libc's `sigaction`, bypassing our interposer.
fn real_sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    let f = lookup_next(&REAL_SIGACTION, c"sigaction");
    if f == 0 {
        // No dynamic libc to find (a static build): `libc::sigaction` could be ourselves.
        return -1;
    }
    // SAFETY: `f` is libc's sigaction found by dlsym; pointers are as our caller passed them.
    unsafe { std::mem::transmute::<usize, SigactionFn>(f)(sig, act, old) }
}

/// Installs our handlers once, keeping the previous ones for chaining, and checks that the
/// installation holds (sanitizers may silently refuse it).
pub fn install(
    on_trap: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
    on_fault: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<(), String> {
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let _ = lookup_next(&REAL_SIGNAL, c"signal");
    for (i, &sig) in OWNED.iter().enumerate() {
        // SAFETY: sigaction is plain data; all-zero is a valid value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = if sig == libc::SIGTRAP {
            on_trap as *const () as usize
        } else {
            on_fault as *const () as usize
        };
        act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
        if sig != libc::SIGTRAP {
            act.sa_flags |= libc::SA_ONSTACK;
        }
        // SAFETY: `act.sa_mask` is a valid sigset to clear.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if real_sigaction(sig, &act, &mut old) != 0 {
            return Err(format!(
                "sigaction({sig}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        if let Some(c) = CHAIN.get(i) {
            c.store(&old);
        }
    }
    INSTALLED.store(true, Ordering::Release);
    if !owned() {
        return Err(
            "the signal handlers did not stay installed (a sanitizer or runtime refused them)"
                .into(),
        );
    }
    Ok(())
}

/// Whether our handlers are still the installed ones.
pub fn owned() -> bool {
    OWNED.iter().all(|&sig| {
        // SAFETY: plain data.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        real_sigaction(sig, std::ptr::null(), &mut cur) == 0
            && cur.sa_flags & libc::SA_SIGINFO != 0
            && {
                let h = cur.sa_sigaction;
                h != libc::SIG_DFL && h != libc::SIG_IGN && INSTALLED.load(Ordering::Acquire)
            }
    })
}

/// Whether the handlers are installed (then fault-safe reads may use the guarded copy).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// The SIGSEGV/SIGBUS handler body: resumes a faulting guarded copy, else chains.
#[unsafe(link_section = "nonstop_probe_trap")]
pub fn handle_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: called from our SA_SIGINFO handler with the kernel's ucontext.
    if let Some(mut ctx) = unsafe { Context::new(uc) } {
        let (start, end) = asm::guarded_copy_range();
        let rip = ctx.rip();
        if rip >= start && rip < end {
            ctx.set_rip(asm::guarded_copy_fixup());
            return;
        }
    }
    forward(sig, info, uc);
}

/// Passes a signal that is not ours to the previously installed action, as it would have
/// run without us.
pub fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let Some(chain) = chain_for(sig) else {
        return;
    };
    let act = chain.load();
    // SAFETY: the kernel's siginfo is valid for the handler's duration (or null).
    let code = unsafe { info.as_ref() }.map(|i| i.si_code).unwrap_or(0);
    let from_kernel = code > 0 || code == libc::SI_KERNEL;
    let mut handler = act.sa_sigaction;
    if handler == libc::SIG_IGN {
        if !from_kernel {
            return;
        }
        // The kernel forces synchronous signals through an ignored disposition: fatal.
        handler = libc::SIG_DFL;
    }
    if handler == libc::SIG_DFL {
        default_action(sig, info, from_kernel);
        return;
    }
    // Run the handler with the mask it asked for, as the kernel would have.
    // SAFETY: plain data.
    let mut block: libc::sigset_t = unsafe { std::mem::zeroed() };
    *mask_words_mut(&mut block) = mask_words(&act.sa_mask);
    if act.sa_flags & libc::SA_NODEFER == 0 {
        // SAFETY: `block` is a valid sigset.
        unsafe { libc::sigaddset(&mut block, sig) };
    }
    // SAFETY: plain data.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    sys::sigprocmask(libc::SIG_BLOCK, &block, &mut old);
    if act.sa_flags & libc::SA_RESETHAND != 0 {
        // SAFETY: plain data; a default action.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        chain.store(&dfl);
    }
    if act.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this as an SA_SIGINFO handler.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, uc);
    } else {
        // SAFETY: the program installed this as a plain handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
    let mut ignored = old;
    sys::sigprocmask(libc::SIG_SETMASK, &old, &mut ignored);
}

/// What SIG_DFL would have done: restore the default and let the signal happen again, so
/// the kernel applies its policy (core dump) with the original cause.
fn default_action(sig: libc::c_int, info: *mut libc::siginfo_t, from_kernel: bool) {
    // SAFETY: plain data.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    real_sigaction(sig, &dfl, std::ptr::null_mut());
    INSTALLED.store(false, Ordering::Release);
    if from_kernel && sig != libc::SIGTRAP {
        // Returning re-executes the faulting instruction, which now faults by default.
        return;
    }
    // SAFETY: plain data.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset.
    unsafe { libc::sigaddset(&mut set, sig) };
    let mut old = set;
    sys::sigprocmask(libc::SIG_UNBLOCK, &set, &mut old);
    // SAFETY: the kernel's siginfo (or null, then a plain raise).
    match unsafe { info.as_ref() } {
        Some(i) => {
            let mut i = *i;
            if i.si_code > 0 || i.si_code == libc::SI_KERNEL {
                // rt_tgsigqueueinfo refuses kernel codes from user space; SI_TKILL is allowed.
                i.si_code = libc::SI_TKILL;
            }
            sys::raise_with_info(sig, &i)
        }
        // SAFETY: raise is async-signal-safe.
        None => unsafe {
            libc::raise(sig);
        },
    }
}

/// The interposed `sigaction`: for SIGTRAP/SIGSEGV/SIGBUS once we own them, the program's
/// action goes into our chain and `old` reports the chain, so the program sees what it
/// would have seen without us.
///
/// # Safety
///
/// Same contract as libc's `sigaction`: `act` and `old` are null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    if installed()
        && let Some(chain) = chain_for(sig)
    {
        let prev = chain.load();
        // SAFETY: the caller passes null or a valid sigaction (libc's contract).
        if let Some(new) = unsafe { act.as_ref() } {
            chain.store(new);
        }
        // SAFETY: as above, for `old`.
        if let Some(o) = unsafe { old.as_mut() } {
            *o = prev;
        }
        return 0;
    }
    real_sigaction(sig, act, old)
}

/// The interposed `signal` (BSD semantics, as glibc's): routed through [`sigaction`].
///
/// # Safety
///
/// Same contract as libc's `signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(
    sig: libc::c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    if installed() && chain_for(sig).is_some() {
        // SAFETY: plain data.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: plain data.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid.
        unsafe { sigaction(sig, &act, &mut old) };
        return old.sa_sigaction;
    }
    let f = lookup_next(&REAL_SIGNAL, c"signal");
    if f == 0 {
        return libc::SIG_ERR;
    }
    // SAFETY: `f` is libc's `signal` found by dlsym.
    unsafe { std::mem::transmute::<usize, SignalFn>(f)(sig, handler) }
}
