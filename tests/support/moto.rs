//! Starts moto's AWS-compatible server (`moto_server` from PyPI's `moto[server]`) on a loopback port, and stops it
//! by PID. The tests reach it through the real AWS SDK with an endpoint override and fake static credentials.
//!
//! Facts this module relies on (moto 5.2 on this machine): Parameter Store is real enough (SecureString put and
//! get with decryption, by path, `ParameterNotFound`); Run Command is not executed (`SendCommand` answers Success
//! with empty output, `ListCommands` shows what was sent) — `support::ssm` executes commands. A pyenv shim
//! `exec`s the real server, so the PID stays moto's. Spawned under `setpriv --pdeathsig KILL` like the other
//! daemons, so it dies with the test process even when `Drop` never runs.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sshd::{find_in_path, free_port, setpriv, spawn_from_long_lived_thread};

const LOOPBACK: &str = "127.0.0.1";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "run `python3 -m pip install 'moto[server]'` (scripts/test.sh does)";

/// A running moto server; see the module documentation.
pub struct MotoServer {
    port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Starts `moto_server` on a free loopback port and waits until it answers HTTP.
    pub fn start() -> MotoServer {
        let binary: PathBuf =
            find_in_path("moto_server").unwrap_or_else(|| panic!("no moto_server on PATH: {INSTALL_HINT}"));
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("moto log file: {e}"));
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL"]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let stderr = log.reopen().unwrap_or_else(|e| panic!("moto log file: {e}"));
        command
            .args(["-H", LOOPBACK, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = spawn_from_long_lived_thread(command).unwrap_or_else(|e| panic!("cannot spawn moto_server: {e}"));
        let mut server = MotoServer { port, child: Some(child), log };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let addr: SocketAddr = format!("{LOOPBACK}:{}", self.port).parse().unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "moto_server exited ({status}): {}",
                    std::fs::read_to_string(self.log.path()).unwrap_or_default()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {addr} within {START_TIMEOUT:?}: {}",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{LOOPBACK}:{}", self.port)
    }

    /// Environment for a `rune` process (or an SDK config loader) that must reach this server and nothing else:
    /// fake static credentials, a region, the endpoint, and no profile files or instance metadata lookups.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        aws_env(&self.url())
    }

    /// An SSM client on this server through the real SDK (no retries: moto answers at once).
    pub fn ssm_client(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::from_conf(super::ssm::client_config(&self.url()).build())
    }
}

/// See [`MotoServer::aws_env`]; for any AWS-compatible endpoint at `url`.
pub fn aws_env(url: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "AKIDRUNETEST"),
        ("AWS_SECRET_ACCESS_KEY", "rune-test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL_SSM", url),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/rune-test-aws-config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/rune-test-aws-credentials"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
