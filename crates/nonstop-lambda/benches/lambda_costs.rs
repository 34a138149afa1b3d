//! What nonstop costs a Lambda function, measured on the example function
//! (`examples/greeter.rs`) under the local Runtime and Extensions API emulator of the tests,
//! with the real `nonstop serve` and the real `nonstop lambda-extension` on loopback.
//!
//! - Cold start: the process started with its first event already queued; from the process
//!   start to the answer at the emulator, and from the event's hand-out by `/next` to the
//!   answer (what the first caller waits for). Medians of [`COLD_RUNS`] runs.
//! - Warm invocations: from `/next` handing the event out to the posted answer (what the
//!   caller waits for, p50 and p99), and the whole cycle per invocation (until the next event
//!   can start: the layer's flush and, with the extension, its shipping included), over
//!   [`WARM_RUNS`] invocations after a warm-up.
//!
//! Run: `cargo bench -p nonstop-lambda --bench lambda_costs` (release), or
//! `cargo test -p nonstop-lambda --bench lambda_costs` (debug, with the tests' builds); it
//! prints a table and asserts nothing. `-- warm` measures the warm invocations only, and other
//! words keep the setups whose names hold them (`-- warm extension`).

#[path = "../tests/emulator/mod.rs"]
mod emulator;

use emulator::RuntimeApi;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FUNCTION: &str = "greeter-fn";
const COLD_RUNS: usize = 15;
const WARM_RUNS: u64 = 1000;
const WARM_UP: u64 = 20;

fn event(k: u64) -> Vec<u8> {
    let items: Vec<u32> = (0..=k % 4).map(|i| (100 * k + i) as u32).collect();
    serde_json::json!({"customer": format!("c{k}"), "items": items})
        .to_string()
        .into_bytes()
}

struct Setup {
    name: &'static str,
    args: &'static [&'static str],
    /// Points the agent at the server itself.
    direct: bool,
    extension: bool,
    rule: bool,
}

struct Bench {
    dir: PathBuf,
    server: nonstop_testkit::ServerProcess,
    admin: String,
    agent: String,
}

