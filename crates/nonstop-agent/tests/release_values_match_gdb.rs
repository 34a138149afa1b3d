//! In a release Rust program (`-C opt-level=2`), the agent's snapshot shows every variable
//! gdb prints at the same stop, with the same value, and never a value gdb would contradict;
//! parameters described only by their value at function entry (`DW_OP_entry_value`), which
//! gdb prints as `<optimized out>`, the agent shows with the value the program really passed,
//! read from what its companion probe recorded at the function's entry for that very frame.
//!
//! gdb recovers an entry value only through the caller's call-site parameters
//! (`DW_TAG_call_site` / `DW_AT_call_value`); rustc's DWARF 4 has none, so gdb has no value for
//! them here. Should a toolchain emit them, gdb's value is compared like any other.
//!
//! gdb's text is mapped to nonstop's JSON form by one fixed rule ([`gdb_to_json`]), and
//! nonstop's values by another ([`value_to_json`]); both must agree exactly.

mod common;

use common::{Build, build_fixture, marks, printed, run_with_rules};
use nonstop_capture::capture::{LocOp, Piece, PieceSource};
use nonstop_debuginfo::{Availability, DebugInfo};
use nonstop_model::{Data, Response, Value};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = "entry_values.rs";

/// DWARF register numbers (x86_64): `rsi`, `rdi`, `rbx`, `r14`.
const RSI: u16 = 4;
const RDI: u16 = 5;
const RBX: u16 = 3;
const R14: u16 = 14;

/// `FILE:LINE` of a mark of the fixture.
fn at(mark: &str) -> String {
    format!("{FIXTURE}:{}", marks(FIXTURE)[mark])
}

/// What gdb shows at `at`: the breakpoint's file address, then for each of the first
/// `stops` stops `name = text` of `info args` followed by `info locals`, in gdb's order.
fn gdb_stops(
    gdb: &Path,
    binary: &Path,
    at: &str,
    stops: usize,
) -> (u64, Vec<Vec<(String, String)>>) {
    let mut cmd = Command::new(gdb);
    cmd.args(["-batch", "-nx", "-ex", "set width 0"]).args([
        "-ex",
        &format!("break {at}"),
        "-ex",
        "run",
    ]);
    for i in 0..stops {
        if i > 0 {
            cmd.args(["-ex", "continue"]);
        }
        cmd.args(["-ex", "info args", "-ex", "info locals"]);
    }
    let out = cmd.arg(binary).output().expect("gdb runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `Breakpoint 1 at 0x14447: file entry_values.rs, line 25.`
    let address = text
        .split_once("Breakpoint 1 at 0x")
        .and_then(|(_, r)| r.split_once(':'))
        .and_then(|(hex, _)| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("gdb set no breakpoint at {at}:\n{text}"));
    let mut all = Vec::new();
    for stop in text.split("\nBreakpoint 1, ").skip(1).take(stops) {
        let mut vars: Vec<(String, String)> = Vec::new();
        // The frame line and the source line, then the variables (and the program's own
        // output, which has no ` = `).
        for line in stop.lines().skip(2) {
            let Some((name, value)) = line.split_once(" = ") else {
                continue;
            };
            if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                vars.push((name.to_owned(), value.to_owned()));
            }
        }
        all.push(vars);
    }
    assert_eq!(all.len(), stops, "gdb stopped fewer times at {at}:\n{text}");
    (address, all)
}

/// The fixed mapping of gdb's text to JSON for this fixture's values, which are integers:
/// a decimal integer is that number; `<optimized out>` is no value (`None`).
fn gdb_to_json(text: &str) -> Option<Json> {
    if text == "<optimized out>" {
        return None;
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(json!(u));
    }
    if let Ok(i) = text.parse::<i64>() {
        return Some(json!(i));
    }
    panic!("no mapping for gdb's `{text}`")
}

/// nonstop's value in the same form (`None`: an error, the value is not shown).
fn value_to_json(v: &Value) -> Option<Json> {
    if v.error.is_some() {
        return None;
    }
    assert!(!v.truncated, "truncated: {v:?}");
    Some(match &v.value {
        Data::Null => Json::Null,
        Data::Bool(b) => json!(b),
        Data::Int(i) => json!(i),
        Data::Uint(u) => json!(u),
        Data::Float(f) => json!(f),
        Data::Str(s) => json!(s),
        other => panic!("not an integer fixture value: {other:?}"),
    })
}

#[test]
fn gdb_values_map_to_json_as_documented() {
    assert_eq!(gdb_to_json("7"), Some(json!(7)));
    assert_eq!(gdb_to_json("-12"), Some(json!(-12)));
    assert_eq!(gdb_to_json("18446744073709551615"), Some(json!(u64::MAX)));
    assert_eq!(gdb_to_json("<optimized out>"), None);
}

