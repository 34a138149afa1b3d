//! Small assembly routines: the guarded copy (fault-safe reads and writes), a call on
//! another stack (the capture runs on a big preallocated stack, not the signal stack), and
//! the save and restore of the vector registers around a fast-path hit.

use std::arch::global_asm;

// guarded_copy(dst rdi, src rsi, len rdx) -> eax 0 when copied, 1 when a byte faulted.
// The SIGSEGV/SIGBUS handler recognises a fault whose RIP lies in [copy, fault) and
// resumes at `fault`. The kernel clears DF before running a handler and the ABI keeps it
// clear at calls, so `rep movsb` copies forwards. Eight bytes, the common read of a
// variable or a pointer, are one load and one store (`rep movsb` starts slowly).
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
    "    cmp rdx, 8",
    "    jne 2f",
    "    mov rax, qword ptr [rsi]",
    "    mov qword ptr [rdi], rax",
    "    xor eax, eax",
    "    ret",
    "2:",
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
    // Vector state around a fast-path hit (see `fastpath::VectorState`): save(area rdi)
    // and restore(area rdi) of xmm/ymm/zmm 0..n at `area + stride * k`, then the mask
    // registers, then MXCSR. They touch no other register and no flag. The AVX and AVX-512
    // saves end with `vzeroupper`: the hit's Rust code is legacy SSE, and each of its
    // instructions would otherwise merge with the dirty upper halves the program left (a
    // fast log hit took 340 ns instead of 196 here); the restore loads the full widths.
    ".p2align 4",
    ".globl nonstop_probe_vec_save_sse",
    ".hidden nonstop_probe_vec_save_sse",
    "nonstop_probe_vec_save_sse:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    movups xmmword ptr [rdi + 16*\\i], xmm\\i",
    ".endr",
    "    stmxcsr dword ptr [rdi + 256]",
    "    ret",
    ".globl nonstop_probe_vec_restore_sse",
    ".hidden nonstop_probe_vec_restore_sse",
    "nonstop_probe_vec_restore_sse:",
    "    ldmxcsr dword ptr [rdi + 256]",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    movups xmm\\i, xmmword ptr [rdi + 16*\\i]",
    ".endr",
    "    ret",
    ".p2align 4",
    ".globl nonstop_probe_vec_save_avx",
    ".hidden nonstop_probe_vec_save_avx",
    "nonstop_probe_vec_save_avx:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    vmovdqu ymmword ptr [rdi + 32*\\i], ymm\\i",
    ".endr",
    "    vstmxcsr dword ptr [rdi + 512]",
    "    vzeroupper",
    "    ret",
    ".globl nonstop_probe_vec_restore_avx",
    ".hidden nonstop_probe_vec_restore_avx",
    "nonstop_probe_vec_restore_avx:",
    "    vldmxcsr dword ptr [rdi + 512]",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    vmovdqu ymm\\i, ymmword ptr [rdi + 32*\\i]",
    ".endr",
    "    ret",
    ".p2align 4",
    ".globl nonstop_probe_vec_save_avx512",
    ".hidden nonstop_probe_vec_save_avx512",
    "nonstop_probe_vec_save_avx512:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqu64 zmmword ptr [rdi + 64*\\i], zmm\\i",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7",
    "    kmovw word ptr [rdi + 2048 + 8*\\i], k\\i",
    ".endr",
    "    vstmxcsr dword ptr [rdi + 2112]",
    "    vzeroupper",
    "    ret",
    ".globl nonstop_probe_vec_restore_avx512",
    ".hidden nonstop_probe_vec_restore_avx512",
    "nonstop_probe_vec_restore_avx512:",
    "    vldmxcsr dword ptr [rdi + 2112]",
    ".irp i,0,1,2,3,4,5,6,7",
    "    kmovw k\\i, word ptr [rdi + 2048 + 8*\\i]",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqu64 zmm\\i, zmmword ptr [rdi + 64*\\i]",
    ".endr",
    "    ret",
    // With AVX512BW the mask registers are 64 bits wide.
    ".p2align 4",
    ".globl nonstop_probe_vec_save_avx512bw",
    ".hidden nonstop_probe_vec_save_avx512bw",
    "nonstop_probe_vec_save_avx512bw:",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqu64 zmmword ptr [rdi + 64*\\i], zmm\\i",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7",
    "    kmovq qword ptr [rdi + 2048 + 8*\\i], k\\i",
    ".endr",
    "    vstmxcsr dword ptr [rdi + 2112]",
    "    vzeroupper",
    "    ret",
    ".globl nonstop_probe_vec_restore_avx512bw",
    ".hidden nonstop_probe_vec_restore_avx512bw",
    "nonstop_probe_vec_restore_avx512bw:",
    "    vldmxcsr dword ptr [rdi + 2112]",
    ".irp i,0,1,2,3,4,5,6,7",
    "    kmovq k\\i, qword ptr [rdi + 2048 + 8*\\i]",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqu64 zmm\\i, zmmword ptr [rdi + 64*\\i]",
    ".endr",
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
    fn nonstop_probe_vec_save_sse();
    fn nonstop_probe_vec_restore_sse();
    fn nonstop_probe_vec_save_avx();
    fn nonstop_probe_vec_restore_avx();
    fn nonstop_probe_vec_save_avx512();
    fn nonstop_probe_vec_restore_avx512();
    fn nonstop_probe_vec_save_avx512bw();
    fn nonstop_probe_vec_restore_avx512bw();
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

/// The addresses of the routines that save and restore `state`'s registers, called by
/// the trampolines with the area in `rdi`.
pub fn vector_routines(state: super::fastpath::VectorState) -> (u64, u64) {
    use super::fastpath::VectorState::*;
    let (save, restore): (unsafe extern "C" fn(), unsafe extern "C" fn()) = match state {
        Sse => (nonstop_probe_vec_save_sse, nonstop_probe_vec_restore_sse),
        Avx => (nonstop_probe_vec_save_avx, nonstop_probe_vec_restore_avx),
        Avx512 { bw: false } => (
            nonstop_probe_vec_save_avx512,
            nonstop_probe_vec_restore_avx512,
        ),
        Avx512 { bw: true } => (
            nonstop_probe_vec_save_avx512bw,
            nonstop_probe_vec_restore_avx512bw,
        ),
    };
    (save as *const () as u64, restore as *const () as u64)
}
