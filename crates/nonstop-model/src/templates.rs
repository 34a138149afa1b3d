//! Named rule templates: "dump frame", "log line", "count hits", "measure value" and
//! "trace arguments". Each expands a location and a few parameters into a plain [`Rule`],
//! so the CLI, the API and the IDE offer the same list and build the same rules.
//!
//! ```
//! use nonstop_model::templates::{find, Params};
//! let mut p = Params::new();
//! p.insert("args".into(), "n, name".into());
//! let rule = find("trace").unwrap().expand("ticker::tick", &p).unwrap();
//! assert_eq!(rule.template.as_deref(), Some("ticker::tick(n={n:?}, name={name:?})"));
//! ```

use crate::rule::{Action, Metric, MetricKind, Rule};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Parameters given to [`Template::expand`]: name → value.
pub type Params = BTreeMap<String, String>;

/// One parameter a template takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Param {
    /// Its name (`--param NAME=…` on the CLI).
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Whether the template needs it.
    pub required: bool,
    /// The value used when it is not given (optional parameters only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<&'static str>,
    /// An example value.
    pub example: &'static str,
}

/// A named template that expands into a plain rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Template {
    /// Its name: `snapshot`, `log`, `count`, `measure`, `trace`.
    pub name: &'static str,
    /// A short title for buttons: "Dump frame".
    pub title: &'static str,
    /// What the rule it makes does.
    pub description: &'static str,
    /// The action of the rule it makes.
    pub action: Action,
    /// The parameters it takes.
    pub params: &'static [Param],
    /// An example `nonstop rules add` command.
    pub example: &'static str,
}

/// Why a template could not be expanded. The message names what to give.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// No template has this name.
    UnknownTemplate {
        /// The name asked for.
        name: String,
    },
    /// A required parameter is missing or empty.
    MissingParam {
        /// The template.
        template: &'static str,
        /// The parameter.
        param: &'static Param,
    },
    /// A parameter the template does not take.
    UnknownParam {
        /// The template.
        template: &'static str,
        /// The parameter given.
        param: String,
    },
    /// A parameter's value is not one the template accepts.
    BadValue {
        /// The template.
        template: &'static str,
        /// The parameter.
        param: &'static str,
        /// What is wrong and what to write.
        message: String,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::UnknownTemplate { name } => write!(
                f,
                "no template named {name:?}; the templates are {}",
                names().join(", ")
            ),
            TemplateError::MissingParam { template, param } => write!(
                f,
                "template {template} needs the parameter {}: {} (e.g. {}={})",
                param.name, param.description, param.name, param.example
            ),
            TemplateError::UnknownParam { template, param } => {
                let takes: Vec<&str> = find(template)
                    .map(|t| t.params.iter().map(|p| p.name).collect())
                    .unwrap_or_default();
                let takes = if takes.is_empty() {
                    "none".to_string()
                } else {
                    takes.join(", ")
                };
                write!(
                    f,
                    "template {template} takes no parameter {param:?}; it takes: {takes}"
                )
            }
            TemplateError::BadValue {
                template,
                param,
                message,
            } => write!(f, "template {template}, parameter {param}: {message}"),
        }
    }
}

impl std::error::Error for TemplateError {}

const NAME: Param = Param {
    name: "name",
    description: "the metric's name",
    required: true,
    default: None,
    example: "cart_add",
};

