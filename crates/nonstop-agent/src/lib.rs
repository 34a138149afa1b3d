//! The nonstop agent: breakpoints that don't stop, inside your process.
//!
//! # Overview
//! - [`start`]: starts the agent thread (call it first thing in `main`). Loaded with
//!   `LD_PRELOAD=libnonstop_agent.so`, the agent starts itself before `main` instead.
//! - [`Config`]: the environment variables that configure it (see [`config`]).
//! - Offline mode: `NONSTOP_RULES=rules.json` (a JSON array of rules) and
//!   `NONSTOP_OUT=responses.jsonl` (one response a line). Rules in the file when the
//!   program starts are armed before `start` returns, so the first executions are caught;
//!   later edits of the file are picked up within a second. Metric rules write their
//!   series in Prometheus text format to `NONSTOP_METRICS` (default `NONSTOP_OUT.prom`).
//!
//! # Example
//! ```no_run
//! // First thing in `main`:
//! nonstop_agent::start();
//! // … the program, unchanged …
//! ```
//!
//! The agent never harms the program: it never panics into it, never blocks its threads
//! (they only meet the probe engine's lock-free trap path), and a configuration it cannot
//! use turns it off with a message on stderr.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
pub mod config;
pub mod connection;
mod drive;
mod limits;
pub mod link_http;
mod metrics;
mod offline;
pub mod redact;

pub use config::{Config, LinkKind};
pub use drive::{flush, refresh_rules, rules_age};

/// Whether the agent takes `rule` as it stands (shape, max hits, expiry, rate), before
/// any debug info is looked at: what an offline rules file is held to. The server holds
/// rules to the same checks (the model's [`Rule::check_shape`](nonstop_model::Rule)).
pub fn check_rule(rule: &nonstop_model::Rule) -> Result<(), String> {
    limits::RuleLimits::of(rule).map(|_| ())
}

use agent::{Agent, Identity};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

static STARTED: OnceLock<bool> = OnceLock::new();

/// Set by the exit hook: the agent thread writes out what it holds, then says so.
static EXITING: AtomicBool = AtomicBool::new(false);
static FLUSHED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// The agent thread, so the exit flush can wake it from an idle nap at once.
static AGENT_THREAD: std::sync::OnceLock<std::thread::Thread> = std::sync::OnceLock::new();

/// How often rules and statuses are looked at. The agent thread otherwise sleeps until a
/// hit wakes it (the engine's eventfd), or a site taken out by the budget is due back.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long the exiting program waits for the agent's last responses at most.
const EXIT_FLUSH_WAIT: Duration = Duration::from_millis(1000);
/// How often changed metric series are reported (and at exit). Values are cumulative, so a
/// longer period only delays them; a shorter one costs more messages or file writes.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// At exit: let the agent thread write the hits still in flight, waiting a bounded time.
extern "C" fn flush_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        EXITING.store(true, Ordering::Release);
        if let Some(agent) = AGENT_THREAD.get() {
            agent.unpark();
        }
        if let Some(engine) = nonstop_probe::Engine::running() {
            engine.wake();
        }
        let (lock, done) = &FLUSHED;
        if let Ok(guard) = lock.lock() {
            let _ = done.wait_timeout_while(guard, EXIT_FLUSH_WAIT, |flushed| !*flushed);
        }
    });
}

/// Starts the agent once per process; later calls do nothing. Returns whether it runs.
///
/// Never panics and never fails the program: problems are reported on stderr (prefixed
/// `nonstop:`) and leave the agent off.
pub fn start() -> bool {
    start_with(|_| {})
}

/// [`start`] with the configuration read from the environment and then changed by
/// `adjust` (e.g. a service name a platform gives, or the HTTP link). Only the first call
/// of [`start`] or `start_with` in a process counts.
pub fn start_with(adjust: impl FnOnce(&mut Config)) -> bool {
    *STARTED.get_or_init(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_inner(adjust)))
            .unwrap_or_else(|_| {
                say("the agent failed to start (internal error); the program runs without it");
                false
            })
    })
}

