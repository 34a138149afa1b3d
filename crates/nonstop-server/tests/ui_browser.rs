//! The web IDE in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`web/tests/ide.test.mjs`), against a real server on loopback with a local-folder
//! source, a Git repository served by `git daemon`, and agents speaking the wire protocol
//! over real WebSockets.
//!
//! Needs what `web/tests/setup.sh` installs (chromium, node, playwright-core). Without it
//! the test says so and passes, unless `NONSTOP_REQUIRE_BROWSER=1` (CI sets it). The
//! screenshot goes to `docs/ide.png` with `NONSTOP_UPDATE_SCREENSHOT=1`, else under the
//! target folder.

mod common;

use common::{FakeAgent, TestServer};
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, bucket_of};
use nonstop_model::{Action, AgentMessage, MetricKind, MetricSeries, ServerMessage};
use nonstop_server::sources::{GitSource, SourceSpec};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let web_tests = workspace().join("web/tests");
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("no /usr/bin/chromium".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    if !web_tests
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("no playwright-core in web/tests/node_modules".into());
    }
    if Command::new("git").arg("--version").output().is_err() {
        return Some("no git".into());
    }
    None
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const CART_RS: &str = r#"//! The shop's cart.
use std::collections::HashMap;

/// One line of a cart.
#[derive(Debug, Clone)]
pub struct Item {
    pub sku: String,
    pub price: u64,
}

pub struct Cart {
    items: Vec<Item>,
    owner: &'static str,
}

impl Cart {
    pub fn add(&mut self, item: Item, qty: u32) -> u64 {
        let total = item.price * u64::from(qty); // line 18
        self.items.push(item);
        println!("added {} for {}", qty, self.owner);
        total
    }
}

fn main() {
    let mut c = Cart { items: Vec::new(), owner: "ann" };
    let _ = c.add(Item { sku: "A-1".into(), price: 42 }, 1);
    let _ = HashMap::<u32, u32>::new();
}
"#;

const PAY_C: &str = r#"#include <stdio.h>
/* Payments. */
int pay(int cents, const char *who) {
    if (cents <= 0) return -1;
    printf("paid %d by %s\n", cents, who);
    return 0;
}
"#;

/// A folder source (`shop`) and a Git repository (`billing.git`, two commits, the second
/// adding `src/new.c`); returns (the repositories' base folder, the first commit).
fn fixtures(root: &Path) -> (PathBuf, String) {
    let shop = root.join("shop");
    std::fs::create_dir_all(shop.join("src")).unwrap();
    std::fs::write(shop.join("src/cart.rs"), CART_RS).unwrap();
    std::fs::write(
        shop.join("src/main.rs"),
        "mod cart;\n\nfn main() {\n    cart::main();\n}\n",
    )
    .unwrap();
    let mut big = String::new();
    for i in 1..=5000 {
        big.push_str(&format!(
            "pub fn f{i}(x: u64) -> u64 {{ x.wrapping_mul({i}) /* line {i} */ + \"s\".len() as u64 }}\n"
        ));
    }
    std::fs::write(shop.join("src/big.rs"), big).unwrap();
    std::fs::write(shop.join("src/load.rs"), "pub fn hot() {}\n").unwrap();
    std::fs::write(shop.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();

    let work = root.join("billing-work");
    std::fs::create_dir_all(work.join("src")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("src/pay.c"), PAY_C).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "pay"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(
        work.join("src/new.c"),
        "int added_later(void) { return 1; }\n",
    )
    .unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "new"]);
    let repos = root.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            repos.join("billing.git").to_str().unwrap(),
        ],
    );
    (repos, first)
}