/// The templates, in the order the UI shows them.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "snapshot",
        title: "Dump frame",
        description: "capture the local variables and the stack each time the line runs",
        action: Action::Snapshot,
        params: &[],
        example: "nonstop rules add src/cart.rs:42 --template snapshot",
    },
    Template {
        name: "log",
        title: "Log line",
        description: "log a message with values from the program: {expr} shows a value, {expr:?} its debug form",
        action: Action::Log,
        params: &[Param {
            name: "message",
            description: "the message template, with {expr} and {expr:?} holes",
            required: true,
            default: None,
            example: "\"paid {order.total} for {user.id}\"",
        }],
        example: "nonstop rules add src/cart.rs:42 --template log --log 'paid {order.total} for {user.id}'",
    },
    Template {
        name: "count",
        title: "Count hits",
        description: "count the executions of the line as a counter metric at /metrics",
        action: Action::Metric,
        params: &[NAME],
        example: "nonstop rules add src/cart.rs:42 --template count --metric cart_add",
    },
    Template {
        name: "measure",
        title: "Measure value",
        description: "record an expression's value as a gauge (last value) or a histogram at /metrics",
        action: Action::Metric,
        params: &[
            NAME,
            Param {
                name: "value",
                description: "the expression measured",
                required: true,
                default: None,
                example: "order.total",
            },
            Param {
                name: "kind",
                description: "gauge (last value) or histogram (distribution)",
                required: false,
                default: Some("histogram"),
                example: "gauge",
            },
        ],
        example: "nonstop rules add src/cart.rs:42 --template measure --metric order_total=order.total --kind histogram",
    },
    Template {
        name: "trace",
        title: "Trace arguments",
        description: "log the function's arguments at its entry, each in its debug form; put the rule at the function (a name, or its first line)",
        action: Action::Log,
        params: &[
            Param {
                name: "args",
                description: "the argument names, comma-separated",
                required: true,
                default: None,
                example: "\"order, user\"",
            },
            Param {
                name: "function",
                description: "the function's name in the message",
                required: false,
                default: Some("the location"),
                example: "cart::add",
            },
        ],
        example: "nonstop rules add cart::add --template trace --param args=order,user",
    },
];