impl Bench {
    fn function(&self, api: &RuntimeApi, s: &Setup, file: &Path) -> nonstop_testkit::ChildGuard {
        let mut cmd = Command::new(self.dir.join("examples/greeter"));
        cmd.args(s.args)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", &api.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "7")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("NONSTOP_EXTENSION_FILE", file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if s.direct {
            cmd.env("NONSTOP_SERVER", &self.server.url)
                .env("NONSTOP_TOKEN", &self.agent);
        }
        nonstop_testkit::ChildGuard(cmd.spawn().unwrap())
    }

    /// Starts the extension and waits until it is ready for events; also says how long that took.
    fn extension(&self, api: &RuntimeApi, file: &Path) -> (nonstop_testkit::ChildGuard, Duration) {
        let started = Instant::now();
        let child = Command::new(self.dir.join("nonstop"))
            .arg("lambda-extension")
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", &api.address)
            .env("NONSTOP_SERVER", &self.server.url)
            .env("NONSTOP_TOKEN", &self.agent)
            .env("NONSTOP_EXTENSION_FILE", file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        api.wait_for_extension_next_call(1, Duration::from_secs(30));
        (nonstop_testkit::ChildGuard(child), started.elapsed())
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(self.dir.join("nonstop"))
            .args(args)
            .args(["--server", &self.server.url, "--token", &self.admin])
            .output()
            .unwrap();
        assert!(out.status.success(), "nonstop {args:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn rm_all_rules(&self) {
        let rules: serde_json::Value =
            serde_json::from_str(&self.cli(&["rules", "list", "--json"])).unwrap();
        for r in rules.as_array().into_iter().flatten() {
            let id = r["rule"]["id"].as_str().expect("a rule view has rule.id");
            self.cli(&["rules", "rm", id]);
        }
        let left: serde_json::Value =
            serde_json::from_str(&self.cli(&["rules", "list", "--json"])).unwrap();
        assert_eq!(left, serde_json::json!([]), "every rule removed");
    }

    /// Adds the log rule (on the end of `price`, a line that keeps code in a release build,
    /// where `priced` has none) and invokes the function until an agent says it is armed: with the
    /// extension, the agent's status leaves only while an invocation runs (between events the
    /// environment counts as frozen), as on Lambda.
    fn add_log_rule_and_wait(&self, mut invoke: impl FnMut()) {
        let at = format!(
            "greeter.rs:{}",
            nonstop_testkit::marks(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/greeter.rs")
            )["price_end"]
        );
        let id = self
            .cli(&[
                "rules",
                "add",
                &at,
                "--service",
                FUNCTION,
                "--log",
                "priced {items:?}",
                "--rate",
                "100000/s",
            ])
            .trim()
            .to_owned();
        nonstop_testkit::wait_for("the rule armed", Duration::from_secs(30), || {
            invoke();
            let v: serde_json::Value =
                serde_json::from_str(&self.cli(&["rules", "show", &id, "--json"])).unwrap();
            let armed = v["agents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["status"] == "armed"));
            armed.then_some(())
        });
    }
}

/// CPU time the process has run, all its threads, in ns (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q) as usize]
}

fn main() {
    let dir = emulator::side_build();
    let data = nonstop_testkit::tempdir("lambda-bench");
    let server = nonstop_testkit::ServerProcess::start(
        &dir.join("nonstop"),
        nonstop_testkit::free_port(),
        &data,
        &[],
    );
    let bench = Bench {
        admin: server.token("admin"),
        agent: server.token("agent"),
        server,
        dir,
    };
    let none = nonstop_testkit::tempdir("lambda-bench-noext").join("nonstop-extension");

    // `-- warm` skips the cold starts; any other word keeps only the setups it is part of.
    let cold_too = !std::env::args().any(|a| a == "warm");
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "warm" && !a.starts_with('-'))
        .collect();
    let chosen = |s: &&Setup| words.iter().all(|w| s.name.contains(w.as_str()));
    println!("cold start (medians of {COLD_RUNS})");
    let cold = [
        Setup {
            name: "without the layer",
            args: &["--without-nonstop"],
            direct: false,
            extension: false,
            rule: false,
        },
        Setup {
            name: "layer, no NONSTOP_SERVER (passes through)",
            args: &[],
            direct: false,
            extension: false,
            rule: false,
        },
        Setup {
            name: "layer, to the server (first poll)",
            args: &[],
            direct: true,
            extension: false,
            rule: false,
        },
        Setup {
            name: "layer + extension (first poll via the extension)",
            args: &[],
            direct: false,
            extension: true,
            rule: false,
        },
    ];
    for s in cold.iter().filter(|_| cold_too).filter(chosen) {
        let (mut total, mut first, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..COLD_RUNS {
            let api = RuntimeApi::start();
            let file = nonstop_testkit::tempdir("lambda-bench-ext").join("nonstop-extension");
            let ext = s
                .extension
                .then(|| bench.extension(&api, &file))
                .map(|(e, took)| {
                    ready.push(took);
                    e
                });
            let id = api.invoke(&event(3));
            let started = Instant::now();
            let function = bench.function(&api, s, if s.extension { &file } else { &none });
            let outcome = api.outcome(&id, Duration::from_secs(30));
            total.push(outcome.posted_at - started);
            first.push(outcome.posted_at - outcome.handed_at);
            function.kill();
            if let Some(e) = ext {
                e.kill();
            }
        }
        println!(
            "  {:<52} start→answer {:>10.2?}   /next→answer {:>10.2?}",
            s.name,
            median(total),
            median(first)
        );
        if !ready.is_empty() {
            println!(
                "  {:<52} extension start→ready for events {:>10.2?}",
                "",
                median(ready)
            );
        }
    }

    println!("warm invocations ({WARM_RUNS} after {WARM_UP} warm-up)");
    let warm = [
        Setup {
            name: "without the layer",
            args: &["--without-nonstop"],
            direct: false,
            extension: false,
            rule: false,
        },
        Setup {
            name: "layer to the server, no rule",
            args: &[],
            direct: true,
            extension: false,
            rule: false,
        },
        Setup {
            name: "layer to the server, one log rule",
            args: &[],
            direct: true,
            extension: false,
            rule: true,
        },
        Setup {
            name: "layer + extension, no rule",
            args: &[],
            direct: false,
            extension: true,
            rule: false,
        },
        Setup {
            name: "layer + extension, one log rule",
            args: &[],
            direct: false,
            extension: true,
            rule: true,
        },
    ];
    for s in warm.iter().filter(chosen) {
        bench.rm_all_rules();
        let api = RuntimeApi::start();
        let file = nonstop_testkit::tempdir("lambda-bench-ext").join("nonstop-extension");
        let ext = s.extension.then(|| bench.extension(&api, &file).0);
        let function = bench.function(&api, s, if s.extension { &file } else { &none });
        let mut k = 0;
        let invoke = |k: &mut u64| {
            let id = api.invoke(&event(*k));
            *k += 1;
            api.outcome(&id, Duration::from_secs(30))
        };
        invoke(&mut k);
        if s.rule {
            bench.add_log_rule_and_wait(|| {
                invoke(&mut k);
            });
        }
        for _ in 0..WARM_UP {
            invoke(&mut k);
        }
        let mut answer = Vec::new();
        let cpu_before = (cpu_ns(function.id()), ext.as_ref().map(|e| cpu_ns(e.id())));
        let started = Instant::now();
        for _ in 0..WARM_RUNS {
            let o = invoke(&mut k);
            answer.push(o.posted_at - o.handed_at);
        }
        api.wait_for_next_call(k + 1, Duration::from_secs(30));
        if s.extension {
            api.wait_for_extension_next_call(k + 1, Duration::from_secs(30));
        }
        let cycle = started.elapsed() / WARM_RUNS as u32;
        let per_call = |before: u64, after: u64| {
            Duration::from_nanos(after.saturating_sub(before) / WARM_RUNS)
        };
        let function_cpu = per_call(cpu_before.0, cpu_ns(function.id()));
        println!(
            "  {:<52} /next→answer p50 {:>9.2?} p99 {:>9.2?}   cycle {:>9.2?}   CPU/invocation: function {:>9.2?}{}",
            s.name,
            quantile(&mut answer, 0.5),
            quantile(&mut answer, 0.99),
            cycle,
            function_cpu,
            match (&ext, cpu_before.1) {
                (Some(e), Some(before)) =>
                    format!(", extension {:>9.2?}", per_call(before, cpu_ns(e.id()))),
                _ => String::new(),
            }
        );
        function.kill();
        if let Some(e) = ext {
            e.kill();
        }
    }
}
