//! Unwinding and symbolizing 20 frames from a captured record (16 KiB of stack), with
//! warm caches: what the agent thread pays per snapshot hit.
//!
//! The record comes from the release fixture `tests/fixtures/stack.rs`, stopped under
//! ptrace in its spin loop (21 frames deep).

#[path = "../tests/fixtures/stack_stopped.rs"]
mod stack_stopped;

use criterion::{Criterion, criterion_group, criterion_main};
use nonstop_capture::capture::{CapturePlan, CapturedMemory, execute};
use nonstop_debuginfo::{DEFAULT_MAX_FRAMES, Stacks};
use stack_stopped::{Build, Stopped};
use std::hint::black_box;

fn unwind(c: &mut Criterion) {
    let stopped = Stopped::start(Build::Release);
    let mut stacks = Stacks::new_for_pid(Some(stopped.pid().as_raw() as u32)).unwrap();
    let plan = CapturePlan {
        stack_bytes: 16 * 1024,
        max_bytes: 1 << 20,
        ..CapturePlan::default()
    };
    let mut out = vec![0u8; 1 << 20];
    let done = execute(&plan, &stopped.regs, &stopped.mem, &mut out);
    let record = CapturedMemory::parse(&out[..done.len]).unwrap();
    drop(stopped);

    // Warm up: loads every module's debug info and addr2line's units.
    let frames = stacks.frames(&record.regs, &record, DEFAULT_MAX_FRAMES);
    assert_eq!(frames.len(), DEFAULT_MAX_FRAMES);

    c.bench_function("unwind 20 frames (CFI)", |b| {
        b.iter(|| {
            stacks
                .unwinder()
                .unwind(black_box(&record.regs), &record, DEFAULT_MAX_FRAMES)
        })
    });
    c.bench_function("unwind + symbolize 20 frames", |b| {
        b.iter(|| stacks.frames(black_box(&record.regs), &record, DEFAULT_MAX_FRAMES))
    });
}

criterion_group!(benches, unwind);
criterion_main!(benches);
