//! Settings tests: defaults, every validation error (and all of them at once), environment overrides, secret
//! redaction, YAML/TOML equivalence, and the documented example file.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;

const CANARY: &str = "canary-7f3a9c1e-do-not-print";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = write(dir, name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A folder with `rules/`, `plugins/` and a few secret files, so that paths resolve.
fn workspace() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    write_secret(dir.path(), "secrets/token", &format!("{CANARY}\n"));
    write_secret(dir.path(), "secrets/other", "other-secret");
    write_secret(dir.path(), "secrets/seed", "SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY");
    write_secret(dir.path(), "secrets/empty", "\n");
    dir
}

fn load_text(dir: &Path, name: &str, text: &str, vars: &[(&str, &str)]) -> Result<Settings, Vec<ConfigError>> {
    let path = write(dir, name, text);
    load_from(Some(&path), &env(vars))
}

fn load_yaml(text: &str, vars: &[(&str, &str)]) -> (TempDir, Result<Settings, Vec<ConfigError>>) {
    let dir = workspace();
    let result = load_text(dir.path(), "rune.yaml", text, vars);
    (dir, result)
}

fn ok(text: &str, vars: &[(&str, &str)]) -> Settings {
    let (_dir, result) = load_yaml(text, vars);
    match result {
        Ok(s) => s,
        Err(errors) => panic!("unexpected errors for\n{text}\n{}", lines(&errors)),
    }
}

fn errors(text: &str, vars: &[(&str, &str)]) -> Vec<ConfigError> {
    let (_dir, result) = load_yaml(text, vars);
    match result {
        Ok(_) => panic!("expected errors for\n{text}"),
        Err(errors) => errors,
    }
}

