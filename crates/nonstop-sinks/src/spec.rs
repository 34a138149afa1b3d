//! What a target is: its kind and settings, as stored and as the API takes them.
//!
//! JSON form (the API's `POST /api/v1/targets` body and the stored row):
//! `{"name": "hc", "kind": "honeycomb", "key": "…", "dataset": "prod", "url": null}`.
//! Secrets (keys, webhook URLs, signing secrets, header values) never leave the server
//! whole: [`TargetSpec::redacted`] shows their last 4 characters.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A named target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Its name, as rules' `to` list it: letters, digits, `-`, `_`, `.`; not `ui`.
    pub name: String,
    /// What kind and where.
    #[serde(flatten)]
    pub kind: TargetKind,
}

/// The default size a file target rotates at: 100 MB.
pub const DEFAULT_FILE_MAX_SIZE: u64 = 100_000_000;

/// The kinds of target and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetKind {
    /// OTLP logs (and metrics): `url` is the base (`http://collector:4318`, or `:4317`
    /// with `grpc`).
    Otlp {
        /// The collector's base URL.
        url: String,
        /// gRPC instead of HTTP/protobuf.
        #[serde(default)]
        grpc: bool,
        /// Extra headers (or gRPC metadata), e.g. an authorization.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// Sentry events through the envelope endpoint of the DSN.
    Sentry {
        /// The project's DSN.
        dsn: String,
    },
    /// Datadog logs intake v2 (and series for metric rules).
    Datadog {
        /// The API key.
        api_key: String,
        /// The Datadog site.
        #[serde(default = "default_datadog_site")]
        site: String,
        /// Overrides the intake's base URL (tests, proxies).
        #[serde(default)]
        url: Option<String>,
    },
    /// Honeycomb's batch events API.
    Honeycomb {
        /// The ingest key.
        key: String,
        /// The dataset.
        dataset: String,
        /// Overrides the API's base URL.
        #[serde(default)]
        url: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL (a secret).
        webhook: String,
    },
    /// JSON POSTs signed as Standard Webhooks.
    Webhook {
        /// Where to POST.
        url: String,
        /// The signing secret, `whsec_` + base64.
        #[serde(default)]
        secret: Option<String>,
        /// Extra headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// JSON lines in a file, rotated by size.
    File {
        /// The file's path on the server.
        path: String,
        /// The size it rotates at, in bytes.
        #[serde(default = "default_file_max_size")]
        max_size: u64,
    },
}

fn default_datadog_site() -> String {
    "datadoghq.com".to_string()
}

fn default_file_max_size() -> u64 {
    DEFAULT_FILE_MAX_SIZE
}

/// A target that cannot be used as given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The name is not usable.
    #[error(
        "target name {0:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.' (and not \"ui\", which is nonstop's own)"
    )]
    Name(String),
    /// A setting is wrong; the message says which and how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// This build cannot send to this kind of target yet.
    #[error("targets of kind {0} are not supported by this server yet")]
    Unsupported(&'static str),
}

impl TargetKind {
    /// The kind's name, as in the JSON's `kind`.
    pub fn name(&self) -> &'static str {
        match self {
            TargetKind::Otlp { .. } => "otlp",
            TargetKind::Sentry { .. } => "sentry",
            TargetKind::Datadog { .. } => "datadog",
            TargetKind::Honeycomb { .. } => "honeycomb",
            TargetKind::Slack { .. } => "slack",
            TargetKind::Webhook { .. } => "webhook",
            TargetKind::File { .. } => "file",
        }
    }
}

fn check_url(what: &str, url: &str) -> Result<(), SpecError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(SpecError::Invalid(format!(
            "{what} {url:?} is not an http:// or https:// URL with a host"
        ))),
    }
}

