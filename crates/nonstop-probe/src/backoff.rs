//! Taking a site out: the per-site state that lets the budget remove a trap, whatever kind
//! of patch the site uses.
//!
//! The trap path only *asks*: [`SiteBudget::request`] is one compare-and-swap, after which
//! the handler wakes the agent thread. The agent thread (in `Engine::enforce_budget`)
//! restores the original bytes, and puts the patch back after a back-off that starts at
//! [`FIRST_BACKOFF`] and doubles up to [`MAX_BACKOFF`]; a site that then stays in for a
//! calm window (the budget's window) without asking to go out starts again from the first
//! back-off. Everything here but `request` and `pending` runs on the agent thread, under
//! the engine's arming lock; the fields are atomics so that [`SiteBudget::stats`] and the
//! trap path can read them without that lock.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// The first back-off of a site taken out.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Traps refused by a probe's own rate limit, since the site went in, after which the site
/// is taken out (each refused trap costs the program a trap and captures nothing).
pub const REFUSED_BEFORE_OUT: u64 = 200;

const REASON_NONE: u8 = 0;
const REASON_BUDGET: u8 = 1;
const REASON_RATE: u8 = 2;

/// Why a site was taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutReason {
    /// Traps (handler time plus the kernel's trap cost) exceeded the global CPU budget.
    Budget,
    /// The site trapped far more often than the probe's rate limit lets hits through.
    Rate,
}

/// How a site has been sampled since it was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sampling {
    /// The site is out now (original bytes in place, no traps).
    pub out: bool,
    /// Times the site was taken out.
    pub times_out: u64,
    /// Time the site spent out (including the current period).
    pub out_time: Duration,
    /// Time the site spent in (patched, trapping) since it was armed.
    pub in_time: Duration,
    /// Why it was last taken out.
    pub reason: Option<OutReason>,
    /// The back-off in force (the one of the current period when out).
    pub backoff: Duration,
    /// Executions of the line per second, estimated from the last period in before it was
    /// taken out (corrected for the time the traps themselves took); 0 when unknown.
    pub line_runs_per_second: u64,
    /// The line's own time was lost in the traps' (under a twentieth of the period in):
    /// `line_runs_per_second` is then a floor, the line runs faster.
    pub line_rate_is_floor: bool,
}

/// The state of one site for the budget.
pub struct SiteBudget {
    /// Asked to go out (a reason), set by the trap path.
    want_out: AtomicU8,
    /// Rate-limit refusals since the site went in.
    refused: AtomicU64,
    /// Why it went out last.
    reason: AtomicU8,
    /// When the site went out (monotonic ns), or 0 while in.
    out_since: AtomicU64,
    /// When the current period in began (monotonic ns).
    in_since: AtomicU64,
    /// When the probe was armed (monotonic ns).
    armed_at: AtomicU64,
    /// Traps counted when the current period in began.
    traps_at_in: AtomicU64,
    /// The handlers' time (ns since the site was armed, kept by the engine per thread
    /// slot) when the current period in began.
    handler_at_in: AtomicU64,
    /// The first trap's entry and the last trap's exit of the current period in (monotonic
    /// ns, 0: none yet): the span the line was running and trapping.
    first_trap: AtomicU64,
    last_trap: AtomicU64,
    times_out: AtomicU64,
    /// Time out, of finished periods, ns.
    out_ns: AtomicU64,
    backoff_ns: AtomicU64,
    line_rate: AtomicU64,
    line_rate_floor: AtomicBool,
}

impl SiteBudget {
    pub const fn new() -> SiteBudget {
        SiteBudget {
            want_out: AtomicU8::new(REASON_NONE),
            refused: AtomicU64::new(0),
            reason: AtomicU8::new(REASON_NONE),
            out_since: AtomicU64::new(0),
            in_since: AtomicU64::new(0),
            armed_at: AtomicU64::new(0),
            traps_at_in: AtomicU64::new(0),
            handler_at_in: AtomicU64::new(0),
            first_trap: AtomicU64::new(0),
            last_trap: AtomicU64::new(0),
            times_out: AtomicU64::new(0),
            out_ns: AtomicU64::new(0),
            backoff_ns: AtomicU64::new(0),
            line_rate: AtomicU64::new(0),
            line_rate_floor: AtomicBool::new(false),
        }
    }

