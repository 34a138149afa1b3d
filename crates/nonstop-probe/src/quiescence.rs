//! Whether a thread may still be inside a fast-path span, from what `/proc` shows of it
//! ([`sys::ThreadState`]): the proof the patcher waits for before it writes a jump over
//! several instructions (`Engine::span_quiescent`).
//!
//! A preempted thread is runnable and shows no program counter, so it must be seen to
//! run after the span's `int3` went in. Its CPU time is no proof: the kernel adds a
//! running thread's time when it is switched off, so a thread on a CPU when the wait
//! begins and switched off inside the span right after shows more time without having run
//! past it. The switch counts are: a thread on a CPU at the start must leave a CPU twice,
//! or stay on one without a switch for [`ON_CPU_PROOF`]; a thread off a CPU must come
//! back and leave once, or stay on for as long. A blocked thread shows where it is.

use std::time::{Duration, Instant};

use crate::sys::ThreadState;

/// How long a thread seen on a CPU without a switch must stay on it to have run past a
/// span's few instructions (a minor fault inside the span takes microseconds).
pub const ON_CPU_PROOF: Duration = Duration::from_micros(200);

/// One thread the patcher waits for.
pub struct Watch {
    /// Its id.
    pub tid: u32,
    /// Departures that prove it ran since the wait began.
    enough: u64,
    /// Since when it has been seen on a CPU without a switch, with its switch counts then.
    on_cpu_since: Option<(Instant, u64, u64)>,
}

fn on_cpu(t: &ThreadState) -> bool {
    t.arrivals > t.departures
}

impl Watch {
    /// A thread as the wait's first look at `began` saw it.
    pub fn new(t: &ThreadState, began: Instant) -> Watch {
        Watch {
            tid: t.tid,
            enough: t.departures + if on_cpu(t) { 2 } else { 1 },
            on_cpu_since: on_cpu(t).then_some((began, t.arrivals, t.departures)),
        }
    }

    /// Whether the thread may still be inside the span, seen as `t` at `seen` (`None`: it
    /// exited); `interior` says whether a program counter is inside the span.
    pub fn may_be_inside(
        &mut self,
        t: Option<&ThreadState>,
        interior: impl Fn(u64) -> bool,
        seen: Instant,
    ) -> bool {
        let Some(t) = t else {
            return false;
        };
        if !t.runnable {
            // Blocked: a page fault taken inside the span keeps it there.
            return t.paused_pc.is_some_and(interior);
        }
        if t.departures >= self.enough {
            return false;
        }
        let same_run = self
            .on_cpu_since
            .is_some_and(|(_, a, d)| (a, d) == (t.arrivals, t.departures));
        if !on_cpu(t) {
            self.on_cpu_since = None;
        } else if !same_run {
            self.on_cpu_since = Some((seen, t.arrivals, t.departures));
        } else if self
            .on_cpu_since
            .is_some_and(|(since, _, _)| seen.duration_since(since) >= ON_CPU_PROOF)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(arrivals: u64, departures: u64, runnable: bool, pc: Option<u64>) -> ThreadState {
        ThreadState {
            tid: 7,
            arrivals,
            departures,
            runnable,
            paused_pc: pc,
        }
    }

    const SPAN: std::ops::Range<u64> = 0x1001..0x1008;

    fn inside(w: &mut Watch, t: &ThreadState, at: Instant) -> bool {
        w.may_be_inside(Some(t), |pc| SPAN.contains(&pc), at)
    }

    #[test]
    fn a_thread_on_a_cpu_at_the_start_and_switched_off_once_may_be_inside() {
        let t0 = Instant::now();
        let mut w = Watch::new(&state(10, 9, true, None), t0);
        // Switched off (inside the span, perhaps): its CPU time grew, but that is no proof.
        assert!(inside(&mut w, &state(10, 10, true, None), t0));
        // Back on, but not for long enough.
        assert!(inside(
            &mut w,
            &state(11, 10, true, None),
            t0 + ON_CPU_PROOF
        ));
        assert!(inside(
            &mut w,
            &state(11, 10, true, None),
            t0 + ON_CPU_PROOF + Duration::from_micros(100)
        ));
        // On since then for the proof: it ran past.
        assert!(!inside(
            &mut w,
            &state(11, 10, true, None),
            t0 + 2 * ON_CPU_PROOF + Duration::from_micros(100)
        ));
    }

    #[test]
    fn a_second_departure_or_a_long_stay_on_a_cpu_proves_it_ran() {
        let t0 = Instant::now();
        let mut w = Watch::new(&state(10, 9, true, None), t0);
        assert!(!inside(&mut w, &state(11, 11, true, None), t0));
        let mut w = Watch::new(&state(10, 9, true, None), t0);
        assert!(inside(
            &mut w,
            &state(10, 9, true, None),
            t0 + ON_CPU_PROOF / 2
        ));
        assert!(!inside(
            &mut w,
            &state(10, 9, true, None),
            t0 + ON_CPU_PROOF
        ));
    }

    #[test]
    fn a_preempted_thread_must_come_back_and_leave() {
        let t0 = Instant::now();
        let mut w = Watch::new(&state(5, 5, true, None), t0);
        assert!(inside(
            &mut w,
            &state(5, 5, true, None),
            t0 + Duration::from_secs(1)
        ));
        assert!(inside(
            &mut w,
            &state(6, 5, true, None),
            t0 + Duration::from_secs(1)
        ));
        assert!(!inside(
            &mut w,
            &state(6, 6, true, None),
            t0 + Duration::from_secs(1)
        ));
    }

    #[test]
    fn a_blocked_thread_is_where_it_shows_and_an_exited_one_is_nowhere() {
        let t0 = Instant::now();
        let mut w = Watch::new(&state(5, 5, true, None), t0);
        assert!(inside(&mut w, &state(5, 5, false, Some(0x1004)), t0));
        assert!(!inside(&mut w, &state(5, 5, false, Some(0x1000)), t0));
        assert!(!inside(&mut w, &state(5, 5, false, None), t0));
        assert!(!w.may_be_inside(None, |_| true, t0));
    }
}
