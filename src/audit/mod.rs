//! The audit trail: one record for every decision, dispatch, result and refusal, appended to a JSON Lines file
//! that is fsync'd, hash-chained and rotated by size (docs/security.md, "Audit trail").
//!
//! Each line is one JSON object: `seq` (1, 2, … across files), `time`, `kind`, the record's fields, `prev` (the
//! previous record's hash; [`GENESIS`] for the first) and `hash`: the SHA-256 of the line's bytes up to (not
//! including) `,"hash":"`. Editing, removing, reordering or cutting a record breaks the chain where it happened
//! ([`verify`]). Rotation renames the active file to `<name>.NNNNNN` (oldest lowest) and starts a new one whose
//! first record continues the chain. `<name>.head` holds the last record's seq and hash: records removed from the
//! end while RUNE was down are noticed at the next start and by `rune audit verify`.
//!
//! Writing happens on a thread of its own (blocking file I/O never runs on the runtime): appends are batched, one
//! write and one `fdatasync` per batch. [`AuditLog::append`] returns once its record is on disk — what a
//! remediation waits for before it runs (fail closed); [`AuditLog::record`] only queues (suppressions at alert
//! storm rates). A failed write is cut back off the file, so the chain on disk stays whole; the records of that
//! batch get the error.

pub mod records;
pub mod verify;

pub use records::Auditor;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

/// `prev` of the first record of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// What precedes the hash on every line; the hash covers the bytes before it.
pub(crate) const HASH_MARK: &str = ",\"hash\":\"";
/// Keys the trail sets itself; a record's own fields with these names are dropped.
const RESERVED: [&str; 5] = ["seq", "time", "kind", "prev", "hash"];
/// Records written with one `write` and one `fdatasync` at most.
const MAX_BATCH: usize = 4096;
/// Longest record line read back (at open, by `verify`): records are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where and how the trail is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The active file; rotated files sit beside it.
    pub path: PathBuf,
    /// The active file is rotated once it reaches this size.
    pub max_bytes: u64,
    /// Records waiting for the writer; appends wait beyond it (backpressure, not loss).
    pub queue: usize,
    /// Every record's line once it is on disk (`rune.audit` on NATS). Best effort: a full channel drops the copy
    /// (counted in [`AuditLog::mirror_dropped`]), never the record.
    pub mirror: Option<mpsc::Sender<Arc<str>>>,
}

impl AuditOptions {
    pub fn new(path: impl Into<PathBuf>) -> AuditOptions {
        AuditOptions { path: path.into(), max_bytes: 100 * 1024 * 1024, queue: 65_536, mirror: None }
    }
}

/// Why a record is not (known to be) on disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit trail closed")]
    Closed,
}

/// A record on disk: its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

struct Job {
    kind: &'static str,
    fields: Map<String, Value>,
    done: Option<oneshot::Sender<Result<Receipt, AuditError>>>,
    /// The last record: the writer ends after it (and lets go of the trail's lock before answering).
    last: bool,
}

/// A handle on the trail's writer; clones share it. The writer ends when the last handle is dropped, after
/// writing what was queued.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    path: Arc<PathBuf>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    failed: AtomicU64,
    mirror_dropped: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the trail, finds where its chain ends — in the active file, else the newest
    /// rotated one — checks it against the head file, and starts the writer, whose first record is a `start`
    /// record (with what was found wrong at the end, if anything).
    pub fn open(options: AuditOptions) -> Result<AuditLog, AuditError> {
        let writer = Writer::open(&options)?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let stats = Arc::new(Stats::default());
        let path = Arc::new(options.path.clone());
        let thread_stats = stats.clone();
        let mirror = options.mirror.clone();
        let start = writer.start_fields();
        std::thread::Builder::new()
            .name("rune-audit".into())
            .spawn(move || writer.run(rx, mirror, thread_stats))
            .map_err(|e| io_error(&options.path, "cannot start the writer thread", &e))?;
        let log = AuditLog { tx, path, stats };
        // Queued first, so it is the first record of this process.
        log.tx
            .try_send(Job { kind: "start", fields: start, done: None, last: false })
            .map_err(|_| AuditError::Closed)?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record and waits until it is on disk.
    pub async fn append(&self, kind: &'static str, fields: Map<String, Value>) -> Result<Receipt, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Job { kind, fields, done: Some(done), last: false }).await.map_err(|_| AuditError::Closed)?;
        wait.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Queues a record without waiting for the disk (waits only while the queue is full). A write that then
    /// fails is logged and counted ([`AuditLog::failed`]).
    pub async fn record(&self, kind: &'static str, fields: Map<String, Value>) {
        if self.tx.send(Job { kind, fields, done: None, last: false }).await.is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(kind, path = %self.path.display(), "audit record lost: the audit writer has stopped");
        }
    }

    /// Writes a `stop` record, the trail's last from this process, and waits for it: every record queued before
    /// it is on disk too (first in, first out), and the trail is free for another writer. Later appends get
    /// [`AuditError::Closed`].
    pub async fn close(&self, fields: Map<String, Value>) -> Result<Receipt, AuditError> {
        let (done, wait) = oneshot::channel();
        let job = Job { kind: "stop", fields, done: Some(done), last: true };
        self.tx.send(job).await.map_err(|_| AuditError::Closed)?;
        wait.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Records that could not be written since start.
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Lines not copied to the mirror because it was full.
    pub fn mirror_dropped(&self) -> u64 {
        self.stats.mirror_dropped.load(Ordering::Relaxed)
    }
}

/// A mirror ([`AuditOptions::mirror`]) that publishes each record's line on `subject` (core NATS, best effort:
/// the file is the record). Spawns its task on the current runtime; it ends when the trail's writer does.
pub fn nats_mirror(client: async_nats::Client, subject: String) -> mpsc::Sender<Arc<str>> {
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(10_000);
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if let Err(e) = client.publish(subject.clone(), bytes::Bytes::copy_from_slice(line.as_bytes())).await {
                tracing::warn!(error = %e, "audit record not copied to NATS");
            }
        }
    });
    tx
}