impl TargetSpec {
    /// Checks the name and the settings (URLs, required fields).
    pub fn check(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name != "ui"
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(SpecError::Name(self.name.clone()));
        }
        match &self.kind {
            TargetKind::Otlp { url, .. } => check_url("the OTLP URL", url),
            TargetKind::Sentry { dsn } => check_url("the Sentry DSN", dsn).and_then(|()| {
                if dsn.contains('@') {
                    Ok(())
                } else {
                    Err(SpecError::Invalid(format!(
                        "the Sentry DSN {:?} has no key: copy it from the project's Client Keys page (https://KEY@HOST/PROJECT)",
                        redact(dsn)
                    )))
                }
            }),
            TargetKind::Datadog { api_key, url, .. } => {
                if api_key.is_empty() {
                    return Err(SpecError::Invalid("the Datadog API key is empty".into()));
                }
                url.as_deref()
                    .map_or(Ok(()), |u| check_url("the Datadog URL", u))
            }
            TargetKind::Honeycomb { key, dataset, url } => {
                if key.is_empty() || dataset.is_empty() {
                    return Err(SpecError::Invalid(
                        "a Honeycomb target needs a key and a dataset (--honeycomb KEY --dataset NAME)"
                            .into(),
                    ));
                }
                url.as_deref()
                    .map_or(Ok(()), |u| check_url("the Honeycomb URL", u))
            }
            TargetKind::Slack { webhook } => check_url("the Slack webhook", webhook),
            TargetKind::Webhook { url, secret, .. } => {
                check_url("the webhook URL", url)?;
                match secret {
                    Some(s) if !s.starts_with("whsec_") => Err(SpecError::Invalid(
                        "the webhook secret must be whsec_ followed by base64 (Standard Webhooks)"
                            .into(),
                    )),
                    _ => Ok(()),
                }
            }
            TargetKind::File { path, max_size } => {
                if path.is_empty() {
                    Err(SpecError::Invalid("the file target's path is empty".into()))
                } else if *max_size < 1024 {
                    Err(SpecError::Invalid(format!(
                        "the file target's max size {max_size} is under 1 KB"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The JSON form with every secret cut to its last 4 characters (`…abcd`): what the API
    /// and the UI show.
    pub fn redacted(&self) -> serde_json::Value {
        let mut kind = self.kind.clone();
        let headers = |h: &mut std::collections::BTreeMap<String, String>| {
            for v in h.values_mut() {
                *v = redact(v);
            }
        };
        match &mut kind {
            TargetKind::Otlp { headers: h, .. } => headers(h),
            TargetKind::Sentry { dsn } => *dsn = redact(dsn),
            TargetKind::Datadog { api_key, .. } => *api_key = redact(api_key),
            TargetKind::Honeycomb { key, .. } => *key = redact(key),
            TargetKind::Slack { webhook } => *webhook = redact(webhook),
            TargetKind::Webhook {
                secret, headers: h, ..
            } => {
                if let Some(s) = secret {
                    *s = redact(s);
                }
                headers(h);
            }
            TargetKind::File { .. } => {}
        }
        serde_json::to_value(TargetSpec {
            name: self.name.clone(),
            kind,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

/// A secret cut to `…` and its last 4 characters.
pub fn redact(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_json_form_round_trips_and_defaults_fill_in() {
        let spec: TargetSpec = serde_json::from_value(json!({
            "name": "dd", "kind": "datadog", "api_key": "abcdef123456"
        }))
        .unwrap();
        assert_eq!(
            spec.kind,
            TargetKind::Datadog {
                api_key: "abcdef123456".into(),
                site: "datadoghq.com".into(),
                url: None
            }
        );
        spec.check().unwrap();
        assert_eq!(
            spec.redacted(),
            json!({"name": "dd", "kind": "datadog", "api_key": "…3456", "site": "datadoghq.com", "url": null})
        );
    }

    #[test]
    fn secrets_are_cut_to_their_last_four_characters() {
        let spec = TargetSpec {
            name: "hook".into(),
            kind: TargetKind::Webhook {
                url: "https://example.com/in".into(),
                secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                headers: [("Authorization".to_string(), "Bearer tok-9876".to_string())].into(),
            },
        };
        let shown = spec.redacted().to_string();
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(!shown.contains("tok-"), "{shown}");
        assert_eq!(spec.redacted()["secret"], json!("…LaSw"));
        assert_eq!(spec.redacted()["headers"]["Authorization"], json!("…9876"));
        assert_eq!(redact("ab"), "…ab");
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let bad = |v: serde_json::Value| {
            serde_json::from_value::<TargetSpec>(v)
                .map_err(|e| e.to_string())
                .and_then(|s| s.check().map_err(|e| e.to_string()))
                .unwrap_err()
        };
        assert!(
            bad(json!({"name": "ui", "kind": "file", "path": "/tmp/x"})).contains("not \"ui\"")
        );
        assert!(
            bad(json!({"name": "s", "kind": "slack", "webhook": "hooks.slack.com"}))
                .contains("http://")
        );
        assert!(
            bad(json!({"name": "s", "kind": "sentry", "dsn": "https://o1.ingest.sentry.io/5"}))
                .contains("no key")
        );
        assert!(
            bad(json!({"name": "w", "kind": "webhook", "url": "http://h/x", "secret": "abc"}))
                .contains("whsec_")
        );
        assert!(
            bad(json!({"name": "w", "kind": "pager", "url": "http://h/x"}))
                .contains("unknown variant")
        );
    }
}
