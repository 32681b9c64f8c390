//! The webhook listener of `rune serve` as deployed: TLS from the settings (a real rustls client against the real
//! binary), per-source request limits, `rune config check` reading the certificate pair, and a declared secret
//! kept out of everything the daemon shows (stdout records, debug logs, the audit trail, `/metrics`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::daemon::Daemon;
use crate::support::pki::{TestPki, client};
use crate::support::{rune, text};

const CANARY: &str = "canary-9d41f7-a-declared-secret";

/// One HTTPS request from the loopback address `from`; the whole answer.
async fn https(
    connector: &tokio_rustls::TlsConnector,
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket.bind(format!("{from}:0").parse().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    let tcp = socket.connect(to).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let mut tls = connector.connect(name, tcp).await.unwrap_or_else(|e| panic!("TLS handshake: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: rune\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn config_check_reads_the_webhook_certificate_pair() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pki = TestPki::new(dir.path(), "rune");
    pki.issue("server", true);
    pki.issue("other", true);
    for (key, code) in [("server.key", 0), ("other.key", 2)] {
        write(
            &dir.path().join("rune.yaml"),
            &format!("webhook:\n  tls:\n    cert_file: server.crt\n    key_file: {key}\n"),
        );
        let out = rune(&["config", "check", "--config", "rune.yaml", "--offline"], dir.path(), &[]);
        assert_eq!(out.status.code(), Some(code), "{key}: {}", text(&out));
        if code == 2 {
            assert!(text(&out).contains("webhook.tls: certificate"), "{}", text(&out));
            assert!(text(&out).contains("not usable together"), "{}", text(&out));
        }
    }
}

/// TLS and per-source limits end to end, and a declared secret (a rule's literal `password` for `leaky-secret`,
/// which prints it everywhere it can) absent from stdout, debug logs, the audit trail and `/metrics` — taken
/// while the plugin runs and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_limits_each_source_and_never_shows_a_declared_secret() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pki = TestPki::new(dir.path(), "rune");
    pki.issue("server", true);
    write(
        &dir.path().join("rules/leak.yaml"),
        &format!(
            "rules:\n  - name: leak\n    match:\n      labels: {{ alertname: Leak }}\n    target:\n      host: localhost\n    \
             action: leaky-secret\n    args:\n      password: \"{CANARY}\"\n      hold: \"2\"\n"
        ),
    );
    let config = dir.path().join("rune.yaml");
    write(
        &config,
        &format!(
            "webhook:\n  listen: 127.0.0.1:0\n  generic: {{ none: true }}\n  \
             per_source:\n    rate_limit: {{ count: 3, per: 1h }}\n  \
             tls:\n    cert_file: server.crt\n    key_file: server.key\n\
             paths:\n  rules_dir: rules\n  plugins_dirs: [{}, {}]\n\
             audit:\n  file: audit/rune-audit.jsonl\n",
            repo.join("plugins").display(),
            repo.join("tests/fixtures/plugins").display()
        ),
    );
    let (daemon, address) = tokio::task::spawn_blocking({
        let (dir, config) = (dir.path().to_owned(), config.clone());
        move || Daemon::start(&dir, &config, &[])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let connector = client(&pki.ca_file(), None);
    let event = r#"{"labels":{"alertname":"Leak","instance":"localhost"}}"#;

    let answer = https(&connector, "127.0.0.1", address, "POST", "/hooks/generic", event).await;
    assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
    // While the plugin holds the secret (2 s), and after its result: /metrics, from another source.
    let mut shown = Vec::new();
    shown.push(https(&connector, "127.0.0.2", address, "GET", "/metrics", "").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.stdout().contains(r#""record":"result""#) {
        assert!(Instant::now() < deadline, "no result:\n{}\n{}", daemon.stdout(), daemon.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = https(&connector, "127.0.0.2", address, "GET", "/metrics", "").await;
    assert!(metrics.contains("rune_runs_total{action=\"leaky-secret\",status=\"ok\"} 1"), "{metrics}");
    shown.push(metrics);

    // Source 127.0.0.1 has 3 requests per hour: one more is taken, then 429 with Retry-After.
    let answer = https(&connector, "127.0.0.1", address, "POST", "/hooks/generic", "{}").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    let answer = https(&connector, "127.0.0.1", address, "GET", "/healthz", "").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let answer = https(&connector, "127.0.0.1", address, "POST", "/hooks/generic", event).await;
    assert!(answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: "), "{answer}");
    let metrics = https(&connector, "127.0.0.2", address, "GET", "/metrics", "").await;
    assert!(metrics.contains("rune_webhook_listener_refused_total{reason=\"rate_limited\"} 1"), "{metrics}");
    assert!(metrics.contains("rune_payloads_refused_total{source=\"generic\"} 1"), "{metrics}");
    shown.push(metrics);

    let trail = std::fs::read_to_string(dir.path().join("audit/rune-audit.jsonl")).unwrap_or_default();
    assert!(trail.contains(r#""kind":"result""#), "{trail}");
    // The refused payload (400) is in the trail with its endpoint, peer and status.
    let refusal = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "refusal")
        .unwrap_or_else(|| panic!("no refusal record:\n{trail}"));
    assert_eq!(
        (refusal["source"].as_str(), refusal["status"].as_u64()),
        (Some("webhook:generic"), Some(400)),
        "{refusal}"
    );
    assert!(refusal["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{refusal}");
    let stdout = daemon.stdout();
    assert!(stdout.contains(r#""summary":"password is <redacted>""#), "the plugin got the value:\n{stdout}");
    shown.extend([stdout, daemon.stderr(), trail]);
    for text in shown {
        assert!(!text.contains(CANARY), "the declared secret shows:\n{text}");
    }
}
