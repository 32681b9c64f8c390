//! Hostile input, tried systematically: every parser that takes outside bytes (webhook adapters, NATS messages,
//! rule files, templates, plugin output and headers, subject patterns and tokens, inventories) against
//!
//! - the corpus in `tests/corpus/<target>/` plus the big inputs of [`generated`], replayed by `replay_*` below;
//! - property tests ([`props`]);
//! - a mutational fuzzer on stable ([`fuzz`], ignored: `scripts/fuzz.sh` or docs/testing.md).
//!
//! Each input must end in a clear error or a valid result ([`targets`] checks both), within a time bound (a
//! watchdog, not a tight clock) and a memory bound (measured by [`alloc`]).

mod alloc;
mod fuzz;
mod generated;
mod props;
mod targets;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use targets::{Outcome, Target};

/// Longer than any input may take, even in a debug build on a busy machine: past it the input hangs.
const HANG: Duration = Duration::from_secs(30);

/// What one input did.
#[derive(Debug)]
pub struct Verdict {
    /// Err: the panic message (a parser panic or a broken invariant).
    pub outcome: Result<Outcome, String>,
    pub peak_bytes: usize,
    pub elapsed: Duration,
}

impl Verdict {
    /// Why this verdict fails the input, if it does.
    pub fn failure(&self, target: &Target, input_len: usize) -> Option<String> {
        let bound = (target.memory_bound)(input_len);
        match &self.outcome {
            Err(panic) => Some(format!("panicked: {panic}")),
            Ok(_) if self.peak_bytes > bound => {
                Some(format!("held {} bytes at once, over the bound of {bound}", self.peak_bytes))
            }
            Ok(_) => None,
        }
    }
}

/// Runs one input through `target`, catching panics and measuring memory. `crash_path` (NUL-terminated) is where
/// the input is written if an allocation passes the allocator's hard cap.
pub fn run_one(target: &Target, input: &[u8], crash_path: Option<&[u8]>) -> Verdict {
    quiet_panics_in_targets();
    let started = Instant::now();
    let (outcome, peak_bytes) = alloc::measure(input, crash_path, || {
        IN_TARGET.with(|t| t.set(true));
        let outcome = std::panic::catch_unwind(|| (target.run)(input)).map_err(|e| panic_message(e.as_ref()));
        IN_TARGET.with(|t| t.set(false));
        outcome
    });
    Verdict { outcome, peak_bytes, elapsed: started.elapsed() }
}

thread_local! {
    /// Set while this thread runs a target: its panics are caught and reported in the verdict, not printed.
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent for panics inside [`run_one`] (the fuzzer and the property tests
/// provoke thousands) and prints every other panic as before.
fn quiet_panics_in_targets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target)
}

/// The committed corpus of a target, (file name, bytes), in name order. `README*` files are notes, not input;
/// `known-*` files reproduce an open issue (named in docs/testing.md) and are left out until it is fixed.
pub fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            (!name.starts_with("README") && !name.starts_with("known-")).then(|| (name, read(&p)))
        })
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replays the corpus and the generated inputs of `name`: each must end within [`HANG`], without a panic, within
/// the memory bound; `ok-*` files must be accepted and `bad-*` files refused.
fn replay(name: &'static str) {
    let target = targets::target(name);
    let mut inputs = corpus_files(name);
    assert!(!inputs.is_empty(), "no corpus for {name}");
    inputs.extend(generated::generated(name));
    let count = inputs.len();
    let (tx, rx) = mpsc::channel();
    // RUNE_HOSTILE_TRACE=1 names each input before it runs (to find the one that crashes the process).
    let trace = std::env::var_os("RUNE_HOSTILE_TRACE").is_some();
    let worker = std::thread::spawn(move || {
        for (file, input) in inputs {
            if trace {
                eprintln!("{name}: {file}");
            }
            let verdict = run_one(target, &input, None);
            if tx.send((file, input.len(), verdict)).is_err() {
                return;
            }
        }
    });
    let mut failures = Vec::new();
    let mut slowest: Vec<(Duration, String)> = Vec::new();
    for _ in 0..count {
        let (file, len, verdict) = match rx.recv_timeout(HANG) {
            Ok(next) => next,
            // The worker is stuck in an input: the test fails; the thread dies with the process.
            Err(_) => panic!("{name}: an input took longer than {HANG:?} (the one after the last reported)"),
        };
        slowest.push((verdict.elapsed, file.clone()));
        if let Some(why) = verdict.failure(target, len) {
            failures.push(format!("{file}: {why}"));
            continue;
        }
        let accepted = matches!(verdict.outcome, Ok(Outcome::Accepted(_)));
        if file.starts_with("ok-") && !accepted {
            failures.push(format!("{file}: should be accepted, got {:?}", verdict.outcome));
        }
        if file.starts_with("bad-") && accepted {
            failures.push(format!("{file}: should be refused, got {:?}", verdict.outcome));
        }
    }
    let _ = worker.join();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    slowest.truncate(3);
    eprintln!("{name}: {count} inputs; slowest: {slowest:?}");
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name).trim_start_matches("replay_"));
            }
        )*
    };
}

replay_tests!(
    replay_alertmanager,
    replay_grafana,
    replay_generic,
    replay_chatops,
    replay_nats,
    replay_rules,
    replay_templates,
    replay_bpcs_output,
    replay_plugin_header,
    replay_subject_pattern,
    replay_token,
    replay_inventory,
);

/// Every target has a corpus folder, and every corpus folder a target.
#[test]
fn corpus_folders_match_the_targets() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    folders.sort();
    let mut names: Vec<String> = targets::TARGETS.iter().map(|t| t.name.to_owned()).collect();
    names.sort();
    assert_eq!(folders, names);
}