fn lines(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

#[test]
fn no_file_is_the_embedded_mode_with_every_default() {
    let s = load_from(None, &[]).unwrap();
    assert!(s.embedded());
    assert!(s.warnings.iter().all(|w| w.field.starts_with("paths.")), "{:?}", s.warnings);
    assert_eq!(s.webhook.listen.to_string(), "127.0.0.1:9300");
    assert_eq!(s.webhook.max_body_bytes, 1024 * 1024);
    assert_eq!(s.webhook.request_timeout, Duration::from_secs(10));
    assert!(s.webhook.alertmanager.is_none() && s.webhook.grafana.is_none() && s.webhook.generic.is_none());
    assert!(!s.webhook.publish_to_nats);
    assert!(!s.chatops.enabled);
    assert_eq!(s.paths.rules_dir, PathBuf::from("rules"));
    assert_eq!(s.paths.plugins_dirs, [PathBuf::from("plugins")]);
    assert_eq!(s.limits.max_in_flight_runs.get(), 64);
    assert_eq!(s.limits.parallel.get(), 32);
    assert_eq!(s.limits.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.limits.reload_debounce, Duration::from_secs(1));
    assert!(s.results.stdout && !s.results.nats && s.results.jsonl_file.is_none());
    assert_eq!((s.results.retry_for, s.results.max_pending.get()), (Duration::from_secs(300), 1000));
    assert!(s.metrics.enabled);
    assert_eq!((s.log.level.as_str(), s.log.format), ("info", LogFormat::Text));
    assert!(s.origin.file.is_none() && s.origin.env.is_empty());
}

#[test]
fn empty_files_are_the_defaults() {
    let dir = workspace();
    for (name, text) in [("a.yaml", ""), ("b.yml", "# nothing\n"), ("c.toml", ""), ("d.yaml", "nats:\nwebhook:\n")] {
        let s = load_text(dir.path(), name, text, &[]).unwrap_or_else(|e| panic!("{name}: {}", lines(&e)));
        assert!(s.embedded(), "{name}");
    }
}

#[test]
fn nats_defaults_when_urls_are_given() {
    let s = ok("nats:\n  urls: [nats://127.0.0.1:4222]\n", &[]);
    let nats = s.nats.as_ref().unwrap();
    assert!(!s.embedded());
    assert_eq!(nats.name, "rune");
    assert!(matches!(nats.auth, NatsAuth::None));
    assert_eq!(nats.connect_timeout, Duration::from_secs(5));
    assert_eq!(nats.reconnect.max_attempts, None);
    assert_eq!(nats.subjects.alerts, ["rune.alerts.>"]);
    assert_eq!(nats.subjects.queue_group, "rune");
    assert_eq!(nats.subjects.requests_prefix, "rune.requests");
    assert_eq!(nats.subjects.results_prefix, "rune.results");
    assert_eq!(nats.subjects.decisions_prefix, "rune.decisions");
    assert_eq!(nats.subjects.audit, "rune.audit");
    assert_eq!(nats.subjects.dead_letter, "rune.dead_letter");
    assert!(nats.jetstream.is_none());
    // With NATS, results go to NATS and not to stdout unless asked.
    assert!(s.results.nats && !s.results.stdout);
}

#[test]
fn jetstream_defaults() {
    let s = ok("nats:\n  urls: [nats://127.0.0.1:4222]\n  jetstream:\n    enabled: true\n", &[]);
    let js = s.nats.unwrap().jetstream.unwrap();
    assert_eq!(js.alerts_stream.name, "RUNE_ALERTS");
    assert_eq!(js.alerts_stream.subjects, ["rune.alerts.>"]);
    assert_eq!(js.alerts_stream.max_age, Duration::from_secs(86_400));
    assert_eq!(js.alerts_stream.max_bytes, 1 << 30);
    assert_eq!(js.alerts_stream.replicas, 1);
    assert_eq!((js.consumer.name.as_str(), js.consumer.max_deliver), ("rune", 5));
    assert_eq!(js.consumer.ack_wait, Duration::from_secs(30));
    assert!(js.consumer.backoff.is_empty());
    assert!(js.results_stream.is_none());
    assert_eq!((js.kv.dedup_bucket.as_str(), js.kv.locks_bucket.as_str()), ("rune_dedup", "rune_locks"));
    assert_eq!(js.kv.lease_ttl, Duration::from_secs(600));
}

/// One invalid setting each: the field named, the message, and the line it is reported on (0: not in the file).
#[test]
fn every_validation_error() {
    let nats = "nats:\n  urls: [nats://127.0.0.1:4222]\n";
    let table: &[(&str, String, &str, &str, u64)] = &[
        ("unknown section", "natz: {}\n".into(), "natz", "unknown field `natz`", 1),
        ("unknown key", "nats:\n  urlz: []\n".into(), "nats.urlz", "unknown field `urlz`", 2),
        ("dotted top-level key", "nats.urls: []\n".into(), "nats.urls", "unknown key", 1),
        ("not a boolean", "metrics:\n  enabled: maybe\n".into(), "metrics.enabled", "expected a boolean", 2),
        ("negative count", "limits:\n  parallel: -1\n".into(), "limits.parallel", "invalid type", 2),
        ("section of the wrong type", "webhook: 5\n".into(), "webhook", "invalid type", 1),
        ("list of the wrong type", "nats:\n  urls: {a: 1}\n".into(), "nats.urls", "invalid type", 2),
        ("unknown log format", "log:\n  format: xml\n".into(), "log.format", "unknown variant `xml`", 2),
        ("bad log level", "log:\n  level: \"rune=loud\"\n".into(), "log.level", "not a log filter", 2),
        ("bad duration", "limits:\n  shutdown_grace: soon\n".into(), "limits.shutdown_grace", "not a duration", 2),
        (
            "duration without unit",
            "webhook:\n  request_timeout: 30\n".into(),
            "webhook.request_timeout",
            "not a duration",
            2,
        ),
        ("zero timeout", "webhook:\n  request_timeout: 0s\n".into(), "webhook.request_timeout", "longer than zero", 2),
        (
            "huge duration",
            "chatops:\n  reply_timeout: 400d\n".into(),
            "chatops.reply_timeout",
            "longer than 365 days",
            2,
        ),
        ("bad listen", "webhook:\n  listen: localhost\n".into(), "webhook.listen", "not a socket address", 2),
        ("bad size", "webhook:\n  max_body_bytes: 1 parsec\n".into(), "webhook.max_body_bytes", "not a size", 2),
        ("tiny body", "webhook:\n  max_body_bytes: 10\n".into(), "webhook.max_body_bytes", "outside", 2),
        (
            "zero source rate",
            "webhook:\n  per_source:\n    rate_limit: { count: 0, per: 1s }\n".into(),
            "webhook.per_source.rate_limit.count",
            "at least 1",
            3,
        ),
        (
            "bad source period",
            "webhook:\n  per_source:\n    rate_limit: { count: 5, per: often }\n".into(),
            "webhook.per_source.rate_limit.per",
            "not a duration",
            3,
        ),
        (
            "zero source connections",
            "webhook:\n  per_source:\n    max_connections: 0\n".into(),
            "webhook.per_source.max_connections",
            "at least 1",
            3,
        ),
        (
            "tls without key",
            "webhook:\n  tls:\n    cert_file: secrets/token\n".into(),
            "webhook.tls",
            "missing configuration field \"webhook.tls.key_file\"",
            2,
        ),
        (
            "tls file missing",
            "webhook:\n  tls:\n    cert_file: nowhere.crt\n    key_file: secrets/token\n".into(),
            "webhook.tls.cert_file",
            "not a readable file",
            3,
        ),
        ("zero runs", "limits:\n  max_in_flight_runs: 0\n".into(), "limits.max_in_flight_runs", "at least 1", 2),
        ("no plugin folders", "paths:\n  plugins_dirs: []\n".into(), "paths.plugins_dirs", "at least one", 2),
        (
            "missing inventory",
            "paths:\n  inventory: nowhere.yaml\n".into(),
            "paths.inventory",
            "not a readable file",
            2,
        ),
        ("http url", "nats:\n  urls: [\"http://h:4222\"]\n".into(), "nats.urls[0]", "only nats:// and tls://", 2),
        ("url with credentials", "nats:\n  urls: [\"nats://u:pw@h:4222\"]\n".into(), "nats.urls[0]", "credentials", 2),
        ("empty client name", format!("{nats}  name: \"\"\n"), "nats.name", "1 to 128", 3),
        (
            "two auth methods",
            format!("{nats}  auth:\n    token_file: secrets/token\n    user: rune\n    password_file: secrets/other\n"),
            "nats.auth",
            "more than one authentication method (token, user + password)",
            3,
        ),
        (
            "token file and env",
            format!("{nats}  auth:\n    token_file: secrets/token\n    token_env: TOKEN\n"),
            "nats.auth.token_file",
            "exclusive",
            4,
        ),
        (
            "user without password",
            format!("{nats}  auth:\n    user: rune\n"),
            "nats.auth.user",
            "needs `password_file`",
            4,
        ),
        (
            "password without user",
            format!("{nats}  auth:\n    password_file: secrets/other\n"),
            "nats.auth.password_file",
            "needs `user`",
            4,
        ),
        (
            "missing secret file",
            format!("{nats}  auth:\n    token_file: secrets/nope\n"),
            "nats.auth.token_file",
            "cannot read secret file",
            4,
        ),
        (
            "empty secret file",
            format!("{nats}  auth:\n    token_file: secrets/empty\n"),
            "nats.auth.token_file",
            "is empty",
            4,
        ),
        (
            "secret file is a folder",
            format!("{nats}  auth:\n    token_file: secrets\n"),
            "nats.auth.token_file",
            "not a regular file",
            4,
        ),
        (
            "unset secret variable",
            format!("{nats}  auth:\n    token_env: NO_SUCH_VAR\n"),
            "nats.auth.token_env",
            "is not set",
            4,
        ),
        (
            "not a variable name",
            format!("{nats}  auth:\n    token_env: \"{CANARY} x\"\n"),
            "nats.auth.token_env",
            "not an environment variable name",
            4,
        ),
        (
            "not an nkey seed",
            format!("{nats}  auth:\n    nkey_seed_file: secrets/token\n"),
            "nats.auth.nkey_seed_file",
            "NKey user seed",
            4,
        ),
        (
            "secret in clear",
            format!("{nats}  auth:\n    token: {CANARY}\n"),
            "nats.auth.token",
            "secrets are never written in the file: use `token_file`, `token_env` or `token_ref`",
            4,
        ),
        (
            "a seed in clear",
            format!("{nats}  auth:\n    nkey_seed: {CANARY}\n"),
            "nats.auth.nkey_seed",
            "secrets are never written in the file: use `nkey_seed_file`)",
            4,
        ),
        (
            "token file and reference",
            format!("{nats}  auth:\n    token_file: secrets/token\n    token_ref: ssm:/rune/nats/token\n"),
            "nats.auth.token_file",
            "`token_file` and `token_ref` are exclusive: give one",
            4,
        ),
        (
            "token from all three sources",
            format!(
                "{nats}  auth:\n    token_file: secrets/token\n    token_env: TOKEN\n    token_ref: ssm:/rune/nats/token\n"
            ),
            "nats.auth.token_file",
            "`token_file`, `token_env` and `token_ref` are exclusive: give one",
            4,
        ),
        (
            "malformed reference",
            format!("{nats}  auth:\n    token_ref: \"ssm:rune/nats/token\"\n"),
            "nats.auth.token_ref",
            "is not a Parameter Store reference: expected ssm:/path/name",
            4,
        ),
        (
            "a secret pasted as a reference",
            format!("{nats}  auth:\n    token_ref: {CANARY}\n"),
            "nats.auth.token_ref",
            "is not a secret reference such as ssm:/path/name",
            4,
        ),
        (
            "password reference without user",
            format!("{nats}  auth:\n    password_ref: ssm:/rune/nats/password\n"),
            "nats.auth.password_ref",
            "needs `user`",
            4,
        ),
        (
            "bearer token and reference",
            "webhook:\n  generic:\n    bearer_token_file: secrets/token\n    bearer_token_ref: ssm:/rune/hook\n".into(),
            "webhook.generic.bearer_token_file",
            "`bearer_token_file` and `bearer_token_ref` are exclusive",
            3,
        ),
        (
            "bearer and hmac references",
            "webhook:\n  generic:\n    bearer_token_ref: ssm:/a\n    hmac_secret_ref: ssm:/b\n".into(),
            "webhook.generic",
            "more than one authentication method (a bearer token, an HMAC secret)",
            2,
        ),
        (
            "prefetch of a bad path",
            "ssm:\n  secrets_prefetch: [/rune/prod/, \"rune/x\"]\n".into(),
            "ssm.secrets_prefetch[1]",
            "`rune/x` is not a Parameter Store path",
            2,
        ),
        (
            "prefetch of everything",
            "ssm:\n  secrets_prefetch: [/]\n".into(),
            "ssm.secrets_prefetch[0]",
            "is not a Parameter Store path",
            2,
        ),
        (
            "prefetch without a cache",
            "ssm:\n  secrets_cache_ttl: 0s\n  secrets_prefetch: [/rune/prod]\n".into(),
            "ssm.secrets_prefetch",
            "needs ssm.secrets_cache_ttl above 0s",
            3,
        ),
        (
            "cert without key",
            format!("{nats}  tls:\n    cert_file: secrets/other\n"),
            "nats.tls.cert_file",
            "needs `key_file`",
            4,
        ),
        (
            "missing ca",
            format!("{nats}  tls:\n    ca_file: nowhere.pem\n"),
            "nats.tls.ca_file",
            "not a readable file",
            4,
        ),
        (
            "zero reconnects",
            format!("{nats}  reconnect:\n    max_attempts: 0\n"),
            "nats.reconnect.max_attempts",
            "at least 1",
            4,
        ),
        (
            "bad alert pattern",
            format!("{nats}  subjects:\n    alerts: [\"rune.>.x\"]\n"),
            "nats.subjects.alerts[0]",
            "last token",
            4,
        ),
        (
            "wildcard prefix",
            format!("{nats}  subjects:\n    results_prefix: \"rune.*\"\n"),
            "nats.subjects.results_prefix",
            "plain subject",
            4,
        ),
        (
            "alerts catch own results",
            format!("{nats}  subjects:\n    alerts: [\"rune.>\"]\n"),
            "nats.subjects.alerts[0]",
            "also matches subjects RUNE publishes on (rune.requests.…, rune.results.…, rune.decisions.…, rune.audit, rune.dead_letter)",
            4,
        ),
        (
            "bad queue group",
            format!("{nats}  subjects:\n    queue_group: \"a b\"\n"),
            "nats.subjects.queue_group",
            "1 to 64",
            4,
        ),
        (
            "jetstream without nats",
            "nats:\n  jetstream:\n    enabled: true\n".into(),
            "nats.jetstream.enabled",
            "needs NATS",
            3,
        ),
        (
            "results stream without jetstream",
            format!("{nats}  jetstream:\n    results_stream:\n      enabled: true\n"),
            "nats.jetstream.results_stream.enabled",
            "needs nats.jetstream.enabled",
            5,
        ),
        (
            "too few deliveries for the backoff",
            format!(
                "{nats}  jetstream:\n    enabled: true\n    consumer:\n      max_deliver: 2\n      backoff: [1s, 5s]\n"
            ),
            "nats.jetstream.consumer.backoff",
            "max_deliver above 2",
            7,
        ),
        (
            "bad backoff item",
            format!("{nats}  jetstream:\n    consumer:\n      backoff: [1s, later]\n"),
            "nats.jetstream.consumer.backoff[1]",
            "not a duration",
            5,
        ),
        (
            "too many replicas",
            format!("{nats}  jetstream:\n    alerts_stream:\n      replicas: 7\n"),
            "nats.jetstream.alerts_stream.replicas",
            "1 to 5",
            5,
        ),
        (
            "bad stream name",
            format!("{nats}  jetstream:\n    alerts_stream:\n      name: \"RUNE.ALERTS\"\n"),
            "nats.jetstream.alerts_stream.name",
            "not a valid name",
            5,
        ),
        (
            "one bucket for two uses",
            format!("{nats}  jetstream:\n    kv:\n      dedup_bucket: b\n      locks_bucket: b\n"),
            "nats.jetstream.kv.locks_bucket",
            "must differ",
            6,
        ),
        (
            "publish without nats",
            "webhook:\n  publish_to_nats: true\n".into(),
            "webhook.publish_to_nats",
            "needs NATS",
            2,
        ),
        ("results to nats without nats", "results:\n  nats: true\n".into(), "results.nats", "needs NATS", 2),
        ("no result retries", "results:\n  retry_for: 0s\n".into(), "results.retry_for", "longer than zero", 2),
        ("no result kept", "results:\n  max_pending: 0\n".into(), "results.max_pending", "at least 1", 2),
        ("chatops without nats", "chatops:\n  enabled: true\n".into(), "chatops.enabled", "arrive over NATS", 2),
        ("endpoint without auth", "webhook:\n  grafana: {}\n".into(), "webhook.grafana", "no authentication chosen", 2),
        (
            "endpoint with two auths",
            "webhook:\n  generic:\n    none: true\n    bearer_token_file: secrets/token\n".into(),
            "webhook.generic",
            "more than one authentication method (none: true, a bearer token)",
            2,
        ),
        (
            "hmac header without hmac",
            "webhook:\n  generic:\n    bearer_token_file: secrets/token\n    hmac_header: X-Sig\n".into(),
            "webhook.generic.hmac_header",
            "only used with",
            4,
        ),
        (
            "bad hmac header",
            "webhook:\n  generic:\n    hmac_secret_file: secrets/token\n    hmac_header: \"X Sig\"\n".into(),
            "webhook.generic.hmac_header",
            "not an HTTP header name",
            4,
        ),
    ];
    for (what, text, field, message, line) in table {
        let found = errors(text, &[]);
        let Some(e) = found.iter().find(|e| e.field == *field) else {
            panic!("{what}: no error for `{field}` in\n{}", lines(&found));
        };
        assert!(e.message.contains(message), "{what}: `{}` does not contain `{message}`", e.message);
        let got_line = e.location.as_ref().map(|l| l.1).unwrap_or(0);
        assert_eq!(got_line, *line, "{what}: reported at {e}");
        for e in &found {
            assert!(!e.to_string().contains(CANARY), "{what}: the secret leaked into `{e}`");
        }
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = "\
natz: {}
nats:
  urlz: []
  jetstream:
    enabled: true
    consumer:
      ack_wait: whenever
webhook:
  listen: nowhere
  max_body_bytes: lots
  grafana: {}
  publish_to_nats: true
limits:
  parallel: many
  shutdown_grace: 1 fortnight
log:
  format: xml
";
    let found = errors(text, &[]);
    let fields: Vec<&str> = found.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "natz",
        "nats.urlz",
        "nats.jetstream.enabled",
        "nats.jetstream.consumer.ack_wait",
        "webhook.listen",
        "webhook.max_body_bytes",
        "webhook.grafana",
        "webhook.publish_to_nats",
        "limits.parallel",
        "limits.shutdown_grace",
        "log.format",
    ] {
        assert!(fields.contains(&want), "missing {want} in\n{}", lines(&found));
    }
    assert_eq!(found.len(), 11, "{}", lines(&found));
    // In file order, each with file:line:column.
    let positions: Vec<u64> = found.iter().map(|e| e.location.as_ref().unwrap().1).collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    let first = found[0].to_string();
    assert!(first.contains("rune.yaml:1:1: natz: unknown field `natz`"), "{first}");
}

#[test]
fn a_removed_value_does_not_cause_follow_on_errors() {
    // `urls` has the wrong type; its default (no NATS) must not also produce "jetstream needs NATS".
    let found = errors("nats:\n  urls: 5\n  jetstream:\n    enabled: true\n", &[]);
    assert_eq!(found.len(), 1, "{}", lines(&found));
    assert_eq!(found[0].field, "nats.urls");
}

#[test]
fn syntax_errors_have_positions() {
    let dir = workspace();
    let yaml = load_text(dir.path(), "bad.yaml", "nats:\n  urls: [a\n", &[]).unwrap_err();
    assert_eq!(yaml.len(), 1);
    assert!(yaml[0].location.as_ref().is_some_and(|l| l.1 >= 2), "{}", yaml[0]);
    let toml = load_text(dir.path(), "bad.toml", "[nats]\nurls = [\"a\"\nname = \n", &[]).unwrap_err();
    assert_eq!(toml.len(), 1);
    assert!(toml[0].location.as_ref().is_some_and(|l| l.1 >= 2), "{}", toml[0]);
    let other = load_text(dir.path(), "rune.json", "{}", &[]).unwrap_err();
    assert!(other[0].message.contains(".yaml, .yml or .toml"), "{}", other[0]);
    let missing = load_from(Some(&dir.path().join("missing.yaml")), &[]).unwrap_err();
    assert!(missing[0].message.contains("cannot read"), "{}", missing[0]);
    std::fs::create_dir(dir.path().join("secrets.yaml")).unwrap();
    let folder = load_from(Some(&dir.path().join("secrets.yaml")), &[]).unwrap_err();
    assert!(folder[0].message.contains("not a regular file"), "{}", folder[0]);
    let list = load_text(dir.path(), "list.yaml", "- a\n- b\n", &[]).unwrap_err();
    assert!(list[0].message.contains("mapping of sections"), "{}", list[0]);
}

#[test]
fn toml_errors_have_positions_too() {
    let dir = workspace();
    let text = "[nats]\nurls = [\"nats://h:4222\"]\nurlz = 1\n\n[webhook]\nlisten = \"nowhere\"\n";
    let found = load_text(dir.path(), "rune.toml", text, &[]).unwrap_err();
    let at: Vec<(String, u64, u64)> = found
        .iter()
        .map(|e| (e.field.clone(), e.location.as_ref().unwrap().1, e.location.as_ref().unwrap().2))
        .collect();
    assert_eq!(at, [("nats.urlz".to_string(), 3, 1), ("webhook.listen".to_string(), 6, 10)], "{}", lines(&found));
}

#[test]
fn environment_overrides() {
    let file = "nats:\n  urls: [nats://file:4222]\n  name: from-file\nmetrics:\n  enabled: true\n";
    let s = ok(
        file,
        &[
            ("RUNE_NATS__URLS", "nats://a:4222, tls://b:4443,"),
            ("RUNE_NATS__NAME", "007"),
            ("RUNE_NATS__JETSTREAM__ENABLED", "true"),
            ("RUNE_NATS__JETSTREAM__CONSUMER__MAX_DELIVER", "9"),
            ("RUNE_NATS__JETSTREAM__CONSUMER__BACKOFF", "1s,5s,30s"),
            ("RUNE_NATS__SUBJECTS__ALERTS", "alerts.>"),
            ("RUNE_METRICS__ENABLED", "false"),
            ("RUNE_WEBHOOK__LISTEN", "0.0.0.0:9400"),
            ("RUNE_WEBHOOK__ALERTMANAGER__NONE", "yes"),
            ("RUNE_LIMITS__PARALLEL", "4"),
            ("RUNE_PATHS__PLUGINS_DIRS", "plugins,/opt/rune/plugins"),
            // Variables of the CLI and of other programs are not settings.
            ("RUNE_LOG", "debug"),
            ("RUNE_CONFIG", "/etc/rune/rune.yaml"),
            ("RUNE_INVENTORY", "inventory.yaml"),
            ("HOME", "/root"),
        ],
    );
    let nats = s.nats.as_ref().unwrap();
    assert_eq!(nats.urls, ["nats://a:4222", "tls://b:4443"]);
    assert_eq!(nats.name, "007", "a variable's value stays a string");
    assert_eq!(nats.subjects.alerts, ["alerts.>"]);
    let js = nats.jetstream.as_ref().unwrap();
    assert_eq!(js.consumer.max_deliver, 9);
    assert_eq!(js.consumer.backoff, [Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)]);
    assert_eq!(js.alerts_stream.subjects, ["alerts.>"]);
    assert!(!s.metrics.enabled);
    assert_eq!(s.webhook.listen.to_string(), "0.0.0.0:9400");
    assert!(matches!(s.webhook.alertmanager, Some(EndpointAuth::None)));
    assert_eq!(s.limits.parallel.get(), 4);
    assert_eq!(s.paths.plugins_dirs, [PathBuf::from("plugins"), PathBuf::from("/opt/rune/plugins")]);
    let overridden: Vec<(&str, &str)> = s.origin.env.iter().map(|o| (o.var.as_str(), o.field.as_str())).collect();
    assert!(overridden.contains(&("RUNE_NATS__URLS", "nats.urls")));
    assert!(overridden.contains(&("RUNE_WEBHOOK__ALERTMANAGER__NONE", "webhook.alertmanager.none")));
    assert_eq!(overridden.len(), 11, "{overridden:?}");
    // The none-auth endpoint on a non-loopback address is allowed, with a warning.
    assert!(s.warnings.iter().any(|w| w.field == "webhook.alertmanager.none"), "{:?}", s.warnings);
}

