//! Driving the agent from the program, for hosts that freeze it between requests (AWS
//! Lambda): [`flush`] sends what has been captured, [`refresh_rules`] brings the rule set up
//! to date, each within a bound the caller gives. Both ask the agent thread, which does the
//! work; the calling thread only waits, and never longer than its bound.
//!
//! Without a running agent both return at once.

use crate::{Agent, Channel};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Requests {
    flush_asked: u64,
    /// The caller's bound of the newest flush asked.
    flush_timeout: Duration,
    flush_done: u64,
    flush_ok: bool,
    refresh_asked: u64,
    refresh_done: u64,
}

static REQUESTS: Mutex<Requests> = Mutex::new(Requests {
    flush_asked: 0,
    flush_timeout: Duration::ZERO,
    flush_done: 0,
    flush_ok: false,
    refresh_asked: 0,
    refresh_done: 0,
});
static DONE: Condvar = Condvar::new();
/// Whether an online agent thread runs and answers requests: [`OFF`], [`STARTING`] (its
/// thread loads the debug info; a refresh may wait for it, within its bound) or [`RUNNING`].
static STATE: AtomicU8 = AtomicU8::new(OFF);
const OFF: u8 = 0;
const STARTING: u8 = 1;
const RUNNING: u8 = 2;
/// Whether its link pushes rules (WebSocket), so they are always fresh.
static PUSHED: AtomicBool = AtomicBool::new(false);
/// Whether a flush has nothing to do: the agent holds no rule and its HTTP link has nothing
/// queued (set by the agent thread after each turn; cleared before rules are armed and
/// whenever something is queued), so a Lambda invocation without rules pays no thread hand-off.
static QUIET: AtomicBool = AtomicBool::new(false);
/// When the rules were last known current: nanoseconds since [`epoch`], 0 = never.
static RULES_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn lock() -> std::sync::MutexGuard<'static, Requests> {
    REQUESTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends the responses, statuses and metric series captured until now to the server,
/// waiting at most `timeout`. Returns whether the server took them; `false` when the
/// server is away (they stay queued and go out later) or no agent runs.
pub fn flush(timeout: Duration) -> bool {
    if STATE.load(Ordering::Acquire) != RUNNING {
        // Starting: no probe is armed yet, so nothing was captured.
        return false;
    }
    if QUIET.load(Ordering::Acquire) {
        return true;
    }
    let until = Instant::now() + timeout;
    let mut r = lock();
    r.flush_asked += 1;
    r.flush_timeout = timeout;
    let asked = r.flush_asked;
    drop(r);
    crate::wake_agent();
    let mut r = lock();
    while r.flush_done < asked {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || STATE.load(Ordering::Acquire) == OFF {
            return false;
        }
        r = match DONE.wait_timeout(r, left) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
    r.flush_ok
}

/// Brings the rules up to date when they are older than `max_age`, waiting at most
/// `max_wait` for the server (a poll that takes longer finishes in the background and its
/// rules are armed then). Returns whether the rules are current on return.
///
/// Right after the agent started (its thread still reads the debug info), this waits for
/// it and its first poll, within the same bound: a cold start's first invocation then
/// meets the rules that were set before it.
pub fn refresh_rules(max_age: Duration, max_wait: Duration) -> bool {
    if STATE.load(Ordering::Acquire) == OFF {
        return false;
    }
    if PUSHED.load(Ordering::Relaxed) || rules_age().is_some_and(|a| a < max_age) {
        return true;
    }
    let until = Instant::now() + max_wait;
    let mut r = lock();
    r.refresh_asked += 1;
    let asked = r.refresh_asked;
    drop(r);
    crate::wake_agent();
    let mut r = lock();
    while r.refresh_done < asked {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || STATE.load(Ordering::Acquire) == OFF {
            return false;
        }
        r = match DONE.wait_timeout(r, left) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
    rules_age().is_some_and(|a| a < max_age)
}

/// How long ago the rules were last known current (`None`: never, or no agent runs).
pub fn rules_age() -> Option<Duration> {
    match RULES_AT.load(Ordering::Acquire) {
        0 => None,
        ns => Some(epoch().elapsed().saturating_sub(Duration::from_nanos(ns))),
    }
}

/// Something may be captured or is queued: the next flush asks the agent thread.
pub(crate) fn not_quiet() {
    QUIET.store(false, Ordering::Release);
}

/// The agent thread was started and will answer requests once it runs.
pub(crate) fn set_starting() {
    let _ = epoch();
    let _ = STATE.compare_exchange(OFF, STARTING, Ordering::AcqRel, Ordering::Acquire);
}

pub(crate) fn set_running(running: bool, pushed: bool) {
    let _ = epoch();
    PUSHED.store(pushed, Ordering::Relaxed);
    STATE.store(if running { RUNNING } else { OFF }, Ordering::Release);
    if !running {
        DONE.notify_all();
    }
}

/// The agent thread's state for requests in progress.
#[derive(Default)]
pub(crate) struct Turn {
    /// A refresh being answered: (its generation, the link's poll generation to wait for).
    refresh: Option<(u64, u64)>,
    /// The link's poll generation seen last.
    polled: u64,
    /// The link's count of rule fetches seen last.
    fetched: u64,
}

/// One turn of the agent thread: answers the requests asked since the last turn.
pub(crate) fn turn(state: &mut Turn, agent: &mut Agent, channel: &mut Channel) {
    let Channel::Http(link) = channel else {
        return;
    };
    let (flush, timeout, refresh) = {
        let r = lock();
        (
            (r.flush_asked > r.flush_done).then_some(r.flush_asked),
            r.flush_timeout,
            (r.refresh_asked > r.refresh_done).then_some(r.refresh_asked),
        )
    };
    if let Some(asked) = refresh
        && state.refresh.is_none_or(|(gen_, _)| gen_ < asked)
    {
        state.refresh = Some((asked, link.refresh()));
    }
    let (polled, fetched) = (link.polled(), link.fetched());
    if polled != state.polled || fetched != state.fetched {
        state.polled = polled;
        // A poll finished: arm what it brought before anyone waits longer.
        if let Some(rules) = link.latest_rules() {
            agent.sync(rules);
        }
        if fetched != state.fetched {
            state.fetched = fetched;
            let ns = epoch().elapsed().as_nanos().max(1) as u64;
            RULES_AT.store(ns, Ordering::Release);
        }
        if let Some(statuses) = agent.check() {
            link.send_status(statuses);
        }
        if let Some((asked, wanted)) = state.refresh
            && polled >= wanted
        {
            state.refresh = None;
            lock().refresh_done = asked;
            DONE.notify_all();
        }
    }
    if let Some(asked) = flush {
        let hits = agent.drain();
        if !hits.is_empty() {
            let responses = agent.respond(hits);
            if !responses.is_empty() {
                link.send_responses(responses);
            }
        }
        if let Some(statuses) = agent.check() {
            link.send_status(statuses);
        }
        let update = agent.take_metrics();
        if !update.is_empty() {
            link.forget_metrics(&update.removed_rules);
            link.send_metrics(update.changed);
        }
        let ok = link.flush(timeout);
        let mut r = lock();
        r.flush_done = asked;
        r.flush_ok = ok;
        drop(r);
        DONE.notify_all();
    }
    if !agent.holds_rules() && link.idle() {
        QUIET.store(true, Ordering::Release);
    }
}
