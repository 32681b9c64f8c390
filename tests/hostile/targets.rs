//! The parsers under test, one [`Target`] each, shared by the corpus replay, the property tests and the fuzzer.
//!
//! A target feeds bytes to one entry point and checks what comes back: a refusal must be a clear, bounded error;
//! an accepted input must satisfy the invariants below (limits hold, subject tokens cannot inject wildcards,
//! rendered values survive the shell quoting byte for byte). A broken invariant panics, like a bug in the parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use rune::bpcs;
use rune::event::{AlertStatus, Event, Intake, Limits, Source, is_correlation_id, is_label_name};
use rune::inventory::{Inventory, TransportKind};
use rune::plugins::{self, Registry};
use rune::results::nats::{decode_token, encode_token};
use rune::rules::matcher::SubjectPattern;
use rune::rules::template::{EventContext, MAX_RENDERED_BYTES, ProbeContext, Templates};
use rune::rules::{ArgSource, RuleSet, Target as RuleTarget};
use rune::sources;
use rune::transport::push_printf_literal;

/// Longest error message (one diagnostic), in characters, a refusal may carry whatever the input's size: errors
/// go to logs, dead-letter records and result envelopes, so they may quote input only in excerpts.
pub const MAX_ERROR_CHARS: usize = 2048;

/// What a target made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; the text is a short summary (for the fuzzer's novelty check).
    Accepted(String),
    /// Refused with these messages (each checked: non-empty and bounded).
    Refused(Vec<String>),
}

/// One entry point under test.
pub struct Target {
    /// Also the corpus folder: `tests/corpus/<name>/`.
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
    /// The most bytes one call may hold live for an input of this many bytes.
    pub memory_bound: fn(usize) -> usize,
    /// Tokens the fuzzer splices in.
    pub dictionary: &'static [&'static str],
}

const MIB: usize = 1024 * 1024;

/// Generous: a parse may copy its input a few dozen times (JSON → event → raw copy), never more.
fn linear_bound(len: usize) -> usize {
    64 * MIB + 64 * len
}

const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e400",
    "-0",
    "18446744073709551616",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "\"\\\\\"",
    "\"a.>\"",
    "\"*\"",
    "\"../../etc/passwd\"",
    "\"$(id)\"",
    "\"`id`\"",
    "\"4\"",
    "\"firing\"",
    "\"resolved\"",
    "\"version\"",
    "\"alerts\"",
    "\"labels\"",
    "\"annotations\"",
    "\"status\"",
    "\"fingerprint\"",
    "\"startsAt\"",
    "\"starts_at\"",
    "\"truncatedAlerts\"",
    "\"groupKey\"",
    "\"receiver\"",
    "\"action\"",
    "\"target\"",
    "\"args\"",
    "\"requester\"",
    "\"correlation_id\"",
    "\"alertname\"",
    "\"instance\"",
    "\"noop\"",
    "\"web-1\"",
    "\"2026-11-23T21:08:34Z\"",
    "\"0001-01-01T00:00:00Z\"",
    "\u{feff}",
    "\r\n",
    "\\",
];

const YAML_WORDS: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!!binary ",
    "---\n",
    "...\n",
    "|\n",
    ">\n",
    "\"",
    "'",
    "#",
    "~",
    "null",
    "yes",
    "no",
    "on",
    "1e400",
    "0x10",
    "0o7",
    ".inf",
    "rules:",
    "policy:",
    "name: ",
    "match:",
    "labels:",
    "target:",
    "host: web-1",
    "host_from: ",
    "group: web",
    "action: noop",
    "args:",
    "dedup:",
    "window: ",
    "key: ",
    "regex: ",
    "one_of: ",
    "not: ",
    "present: true",
    "subject: ",
    "a.>",
    "*",
    "{{ labels.instance }}",
    "hosts:",
    "defaults:",
    "address: ",
    "user: ",
    "port: ",
    "groups: ",
    "transport: ssm",
    "ssm:",
    "instance_id: ",
    "../../etc/passwd",
    "$(id)",
    "-oProxyCommand=id",
    "\u{feff}",
    "\r\n",
    "\t",
];

const TEMPLATE_WORDS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "labels",
    "annotations",
    ".",
    "[",
    "]",
    "(",
    ")",
    "|",
    "~",
    "*",
    "+",
    "**",
    "\"",
    "'",
    "labels.instance",
    "labels.q",
    "strip_port",
    "short_host",
    "upper",
    "replace",
    "join",
    "list",
    "range(100000)",
    "for x in",
    "endfor",
    "if",
    "endif",
    "set",
    "namespace",
    "macro",
    "endmacro",
    "call",
    "recursive",
    "loop",
    "1000000",
    "-1",
    "none",
    "debug()",
    "super()",
    "include",
    "import",
    "extends",
    "raw",
    "endraw",
    "$(id)",
    "`id`",
    "'",
    "\u{0}",
];

