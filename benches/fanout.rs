//! Fan-out benchmark: `noop` on N loopback sshd hosts through RUNE (cold: new connections; warm: pooled), and
//! plain OpenSSH as the floor (curve25519, all hosts in parallel, fresh connections, same runner program).
//!
//! Run: `cargo bench --bench fanout` (env `RUNE_BENCH_SIZES=1,10,50,100`, `RUNE_BENCH_ROUNDS=3`).
//! Prints a table; figures are recorded in BENCHMARKS.md. Nothing here asserts a time.

#[path = "../tests/support/sshd.rs"]
mod sshd;

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{machine_cpu, own_cpu, status_kib};
use rune::bpcs::RawArg;
use rune::inventory::Inventory;
use rune::orchestrator::{Orchestrator, RunRequest};
use rune::plugins::Registry;
use rune::results::Status;
use rune::transport::ssh::{PREFERRED_KEX, SshTransport};
use sshd::{FleetOptions, SshdFleet};

fn inventory(fleet: &SshdFleet) -> Inventory {
    let mut s = format!(
        "defaults:\n  user: {}\n  key: {}\n  known_hosts: {}\n  connect_timeout_s: 30\nhosts:\n",
        fleet.user(),
        fleet.client_key().display(),
        fleet.known_hosts().display()
    );
    for h in fleet.hosts() {
        s.push_str(&format!("  {}:\n    address: {}\n    port: {}\n", h.name, h.addr, h.port));
    }
    match Inventory::parse(&s, "bench", None) {
        Ok(i) => i,
        Err(e) => panic!("bench inventory: {e:?}"),
    }
}

fn request(hosts: &[String]) -> RunRequest {
    RunRequest {
        action: "noop".into(),
        args: BTreeMap::from([("message".to_owned(), RawArg::Text("bench".into()))]),
        hosts: hosts.to_vec(),
        operator: "bench".into(),
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Plain OpenSSH, all hosts in parallel, fresh connections: `ssh host bash -s < noop.sh`, with the few variables
/// noop needs set in front (the hosts are this machine, so the helpers are read from the repo). No RUNE runner,
/// no temp dir, no timeout wrapper: the floor a bare ssh loop would pay.
fn openssh_floor(fleet: &SshdFleet, hosts: &[String]) -> Duration {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plugin = std::fs::read(repo.join("plugins/noop.sh")).unwrap_or_else(|e| panic!("noop.sh: {e}"));
    let mut program = format!(
        "export RUNE_LIB={}/plugins/lib RUNE_HOST=bench RUNE_DRY_RUN=0 RUNE_ARG_message=bench\n",
        repo.display()
    )
    .into_bytes();
    program.extend_from_slice(&plugin);
    let programs: Vec<Vec<u8>> = hosts.iter().map(|_| program.clone()).collect();
    let start = Instant::now();
    let mut children = Vec::new();
    for (i, program) in programs.into_iter().enumerate() {
        let h = &fleet.hosts()[i];
        let mut child = Command::new("ssh")
            .args(["-o", "KexAlgorithms=curve25519-sha256", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", fleet.known_hosts().display()))
            .arg("-i")
            .arg(fleet.client_key())
            .args(["-p", &h.port.to_string()])
            .arg(format!("{}@{}", fleet.user(), h.addr))
            .arg("bash --noprofile --norc -s")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ssh: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&program);
        }
        children.push(child);
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait().map(|s| s.success()).unwrap_or(false) {
            failed += 1;
        }
    }
    let took = start.elapsed();
    if failed > 0 {
        eprintln!("warning: {failed} OpenSSH runs failed");
    }
    took
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let sizes: Vec<usize> = std::env::var("RUNE_BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("RUNE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let max = sizes.iter().copied().max().unwrap_or(1);
    sshd::ensure_prerequisites();
    let started = Instant::now();
    let fleet = SshdFleet::start(max, &FleetOptions::default());
    eprintln!("started {max} sshd hosts in {:.2}s", started.elapsed().as_secs_f64());
    let inventory = Arc::new(inventory(&fleet));
    let registry = Arc::new(Registry::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins")]));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    println!(
        "fan-out benchmark: noop over loopback sshd, {rounds} rounds per figure (median), RUNE kex {PREFERRED_KEX}"
    );
    println!(
        "{:>5} {:>12} {:>12} {:>12} {:>11} {:>11} {:>10} {:>16} {:>16}",
        "N",
        "openssh_ms",
        "rune_cold_ms",
        "rune_warm_ms",
        "cold/floor",
        "floor/warm",
        "rss_MiB",
        "warm_cpu_rune_ms",
        "warm_cpu_all_ms"
    );
    for &n in &sizes {
        let hosts: Vec<String> = fleet.hosts()[..n].iter().map(|h| h.name.clone()).collect();
        let mut floor = Vec::new();
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut warm_cpu_rune = Vec::new();
        let mut warm_cpu_all = Vec::new();
        for _ in 0..rounds {
            floor.push(openssh_floor(&fleet, &hosts));
            let orch = Orchestrator::new(registry.clone(), inventory.clone(), SshTransport::default());
            let (c, w, cpu) = runtime.block_on(async {
                let mut times = Vec::new();
                let mut cpu = (Duration::ZERO, Duration::ZERO);
                for _ in 0..2 {
                    let plan = match orch.plan(&request(&hosts)) {
                        Ok(p) => p,
                        Err(e) => panic!("plan: {e}"),
                    };
                    let (own, all) = (own_cpu(), machine_cpu());
                    let t = Instant::now();
                    let results = orch.run_all(plan, n).await;
                    times.push(t.elapsed());
                    cpu = (own_cpu().saturating_sub(own), machine_cpu().saturating_sub(all));
                    let bad: Vec<_> = results.iter().filter(|r| r.status != Status::Ok).collect();
                    if !bad.is_empty() {
                        eprintln!(
                            "warning: {} of {n} runs not ok, first: {:?} {:?}",
                            bad.len(),
                            bad[0].status,
                            bad[0].error
                        );
                    }
                }
                orch.ssh().close_all().await;
                (times[0], times[1], cpu)
            });
            cold.push(c);
            warm.push(w);
            warm_cpu_rune.push(cpu.0);
            warm_cpu_all.push(cpu.1);
        }
        let (f, c, w) = (median(floor), median(cold), median(warm));
        println!(
            "{n:>5} {:>12.1} {:>12.1} {:>12.1} {:>11.2} {:>11.1} {:>10.1} {:>16.1} {:>16.1}",
            f.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() / f.as_secs_f64(),
            f.as_secs_f64() / w.as_secs_f64(),
            status_kib("/proc/self/status", "VmHWM:") as f64 / 1024.0,
            median(warm_cpu_rune).as_secs_f64() * 1e3,
            median(warm_cpu_all).as_secs_f64() * 1e3
        );
    }
    println!(
        "peak RSS of the benchmark process (RUNE client side, no ssh children): {:.1} MiB",
        status_kib("/proc/self/status", "VmHWM:") as f64 / 1024.0
    );
}
