//! Responses: what a hit produces, in the JSON form of DESIGN.md.

use crate::value::Value;
use serde::{Deserialize, Serialize};

/// A source location.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceLocation {
    /// Source file as the debug info names it.
    pub file: String,
    /// Line number (1-based).
    pub line: u32,
    /// Function (demangled, without hash).
    pub function: String,
}

/// One stack frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Function (demangled, without hash); inlined frames are frames of their own.
    pub function: String,
    /// Source file, when known.
    pub file: Option<String>,
    /// Line, when known.
    pub line: Option<u32>,
    /// For a frame standing for a run of the runtime's own frames (tokio's scheduler,
    /// `catch_unwind`, `AssertUnwindSafe::call_once`, …): those frames, innermost first.
    /// Empty (and absent from the JSON) for an ordinary frame. See [`fold_runtime_frames`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folded: Vec<Frame>,
}

/// Path prefixes of the frames an async runtime or the standard library's panic and
/// startup machinery owns: never the program's own code.
const RUNTIME_PREFIXES: &[&str] = &[
    "tokio::runtime::",
    "tokio::task::",
    "tokio::loom::",
    "tokio::park::",
    "async_std::",
    "smol::",
    "futures_executor::",
    "std::panicking::",
    "std::panic::catch_unwind",
    "core::panic::unwind_safe::",
    "std::sys::backtrace::__rust_begin_short_backtrace",
    "std::rt::",
    "std::thread::local::",
    "std::thread::Builder::spawn_unchecked",
    "core::cell::UnsafeCell<T>::with_mut",
    "__rust_try",
    "__rust_begin_short_backtrace",
];

/// Call glue between runtime frames (`FnOnce::call_once` shims): folded with the frames
/// around it, never on its own.
const GLUE_PREFIXES: &[&str] = &["core::ops::function::", "alloc::boxed::"];

/// The path a frame's function starts with, past a leading `<` of a trait impl
/// (`<core::panic::unwind_safe::AssertUnwindSafe<F> as …>::call_once`).
fn frame_path(function: &str) -> &str {
    let f = function.strip_prefix('<').unwrap_or(function);
    let f = f.strip_prefix('&').unwrap_or(f);
    f.strip_prefix("dyn ").unwrap_or(f)
}

/// Whether a function belongs to an async runtime or to std's panic machinery.
pub fn is_runtime_frame(function: &str) -> bool {
    let f = frame_path(function);
    RUNTIME_PREFIXES.iter().any(|p| f.starts_with(p))
}

fn is_glue_frame(function: &str) -> bool {
    let f = frame_path(function);
    GLUE_PREFIXES.iter().any(|p| f.starts_with(p))
}

/// Folds each run of two or more runtime frames (glue between them included) into one
/// frame named `… N runtime frames (FIRST)` whose [`Frame::folded`] keeps them. The
/// program's frames, the `poll` frames of its futures among them, stay as they are.
pub fn fold_runtime_frames(frames: Vec<Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::with_capacity(frames.len());
    let mut run: Vec<Frame> = Vec::new();
    let flush = |run: &mut Vec<Frame>, out: &mut Vec<Frame>| {
        // Glue at the end of a run belongs to the frames after it.
        let mut tail = Vec::new();
        while run.last().is_some_and(|f| !is_runtime_frame(&f.function)) {
            if let Some(f) = run.pop() {
                tail.push(f);
            }
        }
        if run.len() >= 2 {
            let folded = std::mem::take(run);
            let first = folded
                .iter()
                .find(|f| is_runtime_frame(&f.function))
                .map(|f| f.function.clone())
                .unwrap_or_default();
            out.push(Frame {
                function: format!("… {} runtime frames ({first})", folded.len()),
                file: None,
                line: None,
                folded,
            });
        } else {
            out.append(run);
        }
        out.extend(tail.into_iter().rev());
    };
    for (i, f) in frames.into_iter().enumerate() {
        if i == 0 {
            // The frame of the hit itself is never folded.
            out.push(f);
            continue;
        }
        let runtime = is_runtime_frame(&f.function);
        if runtime || (!run.is_empty() && is_glue_frame(&f.function)) {
            run.push(f);
            continue;
        }
        flush(&mut run, &mut out);
        if is_glue_frame(&f.function) {
            // Glue before a run: hold it, it folds if runtime frames follow.
            run.push(f);
            continue;
        }
        out.push(f);
    }
    flush(&mut run, &mut out);
    out
}