const BPCS_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"bpcs\"",
    "\"0.1\"",
    "\"status\"",
    "\"ok\"",
    "\"warn\"",
    "\"error\"",
    "\"skipped\"",
    "\"summary\"",
    "\"data\"",
    "\"changed\"",
    "true",
    "false",
    "null",
    "1e400",
    "\"\\ud800\"",
    "\n",
    "\u{feff}",
];

const HEADER_WORDS: &[&str] = &[
    "#!/usr/bin/env bash\n",
    "# ---\n",
    "# ",
    "bpcs: \"0.1\"",
    "name: ",
    "version: 1.0.0",
    "description: x",
    "timeout: 30",
    "class: diagnostic",
    "class: remediation",
    "needs_root: true",
    "requires: [",
    "args:",
    "type: ",
    "string",
    "integer",
    "boolean",
    "pattern: ",
    "(a+)+$",
    "\\",
    "default: ",
    "required: true",
    "\n",
    "&a ",
    "*a",
];

const SUBJECT_WORDS: &[&str] = &[".", "*", ">", "a", "hooks", " ", "\t", "\u{0}", "..", "a.>", "%2E", "é"];

/// The events of webhook and NATS payloads: every bound of [`Limits`] holds.
fn check_events(events: &[Event], limits: &Limits, subject: &str) -> String {
    assert!(events.len() <= limits.max_alerts.max(1), "{} events over max_alerts", events.len());
    for e in events {
        assert_eq!(e.subject, subject);
        for (map, max_value) in
            [(&e.labels, limits.max_label_value_bytes), (&e.annotations, limits.max_annotation_value_bytes)]
        {
            assert!(map.len() <= limits.max_labels.max(3), "{} entries over max_labels", map.len());
            for (k, v) in map {
                assert!(k.len() <= limits.max_key_bytes.max(9) && is_label_name(k), "bad key {k:?}");
                assert!(v.len() <= max_value.max(limits.max_field_bytes), "value of {k} is {} bytes", v.len());
                assert!(!v.contains('\0'), "NUL in {k}");
                check_token(v);
            }
        }
        assert!(e.fingerprint.len() <= limits.max_field_bytes, "fingerprint of {} bytes", e.fingerprint.len());
        assert!(!e.fingerprint.chars().any(char::is_control), "control character in the fingerprint");
        assert!(is_correlation_id(&e.correlation_id), "bad correlation id {:?}", e.correlation_id);
        if let Some(r) = &e.request {
            for text in [&r.action, &r.target, &r.requester] {
                assert!(text.len() <= limits.max_field_bytes && !text.chars().any(char::is_control), "{text:?}");
            }
            // The target is a host name: it reaches a results subject only as one encoded token.
            check_token(&r.target);
            assert!(r.args.len() <= limits.max_labels, "{} arguments", r.args.len());
            for (name, value) in &r.args {
                assert!(
                    name.len() <= limits.max_key_bytes && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                );
                if let Some(text) = value.as_str() {
                    assert!(text.len() <= limits.max_label_value_bytes && !text.contains('\0'), "args.{name}");
                    check_shell_literal(text);
                }
            }
        }
    }
    format!("{} events", events.len())
}

/// A refusal: one non-empty message within [`MAX_ERROR_BYTES`].
fn refused(messages: Vec<String>) -> Outcome {
    assert!(!messages.is_empty(), "a refusal without a message");
    for m in &messages {
        assert!(!m.trim().is_empty(), "an empty error message");
        let chars = m.chars().count();
        assert!(chars <= MAX_ERROR_CHARS, "error message of {chars} characters: {}…", head(m));
    }
    Outcome::Refused(messages)
}

fn head(text: &str) -> String {
    text.chars().take(200).collect()
}

