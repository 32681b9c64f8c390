//! `rune audit verify`: walks a trail's files in order and checks every record's hash and its link to the record
//! before it. Each problem names the file, the line and the record, and what it means (edited, removed,
//! reordered, cut short).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{
    GENESIS, Line, MAX_LINE_BYTES, hash_of, head_ahead, head_path, parse_head, read_lines, seq_prev, split_line,
};

/// One thing wrong in a trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    /// The record's own seq, when it could be read.
    pub seq: Option<u64>,
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Facts that are not problems (the chain starts after the genesis: older files not given).
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies `files` as one chain, in the order given; with `head` (the trail's active path), also that the
/// chain ends where its head file says.
pub fn verify(files: &[PathBuf], head: Option<&Path>) -> Report {
    let mut report = Report { files: files.to_vec(), ..Report::default() };
    // The hash and seq of the record before (None before the first).
    let mut before: Option<(u64, String)> = None;
    for file in files {
        verify_file(file, &mut before, &mut report);
    }
    if let Some((seq, hash)) = &before {
        report.last_seq = Some(*seq);
        report.last_hash = Some(hash.clone());
    }
    if let Some(active) = head
        && let Ok(text) = std::fs::read_to_string(head_path(active))
    {
        match (parse_head(&text), &before) {
            (Some((seq, hash)), Some((last, last_hash))) if head_ahead((seq, &hash), (*last, Some(last_hash))) => {
                report.problems.push(Problem {
                    file: head_path(active),
                    line: 1,
                    seq: Some(seq),
                    message: format!(
                        "the head file names record {seq} but the trail ends at record {last}: records were removed \
                         from its end (or the head file was edited)"
                    ),
                });
            }
            (None, _) => report.notes.push(format!("{}: unreadable, not checked", head_path(active).display())),
            _ => {}
        }
    }
    report
}

fn verify_file(file: &Path, before: &mut Option<(u64, String)>, report: &mut Report) {
    let mut last = 0;
    let read = read_lines(file, |number, line| {
        last = number;
        match line {
            Line::Whole(b"\n") => {
                // The line a restart ends a cut-short record with, or an inserted blank line: not a record.
            }
            Line::Whole(bytes) => check_line(file, number, bytes, before, report),
            Line::TooLong => {
                problem(report, file, number, None, format!("a line longer than {MAX_LINE_BYTES} bytes: not a record"))
            }
            Line::Unterminated(_) => problem(
                report,
                file,
                number,
                None,
                "a record cut short (no end of line): the write was interrupted or the file truncated".into(),
            ),
        }
    });
    if let Err(e) = read {
        let line = if last == 0 { 0 } else { last + 1 };
        problem(report, file, line, None, format!("cannot read: {e}"));
    }
}

fn problem(report: &mut Report, file: &Path, line: u64, seq: Option<u64>, message: String) {
    report.problems.push(Problem { file: file.to_owned(), line, seq, message });
}

/// Checks one whole line (`number` in `file`) against the record before.
fn check_line(file: &Path, number: u64, bytes: &[u8], before: &mut Option<(u64, String)>, report: &mut Report) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return problem(report, file, number, None, "not UTF-8: edited or damaged".into());
    };
    let record: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return problem(report, file, number, None, "not a JSON record: cut short, edited or damaged".into());
        }
    };
    let (Some((seq, prev)), Some((body, stored))) = (seq_prev(&record), split_line(text)) else {
        return problem(report, file, number, None, "not an audit record (no seq, prev or hash)".into());
    };
    report.records += 1;
    report.first_seq.get_or_insert(seq);
    let mut wrong = Vec::new();
    if hash_of(body) != stored {
        wrong.push("its hash does not match its content: the record was edited".to_owned());
    }
    match before.as_ref() {
        None if prev == GENESIS && seq == 1 => {}
        None => report.notes.push(format!(
            "the chain starts at record {seq} ({}), not at the first record: older files were not given or were removed",
            file.display()
        )),
        Some((last, last_hash)) => {
            if seq <= *last {
                wrong.push(format!("record {seq} comes after record {last}: records were reordered or repeated"));
            } else if seq != last + 1 {
                let missing = seq - last - 1;
                wrong.push(format!(
                    "records {}..={} are missing before it: {missing} record(s) removed",
                    last + 1,
                    seq - 1
                ));
            }
            if prev != last_hash && seq == last + 1 {
                wrong.push("its link to the record before does not match: that record was replaced".into());
            }
        }
    }
    if !wrong.is_empty() {
        problem(report, file, number, Some(seq), wrong.join("; "));
    }
    *before = Some((seq, stored.to_owned()));
}

/// The report as text for people.
pub fn pretty(report: &Report) -> String {
    let mut out = String::new();
    for problem in &report.problems {
        let seq = problem.seq.map(|s| format!(" (record {s})")).unwrap_or_default();
        out.push_str(&format!("{}:{}{seq}: {}\n", problem.file.display(), problem.line, problem.message));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    let span = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!(", records {a}..={b}"),
        _ => String::new(),
    };
    let verdict = if report.ok() { "intact" } else { "BROKEN" };
    out.push_str(&format!(
        "{verdict}: {} record(s) in {} file(s){span}, {} problem(s)\n",
        report.records,
        report.files.len(),
        report.problems.len()
    ));
    out
}
