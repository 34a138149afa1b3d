//! Typed values: what a captured variable decodes to, and its JSON form.
//!
//! The JSON form is the contract of DESIGN.md: `{"type": RUST_TYPE, "value": …}` with
//! `"truncated": true`, `"redacted": true` or `"error": "…"` where they apply. Enums add
//! `"variant": NAME`; `Rc`/`Arc` add `"refs": {"strong": N, "weak": M}`. Structs are maps (field order kept), tuples and tuple variants lists.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One decoded value with its type name and marks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// The type as the program names it (`String`, `Option<u32>`, `shop::cart::Cart`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// For enums: the variant this value holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The value itself.
    pub value: Data,
    /// Set when a capture limit cut the value short (string length, elements, depth, bytes).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Set when redaction replaced the value (its name matched the deny-list).
    #[serde(default, skip_serializing_if = "is_false")]
    pub redacted: bool,
    /// Why the value could not be read: `optimized out`, `cannot read memory at 0x…`, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a shared pointer (`Rc`, `Arc`): its reference counts at the hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<RefCounts>,
}

/// A shared pointer's counts, as `Rc::strong_count` and `Rc::weak_count` give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefCounts {
    /// Owners of the value.
    pub strong: u64,
    /// `Weak` pointers to it.
    pub weak: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The payload of a [`Value`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// No value: unit, `None`-like absence, or a value that could not be read.
    Null,
    /// `bool`.
    Bool(bool),
    /// Signed integers.
    Int(i64),
    /// Unsigned integers (and pointers, which also carry their address as `Uint`).
    Uint(u64),
    /// Floating point.
    Float(f64),
    /// Text: `String`, `&str`, `char`, C strings, C-like enum names.
    Str(String),
    /// Arrays, slices, `Vec`, tuples, tuple variants, sets.
    List(Vec<Value>),
    /// Structs and struct variants (field → value, in declaration order), and maps
    /// (whose keys are rendered as strings).
    Map(Vec<(String, Value)>),
}

impl Value {
    /// A value with no marks.
    pub fn new(type_name: impl Into<String>, value: Data) -> Value {
        Value {
            type_name: type_name.into(),
            variant: None,
            value,
            truncated: false,
            redacted: false,
            error: None,
            refs: None,
        }
    }

    /// A value that could not be read, with the reason.
    pub fn error(type_name: impl Into<String>, error: impl Into<String>) -> Value {
        Value {
            error: Some(error.into()),
            ..Value::new(type_name, Data::Null)
        }
    }

    /// Looks up a struct field or map entry by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match &self.value {
            Data::Map(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            Data::List(items) => name.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Null => s.serialize_unit(),
            Data::Bool(b) => s.serialize_bool(*b),
            Data::Int(i) => s.serialize_i64(*i),
            Data::Uint(u) => s.serialize_u64(*u),
            Data::Float(f) if f.is_finite() => s.serialize_f64(*f),
            // JSON has no NaN or infinity: say it in text rather than emit invalid JSON.
            Data::Float(f) => s.serialize_str(&f.to_string()),
            Data::Str(t) => s.serialize_str(t),
            Data::List(items) => items.serialize(s),
            Data::Map(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, string, bool, null, list or map")
            }
            fn visit_unit<E>(self) -> Result<Data, E> {
                Ok(Data::Null)
            }
            fn visit_none<E>(self) -> Result<Data, E> {
                Ok(Data::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Data, E> {
                Ok(Data::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Data, E> {
                Ok(Data::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Data, E> {
                Ok(Data::Uint(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Data, E> {
                Ok(Data::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Data, E> {
                Ok(Data::Str(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Data::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    fields.push((k, v));
                }
                Ok(Data::Map(fields))
            }
        }
        d.deserialize_any(DataVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_matches_the_contract() {
        let mut v = Value::new(
            "Cart",
            Data::Map(vec![
                ("id".into(), Value::new("u64", Data::Uint(7))),
                ("owner".into(), Value::new("&str", Data::Str("ann".into()))),
            ]),
        );
        v.truncated = true;
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            r#"{"type":"Cart","value":{"id":{"type":"u64","value":7},"owner":{"type":"&str","value":"ann"}},"truncated":true}"#
        );
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }
}
