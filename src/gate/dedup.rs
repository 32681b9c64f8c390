//! Deduplication: the [`DedupStore`] seam (claim a key for a window, ask whether it is held, release it) and
//! [`MemoryDedup`], its single-process implementation.
//!
//! A key is held for the half-open interval `[claimed_at, claimed_at + window)`: at exactly `claimed_at + window`
//! it has expired and can be claimed again, so two runs claimed under one key are at least `window` apart.
//!
//! The modes a rule offers are built by the caller on [`DedupStore::claim`]:
//! - `once_within`: claim when the match comes; `Ok(true)` runs now, `Ok(false)` suppresses (a duplicate within
//!   the window).
//! - `once_after`: the claim opens the window; the caller parks the match and acts when the window closes (if the
//!   alert has not resolved, which [`DedupStore::release`]s the key), and suppresses the duplicates that arrive
//!   while the key is held.
//!
//! The check early in the gate pipeline is [`DedupStore::is_held`] (a read); the claim comes last, after every other
//! gate has said yes, and a run that then does not happen releases its claim.
//!
//! # Pending claims and their owner
//!
//! An admitted run claims its key *pending*, in the name of an owner: the identity of the message that carried
//! the alert (for JetStream, stream and sequence — the same on every redelivery — plus the event's place in the
//! payload and the host). Just before the plugin starts, the run [`DedupStore::commit`]s the claim; from then on
//! the key is held like any other. Until then, a claim of the *same owner* takes the pending claim over: when an
//! instance dies (or stalls past the ack wait) between deciding and starting, the redelivered message re-claims
//! its own key and runs, instead of being suppressed as a duplicate of a run that never happened. The takeover
//! gives the claim a new revision, so the first holder's commit fails and it does not run: one run, not two. A
//! committed claim is never taken over: a message redelivered after its run started (its ack was lost) is a
//! duplicate.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The default cap on keys held by a [`MemoryDedup`].
pub const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::MIN.saturating_add(100_000 - 1);

/// How many claims a [`MemoryDedup`] makes between two sweeps of all expired keys.
pub const SWEEP_EVERY_CLAIMS: u32 = 1024;

/// Why a dedup store could not answer. Every error means "suppress": the store fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DedupError {
    /// Every one of `max_keys` keys is live; evicting one could let its alert run twice, so the claim is refused.
    #[error("dedup store full: all {max_keys} keys are held; refusing to claim rather than evict a live key")]
    Full { max_keys: usize },
    /// A shared store (NATS JetStream KV, [`crate::gate::kv::KvDedup`]) did not answer or refused the request.
    #[error("dedup store unavailable: {0}")]
    Unavailable(String),
}

/// A claim made by [`DedupStore::claim_as`]: what [`DedupStore::commit`] and [`DedupStore::release_claim`] need to
/// act on exactly this claim and not on a later one of the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub key: String,
    pub window: Duration,
    /// The store's version of the key this claim wrote; 0 for a zero window (nothing held).
    pub revision: u64,
    /// Whose pending claim it is (None: committed when made).
    pub owner: Option<String>,
}

/// Where dedup keys are held: in-process ([`MemoryDedup`]) or cluster-wide on NATS JetStream KV
/// ([`crate::gate::kv::KvDedup`]), hence the async methods.
pub trait DedupStore: Send + Sync + 'static {
    /// Is `key` held (claimed and not expired) by anything but a pending claim of `owner`? A read; claims nothing.
    /// With no owner: is it held at all?
    fn is_held_for(
        &self,
        key: &str,
        owner: Option<&str>,
        now: Instant,
    ) -> impl Future<Output = Result<bool, DedupError>> + Send;

    /// Atomically claims `key` for `window` if it is not held, or takes it over if it is held by a pending claim of
    /// the same `owner`. With an owner the claim is pending until [`DedupStore::commit`]; without one it is
    /// committed at once. Ok(None) = held by someone else.
    fn claim_as(
        &self,
        key: &str,
        window: Duration,
        owner: Option<&str>,
        now: Instant,
    ) -> impl Future<Output = Result<Option<ClaimRef>, DedupError>> + Send;

    /// Commits a pending claim (its window starts again now). Ok(false) = the claim is no longer this one: taken
    /// over by its owner's redelivery, released by a resolved alert, or expired — the run must not start.
    fn commit(&self, claim: &ClaimRef, now: Instant) -> impl Future<Output = Result<bool, DedupError>> + Send;

    /// Rolls back exactly this claim (a later gate said no, or its run did not start); a claim made after it stays.
    /// Ok(true) if it was released.
    fn release_claim(&self, claim: &ClaimRef) -> impl Future<Output = Result<bool, DedupError>> + Send;

    /// Releases `key`, whoever holds it (a resolved alert clears it). Ok(true) if it was held.
    fn release(&self, key: &str) -> impl Future<Output = Result<bool, DedupError>> + Send;

    /// Is `key` held at all?
    fn is_held(&self, key: &str, now: Instant) -> impl Future<Output = Result<bool, DedupError>> + Send {
        self.is_held_for(key, None, now)
    }

    /// A committed claim: Ok(true) = claimed by this call, Ok(false) = already held.
    fn claim(
        &self,
        key: &str,
        window: Duration,
        now: Instant,
    ) -> impl Future<Output = Result<bool, DedupError>> + Send {
        async move { self.claim_as(key, window, None, now).await.map(|c| c.is_some()) }
    }
}

