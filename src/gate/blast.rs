//! Blast radius: at most `max_hosts` distinct hosts remediated within a sliding window.
//!
//! A host counts from its latest admission until `window` later: it is in the window on `[last, last + window)` and
//! out of it at exactly `last + window`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Gives each [`BlastRadius`] its own id, so a ticket rolls back only in the radius that issued it.
static NEXT_RADIUS_ID: AtomicU64 = AtomicU64::new(0);

/// A refusal: `max_hosts` distinct hosts were already remediated within `window`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blast radius reached: {hosts_in_window} hosts remediated within {window:?}, at most {max_hosts} allowed")]
pub struct BlastExceeded {
    pub hosts_in_window: usize,
    pub max_hosts: usize,
    pub window: Duration,
}

/// The distinct hosts remediated within the sliding window, shared by every task of one rule (`&self` API).
#[derive(Debug)]
pub struct BlastRadius {
    max_hosts: NonZeroUsize,
    window: Duration,
    id: u64,
    hosts: Mutex<Hosts>,
}

#[derive(Debug, Default)]
struct Hosts {
    /// Host → its latest admission. Hosts out of the window are pruned on every admission.
    admitted: HashMap<String, Admission>,
    /// Numbers every admission, so a rollback can tell whether a later admission has touched the host since.
    next_generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    at: Instant,
    generation: u64,
}

impl Admission {
    fn in_window(&self, window: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < window
    }
}

/// Proof of one admission. Keeping it (or dropping it) keeps the host counted; [`BlastTicket::rollback`] undoes the
/// admission when the run does not happen after all.
#[derive(Debug)]
#[must_use = "a blast ticket is either kept (the host counts) or rolled back"]
pub struct BlastTicket {
    radius_id: u64,
    host: String,
    generation: u64,
    /// The admission this one replaced: `None` if this ticket added the host to the window.
    previous: Option<Admission>,
}

impl BlastRadius {
    pub fn new(max_hosts: NonZeroUsize, window: Duration) -> BlastRadius {
        BlastRadius {
            max_hosts,
            window,
            id: NEXT_RADIUS_ID.fetch_add(1, Ordering::Relaxed),
            hosts: Mutex::new(Hosts::default()),
        }
    }

    pub fn max_hosts(&self) -> NonZeroUsize {
        self.max_hosts
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits `host` at `now`: always if it is already in the window (its time is refreshed), and a new host only
    /// while fewer than `max_hosts` distinct hosts are in the window.
    pub fn try_admit(&self, host: &str, now: Instant) -> Result<BlastTicket, BlastExceeded> {
        let mut hosts = self.lock();
        let window = self.window;
        hosts.admitted.retain(|_, admission| admission.in_window(window, now));
        let generation = hosts.next_generation;
        let in_window = hosts.admitted.len();
        let previous = match hosts.admitted.get_mut(host) {
            Some(admission) => {
                let previous = *admission;
                *admission = Admission { at: admission.at.max(now), generation };
                Some(previous)
            }
            None if in_window < self.max_hosts.get() => {
                hosts.admitted.insert(host.to_owned(), Admission { at: now, generation });
                None
            }
            None => {
                return Err(BlastExceeded { hosts_in_window: in_window, max_hosts: self.max_hosts.get(), window });
            }
        };
        hosts.next_generation += 1;
        Ok(BlastTicket { radius_id: self.id, host: host.to_owned(), generation, previous })
    }

    /// The number of distinct hosts in the window at `now`.
    pub fn hosts_in_window(&self, now: Instant) -> usize {
        self.lock().admitted.values().filter(|admission| admission.in_window(self.window, now)).count()
    }
}

impl BlastTicket {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether this admission added the host to the window (rather than refreshing a host already in it).
    pub fn added(&self) -> bool {
        self.previous.is_none()
    }

