//! `rune serve` as a child process for the tests that need the daemon whole (its stdout records, its logs).
#![allow(dead_code)] // the benches include the support module too, and use none of this

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `rune serve` with stdout and stderr collected; killed on drop.
pub struct Daemon {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `rune serve --config CONFIG` in `dir` at `RUNE_LOG=debug` with `vars` set, and waits until it
    /// listens; returns it and the listener's address.
    pub fn start(dir: &Path, config: &Path, vars: &[(&str, &str)]) -> (Daemon, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rune"))
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir)
            .env_remove("RUNE_CONFIG")
            .env("RUNE_LOG", "debug")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn rune serve: {e}"));
        let collect = |pipe: Box<dyn std::io::Read + Send>, into: Arc<Mutex<String>>| {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = into.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        };
        let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        collect(Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))), Arc::clone(&stdout));
        collect(Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))), Arc::clone(&stderr));
        let daemon = Daemon { child, stdout, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let err = daemon.stderr();
            if let Some(at) = err.find("rune serve: listening on ") {
                let rest = &err[at + "rune serve: listening on ".len()..];
                let rest = rest.split_once("://").map_or(rest, |(_, rest)| rest);
                let address = rest.split_whitespace().next().unwrap_or_default();
                let address = address.parse().unwrap_or_else(|e| panic!("`{address}`: {e}"));
                return (daemon, address);
            }
            assert!(Instant::now() < deadline, "rune serve did not start:\n{err}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