/// One claim: when it was made, for how long it holds its key, whose pending claim it is (None: committed).
#[derive(Debug, Clone)]
struct Claim {
    at: Instant,
    window: Duration,
    owner: Option<Box<str>>,
    revision: u64,
}

impl Claim {
    /// Held on `[at, at + window)`. Computed without adding to `at`, so no window is too long.
    fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < self.window
    }
}

#[derive(Debug, Default)]
struct Held {
    claims: HashMap<Box<str>, Claim>,
    /// Claims since the last full sweep of expired keys; `claim` sweeps and resets it every [`SWEEP_EVERY_CLAIMS`].
    claims_since_sweep: u32,
    /// The revision the last claim or commit was given.
    revision: u64,
}

impl Held {
    fn sweep(&mut self, now: Instant) -> usize {
        let before = self.claims.len();
        self.claims.retain(|_, claim| claim.is_live(now));
        self.claims_since_sweep = 0;
        before - self.claims.len()
    }
}

/// The in-process [`DedupStore`]: a map of held keys behind a mutex that is never held across an await.
///
/// Expired keys are removed when looked up, and all of them every [`SWEEP_EVERY_CLAIMS`] claims or when the map is
/// full. At most `max_keys` keys are kept: a claim that would need another slot while all are live gets
/// [`DedupError::Full`].
#[derive(Debug)]
pub struct MemoryDedup {
    held: Mutex<Held>,
    max_keys: NonZeroUsize,
}

impl Default for MemoryDedup {
    fn default() -> MemoryDedup {
        MemoryDedup::new(DEFAULT_MAX_KEYS)
    }
}

impl MemoryDedup {
    pub fn new(max_keys: NonZeroUsize) -> MemoryDedup {
        MemoryDedup { held: Mutex::new(Held::default()), max_keys }
    }

    pub fn max_keys(&self) -> NonZeroUsize {
        self.max_keys
    }

