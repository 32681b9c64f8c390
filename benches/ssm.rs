//! SSM transport benchmark: `noop` through the SSM-compatible test endpoint (`tests/support/ssm.rs`, which runs
//! the command on this machine), with the real SDK and RUNE's polling, beside the local transport as the floor.
//!
//! Run: `cargo bench --bench ssm` (env `RUNE_BENCH_RUNS=50`). Per pass: latency from `Orchestrator::plan` to the
//! result (p50/p90/p99/max), and the SSM calls per run. The endpoint answers at once, so what is measured is
//! RUNE's own cost and its polling schedule, not a real agent's delivery (seconds on AWS). Nothing here asserts a
//! time.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentile;
use rune::bpcs::RawArg;
use rune::inventory::{Inventory, TransportKind};
use rune::orchestrator::{Orchestrator, RunRequest};
use rune::plugins::Registry;
use rune::results::Status;
use rune::transport::ssh::SshTransport;
use rune::transport::ssm::{SsmSettings, SsmTransport};
use support::ssm::{Operation, SsmEndpoint};

const INSTANCE: &str = "i-0123456789abcdef0";

fn request(transport: Option<TransportKind>) -> RunRequest {
    RunRequest {
        action: "noop".into(),
        args: BTreeMap::from([("message".to_owned(), RawArg::Text("bench".into()))]),
        hosts: vec!["app-1".into()],
        operator: "bench".into(),
        transport,
        ..Default::default()
    }
}

struct Row {
    name: String,
    lat: Vec<Duration>,
    sends: usize,
    polls: usize,
}

fn pass(
    runtime: &tokio::runtime::Runtime,
    orchestrator: &Orchestrator,
    endpoint: &SsmEndpoint,
    name: &str,
    transport: Option<TransportKind>,
    runs: usize,
) -> Row {
    let (sends0, polls0) = calls(endpoint);
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let plan = orchestrator.plan(&request(transport)).unwrap_or_else(|e| panic!("plan: {e}"));
        let results = runtime.block_on(orchestrator.run_all(plan, 1));
        lat.push(started.elapsed());
        assert!(results.iter().all(|r| r.status == Status::Ok), "{name}: {:?}", results.first().map(|r| &r.error));
    }
    lat.sort();
    let (sends, polls) = calls(endpoint);
    Row { name: name.to_owned(), lat, sends: sends - sends0, polls: polls - polls0 }
}

fn calls(endpoint: &SsmEndpoint) -> (usize, usize) {
    (
        endpoint.request_bodies(Operation::SendCommand).len(),
        endpoint.request_bodies(Operation::GetCommandInvocation).len(),
    )
}

fn main() {
    let runs: usize = std::env::var("RUNE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let endpoint = SsmEndpoint::start(&[INSTANCE]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let registry = Arc::new(Registry::load(&[std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins")]));
    let inventory = Inventory::parse(
        &format!("hosts:\n  app-1:\n    transport: local\n    ssm: {{ instance_id: {INSTANCE} }}\n"),
        "bench",
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let inventory = Arc::new(inventory);
    let with = |settings: SsmSettings| {
        Orchestrator::new(registry.clone(), inventory.clone(), SshTransport::default())
            .with_ssm(SsmTransport::with_client(settings, endpoint.client()))
    };
    let default = with(SsmSettings::default());
    let eager = with(SsmSettings { poll_first: Duration::from_millis(20), ..SsmSettings::default() });
    // Warm-up: the SDK's first request sets up its HTTP client.
    let _ = pass(&runtime, &default, &endpoint, "warm-up", Some(TransportKind::Ssm), 2);
    let rows = vec![
        pass(&runtime, &default, &endpoint, "local transport (floor)", None, runs),
        pass(&runtime, &default, &endpoint, "ssm, default polling (first 100 ms)", Some(TransportKind::Ssm), runs),
        pass(&runtime, &eager, &endpoint, "ssm, first poll after 20 ms", Some(TransportKind::Ssm), runs),
    ];
    println!("SSM transport: noop through the SSM-compatible test endpoint, {runs} sequential runs per pass; ms");
    println!(
        "{:<38} {:>7} {:>7} {:>7} {:>7} {:>12} {:>12}",
        "pass", "p50", "p90", "p99", "max", "Send/run", "GetInv/run"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for r in &rows {
        println!(
            "{:<38} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>12.2} {:>12.2}",
            r.name,
            ms(percentile(&r.lat, 0.5)),
            ms(percentile(&r.lat, 0.9)),
            ms(percentile(&r.lat, 0.99)),
            ms(r.lat.last().copied().unwrap_or_default()),
            r.sends as f64 / r.lat.len() as f64,
            r.polls as f64 / r.lat.len() as f64,
        );
    }
}