/// The rotated file number `n` of `path`: `<path>.000042`.
pub fn rotated_path(path: &Path, n: u64) -> PathBuf {
    sibling(path, &format!(".{n:06}"))
}

/// `<path>.head`.
pub fn head_path(path: &Path) -> PathBuf {
    sibling(path, ".head")
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The rotated files of `path`, oldest first, with their numbers.
pub fn rotated_files(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let entry = e.ok()?;
            let file = entry.file_name();
            let digits = file.to_str()?.strip_prefix(&prefix)?;
            (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())
                .flatten()
                .map(|n| (n, path.with_file_name(file)))
        })
        .collect();
    found.sort();
    found
}

/// Every file of the trail at `path`, oldest first: the rotated ones, then the active one (when it exists).
pub fn trail_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = rotated_files(path).into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    files
}

/// The line of a record: `fields` between `seq`/`time`/`kind` and `prev`/`hash`. Returns the line (with its
/// newline) and its hash.
pub(crate) fn seal(seq: u64, time: &str, kind: &str, fields: Map<String, Value>, prev: &str) -> (String, String) {
    let mut object = Map::new();
    object.insert("seq".into(), json!(seq));
    object.insert("time".into(), json!(time));
    object.insert("kind".into(), json!(kind));
    for (k, v) in fields {
        if !RESERVED.contains(&k.as_str()) {
            object.insert(k, v);
        }
    }
    object.insert("prev".into(), json!(prev));
    let mut line = Value::Object(object).to_string();
    // `{…,"prev":"…"}` → the bytes the hash covers are all but the closing brace.
    line.pop();
    let hash = hex::encode(Sha256::digest(line.as_bytes()));
    line.push_str(HASH_MARK);
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// A record line, split: the hashed part, the stored hash. None when the line does not end like one.
pub(crate) fn split_line(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let at = line.rfind(HASH_MARK)?;
    let hash = line[at + HASH_MARK.len()..].strip_suffix("\"}")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some((&line[..at], hash))
}

/// One line of a trail file as read back.
pub(crate) enum Line<'a> {
    /// A whole line, its newline included.
    Whole(&'a [u8]),
    /// The file ends without a newline: these bytes.
    Unterminated(&'a [u8]),
    /// Longer than [`MAX_LINE_BYTES`]: skipped to its end, never held whole.
    TooLong,
}

/// Calls `each` with every line of `file` and its number (from 1), holding at most [`MAX_LINE_BYTES`] + 1
/// bytes of a line at once.
pub(crate) fn read_lines(file: &Path, mut each: impl FnMut(u64, Line<'_>)) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::new(File::open(file)?);
    let mut bytes = Vec::new();
    let mut number = 0;
    loop {
        bytes.clear();
        if (&mut reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut bytes)? == 0 {
            return Ok(());
        }
        number += 1;
        if bytes.last() == Some(&b'\n') {
            each(number, Line::Whole(&bytes));
        } else if bytes.len() > MAX_LINE_BYTES {
            skip_line(&mut reader)?;
            each(number, Line::TooLong);
        } else {
            each(number, Line::Unterminated(&bytes));
        }
    }
}

/// Reads past the end of the current line without keeping it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buffer.len();
                reader.consume(n);
            }
        }
    }
}