    /// Keys stored, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.lock().claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every key expired at `now`; returns how many.
    pub fn prune_expired(&self, now: Instant) -> usize {
        self.lock().sweep(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_held_now(&self, key: &str, owner: Option<&str>, now: Instant) -> bool {
        let mut held = self.lock();
        match held.claims.get(key) {
            Some(claim) if claim.is_live(now) => owner.is_none() || claim.owner.as_deref() != owner,
            Some(_) => {
                held.claims.remove(key);
                false
            }
            None => false,
        }
    }

    fn claim_now(
        &self,
        key: &str,
        window: Duration,
        owner: Option<&str>,
        now: Instant,
    ) -> Result<Option<ClaimRef>, DedupError> {
        let mut held = self.lock();
        held.claims_since_sweep += 1;
        if held.claims_since_sweep >= SWEEP_EVERY_CLAIMS {
            held.sweep(now);
        }
        let revision = held.revision + 1;
        let claimed = ClaimRef { key: key.to_owned(), window, revision, owner: owner.map(str::to_owned) };
        let claim = Claim { at: now, window, owner: owner.map(Box::from), revision };
        match held.claims.get_mut(key) {
            // A pending claim of the same owner is taken over (its redelivery).
            Some(existing) if existing.is_live(now) && (owner.is_none() || existing.owner.as_deref() != owner) => {
                return Ok(None);
            }
            Some(existing) if !window.is_zero() => {
                *existing = claim;
                held.revision = revision;
                return Ok(Some(claimed));
            }
            Some(_) => {
                held.claims.remove(key);
                return Ok(Some(ClaimRef { revision: 0, ..claimed }));
            }
            None => {}
        }
        // A zero window holds nothing: the claim succeeds and needs no slot.
        if window.is_zero() {
            return Ok(Some(ClaimRef { revision: 0, ..claimed }));
        }
        if held.claims.len() >= self.max_keys.get() {
            held.sweep(now);
            if held.claims.len() >= self.max_keys.get() {
                return Err(DedupError::Full { max_keys: self.max_keys.get() });
            }
        }
        held.claims.insert(key.into(), claim);
        held.revision = revision;
        Ok(Some(claimed))
    }

    fn commit_now(&self, claim: &ClaimRef, now: Instant) -> bool {
        if claim.revision == 0 {
            return true;
        }
        let mut held = self.lock();
        let revision = held.revision + 1;
        match held.claims.get_mut(claim.key.as_str()) {
            Some(c) if c.revision == claim.revision && c.is_live(now) => {
                c.owner = None;
                c.at = now;
                c.revision = revision;
                held.revision = revision;
                true
            }
            _ => false,
        }
    }

    fn release_claim_now(&self, claim: &ClaimRef) -> bool {
        let mut held = self.lock();
        match held.claims.get(claim.key.as_str()) {
            Some(c) if c.revision == claim.revision => held.claims.remove(claim.key.as_str()).is_some(),
            _ => false,
        }
    }

    fn release_now(&self, key: &str) -> bool {
        self.lock().claims.remove(key).is_some()
    }
}

impl DedupStore for MemoryDedup {
    async fn is_held_for(&self, key: &str, owner: Option<&str>, now: Instant) -> Result<bool, DedupError> {
        Ok(self.is_held_now(key, owner, now))
    }

    async fn claim_as(
        &self,
        key: &str,
        window: Duration,
        owner: Option<&str>,
        now: Instant,
    ) -> Result<Option<ClaimRef>, DedupError> {
        self.claim_now(key, window, owner, now)
    }

    async fn commit(&self, claim: &ClaimRef, now: Instant) -> Result<bool, DedupError> {
        Ok(self.commit_now(claim, now))
    }

    async fn release_claim(&self, claim: &ClaimRef) -> Result<bool, DedupError> {
        Ok(self.release_claim_now(claim))
    }

    /// Ok(true) if the key was stored. Without a `now` this cannot tell an expired key not yet swept from a live
    /// one: both count as held.
    async fn release(&self, key: &str) -> Result<bool, DedupError> {
        Ok(self.release_now(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::executor::block_on;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const NS: Duration = Duration::from_nanos(1);

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn claim_then_held_until_exactly_the_window_edge() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        assert_eq!(dedup.is_held("a", t0).await, Ok(false));
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(true));
        assert_eq!(dedup.is_held("a", t0).await, Ok(true), "is_held reads without claiming");

        assert_eq!(dedup.claim("a", MINUTE, t0 + MINUTE - NS).await, Ok(false), "one ns before the edge");
        // (offset from the claim, held?)
        let cases = [(Duration::ZERO, true), (MINUTE - NS, true), (MINUTE, false), (MINUTE + NS, false)];
        for (offset, held) in cases {
            assert_eq!(dedup.is_held("a", t0 + offset).await, Ok(held), "is_held at +{offset:?}");
        }
        assert_eq!(dedup.claim("a", MINUTE, t0 + MINUTE).await, Ok(true), "expired at claimed_at + window");
        assert_eq!(dedup.claim("a", MINUTE, t0 + MINUTE).await, Ok(false), "the new claim holds");
        assert_eq!(dedup.is_held("a", t0 + 2 * MINUTE - NS).await, Ok(true));
        assert_eq!(dedup.is_held("a", t0 + 2 * MINUTE).await, Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_independent_and_windows_per_claim() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(true));
        assert_eq!(dedup.claim("b", 2 * MINUTE, t0).await, Ok(true));
        assert_eq!(dedup.claim("b", MINUTE, t0 + MINUTE).await, Ok(false), "b's own window is two minutes");
        assert_eq!(dedup.claim("a", MINUTE, t0 + MINUTE).await, Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_the_key() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        assert_eq!(dedup.release("a").await, Ok(false), "nothing to release");
        dedup.claim("a", MINUTE, t0).await.unwrap();
        assert_eq!(dedup.release("a").await, Ok(true));
        assert_eq!(dedup.is_held("a", t0).await, Ok(false));
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(true), "claimable again at once");
        assert_eq!(dedup.release("a").await, Ok(true));
        assert_eq!(dedup.release("a").await, Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_claim_is_taken_over_by_its_owner_until_committed() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        let first = dedup.claim_as("a", MINUTE, Some("msg-1"), t0).await.unwrap().unwrap();
        assert_eq!(dedup.is_held("a", t0).await, Ok(true));
        assert_eq!(dedup.is_held_for("a", Some("msg-1"), t0).await, Ok(false), "not held against its owner");
        assert_eq!(dedup.is_held_for("a", Some("msg-2"), t0).await, Ok(true));
        assert_eq!(dedup.claim_as("a", MINUTE, Some("msg-2"), t0).await, Ok(None), "another owner is refused");
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(false));
        // The owner's redelivery takes the claim over; the first holder can then neither commit nor release it.
        let second = dedup.claim_as("a", MINUTE, Some("msg-1"), t0 + NS).await.unwrap().unwrap();
        assert_ne!(first.revision, second.revision);
        assert_eq!(dedup.commit(&first, t0 + NS).await, Ok(false));
        assert_eq!(dedup.release_claim(&first).await, Ok(false));
        assert_eq!(dedup.commit(&second, t0 + 2 * NS).await, Ok(true));
        // Committed: held against everyone, its owner included; the window runs from the commit.
        assert_eq!(dedup.is_held_for("a", Some("msg-1"), t0 + MINUTE).await, Ok(true));
        assert_eq!(dedup.claim_as("a", MINUTE, Some("msg-1"), t0 + MINUTE).await, Ok(None));
        assert_eq!(dedup.release_claim(&second).await, Ok(false), "the commit gave it a new revision");
        assert_eq!(dedup.is_held("a", t0 + 2 * NS + MINUTE).await, Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn release_claim_rolls_back_only_its_own_claim() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        let old = dedup.claim_as("a", MINUTE, Some("m"), t0).await.unwrap().unwrap();
        assert_eq!(dedup.release_claim(&old).await, Ok(true));
        assert_eq!(dedup.is_held("a", t0).await, Ok(false));
        let newer = dedup.claim_as("a", MINUTE, Some("n"), t0).await.unwrap().unwrap();
        assert_eq!(dedup.release_claim(&old).await, Ok(false), "a later claim of the key stays");
        assert_eq!(dedup.commit(&old, t0).await, Ok(false));
        assert_eq!(dedup.is_held("a", t0).await, Ok(true));
        assert_eq!(dedup.release("a").await, Ok(true), "a resolved alert clears any claim");
        assert_eq!(dedup.commit(&newer, t0).await, Ok(false), "a cleared claim cannot start its run");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_window_claims_without_holding() {
        let dedup = MemoryDedup::new(nz(1));
        let t0 = Instant::now();
        assert_eq!(dedup.claim("a", Duration::ZERO, t0).await, Ok(true));
        assert_eq!(dedup.claim("a", Duration::ZERO, t0).await, Ok(true));
        assert!(dedup.is_empty());
        dedup.claim("b", MINUTE, t0).await.unwrap();
        assert_eq!(dedup.claim("a", Duration::ZERO, t0).await, Ok(true), "needs no slot when full");
        assert_eq!(dedup.claim("b", Duration::ZERO, t0).await, Ok(false), "still refused while held");
    }

    #[tokio::test(start_paused = true)]
    async fn full_fails_closed_and_expiry_frees_room() {
        let dedup = MemoryDedup::new(nz(2));
        let t0 = Instant::now();
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(true));
        assert_eq!(dedup.claim("b", 2 * MINUTE, t0).await, Ok(true));
        assert_eq!(dedup.claim("c", MINUTE, t0).await, Err(DedupError::Full { max_keys: 2 }));
        assert_eq!(dedup.claim("a", MINUTE, t0).await, Ok(false), "a held key is still refused, not an error");
        assert_eq!(dedup.is_held("a", t0).await, Ok(true), "no live key was evicted");
        assert_eq!(dedup.is_held("b", t0).await, Ok(true), "no live key was evicted");
        assert_eq!(dedup.claim("c", MINUTE, t0 + MINUTE - NS).await, Err(DedupError::Full { max_keys: 2 }));

        // At the edge "a" expires; the full map is swept and "c" takes its slot.
        assert_eq!(dedup.claim("c", MINUTE, t0 + MINUTE).await, Ok(true));
        assert_eq!(dedup.len(), 2);
        assert_eq!(dedup.is_held("a", t0 + MINUTE).await, Ok(false));

        // A release frees room too.
        assert_eq!(dedup.release("b").await, Ok(true));
        assert_eq!(dedup.claim("d", MINUTE, t0 + MINUTE).await, Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept_every_so_many_claims() {
        let dedup = MemoryDedup::default();
        let t0 = Instant::now();
        for n in 0..SWEEP_EVERY_CLAIMS - 1 {
            dedup.claim(&format!("key-{n}"), MINUTE, t0).await.unwrap();
        }
        assert_eq!(dedup.len(), SWEEP_EVERY_CLAIMS as usize - 1);
        // The next claim, after the window, sweeps all the expired keys first.
        dedup.claim("last", MINUTE, t0 + MINUTE).await.unwrap();
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.prune_expired(t0 + 2 * MINUTE), 1);
        assert!(dedup.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_of_one_key_have_one_winner() {
        let dedup = std::sync::Arc::new(MemoryDedup::default());
        let now = Instant::now();
        let claims: Vec<_> = (0..20)
            .map(|_| {
                let dedup = std::sync::Arc::clone(&dedup);
                tokio::spawn(async move { dedup.claim("a", MINUTE, now).await })
            })
            .collect();
        let mut winners = 0;
        for claim in claims {
            if claim.await.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim { key: usize, window_ms: u64 },
        IsHeld { key: usize },
        Release { key: usize },
        Advance { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4usize, prop_oneof![Just(0u64), 1..50u64, Just(100u64)])
                .prop_map(|(key, window_ms)| Op::Claim { key, window_ms }),
            1 => (0..4usize).prop_map(|key| Op::IsHeld { key }),
            1 => (0..4usize).prop_map(|key| Op::Release { key }),
            3 => prop_oneof![Just(0u64), 1..60u64, Just(100u64)].prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// The reference model: key → (claimed at, window), in milliseconds; held on `[at, at + window)`.
    #[derive(Default)]
    struct Model {
        claims: HashMap<usize, (u64, u64)>,
    }

    impl Model {
        fn live(&self, key: usize, now: u64) -> bool {
            self.claims.get(&key).is_some_and(|&(at, window)| now < at + window)
        }

        fn claim(&mut self, key: usize, window: u64, now: u64, max_keys: usize) -> Result<bool, DedupError> {
            if self.live(key, now) {
                return Ok(false);
            }
            if window == 0 {
                self.claims.remove(&key);
                return Ok(true);
            }
            let live = self.claims.keys().filter(|&&other| self.live(other, now)).count();
            if live >= max_keys {
                return Err(DedupError::Full { max_keys });
            }
            self.claims.insert(key, (now, window));
            Ok(true)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// At most one successful claim per key per window, and every answer matches the reference model.
        #[test]
        fn memory_dedup_matches_the_model(ops in prop::collection::vec(op(), 1..200), max_keys in 1..5usize) {
            let base = Instant::now();
            let dedup = MemoryDedup::new(nz(max_keys));
            let mut model = Model::default();
            // key → (at, window) of its last successful claim not since released.
            let mut last_success: HashMap<usize, (u64, u64)> = HashMap::new();
            let mut now_ms = 0u64;
            for op in ops {
                let now = base + Duration::from_millis(now_ms);
                match op {
                    Op::Claim { key, window_ms } => {
                        let got = block_on(dedup.claim(&key.to_string(), Duration::from_millis(window_ms), now));
                        let expected = model.claim(key, window_ms, now_ms, max_keys);
                        prop_assert_eq!(&got, &expected, "claim {} for {} ms at {} ms", key, window_ms, now_ms);
                        if got == Ok(true) {
                            if let Some((at, window)) = last_success.get(&key) {
                                prop_assert!(now_ms >= at + window, "key {} claimed twice within a window", key);
                            }
                            last_success.insert(key, (now_ms, window_ms));
                        }
                    }
                    Op::IsHeld { key } => {
                        let got = block_on(dedup.is_held(&key.to_string(), now));
                        prop_assert_eq!(got, Ok(model.live(key, now_ms)), "is_held {} at {} ms", key, now_ms);
                    }
                    Op::Release { key } => {
                        let got = block_on(dedup.release(&key.to_string()));
                        // Release cannot tell a live key from an expired one not yet swept; only a live key
                        // must answer true.
                        if model.live(key, now_ms) {
                            prop_assert_eq!(got, Ok(true), "release of live key {}", key);
                        }
                        model.claims.remove(&key);
                        last_success.remove(&key);
                    }
                    Op::Advance { ms } => now_ms += ms,
                }
                prop_assert!(dedup.len() <= max_keys);
            }
        }
    }
}
