//! Offline mode: rules from a JSON file, responses to a JSON-lines file, metrics to a
//! Prometheus text file.

use crate::say;
use nonstop_model::metrics::{MetricSeries, render_prometheus};
use nonstop_model::{Response, Rule, RuleStatus, StatusKind};
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

/// The rules file, re-read when it changes.
pub struct RulesFile {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
    first: bool,
}

impl RulesFile {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> RulesFile {
        RulesFile {
            path,
            seen: None,
            first: true,
        }
    }

    /// The rules, when the file changed since the last call (or on the first call).
    /// A file that cannot be used is reported once per change and arms nothing new.
    pub fn poll(&mut self) -> Option<Vec<Rule>> {
        let meta = std::fs::metadata(&self.path);
        let stamp = meta
            .as_ref()
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if !self.first && stamp == self.seen {
            return None;
        }
        self.first = false;
        self.seen = stamp;
        match read_rules(&self.path) {
            Ok(rules) => Some(rules),
            Err(message) => {
                say(&message);
                None
            }
        }
    }
}

/// Reads and checks a rules file: a JSON array of rules; rules without an id get `r1`, `r2`, …
pub fn read_rules(path: &std::path::Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the rules file {}: {e}", path.display()))?;
    let mut rules: Vec<Rule> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the rules file {} is not a JSON array of rules: {e}; no rules armed (fix the file and it is re-read)",
            path.display()
        )
    })?;
    for (i, rule) in rules.iter_mut().enumerate() {
        if rule.id.is_empty() {
            rule.id = format!("r{}", i + 1);
        }
    }
    Ok(rules)
}

/// Where offline responses and statuses go.
pub struct ResponseFile {
    out: PathBuf,
    status: PathBuf,
    reported: Vec<RuleStatus>,
}

impl ResponseFile {
    /// Appends responses to `out`; rewrites statuses at `status`.
    pub fn new(out: PathBuf, status: PathBuf) -> ResponseFile {
        ResponseFile {
            out,
            status,
            reported: Vec::new(),
        }
    }

    /// Appends responses, one JSON object a line.
    pub fn responses(&mut self, responses: &[Response]) {
        if responses.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for r in responses {
            if serde_json::to_writer(&mut buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out)
            .and_then(|mut f| f.write_all(&buf));
        if let Err(e) = written {
            say(&format!(
                "cannot write responses to {}: {e}",
                self.out.display()
            ));
        }
    }

    /// Records statuses: the whole set to the status file, and changes on stderr.
    pub fn statuses(&mut self, statuses: &[RuleStatus]) {
        for s in statuses {
            let old = self.reported.iter().find(|o| o.rule == s.rule);
            if old.map(|o| (o.status, &o.message)) != Some((s.status, &s.message)) {
                let what = match s.status {
                    StatusKind::Armed => format!("armed ({} probes)", s.probes),
                    other => serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                };
                match &s.message {
                    Some(m) => say(&format!("rule {}: {what}: {m}", s.rule)),
                    None => say(&format!("rule {}: {what}", s.rule)),
                }
            }
        }
        self.reported = statuses.to_vec();
        let tmp = self.status.with_extension("tmp");
        let body = serde_json::to_vec_pretty(statuses).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &self.status))
        {
            say(&format!(
                "cannot write statuses to {}: {e}",
                self.status.display()
            ));
        }
    }
}

/// The offline metrics file: the Prometheus text of every series, replaced whole (a temp
/// file in the same folder, then a rename), so a reader such as node_exporter's textfile
/// collector never sees half a file.
pub struct MetricsFile {
    path: PathBuf,
    /// Whether a write failed and was reported (reported once until one succeeds).
    failing: bool,
}

impl MetricsFile {
    /// Writes to `path`.
    pub fn new(path: PathBuf) -> MetricsFile {
        MetricsFile {
            path,
            failing: false,
        }
    }

    /// Replaces the file with the text of `series`, each of the agent's `service`.
    pub fn write<'a>(&mut self, service: &str, series: impl Iterator<Item = &'a MetricSeries>) {
        let text = render_prometheus(series.map(|s| (service, s)));
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path));
        match written {
            Ok(()) => self.failing = false,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !self.failing {
                    say(&format!(
                        "cannot write metrics to {}: {e} (set NONSTOP_METRICS to a writable file)",
                        self.path.display()
                    ));
                }
                self.failing = true;
            }
        }
    }
}
