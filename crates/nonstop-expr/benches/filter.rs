//! The cost of a condition evaluated in the trap handler before the capture:
//! `order.total > 10000 && user.country == "DE"` compiled to a filter, over memory that
//! answers like the probe engine's fault-safe reads (here: plain copies from a few ranges).

use criterion::{Criterion, criterion_group, criterion_main};
use nonstop_capture::capture::{Memory, PieceSource, ReadError, Registers};
use nonstop_capture::filter::{FilterRead, FilterResult, ReadKind, eval_filter};
use nonstop_expr::filter::{PathResolver, compile};
use nonstop_expr::{Env, Expr};
use nonstop_model::{Data, Value};
use std::hint::black_box;

const RDI: u16 = 5;
const RSI: u16 = 4;

struct Resolver;
impl PathResolver for Resolver {
    fn read(&self, path: &[String]) -> Option<FilterRead> {
        let (reg, kind) = match (path[0].as_str(), path.get(1).map(String::as_str)) {
            ("order", Some("total")) => (
                RDI,
                ReadKind::Int {
                    size: 8,
                    signed: false,
                },
            ),
            ("user", Some("country")) => (
                RSI,
                ReadKind::Str {
                    ptr_offset: 8,
                    len_offset: 16,
                },
            ),
            _ => return None,
        };
        Some(FilterRead {
            root: PieceSource::Register { reg },
            derefs: vec![0],
            offset: 0,
            kind,
        })
    }
    fn variant(&self, _: &[String], _: &str) -> Option<(FilterRead, u64)> {
        None
    }
}

struct Mem([(u64, [u8; 24]); 3]);
impl Memory for Mem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        for (start, bytes) in &self.0 {
            if addr >= *start && addr + buf.len() as u64 <= start + 24 {
                let off = (addr - start) as usize;
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                return Ok(());
            }
        }
        Err(ReadError::Fault)
    }
}

fn world(total: u64, country: &[u8; 2]) -> (Registers, Mem) {
    let mut regs = Registers::default();
    regs.gpr[RDI as usize] = 0x1000;
    regs.gpr[RSI as usize] = 0x2000;
    let mut order = [0u8; 24];
    order[..8].copy_from_slice(&total.to_le_bytes());
    let mut user = [0u8; 24];
    user[..8].copy_from_slice(&2u64.to_le_bytes());
    user[8..16].copy_from_slice(&0x3000u64.to_le_bytes());
    user[16..24].copy_from_slice(&2u64.to_le_bytes());
    let mut text = [0u8; 24];
    text[..2].copy_from_slice(country);
    (regs, Mem([(0x1000, order), (0x2000, user), (0x3000, text)]))
}

fn bench(c: &mut Criterion) {
    let expr = Expr::parse("order.total > 10000 && user.country == \"DE\"").unwrap();
    let filter = compile(&expr, &Resolver).unwrap();
    // The fixed cost: a filter that reads nothing.
    let constant = compile(&Expr::parse("hit_count > 0").unwrap(), &Resolver).unwrap();
    let (regs, mem) = world(0, b"DE");
    c.bench_function("filter_constant", |b| {
        b.iter(|| eval_filter(black_box(&constant), black_box(&regs), black_box(&mem), 1))
    });
    for (name, total, country, want) in [
        ("filter_true", 12_000, b"DE", FilterResult::True),
        ("filter_false_on_total", 100, b"DE", FilterResult::False),
        (
            "filter_false_on_country",
            12_000,
            b"FR",
            FilterResult::False,
        ),
    ] {
        let (regs, mem) = world(total, country);
        assert_eq!(eval_filter(&filter, &regs, &mem, 1), want);
        c.bench_function(name, |b| {
            b.iter(|| eval_filter(black_box(&filter), black_box(&regs), black_box(&mem), 1))
        });
    }
}

/// The slow path for comparison: the same condition over decoded values (the capture and
/// the decoding, which come first on that path, are not counted).
struct Decoded(Vec<(String, Value)>);
impl Env for Decoded {
    fn var(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    fn thread(&self) -> &str {
        "main"
    }
    fn hit_count(&self) -> u64 {
        1
    }
}

fn bench_after_capture(c: &mut Criterion) {
    let expr = Expr::parse("order.total > 10000 && user.country == \"DE\"").unwrap();
    let field = |n: &str, v: Value| (n.to_owned(), v);
    let env = Decoded(vec![
        field(
            "order",
            Value::new(
                "Order",
                Data::Map(vec![field("total", Value::new("u64", Data::Uint(12_000)))]),
            ),
        ),
        field(
            "user",
            Value::new(
                "User",
                Data::Map(vec![field(
                    "country",
                    Value::new("String", Data::Str("DE".into())),
                )]),
            ),
        ),
    ]);
    assert_eq!(expr.eval_condition(&env), Ok(true));
    c.bench_function("condition_over_decoded_values", |b| {
        b.iter(|| black_box(&expr).eval_condition(black_box(&env)))
    });
}

criterion_group!(benches, bench, bench_after_capture);
criterion_main!(benches);