/// The parameters' availability at the probe address of `mark`, by name, and that address.
fn availability(mark: &str) -> (u64, BTreeMap<String, Availability>) {
    let program = build_fixture(FIXTURE, Build::Release);
    let info = DebugInfo::load(&program).expect("the fixture's debug info loads");
    let sites = info.resolve(&at(mark)).expect("the mark resolves");
    assert_eq!(sites.len(), 1, "one address for {mark}: {sites:?}");
    let vars = info
        .variables_at(sites[0].address)
        .expect("variables at the mark");
    let by_name = vars.into_iter().map(|v| (v.name, v.availability)).collect();
    (sites[0].address, by_name)
}

/// A value of `size` bytes computed from one register's value at function entry.
fn from_entry(size: u32, reg: u16) -> Availability {
    Availability::FromEntry(vec![Piece {
        size,
        source: PieceSource::Expr {
            ops: vec![LocOp::EntryReg { reg, offset: 0 }],
            value: true,
        },
    }])
}

fn in_register(size: u32, reg: u16) -> Availability {
    Availability::Available(vec![Piece {
        size,
        source: PieceSource::Register { reg },
    }])
}

/// The fixture keeps exercising entry values: at both marks the parameters named below are
/// described only by `DW_OP_entry_value(DW_OP_regN)` (if rustc ever keeps them live, or
/// describes them some other way, this fails first and says so), and the controls are live.
#[test]
fn the_marked_lines_have_parameters_known_only_by_their_entry_values() {
    let (_, settle) = availability("settle");
    assert_eq!(settle["id"], from_entry(4, RDI), "{settle:?}");
    assert_eq!(settle["cents"], in_register(8, R14), "{settle:?}");
    assert_eq!(settle["qty"], in_register(4, RBX), "{settle:?}");

    let (_, countdown) = availability("countdown");
    assert_eq!(countdown["n"], from_entry(4, RDI), "{countdown:?}");
    assert_eq!(countdown["tag"], from_entry(8, RSI), "{countdown:?}");

    // Every other variable there is live.
    for (name, a) in settle.iter().chain(countdown.iter()) {
        if !["id", "n", "tag"].contains(&name.as_str()) {
            assert!(matches!(a, Availability::Available(_)), "{name}: {a:?}");
        }
    }
}

