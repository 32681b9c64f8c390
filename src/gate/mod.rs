//! The gate primitives a matched rule passes before it runs; they know nothing of rules, events or transports.
//!
//! The rules engine composes them in this order: safety class → [`breaker`] → [`dedup`] check → [`blast`] radius →
//! host [`lock`] → [`ratelimit`]s → [`dedup`] claim. Every refusal is a value carrying its reason. Time is a
//! `tokio::time::Instant` passed in as `now`, except in the rate limiters, which read [`clock::TokioClock`].
//!
//! [`dedup::MemoryDedup`] and [`lock::HostLocks`] serve one process; [`kv`] holds the same two gates on NATS
//! JetStream KV for several instances sharing one NATS (there, time is the server's).

pub mod blast;
pub mod breaker;
pub mod clock;
pub mod dedup;
pub mod kv;
pub mod lock;
pub mod ratelimit;