/// The template named `name`.
pub fn find(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// The templates' names, in order.
pub fn names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

/// Expands the template named `name` at `at` with `params`.
pub fn expand(name: &str, at: &str, params: &Params) -> Result<Rule, TemplateError> {
    find(name)
        .ok_or_else(|| TemplateError::UnknownTemplate {
            name: name.to_string(),
        })?
        .expand(at, params)
}

impl Template {
    /// A plain rule at `at` made from `params`: an error names a missing or unknown
    /// parameter. Selection and limits are left unset for the caller to fill in.
    pub fn expand(&self, at: &str, params: &Params) -> Result<Rule, TemplateError> {
        if let Some(unknown) = params
            .keys()
            .find(|k| !self.params.iter().any(|p| p.name == k.as_str()))
        {
            return Err(TemplateError::UnknownParam {
                template: self.name,
                param: unknown.clone(),
            });
        }
        let get = |name: &str| -> Result<Option<&str>, TemplateError> {
            let Some(param) = self.params.iter().find(|p| p.name == name) else {
                return Ok(None);
            };
            match params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                Some(v) => Ok(Some(v)),
                None if param.required => Err(TemplateError::MissingParam {
                    template: self.name,
                    param,
                }),
                None => Ok(None),
            }
        };
        let need = |name: &str| get(name).map(|v| v.unwrap_or_default().to_string());
        let mut rule = plain(at, self.action);
        match self.name {
            "log" => {
                // Checked for presence; kept as written (spaces are part of a message).
                need("message")?;
                rule.template = params.get("message").cloned();
            }
            "count" => {
                rule.metric = Some(Metric {
                    kind: MetricKind::Count,
                    name: need("name")?,
                    value: None,
                    tags: BTreeMap::new(),
                })
            }
            "measure" => {
                let kind = match get("kind")?.unwrap_or("histogram") {
                    "histogram" => MetricKind::Histogram,
                    "gauge" => MetricKind::Gauge,
                    other => {
                        return Err(TemplateError::BadValue {
                            template: self.name,
                            param: "kind",
                            message: format!("{other:?} is not a kind: write gauge or histogram"),
                        });
                    }
                };
                rule.metric = Some(Metric {
                    kind,
                    name: need("name")?,
                    value: Some(need("value")?),
                    tags: BTreeMap::new(),
                });
            }
            "trace" => {
                let args = need("args")?;
                let mut holes = Vec::new();
                for a in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    if !is_identifier(a) {
                        return Err(TemplateError::BadValue {
                            template: self.name,
                            param: "args",
                            message: format!(
                                "{a:?} is not an argument name: list names such as order,user"
                            ),
                        });
                    }
                    holes.push(format!("{a}={{{a}:?}}"));
                }
                let function = get("function")?.unwrap_or(at);
                rule.template = Some(format!("{function}({})", holes.join(", ")));
            }
            _ => {}
        }
        Ok(rule)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn plain(at: &str, action: Action) -> Rule {
    Rule {
        id: String::new(),
        at: at.to_string(),
        action,
        template: None,
        metric: None,
        watch: Vec::new(),
        when: None,
        service: None,
        version: None,
        labels: BTreeMap::new(),
        max_hits: None,
        expires: None,
        rate: None,
        limits: Default::default(),
        to: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_template_expands_into_the_plain_rule_it_stands_for() {
        let snap = expand("snapshot", "src/cart.rs:42", &Params::new()).unwrap();
        assert_eq!(snap, plain("src/cart.rs:42", Action::Snapshot));

        let log = expand(
            "log",
            "src/cart.rs:42",
            &params(&[("message", "paid {order.total}")]),
        )
        .unwrap();
        assert_eq!(log.action, Action::Log);
        assert_eq!(log.template.as_deref(), Some("paid {order.total}"));

        let count = expand("count", "a.rs:1", &params(&[("name", "cart_add")])).unwrap();
        assert_eq!(
            count.metric,
            Some(Metric {
                kind: MetricKind::Count,
                name: "cart_add".into(),
                value: None,
                tags: BTreeMap::new()
            })
        );

        let measure = expand(
            "measure",
            "a.rs:1",
            &params(&[("name", "total"), ("value", "order.total")]),
        )
        .unwrap();
        let m = measure.metric.unwrap();
        assert_eq!(
            (m.kind, m.name.as_str(), m.value.as_deref()),
            (MetricKind::Histogram, "total", Some("order.total"))
        );
        let gauge = expand(
            "measure",
            "a.rs:1",
            &params(&[("name", "t"), ("value", "x"), ("kind", "gauge")]),
        )
        .unwrap();
        assert_eq!(gauge.metric.unwrap().kind, MetricKind::Gauge);

        let trace = expand(
            "trace",
            "src/cart.rs:10",
            &params(&[("args", " order,user ")]),
        )
        .unwrap();
        assert_eq!(trace.action, Action::Log);
        assert_eq!(
            trace.template.as_deref(),
            Some("src/cart.rs:10(order={order:?}, user={user:?})")
        );
        let named = expand(
            "trace",
            "src/cart.rs:10",
            &params(&[("args", "n"), ("function", "cart::add")]),
        )
        .unwrap();
        assert_eq!(named.template.as_deref(), Some("cart::add(n={n:?})"));
    }

    #[test]
    fn a_missing_or_unknown_parameter_is_named() {
        let err = expand("measure", "a.rs:1", &params(&[("name", "t")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template measure needs the parameter value: the expression measured (e.g. value=order.total)"
        );
        let err = expand("log", "a.rs:1", &Params::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template log needs the parameter message"),
            "{err}"
        );
        let err = expand("snapshot", "a.rs:1", &params(&[("name", "x")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template snapshot takes no parameter \"name\"; it takes: none"
        );
        let err = expand("count", "a.rs:1", &params(&[("nmae", "x")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template count takes no parameter \"nmae\"; it takes: name"
        );
        let err = expand("dump", "a.rs:1", &Params::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no template named \"dump\"; the templates are snapshot, log, count, measure, trace"
        );
        let err = expand(
            "measure",
            "a.rs:1",
            &params(&[("name", "t"), ("value", "x"), ("kind", "sum")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "template measure, parameter kind: \"sum\" is not a kind: write gauge or histogram"
        );
        let err = expand("trace", "a.rs:1", &params(&[("args", "a,b c")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"b c\" is not an argument name"), "{err}");
    }

    #[test]
    fn the_list_serialises_with_parameters() {
        let json = serde_json::to_value(TEMPLATES).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 5);
        assert_eq!(json[0]["title"], "Dump frame");
        assert_eq!(json[3]["params"][2]["default"], "histogram");
        assert_eq!(json[4]["action"], "log");
    }
}
