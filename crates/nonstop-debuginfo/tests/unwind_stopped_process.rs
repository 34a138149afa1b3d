//! Unwinding and symbolizing the stack of a real process stopped at a known place.
//!
//! Each test needs its own process: the fixture `tests/fixtures/stack.rs` (built here with
//! rustc, debug and release) spins in `spin`, inlined into `c`, called by `b`, `a`, `main`;
//! the test attaches with ptrace, takes the registers, and reads the stack through
//! `/proc/PID/mem`.

use nix::sys::ptrace;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use nonstop_debuginfo::{RawFrame, Stacks};
use nonstop_model::Frame;
use nonstop_model::capture::{CapturePlan, CapturedMemory, Memory, ReadError, Registers, execute};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stack.rs");

#[derive(Clone, Copy, Debug)]
enum Build {
    Debug,
    Release,
}

fn fixture(build: Build) -> &'static Path {
    static DEBUG: OnceLock<PathBuf> = OnceLock::new();
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name, flags): (_, _, &[&str]) = match build {
        Build::Debug => (&DEBUG, "stack-debug", &["-C", "debuginfo=2"]),
        Build::Release => (
            &RELEASE,
            "stack-release",
            &["-C", "opt-level=2", "-C", "debuginfo=2"],
        ),
    };
    cell.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = Command::new(rustc)
            .args(flags)
            .args(["--edition", "2024", "--crate-name", "stack", "-o"])
            .arg(&out)
            .arg(FIXTURE)
            .status()
            .expect("run rustc");
        assert!(status.success(), "building the fixture failed");
        out
    })
}

/// The line of the fixture marked `// @line NAME`.
fn marked_line(name: &str) -> u32 {
    let source = std::fs::read_to_string(FIXTURE).unwrap();
    let marker = format!("// @line {name}");
    let index = source
        .lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .unwrap_or_else(|| panic!("no {marker} in the fixture"));
    index as u32 + 1
}

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

/// Another process's memory, read through `/proc/PID/mem` (we are its tracer).
struct ProcMem(File);

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.0
            .read_exact_at(buf, addr)
            .map_err(|_| ReadError::Fault)
    }
}

/// A child process, killed on drop (also when a test fails).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The fixture stopped under ptrace inside `spin`.
struct Stopped {
    child: KillOnDrop,
    regs: Registers,
    mem: ProcMem,
}

impl Stopped {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.0.id() as i32)
    }

    fn start(build: Build) -> Stopped {
        let mut child = KillOnDrop(
            Command::new(fixture(build))
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the fixture"),
        );
        let mut line = String::new();
        let stdout = child.0.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let pid = Pid::from_raw(child.0.id() as i32);
        // "ready" is printed just before the loop: give it a moment to get there, and
        // check, stopping it again if it was not there yet.
        for attempt in 0.. {
            std::thread::sleep(Duration::from_millis(20));
            ptrace::attach(pid).expect("ptrace attach");
            waitpid(pid, None).expect("wait for the stop");
            let r = ptrace::getregs(pid).expect("getregs");
            let regs = Registers {
                gpr: [
                    r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10,
                    r.r11, r.r12, r.r13, r.r14, r.r15, r.rip,
                ],
                ..Registers::default()
            };
            // The loop is a 2-byte `jmp` to itself: the same rip twice means it is there.
            let mem = ProcMem(File::open(format!("/proc/{pid}/mem")).unwrap());
            let mut insn = [0u8; 2];
            let spinning = mem.read(r.rip, &mut insn).is_ok() && insn == [0xeb, 0xfe];
            if spinning || attempt == 50 {
                return Stopped { child, regs, mem };
            }
            ptrace::detach(pid, None).expect("detach");
        }
        unreachable!()
    }
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
