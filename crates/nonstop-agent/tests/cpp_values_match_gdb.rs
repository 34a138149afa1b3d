//! In a C++ program (g++, libstdc++, `-O0` and `-O2`), the agent's snapshot shows every
//! variable gdb prints at the same line, with the same value, gdb using libstdc++'s own
//! pretty printers (`/usr/share/gdb/auto-load/…/libstdc++.so.6.*-gdb.py`): `std::string`,
//! `std::vector`, `std::map`, smart pointers, `std::optional`, `std::variant`, … as typed
//! values; base classes as fields; C++ function names demangled; conditions over
//! `std::string` fields and container lengths.
//!
//! gdb's text is mapped to nonstop's JSON form by one fixed set of rules ([`gdb_to_json`]),
//! and nonstop's values by another ([`value_to_json`]); both must agree exactly.

mod common;

use common::{marks, run_with_rules};
use nonstop_model::{Data, Value};
use serde_json::{Map, Value as Json, json};
use std::path::{Path, PathBuf};

const FIXTURE: &str = "stock.cpp";

/// The fixture built with g++ `-std=c++20 -g` at `opt`, once per content.
fn build(opt: &str) -> PathBuf {
    let src = common::fixture_source(FIXTURE);
    nonstop_testkit::fixture::build(&src, &["-std=c++20", "-g", opt]).binary
}

/// What gdb prints at `file:line` (first stop): `info locals`, `info args`, then
/// `*NAME` for each name in `derefs` that gdb can print through.
fn gdb_at(binary: &Path, at: &str, derefs: &[&str]) -> Vec<(String, String)> {
    let gdb = nonstop_testkit::tool("gdb");
    let mut cmd = std::process::Command::new(gdb);
    cmd.args([
        "-batch",
        "-nx",
        "-ex",
        "set print pretty off",
        "-ex",
        "set width 0",
    ])
    .args(["-ex", &format!("break {at}"), "-ex", "run"])
    .args(["-ex", "info locals", "-ex", "info args"]);
    for d in derefs {
        // `output` does not number its values: a failing one does not shift the others.
        cmd.args([
            "-ex",
            &format!("echo *{d} = "),
            "-ex",
            &format!("output *{d}"),
        ]);
        cmd.args(["-ex", "echo \\n"]);
    }
    let out = cmd
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
    let mut vars: Vec<(String, String)> = Vec::new();
    for line in after_stop.lines().skip(2) {
        // `echo` drops the trailing blank: `*owned ={…}`.
        if line.starts_with('*')
            && let Some((name, value)) = line.split_once(" =")
        {
            if !value.trim().is_empty() {
                vars.push((name.to_owned(), value.trim().to_owned()));
            }
            continue;
        }
        let Some((name, value)) = line.split_once(" = ") else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if !vars.iter().any(|(n, _)| n == name) {
            vars.push((name.to_owned(), value.to_owned()));
        }
    }
    vars
}

/// gdb's value syntax with libstdc++'s printers, parsed.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

