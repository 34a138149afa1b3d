//! Probes on every kind of instruction leave results unchanged, count hits and capture the
//! right registers. Own process: the probe engine and its signal handlers are process-global.

mod common;

use std::sync::Arc;

use common::*;
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use nonstop_capture::capture::CapturePlan;
use nonstop_probe::{ArmError, ProbeSpec};

const INPUTS: [(u64, u64); 6] = [
    (0, 0),
    (3, 11),
    (3, 9),
    (u64::MAX, 12),
    (42, 1 << 40),
    (7, u64::MAX),
];

fn run_all() -> Vec<u64> {
    INPUTS.iter().map(|&(a, b)| target(a, b)).collect()
}

#[test]
fn each_instruction_kind_runs_the_same_with_a_probe() {
    let _s = serial();
    let engine = engine();
    let want: Vec<u64> = INPUTS.iter().map(|&(a, b)| expected(a, b)).collect();
    assert_eq!(run_all(), want, "the fixture itself");
    let instrs = target_instructions();
    for (kind, ins) in interesting(&instrs) {
        let before = nonstop_probe::text_bytes(ins.ip(), ins.len());
        let id = engine
            .arm(ProbeSpec::new(ins.ip(), empty_plan()))
            .unwrap_or_else(|e| panic!("arming {kind} ({ins}): {e}"));
        assert_eq!(nonstop_probe::text_bytes(ins.ip(), 1), vec![0xcc]);
        assert_eq!(run_all(), want, "results with a probe on {kind} ({ins})");
        let stats = engine.stats(id).unwrap();
        engine.disarm(id).unwrap();
        let records = drain_for(engine, id);
        assert!(stats.traps > 0, "{kind} was never hit");
        assert_eq!(stats.hits, stats.traps, "{kind}");
        assert_eq!(records.len() as u64, stats.hits, "{kind}");
        for r in &records {
            assert_eq!(r.regs.gpr[16], ins.ip(), "rip in the record of {kind}");
        }
        assert_eq!(
            nonstop_probe::text_bytes(ins.ip(), ins.len()),
            before,
            "{kind} restored"
        );
    }
    assert_eq!(engine.armed_count(), 0);
}

#[test]
fn all_kinds_at_once_and_entry_registers() {
    let _s = serial();
    let engine = engine();
    let instrs = target_instructions();
    let entry = instrs[0].ip();
    let ids: Vec<_> = interesting(&instrs)
        .into_iter()
        .map(|(_, i)| engine.arm(ProbeSpec::new(i.ip(), empty_plan())).unwrap())
        .collect();
    for (a, b) in INPUTS {
        assert_eq!(target(a, b), expected(a, b));
    }
    let entry_id = ids[0];
    assert_eq!(instrs[0].ip(), entry);
    let records = drain_for(engine, entry_id);
    assert_eq!(records.len(), INPUTS.len());
    for (r, (a, b)) in records.iter().zip(INPUTS) {
        assert_eq!(r.regs.gpr[5], a, "rdi = first argument at entry");
        assert_eq!(r.regs.gpr[4], b, "rsi = second argument at entry");
        // At entry the return address is on top of the stack; rsp as at the site.
        assert_eq!(r.regs.gpr[7] % 16, 8, "rsp at entry is 8 mod 16");
    }
    for id in ids {
        engine.disarm(id).unwrap();
    }
}

