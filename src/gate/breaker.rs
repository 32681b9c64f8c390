//! Circuit breaker: stops a rule whose runs keep failing (K failures among its last M runs), and after a cool-down
//! lets exactly one probe run decide whether it may run again.
//!
//! ```text
//!            K failures among the last M runs              cool-down over (check)
//!  Closed ───────────────────────────────────> Open ──────────────────────────> HalfOpen: one probe in flight
//!    ^                                          ^                                  │
//!    └──────── probe succeeded (history cleared) ┴─────── probe failed ────────────┘
//! ```
//!
//! Open lasts `[opened_at, opened_at + cool_down)`: at exactly `opened_at + cool_down` the next check gets the probe.
//! A permit dropped without being recorded (the run never happened) gives the probe slot back. Outcomes of runs
//! admitted before the breaker last changed between open and closed (late results) are ignored.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The longest cool-down a [`BreakerSpec`] accepts (100 years), so that `opened_at + cool_down` never overflows.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The most runs a breaker remembers (`of_last`); the history is kept in memory, one entry per run.
pub const MAX_OF_LAST: u32 = 10_000;

/// Open after `failures` (K) failed runs among the last `of_last` (M) runs, for `cool_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    failures: NonZeroU32,
    of_last: NonZeroU32,
    cool_down: Duration,
}

/// Why a [`BreakerSpec`] is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerSpecError {
    #[error("circuit breaker: {failures} failures can never occur among the last {of_last} runs")]
    FailuresExceedRuns { failures: NonZeroU32, of_last: NonZeroU32 },
    #[error("circuit breaker: remembering the last {of_last} runs is more than the {MAX_OF_LAST} allowed")]
    TooManyRuns { of_last: NonZeroU32 },
    #[error("circuit breaker: cool-down {cool_down:?} is longer than the {MAX_COOL_DOWN:?} allowed")]
    CoolDownTooLong { cool_down: Duration },
}

impl BreakerSpec {
    /// Validates `failures <= of_last <= MAX_OF_LAST` and `cool_down <= MAX_COOL_DOWN`.
    pub fn new(
        failures: NonZeroU32,
        of_last: NonZeroU32,
        cool_down: Duration,
    ) -> Result<BreakerSpec, BreakerSpecError> {
        if failures > of_last {
            return Err(BreakerSpecError::FailuresExceedRuns { failures, of_last });
        }
        if of_last.get() > MAX_OF_LAST {
            return Err(BreakerSpecError::TooManyRuns { of_last });
        }
        if cool_down > MAX_COOL_DOWN {
            return Err(BreakerSpecError::CoolDownTooLong { cool_down });
        }
        Ok(BreakerSpec { failures, of_last, cool_down })
    }

    pub fn failures(&self) -> NonZeroU32 {
        self.failures
    }

    pub fn of_last(&self) -> NonZeroU32 {
        self.of_last
    }

    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

impl serde::Serialize for BreakerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("BreakerSpec", 3)?;
        st.serialize_field("failures", &self.failures)?;
        st.serialize_field("of_last", &self.of_last)?;
        st.serialize_field("cool_down", &humantime::format_duration(self.cool_down).to_string())?;
        st.end()
    }
}

/// A refusal: the breaker is open until `until` after `failures` failures among the last `of_last` runs, or its
/// cool-down is over (`until` is past) and the one probe run is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open until {until:?} after {failures} failures among the last {of_last} runs{}",
    if *probe_in_flight { "; a probe run is in flight" } else { "" })]
pub struct CircuitOpen {
    pub until: Instant,
    pub failures: u32,
    pub of_last: u32,
    pub probe_in_flight: bool,
}

/// What a breaker looks like at some instant, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Runs are admitted; `failures_in_window` of the remembered runs failed.
    Closed { failures_in_window: u32 },
    /// Runs are refused until `until`.
    Open { until: Instant },
    /// The cool-down is over: the next check gets the probe, unless it is already in flight.
    HalfOpen { probe_in_flight: bool },
}

/// One rule's circuit breaker; `&self` API, shared by that rule's tasks.
pub struct CircuitBreaker {
    spec: BreakerSpec,
    /// Shared with every outstanding [`BreakerPermit`], whose `Drop` may hand the probe slot back.
    state: Arc<Mutex<Breaker>>,
}

#[derive(Debug)]
struct Breaker {
    spec: BreakerSpec,
    phase: Phase,
    /// Outcomes of the last `of_last` runs, oldest first; `true` = failed.
    outcomes: VecDeque<bool>,
    /// How many of `outcomes` are failures.
    failures: u32,
    /// Bumped whenever the breaker opens or closes, so results of runs admitted before that are ignored.
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        since: Instant,
    },
    /// `since`: when it last opened.
    HalfOpen {
        since: Instant,
        probe_in_flight: bool,
    },
}

