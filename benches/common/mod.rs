//! Measuring helpers shared by the benchmarks (`#[path = "common/mod.rs"] mod common;`): CPU and memory from
//! /proc and getrusage, percentiles, and the Alertmanager payload the rules and bridge benchmarks send.
#![allow(dead_code)] // each benchmark uses some of these

use std::time::Duration;

/// A `kB` field (`VmRSS:`, `VmHWM:`) of a /proc status file (`/proc/self/status`, `/proc/<pid>/status`); 0 if
/// absent.
pub fn status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time used so far by this process (all threads).
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage(2) only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// CPU time used so far by process `pid` (utime + stime from /proc/PID/stat).
pub fn pid_cpu(pid: Option<u32>) -> Duration {
    let Some(pid) = pid else { return Duration::ZERO };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may contain spaces) come fields 3, 4, …; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(14) + field(15);
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

/// CPU time used so far by the whole machine (all cores, every process), from /proc/stat.
pub fn machine_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|cpu| {
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            cpu.split_whitespace()
                .skip(1)
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

/// The `p` quantile (0..=1) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// A one-alert Alertmanager v4 payload like a real node-exporter alert: 8 labels (the 8th is `extra`) and 2
/// annotations, ~1 KB.
pub fn alertmanager_payload(alertname: &str, host: &str, fingerprint: &str, extra: (&str, &str)) -> String {
    let (extra_name, extra_value) = extra;
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"{alertname}\"}}","truncatedAlerts":0,"status":"firing","receiver":"rune",
"groupLabels":{{"alertname":"{alertname}"}},"commonLabels":{{"alertname":"{alertname}","severity":"critical"}},"commonAnnotations":{{}},
"externalURL":"http://127.0.0.1:9093","alerts":[{{"status":"firing","labels":{{"alertname":"{alertname}","instance":"{host}:9100",
"job":"node","severity":"critical","env":"prod","team":"sre","{extra_name}":"{extra_value}","device":"sda"}},"annotations":{{"summary":"{alertname} on {host}",
"runbook_url":"http://127.0.0.1/runbooks/{alertname}"}},"startsAt":"2026-11-23T10:00:00Z","endsAt":"0001-01-01T00:00:00Z",
"generatorURL":"http://127.0.0.1:9090/graph","fingerprint":"{fingerprint}"}}]}}"#
    )
}

/// A xorshift64 generator with a fixed seed: the same "random" workload on every run, no dependency.
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