#[test]
fn boolean_spellings_from_the_environment() {
    for (value, want) in
        [("true", true), ("TRUE", true), ("1", true), ("on", true), ("false", false), ("0", false), ("no", false)]
    {
        let s = ok("", &[("RUNE_METRICS__ENABLED", value)]);
        assert_eq!(s.metrics.enabled, want, "{value}");
    }
}

#[test]
fn an_empty_list_variable_turns_nats_off() {
    let s = ok("nats:\n  urls: [nats://file:4222]\n", &[("RUNE_NATS__URLS", "")]);
    assert!(s.embedded());
}

#[test]
fn environment_errors_name_the_variable() {
    let found = errors(
        "",
        &[
            ("RUNE_NATS__URLZ", "x"),
            ("RUNE_METRICS__ENABLED", "perhaps"),
            ("RUNE_WEBHOOK__LISTEN", "nowhere"),
            ("RUNE_LIMITS____PARALLEL", "1"),
        ],
    );
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    for want in [
        "env RUNE_NATS__URLZ: nats.urlz: unknown field `urlz`",
        "env RUNE_METRICS__ENABLED: metrics.enabled: invalid type",
        "env RUNE_WEBHOOK__LISTEN: webhook.listen: `nowhere` is not a socket address",
        "env RUNE_LIMITS____PARALLEL: limits..parallel: not a settings path",
    ] {
        assert!(shown.iter().any(|s| s.starts_with(want)), "missing `{want}` in {shown:#?}");
    }
}

