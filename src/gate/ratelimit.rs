//! Rate limits: a validated [`RateSpec`] and the governor limiters built from it, one shared ([`RateLimit`]) or one
//! per key ([`KeyedRateLimit`]), both on [`TokioClock`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use crate::gate::clock::{TokioClock, TokioInstant};

/// The longest time a full burst may take to refill. Governor counts time in `u64` nanoseconds (about 584 years)
/// and panics beyond; no sane rate limit comes near this bound.
pub const MAX_BURST_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many checks a [`KeyedRateLimit`] makes between two sweeps of its idle keys, by default.
pub const DEFAULT_RETAIN_EVERY: NonZeroU32 = NonZeroU32::MIN.saturating_add(4095);

/// `count` permits per `per`, in bursts of up to `burst`: one permit comes back every `per / count`, and at most
/// `burst` permits are banked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    count: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
    /// The governor quota computed from the three above by [`RateSpec::new`].
    quota: Quota,
}

/// Why a [`RateSpec`] is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateSpecError {
    #[error("rate limit period must be longer than zero")]
    ZeroPeriod,
    #[error("rate limit of {count} per {per:?} is finer than one permit per nanosecond")]
    TooFine { count: NonZeroU32, per: Duration },
    #[error("rate limit of {count} per {per:?} with burst {burst} takes longer than {MAX_BURST_REFILL:?} to refill")]
    TooLong { count: NonZeroU32, per: Duration, burst: NonZeroU32 },
}

impl RateSpec {
    /// Validates a rate: `per` must be longer than zero, `per / count` at least one nanosecond, and the refill of a
    /// whole burst (`burst * per / count`) at most [`MAX_BURST_REFILL`].
    pub fn new(count: NonZeroU32, per: Duration, burst: NonZeroU32) -> Result<RateSpec, RateSpecError> {
        if per.is_zero() {
            return Err(RateSpecError::ZeroPeriod);
        }
        let interval = per / count.get();
        match interval.checked_mul(burst.get()) {
            Some(refill) if refill > MAX_BURST_REFILL => Err(RateSpecError::TooLong { count, per, burst }),
            None => Err(RateSpecError::TooLong { count, per, burst }),
            Some(_) => match Quota::with_period(interval) {
                Some(quota) => Ok(RateSpec { count, per, burst, quota: quota.allow_burst(burst) }),
                None => Err(RateSpecError::TooFine { count, per }),
            },
        }
    }

    /// `count` per second (at most 10^9: one permit per nanosecond), bursting up to `burst`. Infallible: a full
    /// burst refills within about 136 years, far inside what governor can count.
    pub fn per_second(count: NonZeroU32, burst: NonZeroU32) -> RateSpec {
        let count = count.min(NonZeroU32::MIN.saturating_add(999_999_999));
        RateSpec { count, per: Duration::from_secs(1), burst, quota: Quota::per_second(count).allow_burst(burst) }
    }

    pub fn count(&self) -> NonZeroU32 {
        self.count
    }

    pub fn per(&self) -> Duration {
        self.per
    }

    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The time after which one spent permit comes back: `per / count`, rounded down to the nanosecond.
    pub fn replenish_interval(&self) -> Duration {
        self.per / self.count.get()
    }

    /// The governor quota: one permit every [`replenish_interval`](Self::replenish_interval), `burst` at most.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {} (burst {})", self.count, humantime::format_duration(self.per), self.burst)
    }
}

impl serde::Serialize for RateSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RateSpec", 3)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("per", &humantime::format_duration(self.per).to_string())?;
        st.serialize_field("burst", &self.burst)?;
        st.end()
    }
}

/// A refusal by a rate limit: no permit is left; the next comes back after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: next permit in {retry_after:?}")]
pub struct RateLimited {
    pub retry_after: Duration,
}