pub fn intake_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn webhook(format: Source, body: &[u8]) -> Outcome {
    let limits = Limits::default();
    let subject = format!("hooks.{format}");
    let intake = Intake { subject: &subject, received_at: intake_time(), correlation_id: None };
    match sources::parse_with_meta(format, body, &intake, &limits) {
        Ok((events, meta)) => {
            for text in [&meta.group_key, &meta.receiver].into_iter().flatten() {
                assert!(text.len() <= limits.max_field_bytes, "payload meta of {} bytes", text.len());
            }
            Outcome::Accepted(check_events(&events, &limits, &subject))
        }
        Err(e) => {
            assert_eq!(e.format, format);
            let chars = e.field.chars().count();
            assert!(chars <= MAX_ERROR_CHARS, "field path of {chars} characters");
            refused(vec![e.to_string()])
        }
    }
}

fn alertmanager(body: &[u8]) -> Outcome {
    webhook(Source::Alertmanager, body)
}

fn grafana(body: &[u8]) -> Outcome {
    webhook(Source::Grafana, body)
}

fn generic(body: &[u8]) -> Outcome {
    webhook(Source::Generic, body)
}

fn chatops(body: &[u8]) -> Outcome {
    webhook(Source::Chatops, body)
}

/// A NATS message in a corpus file: the subject on the first line, then `Name: value` header lines up to an empty
/// line, then the payload. A file without that empty line is all payload, on `rune.alerts.generic`.
pub fn split_nats_message(input: &[u8]) -> (String, Vec<(String, String)>, &[u8]) {
    let Some(end) = input.windows(2).position(|w| w == b"\n\n") else {
        return ("rune.alerts.generic".to_owned(), Vec::new(), input);
    };
    let head = String::from_utf8_lossy(&input[..end]);
    let mut lines = head.split('\n');
    let subject = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    (subject, headers, &input[end + 2..])
}

