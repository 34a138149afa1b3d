//! Shared helpers of the agent's end-to-end tests: build fixtures, run them under the agent.
#![allow(dead_code)]

use nonstop_model::Response;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// How a fixture is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `-C opt-level=0 -C debuginfo=2`.
    Debug,
    /// `-C opt-level=2 -C debuginfo=2`.
    Release,
}

pub fn fixture_source(name: &str) -> PathBuf {
    nonstop_testkit::fixture::source(env!("CARGO_MANIFEST_DIR"), name)
}

/// Compiles `tests/fixtures/NAME` (Rust with rustc, C with gcc) for the build kind, once
/// per content (the testkit caches it in the target dir).
pub fn build_fixture(name: &str, build: Build) -> PathBuf {
    let src = fixture_source(name);
    let flags: &[&str] = match (name.ends_with(".c"), build) {
        (true, Build::Debug) => &["-g", "-O0"],
        (true, Build::Release) => &["-g", "-O2"],
        (false, Build::Debug) => &["-C", "debuginfo=2", "-C", "opt-level=0"],
        (false, Build::Release) => &["-C", "debuginfo=2", "-C", "opt-level=2"],
    };
    nonstop_testkit::fixture::build(&src, flags).binary
}

/// The agent library (`target/<profile>/libnonstop_agent.so`), brought up to date first.
pub fn agent_library() -> PathBuf {
    nonstop_testkit::agent_library()
}

/// The line numbers of `// @mark NAME` comments in a fixture.
pub fn marks(name: &str) -> BTreeMap<String, u32> {
    nonstop_testkit::marks(&fixture_source(name))
}

/// A run of a program under the agent in offline mode.
pub struct Run {
    pub output: Output,
    pub responses: Vec<Response>,
    pub statuses: serde_json::Value,
    /// The metrics file (`NONSTOP_OUT` + `.prom`, the default), if the agent wrote one.
    pub metrics: Option<String>,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Rules that were armed: `armed`, `done`, or `rate-limited` (with a probe on every line
    /// the traps exceed the global CPU budget, and rules then say so).
    pub fn working_rules(&self) -> usize {
        self.statuses.as_array().map_or(0, |all| {
            all.iter()
                .filter(|s| {
                    ["armed", "done", "rate-limited"].contains(&s["status"].as_str().unwrap_or(""))
                })
                .count()
        })
    }

    pub fn status_of(&self, rule: &str) -> Option<&serde_json::Value> {
        self.statuses.as_array()?.iter().find(|s| s["rule"] == rule)
    }
}

/// One instrumented run at a time: on this 2-core machine parallel runs would starve each
/// other's agent threads, and the CPU budget would (rightly) drop hits the tests count.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Runs `program` with the agent preloaded and `rules` (raw text of the rules file).
pub fn run_with_rules(
    program: &Path,
    args: &[&str],
    rules: &str,
    extra_env: &[(&str, &str)],
) -> Run {
    let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let rules_path = dir.join("rules.json");
    let out = dir.join("responses.jsonl");
    let status = dir.join("status.json");
    std::fs::write(&rules_path, rules).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", agent_library())
        .env("NONSTOP_RULES", &rules_path)
        .env("NONSTOP_OUT", &out)
        .env("NONSTOP_STATUS", &status)
        .env_remove("NONSTOP_SERVER")
        .env_remove("NONSTOP_DISABLE");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    let responses = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad response line {l}: {e}")))
        .collect();
    let statuses = std::fs::read_to_string(&status)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut prom = out.into_os_string();
    prom.push(".prom");
    Run {
        output,
        responses,
        statuses,
        metrics: std::fs::read_to_string(prom).ok(),
    }
}

/// Runs `program` plainly, without the agent.
pub fn run_plain(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

pub fn tempdir() -> PathBuf {
    nonstop_testkit::tempdir("agent-run")
}

/// Lines `@MARK VAR VALUE` the fixture printed, grouped per occurrence of the mark:
/// `[(var → value text)]` one map per execution of the marked line.
pub fn printed(stdout: &str, mark: &str) -> Vec<BTreeMap<String, String>> {
    let mut runs: Vec<BTreeMap<String, String>> = Vec::new();
    let prefix = format!("@{mark} ");
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (var, value) = rest.split_once(' ').unwrap();
        if runs.last().is_none_or(|m| m.contains_key(var)) {
            runs.push(BTreeMap::new());
        }
        runs.last_mut()
            .unwrap()
            .insert(var.to_owned(), value.to_owned());
    }
    runs
}
