//! Thin wrappers over the Linux system calls the engine uses. Everything here that the trap
//! path calls (`gettid`, `now_ns`, `sigprocmask`, `tgsigqueueinfo`) is async-signal-safe.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// `membarrier` commands (linux/membarrier.h); the libc crate does not name them all.
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// Opens `/proc/self/mem` for reading and writing; writes through it use FOLL_FORCE, so
/// text can be patched without changing page protections.
pub fn open_proc_self_mem() -> io::Result<RawFd> {
    // SAFETY: the path is a NUL-terminated literal; open has no other preconditions.
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Closes a file descriptor, ignoring errors.
pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own; no memory is touched.
    unsafe { libc::close(fd) };
}

/// Writes all of `bytes` at address `addr` of the process through a `/proc/self/mem` fd.
pub fn write_mem(fd: RawFd, addr: u64, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes; the kernel
        // writes into the process's memory at the given offset, which is the caller's intent.
        let n = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (addr + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        done += n as usize;
    }
    Ok(())
}

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// Registers the process for `PRIVATE_EXPEDITED_SYNC_CORE`; false when the kernel lacks it.
pub fn membarrier_register_sync_core() -> bool {
    let supported = membarrier(MEMBARRIER_CMD_QUERY);
    if supported < 0 || supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE as libc::c_long == 0
    {
        return false;
    }
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) == 0
}

/// Makes every running thread of the process execute a core-serializing instruction.
pub fn membarrier_sync_core() -> bool {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) == 0
}

/// Maps `len` bytes of anonymous memory exactly at `addr` without replacing anything.
pub fn mmap_fixed_noreplace(addr: u64, len: usize, prot: libc::c_int) -> Option<u64> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory that
    // anything refers to is affected; the result is checked.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as u64 != addr {
        // Kernels before 4.17 treat the flag as a hint; give the wrong place back.
        // SAFETY: `p` is the mapping just created and nothing refers to it.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    Some(p as u64)
}

/// Maps `len` bytes of anonymous read-write memory anywhere.
pub fn mmap_anon(len: usize) -> Option<u64> {
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as u64)
}

/// Makes `len` bytes at `addr` inaccessible (guard pages).
pub fn protect_none(addr: u64, len: usize) -> bool {
    // SAFETY: only called on pages of a mapping this crate created and does not use.
    unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_NONE) == 0 }
}

/// The calling thread's id (async-signal-safe).
pub fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO; async-signal-safe).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds per TSC tick × 2³², once measured; 0: the TSC is not used.
static TSC_NS: AtomicU64 = AtomicU64::new(0);
/// Ticks after which a hit renews the base (~10 ms once measured): the base's error
/// then stays well under a microsecond.
static RENEW_TICKS: AtomicU64 = AtomicU64::new(0);

/// CLOCK_MONOTONIC and the TSC read together at a recent instant, so that a hit knows the
/// time from one `rdtsc`. A sequence lock: `BASE_SEQ` is odd while one thread rewrites the
/// pair; readers never wait for it (they read the clock themselves instead).
static BASE_SEQ: AtomicU64 = AtomicU64::new(0);
static BASE_NS: AtomicU64 = AtomicU64::new(0);
static BASE_TICKS: AtomicU64 = AtomicU64::new(0);

/// A hit's start: CLOCK_MONOTONIC, and the TSC when it is used.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// CLOCK_MONOTONIC, ns.
    pub ns: u64,
    ticks: u64,
}