fn refusal(not_until: &NotUntil<TokioInstant>, clock: &TokioClock) -> RateLimited {
    RateLimited { retry_after: not_until.wait_time_from(clock.now()) }
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;
type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One rate limit shared by every caller (e.g. all runs of one rule).
#[derive(Debug)]
pub struct RateLimit {
    spec: RateSpec,
    limiter: DirectLimiter,
    /// When this limit was built: the origin of `refused_until`.
    base: TokioInstant,
    /// The latest "no permit before" a refusal reported, in nanoseconds after `base` (0: none yet).
    refused_until: AtomicU64,
}

impl RateLimit {
    pub fn new(spec: RateSpec) -> RateLimit {
        RateLimit {
            spec,
            limiter: RateLimiter::direct_with_clock(spec.quota(), TokioClock),
            base: TokioClock.now(),
            refused_until: AtomicU64::new(0),
        }
    }

    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Takes one permit, or says how long until the next one.
    pub fn check(&self) -> Result<(), RateLimited> {
        self.limiter.check().map_err(|not_until| {
            self.refused_until.fetch_max(since(self.base, not_until.earliest_possible()), Ordering::Relaxed);
            refusal(&not_until, self.limiter.clock())
        })
    }

    /// Would [`check`](Self::check) refuse now? Answered from the last refusal alone, spending nothing and leaving
    /// the limiter untouched. Exact when it says yes: governor's earliest next permit only moves later (a permit
    /// given or time passing cannot bring it forward), so before the instant a refusal named, every check is
    /// refused. It says no when nothing has been refused yet or that instant has passed — `check` then decides.
    pub fn exhausted(&self) -> Option<RateLimited> {
        still_refused(self.base, self.refused_until.load(Ordering::Relaxed))
    }
}

/// `at` in nanoseconds after `base` (the origin of a limit's remembered refusals).
fn since(base: TokioInstant, at: TokioInstant) -> u64 {
    u64::from(at.duration_since(base))
}

/// The refusal still in force now, if `until` (nanoseconds after `base`; 0: none) has not passed.
fn still_refused(base: TokioInstant, until: u64) -> Option<RateLimited> {
    let now = since(base, TokioClock.now());
    (now < until).then(|| RateLimited { retry_after: Duration::from_nanos(until - now) })
}

/// One rate limit per key (e.g. per host), each key with its own budget of the same [`RateSpec`].
///
/// Idle keys are swept every `retain_every` checks, so the key set stays bounded by the keys checked within about one
/// burst refill plus one interval (governor forgets a key one replenish interval after its budget is full again).
pub struct KeyedRateLimit<K: Hash + Eq + Clone> {
    spec: RateSpec,
    limiter: KeyedLimiter<K>,
    /// Checks since the last sweep of idle keys; `check` sweeps and restarts it every `retain_every` checks.
    checks: AtomicU64,
    retain_every: NonZeroU32,
    /// When this limit was built: the origin of `refused_until`.
    base: TokioInstant,
    /// Per refused key, the latest "no permit before" its refusals reported, in nanoseconds after `base` (see
    /// [`RateLimit::exhausted`]). Only keys that were refused are here, and the sweep drops those whose instant
    /// has passed.
    refused_until: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone> KeyedRateLimit<K> {
    /// A keyed limit that sweeps idle keys every [`DEFAULT_RETAIN_EVERY`] checks.
    pub fn new(spec: RateSpec) -> KeyedRateLimit<K> {
        KeyedRateLimit::with_retain_every(spec, DEFAULT_RETAIN_EVERY)
    }

    /// A keyed limit that sweeps idle keys every `retain_every` checks.
    pub fn with_retain_every(spec: RateSpec, retain_every: NonZeroU32) -> KeyedRateLimit<K> {
        KeyedRateLimit {
            spec,
            limiter: RateLimiter::new(spec.quota(), DefaultKeyedStateStore::default(), TokioClock),
            checks: AtomicU64::new(0),
            retain_every,
            base: TokioClock.now(),
            refused_until: Mutex::new(HashMap::new()),
        }
    }

    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Takes one permit for `key`, or says how long until its next one. Every `retain_every`-th call first sweeps
    /// idle keys.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if checks.is_multiple_of(u64::from(self.retain_every.get())) {
            self.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let until = since(self.base, not_until.earliest_possible());
            let mut refused = self.refused_until.lock().unwrap_or_else(PoisonError::into_inner);
            let at = refused.entry(key.clone()).or_insert(0);
            *at = (*at).max(until);
            refusal(&not_until, self.limiter.clock())
        })
    }

    /// Would [`check`](Self::check) refuse `key` now? Spends nothing; exact when it says yes (see
    /// [`RateLimit::exhausted`]).
    pub fn exhausted<Q>(&self, key: &Q) -> Option<RateLimited>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let until = self.refused_until.lock().unwrap_or_else(PoisonError::into_inner).get(key).copied()?;
        still_refused(self.base, until)
    }

    /// Forgets the keys whose budget has been full again for one replenish interval; they behave exactly like keys
    /// never seen. Keys still short of permits are kept. Refusals whose instant has passed are forgotten too.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
        let now = since(self.base, TokioClock.now());
        self.refused_until.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, until| *until > now);
    }

    /// The number of keys tracked (active ones plus idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedRateLimit<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit").field("spec", &self.spec).field("keys", &self.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn spec(count: u32, per: Duration, burst: u32) -> RateSpec {
        RateSpec::new(nz(count), per, nz(burst)).unwrap()
    }

    #[test]
    fn spec_validation() {
        let cases: &[(u32, Duration, u32, Option<RateSpecError>)] = &[
            (1, Duration::from_secs(60), 1, None),
            (5, Duration::from_secs(3600), 10, None),
            (1, Duration::from_nanos(1), 1, None),
            (1, Duration::ZERO, 1, Some(RateSpecError::ZeroPeriod)),
            (
                2,
                Duration::from_nanos(1),
                1,
                Some(RateSpecError::TooFine { count: nz(2), per: Duration::from_nanos(1) }),
            ),
            (1, MAX_BURST_REFILL, 1, None),
            (
                1,
                MAX_BURST_REFILL,
                2,
                Some(RateSpecError::TooLong { count: nz(1), per: MAX_BURST_REFILL, burst: nz(2) }),
            ),
            (
                1,
                Duration::MAX,
                u32::MAX,
                Some(RateSpecError::TooLong { count: nz(1), per: Duration::MAX, burst: nz(u32::MAX) }),
            ),
        ];
        for (count, per, burst, expected) in cases {
            let got = RateSpec::new(nz(*count), *per, nz(*burst));
            match expected {
                None => assert!(got.is_ok(), "{count} per {per:?} burst {burst}: {got:?}"),
                Some(error) => assert_eq!(got.as_ref(), Err(error), "{count} per {per:?} burst {burst}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_answers_from_the_last_refusal_and_spends_nothing() {
        let limit = RateLimit::new(spec(2, Duration::from_secs(60), 2));
        assert_eq!(limit.exhausted(), None, "nothing refused yet");
        assert!(limit.check().is_ok());
        assert!(limit.check().is_ok());
        assert_eq!(limit.exhausted(), None, "no refusal seen: check decides");
        let refused = limit.check().unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        assert_eq!(limit.exhausted(), Some(refused));
        advance(Duration::from_secs(10)).await;
        assert_eq!(limit.exhausted(), Some(RateLimited { retry_after: Duration::from_secs(20) }));
        advance(Duration::from_secs(20)).await;
        assert_eq!(limit.exhausted(), None, "the permit is due");
        assert!(limit.check().is_ok(), "asking spent nothing");
        assert!(limit.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_exhausted_is_per_key_and_swept_once_due() {
        let limit: KeyedRateLimit<Arc<str>> = KeyedRateLimit::new(spec(1, Duration::from_secs(60), 1));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(limit.check(&a).is_ok());
        assert!(limit.check(&b).is_ok());
        assert_eq!(limit.exhausted("a"), None, "no refusal seen");
        let refused = limit.check(&a).unwrap_err();
        assert_eq!(limit.exhausted("a"), Some(refused));
        assert_eq!(limit.exhausted("b"), None, "b was not refused");
        advance(Duration::from_secs(60)).await;
        assert_eq!(limit.exhausted("a"), None);
        limit.retain_recent();
        assert!(limit.refused_until.lock().unwrap().is_empty(), "a passed refusal is swept");
        assert!(limit.check(&a).is_ok(), "asking spent nothing");
    }

    #[test]
    fn spec_to_quota() {
        let quota = spec(6, Duration::from_secs(60), 3).quota();
        assert_eq!(quota.replenish_interval(), Duration::from_secs(10));
        assert_eq!(quota.burst_size(), nz(3));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refusal_then_refill_after_exactly_the_interval() {
        // 2 per minute: one permit back every 30 s; bursts of 3.
        let limit = RateLimit::new(spec(2, Duration::from_secs(60), 3));
        for n in 0..3 {
            assert_eq!(limit.check(), Ok(()), "burst permit {n}");
        }
        assert_eq!(limit.check(), Err(RateLimited { retry_after: Duration::from_secs(30) }));

        advance(Duration::from_secs(10)).await;
        assert_eq!(limit.check(), Err(RateLimited { retry_after: Duration::from_secs(20) }));

        advance(Duration::from_secs(20) - Duration::from_nanos(1)).await;
        assert_eq!(limit.check(), Err(RateLimited { retry_after: Duration::from_nanos(1) }));

        advance(Duration::from_nanos(1)).await;
        assert_eq!(limit.check(), Ok(()), "refilled after exactly the interval");
        assert_eq!(limit.check(), Err(RateLimited { retry_after: Duration::from_secs(30) }), "only one came back");

        // A full refill gives the whole burst back, and no more.
        advance(Duration::from_secs(90)).await;
        for n in 0..3 {
            assert_eq!(limit.check(), Ok(()), "refilled burst permit {n}");
        }
        assert!(limit.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_limits_are_independent_per_key() {
        let limit = KeyedRateLimit::new(spec(1, Duration::from_secs(60), 1));
        assert_eq!(limit.check(&"web-1"), Ok(()));
        assert_eq!(limit.check(&"web-1"), Err(RateLimited { retry_after: Duration::from_secs(60) }));
        assert_eq!(limit.check(&"web-2"), Ok(()), "another key has its own budget");
        assert!(limit.check(&"web-2").is_err());

        advance(Duration::from_secs(30)).await;
        assert_eq!(limit.check(&"web-3"), Ok(()));
        advance(Duration::from_secs(30)).await;
        assert_eq!(limit.check(&"web-1"), Ok(()));
        assert_eq!(limit.check(&"web-3"), Err(RateLimited { retry_after: Duration::from_secs(30) }));
    }

    #[tokio::test(start_paused = true)]
    async fn retain_recent_forgets_only_idle_keys() {
        // 1 per 10 s, burst 2. Key 1 spends one permit (full again at 10 s), key 2 both (full again at 20 s);
        // governor forgets a key one interval after it is full again.
        let limit = KeyedRateLimit::new(spec(1, Duration::from_secs(10), 2));
        limit.check(&1).unwrap();
        limit.check(&2).unwrap();
        limit.check(&2).unwrap();
        assert_eq!(limit.len(), 2);

        advance(Duration::from_secs(20) - Duration::from_nanos(1)).await;
        limit.retain_recent();
        assert_eq!(limit.len(), 2);

        advance(Duration::from_nanos(1)).await;
        limit.retain_recent();
        assert_eq!(limit.len(), 1, "key 1 is forgotten, key 2 not yet");

        advance(Duration::from_secs(10)).await;
        limit.retain_recent();
        assert!(limit.is_empty());

        // A forgotten key behaves like a new one.
        assert_eq!(limit.check(&2), Ok(()));
        assert_eq!(limit.check(&2), Ok(()));
        assert!(limit.check(&2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn check_sweeps_idle_keys_by_itself() {
        let limit = KeyedRateLimit::with_retain_every(spec(1, Duration::from_secs(1), 1), nz(4));
        for key in 0..3 {
            limit.check(&key).unwrap();
        }
        assert_eq!(limit.len(), 3);
        advance(Duration::from_secs(2)).await;
        // The 4th check sweeps the three idle keys first, then adds its own.
        limit.check(&100).unwrap();
        assert_eq!(limit.len(), 1);

        // Many distinct keys over time never pile up beyond what one sweep period adds.
        for key in 0..10_000u32 {
            limit.check(&key).unwrap();
            advance(Duration::from_millis(250)).await;
            // Kept: keys checked in the last 2 s (8), plus those since the last sweep (up to 3 more).
            assert!(limit.len() <= 12, "{} keys after key {key}", limit.len());
        }
    }
}
