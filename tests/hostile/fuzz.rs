//! A mutational fuzzer that runs on stable Rust: no coverage instrumentation, but the corpus, a dictionary per
//! target, stacked mutations (bit flips, interesting bytes, dictionary words, deletions, repeats, splices,
//! truncations) and outcome feedback: an input whose outcome (accepted, or the shape of its error) was not seen
//! before joins the pool, so mutation reaches past the first check.
//!
//! Ignored in `cargo test`; run it in release:
//!
//! ```text
//! RUNE_FUZZ_SECONDS=60 cargo test --release --test integration -- --ignored --nocapture hostile::fuzz
//! ```
//!
//! `RUNE_FUZZ_SECONDS` (per target, default 30), `RUNE_FUZZ_TARGETS` (comma list, default all), `RUNE_FUZZ_SEED`
//! (default: from the clock; printed, so a run can be repeated). A panic, a broken invariant, a memory bound or
//! a hang saves the input as `tests/corpus/<target>/crash-<sha256 prefix>` (then replayed by `cargo test` until
//! fixed) and fails the run; an input slower than a second is saved as `slow-<hash>` and reported.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::targets::{Outcome, TARGETS, Target};
use super::{HANG, corpus_dir, corpus_files, generated, run_one};

/// Longest input the mutator builds.
const MAX_INPUT: usize = 64 * 1024;
/// Most inputs kept in the pool of one target.
const MAX_POOL: usize = 4096;
/// Most outcome shapes remembered per target (a bound on the fuzzer's own memory).
const MAX_SHAPES: usize = 100_000;
/// An input slower than this is reported and kept.
const SLOW: Duration = Duration::from_secs(1);

/// xorshift64*: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING: &[u8] = b"\0\xff\x7f\x80\xc0\xed\xef\"'\\\n\r\t {}[]:,.*>%$`;|&-@#~";

/// One mutation of `input`, possibly borrowing from `other`.
fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], dictionary: &[&str]) {
    let len = input.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 | 3 => {
            let word = dictionary[rng.below(dictionary.len())].as_bytes();
            let at = rng.below(len + 1);
            input.splice(at..at, word.iter().copied());
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64.min(len - start))).min(len);
            input.drain(start..end);
        }
        5 if len > 0 => {
            // Repeat a slice: builds deep nesting and long runs out of small seeds.
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16.min(len - start))).min(len);
            let most = if rng.chance(8) { 4096 } else { 64 };
            let times = 1 + rng.below(most);
            let slice = input[start..end].to_vec();
            let repeated: Vec<u8> = slice.iter().copied().cycle().take(slice.len() * times).collect();
            input.splice(end..end, repeated);
        }
        6 if !other.is_empty() => {
            // Splice: a prefix of this input and a suffix of another.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => input.truncate(rng.below(len)),
        8 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        _ if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(8.min(len - start))).min(len);
            let word = dictionary[rng.below(dictionary.len())].as_bytes();
            input.splice(start..end, word.iter().copied());
        }
        _ => input.extend_from_slice(dictionary[rng.below(dictionary.len())].as_bytes()),
    }
}

/// The shape of an outcome: accepted or refused, and the first words of the summary or first error, leaving out
/// quoted text (`…`, "…"), digits, and any word the input itself contains (a quote can break on a backtick in a
/// key), so that inputs differing only in their values have one shape.
fn shape(outcome: &Outcome, input: &[u8]) -> String {
    let (kind, text) = match outcome {
        Outcome::Accepted(summary) => ("ok", summary.as_str()),
        Outcome::Refused(messages) => ("err", messages.first().map_or("", String::as_str)),
    };
    let mut plain = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars().take(600) {
        match quote {
            _ if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '`' | '"') => quote = Some(c),
            None if c.is_ascii_alphabetic() => plain.push(c.to_ascii_lowercase()),
            None => plain.push(' '),
        }
    }
    let from_input = |word: &str| {
        let head = &input[..input.len().min(16 * 1024)];
        head.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    };
    let words: Vec<&str> = plain.split_whitespace().filter(|w| w.len() <= 16 && !from_input(w)).take(10).collect();
    format!("{kind}: {}", words.join(" "))
}

fn hash(input: &[u8]) -> String {
    hex::encode(&Sha256::digest(input)[..8])
}

/// Saves a failing input in the target's corpus folder and returns its path.
fn save(target: &str, prefix: &str, input: &[u8]) -> String {
    let path = corpus_dir(target).join(format!("{prefix}-{}", hash(input)));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("cannot save {}: {e}", path.display());
    }
    path.display().to_string()
}

/// What one target's run found.
struct Report {
    execs: u64,
    elapsed: Duration,
    pool: usize,
    shapes: usize,
    slowest: (Duration, usize),
    failures: Vec<String>,
}

/// The input in progress, for the watchdog: (started, exec number, bytes).
type Current = Arc<Mutex<Option<(Instant, u64, Arc<Vec<u8>>)>>>;