    /// A freshly armed site (arming thread, before publication).
    pub fn reset(&self, now: u64) {
        let r = Ordering::Relaxed;
        for c in [
            &self.refused,
            &self.out_since,
            &self.traps_at_in,
            &self.handler_at_in,
            &self.first_trap,
            &self.last_trap,
            &self.times_out,
            &self.out_ns,
            &self.line_rate,
        ] {
            c.store(0, r);
        }
        self.line_rate_floor.store(false, r);
        self.want_out.store(REASON_NONE, r);
        self.reason.store(REASON_NONE, r);
        self.in_since.store(now, r);
        self.armed_at.store(now, r);
        self.backoff_ns.store(FIRST_BACKOFF.as_nanos() as u64, r);
    }

    /// Trap path: one trap's handler ran from `entry` to `exit` (monotonic ns). Its time
    /// is the engine's to add up (per thread slot, no locked instruction).
    pub fn add_trap(&self, entry: u64, exit: u64) {
        let r = Ordering::Relaxed;
        // Plain loads first: a locked instruction after the hit's stores waits for them to
        // drain, and after the first trap neither needs one. Two threads may both store
        // `last_trap`; the earlier exit can win, which only ages the rate estimate by one
        // hit's time.
        if self.first_trap.load(r) == 0 {
            let _ = self.first_trap.compare_exchange(0, entry.max(1), r, r);
        }
        if self.last_trap.load(r) < exit {
            self.last_trap.store(exit, r);
        }
    }

    /// Trap path: the global budget is exceeded. True when this call made the request
    /// (the caller then wakes the agent thread once).
    pub fn request_for_budget(&self) -> bool {
        self.request(REASON_BUDGET)
    }

    /// Trap path: the probe's rate limit refused a trap; asks to go out once refusals
    /// since the site went in pass [`REFUSED_BEFORE_OUT`]. True when this call asked.
    pub fn refused(&self) -> bool {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        n >= REFUSED_BEFORE_OUT && self.request(REASON_RATE)
    }

