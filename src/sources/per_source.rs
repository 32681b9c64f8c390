//! Per-source limits of the webhook listener: open connections and requests per source address, so that one
//! misbehaving or hostile sender cannot take the listener from the others.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host commonly holds a whole /64, so counting single IPv6
//! addresses would let it rotate through 2^64 budgets); an IPv4-mapped IPv6 peer counts as its IPv4 address.
//! Behind a reverse proxy every request has the proxy's address: limit at the proxy, or raise these.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use crate::gate::ratelimit::{KeyedRateLimit, RateLimited, RateSpec};

/// Requests per second per source by default (`webhook.per_source.rate_limit`, burst the same).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;
/// Open connections per source by default (`webhook.per_source.max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The address a limit counts against: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(_) => SourceKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(IpAddr::V4(v4)),
                None => SourceKey(IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The limits and their state: requests per source (a keyed rate limit whose idle keys are swept), open
/// connections per source (a count per source with at least one open connection, so bounded by the open
/// connections themselves).
pub struct PerSource {
    requests: KeyedRateLimit<SourceKey>,
    max_connections: NonZeroUsize,
    open: Mutex<HashMap<SourceKey, usize>>,
}

impl PerSource {
    pub fn new(requests: RateSpec, max_connections: NonZeroUsize) -> Arc<PerSource> {
        Arc::new(PerSource { requests: KeyedRateLimit::new(requests), max_connections, open: Mutex::default() })
    }

    /// Counts a new connection from `ip`; `None` when its source already has `max_connections` open (the caller
    /// closes the new one). The permit gives the slot back when dropped.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let key = SourceKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_connections.get() {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit { per_source: Arc::clone(self), key })
    }

    /// Takes one request permit for `key`'s source, or says when the next comes back.
    pub fn request(&self, key: SourceKey) -> Result<(), RateLimited> {
        self.requests.check(&key)
    }

    pub fn max_connections(&self) -> NonZeroUsize {
        self.max_connections
    }

    /// Sources with at least one open connection.
    pub fn sources_connected(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl fmt::Debug for PerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerSource")
            .field("requests", &self.requests)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// One open connection's slot in its source's count; dropped when the connection ends.
pub struct ConnectionPermit {
    per_source: Arc<PerSource>,
    key: SourceKey,
}

impl ConnectionPermit {
    pub fn key(&self) -> SourceKey {
        self.key
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.per_source.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    fn per_source(count: u32, burst: u32, max_connections: usize) -> Arc<PerSource> {
        let spec = RateSpec::new(
            NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN),
            Duration::from_secs(1),
            NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        PerSource::new(spec, NonZeroUsize::new(max_connections).unwrap_or(NonZeroUsize::MIN))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(SourceKey::of(ip("10.0.0.1")).to_string(), "10.0.0.1");
        assert_eq!(SourceKey::of(ip("::ffff:10.0.0.1")), SourceKey::of(ip("10.0.0.1")));
        let a = SourceKey::of(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, SourceKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, SourceKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(SourceKey::of(ip("10.0.0.1")), SourceKey::of(ip("10.0.0.2")));
    }

    #[test]
    fn connections_are_capped_per_source_and_given_back_on_drop() {
        let limits = per_source(10, 10, 2);
        let a1 = limits.connect(ip("127.0.0.1"));
        let a2 = limits.connect(ip("127.0.0.1"));
        assert!(a1.is_some() && a2.is_some());
        assert!(limits.connect(ip("127.0.0.1")).is_none(), "a third from the same source");
        let b = limits.connect(ip("127.0.0.2"));
        assert!(b.is_some(), "another source has its own count");
        drop(a1);
        let a3 = limits.connect(ip("127.0.0.1"));
        assert!(a3.is_some(), "a slot came back");
        drop((a2, a3, b));
        assert_eq!(limits.sources_connected(), 0, "no count is kept for sources without connections");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_rate_limited_per_source() {
        let limits = per_source(2, 3, 1);
        let a = SourceKey::of(ip("192.0.2.1"));
        let b = SourceKey::of(ip("192.0.2.2"));
        for _ in 0..3 {
            assert!(limits.request(a).is_ok());
        }
        let refused = limits.request(a).err();
        assert_eq!(refused.map(|r| r.retry_after), Some(Duration::from_millis(500)));
        assert!(limits.request(b).is_ok(), "another source is not affected");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limits.request(a).is_ok(), "one permit came back");
    }
}