fn nats(input: &[u8]) -> Outcome {
    let (subject, header_lines, payload) = split_nats_message(input);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in header_lines {
        // The wire cannot carry an invalid header name or value (async-nats refuses them; `insert` panics).
        if let (Ok(name), Ok(value)) =
            (name.parse::<async_nats::HeaderName>(), value.parse::<async_nats::HeaderValue>())
        {
            headers.insert(name, value);
        }
    }
    let limits = Limits::default();
    match sources::nats::parse_message(&subject, Some(&headers), payload, &limits) {
        Ok(events) => Outcome::Accepted(check_events(&events, &limits, &subject)),
        Err(e) => refused(vec![e]),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The plugins rule files may name: the shipped ones and the test fixtures.
pub static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::load(&[repo().join("plugins"), repo().join("tests/fixtures/plugins")]));

/// Hosts rule files may target; some names need encoding in a subject.
pub static INVENTORY: LazyLock<Inventory> = LazyLock::new(|| {
    let text = "defaults:\n  user: runetest\nhosts:\n  web-1:\n    groups: [web]\n  web-2.prod.example:\n    \
                groups: [web]\n  db-1:\n    address: 10.0.0.5\n    groups: [db]\n";
    Inventory::parse(text, "hostile inventory", None).unwrap_or_else(|e| panic!("{e:?}"))
});

/// An event whose every field is hostile: shell metacharacters, `..`, subject wildcards, option-like values,
/// values at their size limits.
pub static HOSTILE_EVENT: LazyLock<Arc<Event>> = LazyLock::new(|| {
    let values: Vec<(&str, String)> = vec![
        ("alertname", "DockerDown".into()),
        ("severity", "critical".into()),
        ("instance", "web-1:9100".into()),
        ("cmd", "$(touch /tmp/rune-pwned)".into()),
        ("tick", "`id`; id | id && id || id > /tmp/x < /etc/passwd".into()),
        ("q", "'\"'\\\"\\\\'".into()),
        ("nl", "a\nb\r\nc\td\u{1b}[31m".into()),
        ("path", "../../etc/passwd".into()),
        ("dots", "..".into()),
        ("subj", "a.>".into()),
        ("star", "*".into()),
        ("space", "a b".into()),
        ("opt", "-oProxyCommand=sh -c 'id>/tmp/x'".into()),
        ("at", "@ENV_VARS@ @RUN_ID@ %s %n {{ labels.cmd }}".into()),
        ("uni", "\u{feff}é漢字\u{202e}\u{fffd}".into()),
        ("big", "x".repeat(Limits::default().max_label_value_bytes)),
        ("empty", String::new()),
    ];
    let labels: BTreeMap<String, String> = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Arc::new(Event {
        id: uuid::Uuid::nil(),
        source: Source::Generic,
        subject: "hooks.generic".into(),
        status: AlertStatus::Firing,
        annotations: labels.clone(),
        labels,
        fingerprint: "0123456789abcdef".into(),
        starts_at: None,
        received_at: intake_time(),
        correlation_id: "c-1".into(),
        request: None,
        delivery: None,
        raw: Arc::from(""),
    })
});

fn context(target: Option<&str>) -> minijinja::Value {
    EventContext { event: HOSTILE_EVENT.clone(), rule: Arc::from("r"), target: target.map(Arc::from), status: None }
        .into_value()
}

/// `printf '%b'` decoding of a literal made by [`push_printf_literal`]: only `\xHH` escapes can occur.
pub fn decode_printf_literal(literal: &str) -> Vec<u8> {
    let bytes = literal.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            let hex = literal.get(i + 2..i + 4).unwrap_or_else(|| panic!("bad escape at {i} in {literal:?}"));
            assert_eq!(bytes.get(i + 1), Some(&b'x'), "only \\xHH escapes: {literal:?}");
            out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{hex}: {e}")));
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// A value that reaches a shell (an argument, an environment variable) does so as a `printf '%b'` literal inside
/// single quotes: the literal has no quote, nothing a shell or `printf` interprets except `\xHH`, and decodes to
/// the value byte for byte.
pub fn check_shell_literal(value: &str) {
    let mut literal = String::new();
    push_printf_literal(&mut literal, value.as_bytes());
    assert!(
        literal.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'\'' && b != b'@' || b == b'\n'),
        "the literal holds a quote, an @ or a raw control byte: {literal:?}"
    );
    assert_eq!(decode_printf_literal(&literal), value.as_bytes(), "the literal does not round-trip");
}

/// Text that may reach a NATS subject does so as one token: no `.`, wildcard, whitespace or control character,
/// and it decodes back to the text.
pub fn check_token(text: &str) {
    let token = encode_token(text);
    assert!(!token.is_empty(), "empty token for {text:?}");
    assert!(
        token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%')),
        "{text:?} → {token:?}"
    );
    if text != "\0" {
        assert_eq!(decode_token(&token).as_deref(), Some(text), "{text:?} → {token:?} does not decode back");
    }
}

/// A rendered template value: bounded, no NUL, safe as a shell literal.
fn check_rendered(rendered: &str) {
    assert!(rendered.len() <= MAX_RENDERED_BYTES, "rendered {} bytes", rendered.len());
    assert!(!rendered.contains('\0'), "NUL in a rendered value");
    check_shell_literal(rendered);
}

fn templates(input: &[u8]) -> Outcome {
    let source = String::from_utf8_lossy(input).into_owned();
    let mut t = Templates::new();
    if let Err(e) = t.add("t".into(), source) {
        return refused(vec![e.to_string()]);
    }
    let mut errors = Vec::new();
    if let Err(e) = t.probe("t", ProbeContext) {
        errors.push(e.to_string());
    }
    let _ = t.references("t");
    match t.render("t", &context(Some("web-1"))) {
        Ok(rendered) => {
            check_rendered(&rendered);
            check_token(&rendered);
            if errors.is_empty() { Outcome::Accepted(format!("{} bytes", rendered.len())) } else { refused(errors) }
        }
        Err(e) => {
            errors.push(e.to_string());
            refused(errors)
        }
    }
}

/// Rule files: loading refuses or yields rules whose every template renders, against the hostile event, into
/// bounded, shell-safe values.
fn rules(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input).into_owned();
    let files = vec![(PathBuf::from("corpus.yaml"), text)];
    match rune::rules::parse_files(&files, &REGISTRY, &INVENTORY) {
        Ok(set) => {
            render_rule_templates(&set);
            Outcome::Accepted(format!("{} rules", set.rules.len()))
        }
        Err(diagnostics) => refused(diagnostics.iter().map(ToString::to_string).collect()),
    }
}

fn render_rule_templates(set: &RuleSet) {
    let ctx = context(Some("web-1"));
    let mut names: Vec<&str> = Vec::new();
    for rule in &set.rules {
        if let RuleTarget::HostFrom { template, .. } = &rule.target {
            names.push(template);
        }
        for (_, source) in &rule.args {
            if let ArgSource::Template { template, .. } = source {
                names.push(template);
            }
        }
        if let Some(key) = &rule.dedup.key_template {
            names.push(key);
        }
    }
    for name in names {
        // A render may fail (a missing label is an error); a value it produces must be safe.
        if let Ok(rendered) = set.render(name, &ctx) {
            check_rendered(&rendered);
        }
    }
}

fn bpcs_output(input: &[u8]) -> Outcome {
    match bpcs::parse_output(input) {
        Ok(out) => {
            let _ = bpcs::check_exit_code(&out, 0);
            Outcome::Accepted(format!("{:?}", out.status))
        }
        Err(e) => refused(vec![e.to_string()]),
    }
}