/// The SHA-256 of a record's hashed part, hex.
pub(crate) fn hash_of(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// `seq` and `prev` of a parsed record.
pub(crate) fn seq_prev(record: &Value) -> Option<(u64, &str)> {
    Some((record.get("seq")?.as_u64()?, record.get("prev")?.as_str()?))
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> AuditError {
    AuditError::Io { path: path.display().to_string(), message: format!("{what}: {e}") }
}

/// The end of a trail as found on disk.
#[derive(Debug, Default)]
struct Tail {
    seq: u64,
    hash: Option<String>,
    /// Bytes after the last complete record (a write cut short by a crash).
    torn: usize,
}

/// Reads the last complete record of `path` (its last `MAX_LINE_BYTES` at most).
fn read_tail(path: &Path) -> Result<Tail, AuditError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(e) => return Err(io_error(path, "cannot read", &e)),
    };
    let metadata = file.metadata().map_err(|e| io_error(path, "cannot read", &e))?;
    if !metadata.is_file() {
        return Err(AuditError::Io { path: path.display().to_string(), message: "not a regular file".into() });
    }
    let len = metadata.len();
    let from = len.saturating_sub(MAX_LINE_BYTES as u64 + 1);
    file.seek(SeekFrom::Start(from)).map_err(|e| io_error(path, "cannot read", &e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io_error(path, "cannot read", &e))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = bytes.len() - complete;
    let last = bytes[..complete.saturating_sub(1)].rsplit(|b| *b == b'\n').next().unwrap_or_default();
    if last.is_empty() {
        return Ok(Tail { torn, ..Tail::default() });
    }
    let text = std::str::from_utf8(last).map_err(|_| AuditError::Io {
        path: path.display().to_string(),
        message: "the last record is not UTF-8: run `rune audit verify`".into(),
    })?;
    let record: Value = serde_json::from_str(text).map_err(|e| AuditError::Io {
        path: path.display().to_string(),
        message: format!("the last record is not JSON ({e}): run `rune audit verify`"),
    })?;
    match (seq_prev(&record), split_line(text)) {
        (Some((seq, _)), Some((_, hash))) => Ok(Tail { seq, hash: Some(hash.to_owned()), torn }),
        _ => Err(AuditError::Io {
            path: path.display().to_string(),
            message: "the last record has no seq or hash: run `rune audit verify`".into(),
        }),
    }
}

/// `<seq> <hash>` from the head file, if there is one.
fn read_head(path: &Path) -> Option<(u64, String)> {
    parse_head(&std::fs::read_to_string(head_path(path)).ok()?)
}

/// The head file's text, `<seq> <hash>`.
pub(crate) fn parse_head(text: &str) -> Option<(u64, String)> {
    let (seq, hash) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_owned()))
}

/// True when the head file names a record past the trail's end (`last`: the seq and hash of its last record):
/// records were removed from the end.
pub(crate) fn head_ahead((seq, hash): (u64, &str), last: (u64, Option<&str>)) -> bool {
    seq > last.0 || (seq == last.0 && Some(hash) != last.1)
}

/// The writer thread's state.
struct Writer {
    /// `<path>.lock`, locked (flock) while this writer lives: one writer per trail, or the chain would fork.
    _lock: File,
    path: PathBuf,
    file: File,
    size: u64,
    seq: u64,
    prev: String,
    next_rotation: u64,
    max_bytes: u64,
    /// What `open` found wrong at the end of the trail, for the start record.
    found: Vec<String>,
}

