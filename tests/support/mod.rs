//! Real daemons (and an SSM-compatible endpoint) for the integration tests, started on loopback and stopped when
//! dropped.

pub mod daemon;
pub mod moto;
pub mod nats;
pub mod pki;
pub mod sshd;
pub mod ssm;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `rune` binary in `dir` with exactly the `RUNE_*` variables given (every inherited one is removed,
/// so a developer's environment cannot change a test).
#[allow(dead_code)] // not every binary that includes this module runs the CLI
pub fn rune(args: &[&str], dir: &Path, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rune"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().to_ascii_uppercase().starts_with("RUNE_") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().copied()).output().unwrap_or_else(|e| panic!("cannot run rune: {e}"))
}

/// stdout then stderr, as text (for assertion messages).
#[allow(dead_code)] // not every binary that includes this module runs the CLI
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
