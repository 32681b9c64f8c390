//! Host locks: at most one remediation per host at a time, across every rule and request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

/// A refusal: `host` is locked by `holder_of_lock` since `since`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host} is busy: locked by {holder_of_lock}")]
pub struct HostBusy {
    pub host: String,
    pub holder_of_lock: String,
    pub since: Instant,
}

/// The shared table of host locks. Cloning gives another handle to the same table.
#[derive(Debug, Clone, Default)]
pub struct HostLocks {
    table: Arc<Mutex<LockTable>>,
}

#[derive(Debug, Default)]
struct LockTable {
    /// Host → its current lease. An entry is removed only by the [`HostLease`] that created it, when dropped.
    leases: HashMap<String, LeaseEntry>,
    /// Numbers the leases, so a lease removes its own entry and never a later one.
    next_lease_id: u64,
}

#[derive(Debug)]
struct LeaseEntry {
    holder: String,
    since: Instant,
    lease_id: u64,
}

fn lock_table(table: &Mutex<LockTable>) -> MutexGuard<'_, LockTable> {
    table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HostLocks {
    pub fn new() -> HostLocks {
        HostLocks::default()
    }

    /// Takes the lock on `host` for `holder` (a name for diagnostics, e.g. a rule or a correlation id) at `now`.
    /// Not reentrant: a second acquisition by the same holder is refused like any other.
    pub fn try_acquire(&self, host: &str, holder: impl Into<String>, now: Instant) -> Result<HostLease, HostBusy> {
        let mut table = lock_table(&self.table);
        if let Some(entry) = table.leases.get(host) {
            return Err(HostBusy { host: host.to_owned(), holder_of_lock: entry.holder.clone(), since: entry.since });
        }
        let lease_id = table.next_lease_id;
        table.next_lease_id += 1;
        let holder = holder.into();
        table.leases.insert(host.to_owned(), LeaseEntry { holder: holder.clone(), since: now, lease_id });
        Ok(HostLease { table: Arc::clone(&self.table), host: host.to_owned(), holder, since: now, lease_id })
    }

    /// Every held lock as (host, holder), sorted by host; for diagnostics.
    pub fn held(&self) -> Vec<(String, String)> {
        let table = lock_table(&self.table);
        let mut held: Vec<_> = table.leases.iter().map(|(host, entry)| (host.clone(), entry.holder.clone())).collect();
        held.sort();
        held
    }
}

/// The exclusive lease on one host. Dropping it releases the host.
#[must_use = "dropping a host lease releases the host at once"]
pub struct HostLease {
    /// The table this lease's entry lives in; `Drop` removes the entry from it.
    table: Arc<Mutex<LockTable>>,
    host: String,
    holder: String,
    since: Instant,
    lease_id: u64,
}

impl HostLease {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn since(&self) -> Instant {
        self.since
    }
}

impl fmt::Debug for HostLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostLease")
            .field("host", &self.host)
            .field("holder", &self.holder)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        let mut table = lock_table(&self.table);
        if table.leases.get(&self.host).is_some_and(|entry| entry.lease_id == self.lease_id) {
            table.leases.remove(&self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn busy_while_held_and_free_after_drop() {
        let locks = HostLocks::new();
        let t0 = Instant::now();
        let lease = locks.try_acquire("web-1", "rule disk-full", t0).unwrap();
        assert_eq!((lease.host(), lease.holder(), lease.since()), ("web-1", "rule disk-full", t0));

        let busy = locks.try_acquire("web-1", "chatops alice", t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(busy, HostBusy { host: "web-1".into(), holder_of_lock: "rule disk-full".into(), since: t0 });
        assert!(locks.try_acquire("web-1", "rule disk-full", t0).is_err(), "not reentrant");

        drop(lease);
        assert!(locks.held().is_empty());
        assert!(locks.try_acquire("web-1", "chatops alice", t0).is_ok());
    }

    #[test]
    fn racing_acquirers_of_one_host_have_one_winner() {
        let locks = HostLocks::new();
        let now = Instant::now();
        let barrier = std::sync::Barrier::new(8);
        let winners = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|n| {
                    let (locks, barrier) = (&locks, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let lease = locks.try_acquire("web-1", format!("racer {n}"), now);
                        // Hold any winning lease until every racer has tried.
                        barrier.wait();
                        lease.is_ok()
                    })
                })
                .collect();
            racers.into_iter().map(|racer| racer.join().unwrap()).filter(|&won| won).count()
        });
        assert_eq!(winners, 1);
        assert!(locks.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_are_independent_and_clones_share_the_table() {
        let locks = HostLocks::new();
        let other_handle = locks.clone();
        let t0 = Instant::now();
        let _b = locks.try_acquire("b", "rule 1", t0).unwrap();
        let a = other_handle.try_acquire("a", "rule 2", t0).unwrap();
        assert!(other_handle.try_acquire("b", "rule 3", t0).is_err(), "a clone sees the same locks");
        assert_eq!(locks.held(), vec![("a".into(), "rule 2".into()), ("b".into(), "rule 1".into())]);
        drop(a);
        assert_eq!(locks.held(), vec![("b".to_owned(), "rule 1".to_owned())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_outlives_every_handle_and_moves_across_tasks() {
        let locks = HostLocks::new();
        let t0 = Instant::now();
        let lease = locks.try_acquire("a", "rule 1", t0).unwrap();
        let observer = locks.clone();
        drop(locks);
        tokio::spawn(async move { drop(lease) }).await.unwrap();
        assert!(observer.held().is_empty());
    }
}