/// `{…}` bodies keep their order and repeated keys (`std::multimap`).
type Body = Vec<(Option<String>, Json)>;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn rest(&self) -> &[u8] {
        &self.s[self.i.min(self.s.len())..]
    }
    fn ws(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.rest().starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> String {
        assert!(self.eat("\""));
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    out.push(self.peek().unwrap_or(b'\\'));
                    self.i += 1;
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    /// A printer's header (`std::vector of length 3, capacity 4`) up to ` = ` or its end.
    fn header(&mut self) -> (String, bool) {
        let start = self.i;
        let mut depth = 0;
        while let Some(c) = self.peek() {
            let here = self.rest();
            if depth == 0 && here.starts_with(b" = ") {
                let h = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 3;
                return (h, true);
            }
            if depth == 0 && here.starts_with(b"[no contained value]") {
                self.i += "[no contained value]".len();
                break;
            }
            match c {
                b'<' | b'(' => depth += 1,
                b'>' | b')' => depth -= 1,
                b',' | b'}' if depth == 0 && !here.starts_with(b", capacity") => break,
                _ => {}
            }
            self.i += 1;
        }
        (
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
            false,
        )
    }
    fn value(&mut self) -> Json {
        self.ws();
        match self.peek() {
            Some(b'"') => Json::String(self.string()),
            Some(b'{') => {
                self.i += 1;
                let body = self.body();
                plain_body(body)
            }
            Some(b'@') => {
                // A reference: `@0x7ffe…: {…}` is the value it refers to.
                while self.peek().is_some_and(|c| c != b':') {
                    self.i += 1;
                }
                self.i += 1;
                self.value()
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
                self.ws();
                if self.peek() == Some(b'<') {
                    while self.peek().is_some_and(|c| c != b'>') {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                number(&t)
            }
            _ => {
                let (header, has_children) = self.header();
                match header.as_str() {
                    "true" => return Json::Bool(true),
                    "false" => return Json::Bool(false),
                    _ => {}
                }
                if !has_children {
                    // `std::optional<int> [no contained value]`.
                    return Json::Null;
                }
                self.ws();
                let body = if self.eat("{") {
                    self.body()
                } else {
                    vec![(None, self.value())]
                };
                printer(&header, body)
            }
        }
    }
    fn body(&mut self) -> Body {
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return out;
            }
            if self.eat("[") {
                self.ws();
                let key = if self.peek() == Some(b'"') {
                    self.string()
                } else {
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != b']') {
                        self.i += 1;
                    }
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
                };
                assert!(self.eat("]") && self.eat("="), "bad [key] in body");
                out.push((Some(key), self.value()));
            } else if self.eat("<") {
                // A base class: `<Base> = {…}`, keyed by its name.
                let start = self.i;
                let mut depth = 1;
                while let Some(c) = self.peek() {
                    match c {
                        b'<' => depth += 1,
                        b'>' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                assert!(self.eat("="), "bad base in body");
                self.ws();
                if self.eat("{<No data fields>}") {
                    // Empty bases are left out.
                } else {
                    out.push((Some(name), self.value()));
                }
            } else {
                let save = self.i;
                let start = self.i;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || c == b'_' || c == b'(' || c == b')'
                }) {
                    self.i += 1;
                }
                let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                if !name.is_empty() && self.eat("=") {
                    out.push((Some(name), self.value()));
                } else {
                    self.i = save;
                    out.push((None, self.value()));
                }
            }
            self.eat(",");
        }
    }
}

/// A body without a printer: a struct (named fields) or an array (plain items).
fn plain_body(body: Body) -> Json {
    if body.iter().all(|(k, _)| k.is_none()) {
        return Json::Array(body.into_iter().map(|(_, v)| v).collect());
    }
    Json::Object(
        body.into_iter()
            .map(|(k, v)| (k.unwrap_or_default(), v))
            .collect::<Map<_, _>>(),
    )
}

/// What a libstdc++ printer's output means, by its header.
fn printer(header: &str, body: Body) -> Json {
    let values = |body: Body| Json::Array(body.into_iter().map(|(_, v)| v).collect());
    let kind = header.split([' ', '<']).next().unwrap_or("");
    match kind {
        "std::map" | "std::unordered_map" => Json::Object(
            body.into_iter()
                .map(|(k, v)| (k.unwrap_or_default(), v))
                .collect(),
        ),
        "std::multimap" | "std::unordered_multimap" => Json::Array(
            body.into_iter()
                .map(|(k, v)| json!([number_or_string(&k.unwrap_or_default()), v]))
                .collect(),
        ),
        // Children `[0] = …` or plain: the values in order.
        "std::vector" | "std::deque" | "std::span" | "std::set" | "std::multiset"
        | "std::unordered_set" | "std::__cxx11::list" | "std::list" => values(body),
        "std::optional" | "std::variant" => body.into_iter().next().map_or(Json::Null, |(_, v)| v),
        "std::unique_ptr" | "std::shared_ptr" | "std::weak_ptr" => {
            let count = |what: &str| -> Json {
                header
                    .split(what)
                    .nth(1)
                    .and_then(|r| r.split([',', ')']).next())
                    .and_then(|n| n.trim().parse::<i64>().ok())
                    .map_or(Json::Null, |n| json!(n))
            };
            let get = body.into_iter().next().map_or(Json::Null, |(_, v)| v);
            json!({"get": get, "use_count": count("use count"), "weak_count": count("weak count")})
        }
        other => panic!("no mapping for gdb's printer `{other}` ({header})"),
    }
}

