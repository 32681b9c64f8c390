//! Readings of another process from /proc — memory, threads, open file descriptors, established TCP connections
//! to given loopback ports, CPU time — and a thread that takes them once a second for the soak's series.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// `VmRSS` and `VmHWM` of /proc/PID/status.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    /// Entries of /proc/PID/fd.
    pub fds: usize,
    /// Established TCP connections of the process to 127.0.0.1 on one of the watched ports (the sshd fleet).
    pub ssh: usize,
    /// utime + stime of /proc/PID/stat.
    pub cpu: Duration,
}

/// Reads `pid`; `None` once the process is gone.
pub fn read(pid: u32, ssh_ports: &HashSet<u16>) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kib, hwm_kib, threads) = (field("VmRSS:"), field("VmHWM:"), field("Threads:"));
    // The socket inodes among the process's descriptors, then which of them are established connections to a
    // watched port (the table in /proc/PID/net/tcp is the whole network namespace's).
    let mut fds = 0;
    let mut sockets = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        {
            sockets.insert(inode.to_owned());
        }
    }
    let ssh = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(remote), Some(state), Some(inode)) = (fields.get(2), fields.get(3), fields.get(9)) else {
                return false;
            };
            let port = remote.strip_prefix("0100007F:").and_then(|p| u16::from_str_radix(p, 16).ok());
            *state == "01" && port.is_some_and(|p| ssh_ports.contains(&p)) && sockets.contains(*inode)
        })
        .count();
    Some(Reading { rss_kib, hwm_kib, threads, fds, ssh, cpu: super::measure::pid_cpu(Some(pid)) })
}

/// Counts of the soak at the moment of a sample: alerts published, decisions and results received.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub published: usize,
    pub decided: usize,
    pub results: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub reading: Reading,
    pub progress: Progress,
}

/// Samples a process every `every` on a thread of its own until stopped.
pub struct Sampler {
    /// Set by [`Sampler::stop`]; the thread checks it between samples.
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Joined by [`Sampler::stop`] (and by `Drop`, so a panicking test does not leave it running).
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(
        pid: u32,
        ssh_ports: HashSet<u16>,
        every: Duration,
        start: Instant,
        progress: impl Fn() -> Progress + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = thread::Builder::new()
            .name("soak-sampler".into())
            .spawn({
                let (stop, samples) = (stop.clone(), samples.clone());
                move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        let Some(reading) = read(pid, &ssh_ports) else { break };
                        let sample = Sample { at: start.elapsed(), reading, progress: progress() };
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                        next += every;
                        // Short sleeps, so that stop() returns quickly.
                        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the sampler thread: {e}"));
        Sampler { stop, samples, thread: Some(thread) }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the thread and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.join();
        self.samples()
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.join();
    }
}