#[test]
fn a_plan_reading_a_null_pointer_yields_a_fault_not_a_crash() {
    use nonstop_capture::capture::{CapturedRoot, Piece, PieceSource, RootPlan};
    let _s = serial();
    let engine = engine();
    let entry = target_instructions()[0].ip();
    // Root 0: 8 bytes at [rdi] (null when a == 0); root 1: 16 bytes of the stack at rsp.
    let plan = CapturePlan {
        roots: vec![
            RootPlan {
                pieces: vec![Piece {
                    size: 8,
                    source: PieceSource::Memory { reg: 5, offset: 0 },
                }],
                node: None,
            },
            RootPlan {
                pieces: vec![Piece {
                    size: 16,
                    source: PieceSource::Memory { reg: 7, offset: 0 },
                }],
                node: None,
            },
        ],
        nodes: vec![],
        stack_bytes: 256,
        max_bytes: 8192,
    };
    let id = engine.arm(ProbeSpec::new(entry, Arc::new(plan))).unwrap();
    assert_eq!(target(0, 1), expected(0, 1));
    assert_eq!(target(16, 1), expected(16, 1));
    engine.disarm(id).unwrap();
    let records = drain_for(engine, id);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.roots[0], CapturedRoot::Fault);
        assert!(matches!(r.roots[1], CapturedRoot::Bytes { .. }));
    }
}

#[test]
fn a_deref_chain_through_a_bad_pointer_yields_a_fault_not_a_crash() {
    use nonstop_capture::capture::{CapturedRoot, LocOp, Piece, PieceSource, RootPlan};
    let _s = serial();
    let engine = engine();
    let entry = target_instructions()[0].ip();
    let expr = |ops: Vec<LocOp>| RootPlan {
        pieces: vec![Piece {
            size: 8,
            source: PieceSource::Expr { ops, value: false },
        }],
        node: None,
    };
    let plan = CapturePlan {
        roots: vec![
            // An async local through the pointer in rdi (null, then 16): `*(rdi) + 0x90`.
            expr(vec![
                LocOp::Reg { reg: 5, offset: 0 },
                LocOp::Deref { size: 8 },
                LocOp::PlusConst(0x90),
            ]),
            // A wild pointer met halfway along a chain.
            expr(vec![
                LocOp::Const(0xdead_beef_0000),
                LocOp::Deref { size: 8 },
                LocOp::Deref { size: 8 },
            ]),
            // A good chain: the return address on top of the stack, and 8 bytes of code there.
            expr(vec![
                LocOp::Reg { reg: 7, offset: 0 },
                LocOp::Deref { size: 8 },
            ]),
        ],
        nodes: vec![],
        stack_bytes: 256,
        max_bytes: 8192,
    };
    let id = engine.arm(ProbeSpec::new(entry, Arc::new(plan))).unwrap();
    assert_eq!(target(0, 1), expected(0, 1));
    assert_eq!(target(16, 1), expected(16, 1));
    engine.disarm(id).unwrap();
    let records = drain_for(engine, id);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.roots[0], CapturedRoot::Fault);
        assert_eq!(r.roots[1], CapturedRoot::Fault);
        let CapturedRoot::Bytes { bytes, addr } = &r.roots[2] else {
            panic!("{:?}", r.roots[2]);
        };
        assert_eq!(bytes.len(), 8);
        // The return address is inside this test binary's code, after a call.
        assert!(addr.is_some_and(|a| a > 0x1000), "{addr:?}");
    }
}