fn number_or_string(t: &str) -> Json {
    match t.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(t),
    }
}

fn number(t: &str) -> Json {
    if let Some(hex) = t.strip_prefix("0x") {
        return json!(u64::from_str_radix(hex, 16).expect("hex"));
    }
    if let Ok(v) = t.parse::<i64>() {
        return json!(v);
    }
    json!(t.parse::<f64>().expect("a number"))
}

/// The fixed mapping of gdb's text to JSON: strings, numbers, structs as maps of their
/// fields (a base class `<B> = {…}` as the field `B`, empty bases left out), `std::array`'s
/// `{_M_elems = X}` as `X`, sequences and sets as lists, maps as maps (a multimap as a list
/// of `[key, value]`), `std::optional`/`std::variant` as the value they hold (`null`
/// without one), smart pointers as `{get, use_count, weak_count}` (compared with what
/// they point to separately).
fn gdb_to_json(text: &str) -> Json {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    unwrap_arrays(p.value())
}

/// `{_M_elems: x}` (`std::array`, which has no printer) → `x`, recursively.
fn unwrap_arrays(j: Json) -> Json {
    match j {
        Json::Object(m) => {
            if m.len() == 1
                && let Some(inner) = m.get("_M_elems")
            {
                return unwrap_arrays(inner.clone());
            }
            Json::Object(m.into_iter().map(|(k, v)| (k, unwrap_arrays(v))).collect())
        }
        Json::Array(a) => Json::Array(a.into_iter().map(unwrap_arrays).collect()),
        other => other,
    }
}

/// nonstop's value in the same form.
fn value_to_json(v: &Value) -> Json {
    assert!(v.error.is_none(), "an error where gdb shows a value: {v:?}");
    assert!(!v.truncated, "truncated: {v:?}");
    match &v.value {
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
    }
}