/// Prints one line for a person on stderr.
pub(crate) fn say(message: &str) {
    eprintln!("nonstop: {message}");
}

/// Wakes the agent thread from its nap: it sleeps on the engine's eventfd (and, before the
/// engine exists, parked).
pub(crate) fn wake_agent() {
    if let Some(agent) = AGENT_THREAD.get() {
        agent.unpark();
    }
    if let Some(engine) = nonstop_probe::Engine::running() {
        engine.wake();
    }
}

fn start_inner(adjust: impl FnOnce(&mut Config)) -> bool {
    if preloaded_library_is_loaded() && !this_copy_is_the_preloaded_library() {
        // The preloaded library runs the agent for this process.
        return false;
    }
    let (mut config, warnings) = Config::from_env();
    adjust(&mut config);
    for w in &warnings {
        say(w);
    }
    if config.disabled {
        return false;
    }
    if let Some(rules_path) = config.rules.clone() {
        // Offline: arm the rules present at start before the program goes on.
        let mut agent = match build_agent(&config) {
            Ok(a) => a,
            Err(message) => {
                say(&format!("{message}; the agent stays off"));
                return false;
            }
        };
        let mut channel = Channel::Offline(
            offline::RulesFile::new(rules_path),
            offline::ResponseFile::new(config.out.clone(), config.status.clone()),
            offline::MetricsFile::new(config.metrics.clone()),
        );
        if let Some(rules) = channel.poll_rules() {
            agent.sync(rules);
        }
        if let Some(statuses) = agent.check() {
            channel.statuses(statuses);
        }
        return spawn_agent_thread(move || Some((agent, channel)));
    }
    let Some(server) = config.server.clone() else {
        say("no NONSTOP_SERVER or NONSTOP_RULES set; the agent stays idle");
        return false;
    };
    // Online: everything, debug info included, happens on the agent thread; the program
    // does not wait for the server or for its own debug info.
    if config.link == LinkKind::Http {
        drive::set_starting();
    }
    spawn_agent_thread(move || {
        let agent = match build_agent(&config) {
            Ok(a) => a,
            Err(message) => {
                say(&format!("{message}; the agent stays off"));
                return None;
            }
        };
        let info = agent_info(&config, agent.id());
        if config.link == LinkKind::Http {
            let link = link_http::HttpLink::start(
                server,
                config.token.clone(),
                info,
                config.ca_cert.clone(),
                Box::new(wake_agent),
            );
            drive::set_running(true, false);
            return Some((agent, Channel::Http(link)));
        }
        drive::set_running(true, true);
        let link_config = connection::LinkConfig {
            server,
            token: config.token.clone(),
            info,
        };
        let link = match config.ca_cert.clone() {
            Some(ca) => connection::Link::start_trusting(link_config, ca),
            None => connection::Link::start(link_config),
        };
        Some((agent, Channel::Online(link)))
    })
}

/// Where rules come from and responses go.
enum Channel {
    /// A rules file, a responses file and a metrics file.
    Offline(
        offline::RulesFile,
        offline::ResponseFile,
        offline::MetricsFile,
    ),
    /// The server, over a WebSocket.
    Online(connection::Link),
    /// The server, over HTTP.
    Http(link_http::HttpLink),
}

impl Channel {
    fn poll_rules(&mut self) -> Option<Vec<nonstop_model::Rule>> {
        match self {
            Channel::Offline(file, _, _) => file.poll(),
            Channel::Online(link) => link.latest_rules(),
            Channel::Http(link) => link.latest_rules(),
        }
    }

    fn responses(&mut self, responses: Vec<nonstop_model::Response>) {
        match self {
            Channel::Offline(_, out, _) => out.responses(&responses),
            Channel::Online(link) => link.send_responses(responses),
            Channel::Http(link) => link.send_responses(responses),
        }
    }

