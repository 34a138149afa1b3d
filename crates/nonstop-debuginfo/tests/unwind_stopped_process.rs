//! Unwinding and symbolizing the stack of a real process stopped at a known place.
//!
//! Each test needs its own process: the fixture `tests/fixtures/stack.rs` (built here with
//! rustc, debug and release) spins in `spin`, inlined into `c`, called by `b`, `a`, `main`;
//! the test attaches with ptrace, takes the registers, and reads the stack through
//! `/proc/PID/mem`.

#[path = "fixtures/stack_stopped.rs"]
mod stack_stopped;

use nonstop_capture::capture::{CapturePlan, CapturedMemory, execute};
use nonstop_debuginfo::{RawFrame, Stacks};
use nonstop_model::Frame;
use stack_stopped::{Build, Stopped, marked_line};

/// The frames every build must start with.
fn expected() -> Vec<(String, u32)> {
    [
        ("stack::spin", "spin"),
        ("stack::c", "c-call"),
        ("stack::b", "b-call"),
        ("stack::a", "a-call"),
        ("stack::main", "main-call"),
    ]
    .iter()
    .map(|(f, l)| (f.to_string(), marked_line(l)))
    .collect()
}

fn names_and_lines(frames: &[Frame]) -> Vec<(String, u32)> {
    frames
        .iter()
        .map(|f| (f.function.clone(), f.line.unwrap_or(0)))
        .collect()
}

fn check_live_stack(build: Build) {
    let stopped = Stopped::start(build);
    let mut stacks = Stacks::new_for_pid(Some(stopped.pid().as_raw() as u32)).unwrap();
    let frames = stacks.frames(&stopped.regs, &stopped.mem, 20);
    let want = expected();
    assert!(
        frames.len() > want.len(),
        "{build:?}: too few frames: {frames:#?}"
    );
    assert_eq!(
        names_and_lines(&frames[..want.len()]),
        want,
        "{build:?}: {frames:#?}"
    );
    for f in &frames[..want.len()] {
        assert!(
            f.file
                .as_deref()
                .is_some_and(|p| p.ends_with("fixtures/stack.rs")),
            "{build:?}: {f:?}"
        );
    }
    // main was called by the standard library's start-up code.
    assert!(
        frames[want.len()..]
            .iter()
            .any(|f| f.function.contains("lang_start")),
        "{build:?}: {frames:#?}"
    );

    // The raw frames: spin and c share one physical frame (inlined); b, a, main are
    // return addresses.
    let raw = stacks.unwinder().unwind(&stopped.regs, &stopped.mem, 20);
    assert_eq!(
        raw[0],
        RawFrame {
            address: stopped.regs.gpr[16],
            is_return_address: false
        }
    );
    assert!(raw[1..].iter().all(|f| f.is_return_address));
    assert!(raw.len() <= 20);
}

#[test]
fn debug_build_stack_starts_with_spin_c_b_a_main_at_their_call_lines() {
    check_live_stack(Build::Debug);
}

#[test]
fn release_build_stack_keeps_the_inlined_frame_and_the_call_lines() {
    check_live_stack(Build::Release);
}

/// Runs the capture path the probe engine runs (a record with `stack_bytes` of stack) and
/// reads it back.
fn capture(stopped: &Stopped, stack_bytes: u32) -> CapturedMemory {
    let plan = CapturePlan {
        stack_bytes,
        max_bytes: 1 << 20,
        ..CapturePlan::default()
    };
    let mut out = vec![0u8; 1 << 20];
    let done = execute(&plan, &stopped.regs, &stopped.mem, &mut out);
    assert!(!done.truncated);
    CapturedMemory::parse(&out[..done.len]).unwrap()
}

#[test]
fn a_captured_record_unwinds_like_live_memory() {
    for build in [Build::Debug, Build::Release] {
        let stopped = Stopped::start(build);
        let mut stacks = Stacks::new_for_pid(Some(stopped.pid().as_raw() as u32)).unwrap();
        let live = stacks.frames(&stopped.regs, &stopped.mem, 20);
        let record = capture(&stopped, 16 * 1024);
        let captured = stacks.frames(&record.regs, &record, 20);
        assert_eq!(captured, live, "{build:?}");
        assert_eq!(
            stacks.unwinder().unwind(&record.regs, &record, 20),
            stacks.unwinder().unwind(&stopped.regs, &stopped.mem, 20),
            "{build:?}"
        );
    }
}

#[test]
fn a_short_stack_copy_ends_the_list_cleanly() {
    for build in [Build::Debug, Build::Release] {
        let stopped = Stopped::start(build);
        let mut stacks = Stacks::new_for_pid(Some(stopped.pid().as_raw() as u32)).unwrap();
        let live = stacks.frames(&stopped.regs, &stopped.mem, 20);
        let record = capture(&stopped, 256);
        let short = stacks.frames(&record.regs, &record, 20);
        assert!(!short.is_empty(), "{build:?}");
        assert!(short.len() < live.len(), "{build:?}: {short:#?}");
        // No garbage: what there is matches the full stack frame for frame.
        assert_eq!(short[..], live[..short.len()], "{build:?}");
    }
}
