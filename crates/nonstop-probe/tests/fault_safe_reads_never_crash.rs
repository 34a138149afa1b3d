//! Reads of bad pointers return `Err(Fault)` and never crash, and faults outside the
//! guarded copy still reach the program's own SIGSEGV handler. Own process: installs
//! process-global signal handlers.

use std::sync::atomic::{AtomicU64, Ordering};

use nonstop_capture::capture::{Memory, ReadError};
use nonstop_probe::{SafeMemory, read_memory};

#[test]
fn bad_addresses_fault_and_good_ones_read() {
    let mut buf = [0u8; 8];
    assert_eq!(read_memory(0x10, &mut buf), Err(ReadError::Fault));
    assert_eq!(read_memory(0, &mut buf), Err(ReadError::Fault));
    assert_eq!(
        read_memory(0xffff_8000_0000_0000, &mut buf),
        Err(ReadError::Fault)
    );
    assert_eq!(
        read_memory(0x0000_9000_0000_0000, &mut buf),
        Err(ReadError::Fault),
        "non-canonical"
    );
    assert_eq!(
        read_memory(u64::MAX - 3, &mut buf),
        Err(ReadError::Fault),
        "wraps"
    );

    // An unmapped page, and a read that runs off the end of a mapped one.
    // SAFETY: a fresh anonymous mapping of two pages; the second is unmapped again.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    // SAFETY: unmapping the second page of our own mapping.
    unsafe { libc::munmap((page + 4096) as *mut libc::c_void, 4096) };
    assert_eq!(read_memory(page + 4096, &mut buf), Err(ReadError::Fault));
    assert_eq!(read_memory(page + 4092, &mut buf), Err(ReadError::Fault));
    assert_eq!(read_memory(page + 4088, &mut buf), Ok(()));

    let value = 0x1122_3344_5566_7788u64;
    assert_eq!(
        SafeMemory.read(&value as *const u64 as u64, &mut buf),
        Ok(())
    );
    assert_eq!(u64::from_le_bytes(buf), value);
    // A PROT_NONE page faults too.
    // SAFETY: our own page.
    unsafe { libc::mprotect(page as *mut libc::c_void, 4096, libc::PROT_NONE) };
    assert_eq!(read_memory(page, &mut buf), Err(ReadError::Fault));
}

static PROGRAM_SEGV: AtomicU64 = AtomicU64::new(0);
static FIXUP: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    PROGRAM_SEGV.fetch_add(1, Ordering::SeqCst);
    // Skip the faulting load: the fixture's load is at a known label; resume after it.
    // SAFETY: the kernel's ucontext for this handler.
    let uc = unsafe { &mut *(uc as *mut libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] = FIXUP.load(Ordering::SeqCst) as i64;
}

std::arch::global_asm!(
    ".pushsection .text.nonstop_test_fault,\"ax\",@progbits",
    ".globl nonstop_test_load",
    "nonstop_test_load:",
    "    mov rax, qword ptr [rdi]",
    ".globl nonstop_test_load_after",
    "nonstop_test_load_after:",
    "    ret",
    ".popsection",
);
unsafe extern "C" {
    fn nonstop_test_load(p: u64) -> u64;
    static nonstop_test_load_after: u8;
}

#[test]
fn faults_outside_the_guarded_copy_reach_the_program_handler() {
    let mut buf = [0u8; 1];
    assert_eq!(read_memory(0x10, &mut buf), Err(ReadError::Fault)); // engine installed
    FIXUP.store(&raw const nonstop_test_load_after as u64, Ordering::SeqCst);
    // SAFETY: plain data; installing a handler (through the interposed sigaction).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = program_handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: valid pointers.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::sigaction(libc::SIGSEGV, &act, &mut old) }, 0);
    // SAFETY: the load faults; the program's handler skips it.
    unsafe { nonstop_test_load(0x20) };
    assert_eq!(PROGRAM_SEGV.load(Ordering::SeqCst), 1);
    // Our guarded reads still work, and do not reach the program's handler.
    assert_eq!(read_memory(0x10, &mut buf), Err(ReadError::Fault));
    assert_eq!(PROGRAM_SEGV.load(Ordering::SeqCst), 1);
    // SAFETY: restoring the previous action.
    unsafe { libc::sigaction(libc::SIGSEGV, &old, std::ptr::null_mut()) };
}
