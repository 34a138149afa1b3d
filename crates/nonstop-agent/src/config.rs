//! The agent's configuration, read from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `NONSTOP_DISABLE` | `1` turns the agent off entirely | off |
//! | `NONSTOP_SERVER` | the server's URL (online mode); several replicas' URLs comma-separated (`https://a,https://b`): the agent moves to the next when its server goes away, and gets its rules there | none |
//! | `NONSTOP_TOKEN` | the agent token for the server | none |
//! | `NONSTOP_SERVICE` | the service name | the executable's file name |
//! | `NONSTOP_LABELS` | `k=v,k=v` labels that rules select on | none |
//! | `NONSTOP_COMMIT` | the Git commit the program was built from | none |
//! | `NONSTOP_RULES` | offline mode: a JSON array of rules | none |
//! | `NONSTOP_OUT` | offline mode: responses, one JSON object a line | `nonstop-responses.jsonl` |
//! | `NONSTOP_STATUS` | offline mode: rule statuses, rewritten on change | `NONSTOP_OUT` + `.status.json` |
//! | `NONSTOP_METRICS` | offline mode: metric rules' series in Prometheus text format (for node_exporter's textfile collector), replaced atomically at most once a second and at exit | `NONSTOP_OUT` + `.prom` |
//! | `NONSTOP_REDACT` | extra comma-separated name patterns to redact | none |
//! | `NONSTOP_LINK` | `ws` (a WebSocket) or `http` (polling, for frozen or short-lived processes such as AWS Lambda) | `ws` |
//! | `NONSTOP_VERSION` | the program's version, which rules may select on | none |
//! | `NONSTOP_CA_CERT` | PEM file of the CA to trust for an `https://` server | the public roots |
//! | `NONSTOP_BUDGET` | the global CPU budget of the probes, in percent of one core (0.1–100): handler time plus the kernel's trap cost; a site over it is taken out and put back after a back-off | `1` |
//!
//! Bad values never stop the program: the agent says what is wrong on stderr and goes on
//! with the default, or stays off.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The agent's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `NONSTOP_DISABLE=1`.
    pub disabled: bool,
    /// Server URL, for online mode.
    pub server: Option<String>,
    /// Agent token.
    pub token: Option<String>,
    /// Service name.
    pub service: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Git commit.
    pub commit: Option<String>,
    /// Offline rules file.
    pub rules: Option<PathBuf>,
    /// Offline responses file.
    pub out: PathBuf,
    /// Offline status file.
    pub status: PathBuf,
    /// Offline metrics file (Prometheus text format).
    pub metrics: PathBuf,
    /// Extra redaction patterns.
    pub redact: Vec<String>,
    /// CA certificate (PEM) for an `https://` server.
    pub ca_cert: Option<PathBuf>,
    /// The global CPU budget, percent of one core.
    pub budget_percent: f64,
    /// How the agent talks to the server.
    pub link: LinkKind,
    /// The program's version.
    pub version: Option<String>,
}

/// The default global CPU budget, percent of one core (DESIGN.md).
pub const DEFAULT_BUDGET_PERCENT: f64 = 1.0;

impl Default for Config {
    fn default() -> Self {
        Config {
            disabled: false,
            server: None,
            token: None,
            service: String::new(),
            labels: BTreeMap::new(),
            commit: None,
            rules: None,
            out: PathBuf::new(),
            status: PathBuf::new(),
            metrics: PathBuf::new(),
            redact: Vec::new(),
            ca_cert: None,
            budget_percent: DEFAULT_BUDGET_PERCENT,
            link: LinkKind::default(),
            version: None,
        }
    }
}

