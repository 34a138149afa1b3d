//! Cost per hit of an armed probe: empty plan (emulated and out-of-line sites), a
//! 5-variable plan, a hit dropped by the rate limit, against the unprobed function; and
//! zero cost when nothing is armed (bytes unchanged, same timing); and a compiled-in
//! `tracing` event with the same number of fields, for comparison.
//!
//! After criterion's groups, a table: the median cost per call of the hits nonstop's rules
//! make on the `int3` path (a metric count counted in the trap path, a log capturing 5
//! locals, a snapshot capturing 5 locals and 16 KiB of stack) beside the unprobed call and a
//! compiled-in `tracing::info!` with 5 fields (fmt subscriber), with ratios, from one run.
//!
//! `cargo bench -p nonstop-probe --bench hit`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use nonstop_capture::capture::{CapturePlan, LocOp, Piece, PieceSource, RootPlan};
use nonstop_capture::filter::{Filter, FilterRead, Op, ReadKind};
use nonstop_probe::{Engine, EngineConfig, FastPath, ProbeSpec, RateLimit};

// bench_fn(a, b) = a + b + 1, starting with `push rbx` (emulated) then `lea` and `add`
// (out of line).
std::arch::global_asm!(
    ".pushsection .text.nonstop_bench_fn,\"ax\",@progbits",
    ".p2align 4",
    ".globl nonstop_bench_fn",
    "nonstop_bench_fn:",
    "    push rbx",
    "    lea rax, [rdi + rsi]",
    "    add rax, 1",
    "    pop rbx",
    "    ret",
    ".globl nonstop_bench_fn_end",
    "nonstop_bench_fn_end:",
    ".popsection",
);

unsafe extern "C" {
    safe fn nonstop_bench_fn(a: u64, b: u64) -> u64;
    static nonstop_bench_fn_end: u8;
}

fn entry() -> u64 {
    nonstop_bench_fn as *const () as u64
}

/// The same spec on the fast path (the function's bounds given: `push rbx; lea` is the
/// patched span).
fn fast(mut spec: ProbeSpec) -> ProbeSpec {
    spec.function = Some(entry()..&raw const nonstop_bench_fn_end as u64);
    spec
}

/// Times `iters` calls, draining the ring between batches (the agent thread's work, not
/// the program's, so outside the timing).
fn timed_calls(engine: &Engine, iters: u64) -> Duration {
    let f = black_box(nonstop_bench_fn as extern "C" fn(u64, u64) -> u64);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(128);
        let t = Instant::now();
        for i in 0..n {
            black_box(f(black_box(i), 2));
        }
        total += t.elapsed();
        engine.drain(|h| {
            black_box(h.record.len());
        });
        left -= n;
    }
    total
}

fn five_variables() -> Arc<CapturePlan> {
    let reg = |reg| RootPlan {
        pieces: vec![Piece {
            size: 8,
            source: PieceSource::Register { reg },
        }],
        node: None,
    };
    let stack = |offset| RootPlan {
        pieces: vec![Piece {
            size: 8,
            source: PieceSource::Memory { reg: 7, offset },
        }],
        node: None,
    };
    Arc::new(CapturePlan {
        roots: vec![reg(5), reg(4), stack(0), stack(8), stack(16)],
        nodes: vec![],
        stack_bytes: 0,
        max_bytes: 4096,
    })
}

/// Five locals of an async fn: each read through the pointer in the frame
/// (`DW_OP_breg7 +0; DW_OP_deref; DW_OP_plus_uconst N`), here the return address, so
/// every read lands in readable code.
fn five_async_locals() -> Arc<CapturePlan> {
    let through = |offset| RootPlan {
        pieces: vec![Piece {
            size: 8,
            source: PieceSource::Expr {
                ops: vec![
                    LocOp::Reg { reg: 7, offset: 0 },
                    LocOp::Deref { size: 8 },
                    LocOp::PlusConst(offset),
                ],
                value: false,
            },
        }],
        node: None,
    };
    Arc::new(CapturePlan {
        roots: vec![
            through(0),
            through(8),
            through(16),
            through(24),
            through(32),
        ],
        nodes: vec![],
        stack_bytes: 0,
        max_bytes: 4096,
    })
}