    fn statuses(&mut self, statuses: Vec<nonstop_model::RuleStatus>) {
        match self {
            Channel::Offline(_, out, _) => out.statuses(&statuses),
            Channel::Online(link) => link.send_status(statuses),
            Channel::Http(link) => link.send_status(statuses),
        }
    }

    /// Reports what changed in the agent's metric series since the last call.
    fn metrics(&mut self, agent: &mut Agent) {
        let update = agent.take_metrics();
        if update.is_empty() {
            return;
        }
        match self {
            // The file holds every series, so it is rewritten whole.
            Channel::Offline(_, _, file) => file.write(agent.service(), agent.all_series()),
            Channel::Online(link) => {
                link.forget_metrics(&update.removed_rules);
                link.send_metrics(update.changed);
            }
            Channel::Http(link) => {
                link.forget_metrics(&update.removed_rules);
                link.send_metrics(update.changed);
            }
        }
    }
}

/// Loads what the agent needs about this process: the engine, the executable's debug info,
/// where it is loaded, and the modules for stack traces.
fn build_agent(config: &Config) -> Result<Agent, String> {
    let engine = nonstop_probe::Engine::init(nonstop_probe::EngineConfig {
        budget: config.budget_percent / 100.0,
        ..nonstop_probe::EngineConfig::default()
    })
    .map_err(|e| format!("cannot start the probe engine: {e}"))?;
    // Hot sites go out within a wake-up, whatever the agent thread is busy with.
    engine.start_budget_thread();
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find the executable (/proc/self/exe: {e})"))?;
    let debug = Arc::new(nonstop_debuginfo::DebugInfo::load(&exe).map_err(|e| e.to_string())?);
    let bias = debug
        .load_bias_in(None)
        .map_err(|e| format!("cannot find where {} is loaded: {e}", exe.display()))?;
    // `dyn Trait` values are shown as their concrete type, found by vtable address.
    debug.set_load_bias(bias);
    let stacks = nonstop_debuginfo::Stacks::new_for_self()
        .map_err(|e| format!("cannot read this process's modules for stack traces: {e}"))?;
    stacks.share_debug_info(&exe, Arc::clone(&debug));
    let identity = Identity {
        agent: agent_id(
            &hostname(),
            std::process::id(),
            nonstop_probe::monotonic_ns() & 0xffff,
        ),
        service: config.service.clone(),
    };
    let redactor = redact::Redactor::new(config.redact.clone());
    Ok(Agent::new(identity, debug, bias, stacks, engine, redactor))
}

/// `{host}-{pid}-{hex}` as the server accepts ids: at most 64 of `[A-Za-z0-9_.-]`, so the
/// host name is cut to fit and its other characters become `-`.
fn agent_id(host: &str, pid: u32, hex: u64) -> String {
    let tail = format!("-{pid}-{hex:04x}");
    let room = 64usize.saturating_sub(tail.len());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    format!("{host}{tail}")
}

