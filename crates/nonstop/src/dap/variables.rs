//! Captured values as DAP variables: a snapshot's value tree, expanded one level per
//! `variables` request, each expandable child getting a reference of its own on demand.

use nonstop_model::value::{Data, Value};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;

/// Most containers kept at once; past it the oldest half goes, and their references
/// answer that the values are gone.
const MAX_CONTAINERS: usize = 20_000;

/// The containers an editor may expand, by `variablesReference`.
#[derive(Default)]
pub struct Variables {
    containers: BTreeMap<i64, Vec<(String, Value)>>,
    next: i64,
}

impl Variables {
    /// A reference for `children` (always above 0, as DAP wants).
    pub fn add(&mut self, children: Vec<(String, Value)>) -> i64 {
        if self.containers.len() >= MAX_CONTAINERS {
            let keep = self
                .containers
                .split_off(&(self.next - (MAX_CONTAINERS / 2) as i64));
            self.containers = keep;
        }
        self.next += 1;
        self.containers.insert(self.next, children);
        self.next
    }

    /// A reference for the children of `v`, 0 when it has none.
    pub fn add_value(&mut self, v: &Value) -> i64 {
        match children(v) {
            Some(c) if !c.is_empty() => self.add(c),
            _ => 0,
        }
    }

    /// The DAP `variables` of reference `r`.
    pub fn expand(&mut self, r: i64) -> Option<Vec<Json>> {
        let entries = self.containers.get(&r)?.clone();
        Some(
            entries
                .iter()
                .map(|(name, v)| {
                    let reference = self.add_value(v);
                    let mut var = json!({
                        "name": name,
                        "value": summary(v),
                        "type": v.type_name,
                        "variablesReference": reference,
                    });
                    match &v.value {
                        Data::List(items) if reference > 0 => {
                            var["indexedVariables"] = json!(items.len())
                        }
                        Data::Map(fields) if reference > 0 => {
                            var["namedVariables"] = json!(fields.len())
                        }
                        _ => {}
                    }
                    var
                })
                .collect(),
        )
    }
}

fn children(v: &Value) -> Option<Vec<(String, Value)>> {
    if v.redacted || v.error.is_some() {
        return None;
    }
    match &v.value {
        Data::Map(fields) => Some(fields.clone()),
        Data::List(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("[{i}]"), x.clone()))
                .collect(),
        ),
        _ => None,
    }
}

/// A value in one short line, the way Rust's `{:?}` would start it.
pub fn summary(v: &Value) -> String {
    if v.redacted {
        return "<redacted>".into();
    }
    if let Some(e) = &v.error {
        return format!("<{e}>");
    }
    let cut = if v.truncated { "…" } else { "" };
    let variant = v.variant.as_deref();
    match &v.value {
        Data::Null => variant.unwrap_or("()").to_string(),
        Data::Bool(b) => b.to_string(),
        Data::Int(i) => i.to_string(),
        Data::Uint(u) if v.type_name.starts_with('*') || v.type_name.ends_with('*') => {
            format!("{u:#x}")
        }
        Data::Uint(u) => u.to_string(),
        Data::Float(f) => f.to_string(),
        Data::Str(s) => format!("{s:?}{cut}"),
        Data::List(items) => {
            let head = variant.unwrap_or("");
            let shown: Vec<String> = items.iter().take(8).map(summary).collect();
            let more = if items.len() > 8 || v.truncated {
                ", …"
            } else {
                ""
            };
            if head.is_empty() {
                format!("[{}{more}]", shown.join(", "))
            } else {
                format!("{head}({}{more})", shown.join(", "))
            }
        }
        Data::Map(fields) => {
            let head = variant.unwrap_or(short_type(&v.type_name));
            let shown: Vec<String> = fields
                .iter()
                .take(6)
                .map(|(k, x)| format!("{k}: {}", summary(x)))
                .collect();
            let more = if fields.len() > 6 || v.truncated {
                ", …"
            } else {
                ""
            };
            format!("{head} {{ {}{more} }}", shown.join(", "))
        }
    }
}

/// `ticker::Tick` → `Tick`.
fn short_type(t: &str) -> &str {
    let base = t.split('<').next().unwrap_or(t);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick() -> Value {
        Value::new(
            "ticker::Tick",
            Data::Map(vec![
                ("n".into(), Value::new("u64", Data::Uint(3))),
                (
                    "label".into(),
                    Value::new("String", Data::Str("alpha-3".into())),
                ),
            ]),
        )
    }

    #[test]
    fn a_struct_reads_as_its_debug_text() {
        assert_eq!(summary(&tick()), r#"Tick { n: 3, label: "alpha-3" }"#);
    }

    #[test]
    fn expanding_gives_each_field_and_a_reference_for_nested_ones() {
        let mut vars = Variables::default();
        let top = vars.add(vec![("t".into(), tick())]);
        let got = vars.expand(top).unwrap();
        assert_eq!(got[0]["name"], "t");
        assert_eq!(got[0]["namedVariables"], 2);
        let inner = got[0]["variablesReference"].as_i64().unwrap();
        let fields = vars.expand(inner).unwrap();
        assert_eq!(
            fields,
            vec![
                json!({"name": "n", "value": "3", "type": "u64", "variablesReference": 0}),
                json!({"name": "label", "value": "\"alpha-3\"", "type": "String", "variablesReference": 0}),
            ]
        );
        assert!(vars.expand(inner + 100).is_none());
    }
}
