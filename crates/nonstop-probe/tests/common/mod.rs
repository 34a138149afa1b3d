//! Shared fixtures: a target function whose instruction kinds are fixed (written in
//! assembly, so codegen cannot change them), decoding helpers, and a drain helper.
#![allow(dead_code)]

use std::sync::Arc;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use nonstop_capture::capture::{CapturePlan, CapturedMemory};
use nonstop_probe::{Engine, ProbeId};

// target(a, b) = (1000 + a) + (b > 10 ? 2b : 0) + 7 + (a == 3 ? 5 : 0) + 100 (via an
// indirect call), with: push reg, rip-relative mov and lea, add, jcc, call rel32,
// call [rip], nop, jmp rel8, pop, ret.
std::arch::global_asm!(
    ".pushsection .text.nonstop_test_target,\"ax\",@progbits",
    ".p2align 4",
    ".globl nonstop_test_target",
    "nonstop_test_target:",
    "    push rbx",
    "    mov rbx, rdi",
    "    mov rax, qword ptr [rip + nonstop_test_data]",
    "    add rax, rbx",
    "    cmp rsi, 10",
    "    jle 1f",
    "    call nonstop_test_helper",
    "1:",
    "    lea rcx, [rip + nonstop_test_data]",
    "    add rax, qword ptr [rcx + 8]",
    "    nop",
    "    cmp rbx, 3",
    "    jne 2f",
    "    add rax, 5",
    "2:",
    "    call qword ptr [rip + nonstop_test_helper_ptr]",
    "    jmp 3f",
    "    ud2",
    "3:",
    "    pop rbx",
    "    ret",
    ".globl nonstop_test_target_end",
    "nonstop_test_target_end:",
    "nonstop_test_helper:",
    "    lea rax, [rax + rsi * 2]",
    "    ret",
    "nonstop_test_helper2:",
    "    add rax, 100",
    "    ret",
    ".popsection",
    ".pushsection .data.nonstop_test_data,\"aw\",@progbits",
    ".p2align 3",
    "nonstop_test_data: .quad 1000, 7",
    "nonstop_test_helper_ptr: .quad nonstop_test_helper2",
    ".popsection",
);

unsafe extern "C" {
    safe fn nonstop_test_target(a: u64, b: u64) -> u64;
    static nonstop_test_target_end: u8;
}

/// Calls the target through `black_box` so calls are not folded.
#[inline(never)]
pub fn target(a: u64, b: u64) -> u64 {
    std::hint::black_box(nonstop_test_target)(std::hint::black_box(a), std::hint::black_box(b))
}

/// What the target computes, in Rust.
pub fn expected(a: u64, b: u64) -> u64 {
    let mut r = 1000u64.wrapping_add(a);
    if (b as i64) > 10 {
        r = r.wrapping_add(b.wrapping_mul(2));
    }
    r = r.wrapping_add(7);
    if a == 3 {
        r = r.wrapping_add(5);
    }
    r.wrapping_add(100)
}

/// The target's instructions, decoded from its live bytes.
pub fn target_instructions() -> Vec<Instruction> {
    let start = nonstop_test_target as *const () as u64;
    let end = &raw const nonstop_test_target_end as u64;
    decode(start, (end - start) as usize)
}

/// Decodes `len` bytes of code at `start`.
pub fn decode(start: u64, len: usize) -> Vec<Instruction> {
    let bytes = nonstop_probe::text_bytes(start, len);
    assert_eq!(bytes.len(), len, "cannot read code at {start:#x}");
    Decoder::with_ip(64, &bytes, start, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

/// The first instruction satisfying `pred`.
pub fn find(
    instrs: &[Instruction],
    what: &str,
    pred: impl Fn(&Instruction) -> bool,
) -> Instruction {
    *instrs
        .iter()
        .find(|i| pred(i))
        .unwrap_or_else(|| panic!("no {what} in the target"))
}

/// Instruction kinds the tests probe, by name.
pub fn interesting(instrs: &[Instruction]) -> Vec<(&'static str, Instruction)> {
    vec![
        (
            "push",
            find(instrs, "push", |i| i.mnemonic() == Mnemonic::Push),
        ),
        (
            "rip-relative mov",
            find(instrs, "mov [rip]", |i| {
                i.mnemonic() == Mnemonic::Mov && i.is_ip_rel_memory_operand()
            }),
        ),
        (
            "add",
            find(instrs, "add", |i| i.mnemonic() == Mnemonic::Add),
        ),
        ("jcc", find(instrs, "jcc", |i| i.is_jcc_short_or_near())),
        ("call rel32", find(instrs, "call", |i| i.is_call_near())),
        (
            "rip-relative lea",
            find(instrs, "lea [rip]", |i| i.mnemonic() == Mnemonic::Lea),
        ),
        (
            "nop",
            find(instrs, "nop", |i| i.mnemonic() == Mnemonic::Nop),
        ),
        (
            "call [rip]",
            find(instrs, "call [rip]", |i| i.is_call_near_indirect()),
        ),
        ("jmp rel8", find(instrs, "jmp", |i| i.is_jmp_short())),
        (
            "pop",
            find(instrs, "pop", |i| i.mnemonic() == Mnemonic::Pop),
        ),
        (
            "ret",
            find(instrs, "ret", |i| i.mnemonic() == Mnemonic::Ret),
        ),
    ]
}

/// An empty capture plan (registers only).
pub fn empty_plan() -> Arc<CapturePlan> {
    Arc::new(CapturePlan {
        max_bytes: 4096,
        ..CapturePlan::default()
    })
}

/// Drains the ring, returning the parsed records of `probe` (others are dropped).
pub fn drain_for(engine: &Engine, probe: ProbeId) -> Vec<CapturedMemory> {
    let mut out = Vec::new();
    engine.drain(|hit| {
        if hit.probe == probe {
            out.push(CapturedMemory::parse(hit.record).expect("record parses"));
        }
    });
    out
}

/// Serializes the tests of one file (they share the process-global engine and ring).
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`], ignoring poisoning from an earlier failed test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine without the global trap budget (tests that are not about the budget must
/// not depend on how much handler time earlier tests in the process used).
pub fn engine() -> &'static Engine {
    Engine::init(nonstop_probe::EngineConfig {
        budget: 1.0,
        ..nonstop_probe::EngineConfig::default()
    })
    .expect("engine starts")
}
