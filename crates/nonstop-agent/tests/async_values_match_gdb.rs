//! Inside an `async fn`, the agent's snapshot has every local gdb shows at the same line of
//! the same binary, with the same values; the future's poll frame is named by its source
//! name, and the runtime's frames (`catch_unwind`, `AssertUnwindSafe::call_once`, …) come
//! folded into one frame that keeps them.
//!
//! gdb's text is mapped to nonstop's JSON form by one fixed set of rules ([`gdb_to_json`]),
//! and nonstop's values by another ([`value_to_json`]); both must agree exactly.

mod common;

use common::{Build, build_fixture, marks, run_with_rules};
use nonstop_model::{Data, Value};
use serde_json::{Map, Value as Json, json};
use std::process::Command;

const FIXTURE: &str = "async_orders.rs";

/// `name = text` for each local gdb prints at `file:line` (the first, innermost one of a
/// name), in gdb's order.
/// `derefs` are locals to print through as well (`print *item`), returned as `*item`.
fn gdb_locals(binary: &std::path::Path, at: &str, derefs: &[&str]) -> Vec<(String, String)> {
    let gdb = nonstop_testkit::tool("gdb");
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc runs");
    let etc = format!(
        "{}/lib/rustlib/etc",
        String::from_utf8_lossy(&sysroot.stdout).trim()
    );
    let out = Command::new(gdb)
        .args(["-batch", "-nx", "-iex"])
        .arg(format!("add-auto-load-safe-path {etc}"))
        .arg("-iex")
        .arg(format!("directory {etc}"))
        .arg("-iex")
        .arg(format!("source {etc}/gdb_load_rust_pretty_printers.py"))
        .args(["-ex", "set print pretty off", "-ex", "set width 0"])
        .args([
            "-ex",
            &format!("break {at}"),
            "-ex",
            "run",
            "-ex",
            "info locals",
        ])
        .arg("--args")
        .arg(binary)
        .arg("1")
        .output()
        .expect("gdb runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after_stop = text
        .split_once("Breakpoint 1,")
        .unwrap_or_else(|| panic!("gdb did not stop at {at}:\n{text}"))
        .1;
    let mut locals: Vec<(String, String)> = Vec::new();
    for line in after_stop.lines().skip(2) {
        let Some((name, value)) = line.split_once(" = ") else {
            continue;
        };
        // `$1 = …`: the prints of `derefs`, in order.
        if let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            && let Some(d) = derefs.get(n - 1)
        {
            locals.push((format!("*{d}"), value.to_owned()));
            continue;
        }
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if !locals.iter().any(|(n, _)| n == name) {
            locals.push((name.to_owned(), value.to_owned()));
        }
    }
    locals
}

/// gdb's value syntax (with Rust's pretty printers) → a tree.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &str) {
        assert!(
            self.eat(t),
            "expected `{t}` at {} in {}",
            self.i,
            String::from_utf8_lossy(self.s)
        );
    }
    /// A path such as `alloc::sync::Arc<T, A>` (generic brackets balanced).
    fn path(&mut self) -> String {
        self.ws();
        let start = self.i;
        let mut depth = 0;
        while let Some(c) = self.peek() {
            match c {
                b'<' => depth += 1,
                b'>' => depth -= 1,
                b' ' | b',' | b'(' | b')' if depth > 0 => {}
                b' ' | b'{' | b'(' | b',' | b'}' | b')' | b']' => break,
                // A field's `name:` (a path's `::` is two).
                b':' if depth == 0
                    && self.s.get(self.i + 1) != Some(&b':')
                    && (self.i == start || self.s[self.i - 1] != b':') =>
                {
                    break;
                }
                _ => {}
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn string(&mut self) -> String {
        self.expect("\"");
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().unwrap_or(b'\\');
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    fn value(&mut self) -> Json {
        self.ws();
        match self.peek() {
            Some(b'"') => Json::String(self.string()),
            Some(b'[') => {
                self.i += 1;
                Json::Array(self.items(b']'))
            }
            Some(b'(') => {
                self.i += 1;
                Json::Array(self.items(b')'))
            }
            Some(b'{') => {
                self.i += 1;
                self.body()
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
                {
                    self.i += 1;
                }
                let t = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                // A pointer may be followed by `<symbol>`; a char by `'c'`.
                self.ws();
                if self.peek() == Some(b'\'') {
                    self.i += 1;
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != b'\'') {
                        self.i += 1;
                    }
                    let c = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    return Json::String(c);
                }
                if self.peek() == Some(b'<') {
                    while self.peek().is_some_and(|c| c != b'>') {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                number(&t)
            }
            _ => {
                let path = self.path();
                match path.as_str() {
                    "true" => return Json::Bool(true),
                    "false" => return Json::Bool(false),
                    _ => {}
                }
                self.ws();
                match self.peek() {
                    // `Vec(size=2) = {…}`, `Arc(strong=2, weak=0) = {value = …}`: a pretty
                    // printer's children.
                    Some(b'(') if self.s[self.i..].windows(4).any(|w| w == b") = ") => {
                        while self.peek().is_some_and(|c| c != b')') {
                            self.i += 1;
                        }
                        self.expect(")");
                        self.expect("=");
                        let inner = self.value();
                        match inner {
                            // `Arc`/`Rc`: the value they own.
                            Json::Object(mut m) if m.contains_key("value") => {
                                m.remove("value").unwrap_or(Json::Null)
                            }
                            other => other,
                        }
                    }
                    Some(b'(') => {
                        self.i += 1;
                        Json::Array(self.items(b')'))
                    }
                    Some(b'{') => {
                        self.i += 1;
                        self.body()
                    }
                    _ => Json::String(path.rsplit("::").next().unwrap_or(&path).to_owned()),
                }
            }
        }
    }
    fn items(&mut self, close: u8) -> Vec<Json> {
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(close) {
                self.i += 1;
                return out;
            }
            out.push(self.value());
            self.eat(",");
        }
    }
    /// `{a: 1, b: 2}` (a struct), `{value = x, …}` (named children), `{[k] = v, …}` (a map),
    /// `{x, y}` (a list).
    fn body(&mut self) -> Json {
        let mut fields = Map::new();
        let mut list = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                break;
            }
            if self.eat("[") {
                let k = self.value();
                self.expect("]");
                self.expect("=");
                let key = match k {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                fields.insert(key, self.value());
            } else {
                let save = self.i;
                let name = self.path();
                self.ws();
                if !name.is_empty() && (self.eat(":") || self.eat("=")) {
                    fields.insert(name, self.value());
                } else {
                    self.i = save;
                    list.push(self.value());
                }
            }
            self.eat(",");
        }
        if list.is_empty() {
            Json::Object(fields)
        } else {
            Json::Array(list)
        }
    }
}

fn number(t: &str) -> Json {
    if let Some(hex) = t.strip_prefix("0x") {
        return json!(u64::from_str_radix(hex, 16).expect("hex"));
    }
    if let Ok(v) = t.parse::<i64>() {
        return json!(v);
    }
    if let Ok(v) = t.parse::<u64>() {
        return json!(v);
    }
    json!(t.parse::<f64>().expect("a number"))
}

/// The fixed mapping of gdb's text to JSON: strings, numbers (pointers as their address),
/// structs as maps of their fields, `Vec`s and tuples as lists, an `Arc`/`Rc` as the value
/// it owns, `UnsafeCell`s and atomics as their inner value, a `Mutex`/`RwLock` (gdb's
/// `{inner, poison: {failed}, data}`) as `{data, poisoned}`.
fn gdb_to_json(text: &str) -> Json {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    locks(unwrap_cells(p.value()))
}

/// The counts gdb's Rust printer shows for an `Rc`/`Arc` (`Arc(strong=2, weak=0) = …`).
fn gdb_counts(text: &str) -> Option<(u64, u64)> {
    let rest = text
        .strip_prefix("Arc(strong=")
        .or_else(|| text.strip_prefix("Rc(strong="))?;
    let (strong, rest) = rest.split_once(", weak=")?;
    let (weak, _) = rest.split_once(')')?;
    Some((strong.parse().ok()?, weak.parse().ok()?))
}

/// gdb's raw `Mutex`/`RwLock` → nonstop's `{data, poisoned}`, recursively.
fn locks(j: Json) -> Json {
    match j {
        Json::Object(m) => {
            let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
            keys.sort_unstable();
            if keys == ["data", "inner", "poison"]
                && let Some(failed) = m["poison"].get("failed").and_then(Json::as_u64)
            {
                return json!({"data": locks(m["data"].clone()), "poisoned": failed != 0});
            }
            Json::Object(m.into_iter().map(|(k, v)| (k, locks(v))).collect())
        }
        Json::Array(a) => Json::Array(a.into_iter().map(locks).collect()),
        other => other,
    }
}

/// `{value: x}` (UnsafeCell) and `{v: x}` (atomics) → `x`, recursively.
fn unwrap_cells(j: Json) -> Json {
    match j {
        Json::Object(m) => {
            if m.len() == 1
                && let Some(inner) = m.get("value").or_else(|| m.get("v"))
            {
                return unwrap_cells(inner.clone());
            }
            Json::Object(m.into_iter().map(|(k, v)| (k, unwrap_cells(v))).collect())
        }
        Json::Array(a) => Json::Array(a.into_iter().map(unwrap_cells).collect()),
        other => other,
    }
}

/// nonstop's value in the same form.
fn value_to_json(v: &Value) -> Json {
    assert!(v.error.is_none(), "an error where gdb shows a value: {v:?}");
    assert!(!v.truncated, "truncated: {v:?}");
    let j = match &v.value {
        Data::Null => Json::Null,
        Data::Bool(b) => json!(b),
        Data::Int(i) => json!(i),
        Data::Uint(u) => json!(u),
        Data::Float(f) => json!(f),
        Data::Str(s) => json!(s),
        Data::List(l) => Json::Array(l.iter().map(value_to_json).collect()),
        Data::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
    };
    unwrap_cells(j)
}

#[test]
fn gdb_values_map_to_json_as_documented() {
    assert_eq!(
        gdb_to_json(
            r#"async_orders::Order {id: 40, customer: "customer-0", items: Vec(size=1) = {async_orders::Item {sku: "sku-0", qty: 2, cents: 1250}}}"#
        ),
        json!({"id": 40, "customer": "customer-0", "items": [{"sku": "sku-0", "qty": 2, "cents": 1250}]})
    );
    assert_eq!(
        gdb_to_json(
            "Arc(strong=2, weak=0) = {value = m::M {data: core::cell::UnsafeCell<u8> {value: 7}, f: core::sync::atomic::AtomicBool {v: core::cell::UnsafeCell<u8> {value: 0}}}, strong = 2, weak = 0}"
        ),
        json!({"data": 7, "f": 0})
    );
    assert_eq!(
        gdb_to_json(
            "Arc(strong=2, weak=0) = {value = std::sync::poison::mutex::Mutex<m::T> {inner: std::sys::sync::mutex::futex::Mutex {futex: core::sync::atomic::AtomicU32 {v: core::cell::UnsafeCell<u32> {value: 0}}}, poison: std::sync::poison::Flag {failed: core::sync::atomic::AtomicBool {v: core::cell::UnsafeCell<u8> {value: 0}}}, data: core::cell::UnsafeCell<m::T> {value: m::T {n: 1}}}, strong = 2, weak = 0}"
        ),
        json!({"data": {"n": 1}, "poisoned": false})
    );
    assert_eq!(gdb_to_json("0x7fffffffde78"), json!(0x7fffffffde78u64));
    assert_eq!(gdb_to_json("(1, -2)"), json!([1, -2]));
    assert_eq!(gdb_to_json("true"), json!(true));
}

/// The frames of a response, unfolded: what the stack was.
fn unfolded(frames: &[nonstop_model::Frame]) -> Vec<String> {
    let mut out = Vec::new();
    for f in frames {
        if f.folded.is_empty() {
            out.push(f.function.clone());
        } else {
            out.extend(f.folded.iter().map(|g| g.function.clone()));
        }
    }
    out
}

#[test]
fn a_snapshot_inside_an_async_fn_has_every_local_gdb_shows() {
    let program = build_fixture(FIXTURE, Build::Debug);
    let line = marks(FIXTURE)["handle"];
    let at = format!("{FIXTURE}:{line}");
    let rules = json!([{"id": "handle", "at": at, "action": "snapshot", "rate": "1000/s"}]);
    let run = run_with_rules(&program, &["1"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let got: Vec<_> = run
        .responses
        .iter()
        .filter(|r| r.rule == "handle")
        .collect();
    assert_eq!(got.len(), 1, "one hit; stderr: {}", run.stderr());
    let response = got[0];

    let gdb = gdb_locals(&program, &at, &[]);
    let names: Vec<&str> = gdb.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "count",
            "discounted",
            "subtotal",
            "totals",
            "order",
            "_task_context"
        ],
        "gdb's locals: {gdb:?}"
    );
    for (name, text) in &gdb {
        let value = response
            .locals
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` missing from {:?}", response.locals));
        if name == "_task_context" {
            // A `&mut Context` into the executor's stack: gdb prints its address (which two
            // runs need not share), nonstop the `Context` it points to. The no-op waker's
            // data pointer is null in both.
            assert!(text.starts_with("0x"), "{text}");
            let j = value_to_json(value);
            assert_eq!(j["waker"]["waker"]["data"], json!(0), "{j}");
            assert_eq!(j["local_waker"]["waker"]["data"], json!(0), "{j}");
            continue;
        }
        assert_eq!(
            value_to_json(value),
            gdb_to_json(text),
            "`{name}`: nonstop {value:?}, gdb {text}"
        );
        assert_eq!(
            value.refs.map(|r| (r.strong, r.weak)),
            gdb_counts(text),
            "`{name}`: nonstop's counts, gdb {text}"
        );
    }

    // The poll frame by its source name; the runtime's frames folded, none lost.
    assert_eq!(response.location.function, "async_orders::handle (async)");
    assert_eq!(response.frames[0].function, "async_orders::handle (async)");
    assert_eq!(response.frames[0].line, Some(line));
    let folded: Vec<_> = response
        .frames
        .iter()
        .filter(|f| !f.folded.is_empty())
        .collect();
    assert!(!folded.is_empty(), "no folded frame: {:?}", response.frames);
    let first = folded[0];
    assert!(
        first
            .folded
            .iter()
            .any(|f| f.function.starts_with("std::panicking::catch_unwind")),
        "{first:?}"
    );
    assert!(
        first.folded.iter().any(|f| f
            .function
            .contains("core::panic::unwind_safe::AssertUnwindSafe")),
        "{first:?}"
    );
    assert_eq!(
        first.function,
        format!(
            "… {} runtime frames ({})",
            first.folded.len(),
            first
                .folded
                .iter()
                .find(|f| nonstop_model::is_runtime_frame(&f.function))
                .map(|f| f.function.as_str())
                .unwrap_or_default()
        )
    );
    let all = unfolded(&response.frames);
    let block_on = all
        .iter()
        .position(|f| f == "async_orders::block_on")
        .unwrap_or_else(|| panic!("no block_on frame in {all:?}"));
    assert!(
        all[..block_on]
            .iter()
            .any(|f| f.starts_with("async_orders::block_on::{{closure}}"))
    );
    // The program's own frames stay unfolded.
    assert!(
        response
            .frames
            .iter()
            .any(|f| f.folded.is_empty() && f.function == "async_orders::block_on"),
        "{:?}",
        response.frames
    );
}

#[test]
fn conditions_and_templates_read_async_locals() {
    let program = build_fixture(FIXTURE, Build::Debug);
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)["handle"]);
    let rules = json!([{
        "id": "big",
        "at": at,
        "action": "log",
        "template": "order {order.id} for {order.customer}: {subtotal} -> {discounted}, {count} items",
        "when": "subtotal > 3000 && order.id == 41 && order.customer == \"customer-1\"",
        "rate": "1000/s"
    }]);
    let run = run_with_rules(&program, &["3"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let messages: Vec<_> = run
        .responses
        .iter()
        .filter(|r| r.rule == "big")
        .map(|r| r.message.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        ["order 41 for customer-1: 3298 -> 2969, 2 items"],
        "stderr: {}",
        run.stderr()
    );
    assert_eq!(
        run.status_of("big").map(|s| s["status"].clone()),
        Some(json!("armed"))
    );
}

/// One hit at `mark`; every local gdb prints there, compared. A local gdb prints as an
/// address (a reference) is compared with gdb's `print *NAME`: nonstop shows what a
/// reference points to.
fn compare_at(mark: &str, names: &[&str], references: &[&str]) -> nonstop_model::Response {
    let program = build_fixture(FIXTURE, Build::Debug);
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)[mark]);
    compare(&program, mark, &at, names, references)
}

fn compare(
    program: &std::path::Path,
    mark: &str,
    at: &str,
    names: &[&str],
    references: &[&str],
) -> nonstop_model::Response {
    let rules = json!([{"id": mark, "at": at, "action": "snapshot", "max_hits": 1}]);
    let run = run_with_rules(program, &["1"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let response = run
        .responses
        .iter()
        .find(|r| r.rule == mark)
        .unwrap_or_else(|| panic!("no hit at {mark}: {}", run.stderr()))
        .clone();
    let gdb = gdb_locals(program, at, references);
    let shown: Vec<&str> = gdb
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !n.starts_with('*'))
        .collect();
    assert_eq!(shown, names, "gdb at {mark}: {gdb:?}");
    for (name, text) in &gdb {
        let (name, text) = match name.strip_prefix('*') {
            Some(n) => (n, text.as_str()),
            None if references.contains(&name.as_str()) => continue,
            None => (name.as_str(), text.as_str()),
        };
        if name == "_task_context" {
            continue;
        }
        let value = response
            .locals
            .get(name)
            .unwrap_or_else(|| panic!("{mark}: `{name}` missing from {:?}", response.locals));
        assert_eq!(
            value_to_json(value),
            gdb_to_json(text),
            "{mark}: `{name}`: nonstop {value:?}, gdb {text}"
        );
    }
    response
}

#[test]
fn an_awaited_async_fn_shows_its_locals_and_the_await_chain() {
    let r = compare_at("price", &["line", "item", "_task_context"], &["item"]);
    let names: Vec<&str> = r.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names[..3],
        [
            "async_orders::price (async)",
            "async_orders::handle (async)",
            "async_orders::block_on::{{closure}}"
        ]
    );
    assert_eq!(r.location.function, "async_orders::price (async)");
}

#[test]
fn an_async_block_is_named_by_the_fn_it_is_in() {
    let r = compare_at("block", &["_task_context", "subtotal"], &[]);
    let names: Vec<&str> = r.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names[..2],
        [
            "async_orders::handle (async block)",
            "async_orders::handle (async)"
        ]
    );
}

/// In a release build the future's locals mostly have no location at the line: nonstop
/// shows exactly what gdb shows, and never a value where gdb has none.
#[test]
fn a_release_build_shows_what_gdb_shows_and_nothing_more() {
    let program = build_fixture(FIXTURE, Build::Release);
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)["handle"]);
    let rules = json!([{"id": "handle", "at": at, "action": "snapshot", "max_hits": 1}]);
    let run = run_with_rules(&program, &["1"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let response = run
        .responses
        .iter()
        .find(|r| r.rule == "handle")
        .unwrap_or_else(|| panic!("no hit: {}", run.stderr()));
    let gdb = gdb_locals(&program, &at, &[]);
    let mut compared = 0;
    for (name, text) in &gdb {
        let none = text.starts_with("<optimized out>") || text.starts_with("<error");
        match response.locals.get(name) {
            Some(v) if none => assert!(
                v.error.is_some(),
                "`{name}`: nonstop shows {v:?} where gdb shows {text}"
            ),
            None if none => {}
            Some(v) => {
                compared += 1;
                assert_eq!(value_to_json(v), gdb_to_json(text), "`{name}`");
            }
            None => panic!(
                "`{name}` = {text} in gdb, missing from {:?}",
                response.locals
            ),
        }
    }
    assert!(compared >= 1, "gdb showed no value at all: {gdb:?}");
    // Where gdb has no value, nonstop says so rather than leaving the local out.
    for (name, v) in &response.locals.0 {
        if let Some((_, text)) = gdb.iter().find(|(n, _)| n == name)
            && !text.starts_with('<')
        {
            continue;
        }
        assert!(
            v.error.is_some(),
            "`{name}` = {v:?} which gdb does not show"
        );
    }
}

const TOKIO_MANIFEST: &str = r#"
[package]
name = "tokio-orders"
version = "0.1.0"
edition = "2021"

[dependencies]
tokio = { version = "1", features = ["rt", "macros", "sync"] }

[profile.dev]
debug = 2

[workspace]
"#;

/// The tokio fixture as a cargo project (debug profile), built once under the target dir:
/// offline from cargo's cache when it can, else fetching tokio from crates.io.
fn tokio_fixture() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokio-orders");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let source = common::fixture_source("tokio_orders/main.rs");
    let main = dir.join("src/main.rs");
    std::fs::write(dir.join("Cargo.toml"), TOKIO_MANIFEST).unwrap();
    let text = std::fs::read(&source).unwrap();
    if std::fs::read(&main).ok().as_deref() != Some(&text[..]) {
        std::fs::write(&main, &text).unwrap();
    }
    let target = dir.join("target");
    let build = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS");
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("cargo runs")
    };
    let out = build(true);
    if !out.status.success() {
        let online = build(false);
        assert!(
            online.status.success(),
            "cannot build the tokio fixture: {}",
            String::from_utf8_lossy(&online.stderr)
        );
    }
    (target.join("debug/tokio-orders"), source)
}

#[test]
fn a_tokio_handler_has_every_local_gdb_shows_and_tokio_s_frames_fold() {
    let (program, source) = tokio_fixture();
    let line = nonstop_testkit::marks(&source)["handle"];
    let at = format!("main.rs:{line}");
    let r = compare(
        &program,
        "handle",
        &at,
        &[
            "count",
            "discounted",
            "subtotal",
            "totals",
            "order",
            "_task_context",
        ],
        &[],
    );
    assert_eq!(r.location.function, "tokio_orders::handle (async)");
    assert_eq!(r.frames[0].function, "tokio_orders::handle (async)");
    assert_eq!(r.frames[0].line, Some(line));
    // Right above the handler: tokio's scheduler, folded, every frame kept.
    assert!(!r.frames[1].folded.is_empty(), "{:?}", r.frames);
    assert!(
        r.frames[1]
            .function
            .contains("runtime frames (tokio::runtime::"),
        "{}",
        r.frames[1].function
    );
    assert!(
        r.frames[1]
            .folded
            .iter()
            .all(|f| nonstop_model::is_runtime_frame(&f.function)
                || f.function.starts_with("core::ops::function::")),
        "{:?}",
        r.frames[1].folded
    );
    let json = serde_json::to_value(&r.frames).unwrap();
    assert_eq!(json[0].get("folded"), None);
    assert_eq!(
        json[1]["folded"].as_array().map(Vec::len),
        Some(r.frames[1].folded.len())
    );
}