/// The engine every row uses: started by the first call (later ones return it).
fn engine() -> &'static Engine {
    Engine::init(EngineConfig {
        budget: 1.0, // measure the hit, not the budget
        ring_slots: 1024,
        ring_slot_size: 32 * 1024,
        fast_path: true, // only probes given their function's bounds (`fast`) use it
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn bench(c: &mut Criterion) {
    let engine = engine();
    let empty = Arc::new(CapturePlan::default());
    let lea = entry() + 1; // after the 1-byte `push rbx`
    let original = nonstop_probe::text_bytes(entry(), 16);

    let mut g = c.benchmark_group("hit");
    g.bench_function("unprobed", |b| b.iter_custom(|n| timed_calls(engine, n)));

    let id = engine.arm(ProbeSpec::new(entry(), empty.clone())).unwrap();
    g.bench_function("armed, empty plan, emulated push", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    let id = engine.arm(ProbeSpec::new(lea, empty.clone())).unwrap();
    g.bench_function("armed, empty plan, out-of-line lea", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    let mut spec = ProbeSpec::new(entry(), empty.clone());
    spec.count_only = true;
    let id = engine.arm(spec).unwrap();
    g.bench_function("armed, count only (a metric count)", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    let mut spec = fast(ProbeSpec::new(entry(), empty.clone()));
    spec.count_only = true;
    let id = engine.arm(spec).unwrap();
    assert!(matches!(
        engine.stats(id).unwrap().fast_path,
        FastPath::Yes { .. }
    ));
    g.bench_function("fast path, count only (a metric count)", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    let id = engine
        .arm(ProbeSpec::new(entry(), five_variables()))
        .unwrap();
    g.bench_function("armed, 5-variable plan", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    let id = engine
        .arm(fast(ProbeSpec::new(entry(), five_variables())))
        .unwrap();
    g.bench_function("fast path, 5-variable plan", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    engine.disarm(id).unwrap();

    // A condition decided in the trap path: `a > 1000` on the first argument (rdi), false
    // for every call here, so nothing is captured: the cost of a hit that does not match.
    let mut spec = ProbeSpec::new(entry(), five_variables());
    spec.filter = Some(Arc::new(Filter {
        reads: vec![FilterRead {
            root: PieceSource::Register { reg: 5 },
            derefs: vec![],
            offset: 0,
            kind: ReadKind::Int {
                size: 8,
                signed: false,
            },
        }],
        strings: vec![],
        code: vec![Op::Read(0), Op::Uint(1000), Op::Gt],
    }));
    let id = engine.arm(spec).unwrap();
    g.bench_function("armed, condition false (decided in the trap path)", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    let stats = engine.stats(id).unwrap();
    engine.disarm(id).unwrap();
    assert!(stats.filtered > 0 && stats.hits == 0, "{stats:?}");

    let mut spec = ProbeSpec::new(entry(), empty.clone());
    spec.rate = Some(RateLimit {
        per_second: 1e-9,
        burst: 1,
    });
    let id = engine.arm(spec).unwrap();
    g.bench_function("armed, hit dropped by rate limit", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });
    let stats = engine.stats(id).unwrap();
    engine.disarm(id).unwrap();
    assert!(stats.dropped_rate > 0 && stats.hits <= 1, "{stats:?}");

    // Zero cost when idle: after disarm the bytes are the original ones, timing as unprobed.
    assert_eq!(
        nonstop_probe::text_bytes(entry(), 16),
        original,
        "bytes restored"
    );
    assert_eq!(engine.armed_count(), 0);
    g.bench_function("disarmed again", |b| {
        b.iter_custom(|n| timed_calls(engine, n))
    });

    // The compiled-in alternative: a `tracing` event with five fields, formatted by the
    // fmt subscriber into a sink (what a log line costs when it is in the code already).
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        g.bench_function("compiled-in tracing::info! with 5 fields", |b| {
            b.iter(|| {
                let (a, bb) = (black_box(7u64), black_box(2u64));
                tracing::info!(a, b = bb, sum = a + bb, name = "tea", flag = true, "hit");
                black_box(nonstop_bench_fn(a, bb))
            })
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
/// One row of the summary: median ns per call over `SAMPLES` batches of `BATCH` calls.
const SAMPLES: usize = 41;
const BATCH: u64 = 2_000;

fn median_ns_per_call(mut sample: impl FnMut() -> Duration) -> f64 {
    // Warm up: the handler's code and the ring's pages.
    for _ in 0..3 {
        sample();
    }
    let mut all: Vec<f64> = (0..SAMPLES)
        .map(|_| sample().as_nanos() as f64 / BATCH as f64)
        .collect();
    all.sort_by(f64::total_cmp);
    all[SAMPLES / 2]
}

fn summary() {
    let engine = engine();
    let mut rows: Vec<(&str, f64)> = Vec::new();
    rows.push((
        "unprobed call",
        median_ns_per_call(|| timed_calls(engine, BATCH)),
    ));
    let mut count = ProbeSpec::new(entry(), Arc::new(CapturePlan::default()));
    count.count_only = true;
    let mut snapshot_plan = (*five_variables()).clone();
    snapshot_plan.stack_bytes = 16 * 1024;
    snapshot_plan.max_bytes = 24 * 1024;
    let cases = [
        ("metric count (counted in the trap path)", count),
        ("log, 5 locals", ProbeSpec::new(entry(), five_variables())),
        (
            "log, 5 async locals (deref chain each)",
            ProbeSpec::new(entry(), five_async_locals()),
        ),
        (
            "snapshot, 5 locals + 16 KiB of stack",
            ProbeSpec::new(entry(), Arc::new(snapshot_plan)),
        ),
    ];
    let mut fast_rows: Vec<(&str, f64)> = Vec::new();
    for (name, mut spec) in cases {
        // A hit preempted on a busy machine must not mark the probe done (the time cap).
        spec.time_cap = Duration::from_secs(3600);
        let id = engine.arm(spec.clone()).expect("arm");
        rows.push((name, median_ns_per_call(|| timed_calls(engine, BATCH))));
        let stats = engine.stats(id).expect("stats");
        engine.disarm(id).expect("disarm");
        assert_eq!(stats.dropped_budget, 0, "{name}: {stats:?}");
        let id = engine.arm(fast(spec)).expect("arm");
        let on_fast_path = matches!(engine.stats(id).unwrap().fast_path, FastPath::Yes { .. });
        fast_rows.push((name, median_ns_per_call(|| timed_calls(engine, BATCH))));
        let stats = engine.stats(id).expect("stats");
        engine.disarm(id).expect("disarm");
        assert!(on_fast_path, "{name}: {}", stats.fast_path);
        assert_eq!(stats.dropped_budget, 0, "{name}: {stats:?}");
        assert_eq!(
            stats.hits + stats.counted,
            stats.traps,
            "{name}: every fast-path hit captured or counted: {stats:?}"
        );
    }
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .finish();
    let tracing_ns = tracing::subscriber::with_default(subscriber, || {
        median_ns_per_call(|| {
            let t = Instant::now();
            for i in 0..BATCH {
                let (a, bb) = (black_box(i), black_box(2u64));
                tracing::info!(a, b = bb, sum = a + bb, name = "tea", flag = true, "hit");
                black_box(nonstop_bench_fn(a, bb));
            }
            t.elapsed()
        })
    });
    rows.push(("compiled-in tracing::info!, 5 fields, fmt", tracing_ns));
    let unprobed = rows[0].1;
    println!("\nFast path vs int3 path, per call, median of {SAMPLES} batches of {BATCH}:");
    println!(
        "| {:<42} | {:>10} | {:>10} | {:>12} | {:>12} | {:>11} |",
        "case", "int3 ns", "fast ns", "int3 +ns", "fast +ns", "int3 ÷ fast"
    );
    println!(
        "| {:-<42} | {:->10} | {:->10} | {:->12} | {:->12} | {:->11} |",
        "", "", "", "", "", ""
    );
    for ((name, int3), (_, fast)) in rows[1..].iter().zip(&fast_rows) {
        println!(
            "| {:<42} | {:>10.1} | {:>10.1} | {:>12.1} | {:>12.1} | {:>11.1} |",
            name,
            int3,
            fast,
            int3 - unprobed,
            fast - unprobed,
            (int3 - unprobed) / (fast - unprobed)
        );
    }
    println!("(unprobed call: {unprobed:.1} ns; +ns: less the unprobed call)");
    println!("\nPer call, median of {SAMPLES} batches of {BATCH} (the int3 path):");
    println!(
        "| {:<42} | {:>9} | {:>10} | {:>10} |",
        "case", "ns/call", "+ns/call", "÷ tracing"
    );
    println!("| {:-<42} | {:->9} | {:->10} | {:->10} |", "", "", "", "");
    for (name, ns) in &rows {
        println!(
            "| {:<42} | {:>9.1} | {:>10.1} | {:>10.2} |",
            name,
            ns,
            ns - unprobed,
            (ns - unprobed) / (tracing_ns - unprobed)
        );
    }
    println!(
        "+ns/call: less the unprobed call. ÷ tracing: that extra time over the tracing \
         event's. For reference, bpftime publishes 314-445 ns per hit for its in-process \
         uprobes (frida-gum trampolines)."
    );
}

fn main() {
    // `-- --table` measures only the closing table (criterion's groups are skipped).
    let table_only = std::env::args().any(|a| a == "--table");
    if !table_only {
        benches();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs criterion's groups once
    // in test mode, and the table is not measured then.
    if table_only || std::env::args().any(|a| a == "--bench") {
        summary();
    }
    if table_only {
        return;
    }
    Criterion::default().configure_from_args().final_summary();
}
