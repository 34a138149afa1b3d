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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Compiles `tests/fixtures/NAME` (Rust with rustc, C with gcc) once per build kind.
pub fn build_fixture(name: &str, build: Build) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = fixture_source(name);
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{stem}-{build:?}").to_lowercase());
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified().unwrap() >= s.modified().unwrap(),
        _ => false,
    };
    if fresh {
        return out;
    }
    let status = if name.ends_with(".c") {
        let opt = if build == Build::Debug { "-O0" } else { "-O2" };
        Command::new("gcc")
            .args(["-g", opt, "-o"])
            .arg(&out)
            .arg(&src)
            .status()
    } else {
        let opt = if build == Build::Debug {
            "opt-level=0"
        } else {
            "opt-level=2"
        };
        Command::new("rustc")
            .args(["--edition", "2021", "-C", "debuginfo=2", "-C", opt, "-o"])
            .arg(&out)
            .arg(&src)
            .status()
    };
    assert!(status.unwrap().success(), "building {name} failed");
    out
}

/// The agent library (`target/<profile>/libnonstop_agent.so`), brought up to date first:
/// cargo builds the library's `rlib` for these tests but does not always rebuild the
/// `cdylib` beside it when a dependency changed.
pub fn agent_library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "nonstop-agent",
                "--lib",
                "--target-dir",
            ])
            .arg(target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap();
            assert!(status.success(), "building the agent library failed");
            let lib = profile_dir.join("libnonstop_agent.so");
            assert!(lib.exists(), "{} missing after the build", lib.display());
            lib
        })
        .clone()
}

/// The line numbers of `// @mark NAME` comments in a fixture.
pub fn marks(name: &str) -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(fixture_source(name)).unwrap();
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(pos) = line.find("// @mark ") {
            out.insert(line[pos + 9..].trim().to_owned(), i as u32 + 1);
        }
    }
    out
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
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "agent-run-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