    /// Undoes this admission: removes the host if this ticket added it, or restores its earlier time if this ticket
    /// refreshed it. Does nothing if a later admission of the same host has happened since (that one stands), or if
    /// `radius` is not the one that issued the ticket.
    pub fn rollback(self, radius: &BlastRadius) {
        if radius.id != self.radius_id {
            return;
        }
        let mut hosts = radius.lock();
        let Some(admission) = hosts.admitted.get_mut(&self.host) else { return };
        if admission.generation != self.generation {
            return;
        }
        match self.previous {
            Some(previous) => *admission = previous,
            None => {
                hosts.admitted.remove(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const NS: Duration = Duration::from_nanos(1);

    fn radius(max_hosts: usize) -> BlastRadius {
        BlastRadius::new(NonZeroUsize::new(max_hosts).unwrap(), 10 * MINUTE)
    }

    #[tokio::test(start_paused = true)]
    async fn admits_max_hosts_then_refuses_new_ones_but_not_known_ones() {
        let radius = radius(3);
        let t0 = Instant::now();
        for host in ["a", "b", "c"] {
            assert!(radius.try_admit(host, t0).unwrap().added(), "{host}");
        }
        let refused = radius.try_admit("d", t0 + MINUTE).unwrap_err();
        assert_eq!(refused, BlastExceeded { hosts_in_window: 3, max_hosts: 3, window: 10 * MINUTE });
        let again = radius.try_admit("b", t0 + MINUTE).unwrap();
        assert!(!again.added(), "a host already in the window is always admitted");
        assert_eq!(radius.hosts_in_window(t0 + MINUTE), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slide_frees_a_slot_at_exactly_the_edge() {
        let radius = radius(2);
        let t0 = Instant::now();
        let _ = radius.try_admit("a", t0).unwrap();
        let _ = radius.try_admit("b", t0 + MINUTE).unwrap();

        // (offset from t0, new host admitted?)
        let cases = [(10 * MINUTE - NS, false), (10 * MINUTE, true)];
        for (offset, admitted) in cases {
            assert_eq!(radius.try_admit(&format!("new-{offset:?}"), t0 + offset).is_ok(), admitted, "+{offset:?}");
        }
        assert_eq!(radius.hosts_in_window(t0 + 10 * MINUTE), 2, "b and the new host");
    }

    #[tokio::test(start_paused = true)]
    async fn readmission_refreshes_the_host_time() {
        let radius = radius(1);
        let t0 = Instant::now();
        let _ = radius.try_admit("a", t0).unwrap();
        let _ = radius.try_admit("a", t0 + 5 * MINUTE).unwrap();
        assert!(radius.try_admit("b", t0 + 10 * MINUTE).is_err(), "a still counts from its refresh");
        assert!(radius.try_admit("b", t0 + 15 * MINUTE).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_removes_an_added_host() {
        let radius = radius(1);
        let t0 = Instant::now();
        let ticket = radius.try_admit("a", t0).unwrap();
        assert!(radius.try_admit("b", t0).is_err());
        ticket.rollback(&radius);
        assert_eq!(radius.hosts_in_window(t0), 0);
        assert!(radius.try_admit("b", t0).is_ok(), "the slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_of_a_refresh_restores_the_earlier_time() {
        let radius = radius(1);
        let t0 = Instant::now();
        let _ = radius.try_admit("a", t0).unwrap();
        let refresh = radius.try_admit("a", t0 + 5 * MINUTE).unwrap();
        refresh.rollback(&radius);
        assert_eq!(radius.hosts_in_window(t0 + 5 * MINUTE), 1, "still counted from its first admission");
        assert!(radius.try_admit("b", t0 + 10 * MINUTE).is_ok(), "a left the window at its first admission's edge");
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_spares_a_later_admission_of_the_same_host() {
        let radius = radius(1);
        let t0 = Instant::now();
        let first = radius.try_admit("a", t0).unwrap();
        let _second = radius.try_admit("a", t0 + MINUTE).unwrap();
        first.rollback(&radius);
        assert_eq!(radius.hosts_in_window(t0 + MINUTE), 1, "the second run still counts");
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_in_another_radius_does_nothing() {
        let (one, other) = (radius(1), radius(1));
        let t0 = Instant::now();
        let ticket = one.try_admit("a", t0).unwrap();
        let _ = other.try_admit("a", t0).unwrap();
        ticket.rollback(&other);
        assert_eq!(other.hosts_in_window(t0), 1);
        assert_eq!(one.hosts_in_window(t0), 1);
    }
}