fn fuzz_target(target: &'static Target, seed: u64, budget: Duration) -> Report {
    let mut pool: Vec<Vec<u8>> = corpus_files(target.name).into_iter().map(|(_, bytes)| bytes).collect();
    pool.extend(generated::generated(target.name).into_iter().map(|(_, b)| b).filter(|b| b.len() <= 64 * 1024));
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seeds = pool.len().min(MAX_POOL / 2);
    let current: Current = Arc::new(Mutex::new(None));
    let worker_current = Arc::clone(&current);
    let crash_path = {
        let mut p = corpus_dir(target.name).join("crash-oom").display().to_string().into_bytes();
        p.push(0);
        p
    };
    let worker = std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut shapes: HashSet<String> = HashSet::new();
        let mut report = Report {
            execs: 0,
            elapsed: Duration::ZERO,
            pool: 0,
            shapes: 0,
            slowest: (Duration::ZERO, 0),
            failures: Vec::new(),
        };
        let started = Instant::now();
        while started.elapsed() < budget {
            let mut input = pool[rng.below(pool.len())].clone();
            let other = &pool[rng.below(pool.len())];
            for _ in 0..1 + rng.below(4) {
                mutate_once(&mut rng, &mut input, other, target.dictionary);
            }
            input.truncate(MAX_INPUT);
            let input = Arc::new(input);
            report.execs += 1;
            if let Ok(mut c) = worker_current.lock() {
                *c = Some((Instant::now(), report.execs, Arc::clone(&input)));
            }
            let verdict = run_one(target, &input, Some(&crash_path));
            if verdict.elapsed > report.slowest.0 {
                report.slowest = (verdict.elapsed, input.len());
            }
            if verdict.elapsed > SLOW {
                let path = save(target.name, "slow", &input);
                eprintln!("{}: exec {} took {:?}: {path}", target.name, report.execs, verdict.elapsed);
            }
            if let Some(why) = verdict.failure(target, input.len()) {
                let path = save(target.name, "crash", &input);
                eprintln!("{}: exec {} {why}\n  saved {path}", target.name, report.execs);
                report.failures.push(format!("{path}: {why}"));
                if report.failures.len() >= 10 {
                    break;
                }
                continue;
            }
            if let Ok(outcome) = &verdict.outcome
                && shapes.len() < MAX_SHAPES
                && shapes.insert(shape(outcome, &input))
            {
                if pool.len() < MAX_POOL {
                    pool.push(input.to_vec());
                } else {
                    // Full: replace an input the run added (the seeds stay).
                    let at = seeds + rng.below(pool.len() - seeds);
                    pool[at] = input.to_vec();
                }
            }
        }
        report.elapsed = started.elapsed();
        report.pool = pool.len();
        report.shapes = shapes.len();
        report
    });
    // Watchdog: an input running longer than HANG is saved and the process ends (the worker cannot be stopped).
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let stuck = current.lock().ok().and_then(|c| c.clone()).filter(|(since, _, _)| since.elapsed() > HANG);
        if let Some((_, exec, input)) = stuck {
            let path = save(target.name, "crash", &input);
            eprintln!("{}: exec {exec} hangs (over {HANG:?}); saved {path}", target.name);
            std::process::exit(101);
        }
    }
    worker.join().unwrap_or_else(|e| panic!("{}: fuzz worker died: {e:?}", target.name))
}

#[test]
#[ignore = "fuzzing: run in release, see the module docs"]
fn fuzz() {
    let seconds: u64 = std::env::var("RUNE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("RUNE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let only: Option<Vec<String>> =
        std::env::var("RUNE_FUZZ_TARGETS").ok().map(|s| s.split(',').map(|t| t.trim().to_owned()).collect());
    eprintln!("RUNE_FUZZ_SEED={seed} RUNE_FUZZ_SECONDS={seconds}");
    let mut failures = Vec::new();
    for target in TARGETS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == target.name)) {
            continue;
        }
        // One stream per target, so RUNE_FUZZ_TARGETS=<one> with the same seed repeats that target's inputs.
        let target_seed = seed ^ u64::from_le_bytes(Sha256::digest(target.name)[..8].try_into().unwrap_or([0; 8]));
        let r = fuzz_target(target, target_seed, Duration::from_secs(seconds));
        eprintln!(
            "{:<16} {:>9} execs in {:>5.1}s = {:>8.0}/s, pool {:>4}, outcome shapes {:>4}, slowest {:?} ({} bytes), {} failures",
            target.name,
            r.execs,
            r.elapsed.as_secs_f64(),
            r.execs as f64 / r.elapsed.as_secs_f64().max(1e-9),
            r.pool,
            r.shapes,
            r.slowest.0,
            r.slowest.1,
            r.failures.len()
        );
        failures.extend(r.failures);
    }
    assert!(failures.is_empty(), "fuzzing failed (seed {seed}):\n{}", failures.join("\n"));
}

#[test]
fn mutations_are_deterministic_per_seed() {
    let dictionary = ["{", "}"];
    let run = |seed| {
        let mut rng = Rng::new(seed);
        let mut input = b"{\"labels\":{}}".to_vec();
        for _ in 0..100 {
            mutate_once(&mut rng, &mut input, b"[1,2]", &dictionary);
        }
        input
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn shapes_blur_values() {
    let refused = |m: &str| Outcome::Refused(vec![m.to_owned()]);
    let none = b"";
    assert_eq!(
        shape(&refused("generic payload: `labels.a`: name \"x\\\"y\" is 3 bytes"), none),
        shape(&refused("generic payload: `labels.bb`: name \"zz\" is 400 bytes"), none)
    );
    assert_ne!(shape(&refused("a: is empty"), none), shape(&refused("a: contains a NUL character"), none));
    assert_ne!(shape(&Outcome::Accepted("1 events".into()), none), shape(&refused("1 events"), none));
    // A backtick in a key breaks the quoting; the key's words are still left out, being the input's.
    assert_eq!(
        shape(&refused("generic payload: `.a`elsel`: unknown field `.a`elsel`"), b"{\".a`elsel\":1}"),
        shape(&refused("generic payload: `.b`wxyz`: unknown field `.b`wxyz`"), b"{\".b`wxyz\":1}")
    );
}
