//! The nonstop agent: breakpoints that don't stop, inside your process.
//!
//! # Overview
//! - [`start`]: starts the agent thread (call it first thing in `main`). Loaded with
//!   `LD_PRELOAD=libnonstop_agent.so`, the agent starts itself before `main` instead.
//! - [`Config`]: the environment variables that configure it (see [`config`]).
//! - Offline mode: `NONSTOP_RULES=rules.json` (a JSON array of rules) and
//!   `NONSTOP_OUT=responses.jsonl` (one response a line). Rules in the file when the
//!   program starts are armed before `start` returns, so the first executions are caught;
//!   later edits of the file are picked up within a second.
//!
//! # Example
//! ```no_run
//! fn main() {
//!     nonstop_agent::start();
//!     // … the program, unchanged …
//! }
//! ```
//!
//! The agent never harms the program: it never panics into it, never blocks its threads
//! (they only meet the probe engine's lock-free trap path), and a configuration it cannot
//! use turns it off with a message on stderr.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
pub mod config;
mod limits;
mod offline;
pub mod redact;
pub mod template;

pub use config::Config;

use agent::{Agent, Identity};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

static STARTED: OnceLock<bool> = OnceLock::new();

/// Set by the exit hook: the agent thread writes out what it holds, then says so.
static EXITING: AtomicBool = AtomicBool::new(false);
static FLUSHED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// How long the exiting program waits for the agent's last responses at most.
const EXIT_FLUSH_WAIT: Duration = Duration::from_millis(1000);

/// At exit: let the agent thread write the hits still in flight, waiting a bounded time.
extern "C" fn flush_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        EXITING.store(true, Ordering::Release);
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
    *STARTED.get_or_init(|| {
        std::panic::catch_unwind(start_inner).unwrap_or_else(|_| {
            say("the agent failed to start (internal error); the program runs without it");
            false
        })
    })
}

/// Prints one line for a person on stderr.
pub(crate) fn say(message: &str) {
    eprintln!("nonstop: {message}");
}

fn start_inner() -> bool {
    let (config, warnings) = Config::from_env();
    for w in &warnings {
        say(w);
    }
    if config.disabled {
        return false;
    }
    let Some(rules_path) = config.rules.clone() else {
        if config.server.is_none() {
            say("no NONSTOP_RULES or NONSTOP_SERVER set; the agent stays idle");
        }
        return false;
    };
    let engine = match nonstop_probe::Engine::get() {
        Ok(e) => e,
        Err(e) => {
            say(&format!(
                "cannot start the probe engine: {e}; the agent stays off"
            ));
            return false;
        }
    };
    let exe = match std::fs::read_link("/proc/self/exe") {
        Ok(p) => p,
        Err(e) => {
            say(&format!(
                "cannot find the executable (/proc/self/exe: {e}); the agent stays off"
            ));
            return false;
        }
    };
    let debug = match nonstop_debuginfo::DebugInfo::load(&exe) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            say(&format!("{e}; the agent stays off"));
            return false;
        }
    };
    let bias = match debug.load_bias_in(None) {
        Ok(b) => b,
        Err(e) => {
            say(&format!(
                "cannot find where {} is loaded: {e}; the agent stays off",
                exe.display()
            ));
            return false;
        }
    };
    let stacks = match nonstop_debuginfo::Stacks::new_for_self() {
        Ok(s) => s,
        Err(e) => {
            say(&format!(
                "cannot read this process's modules for stack traces: {e}; the agent stays off"
            ));
            return false;
        }
    };
    stacks.share_debug_info(&exe, Arc::clone(&debug));
    let identity = Identity {
        agent: format!("{}-{}", hostname(), std::process::id()),
        service: config.service.clone(),
    };
    let redactor = redact::Redactor::new(config.redact.clone());
    let mut agent = Agent::new(identity, debug, bias, stacks, engine, redactor);
    let mut source = offline::RulesFile::new(rules_path);
    let mut sink = offline::ResponseFile::new(config.out.clone(), config.status.clone());
    // Arm the rules present at start before the program goes on.
    if let Some(rules) = source.poll() {
        agent.sync(rules);
    }
    if let Some(statuses) = agent.check() {
        sink.statuses(&statuses);
    }
    let spawned = std::thread::Builder::new()
        .name("nonstop-agent".into())
        .spawn(move || {
            let run =
                std::panic::AssertUnwindSafe(|| run_offline(&mut agent, &mut source, &mut sink));
            if std::panic::catch_unwind(run).is_err() {
                say("the agent stopped after an internal error; its probes are disarmed");
            }
        });
    if let Err(e) = spawned {
        say(&format!("cannot start the agent thread: {e}"));
        return false;
    }
    nonstop_probe::at_exit(flush_at_exit);
    true
}

fn run_offline(
    agent: &mut Agent,
    source: &mut offline::RulesFile,
    sink: &mut offline::ResponseFile,
) {
    agent.warm_up();
    let mut last_check = Instant::now();
    loop {
        let exiting = EXITING.load(Ordering::Acquire);
        let hits = agent.drain();
        let busy = !hits.is_empty();
        if busy {
            let responses = agent.respond(hits);
            sink.responses(&responses);
        }
        if exiting || last_check.elapsed() >= Duration::from_millis(200) {
            last_check = Instant::now();
            if !exiting && let Some(rules) = source.poll() {
                agent.sync(rules);
            }
            if let Some(statuses) = agent.check() {
                sink.statuses(&statuses);
            }
        }
        if exiting {
            let (lock, done) = &FLUSHED;
            if let Ok(mut flushed) = lock.lock() {
                *flushed = true;
            }
            done.notify_all();
            return;
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
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
    let preloaded = std::env::var_os("LD_PRELOAD")
        .is_some_and(|v| v.to_string_lossy().contains("libnonstop_agent"));
    if preloaded {
        start();
    }
}