impl Breaker {
    fn cooled(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.spec.cool_down
    }

    fn until(&self, since: Instant) -> Instant {
        // `BreakerSpec::new` bounds the cool-down to 100 years, far inside `Instant`'s range.
        since.checked_add(self.spec.cool_down).unwrap_or(since)
    }

    fn refusal(&self, since: Instant, probe_in_flight: bool) -> CircuitOpen {
        CircuitOpen {
            until: self.until(since),
            failures: self.failures,
            of_last: self.spec.of_last.get(),
            probe_in_flight,
        }
    }

    fn remember(&mut self, failed: bool) {
        if self.outcomes.len() >= self.spec.of_last.get() as usize && self.outcomes.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.outcomes.push_back(failed);
        if failed {
            self.failures += 1;
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open { since: now };
        self.epoch += 1;
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.outcomes.clear();
        self.failures = 0;
        self.epoch += 1;
    }
}

fn lock_breaker(state: &Mutex<Breaker>) -> MutexGuard<'_, Breaker> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CircuitBreaker {
    pub fn new(spec: BreakerSpec) -> CircuitBreaker {
        let breaker = Breaker { spec, phase: Phase::Closed, outcomes: VecDeque::new(), failures: 0, epoch: 0 };
        CircuitBreaker { spec, state: Arc::new(Mutex::new(breaker)) }
    }

    pub fn spec(&self) -> BreakerSpec {
        self.spec
    }

    /// Admits a run (closed), or the one probe run (cool-down over, no probe in flight), or refuses.
    pub fn check(&self, now: Instant) -> Result<BreakerPermit, CircuitOpen> {
        let mut breaker = lock_breaker(&self.state);
        let probe = match breaker.phase {
            Phase::Closed => false,
            Phase::Open { since } | Phase::HalfOpen { since, probe_in_flight: false } => {
                if !breaker.cooled(since, now) {
                    return Err(breaker.refusal(since, false));
                }
                breaker.phase = Phase::HalfOpen { since, probe_in_flight: true };
                true
            }
            Phase::HalfOpen { since, probe_in_flight: true } => return Err(breaker.refusal(since, true)),
        };
        Ok(BreakerPermit { state: Arc::clone(&self.state), epoch: breaker.epoch, probe, settled: false })
    }

    /// Records the outcome of the run `permit` admitted, in the breaker that issued it. A failure that brings the
    /// failures among the last M runs to K opens the breaker until `now + cool_down`; a probe's success closes it
    /// with a cleared history, its failure re-opens it. Outcomes of runs admitted before the breaker last opened or
    /// closed are ignored.
    pub fn record(&self, mut permit: BreakerPermit, success: bool, now: Instant) {
        permit.settled = true;
        let mut breaker = lock_breaker(&permit.state);
        if permit.epoch != breaker.epoch {
            return;
        }
        if permit.probe {
            if success {
                breaker.close();
            } else {
                breaker.remember(true);
                breaker.open(now);
            }
            return;
        }
        breaker.remember(!success);
        if breaker.failures >= breaker.spec.failures.get() {
            breaker.open(now);
        }
    }