#[test]
fn gdb_values_map_to_json_as_documented() {
    assert_eq!(
        gdb_to_json(
            r#"@0x7ffe: {<Base> = {id = 7}, name = "main", items = std::vector of length 1, capacity 4 = {{sku = "sku-0", qty = 1, cents = 100}}, counts = std::map with 2 elements = {["a"] = 1, ["b"] = 2}}"#
        ),
        json!({"Base": {"id": 7}, "name": "main", "items": [{"sku": "sku-0", "qty": 1, "cents": 100}], "counts": {"a": 1, "b": 2}})
    );
    assert_eq!(
        gdb_to_json(r#"std::multimap with 2 elements = {[1] = "a", [1] = "b"}"#),
        json!([[1, "a"], [1, "b"]])
    );
    assert_eq!(
        gdb_to_json("std::optional<int> [no contained value]"),
        Json::Null
    );
    assert_eq!(
        gdb_to_json("std::optional<int> = {[contained value] = 42}"),
        json!(42)
    );
    assert_eq!(
        gdb_to_json(r#"std::variant<int, std::string> [index 1] = {"picked"}"#),
        json!("picked")
    );
    assert_eq!(
        gdb_to_json("std::shared_ptr<Item> (use count 2, weak count 1) = {get() = 0x5555555891a0}"),
        json!({"get": 0x5555555891a0u64, "use_count": 2, "weak_count": 1})
    );
    assert_eq!(gdb_to_json("{_M_elems = {7, 8, 9}}"), json!([7, 8, 9]));
    assert_eq!(
        gdb_to_json("std::__cxx11::list = {[0] = 10, [1] = 20}"),
        json!([10, 20])
    );
}

/// Variables gdb shows through a pointer: compared with what gdb prints for `*EXPR`
/// (the raw pointer of shared and weak ones: `weak_ptr` has no `operator*`).
const POINTERS: [(&str, &str); 4] = [
    ("owned", "owned"),
    ("shared", "shared._M_ptr"),
    ("shared2", "shared2._M_ptr"),
    ("weak", "weak._M_ptr"),
];

/// One snapshot at `mark`, compared with gdb variable by variable. Returns the response
/// and how many values were compared.
fn compare(opt: &str, mark: &str) -> (nonstop_model::Response, usize) {
    let program = build(opt);
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)[mark]);
    let rules = json!([{"id": mark, "at": at, "action": "snapshot", "max_hits": 1}]);
    let run = run_with_rules(&program, &["1"], &rules.to_string(), &[]);
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
    let exprs: Vec<&str> = POINTERS.iter().map(|(_, e)| *e).collect();
    let gdb = gdb_at(&program, &at, &exprs);
    let mut compared = 0;
    for (name, text) in &gdb {
        if name.starts_with('*') {
            continue;
        }
        let none = text.starts_with("<optimized out>") || text.starts_with("<error");
        let value = response.locals.get(name);
        let Some(value) = value else {
            assert!(
                none,
                "{opt} {mark}: `{name}` = {text} in gdb, missing from {:?}",
                response.locals
            );
            continue;
        };
        if none {
            assert!(
                value.error.is_some(),
                "{opt} {mark}: `{name}`: nonstop shows {value:?} where gdb shows {text}"
            );
            continue;
        }
        if text.starts_with("std::vector<bool>") {
            assert_eq!(
                value.error.as_deref(),
                Some("std::vector<bool> is not decoded (its bits are packed)"),
                "{value:?}"
            );
            continue;
        }
        let mut want = gdb_to_json(text);
        if let Some((_, expr)) = POINTERS.iter().find(|(n, _)| n == name) {
            // gdb shows the address; nonstop the value, which gdb prints with `*NAME`.
            let pointee = gdb
                .iter()
                .find(|(n, _)| *n == format!("*{expr}"))
                .map(|(_, t)| gdb_to_json(t))
                .unwrap_or_else(|| panic!("gdb printed no *{expr}: {gdb:?}"));
            want = match want {
                Json::Object(mut m) if m.get("use_count").is_some_and(|c| !c.is_null()) => {
                    m.remove("get");
                    m.insert("value".into(), pointee);
                    Json::Object(m)
                }
                _ => pointee,
            };
        }
        assert_eq!(
            value_to_json(value),
            want,
            "{opt} {mark}: `{name}`: nonstop {value:?}, gdb {text}"
        );
        compared += 1;
    }
    (response, compared)
}

#[test]
fn a_snapshot_shows_the_std_types_as_gdb_s_printers_do() {
    let (r, compared) = compare("-O0", "report");
    // Every local and argument gdb shows, none missing.
    assert_eq!(compared, 22, "{:?}", r.locals);
    assert_eq!(r.location.function, "report(Stock&, int)");
    assert_eq!(r.frames[0].function, "report(Stock&, int)");
    assert_eq!(
        r.locals.get("title").map(|v| v.type_name.as_str()),
        Some("std::string")
    );
    assert_eq!(
        r.locals.get("counts").map(|v| v.type_name.as_str()),
        None,
        "not a local"
    );
    assert_eq!(
        r.locals.get("prices").map(|v| v.type_name.as_str()),
        Some("std::unordered_map<std::string, int>")
    );
}