#[test]
fn a_variable_with_a_single_underscore_is_a_warning() {
    let s = ok("", &[("RUNE_WEBHOOK_LISTEN", "0.0.0.0:1")]);
    assert_eq!(s.webhook.listen.to_string(), "127.0.0.1:9300");
    assert!(s.warnings.iter().any(|w| w.env.as_deref() == Some("RUNE_WEBHOOK_LISTEN")), "{:?}", s.warnings);
}

#[test]
fn environment_overrides_the_file_and_errors_point_at_the_variable() {
    let found = errors("webhook:\n  listen: 127.0.0.1:1\n", &[("RUNE_WEBHOOK__LISTEN", "bad")]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].env.as_deref(), Some("RUNE_WEBHOOK__LISTEN"));
    assert!(found[0].location.is_none());
}

#[test]
fn secrets_from_files_and_variables() {
    let s = ok(
        "nats:
  urls: [nats://127.0.0.1:4222]
  auth:
    user: rune
    password_env: NATS_PASSWORD
webhook:
  alertmanager:
    bearer_token_file: secrets/token
  grafana:
    hmac_secret_env: GRAFANA_HMAC
  generic:
    hmac_secret_file: secrets/other
    hmac_header: X-Hub-Signature-256
",
        &[("NATS_PASSWORD", &format!("{CANARY}\n")), ("GRAFANA_HMAC", "grafana-secret")],
    );
    let NatsAuth::UserPassword { user, password } = &s.nats.as_ref().unwrap().auth else { panic!() };
    assert_eq!(user, "rune");
    assert_eq!(password.expose(), CANARY.as_bytes(), "one trailing newline is trimmed");
    let Some(EndpointAuth::Bearer { token }) = &s.webhook.alertmanager else { panic!() };
    assert_eq!(token.expose(), CANARY.as_bytes());
    let Some(EndpointAuth::Hmac { secret, header }) = &s.webhook.grafana else { panic!() };
    assert_eq!((secret.expose(), header.as_str()), (&b"grafana-secret"[..], "X-Rune-Signature"));
    let Some(EndpointAuth::Hmac { header, .. }) = &s.webhook.generic else { panic!() };
    assert_eq!(header, "X-Hub-Signature-256");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn other_nats_auth_methods() {
    let nats = "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n";
    let s = ok(&format!("{nats}    token_file: secrets/token\n"), &[]);
    assert!(matches!(&s.nats.unwrap().auth, NatsAuth::Token { token } if token.expose() == CANARY.as_bytes()));
    let s = ok(&format!("{nats}    nkey_seed_file: secrets/seed\n"), &[]);
    assert!(matches!(&s.nats.unwrap().auth, NatsAuth::Nkey { seed } if seed.expose().starts_with(b"SU")));
    let s = ok(&format!("{nats}    creds_file: secrets/other\n"), &[]);
    let NatsAuth::Credentials { file, contents } = &s.nats.unwrap().auth else { panic!() };
    assert!(file.ends_with("secrets/other") && file.is_absolute());
    assert_eq!(contents.expose(), b"other-secret");
}

#[test]
fn secrets_by_reference_are_recorded_for_resolution_and_not_read_when_loading() {
    let s = ok(
        "nats:
  urls: [nats://127.0.0.1:4222]
  auth:
    token_ref: ssm:/rune/prod/nats-token
webhook:
  alertmanager:
    bearer_token_ref: ssm:/rune/prod/am
  grafana:
    hmac_secret_ref: ssm:/rune/prod/grafana
    hmac_header: X-Grafana-Signature
  generic:
    hmac_secret_file: secrets/other
ssm:
  secrets_prefetch: [/rune/prod/, /rune/shared]
",
        &[],
    );
    let found: Vec<(&str, &str, String, bool)> =
        s.references.iter().map(|r| (r.field.as_str(), r.key.as_str(), r.reference.to_string(), r.resolved)).collect();
    assert_eq!(
        found,
        [
            ("nats.auth.token_ref", "nats.auth.token", "ssm:/rune/prod/nats-token".to_owned(), false),
            (
                "webhook.alertmanager.bearer_token_ref",
                "webhook.alertmanager.token",
                "ssm:/rune/prod/am".to_owned(),
                false
            ),
            ("webhook.grafana.hmac_secret_ref", "webhook.grafana.secret", "ssm:/rune/prod/grafana".to_owned(), false),
        ]
    );
    assert_eq!(s.unresolved().count(), 3);
    // Each keeps where it was written, for the errors of resolution.
    let positions: Vec<u64> = s.references.iter().map(|r| r.position.location.as_ref().unwrap().1).collect();
    assert_eq!(positions, [4, 7, 9]);
    // Placeholders stand for the values; the method is chosen as with the other sources.
    let NatsAuth::Token { token } = &s.nats.as_ref().unwrap().auth else { panic!() };
    assert!(token.expose().is_empty());
    let Some(EndpointAuth::Hmac { header, .. }) = &s.webhook.grafana else { panic!() };
    assert_eq!(header, "X-Grafana-Signature");
    assert!(matches!(s.webhook.alertmanager, Some(EndpointAuth::Bearer { .. })));
    let paths: Vec<&str> = s.ssm.secrets_prefetch.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["/rune/prod", "/rune/shared"], "without the trailing `/`");
    let json = s.redacted_json();
    assert_eq!(json["nats"]["auth"]["token"], REDACTED);
    assert_eq!(json["ssm"]["secrets_prefetch"], serde_json::json!(["/rune/prod", "/rune/shared"]));
    assert!(s.warnings.is_empty(), "{}", lines(&s.warnings));
}

#[test]
fn a_user_with_a_password_reference() {
    let s = ok(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    user: rune\n    password_ref: ssm:/rune/nats/password\n",
        &[],
    );
    assert!(matches!(&s.nats.as_ref().unwrap().auth, NatsAuth::UserPassword { user, .. } if user == "rune"));
    assert_eq!(s.references.len(), 1);
    assert_eq!(s.references[0].key, "nats.auth.password");
}

#[test]
fn references_of_ignored_settings_are_not_read() {
    // No nats.urls: the NATS section is ignored (with a warning), so its token is never asked for.
    let s = ok("nats:\n  auth:\n    token_ref: ssm:/rune/nats/token\n", &[]);
    assert!(s.embedded());
    assert!(s.references.is_empty(), "{:?}", s.references);
    assert!(s.warnings.iter().any(|w| w.message.contains("without nats.urls are ignored")), "{}", lines(&s.warnings));
}

#[test]
fn references_and_prefetch_paths_from_the_environment() {
    let s = ok(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_file: secrets/token\n",
        &[
            // The variable replaces the file's value only for the key it names: token_file stays, so the two
            // sources clash below; here the file gives none.
            ("RUNE_WEBHOOK__GENERIC__HMAC_SECRET_REF", "ssm:/rune/hooks/generic"),
            ("RUNE_SSM__SECRETS_PREFETCH", "/rune/prod/, /rune/hooks"),
        ],
    );
    let [r] = s.references.as_slice() else { panic!("{:?}", s.references) };
    assert_eq!(
        (r.field.as_str(), r.reference.to_string()),
        ("webhook.generic.hmac_secret_ref", "ssm:/rune/hooks/generic".into())
    );
    assert_eq!(r.position.env.as_deref(), Some("RUNE_WEBHOOK__GENERIC__HMAC_SECRET_REF"));
    let paths: Vec<&str> = s.ssm.secrets_prefetch.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["/rune/prod", "/rune/hooks"]);
    assert_eq!(s.ssm.secrets_prefetch[1].position.env.as_deref(), Some("RUNE_SSM__SECRETS_PREFETCH"));

    // RUNE_NATS__AUTH__TOKEN_REF works like RUNE_NATS__AUTH__TOKEN_FILE: with a file that gives no token…
    let s = ok("nats:\n  urls: [nats://127.0.0.1:4222]\n", &[("RUNE_NATS__AUTH__TOKEN_REF", "ssm:/rune/nats/token")]);
    assert_eq!(s.references[0].field, "nats.auth.token_ref");
    assert!(matches!(s.nats.as_ref().unwrap().auth, NatsAuth::Token { .. }));
    // …and beside a file that gives one, the two clash, the error naming the variable.
    let found = errors(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_file: secrets/token\n",
        &[("RUNE_NATS__AUTH__TOKEN_REF", "ssm:/rune/nats/token")],
    );
    assert!(
        found.iter().any(|e| e.message.contains("`token_file` and `token_ref` are exclusive")),
        "{}",
        lines(&found)
    );
    let found = errors("", &[("RUNE_WEBHOOK__GENERIC__BEARER_TOKEN_REF", "ssm:bad")]);
    assert_eq!(found.len(), 1, "{}", lines(&found));
    assert!(found[0].to_string().starts_with("env RUNE_WEBHOOK__GENERIC__BEARER_TOKEN_REF: webhook.generic.bearer_token_ref: `ssm:bad` is not a Parameter Store reference"), "{}", found[0]);
    let s = ok("", &[("RUNE_SSM_SECRETS_PREFETCH", "/rune")]);
    assert!(s.ssm.secrets_prefetch.is_empty());
    assert!(s.warnings.iter().any(|w| w.env.as_deref() == Some("RUNE_SSM_SECRETS_PREFETCH")), "{}", lines(&s.warnings));
}

#[test]
fn a_secret_file_readable_by_others_is_a_warning() {
    let dir = workspace();
    let loose = write(dir.path(), "secrets/loose", "token");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = load_text(dir.path(), "rune.yaml", "webhook:\n  generic:\n    bearer_token_file: secrets/loose\n", &[])
        .unwrap();
    let warning = s.warnings.iter().find(|w| w.field == "webhook.generic.bearer_token_file").unwrap();
    assert!(warning.message.contains("mode 644"), "{warning}");
    assert_eq!(warning.location.as_ref().unwrap().1, 3);
}

#[test]
fn secrets_never_print() {
    let s = ok(
        "nats:\n  urls: [nats://127.0.0.1:4222]\n  auth:\n    token_file: secrets/token\n\
         webhook:\n  generic:\n    hmac_secret_env: HMAC\n",
        &[("HMAC", CANARY)],
    );
    let secret = Secret::new(CANARY);
    for shown in [
        format!("{secret}"),
        format!("{secret:?}"),
        format!("{s:?}"),
        format!("{s:#?}"),
        serde_json::to_string(&secret).unwrap(),
        serde_json::to_string(&s).unwrap(),
        s.redacted_json().to_string(),
    ] {
        assert!(!shown.contains(CANARY), "the secret leaked: {shown}");
    }
    assert_eq!(format!("{secret}"), REDACTED);
    assert_eq!(s.redacted_json()["nats"]["auth"], serde_json::json!({"method": "token", "token": REDACTED}));
    assert_eq!(s.redacted_json()["webhook"]["generic"]["secret"], REDACTED);
    assert_eq!(secret.expose(), CANARY.as_bytes());
}

#[test]
fn relative_paths_in_the_file_are_relative_to_its_folder() {
    let dir = workspace();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    write(dir.path(), "conf/inventory.yaml", "hosts: {}\n");
    let text =
        "paths:\n  rules_dir: ../rules\n  plugins_dirs: [../plugins, /abs/plugins]\n  inventory: inventory.yaml\n";
    let s = load_text(dir.path(), "conf/rune.yaml", text, &[("RUNE_PATHS__STATE_DIR", "state")]).unwrap();
    let conf = dir.path().join("conf");
    assert_eq!(s.paths.rules_dir, conf.join("../rules"));
    assert_eq!(s.paths.plugins_dirs, [conf.join("../plugins"), PathBuf::from("/abs/plugins")]);
    assert_eq!(s.paths.inventory, Some(conf.join("inventory.yaml")));
    // From the environment: relative to the working directory.
    assert_eq!(s.paths.state_dir, Some(PathBuf::from("state")));
}

#[test]
fn yaml_and_toml_give_the_same_settings() {
    let dir = workspace();
    let yaml = "\
nats:
  urls: [\"nats://127.0.0.1:4222\", \"tls://10.0.0.2:4443\"]
  name: rune-1
  auth:
    token_file: secrets/token
  connect_timeout: 3s
  reconnect:
    max_attempts: 10
    max_delay: 4s
  subjects:
    alerts: [\"rune.alerts.>\", \"legacy.alerts.*\"]
  jetstream:
    enabled: true
    alerts_stream:
      max_bytes: 512MiB
      replicas: 3
    consumer:
      max_deliver: 4
      backoff: [1s, 10s, 1m]
    results_stream:
      enabled: true
      max_msgs: 100000
webhook:
  listen: \"0.0.0.0:9300\"
  max_body_bytes: 2097152
  alertmanager:
    bearer_token_file: secrets/other
  generic:
    none: true
  publish_to_nats: true
results:
  stdout: true
limits:
  parallel: 8
log:
  level: \"rune=debug,warn\"
  format: json
";
    let toml = "\
[nats]
urls = [\"nats://127.0.0.1:4222\", \"tls://10.0.0.2:4443\"]
name = \"rune-1\"
connect_timeout = \"3s\"

[nats.auth]
token_file = \"secrets/token\"

[nats.reconnect]
max_attempts = 10
max_delay = \"4s\"

[nats.subjects]
alerts = [\"rune.alerts.>\", \"legacy.alerts.*\"]

[nats.jetstream]
enabled = true
alerts_stream = { max_bytes = \"512MiB\", replicas = 3 }
consumer = { max_deliver = 4, backoff = [\"1s\", \"10s\", \"1m\"] }
results_stream = { enabled = true, max_msgs = 100000 }

[webhook]
listen = \"0.0.0.0:9300\"
max_body_bytes = 2097152
publish_to_nats = true
alertmanager = { bearer_token_file = \"secrets/other\" }
generic = { none = true }

[results]
stdout = true

[limits]
parallel = 8

[log]
level = \"rune=debug,warn\"
format = \"json\"
";
    let from_yaml = load_text(dir.path(), "rune.yaml", yaml, &[]).unwrap_or_else(|e| panic!("{}", lines(&e)));
    let from_toml = load_text(dir.path(), "rune.toml", toml, &[]).unwrap_or_else(|e| panic!("{}", lines(&e)));
    assert_eq!(from_yaml.redacted_json(), from_toml.redacted_json());
    let js = from_yaml.nats.as_ref().unwrap().jetstream.as_ref().unwrap();
    assert_eq!(js.alerts_stream.max_bytes, 512 << 20);
    assert_eq!(js.results_stream.as_ref().unwrap().subjects, ["rune.results.>"]);
    let NatsAuth::Token { token } = &from_toml.nats.as_ref().unwrap().auth else { panic!() };
    assert_eq!(token.expose(), CANARY.as_bytes());
}

/// The documented example (`examples/rune.yaml`, shown in full in docs/configuration.md) stays valid.
#[test]
fn the_example_file_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rune.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap();
    assert!(docs.contains(text.trim()), "docs/configuration.md must show examples/rune.yaml in full");
    // A copy beside its secrets (never committed) and the rules and plugins folders it names.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("examples");
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    for name in ["alertmanager.token", "grafana.hmac"] {
        write_secret(&conf, &format!("secrets/{name}"), CANARY);
    }
    let path = write(&conf, "rune.yaml", &text);
    let s = load_from(Some(&path), &env(&[("NATS_TOKEN", CANARY)])).unwrap_or_else(|e| panic!("{}", lines(&e)));
    assert!(s.warnings.is_empty(), "{}", lines(&s.warnings));
    let nats = s.nats.as_ref().unwrap();
    assert_eq!(nats.urls, ["nats://127.0.0.1:4222"]);
    assert!(nats.jetstream.is_some());
    assert!(matches!(s.webhook.alertmanager, Some(EndpointAuth::Bearer { .. })));
    assert!(!s.redacted_json().to_string().contains(CANARY));
}

#[test]
fn webhook_per_source_limits_and_tls() {
    let s = ok("", &[]);
    assert_eq!(s.webhook.rate_limit_per_source.to_string(), "100 per 1s (burst 100)");
    assert_eq!(s.webhook.max_connections_per_source.get(), 64);
    assert!(s.webhook.tls.is_none());
    let dir = workspace();
    write_secret(dir.path(), "tls/rune.key", "key");
    write(dir.path(), "tls/rune.crt", "cert");
    let text = "webhook:\n  listen: 0.0.0.0:9300\n  per_source:\n    rate_limit: { count: 5, per: 1m }\n    \
                max_connections: 4\n  tls:\n    cert_file: tls/rune.crt\n    key_file: tls/rune.key\n";
    let s = load_text(dir.path(), "rune.yaml", text, &[]).unwrap();
    assert_eq!(s.webhook.rate_limit_per_source.to_string(), "5 per 1m (burst 5)");
    assert_eq!(s.webhook.max_connections_per_source.get(), 4);
    let tls = s.webhook.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, dir.path().join("tls/rune.crt"), "relative to the file's folder");
    assert!(tls.client_ca_file.is_none());
    assert!(s.warnings.iter().all(|w| w.field != "webhook.tls"), "{}", lines(&s.warnings));
    // Off loopback without TLS: a warning (TLS may end in front of RUNE), not an error.
    let s = load_text(dir.path(), "rune.yaml", "webhook:\n  listen: 0.0.0.0:9300\n", &[]).unwrap();
    let warning = s.warnings.iter().find(|w| w.field == "webhook.tls").unwrap();
    assert!(warning.message.contains("plain HTTP"), "{warning}");
    // Said on purpose: no warning; together with tls: an error.
    let s = load_text(dir.path(), "rune.yaml", "webhook:\n  listen: 0.0.0.0:9300\n  plain_http: true\n", &[]).unwrap();
    assert!(s.warnings.iter().all(|w| w.field != "webhook.tls"), "{}", lines(&s.warnings));
    let both = "webhook:\n  plain_http: true\n  tls:\n    cert_file: tls/rune.crt\n    key_file: tls/rune.key\n";
    let errors = load_text(dir.path(), "rune.yaml", both, &[]).unwrap_err();
    assert!(errors.iter().any(|e| e.field == "webhook.plain_http"), "{}", lines(&errors));
}