/// The plugin's file stem: the header's `name:` when it looks like one (so the name check can pass).
fn plugin_path(input: &[u8]) -> PathBuf {
    let text = String::from_utf8_lossy(input);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("# name:"))
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() < 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or("fuzz");
    Path::new("/plugins").join(format!("{name}.sh"))
}

fn plugin_header(input: &[u8]) -> Outcome {
    match plugins::parse_plugin(&plugin_path(input), input.to_vec()) {
        Ok(plugin) => {
            for (name, spec) in &plugin.args {
                assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
                if let Some(default) = &spec.default {
                    check_shell_literal(&default.as_env_string());
                }
            }
            check_token(&plugin.name);
            Outcome::Accepted(format!("{} args", plugin.args.len()))
        }
        Err(errors) => refused(errors.iter().map(ToString::to_string).collect()),
    }
}

fn subject_pattern(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    match SubjectPattern::parse(&text) {
        Ok(pattern) => {
            if let Some(literal) = pattern.literal() {
                assert!(pattern.matches(&literal), "{literal:?} does not match itself");
                assert!(!literal.split('.').any(|t| t == "*" || t == ">" || t.is_empty()));
            }
            for subject in ["", ".", "a", "a.b", "a.b.c", "hooks.generic", "..", "a..b", text.as_ref()] {
                let _ = pattern.matches(subject);
            }
            Outcome::Accepted(format!("{} literal", pattern.literal().is_some()))
        }
        Err(e) => refused(vec![e]),
    }
}

/// Subject tokens: any text encodes into a safe token that decodes back; a token that decodes is canonical.
fn token(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    check_token(&text);
    match decode_token(&text) {
        Some(decoded) => {
            assert_eq!(encode_token(&decoded), text, "decode accepted a token encode would not produce");
            Outcome::Accepted("decodes".into())
        }
        None => Outcome::Accepted("not a token".into()),
    }
}

fn inventory(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    match Inventory::parse(&text, "corpus inventory", Some(Path::new("/etc/rune"))) {
        Ok(inv) => {
            let mut n = 0;
            for host in inv.hosts() {
                n += 1;
                check_token(&host.name);
                // Nothing that reaches ssh's command line may look like an option (the user only over SSH).
                let user = if host.transport == TransportKind::Ssh { host.user.as_str() } else { "" };
                for text in [host.name.as_str(), host.address.as_str(), user] {
                    assert!(!text.starts_with('-'), "option-like host field {text:?}");
                    assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()), "{text:?}");
                }
                assert_ne!(host.port, 0);
            }
            Outcome::Accepted(format!("{n} hosts"))
        }
        Err(errors) => refused(errors.iter().map(ToString::to_string).collect()),
    }
}

/// Every target, in corpus-folder order.
pub static TARGETS: &[Target] = &[
    Target { name: "alertmanager", run: alertmanager, memory_bound: linear_bound, dictionary: JSON_WORDS },
    Target { name: "grafana", run: grafana, memory_bound: linear_bound, dictionary: JSON_WORDS },
    Target { name: "generic", run: generic, memory_bound: linear_bound, dictionary: JSON_WORDS },
    Target { name: "chatops", run: chatops, memory_bound: linear_bound, dictionary: JSON_WORDS },
    Target { name: "nats", run: nats, memory_bound: linear_bound, dictionary: JSON_WORDS },
    Target { name: "rules", run: rules, memory_bound: linear_bound, dictionary: YAML_WORDS },
    Target { name: "templates", run: templates, memory_bound: linear_bound, dictionary: TEMPLATE_WORDS },
    Target { name: "bpcs_output", run: bpcs_output, memory_bound: linear_bound, dictionary: BPCS_WORDS },
    Target { name: "plugin_header", run: plugin_header, memory_bound: linear_bound, dictionary: HEADER_WORDS },
    Target { name: "subject_pattern", run: subject_pattern, memory_bound: linear_bound, dictionary: SUBJECT_WORDS },
    Target { name: "token", run: token, memory_bound: linear_bound, dictionary: SUBJECT_WORDS },
    Target { name: "inventory", run: inventory, memory_bound: linear_bound, dictionary: YAML_WORDS },
];

pub fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name}"))
}

/// The template dictionary, for the property tests' token soup.
pub fn template_words() -> Vec<&'static str> {
    TEMPLATE_WORDS.to_vec()
}
