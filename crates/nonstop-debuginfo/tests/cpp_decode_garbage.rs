//! Garbage in, bounded values out, for C++: decoding libstdc++ containers (`std::map`
//! trees, `std::list` and `std::unordered_map` chains, `std::deque` buffers, smart
//! pointers, …) never panics and never grows without bound, whatever the memory or the
//! record holds, under the real plans of the C++ fixture's locals; a bad pointer is an
//! error mark on the value.

mod decode_support;

use decode_support::local_types;
use nonstop_capture::capture::{
    CapturedMemory, CapturedRoot, Memory, Piece, PieceSource, ReadError, Registers, execute,
};
use nonstop_debuginfo::{Availability, DebugInfo, Variable, VariableKind};
use nonstop_model::{CaptureLimits, Data, Value};
use proptest::prelude::*;
use std::sync::OnceLock;

/// A process whose every readable byte is noise from `seed`; some pages fault.
struct Noise {
    seed: u64,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Memory for Noise {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if mix(self.seed ^ (addr >> 12)).is_multiple_of(5) {
            return Err(ReadError::Fault);
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.wrapping_add(i as u64);
            // Small values often, so lengths and tags are sometimes plausible.
            let r = mix(self.seed ^ a);
            *b = if r.is_multiple_of(3) {
                (r >> 8) as u8 & 0x7
            } else {
                (r >> 16) as u8
            };
        }
        Ok(())
    }
}

/// Memory where nothing is mapped: every pointer is bad.
struct Unmapped;

impl Memory for Unmapped {
    fn read(&self, _addr: u64, _buf: &mut [u8]) -> Result<(), ReadError> {
        Err(ReadError::Fault)
    }
}

/// The agent's C++ fixture (one source for both crates' tests).
fn exe() -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nonstop-agent/tests/fixtures/stock.cpp");
    nonstop_testkit::fixture::build(&src, &["-std=c++20", "-g", "-O0"]).binary
}

fn fixture() -> &'static (DebugInfo, Vec<Variable>) {
    static F: OnceLock<(DebugInfo, Vec<Variable>)> = OnceLock::new();
    F.get_or_init(|| {
        let exe = exe();
        let di = DebugInfo::load(&exe).expect("load fixture");
        let mut types: Vec<_> = local_types(&exe, "report", None).into_iter().collect();
        types.sort();
        let vars = types
            .into_iter()
            .enumerate()
            .map(|(i, (name, die))| {
                let size = di.type_size(Some(die)) as u32;
                Variable {
                    name,
                    kind: VariableKind::Local,
                    type_die: Some(die),
                    type_name: String::new(),
                    decl_line: None,
                    availability: Availability::Available(vec![Piece {
                        size,
                        source: PieceSource::Absolute {
                            addr: 0x10_0000 + 0x1000 * i as u64,
                        },
                    }]),
                }
            })
            .collect();
        (di, vars)
    })
}

fn count(v: &Value) -> usize {
    1 + match &v.value {
        Data::List(items) => items.iter().map(count).sum(),
        Data::Map(fields) => fields.iter().map(|(_, v)| count(v)).sum(),
        _ => 0,
    }
}

fn check_bounded(v: &Value) {
    assert!(count(v) <= 50_001, "{} values", count(v));
    let json = serde_json::to_string(v).expect("json");
    assert!(json.len() < 32 << 20, "{} bytes of JSON", json.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn decoding_noise_from_live_memory_is_bounded(seed in any::<u64>()) {
        let (di, vars) = fixture();
        let mem = Noise { seed };
        let limits = CaptureLimits::default();
        for var in vars {
            let root = di.read_root(var, &Registers::default(), &mem);
            check_bounded(&di.decode(var, &root, &mem, &limits));
        }
    }

    #[test]
    fn decoding_a_damaged_record_is_bounded(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..64)) {
        let (di, vars) = fixture();
        let mem = Noise { seed };
        let limits = CaptureLimits::default();
        let plan = di.capture_plan(vars, &limits);
        let mut out = vec![0u8; 256 << 10];
        let done = execute(&plan, &Registers::default(), &mem, &mut out);
        let record = &mut out[..done.len];
        let header = 16 + 17 * 8 + 16 * 16;
        for (at, byte) in flips {
            if record.len() > header {
                let i = header + at % (record.len() - header);
                record[i] = byte;
            }
        }
        if let Ok(captured) = CapturedMemory::parse(record) {
            for (var, root) in vars.iter().zip(captured.roots.iter().chain(std::iter::repeat(&CapturedRoot::NoSpace))) {
                check_bounded(&di.decode(var, root, &captured, &limits));
            }
        }
    }
}

/// Every container's pointers lead nowhere: each value is an error mark (or empty), no panic.
#[test]
fn bad_pointers_give_error_marks() {
    let (di, vars) = fixture();
    let limits = CaptureLimits::default();
    // The variables' own bytes: growing pointer-looking words (`end > begin`, counts > 0).
    for var in vars {
        let size = di.type_size(var.type_die) as usize;
        let bytes: Vec<u8> = (0..size.div_ceil(8))
            .flat_map(|i| (0x1000 * (i as u64 + 1)).to_le_bytes())
            .take(size)
            .collect();
        let root = CapturedRoot::Bytes { bytes, addr: None };
        let v = di.decode(var, &root, &Unmapped, &limits);
        check_bounded(&v);
        let pointery = [
            "title", "numbers", "owned", "shared", "ids", "tags", "queue", "prices", "seen",
            "recent",
        ];
        if pointery.contains(&var.name.as_str()) {
            assert!(
                has_error(&v),
                "`{}`: no error mark through a bad pointer: {v:?}",
                var.name
            );
        }
    }
}

fn has_error(v: &Value) -> bool {
    v.error.is_some()
        || match &v.value {
            Data::List(items) => items.iter().any(has_error),
            Data::Map(fields) => fields.iter().any(|(_, v)| has_error(v)),
            _ => false,
        }
}