fn ticks() -> u64 {
    // SAFETY: rdtsc has no side effects; user mode may run it unless the kernel set
    // CR4.TSD, checked by `measure_tsc` (which would have faulted first).
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// `ticks` in ns at `per_tick` (ns × 2³² per tick).
fn ticks_ns(ticks: u64, per_tick: u64) -> u64 {
    ((ticks as u128 * per_tick as u128) >> 32) as u64
}

/// Measures the TSC's rate against CLOCK_MONOTONIC (~2 ms) when it is invariant (CPUID
/// 0x80000007 EDX bit 8) and the kernel uses it as its clock, so a hit knows the time
/// from one `rdtsc` (~10 ns here) instead of a `clock_gettime` (~25 ns).
pub fn measure_tsc() {
    use std::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0007 || __cpuid(0x8000_0007).edx & (1 << 8) == 0 {
        return;
    }
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if source.map(|s| s.trim() != "tsc").unwrap_or(true) {
        return;
    }
    let (n0, t0) = (now_ns(), ticks());
    while now_ns() - n0 < 2_000_000 {
        std::hint::spin_loop();
    }
    let (n1, t1) = (now_ns(), ticks());
    if t1 > t0 {
        let per_tick = (((n1 - n0) as u128) << 32) / (t1 - t0) as u128;
        let per_tick = per_tick.clamp(1, u64::MAX as u128) as u64;
        // 10 ms in ticks: 10⁷ ns × 2³² / per_tick.
        let renew = ((10_000_000u128 << 32) / per_tick as u128).min(u64::MAX as u128) as u64;
        RENEW_TICKS.store(renew, Ordering::Relaxed);
        renew_base(BASE_SEQ.load(Ordering::Relaxed), n1, t1);
        TSC_NS.store(per_tick, Ordering::Release);
    }
}

/// Publishes (`ns`, `ticks`) as the base, unless another thread is at it or did it since
/// `seq` was read.
fn renew_base(seq: u64, ns: u64, ticks: u64) {
    if seq & 1 != 0
        || BASE_SEQ
            .compare_exchange(seq, seq + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    fence(Ordering::Release);
    BASE_NS.store(ns, Ordering::Relaxed);
    BASE_TICKS.store(ticks, Ordering::Relaxed);
    BASE_SEQ.store(seq + 2, Ordering::Release);
}

impl Start {
    /// Now: from the TSC and the base when both are good, else from the clock (which then
    /// renews the base, at most every ~10 ms).
    pub fn now() -> Start {
        let per_tick = TSC_NS.load(Ordering::Acquire);
        if per_tick == 0 {
            return Start {
                ns: now_ns(),
                ticks: 0,
            };
        }
        let t = ticks();
        let seq = BASE_SEQ.load(Ordering::Acquire);
        let (base_ns, base_ticks) = (
            BASE_NS.load(Ordering::Relaxed),
            BASE_TICKS.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        let since = t.wrapping_sub(base_ticks);
        if seq & 1 == 0
            && BASE_SEQ.load(Ordering::Relaxed) == seq
            && t >= base_ticks
            && since < RENEW_TICKS.load(Ordering::Relaxed)
        {
            return Start {
                ns: base_ns + ticks_ns(since, per_tick),
                ticks: t,
            };
        }
        let (ns, t) = (now_ns(), ticks());
        renew_base(seq, ns, t);
        Start { ns, ticks: t }
    }

    /// CLOCK_MONOTONIC now, from the TSC ticks since the start when measured (a hit's
    /// microseconds drift by well under a nanosecond), else read again.
    pub fn now_ns(&self) -> u64 {
        let per_tick = TSC_NS.load(Ordering::Relaxed);
        if per_tick == 0 || self.ticks == 0 {
            return now_ns();
        }
        self.ns + ticks_ns(ticks().saturating_sub(self.ticks), per_tick)
    }
}

/// Reads `buf.len()` bytes at `addr` of this process with `process_vm_readv`: slow (one
/// system call) but never raises a signal. True when every byte was read.
pub fn process_vm_read(addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes our own writable buffer; the kernel checks `remote`.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n >= 0 && n as usize == buf.len()
}

/// `rt_sigprocmask(how, set, old)` without libc's wrapper (async-signal-safe).
pub fn sigprocmask(how: libc::c_int, set: &libc::sigset_t, old: &mut libc::sigset_t) {
    // SAFETY: both pointers are valid sigsets; the kernel reads 8 bytes (NSIG/8) of each.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            set as *const libc::sigset_t,
            old as *mut libc::sigset_t,
            8usize,
        )
    };
}

/// Queues `sig` with `info` to the calling thread (async-signal-safe).
pub fn raise_with_info(sig: libc::c_int, info: &libc::siginfo_t) {
    // SAFETY: `info` is a valid siginfo; getpid/gettid name this very thread.
    unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            gettid() as libc::pid_t,
            sig,
            info as *const libc::siginfo_t,
        )
    };
}

/// Opens a file for writing at `O_RDWR` from a signal-safe context (after `fork`).
pub fn open_proc_self_mem_raw() -> RawFd {
    // SAFETY: `open` is async-signal-safe; the path is a NUL-terminated literal.
    unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
}

/// `pwrite` of one byte, async-signal-safe (used in the fork child hook).
pub fn pwrite_byte(fd: RawFd, addr: u64, byte: u8) -> bool {
    // SAFETY: one readable byte on our stack.
    unsafe { libc::pwrite(fd, (&byte as *const u8).cast(), 1, addr as libc::off_t) == 1 }
}