/// What one hit produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The rule that fired.
    pub rule: String,
    /// The agent it fired in.
    pub agent: String,
    /// The agent's service.
    pub service: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The thread's name (or its id).
    pub thread: String,
    /// Where.
    pub location: SourceLocation,
    /// The rendered message of a log rule.
    pub message: Option<String>,
    /// The stack, innermost first.
    pub frames: Vec<Frame>,
    /// Variables in scope, by name, in scope order.
    pub locals: Locals,
    /// The values of a snapshot rule's watch expressions, by expression text, in the
    /// rule's order; an expression that could not be evaluated is a value with its
    /// `error` set. Absent from the JSON when the rule has none.
    #[serde(default, skip_serializing_if = "Locals::is_empty")]
    pub watch: Locals,
}

/// Variables by name, kept in scope order (a JSON object).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Locals(pub Vec<(String, Value)>);

impl Locals {
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A variable by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Serialize for Locals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Locals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Locals, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Locals;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of variable name to value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Locals, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry()? {
                    out.push((k, v));
                }
                Ok(Locals(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Data;

    fn frame(f: &str) -> Frame {
        Frame {
            function: f.into(),
            file: None,
            line: None,
            folded: vec![],
        }
    }

    #[test]
    fn runtime_runs_fold_into_one_frame_and_the_program_s_stay() {
        let names = [
            "shop::handle (async)",
            "shop::serve (async)",
            "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
            "tokio::loom::std::unsafe_cell::UnsafeCell<T>::with_mut",
            "core::ops::function::FnOnce::call_once",
            "<core::panic::unwind_safe::AssertUnwindSafe<F> as core::ops::function::FnOnce<()>>::call_once",
            "std::panicking::catch_unwind::do_call",
            "__rust_try",
            "shop::main",
            "core::ops::function::FnOnce::call_once",
            "std::rt::lang_start::{{closure}}",
        ];
        let folded = fold_runtime_frames(names.iter().map(|n| frame(n)).collect());
        let shown: Vec<&str> = folded.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(
            shown,
            [
                "shop::handle (async)",
                "shop::serve (async)",
                "… 6 runtime frames (tokio::runtime::task::core::Core<T,S>::poll::{{closure}})",
                "shop::main",
                "… 2 runtime frames (std::rt::lang_start::{{closure}})",
            ]
        );
        let inner: Vec<&str> = folded[2]
            .folded
            .iter()
            .map(|f| f.function.as_str())
            .collect();
        assert_eq!(inner, names[2..8]);
        // Glue alone, a single runtime frame, and the hit's own frame never fold.
        let kept = [
            "tokio::runtime::x",
            "core::ops::function::FnOnce::call_once",
            "a::b",
        ];
        let out = fold_runtime_frames(kept.iter().map(|n| frame(n)).collect());
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|f| f.folded.is_empty()));
        // The JSON of an ordinary frame has no `folded`.
        assert_eq!(
            serde_json::to_string(&frame("a")).unwrap(),
            r#"{"function":"a","file":null,"line":null}"#
        );
    }

    fn response(watch: Locals) -> Response {
        Response {
            rule: "r".into(),
            agent: "a".into(),
            service: "s".into(),
            time: "2026-01-01T00:00:00Z".into(),
            thread: "main".into(),
            location: SourceLocation::default(),
            message: None,
            frames: vec![],
            locals: Locals(vec![("n".into(), Value::new("u32", Data::Uint(3)))]),
            watch,
        }
    }

    #[test]
    fn a_response_without_watch_values_keeps_its_json() {
        let json = serde_json::to_string(&response(Locals::default())).unwrap();
        assert_eq!(
            json,
            r#"{"rule":"r","agent":"a","service":"s","time":"2026-01-01T00:00:00Z","thread":"main","location":{"file":"","line":0,"function":""},"message":null,"frames":[],"locals":{"n":{"type":"u32","value":3}}}"#
        );
        let back: Response = serde_json::from_str(&json).unwrap();
        assert!(back.watch.is_empty());
    }

    #[test]
    fn watch_values_keep_the_rules_order() {
        let watch = Locals(vec![
            ("n * 2".into(), Value::new("i64", Data::Int(-6))),
            (
                "a / b".into(),
                Value::error("?", "division by zero in `a / b`"),
            ),
        ]);
        let json = serde_json::to_string(&response(watch.clone())).unwrap();
        assert!(
            json.ends_with(
                r#""watch":{"n * 2":{"type":"i64","value":-6},"a / b":{"type":"?","value":null,"error":"division by zero in `a / b`"}}}"#
            ),
            "{json}"
        );
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back.watch, watch);
    }
}
