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
}

/// Variables by name, kept in scope order (a JSON object).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Locals(pub Vec<(String, Value)>);

impl Locals {
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