/// `git daemon` on a free loopback port, serving `base`.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        // git daemon cannot report an ephemeral port: take a free one and hand it over.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                base.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent that behaves like an instrumented program with traffic: it reports every
/// rule armed and sends a hit for each about every 300 ms (metric rules: their series,
/// see [`metric_series`]); a rule at `src/load.rs` gets
/// 200 hits a second for 5 s instead (the load figure of the test).
fn run_agent(
    addr: SocketAddr,
    token: String,
    id: &str,
    service: &str,
    commit: Option<String>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (id, service) = (id.to_string(), service.to_string());
    std::thread::spawn(move || {
        let mut a = FakeAgent::open(addr, &token);
        let info = json!({"id": id, "service": service, "version": "1.4.2", "commit": commit,
            "host": "web-test", "pid": 4242, "labels": {"region": "eu"},
            "started": "2026-01-01T00:00:00Z"});
        a.send(&AgentMessage::Hello {
            agent: serde_json::from_value(info).unwrap(),
        });
        a.ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut rules: Vec<nonstop_model::Rule> = Vec::new();
        let mut n = 0u64;
        let mut load_started: Option<Instant> = None;
        let mut last_hit = Instant::now();
        let mut last_report: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match a.ws.read() {
                Ok(Message::Text(t)) => {
                    if let Ok(ServerMessage::Rules { rules: r }) = serde_json::from_str(&t) {
                        let statuses = r
                            .iter()
                            .map(|x| {
                                serde_json::from_value(
                                    json!({"rule": x.id, "status": "armed", "probes": 1}),
                                )
                                .unwrap()
                            })
                            .collect();
                        a.send(&AgentMessage::Status { statuses });
                        rules = r;
                    }
                }
                Ok(Message::Close(_)) => return,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            // Metric rules: their fixed series, reported about once a second (cumulative
            // values, so each report repeats the same numbers).
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_report = Some(Instant::now());
                let series: Vec<_> = rules.iter().flat_map(metric_series).collect();
                if !series.is_empty() {
                    a.send(&AgentMessage::Metrics { series });
                }
            }
            let mut batch = Vec::new();
            for r in rules.iter().filter(|r| r.action != Action::Metric) {
                let Some((file, line)) = r.at.rsplit_once(':') else {
                    continue;
                };
                let line: u32 = line.parse().unwrap_or(1);
                let count = if file.ends_with("load.rs") {
                    let started = *load_started.get_or_insert_with(Instant::now);
                    if started.elapsed() < Duration::from_secs(5) {
                        20
                    } else {
                        0
                    }
                } else if last_hit.elapsed() >= Duration::from_millis(300) {
                    1
                } else {
                    0
                };
                for _ in 0..count {
                    n += 1;
                    batch.push(hit(r, &id, &service, file, line, n));
                }
            }
            if last_hit.elapsed() >= Duration::from_millis(300) {
                last_hit = Instant::now();
            }
            if !batch.is_empty() {
                a.send(&AgentMessage::Responses {
                    responses: batch,
                    dropped: 0,
                });
                // 20 hits every 100 ms make 200 a second.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

/// What the agent reports for a metric rule, always the same numbers: a count of 5, or
/// with a tag 7 for `gold` and 3 for `silver`; a histogram of ten values from 0.2 to 1200
/// (sum 2280.7); a gauge that saw 3, 9 and 4.5 last.
fn metric_series(rule: &nonstop_model::Rule) -> Vec<MetricSeries> {
    let Some(m) = &rule.metric else {
        return Vec::new();
    };
    let one = |tags: BTreeMap<String, String>, values: &[f64]| {
        let mut buckets = Vec::new();
        if m.kind == MetricKind::Histogram {
            buckets = vec![0; HISTOGRAM_BOUNDS.len() + 1];
            for v in values {
                buckets[bucket_of(*v)] += 1;
            }
        }
        MetricSeries {
            rule: rule.id.clone(),
            name: m.name.clone(),
            kind: m.kind,
            tags,
            count: values.len() as u64,
            sum: if m.kind == MetricKind::Count {
                0.0
            } else {
                values.iter().sum()
            },
            last: (m.kind == MetricKind::Gauge).then(|| values[values.len() - 1]),
            buckets,
            updated: "2026-11-25T15:00:00Z".into(),
            overflow: 0,
        }
    };
    match m.kind {
        MetricKind::Count => match m.tags.keys().next() {
            Some(tag) => vec![
                one(BTreeMap::from([(tag.clone(), "gold".into())]), &[1.0; 7]),
                one(BTreeMap::from([(tag.clone(), "silver".into())]), &[1.0; 3]),
            ],
            None => vec![one(BTreeMap::new(), &[1.0; 5])],
        },
        MetricKind::Histogram => vec![one(
            BTreeMap::new(),
            &[0.2, 1.5, 2.0, 7.0, 40.0, 40.0, 90.0, 300.0, 600.0, 1200.0],
        )],
        MetricKind::Gauge => vec![one(BTreeMap::new(), &[3.0, 9.0, 4.5])],
    }
}

/// One hit at `file:line`, as an agent reports it: absolute paths from debug info,
/// a value tree with truncation, redaction and an unreadable value.
fn hit(
    rule: &nonstop_model::Rule,
    agent: &str,
    service: &str,
    file: &str,
    line: u32,
    n: u64,
) -> nonstop_model::Response {
    let total = 42 * (1 + n % 3);
    let message = rule.template.as_ref().map(|t| {
        t.replace("{total}", &total.to_string())
            .replace("{qty}", "1")
    });
    let abs = format!("/home/ci/shop/{file}");
    let response = json!({
        "rule": rule.id, "agent": agent, "service": service,
        "time": nonstop_server::clock::rfc3339(nonstop_server::clock::now_ms()), "thread": "worker-1",
        "location": {"file": abs, "line": line, "function": "shop::cart::Cart::add"},
        "message": message,
        "frames": [
            {"function": "shop::cart::Cart::add", "file": abs, "line": line},
            {"function": "shop::main", "file": "/home/ci/shop/src/main.rs", "line": 4},
            {"function": "… 2 runtime frames (std::panicking::catch_unwind)", "file": null, "line": null,
             "folded": [
                {"function": "std::panicking::catch_unwind", "file": null, "line": null},
                {"function": "std::rt::lang_start", "file": null, "line": null}
             ]}
        ],
        "locals": {
            "total": {"type": "u64", "value": total},
            "qty": {"type": "u32", "value": 1},
            "item": {"type": "shop::cart::Item", "value": {
                "sku": {"type": "alloc::string::String", "value": "A-1"},
                "price": {"type": "u64", "value": 42}
            }},
            "self": {"type": "&mut shop::cart::Cart", "value": {
                "items": {"type": "Vec<shop::cart::Item>", "truncated": true, "value": [
                    {"type": "shop::cart::Item", "value": {
                        "sku": {"type": "alloc::string::String", "value": "B-7"},
                        "price": {"type": "u64", "value": 5}}}
                ]},
                "owner": {"type": "&str", "value": "ann"},
                "api_token": {"type": "alloc::string::String", "value": null, "redacted": true}
            }},
            "spare": {"type": "u64", "value": null, "error": "optimized out"}
        }
    });
    let mut response: nonstop_model::Response = serde_json::from_value(response).unwrap();
    // Watch expressions are evaluated over these locals as a real agent does.
    let env = HitLocals(&response.locals);
    let watch = rule
        .watch
        .iter()
        .map(|w| {
            let value = match nonstop_expr::Expr::parse(w) {
                Ok(e) => e.eval_value(&env),
                Err(e) => nonstop_model::Value::error("?", e.to_string()),
            };
            (w.clone(), value)
        })
        .collect();
    response.watch = nonstop_model::Locals(watch);
    response
}

/// The locals of a fake hit, as expressions see them.
struct HitLocals<'a>(&'a nonstop_model::Locals);

impl nonstop_expr::Env for HitLocals<'_> {
    fn var(&self, name: &str) -> Option<&nonstop_model::Value> {
        self.0.get(name)
    }
    fn thread(&self) -> &str {
        "worker-1"
    }
    fn hit_count(&self) -> u64 {
        1
    }
}

#[test]
fn the_ide_creates_a_rule_shows_live_responses_and_says_what_is_wrong_in_place() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var_os("NONSTOP_REQUIRE_BROWSER").is_none(),
            "browser test required but {why}: run web/tests/setup.sh"
        );
        eprintln!("skipping the browser test: {why} (run web/tests/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (repos, first_commit) = fixtures(dir.path());
    let daemon = GitDaemon::start(&repos);
    let shop = dir.path().join("shop");
    let billing_url = format!("git://127.0.0.1:{}/billing.git", daemon.port);
    let data = dir.path().join("data");
    let s = TestServer::start_at(&data, "127.0.0.1:0".parse().unwrap(), |c| {
        c.sources = vec![
            ("shop".into(), SourceSpec::Folder { path: shop.clone() }),
            (
                "billing".into(),
                SourceSpec::Git(GitSource {
                    url: billing_url.clone(),
                    branch: Some("main".into()),
                    token: None,
                    subdir: None,
                }),
            ),
        ];
    });

    let stop = Arc::new(AtomicBool::new(false));
    let agents = [
        run_agent(
            s.addr,
            s.agent.clone(),
            "shop-7f3a",
            "shop",
            None,
            stop.clone(),
        ),
        run_agent(
            s.addr,
            s.agent.clone(),
            "billing-1",
            "billing",
            Some(first_commit.clone()),
            stop.clone(),
        ),
    ];

    // The README's screenshot is rewritten only when asked, so a test run leaves the tree clean.
    let screenshot = if std::env::var_os("NONSTOP_UPDATE_SCREENSHOT").is_some() {
        workspace().join("docs/ide.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ide.png")
    };
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let out = Command::new("node")
        .arg(workspace().join("web/tests/ide.test.mjs"))
        .env("NONSTOP_URL", s.url(""))
        .env("NONSTOP_TOKEN", &s.admin)
        .env("NONSTOP_SCREENSHOT", &screenshot)
        .env("NONSTOP_COMMIT", &first_commit)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        let _ = a.join();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed (output above)"
    );
    // What the browser did went through the API.
    let rules = s.get_json("/api/v1/rules");
    assert!(
        !rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"]["at"] == json!("src/cart.rs:18")),
        "the rule made in the UI was deleted in the UI"
    );
    drop(daemon);
}
