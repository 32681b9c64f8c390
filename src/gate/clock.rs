//! A governor clock on tokio time, so that paused test time (`tokio::time::pause`/`advance`) drives the rate limiters.

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, ReasonablyRealtime, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// Reads [`tokio::time::Instant::now`]: the real monotonic clock, or the paused clock of the current runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// A reading of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioInstant(pub Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(Duration::from(duration)).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

impl ReasonablyRealtime for TokioClock {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = TokioClock;
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(7)).await;
        let after = clock.now();
        assert_eq!(Duration::from(after.duration_since(before)), Duration::from_secs(7));
        assert_eq!(Duration::from(before.duration_since(after)), Duration::ZERO, "saturates");
        assert_eq!(before + Nanos::from(Duration::from_secs(7)), after);
        assert_eq!(after.saturating_sub(Nanos::from(Duration::from_secs(7))), before);
    }
}
