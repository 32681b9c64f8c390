//! RUNE: an event-driven alert-to-remediation bridge that runs BPCS plugins on Linux hosts, agentlessly.
//!
//! # Layout
//!
//! ```text
//! payload ──sources──> Event ──engine: rules (match) + gate──> Decision ──admitted──> RunRequest (below)
//!                                                               └── suppressed(reason) / deferred / cleared
//!
//! rune run ──RunRequest──> orchestrator ──(plugin, host, args)──> mediator ──Invocation──> transport
//!                           │  validates action + args,             │  builds the runner program,      │ local / ssh / ssm
//!                           │  resolves plugin (registry) and       │  runs it, validates the BPCS      │
//!                           │  hosts (inventory), fans out          │  output into a RunResult          │
//!                           └──────────── ResultEnvelope (results) <─┴──────────── RawOutcome <─────────┘
//! ```
//!
//! - [`bpcs`]: the Bash Plugin Communication Spec v0.1 — header, input and output types and their validation.
//! - [`plugins`]: the plugin registry (discovery, headers, versions, sha256).
//! - [`lint`]: `rune plugin lint` — a plugin's header, BPCS rules for its bash body, shellcheck; every finding
//!   with file and line.
//! - [`inventory`]: hosts and groups; the only place targets come from.
//! - [`orchestrator`]: turns a run request into per-host runs with bounded parallelism.
//! - [`mediator`]: one plugin run on one host: invocation, timeout, output caps, output validation.
//! - [`golden`]: `rune plugin test`: one plugin run through the orchestrator as a real run, its result compared
//!   with an expectation; the golden cases in `plugins/tests/<plugin>/` and the stub commands they put on PATH.
//! - [`scaffold`]: `rune plugin new` — a new plugin with its header, helpers, dry run and first golden cases.
//! - [`installed`]: `sudo: installed` — root plugins installed on the host (`rune plugin bundle`), one sudoers
//!   line each; the request the installed runner reads.
//! - [`transport`]: how bytes reach a host (`local` subprocess, `ssh` with russh and a connection pool).
//! - [`bridge`]: the daemon's core: events → engine → published decisions → bounded runs → published results.
//! - [`audit`]: the hash-chained audit trail of every decision, dispatch, result and refusal; the orchestrator
//!   records each run's dispatch before it starts (a remediation the trail cannot record does not run).
//! - [`metrics`]: Prometheus metrics of the daemon.
//! - [`event`]: the normalised event every source produces.
//! - [`rules`]: rule files: loading with every error at once, compiled conditions, index, templates.
//! - [`engine`]: event → matching rules → gates → decisions (admitted with a host lease, or suppressed with a
//!   reason); once_after parking; atomic reload.
//! - [`gate`]: the gate primitives a rule passes before it runs (circuit breaker, dedup, blast radius, host
//!   locks, rate limits); each refusal is a value with a reason. Dedup and host locks exist in-process and, for
//!   several instances on one NATS, on JetStream KV (`gate::kv`).
//! - [`results`]: the result envelope every run produces, whoever started it, and its publishers (JSON Lines,
//!   NATS; with a results stream, an outbox that retries what the stream has not acknowledged).
//! - [`sources`]: payload adapters (Alertmanager, Grafana, generic, chatops): bytes in, [`event::Event`]s out;
//!   [`sources::webhook`] is the HTTP intake in front of them (auth, body bounds) that hands events to a sink,
//!   behind per-source limits ([`sources::per_source`]) and optional TLS ([`sources::tls`]);
//!   [`sources::nats`] the NATS intake (core, JetStream, chatops request/reply).
//! - [`config`]: the daemon's settings (one YAML/TOML file + `RUNE_*` overrides) validated into
//!   [`config::Settings`], every error at once with its position; secrets read from files or variables, or
//!   named by reference (`ssm:/…`) and read from Parameter Store ([`secrets`]) in one async step at start.
//! - [`cli`]: the `rune` command line.

pub mod audit;
pub mod bpcs;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod engine;
pub mod event;
pub mod gate;
pub mod golden;
pub mod installed;
pub mod inventory;
pub mod lint;
pub mod mediator;
pub mod metrics;
pub mod orchestrator;
pub mod plugins;
pub mod results;
pub mod rules;
pub mod scaffold;
pub mod secrets;
pub mod sources;
pub mod transport;