    /// The breaker as of `now`, for display.
    pub fn state(&self, now: Instant) -> BreakerState {
        let breaker = lock_breaker(&self.state);
        match breaker.phase {
            Phase::Closed => BreakerState::Closed { failures_in_window: breaker.failures },
            Phase::Open { since } if breaker.cooled(since, now) => BreakerState::HalfOpen { probe_in_flight: false },
            Phase::Open { since } => BreakerState::Open { until: breaker.until(since) },
            Phase::HalfOpen { probe_in_flight, .. } => BreakerState::HalfOpen { probe_in_flight },
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let breaker = lock_breaker(&self.state);
        f.debug_struct("CircuitBreaker")
            .field("spec", &self.spec)
            .field("phase", &breaker.phase)
            .field("failures", &breaker.failures)
            .finish_non_exhaustive()
    }
}

/// Leave to run once. Hand it back with [`CircuitBreaker::record`]; dropping it instead means the run never
/// happened, and a probe permit then frees the probe slot for the next check.
#[must_use = "a breaker permit is recorded with CircuitBreaker::record, or dropped if the run does not happen"]
pub struct BreakerPermit {
    /// The breaker that issued this permit; `Drop` reaches it to give a probe slot back.
    state: Arc<Mutex<Breaker>>,
    epoch: u64,
    probe: bool,
    /// Set by `record`, so that `Drop` leaves the breaker alone.
    settled: bool,
}

impl BreakerPermit {
    /// Whether this is the half-open breaker's one probe run.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit").field("probe", &self.probe).finish_non_exhaustive()
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.settled || !self.probe {
            return;
        }
        let mut breaker = lock_breaker(&self.state);
        if let Phase::HalfOpen { since, probe_in_flight: true } = breaker.phase
            && breaker.epoch == self.epoch
        {
            breaker.phase = Phase::HalfOpen { since, probe_in_flight: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(300);
    const NS: Duration = Duration::from_nanos(1);

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn breaker(failures: u32, of_last: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerSpec::new(nz(failures), nz(of_last), COOL).unwrap())
    }

    /// Runs `outcomes` ('F' failed, 'S' succeeded) through the breaker at `now`, each checked then recorded.
    fn run(breaker: &CircuitBreaker, outcomes: &str, now: Instant) {
        for outcome in outcomes.chars() {
            let permit = breaker.check(now).unwrap();
            breaker.record(permit, outcome == 'S', now);
        }
    }

    /// Opens `breaker` at `now` with K straight failures.
    fn trip(breaker: &CircuitBreaker, now: Instant) {
        run(breaker, &"F".repeat(breaker.spec().failures().get() as usize), now);
        assert!(matches!(breaker.state(now), BreakerState::Open { .. }));
    }

    #[test]
    fn spec_validation() {
        let ok = |k, m, cool| BreakerSpec::new(nz(k), nz(m), cool);
        assert!(ok(1, 1, COOL).is_ok());
        assert!(ok(3, 10, Duration::ZERO).is_ok());
        assert!(ok(1, MAX_OF_LAST, MAX_COOL_DOWN).is_ok());
        assert_eq!(ok(4, 3, COOL), Err(BreakerSpecError::FailuresExceedRuns { failures: nz(4), of_last: nz(3) }));
        assert_eq!(ok(1, MAX_OF_LAST + 1, COOL), Err(BreakerSpecError::TooManyRuns { of_last: nz(MAX_OF_LAST + 1) }));
        assert_eq!(
            ok(1, 1, MAX_COOL_DOWN + NS),
            Err(BreakerSpecError::CoolDownTooLong { cool_down: MAX_COOL_DOWN + NS })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_k_failures_among_the_last_m_runs() {
        // (K, M, outcomes oldest first, open afterwards?, failures among the remembered runs)
        let cases: &[(u32, u32, &str, bool, u32)] = &[
            (3, 5, "FF", false, 2),
            (3, 5, "FFF", true, 3),
            (3, 5, "FSFSF", true, 3),
            (3, 5, "SSSSFF", false, 2),
            (3, 5, "FFSSSSS", false, 0), // the ring forgets old failures
            (3, 5, "FFSSSS", false, 1),  // one of the two Fs has left the last 5
            (3, 5, "FSSSSFF", false, 2), // the first F fell out of the last 5
            (3, 5, "FSSSSFFF", true, 3), // ... and three new ones open it
            (2, 3, "FSSF", false, 1),
            (2, 3, "FSSFSF", true, 2),
            (1, 1, "SSSSF", true, 1),
            (1, 1, "SSSS", false, 0),
            (5, 5, "FFFFSFFFF", false, 4),
        ];
        for &(k, m, outcomes, open, failures) in cases {
            let t0 = Instant::now();
            let breaker = breaker(k, m);
            run(&breaker, outcomes, t0);
            let state = breaker.state(t0);
            if open {
                assert_eq!(state, BreakerState::Open { until: t0 + COOL }, "K={k} M={m} {outcomes}");
                let refused = breaker.check(t0).unwrap_err();
                assert_eq!(
                    refused,
                    CircuitOpen { until: t0 + COOL, failures, of_last: m, probe_in_flight: false },
                    "K={k} M={m} {outcomes}"
                );
            } else {
                assert_eq!(state, BreakerState::Closed { failures_in_window: failures }, "K={k} M={m} {outcomes}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cool_down_ends_at_exactly_opened_at_plus_cool_down() {
        let breaker = breaker(1, 1);
        let t0 = Instant::now();
        trip(&breaker, t0);
        assert_eq!(breaker.check(t0 + COOL - NS).unwrap_err().until, t0 + COOL);
        assert_eq!(breaker.state(t0 + COOL - NS), BreakerState::Open { until: t0 + COOL });
        assert_eq!(breaker.state(t0 + COOL), BreakerState::HalfOpen { probe_in_flight: false });
        let probe = breaker.check(t0 + COOL).unwrap();
        assert!(probe.is_probe());
        breaker.record(probe, true, t0 + COOL);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_one_probe() {
        let breaker = breaker(2, 4);
        let t0 = Instant::now();
        trip(&breaker, t0);
        let probe = breaker.check(t0 + COOL).unwrap();
        assert_eq!(breaker.state(t0 + COOL), BreakerState::HalfOpen { probe_in_flight: true });
        for later in [Duration::ZERO, COOL, 10 * COOL] {
            let refused = breaker.check(t0 + COOL + later).unwrap_err();
            assert_eq!(refused, CircuitOpen { until: t0 + COOL, failures: 2, of_last: 4, probe_in_flight: true });
        }
        drop(probe);
    }

    #[test]
    fn racing_checks_after_the_cool_down_get_one_probe() {
        let breaker = breaker(1, 1);
        let t0 = Instant::now();
        trip(&breaker, t0);
        let barrier = std::sync::Barrier::new(8);
        let probes = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let (breaker, barrier) = (&breaker, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let permit = breaker.check(t0 + COOL);
                        // Hold the probe until every racer has checked.
                        barrier.wait();
                        permit.is_ok()
                    })
                })
                .collect();
            racers.into_iter().map(|racer| racer.join().unwrap()).filter(|&won| won).count()
        });
        assert_eq!(probes, 1);
        assert_eq!(breaker.state(t0 + COOL), BreakerState::HalfOpen { probe_in_flight: false }, "dropped, returned");
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_with_a_cleared_history() {
        let breaker = breaker(2, 4);
        let t0 = Instant::now();
        trip(&breaker, t0);
        let probe = breaker.check(t0 + COOL).unwrap();
        breaker.record(probe, true, t0 + COOL);
        assert_eq!(breaker.state(t0 + COOL), BreakerState::Closed { failures_in_window: 0 });
        run(&breaker, "F", t0 + COOL);
        assert_eq!(breaker.state(t0 + COOL), BreakerState::Closed { failures_in_window: 1 }, "K=2 needs two again");
        let permit = breaker.check(t0 + COOL).unwrap();
        assert!(!permit.is_probe());
        breaker.record(permit, false, t0 + COOL);
        assert!(breaker.check(t0 + COOL).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_another_cool_down() {
        let breaker = breaker(1, 3);
        let t0 = Instant::now();
        trip(&breaker, t0);
        let t1 = t0 + COOL + Duration::from_secs(7);
        let probe = breaker.check(t1).unwrap();
        breaker.record(probe, false, t1);
        assert_eq!(breaker.state(t1), BreakerState::Open { until: t1 + COOL });
        assert_eq!(breaker.check(t1 + COOL - NS).unwrap_err().until, t1 + COOL);
        assert!(breaker.check(t1 + COOL).unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_permit_gives_the_slot_back() {
        let breaker = breaker(1, 1);
        let t0 = Instant::now();
        trip(&breaker, t0);
        let probe = breaker.check(t0 + COOL).unwrap();
        drop(probe); // a later gate refused: the probe run never happened
        assert_eq!(breaker.state(t0 + COOL), BreakerState::HalfOpen { probe_in_flight: false });
        let probe = breaker.check(t0 + COOL).unwrap();
        assert!(probe.is_probe(), "the next check gets the probe");
        assert!(breaker.check(t0 + COOL).is_err());
        breaker.record(probe, true, t0 + COOL);
        assert_eq!(breaker.state(t0 + COOL), BreakerState::Closed { failures_in_window: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_closed_permit_changes_nothing() {
        let breaker = breaker(1, 2);
        let t0 = Instant::now();
        drop(breaker.check(t0).unwrap());
        assert_eq!(breaker.state(t0), BreakerState::Closed { failures_in_window: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn late_results_of_runs_admitted_before_a_change_are_ignored() {
        let breaker = breaker(2, 4);
        let t0 = Instant::now();
        let late_failure = breaker.check(t0).unwrap();
        let late_success = breaker.check(t0).unwrap();
        trip(&breaker, t0);
        // While open: neither re-opens nor closes it.
        breaker.record(late_success, true, t0);
        assert_eq!(breaker.state(t0), BreakerState::Open { until: t0 + COOL });
        let probe = breaker.check(t0 + COOL).unwrap();
        breaker.record(probe, true, t0 + COOL);
        // After the probe closed it: a failure from before does not count against the fresh history.
        breaker.record(late_failure, false, t0 + COOL);
        assert_eq!(breaker.state(t0 + COOL), BreakerState::Closed { failures_in_window: 0 });
    }
}