#[test]
fn references_and_base_classes_match_gdb() {
    let (r, compared) = compare("-O0", "restock");
    assert_eq!(compared, 4, "{:?}", r.locals);
    assert_eq!(r.location.function, "restock(Stock&, Item const&, int)");
    let names: Vec<&str> = r.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(names[..2], ["restock(Stock&, Item const&, int)", "main"]);
}

#[test]
fn an_optimized_build_shows_what_gdb_shows_and_nothing_more() {
    // (At `restock` g++ -O2 puts the line inside inlined `std::map` code, where gdb's
    // breakpoint moves to the next line: the two would not stop at the same place.)
    let (_, compared) = compare("-O2", "report");
    assert!(compared >= 15, "gdb showed few values");
}

/// A condition over a `std::string` member and a vector's length, on a running program:
/// only the hit whose item is `sku-2` is logged, with the values the template names.
#[test]
fn conditions_read_std_strings_and_lengths() {
    let program = build("-O0");
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)["restock"]);
    let rules = json!([{
        "id": "sku2",
        "at": at,
        "action": "log",
        "template": "{it.sku} x{n}: {s.name} has {len(s.items)} items, first {s.items[0].sku}, id {s.Base.id}",
        "when": "it.sku == \"sku-2\" && len(s.items) > 2",
        "rate": "1000/s"
    }]);
    let run = run_with_rules(&program, &["2"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let messages: Vec<_> = run
        .responses
        .iter()
        .filter(|r| r.rule == "sku2")
        .map(|r| r.message.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        [
            "sku-2 x1: main has 3 items, first sku-0, id 7",
            "sku-2 x2: main has 3 items, first sku-0, id 7"
        ],
        "stderr: {}",
        run.stderr()
    );
    assert_eq!(
        run.status_of("sku2").map(|s| s["status"].clone()),
        Some(json!("armed"))
    );
}

/// The rule's capture limits bound the containers: 2 elements of each, 4 bytes of each
/// string, every cut value marked `truncated`.
#[test]
fn capture_limits_bound_the_std_containers() {
    let program = build("-O0");
    let at = format!("{FIXTURE}:{}", marks(FIXTURE)["report"]);
    let rules = json!([{
        "id": "small", "at": at, "action": "snapshot", "max_hits": 1,
        "limits": {"collection": 2, "string": 4}
    }]);
    let run = run_with_rules(&program, &["1"], &rules.to_string(), &[]);
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    let r = run
        .responses
        .iter()
        .find(|r| r.rule == "small")
        .unwrap_or_else(|| panic!("no hit: {}", run.stderr()));
    let shown = |name: &str| -> (Json, bool) {
        let v = r
            .locals
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", r.locals));
        assert!(v.error.is_none(), "{name}: {v:?}");
        let mut plain = v.clone();
        plain.truncated = false;
        (strip_marks(&plain), v.truncated)
    };
    assert_eq!(shown("title"), (json!("a ti"), true));
    assert_eq!(shown("numbers"), (json!([1, 2]), true));
    assert_eq!(shown("ids"), (json!([1, 2]), true));
    assert_eq!(shown("tags"), (json!([[1, "a"], [1, "b"]]), true));
    assert_eq!(shown("queue"), (json!([10, 20]), true));
    assert_eq!(shown("recent"), (json!([4, 5]), true));
    assert_eq!(shown("prices"), (json!({"sku-": 100}), true));
    assert_eq!(shown("view"), (json!("titl"), true));
}

/// A value in JSON form whatever its marks (cut strings and lists are still shown).
fn strip_marks(v: &Value) -> Json {
    match &v.value {
        Data::Null => Json::Null,
        Data::Bool(b) => json!(b),
        Data::Int(i) => json!(i),
        Data::Uint(u) => json!(u),
        Data::Float(f) => json!(f),
        Data::Str(s) => json!(s),
        Data::List(l) => Json::Array(l.iter().map(strip_marks).collect()),
        Data::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), strip_marks(v))).collect()),
    }
}