/// How the agent talks to the server (`NONSTOP_LINK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkKind {
    /// A WebSocket held open (`ws`, the default).
    #[default]
    WebSocket,
    /// HTTP requests: rules polled, responses posted in batches (`http`).
    Http,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> (Config, Vec<String>) {
        Config::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `var`; returns it with warnings for a person.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let mut warnings = Vec::new();
        let disabled = match var("NONSTOP_DISABLE").as_deref() {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => {
                warnings.push(format!(
                    "NONSTOP_DISABLE={other:?} is not 0 or 1; staying off to be safe"
                ));
                true
            }
        };
        let service = var("NONSTOP_SERVICE")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(executable_name);
        let mut labels = BTreeMap::new();
        if let Some(spec) = var("NONSTOP_LABELS") {
            for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        labels.insert(k.trim().to_owned(), v.trim().to_owned());
                    }
                    _ => warnings.push(format!(
                        "NONSTOP_LABELS: {pair:?} is not key=value; ignored (write k=v,k=v)"
                    )),
                }
            }
        }
        let out = PathBuf::from(
            var("NONSTOP_OUT")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "nonstop-responses.jsonl".into()),
        );
        let status = var("NONSTOP_STATUS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let mut s = out.clone().into_os_string();
                s.push(".status.json");
                PathBuf::from(s)
            });
        let metrics = var("NONSTOP_METRICS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let mut s = out.clone().into_os_string();
                s.push(".prom");
                PathBuf::from(s)
            });
        let budget_percent = match var("NONSTOP_BUDGET").filter(|s| !s.trim().is_empty()) {
            None => DEFAULT_BUDGET_PERCENT,
            Some(text) => match text.trim().trim_end_matches('%').trim().parse::<f64>() {
                Ok(p) if (0.1..=100.0).contains(&p) => p,
                _ => {
                    warnings.push(format!(
                        "NONSTOP_BUDGET={text:?} is not a percentage between 0.1 and 100; using {DEFAULT_BUDGET_PERCENT}"
                    ));
                    DEFAULT_BUDGET_PERCENT
                }
            },
        };
        let link = match var("NONSTOP_LINK").as_deref().map(str::trim) {
            None | Some("") | Some("ws") | Some("websocket") => LinkKind::WebSocket,
            Some("http") => LinkKind::Http,
            Some(other) => {
                warnings.push(format!(
                    "NONSTOP_LINK={other:?} is not ws or http; using ws"
                ));
                LinkKind::WebSocket
            }
        };
        let config = Config {
            budget_percent,
            link,
            version: var("NONSTOP_VERSION").filter(|v| !v.is_empty()),
            disabled,
            server: var("NONSTOP_SERVER").filter(|s| !s.is_empty()),
            token: var("NONSTOP_TOKEN").filter(|s| !s.is_empty()),
            service,
            labels,
            commit: var("NONSTOP_COMMIT").filter(|s| !s.is_empty()),
            rules: var("NONSTOP_RULES")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            out,
            status,
            metrics,
            redact: var("NONSTOP_REDACT")
                .map(|s| {
                    s.split(',')
                        .map(|p| p.trim().to_ascii_lowercase())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            ca_cert: var("NONSTOP_CA_CERT")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        };
        (config, warnings)
    }
}

fn executable_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn labels_parse_and_bad_pairs_are_reported_not_fatal() {
        let (c, w) = Config::from_vars(vars(&[
            ("NONSTOP_LABELS", "env=prod, region=eu,broken"),
            ("NONSTOP_SERVICE", "shop"),
            ("NONSTOP_OUT", "/tmp/r.jsonl"),
        ]));
        assert_eq!(c.service, "shop");
        assert_eq!(c.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(c.labels.get("region").map(String::as_str), Some("eu"));
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.status, PathBuf::from("/tmp/r.jsonl.status.json"));
        assert_eq!(c.metrics, PathBuf::from("/tmp/r.jsonl.prom"));
        let (c, _) = Config::from_vars(vars(&[("NONSTOP_METRICS", "/var/lib/node/app.prom")]));
        assert_eq!(c.metrics, PathBuf::from("/var/lib/node/app.prom"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("\"broken\" is not key=value"), "{}", w[0]);
    }

    #[test]
    fn the_budget_is_a_percentage_in_range_or_the_default_with_a_warning() {
        assert_eq!(Config::from_vars(vars(&[])).0.budget_percent, 1.0);
        let (c, w) = Config::from_vars(vars(&[("NONSTOP_BUDGET", "100")]));
        assert_eq!((c.budget_percent, w.len()), (100.0, 0));
        assert_eq!(
            Config::from_vars(vars(&[("NONSTOP_BUDGET", "0.5%")]))
                .0
                .budget_percent,
            0.5
        );
        for bad in ["0.05", "101", "lots"] {
            let (c, w) = Config::from_vars(vars(&[("NONSTOP_BUDGET", bad)]));
            assert_eq!(c.budget_percent, 1.0);
            assert_eq!(w.len(), 1, "{bad}");
            assert!(w[0].contains("between 0.1 and 100"), "{}", w[0]);
        }
    }

    #[test]
    fn link_is_ws_by_default_http_on_request_and_garbage_warns() {
        assert_eq!(Config::from_vars(vars(&[])).0.link, LinkKind::WebSocket);
        let (c, w) = Config::from_vars(vars(&[("NONSTOP_LINK", "http")]));
        assert_eq!((c.link, w.len()), (LinkKind::Http, 0));
        let (c, w) = Config::from_vars(vars(&[("NONSTOP_LINK", "carrier-pigeon")]));
        assert_eq!(c.link, LinkKind::WebSocket);
        assert_eq!(
            w,
            vec!["NONSTOP_LINK=\"carrier-pigeon\" is not ws or http; using ws"]
        );
    }

    #[test]
    fn disable_accepts_one_and_treats_garbage_as_off() {
        assert!(
            Config::from_vars(vars(&[("NONSTOP_DISABLE", "1")]))
                .0
                .disabled
        );
        assert!(!Config::from_vars(vars(&[])).0.disabled);
        let (c, w) = Config::from_vars(vars(&[("NONSTOP_DISABLE", "yes please")]));
        assert!(c.disabled);
        assert_eq!(w.len(), 1);
    }
}
