//! Real daemons for the integration tests, started on loopback and killed by PID when dropped.

pub mod nats;
pub mod sshd;
