//! Two small assembly routines: the guarded copy (fault-safe reads and writes) and a call
//! on another stack (the capture runs on a big preallocated stack, not the signal stack).

use std::arch::global_asm;

// guarded_copy(dst rdi, src rsi, len rdx) -> eax 0 when copied, 1 when a byte faulted.
// The SIGSEGV/SIGBUS handler recognises a fault whose RIP lies in [copy, fault) and
// resumes at `fault`. The kernel clears DF before running a handler and the ABI keeps it
// clear at calls, so `rep movsb` copies forwards.
//
// call_on_stack(arg rdi, f rsi, stack_top rdx): calls f(arg) with rsp = stack_top
// (16-byte aligned), then returns on the original stack.
global_asm!(
    ".pushsection .text.nonstop_probe_asm,\"ax\",@progbits",
    ".p2align 4",
    ".globl nonstop_probe_guarded_copy",
    ".hidden nonstop_probe_guarded_copy",
    ".globl nonstop_probe_guarded_copy_fault",
    ".hidden nonstop_probe_guarded_copy_fault",
    "nonstop_probe_guarded_copy:",
    "    mov rcx, rdx",
    "    rep movsb",
    "    xor eax, eax",
    "    ret",
    "nonstop_probe_guarded_copy_fault:",
    "    mov eax, 1",
    "    ret",
    ".p2align 4",
    ".globl nonstop_probe_call_on_stack",
    ".hidden nonstop_probe_call_on_stack",
    "nonstop_probe_call_on_stack:",
    "    push rbp",
    "    mov rbp, rsp",
    "    mov rsp, rdx",
    "    call rsi",
    "    mov rsp, rbp",
    "    pop rbp",
    "    ret",
    ".globl nonstop_probe_asm_end",
    ".hidden nonstop_probe_asm_end",
    "nonstop_probe_asm_end:",
    ".popsection",
);

unsafe extern "C" {
    fn nonstop_probe_guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> u32;
    static nonstop_probe_guarded_copy_fault: u8;
    static nonstop_probe_asm_end: u8;
    static __start_nonstop_probe_trap: u8;
    static __stop_nonstop_probe_trap: u8;
    fn nonstop_probe_call_on_stack(arg: *mut u8, f: unsafe extern "C" fn(*mut u8), stack_top: u64);
}

/// Copies `len` bytes from `src` to `dst`; false when either side faulted (then `dst` is
/// partly written). Async-signal-safe; needs the fault handler installed to survive faults.
///
/// # Safety
///
/// `dst..dst+len` must not overlap memory that Rust code holds a reference to, other than
/// a `&mut` the caller owns. Faulting addresses are fine: that is the point.
pub unsafe fn guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    // SAFETY: the routine only reads `src..src+len` and writes `dst..dst+len`; a fault is
    // turned into a return value by the SIGSEGV/SIGBUS handler; the caller vouches for dst.
    unsafe { nonstop_probe_guarded_copy(dst, src, len) == 0 }
}

/// The address range `[start, fault)` of instructions that may fault inside the guarded copy.
pub fn guarded_copy_range() -> (u64, u64) {
    let start = nonstop_probe_guarded_copy as *const () as u64;
    let fault = &raw const nonstop_probe_guarded_copy_fault as u64;
    (start, fault)
}

/// Code ranges that must never be probed: this module's routines and the functions of the
/// trap path before its nesting guard (placed in the `nonstop_probe_trap` section).
pub fn own_code_ranges() -> [(u64, u64); 2] {
    let asm_start = nonstop_probe_guarded_copy as *const () as u64;
    let asm_end = &raw const nonstop_probe_asm_end as u64;
    let trap_start = &raw const __start_nonstop_probe_trap as u64;
    let trap_end = &raw const __stop_nonstop_probe_trap as u64;
    [(asm_start, asm_end), (trap_start, trap_end)]
}

/// Where a faulting guarded copy resumes.
pub fn guarded_copy_fixup() -> u64 {
    &raw const nonstop_probe_guarded_copy_fault as u64
}

/// Calls `f(arg)` with the stack pointer at `stack_top`.
///
/// # Safety
///
/// `stack_top` must be the 16-byte-aligned top of a writable stack large enough for `f`,
/// used by no other thread meanwhile; `f` must not unwind.
pub unsafe fn call_on_stack(arg: *mut u8, f: unsafe extern "C" fn(*mut u8), stack_top: u64) {
    // SAFETY: per the contract above; the routine restores rsp and rbp before returning.
    unsafe { nonstop_probe_call_on_stack(arg, f, stack_top) }
}