/// Runs the fixture under the agent with a snapshot rule at `mark` (every hit) and under gdb
/// to the same number of stops, and compares them stop by stop. `entry_only` are the
/// variables known only by their entry values there. Returns the responses in hit order
/// and what the program printed it passed, per hit.
fn compare(
    gdb: &Path,
    mark: &str,
    hits: usize,
    entry_only: &[&str],
) -> (Vec<Response>, Vec<BTreeMap<String, String>>) {
    let program = build_fixture(FIXTURE, Build::Release);
    let (address, vars) = availability(mark);
    let described_by_entry: Vec<&str> = vars
        .iter()
        .filter(|(_, a)| matches!(a, Availability::FromEntry(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(described_by_entry, entry_only, "entry-value-only at {mark}");
    let rules = json!([{"id": mark, "at": at(mark), "action": "snapshot", "rate": "1000/s"}]);
    let run = run_with_rules(&program, &[], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let responses: Vec<Response> = run
        .responses
        .iter()
        .filter(|r| r.rule == mark)
        .cloned()
        .collect();
    assert_eq!(responses.len(), hits, "hits; stderr: {}", run.stderr());
    let passed = printed(&run.stdout(), mark);
    assert_eq!(passed.len(), hits, "the fixture prints one set per hit");

    let (gdb_address, stops) = gdb_stops(gdb, &program, &at(mark), hits);
    // The same stop: gdb's breakpoint is nonstop's one probe address.
    assert_eq!(
        gdb_address, address,
        "gdb stops at {gdb_address:#x}, nonstop probes {address:#x}"
    );

    for (k, ((response, vars), passed)) in responses.iter().zip(&stops).zip(&passed).enumerate() {
        let shown: Vec<&str> = response.locals.0.iter().map(|(n, _)| n.as_str()).collect();
        let mut listed: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = shown.clone();
        sorted.sort_unstable();
        listed.sort_unstable();
        assert_eq!(sorted, listed, "hit {k}: the same variables");
        for (name, text) in vars {
            let value = response.locals.get(name).expect("listed above");
            let ours = value_to_json(value);
            match (gdb_to_json(text), entry_only.contains(&name.as_str())) {
                // Every value gdb shows, nonstop shows the same.
                (Some(theirs), _) => assert_eq!(
                    ours,
                    Some(theirs),
                    "hit {k}: `{name}`: nonstop {value:?}, gdb {text}"
                ),
                // The point of the feature: gdb has nothing, nonstop has the value the
                // caller really passed, recorded at this frame's entry.
                (None, true) => {
                    let really = passed
                        .get(name)
                        .unwrap_or_else(|| panic!("the fixture printed no {name}"));
                    assert_eq!(
                        ours,
                        gdb_to_json(really),
                        "hit {k}: `{name}` (gdb: {text}): nonstop {value:?}, passed {really}"
                    );
                }
                // Anything else gdb cannot show, nonstop does not show either.
                (None, false) => assert_eq!(
                    ours, None,
                    "hit {k}: `{name}`: nonstop {value:?} where gdb shows {text}"
                ),
            }
        }
    }
    (responses, passed)
}

/// nonstop's integer values of `names` in one response.
fn ints(r: &Response, names: &[&str]) -> Vec<Option<Json>> {
    names
        .iter()
        .map(|n| r.locals.get(n).and_then(value_to_json))
        .collect()
}

/// A function called twice: each call's `id` is its own, gdb shows none of them, the live
/// `cents` and `qty` and the locals are gdb's.
#[test]
fn a_release_snapshot_shows_gdb_s_values_and_the_entry_values_gdb_cannot() {
    // Missing gdb fails the test with the package to install, as every gdb test here.
    let gdb = nonstop_testkit::tool("gdb");
    let (responses, passed) = compare(&gdb, "settle", 2, &["id"]);
    let names = ["id", "cents", "qty", "fee", "total"];
    let got: Vec<_> = responses.iter().map(|r| ints(r, &names)).collect();
    assert_eq!(
        got,
        [
            [7, 1250, 3, 21, 3771].map(|v| Some(json!(v))),
            [9, 400, 2, 27, 827].map(|v| Some(json!(v))),
        ]
    );
    assert_eq!(passed[0]["id"], "7");
    assert_eq!(passed[1]["id"], "9");
    assert_eq!(responses[0].location.function, "entry_values::settle");
}

/// A recursion: the marked line runs in the innermost frame first, and each frame shows the
/// `n` and `tag` it was entered with, never a deeper frame's (the companion probe keys its
/// records by the frame's CFA).
#[test]
fn each_frame_of_a_release_recursion_shows_its_own_entry_values() {
    // Missing gdb fails the test with the package to install, as every gdb test here.
    let gdb = nonstop_testkit::tool("gdb");
    let (responses, _) = compare(&gdb, "countdown", 4, &["n", "tag"]);
    let got: Vec<_> = responses
        .iter()
        .map(|r| ints(r, &["n", "tag", "below"]))
        .collect();
    assert_eq!(
        got,
        [
            [1, 47, 95].map(|v| Some(json!(v))),
            [2, 23, 285].map(|v| Some(json!(v))),
            [3, 11, 855].map(|v| Some(json!(v))),
            [4, 5, 2565].map(|v| Some(json!(v))),
        ]
    );
    // Hit k is k frames up from the deepest call: 4, 3, 2, then 1 `countdown` on the stack.
    let depth: Vec<usize> = responses
        .iter()
        .map(|r| {
            r.frames
                .iter()
                .filter(|f| f.function == "entry_values::countdown")
                .count()
        })
        .collect();
    assert_eq!(depth, [4, 3, 2, 1]);
}

/// A condition over parameters known only by their entry values is decided in the trap
/// path, from the entry record, like a condition over any live value: a hit it refuses
/// costs no capture and no rate-limit token. With `1/s` (a burst of one), the first call
/// (`id` 7) would take the only token if the condition waited for a full capture, and the
/// second (`id` 9, the one it wants) would be dropped; decided in the trap path, the
/// second call is the one captured. The same for a recursion: only the frame entered with
/// `n` 3 matches, with its own `tag`.
#[test]
fn a_condition_over_entry_values_is_decided_in_the_trap_path() {
    let program = build_fixture(FIXTURE, Build::Release);
    let rules = json!([
        {"id": "settle-9", "at": at("settle"), "action": "snapshot", "rate": "1/s",
         "when": "id == 9"},
        {"id": "countdown-3", "at": at("countdown"), "action": "snapshot", "rate": "1/s",
         "when": "n == 3 && tag > 10"},
    ]);
    let run = run_with_rules(&program, &[], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let of = |rule: &str| -> Vec<Vec<Option<Json>>> {
        run.responses
            .iter()
            .filter(|r| r.rule == rule)
            .map(|r| match rule {
                "settle-9" => ints(r, &["id", "cents", "qty"]),
                _ => ints(r, &["n", "tag", "below"]),
            })
            .collect()
    };
    assert_eq!(
        of("settle-9"),
        [[9, 400, 2].map(|v| Some(json!(v)))],
        "stderr: {}",
        run.stderr()
    );
    assert_eq!(
        of("countdown-3"),
        [[3, 11, 855].map(|v| Some(json!(v)))],
        "stderr: {}",
        run.stderr()
    );
}