#[test]
fn every_instruction_of_a_rust_function_can_be_probed() {
    #[inline(never)]
    fn work(v: &[u64], k: u64) -> u64 {
        let mut acc = 0u64;
        for (i, x) in v.iter().enumerate() {
            acc = acc
                .wrapping_mul(31)
                .wrapping_add(x ^ k)
                .rotate_left(i as u32 % 7);
            if acc.is_multiple_of(3) {
                acc = acc.wrapping_add(std::hint::black_box(i as u64));
            }
        }
        acc
    }
    let _s = serial();
    let engine = engine();
    let data: Vec<u64> = (0..50).map(|i| i * 7919).collect();
    let f = std::hint::black_box(work as fn(&[u64], u64) -> u64);
    let want = f(&data, 5);
    let start = work as fn(&[u64], u64) -> u64 as usize as u64;
    // Decode up to the first `ret`.
    let bytes = nonstop_probe::text_bytes(start, 512);
    let mut instrs = Vec::new();
    for i in Decoder::with_ip(64, &bytes, start, DecoderOptions::NONE) {
        instrs.push(i);
        if i.flow_control() == FlowControl::Return || i.is_invalid() {
            break;
        }
    }
    let mut armed = 0;
    for ins in &instrs {
        match engine.arm(ProbeSpec::new(ins.ip(), empty_plan())) {
            Ok(id) => {
                assert_eq!(f(&data, 5), want, "probe on {ins} at {:#x}", ins.ip());
                engine.disarm(id).unwrap();
                armed += 1;
            }
            Err(e @ ArmError::Unsupported { .. }) => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
    engine.drain(|_| {});
    assert!(
        armed >= instrs.len() - 1,
        "armed {armed} of {}",
        instrs.len()
    );
}

#[test]
fn refusals_say_why() {
    let _s = serial();
    let engine = engine();
    let e = engine.arm(ProbeSpec::new(0x10, empty_plan())).unwrap_err();
    assert_eq!(e.to_string(), "cannot probe 0x10: nothing is mapped there");
    let data = &INPUTS as *const _ as u64;
    let e = engine.arm(ProbeSpec::new(data, empty_plan())).unwrap_err();
    assert!(e.to_string().contains("not in executable memory"), "{e}");
    let entry = target_instructions()[0].ip();
    let id = engine.arm(ProbeSpec::new(entry, empty_plan())).unwrap();
    let e = engine.arm(ProbeSpec::new(entry, empty_plan())).unwrap_err();
    assert!(matches!(e, ArmError::AlreadyArmed { .. }), "{e}");
    engine.disarm(id).unwrap();
    assert!(matches!(engine.disarm(id), Err(ArmError::UnknownProbe(_))));
}

#[test]
fn a_thread_blocking_sigsegv_is_captured_without_fault_signals() {
    use nonstop_capture::capture::{CapturedRoot, Piece, PieceSource, RootPlan};
    let _s = serial();
    let engine = engine();
    let instrs = target_instructions();
    let plan = CapturePlan {
        roots: vec![RootPlan {
            pieces: vec![Piece {
                size: 8,
                source: PieceSource::Memory { reg: 5, offset: 0 },
            }],
            node: None,
        }],
        nodes: vec![],
        stack_bytes: 0,
        max_bytes: 4096,
    };
    let plan = Arc::new(plan);
    // The entry `push` (emulated) and the rip-relative mov (out of line), with SIGSEGV and
    // SIGBUS blocked in the calling thread: a guarded-copy fault there would be fatal.
    let ids = [
        engine
            .arm(ProbeSpec::new(instrs[0].ip(), plan.clone()))
            .unwrap(),
        engine.arm(ProbeSpec::new(instrs[2].ip(), plan)).unwrap(),
    ];
    let got = std::thread::spawn(|| {
        // SAFETY: plain data; blocking two signals in this thread only.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigset pointers.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSEGV);
            libc::sigaddset(&mut set, libc::SIGBUS);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        target(0, 3) // rdi = 0: the plan reads a null pointer
    })
    .join()
    .unwrap();
    assert_eq!(got, expected(0, 3));
    assert_eq!(engine.disarm_all(), 2);
    let mut seen = Vec::new();
    engine.drain(|hit| {
        let r = nonstop_capture::capture::CapturedMemory::parse(hit.record).unwrap();
        assert_eq!(r.roots[0], CapturedRoot::Fault);
        seen.push(hit.probe);
    });
    assert_eq!(seen, ids);
}

/// An address in a page kept mapped with no access: reading it faults for real (unlike
/// addresses below 4096, which the reader rejects without touching them).
fn unreadable_address() -> u64 {
    // SAFETY: a fresh private PROT_NONE mapping that is never unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64 + 64
}

#[test]
fn faults_inside_the_handler_on_threads_with_and_without_altstacks() {
    use nonstop_capture::capture::{CapturedRoot, Piece, PieceSource, RootPlan};
    let _s = serial();
    let engine = engine();
    let instrs = target_instructions();
    let plan = Arc::new(CapturePlan {
        roots: vec![RootPlan {
            pieces: vec![Piece {
                size: 8,
                source: PieceSource::Memory { reg: 5, offset: 0 },
            }],
            node: None,
        }],
        nodes: vec![],
        stack_bytes: 512,
        max_bytes: 8192,
    });
    // Entry `push` (emulated) and the rip-relative mov (out of line).
    engine
        .arm(ProbeSpec::new(instrs[0].ip(), plan.clone()))
        .unwrap();
    engine.arm(ProbeSpec::new(instrs[2].ip(), plan)).unwrap();
    let bad = unreadable_address();
    let run = move || {
        for _ in 0..50 {
            assert_eq!(target(bad, 12), expected(bad, 12));
        }
    };
    let mut n = 0;
    let mut drain = || {
        engine.drain(|hit| {
            let r = nonstop_capture::capture::CapturedMemory::parse(hit.record).unwrap();
            assert_eq!(r.roots[0], CapturedRoot::Fault);
            n += 1;
        });
    };
    // A std thread has an alternate signal stack; a raw pthread has none.
    std::thread::spawn(run).join().unwrap();
    drain();
    extern "C" fn raw_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
        let bad = arg as u64;
        for _ in 0..50 {
            assert_eq!(target(bad, 12), expected(bad, 12));
        }
        std::ptr::null_mut()
    }
    // SAFETY: a plain pthread running a function that does not unwind on success.
    unsafe {
        let mut t: libc::pthread_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_create(&mut t, std::ptr::null(), raw_thread, bad as *mut _),
            0
        );
        libc::pthread_join(t, std::ptr::null_mut());
    }
    drain();
    run();
    drain();
    assert_eq!(engine.disarm_all(), 2);
    assert_eq!(n, 300);
}

static BAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static IN_HANDLER_OK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn usr1_on_altstack(_: libc::c_int) {
    let bad = BAD.load(std::sync::atomic::Ordering::SeqCst);
    if target(bad, 12) == expected(bad, 12) {
        IN_HANDLER_OK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_hit_inside_a_program_handler_on_the_alternate_stack() {
    use nonstop_capture::capture::{CapturedRoot, Piece, PieceSource, RootPlan};
    let _s = serial();
    let engine = engine();
    let plan = Arc::new(CapturePlan {
        roots: vec![RootPlan {
            pieces: vec![Piece {
                size: 8,
                source: PieceSource::Memory { reg: 5, offset: 0 },
            }],
            node: None,
        }],
        nodes: vec![],
        stack_bytes: 256,
        max_bytes: 8192,
    });
    let id = engine
        .arm(ProbeSpec::new(target_instructions()[2].ip(), plan))
        .unwrap();
    BAD.store(unreadable_address(), std::sync::atomic::Ordering::SeqCst);
    std::thread::spawn(|| {
        // SAFETY: installs an alternate stack that lives for the rest of the process and a
        // SIGUSR1 handler on it, then raises it in this thread.
        unsafe {
            // An alternate stack of 64 KiB. Known gap: on std's own alternate stack (sized
            // from the kernel's minimum) an unoptimized handler that takes a trap overflows
            // it with this toolchain — the trap handler must move to a stack of its own
            // there; until then this test checks hits on an alternate stack with room.
            let stack = Box::leak(vec![0u8; 64 * 1024].into_boxed_slice());
            let ss = libc::stack_t {
                ss_sp: stack.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: stack.len(),
            };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = usr1_on_altstack as *const () as usize;
            act.sa_flags = libc::SA_ONSTACK;
            libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut());
            for _ in 0..5 {
                libc::raise(libc::SIGUSR1);
            }
        }
    })
    .join()
    .unwrap();
    assert_eq!(IN_HANDLER_OK.load(std::sync::atomic::Ordering::SeqCst), 5);
    engine.disarm(id).unwrap();
    let records = drain_for(engine, id);
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.roots[0] == CapturedRoot::Fault));
}