fn agent_info(config: &Config, id: &str) -> nonstop_model::wire::AgentInfo {
    nonstop_model::wire::AgentInfo {
        id: id.to_owned(),
        service: config.service.clone(),
        version: config.version.clone(),
        commit: config.commit.clone(),
        host: hostname(),
        pid: std::process::id(),
        labels: config.labels.clone(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

/// Starts the agent thread, which first runs `setup`; registers the exit flush.
fn spawn_agent_thread(setup: impl FnOnce() -> Option<(Agent, Channel)> + Send + 'static) -> bool {
    let spawned = std::thread::Builder::new()
        .name("nonstop-agent".into())
        .spawn(move || {
            let _ = AGENT_THREAD.set(std::thread::current());
            let run = std::panic::AssertUnwindSafe(|| {
                if let Some((mut agent, mut channel)) = setup() {
                    run(&mut agent, &mut channel);
                }
            });
            if std::panic::catch_unwind(run).is_err() {
                if let Some(engine) = nonstop_probe::Engine::running() {
                    engine.disarm_all();
                }
                say("the agent stopped after an internal error; its probes are disarmed");
            }
            // Whatever happened, an exiting program must not wait for this thread.
            drive::set_running(false, false);
            mark_flushed();
        });
    if let Err(e) = spawned {
        say(&format!("cannot start the agent thread: {e}"));
        return false;
    }
    nonstop_probe::at_exit(flush_at_exit);
    true
}

fn mark_flushed() {
    let (lock, done) = &FLUSHED;
    if let Ok(mut flushed) = lock.lock() {
        *flushed = true;
    }
    done.notify_all();
}

fn run(agent: &mut Agent, channel: &mut Channel) {
    agent.warm_up();
    let mut last_check = Instant::now();
    let mut last_metrics = Instant::now();
    let mut driven = drive::Turn::default();
    loop {
        drive::turn(&mut driven, agent, channel);
        let exiting = EXITING.load(Ordering::Acquire);
        let hits = agent.drain();
        let busy = !hits.is_empty();
        if busy {
            let responses = agent.respond(hits);
            if !responses.is_empty() {
                channel.responses(responses);
            }
        }
        let due_back = agent.enforce_budget();
        if exiting || last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if !exiting && let Some(rules) = channel.poll_rules() {
                agent.sync(rules);
            }
            if let Some(statuses) = agent.check() {
                channel.statuses(statuses);
            }
        }
        if exiting || last_metrics.elapsed() >= METRICS_EVERY {
            last_metrics = Instant::now();
            channel.metrics(agent);
        }
        if exiting {
            match channel {
                Channel::Online(link) => link.flush(EXIT_FLUSH_WAIT / 2),
                Channel::Http(link) => {
                    link.flush(EXIT_FLUSH_WAIT / 2);
                }
                Channel::Offline(..) => {}
            }
            return;
        }
        if !busy {
            // Sleeps without using the CPU until a hit, a site asking to go out, the exit
            // flush (`Engine::wake`), or the next timer: the status check, the metrics
            // report, or a site due back.
            let mut timeout = CHECK_EVERY
                .saturating_sub(last_check.elapsed())
                .min(METRICS_EVERY.saturating_sub(last_metrics.elapsed()));
            if let Some(d) = due_back {
                timeout = timeout.min(d);
            }
            agent.wait(timeout.max(Duration::from_millis(1)));
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

// Loaded with LD_PRELOAD (as `nonstop run` does), the agent starts itself before `main`.
// Linked into a Rust program, it waits for `start()`.
nonstop_probe::on_load!(preload_start);

fn preload_start() {
    if preloaded_library_is_loaded() && this_copy_is_the_preloaded_library() {
        start();
    }
}

/// Whether `LD_PRELOAD` names the agent library.
fn preloaded_library_is_loaded() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("libnonstop_agent"))
}

/// Whether this copy of the agent's code is the one in `libnonstop_agent.so` (and not a copy
/// linked into the program): a program that links the agent and is also run with it
/// preloaded must get one agent, not two fighting over the same traps.
fn this_copy_is_the_preloaded_library() -> bool {
    let here = preload_start as *const () as usize as u64;
    let Ok(maps) = nonstop_debuginfo::maps::read(None) else {
        return false;
    };
    nonstop_debuginfo::maps::containing(&maps, here)
        .is_some_and(|m| m.name.ends_with("libnonstop_agent.so"))
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn a_long_host_name_is_cut_so_the_id_fits_in_64() {
        let host = "build-runner-".repeat(8);
        let id = super::agent_id(&host, 4_194_304, 0xbeef);
        assert_eq!(id.len(), 64);
        assert_eq!(id, format!("{}-4194304-beef", &host[..51]));
        assert_eq!(super::agent_id("h", 7, 0x1), "h-7-0001");
        assert_eq!(super::agent_id("höst", 7, 0x1), "h-st-7-0001");
    }
}