/// A non-blocking, close-on-exec eventfd: the trap path wakes the agent thread through it.
pub fn eventfd() -> Option<RawFd> {
    // SAFETY: eventfd takes plain integers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// Adds one to an eventfd (one `write`, async-signal-safe).
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: 8 readable bytes on our stack; a full counter (EAGAIN) means already signalled.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Waits up to `timeout_ms` for an eventfd to be signalled, then clears it; true when it
/// had been signalled.
pub fn eventfd_wait(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; poll writes only its `revents`.
    unsafe { libc::poll(&mut p, 1, timeout_ms) };
    let mut buf: u64 = 0;
    // SAFETY: 8 writable bytes on our stack; the fd is non-blocking.
    let n = unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
    n == 8 && buf > 0
}

/// Maps one page of anonymous memory holding `code`, readable and executable.
pub fn map_code_page(code: &[u8]) -> Option<u64> {
    let page = mmap_anon(4096)?;
    if code.len() > 4096 {
        return None;
    }
    // SAFETY: `page` is a fresh writable mapping of 4096 bytes owned by us alone.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
    // SAFETY: the same fresh page; nothing else refers to it.
    let ok = unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
        ) == 0
    };
    ok.then_some(page)
}

/// Whether the calling thread blocks SIGSEGV or SIGBUS: one system call,
/// async-signal-safe; `true` when it cannot be asked (the caller then avoids faults).
pub fn fault_signals_blocked() -> bool {
    let mut old = [0u64; 1];
    // SAFETY: a null new set only reads the mask into `old`, 8 bytes (NSIG/8).
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            old.as_mut_ptr(),
            8usize,
        )
    };
    if r != 0 {
        return true;
    }
    let bit = |sig: libc::c_int| old[0] & (1u64 << (sig - 1)) != 0;
    bit(libc::SIGSEGV) || bit(libc::SIGBUS)
}

/// The calling thread's alternate signal stack as the kernel has it.
pub struct AltStack {
    /// Its range `[lo, hi)`; empty when disabled.
    pub lo: u64,
    pub hi: u64,
    /// The thread runs on it now.
    pub on: bool,
}

/// The calling thread's alternate signal stack (one system call, async-signal-safe);
/// `None` when it cannot be asked.
pub fn alternate_stack() -> Option<AltStack> {
    let mut ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: a null new stack only reads the current one into `ss`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sigaltstack,
            std::ptr::null::<libc::stack_t>(),
            &mut ss,
        )
    };
    if r != 0 {
        return None;
    }
    let disabled = ss.ss_flags & libc::SS_DISABLE != 0;
    let lo = if disabled { 0 } else { ss.ss_sp as u64 };
    let hi = if disabled {
        0
    } else {
        lo.saturating_add(ss.ss_size as u64)
    };
    Some(AltStack {
        lo,
        hi,
        on: ss.ss_flags & libc::SS_ONSTACK != 0,
    })
}

/// One thread of this process as `/proc/self/task` shows it.
pub struct ThreadState {
    /// Its id.
    pub tid: u32,
    /// Times it was switched onto a CPU (`schedstat`'s third field).
    pub arrivals: u64,
    /// Times it was switched off one (`status`: voluntary and involuntary context switches).
    /// Read after `arrivals`, so a thread on a CPU when both are read has more arrivals.
    pub departures: u64,
    /// Runnable or running (`R`).
    pub runnable: bool,
    /// When it is blocked outside a system call (a page fault, a stop): its user program
    /// counter (`syscall` shows `-1 SP PC`).
    pub paused_pc: Option<u64>,
}

/// This process's threads. `None` when they cannot be listed.
pub fn thread_states() -> Option<Vec<ThreadState>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // One that exited meanwhile is left out.
        if let Some(t) = thread_state(tid)? {
            out.push(t);
        }
    }
    Some(out)
}

/// One thread of this process: `Some(None)` when it has exited, `None` when what `/proc`
/// shows of it cannot be read or understood.
pub fn thread_state(tid: u32) -> Option<Option<ThreadState>> {
    let dir = std::path::PathBuf::from(format!("/proc/self/task/{tid}"));
    let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => Some(Some(text)),
        // Gone: the directory went with the thread (ESRCH while it is being reaped).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Some(None)
        }
        Err(_) => None,
    };
    let (Some(sched), Some(status), Some(stat)) =
        (read("schedstat")?, read("status")?, read("stat")?)
    else {
        return Some(None);
    };
    let arrivals = sched.split_whitespace().nth(2)?.parse().ok()?;
    let departures = ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
        .iter()
        .map(|key| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum::<Option<u64>>()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    let runnable = state == "R";
    let mut paused_pc = None;
    if !runnable && let Ok(text) = std::fs::read_to_string(dir.join("syscall")) {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.first() == Some(&"-1") {
            let pc = fields.last()?.trim_start_matches("0x");
            paused_pc = Some(u64::from_str_radix(pc, 16).ok()?);
        }
    }
    Some(Some(ThreadState {
        tid,
        arrivals,
        departures,
        runnable,
        paused_pc,
    }))
}