impl Writer {
    fn open(options: &AuditOptions) -> Result<Writer, AuditError> {
        let path = options.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error(dir, "cannot make the folder", &e))?;
        }
        let lock_path = sibling(&path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, "cannot open", &e))?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(AuditError::Io {
                path: path.display().to_string(),
                message: "in use by another RUNE process (one writer per trail: give each process its own file)".into(),
            });
        }
        let rotated = rotated_files(&path);
        let next_rotation = rotated.last().map_or(1, |(n, _)| n + 1);
        let mut found = Vec::new();
        let mut tail = read_tail(&path)?;
        if tail.hash.is_none()
            && tail.torn == 0
            && let Some((_, newest)) = rotated.last()
        {
            tail = read_tail(newest)?;
        }
        if tail.torn > 0 {
            found.push(format!(
                "the active file ended in a record cut short ({} bytes, a crash mid-write?); it is left in place and \
                 the chain goes on from the last whole record",
                tail.torn
            ));
        }
        if let Some((seq, hash)) = read_head(&path)
            && head_ahead((seq, &hash), (tail.seq, tail.hash.as_deref()))
        {
            found.push(format!(
                "the head file names record {seq} ({hash}) but the trail ends at record {}: records were removed \
                 from its end",
                tail.seq
            ));
        }
        for problem in &found {
            tracing::error!(path = %path.display(), "audit trail: {problem}");
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&path, "cannot open", &e))?;
        let mut size = file.metadata().map_err(|e| io_error(&path, "cannot open", &e))?.len();
        if tail.torn > 0 {
            // The next record starts on a line of its own.
            file.write_all(b"\n").map_err(|e| io_error(&path, "cannot write", &e))?;
            size += 1;
        }
        Ok(Writer {
            _lock: lock,
            path,
            file,
            size,
            seq: tail.seq,
            prev: tail.hash.unwrap_or_else(|| GENESIS.to_owned()),
            next_rotation,
            max_bytes: options.max_bytes.max(4096),
            found,
        })
    }

    fn start_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("rune_version".into(), json!(env!("CARGO_PKG_VERSION")));
        fields.insert("pid".into(), json!(std::process::id()));
        if !self.found.is_empty() {
            fields.insert("problems".into(), json!(self.found));
        }
        fields
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>, mirror: Option<mpsc::Sender<Arc<str>>>, stats: Arc<Stats>) {
        let mut batch = Vec::with_capacity(64);
        while let Some(job) = rx.blocking_recv() {
            let mut last = job.last;
            batch.push(job);
            while batch.len() < MAX_BATCH && !last {
                match rx.try_recv() {
                    Ok(job) => {
                        last = job.last;
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if !last {
                self.write_batch(&mut batch, mirror.as_ref(), &stats);
                continue;
            }
            let done = batch.last_mut().and_then(|j| j.done.take());
            let written = self.write_batch(&mut batch, mirror.as_ref(), &stats);
            let receipt = written.then(|| Receipt { seq: self.seq, hash: self.prev.clone() });
            let path = self.path.clone();
            // The lock goes with the writer, before the answer: whoever waited on `close` may reopen the trail.
            drop(self);
            drop(rx);
            if let Some(done) = done {
                let _ = done.send(receipt.ok_or(AuditError::Io {
                    path: path.display().to_string(),
                    message: "the stop record could not be written".into(),
                }));
            }
            return;
        }
    }

    /// Writes the batch and answers its records; false when it could not be written.
    fn write_batch(&mut self, batch: &mut Vec<Job>, mirror: Option<&mpsc::Sender<Arc<str>>>, stats: &Stats) -> bool {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut buffer = String::with_capacity(batch.len() * 512);
        let mut lines = Vec::with_capacity(batch.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        for job in batch.iter_mut() {
            seq += 1;
            let (line, hash) = seal(seq, &time, job.kind, std::mem::take(&mut job.fields), &prev);
            buffer.push_str(&line);
            lines.push((seq, hash.clone(), line));
            prev = hash;
        }
        let written = self.file.write_all(buffer.as_bytes()).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.seq = seq;
                self.prev = prev;
                self.size += buffer.len() as u64;
                self.write_head();
                for (job, (seq, hash, line)) in batch.drain(..).zip(lines) {
                    if let Some(done) = job.done {
                        let _ = done.send(Ok(Receipt { seq, hash }));
                    }
                    if let Some(m) = mirror
                        && m.try_send(Arc::from(line.trim_end())).is_err()
                    {
                        stats.mirror_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if self.size >= self.max_bytes
                    && let Err(e) = self.rotate()
                {
                    tracing::error!(error = %e, "audit trail not rotated; it goes on in the same file");
                }
                true
            }
            Err(e) => {
                let error = io_error(&self.path, "cannot write", &e);
                // Cut a partial write back off, so the chain on disk stays whole.
                if let Err(cut) = self.file.set_len(self.size) {
                    tracing::error!(error = %cut, "audit trail: a failed write could not be cut back off the file");
                }
                stats.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %error, records = batch.len(), "AUDIT TRAIL UNWRITABLE: records not written");
                for job in batch.drain(..) {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(error.clone()));
                    }
                }
                false
            }
        }
    }

    /// Best effort, no fsync: a head behind the trail after a crash is harmless; one ahead means removed records.
    fn write_head(&self) {
        let head = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(head_path(&self.path));
        if let Ok(mut file) = head {
            let _ = file.write_all(format!("{} {}\n", self.seq, self.prev).as_bytes());
        }
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let target = rotated_path(&self.path, self.next_rotation);
        if target.exists() {
            return Err(AuditError::Io {
                path: target.display().to_string(),
                message: "exists already; not overwritten".into(),
            });
        }
        std::fs::rename(&self.path, &target).map_err(|e| io_error(&self.path, "cannot rotate", &e))?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| io_error(&self.path, "cannot open after rotation", &e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = file;
        self.size = 0;
        self.next_rotation += 1;
        tracing::info!(rotated = %target.display(), "audit trail rotated");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