    fn request(&self, reason: u8) -> bool {
        self.out_since.load(Ordering::Relaxed) == 0
            && self
                .want_out
                .compare_exchange(REASON_NONE, reason, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the site asked to go out and is still in.
    pub fn pending(&self) -> bool {
        self.want_out.load(Ordering::Acquire) != REASON_NONE
            && self.out_since.load(Ordering::Relaxed) == 0
    }

    /// Records that the original bytes are back at `now`, with `traps` counted and
    /// `handler_ns` of handler time spent so far, and the kernel's cost of a trap
    /// `trap_cost_ns` (to estimate how often the line runs unprobed).
    pub fn went_out(&self, now: u64, traps: u64, handler_ns: u64, trap_cost_ns: u64) {
        let r = Ordering::Relaxed;
        let reason = self.want_out.load(Ordering::Acquire);
        self.reason.store(reason, r);
        // The span the line trapped in (from the first trap to the last), not the whole
        // period in: the line may not have run at first (the program had not reached it).
        let (first, last) = (self.first_trap.load(r), self.last_trap.load(r));
        let period = if first != 0 && last > first {
            last - first
        } else {
            now.saturating_sub(self.in_since.load(r))
        };
        let n = traps.saturating_sub(self.traps_at_in.load(r));
        let handlers = handler_ns.saturating_sub(self.handler_at_in.load(r));
        if period > 0 && n > 0 {
            // The period in was mostly traps: what the line took without them is the period
            // minus the handlers' time and the kernel's part of each trap (at least a
            // twentieth of it, so a bad estimate stays bounded).
            let untrapped = period
                .saturating_sub(handlers)
                .saturating_sub(n.saturating_mul(trap_cost_ns));
            let floor = period / 20;
            let rate = (n as u128 * 1_000_000_000 / untrapped.max(floor).max(1) as u128) as u64;
            self.line_rate.store(rate, r);
            self.line_rate_floor.store(untrapped < floor, r);
        }
        self.times_out.fetch_add(1, r);
        self.out_since.store(now.max(1), r);
    }

    /// Whether an out site's back-off is over at `now`.
    pub fn due(&self, now: u64) -> bool {
        let since = self.out_since.load(Ordering::Relaxed);
        since != 0 && now >= since.saturating_add(self.backoff_ns.load(Ordering::Relaxed))
    }

    /// When an out site is due, ns from `now` (0 when due, `None` when in).
    pub fn due_in(&self, now: u64) -> Option<u64> {
        let since = self.out_since.load(Ordering::Relaxed);
        (since != 0).then(|| {
            since
                .saturating_add(self.backoff_ns.load(Ordering::Relaxed))
                .saturating_sub(now)
        })
    }

    /// Records that the patch is back at `now`, with `traps` counted and `handler_ns` of
    /// handler time spent so far; the next back-off is twice this one (at most
    /// [`MAX_BACKOFF`]).
    pub fn went_in(&self, now: u64, traps: u64, handler_ns: u64) {
        let r = Ordering::Relaxed;
        let since = self.out_since.load(r);
        self.out_ns.fetch_add(now.saturating_sub(since), r);
        self.traps_at_in.store(traps, r);
        self.handler_at_in.store(handler_ns, r);
        self.first_trap.store(0, r);
        self.last_trap.store(0, r);
        self.in_since.store(now, r);
        self.refused.store(0, r);
        let next = self
            .backoff_ns
            .load(r)
            .saturating_mul(2)
            .min(MAX_BACKOFF.as_nanos() as u64);
        self.backoff_ns.store(next, r);
        self.out_since.store(0, Ordering::Release);
        self.want_out.store(REASON_NONE, Ordering::Release);
    }

    /// A site in for `calm_ns` without asking to go out starts again from the first back-off.
    pub fn note_calm(&self, now: u64, calm_ns: u64) {
        let r = Ordering::Relaxed;
        if self.out_since.load(r) == 0
            && self.want_out.load(r) == REASON_NONE
            && now.saturating_sub(self.in_since.load(r)) >= calm_ns
        {
            self.backoff_ns.store(FIRST_BACKOFF.as_nanos() as u64, r);
        }
    }

    /// The sampling figures at `now`.
    pub fn stats(&self, now: u64) -> Sampling {
        let r = Ordering::Relaxed;
        let since = self.out_since.load(r);
        let mut out_ns = self.out_ns.load(r);
        if since != 0 {
            out_ns += now.saturating_sub(since);
        }
        let total = now.saturating_sub(self.armed_at.load(r));
        Sampling {
            out: since != 0,
            times_out: self.times_out.load(r),
            out_time: Duration::from_nanos(out_ns),
            in_time: Duration::from_nanos(total.saturating_sub(out_ns)),
            reason: match self.reason.load(r) {
                REASON_BUDGET => Some(OutReason::Budget),
                REASON_RATE => Some(OutReason::Rate),
                _ => None,
            },
            backoff: Duration::from_nanos(self.backoff_ns.load(r)),
            line_runs_per_second: self.line_rate.load(r),
            line_rate_is_floor: self.line_rate_floor.load(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_back_off_doubles_to_its_cap_and_a_calm_window_resets_it() {
        let s = SiteBudget::new();
        s.reset(1000 * MS);
        let mut now = 1000 * MS;
        let mut backoffs = Vec::new();
        for _ in 0..9 {
            assert!(s.request_for_budget());
            assert!(!s.request_for_budget(), "one request per period");
            s.went_out(now, 0, 0, 0);
            backoffs.push(s.stats(now).backoff.as_millis());
            assert!(!s.due(now + 1));
            now += s.stats(now).backoff.as_nanos() as u64;
            assert!(s.due(now));
            s.went_in(now, 0, 0);
        }
        assert_eq!(
            backoffs,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
        );
        s.note_calm(now + 500 * MS, 1000 * MS);
        assert_eq!(s.stats(now).backoff, MAX_BACKOFF);
        s.note_calm(now + 1000 * MS, 1000 * MS);
        assert_eq!(s.stats(now).backoff, FIRST_BACKOFF);
    }

    #[test]
    fn the_line_rate_discounts_the_time_the_traps_took() {
        let s = SiteBudget::new();
        s.reset(0);
        // 100 ms in, 30,000 traps of 3 µs each: 90 ms were traps, so 30,000 in 10 ms.
        s.went_out(100 * MS, 30_000, 0, 3_000);
        let st = s.stats(150 * MS);
        assert_eq!(st.line_runs_per_second, 3_000_000);
        assert!(!st.line_rate_is_floor);
        assert!(st.out);
        assert_eq!(st.out_time, Duration::from_millis(50));
        assert_eq!(st.in_time, Duration::from_millis(100));
        assert_eq!(st.times_out, 1);
    }

    #[test]
    fn the_handlers_time_is_taken_off_and_a_rate_lost_in_the_traps_is_a_floor() {
        let s = SiteBudget::new();
        s.reset(0);
        // 20,000 traps in 99.998 ms, 1 µs of kernel each (20 ms) and 60 ms of handlers,
        // leaving 19.998 ms for the line: 1,000,100 a second.
        for i in 0..20_000 {
            let entry = MS + 5 * i * 1_000;
            s.add_trap(entry, entry + 3_000);
        }
        // The traps span 1 ms to 100.998 ms; out at 130 ms: the 99.998 ms of traps count.
        s.went_out(130 * MS, 20_000, 60 * MS, 1_000);
        let st = s.stats(130 * MS);
        assert_eq!(st.line_runs_per_second, 1_000_100);
        assert!(!st.line_rate_is_floor);
        // Back in at 200 ms; 30,002 traps from 200 to 300 ms with 1 µs of kernel and 75 ms
        // of handlers in all (105 ms: more than the span). The line's time is lost in the
        // traps': the rate is a floor, the traps over a twentieth of the span.
        s.went_in(200 * MS, 20_000, 60 * MS);
        s.add_trap(200 * MS, 200 * MS);
        for _ in 0..30_000 {
            s.add_trap(250 * MS, 250 * MS + 2_500);
        }
        s.add_trap(300 * MS, 300 * MS);
        s.went_out(320 * MS, 50_002, 135 * MS, 1_000);
        let st = s.stats(320 * MS);
        assert_eq!(st.line_runs_per_second, 6_000_400);
        assert!(st.line_rate_is_floor);
        assert_eq!(st.times_out, 2);
    }

    #[test]
    fn a_site_out_is_due_back_after_exactly_its_back_off() {
        let s = SiteBudget::new();
        s.reset(0);
        assert_eq!(s.due_in(5 * MS), None, "in: not due");
        assert!(!s.due(5 * MS));
        assert!(s.request_for_budget());
        assert!(s.pending());
        s.went_out(10 * MS, 0, 0, 0);
        assert!(!s.pending());
        assert!(!s.request_for_budget(), "already out");
        assert_eq!(s.due_in(10 * MS), Some(100 * MS));
        assert_eq!(s.due_in(60 * MS), Some(50 * MS));
        assert!(!s.due(110 * MS - 1));
        assert!(s.due(110 * MS));
        assert_eq!(s.due_in(500 * MS), Some(0));
        s.went_in(110 * MS, 0, 0);
        assert_eq!(s.due_in(110 * MS), None);
        let st = s.stats(110 * MS);
        assert_eq!(
            (st.out, st.out_time, st.in_time, st.backoff),
            (
                false,
                Duration::from_millis(100),
                Duration::from_millis(10),
                Duration::from_millis(200)
            )
        );
        // Asked again 50 ms later (not calm yet): out for the doubled back-off.
        s.note_calm(160 * MS, 1000 * MS);
        assert!(s.request_for_budget());
        s.went_out(160 * MS, 0, 0, 0);
        assert_eq!(s.due_in(160 * MS), Some(200 * MS));
    }

    #[test]
    fn rate_refusals_ask_once_past_the_threshold() {
        let s = SiteBudget::new();
        s.reset(0);
        let asked: Vec<bool> = (0..REFUSED_BEFORE_OUT + 5).map(|_| s.refused()).collect();
        assert_eq!(asked.iter().filter(|a| **a).count(), 1);
        assert!(asked[REFUSED_BEFORE_OUT as usize - 1]);
        assert!(s.pending());
        s.went_out(10, 0, 0, 0);
        assert_eq!(s.stats(10).reason, Some(OutReason::Rate));
        assert!(!s.pending());
    }
}
