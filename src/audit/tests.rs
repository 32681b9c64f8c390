use super::verify::{Report, verify};
use super::*;

fn fields(host: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("host".into(), json!(host));
    m.insert("action".into(), json!("noop"));
    // A caller cannot forge the chain's own keys.
    m.insert("seq".into(), json!(999));
    m.insert("hash".into(), json!("forged"));
    m
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Appends `n` records (after the start record) and drops the log, waiting for the writer to finish.
fn write(path: &Path, n: usize, max_bytes: u64) -> Vec<Receipt> {
    let rt = runtime();
    rt.block_on(async {
        let log = AuditLog::open(AuditOptions { max_bytes, ..AuditOptions::new(path) }).unwrap();
        let mut receipts = Vec::new();
        for i in 0..n {
            receipts.push(log.append("dispatch", fields(&format!("web-{i}"))).await.unwrap());
        }
        log.close(Map::new()).await.unwrap();
        receipts
    })
}

fn check(path: &Path) -> Report {
    verify(&trail_files(path), Some(path))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| format!("{l}\n")).collect()
}

#[test]
fn records_chain_and_verify_and_a_reopened_trail_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let receipts = write(&path, 3, 1 << 20);
    assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4], "seq 1 is the start record");
    let again = write(&path, 2, 1 << 20);
    // 5 is the first process's stop record, 6 the second's start.
    assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8]);
    let report = check(&path);
    assert!(report.ok(), "{}", verify::pretty(&report));
    assert_eq!((report.records, report.first_seq, report.last_seq), (9, Some(1), Some(9)));
    let all = lines(&path);
    let first: Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!((first["kind"].as_str(), first["prev"].as_str()), (Some("start"), Some(GENESIS)));
    let second: Value = serde_json::from_str(&all[1]).unwrap();
    assert_eq!((second["seq"].as_u64(), second["host"].as_str()), (Some(2), Some("web-0")), "reserved keys kept");
    assert_eq!(second["prev"], first["hash"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_edited_removed_reordered_or_cut_record_is_found_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 6, 1 << 20);
    let original = lines(&path);
    type Tamper = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        ("edited", Box::new(|l| l[2] = l[2].replace("web-1", "web-X")), "was edited"),
        ("removed", Box::new(|l| drop(l.remove(3))), "records 4..=4 are missing"),
        ("reordered", Box::new(|l| l.swap(2, 3)), "reordered"),
        ("cut", Box::new(|l| l[6].truncate(20)), "cut short"),
        ("removed at the end", Box::new(|l| drop(l.pop())), "removed from its end"),
        (
            "replaced with a recomputed hash",
            Box::new(|l| {
                let body = split_line(&l[2]).unwrap().0.replace("web-1", "web-X");
                l[2] = format!("{body}{HASH_MARK}{}\"}}\n", hash_of(&body));
            }),
            "that record was replaced",
        ),
    ];
    for (name, tamper, expected) in cases {
        let mut changed = original.clone();
        tamper(&mut changed);
        std::fs::write(&path, changed.concat()).unwrap();
        let report = check(&path);
        assert!(!report.ok(), "{name}: not found");
        let text = verify::pretty(&report);
        assert!(text.contains(expected), "{name}: {text}");
        assert!(text.contains("BROKEN"), "{name}: {text}");
    }
    std::fs::write(&path, original.concat()).unwrap();
    assert!(check(&path).ok());
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 60, 4096);
    let files = trail_files(&path);
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files[0], rotated_path(&path, 1));
    let report = check(&path);
    assert!(report.ok(), "{}", verify::pretty(&report));
    assert_eq!(report.records, 62);
    // Without the oldest file the chain is still whole, and says where it starts.
    let report = verify(&files[1..], Some(&path));
    assert!(report.ok(), "{}", verify::pretty(&report));
    assert!(report.notes.iter().any(|n| n.contains("older files")), "{:?}", report.notes);
    // A file left out in the middle is a gap.
    let gap: Vec<PathBuf> = files.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, p)| p.clone()).collect();
    assert!(verify(&gap, Some(&path)).problems.iter().any(|p| p.message.contains("missing")));
    // A restart after rotation goes on from the newest file.
    let more = write(&path, 1, 4096);
    assert_eq!(more[0].seq, 64);
    assert!(check(&path).ok());
}

#[test]
fn a_torn_tail_or_a_head_ahead_of_the_trail_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 2, 1 << 20);
    // A crash mid-write: half a record at the end.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"seq\":4,\"time\":\"20").unwrap();
    drop(file);
    write(&path, 1, 1 << 20);
    let all = lines(&path);
    let start: Value = all.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).nth(4).unwrap();
    assert_eq!(start["kind"], "start");
    assert!(start["problems"][0].as_str().unwrap().contains("cut short"), "{start}");
    let report = check(&path);
    assert_eq!(report.problems.len(), 1, "{}", verify::pretty(&report));
    assert!(report.problems[0].message.contains("not a JSON record"));
    // Records removed from the end while RUNE was down: the head file says so at the next start.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 3, 1 << 20);
    let mut kept = lines(&path);
    kept.truncate(2);
    std::fs::write(&path, kept.concat()).unwrap();
    write(&path, 1, 1 << 20);
    let start: Value = serde_json::from_str(&lines(&path)[2]).unwrap();
    assert_eq!(start["kind"], "start");
    assert!(start["problems"][0].as_str().unwrap().contains("removed"), "{start}");
}

#[test]
fn mirror_gets_every_line_once_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rt = runtime();
    let (tx, mut rx) = mpsc::channel(16);
    rt.block_on(async {
        let log = AuditLog::open(AuditOptions { mirror: Some(tx), ..AuditOptions::new(&path) }).unwrap();
        log.append("result", fields("db-1")).await.unwrap();
        let start = rx.recv().await.unwrap();
        let result = rx.recv().await.unwrap();
        assert!(start.contains("\"kind\":\"start\""));
        assert_eq!(format!("{result}\n"), lines(&path)[1]);
    });
}

#[test]
fn one_writer_per_trail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rt = runtime();
    rt.block_on(async {
        let first = AuditLog::open(AuditOptions::new(&path)).unwrap();
        let second = AuditLog::open(AuditOptions::new(&path)).unwrap_err();
        assert!(second.to_string().contains("in use by another RUNE process"), "{second}");
        first.close(Map::new()).await.unwrap();
    });
}

#[test]
fn a_line_too_long_to_be_a_record_is_reported_and_skipped_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write(&path, 2, 1 << 20);
    let mut all = lines(&path);
    all.insert(2, format!("{}\n", "x".repeat(3 * MAX_LINE_BYTES)));
    std::fs::write(&path, all.concat()).unwrap();
    let report = check(&path);
    assert_eq!(report.problems.len(), 1, "{}", verify::pretty(&report));
    assert_eq!(report.problems[0].line, 3);
    assert!(report.problems[0].message.contains("longer than"), "{}", report.problems[0].message);
    assert_eq!(report.records, 4, "the records after it are read from the next line on");
}
