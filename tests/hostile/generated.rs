//! The big members of the corpus, generated here rather than committed: huge bodies, 10,000 levels of nesting,
//! 10,000 labels, rules and hosts, YAML alias bombs. Each is (name, bytes); the replay runs them like the files
//! in `tests/corpus/<target>/`.

use rune::event::Limits;

/// One generated input.
pub type Generated = (String, Vec<u8>);

const DEPTH: usize = 10_000;
const MANY: usize = 10_000;

fn named(name: &str, bytes: impl Into<Vec<u8>>) -> Generated {
    (format!("gen:{name}"), bytes.into())
}

/// Labels `l0..l<n>` as a JSON object.
fn json_labels(n: usize, value: &str) -> String {
    let items: Vec<String> = (0..n).map(|i| format!("\"l{i}\":\"{value}\"")).collect();
    format!("{{{}}}", items.join(","))
}

/// A webhook body of `format` with this labels object (and `"alertname"` so rules could match).
fn in_shape(target: &str, labels: &str) -> String {
    match target {
        "alertmanager" | "grafana" => {
            format!(
                "{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{{\"status\":\"firing\",\"labels\":{labels}}}]}}"
            )
        }
        "chatops" => format!(
            "{{\"action\":\"noop\",\"target\":\"web-1\",\"requester\":\"u\",\"args\":{}}}",
            labels.replace("\"l", "\"a")
        ),
        "bpcs_output" => {
            format!("{{\"bpcs\":\"0.1\",\"status\":\"ok\",\"summary\":\"s\",\"changed\":false,\"data\":{labels}}}")
        }
        _ => format!("{{\"labels\":{labels}}}"),
    }
}

/// JSON-shaped inputs, for the webhook formats, NATS payloads and plugin output.
fn json(target: &str) -> Vec<Generated> {
    let limits = Limits::default();
    let body = limits.max_body_bytes;
    let mut out = vec![
        named("10000 [", "[".repeat(DEPTH)),
        named("10000 [ closed", format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH))),
        named("10000 {\"a\":", format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH))),
        named("10000 [ in labels", in_shape(target, &format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH)))),
        named("10000 labels", in_shape(target, &json_labels(MANY, "v"))),
        named("10000 labels with metacharacters", in_shape(target, &json_labels(MANY, "$(id);`id`|../../x"))),
        named("10000 duplicate keys", in_shape(target, &format!("{{{}}}", vec!["\"a\":\"b\""; MANY].join(",")))),
        named("label key of 100 KB", in_shape(target, &format!("{{\"{}\":\"v\"}}", "k".repeat(100_000)))),
        named("label value at the body limit", in_shape(target, &format!("{{\"a\":\"{}\"}}", "v".repeat(body - 200)))),
        named("body over the limit", in_shape(target, &format!("{{\"a\":\"{}\"}}", "v".repeat(2 * body)))),
        named("number of 100,000 digits", in_shape(target, &format!("{{\"a\":1{}}}", "0".repeat(100_000)))),
        named("1e400", in_shape(target, "{\"a\":1e400}")),
        named("100,000 NUL escapes", in_shape(target, &format!("{{\"a\":\"{}\"}}", "\\u0000".repeat(100_000)))),
        named("100,000 lone surrogates", in_shape(target, &format!("{{\"a\":\"{}\"}}", "\\ud800".repeat(100_000)))),
        named("100,000 alerts", {
            let alerts = vec!["{\"labels\":{\"a\":\"b\"}}"; 40_000].join(",");
            match target {
                "alertmanager" | "grafana" => {
                    format!("{{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{alerts}]}}")
                }
                _ => format!("[{alerts}]"),
            }
        }),
        named("1 MiB of whitespace", " ".repeat(body)),
        named("BOM and CRLF", format!("\u{feff}{}\r\n", in_shape(target, "{\"a\":\"b\"}"))),
    ];
    if target == "bpcs_output" {
        out.push(named(
            "summary of 1 MiB",
            format!(
                "{{\"bpcs\":\"0.1\",\"status\":\"ok\",\"summary\":\"{}\",\"changed\":false,\"data\":{{}}}}",
                "s".repeat(body)
            ),
        ));
        out.push(named(
            "status of 1 MiB",
            format!(
                "{{\"bpcs\":\"0.1\",\"status\":\"{}\",\"summary\":\"s\",\"changed\":false,\"data\":{{}}}}",
                "o".repeat(body)
            ),
        ));
        out.push(named(
            "unknown key of 1 MiB",
            format!(
                "{{\"bpcs\":\"0.1\",\"status\":\"ok\",\"summary\":\"s\",\"changed\":false,\"data\":{{}},\"{}\":1}}",
                "k".repeat(body)
            ),
        ));
    }
    out
}

/// Billion laughs: nine levels of ten aliases each (10^9 leaves if expanded).
fn yaml_bomb(prefix: &str, use_at: &str) -> String {
    let mut s = String::from(prefix);
    s.push_str("x0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for level in 1..10 {
        let prev = level - 1;
        s.push_str(&format!("x{level}: &a{level} [{}]\n", vec![format!("*a{prev}"); 10].join(",")));
    }
    s.push_str(use_at);
    s
}

fn rules() -> Vec<Generated> {
    let rule = |i: usize| {
        format!(
            "  - name: r{i}\n    match: {{ labels: {{ alertname: A{i} }} }}\n    target: {{ host: web-1 }}\n    action: noop\n"
        )
    };
    let many_rules: String = (0..MANY).map(rule).collect();
    let many_labels: String = (0..MANY).map(|i| format!("        l{i}: v\n")).collect();
    vec![
        named("10000 rules", format!("rules:\n{many_rules}")),
        named("10000 rules in flow style", format!("rules: [{}]", vec!["{name: a, action: noop}"; MANY].join(","))),
        named(
            "rule with 10000 label conditions",
            format!(
                "rules:\n  - name: a\n    match:\n      labels:\n{many_labels}    target: {{ host: web-1 }}\n    action: noop\n"
            ),
        ),
        named("alias bomb at the top", yaml_bomb("", "rules: *a9\n")),
        named(
            "alias bomb in a label",
            yaml_bomb(
                "",
                "rules:\n  - name: a\n    match: { labels: { alertname: *a9 } }\n    target: { host: web-1 }\n    action: noop\n",
            ),
        ),
        named("alias bomb in an unknown key", yaml_bomb("", "rules: []\nextra: *a9\n")),
        named("10000 [", format!("rules: {}", "[".repeat(DEPTH))),
        named("10000 {", format!("rules: {}", "{a: ".repeat(DEPTH))),
        named("10000 nested block lists", (0..DEPTH).map(|i| format!("{}-\n", " ".repeat(i))).collect::<String>()),
        named("key of 1 MiB", format!("{}: 1\n", "k".repeat(1 << 20))),
        named(
            "regex of 1 MiB",
            format!(
                "rules:\n  - name: a\n    match: {{ labels: {{ x: {{ regex: \"{}\" }} }} }}\n    target: {{ host: web-1 }}\n    action: noop\n",
                "a?".repeat(1 << 19)
            ),
        ),
        named(
            "template of 1 MiB",
            format!(
                "rules:\n  - name: a\n    match: {{ labels: {{ x: y }} }}\n    target: {{ host_from: \"{}\" }}\n    action: noop\n",
                "{{ labels.x }}".repeat(1 << 16)
            ),
        ),
        named(
            "template nested 10000 deep",
            format!(
                "rules:\n  - name: a\n    match: {{ labels: {{ x: y }} }}\n    target: {{ host_from: \"{{{{ {}1{} }}}}\" }}\n    action: noop\n",
                "(".repeat(DEPTH),
                ")".repeat(DEPTH)
            ),
        ),
    ]
}

fn inventory() -> Vec<Generated> {
    let many: String = (0..MANY).map(|i| format!("  h{i}:\n    address: 10.0.{}.{}\n", i / 256, i % 256)).collect();
    vec![
        named("10000 hosts", format!("defaults:\n  user: u\nhosts:\n{many}")),
        named("alias bomb", yaml_bomb("", "hosts: *a9\n")),
        named("alias bomb in groups", yaml_bomb("", "hosts:\n  web-1:\n    groups: *a9\n")),
        named("10000 [", format!("hosts: {}", "[".repeat(DEPTH))),
        named(
            "host with 10000 groups",
            format!(
                "defaults:\n  user: u\nhosts:\n  web-1:\n    groups: [{}]\n",
                (0..MANY).map(|i| format!("g{i}")).collect::<Vec<_>>().join(",")
            ),
        ),
        named("host name of 1 MiB", format!("hosts:\n  {}:\n    user: u\n", "h".repeat(1 << 20))),
    ]
}

fn templates() -> Vec<Generated> {
    vec![
        named("10000 (", format!("{{{{ {}1{} }}}}", "(".repeat(DEPTH), ")".repeat(DEPTH))),
        named("10000 [", format!("{{{{ {}1{} }}}}", "[".repeat(DEPTH), "]".repeat(DEPTH))),
        named("10000 nested ifs", format!("{}x{}", "{% if true %}".repeat(DEPTH), "{% endif %}".repeat(DEPTH))),
        named("10000 filters", format!("{{{{ labels.instance{} }}}}", "|upper".repeat(DEPTH))),
        named("1 MiB of text", "x".repeat(1 << 20)),
        named("100,000 expressions", "{{ labels.cmd }}".repeat(100_000)),
        named("100,000 unclosed", "{{".repeat(100_000)),
    ]
}

fn plugin_header() -> Vec<Generated> {
    let lines: String = (0..MANY).map(|i| format!("#   a{i}: {{ type: string }}\n")).collect();
    let base = "#!/usr/bin/env bash\n# ---\n# bpcs: \"0.1\"\n# name: big\n# version: 1.0.0\n# description: d\n# class: diagnostic\n# timeout: 10\n";
    vec![
        named("10000 args", format!("{base}# args:\n{lines}# ---\necho\n")),
        named("10000 invalid arg names", format!("{base}# args:\n{}# ---\necho\n", lines.replace("#   a", "#   A"))),
        named("over 512 KiB", format!("{base}# ---\n{}", "#".repeat(600 * 1024))),
        named("10000 header lines, never closed", format!("#!/bin/bash\n# ---\n{}", "# x: y\n".repeat(MANY))),
        named(
            "pattern of 100 KB",
            format!("{base}# args:\n#   a: {{ type: string, pattern: \"{}\" }}\n# ---\n", "(a|b)".repeat(20_000)),
        ),
        named(
            "pattern with a huge repetition",
            format!("{base}# args:\n#   a: {{ type: string, pattern: \"((a{{1000}}){{1000}}){{1000}}\" }}\n# ---\n"),
        ),
        named(
            "alias bomb",
            format!(
                "#!/bin/bash\n# ---\n{}# ---\n",
                yaml_bomb("", "args: *a9\n").lines().map(|l| format!("# {l}\n")).collect::<String>()
            ),
        ),
    ]
}

fn subject_pattern() -> Vec<Generated> {
    vec![
        named("10000 tokens", vec!["a"; MANY].join(".")),
        named("10000 wildcards", vec!["*"; MANY].join(".")),
        named("1 MiB of dots", ".".repeat(1 << 20)),
    ]
}

fn token() -> Vec<Generated> {
    vec![
        named("1 MiB of dots", ".".repeat(1 << 20)),
        named("100,000 multibyte", "漢".repeat(100_000)),
        named("100,000 percent escapes", "%2E".repeat(100_000)),
        named("100,000 half escapes", "%2".repeat(100_000)),
    ]
}

/// The generated inputs of one target.
pub fn generated(target: &str) -> Vec<Generated> {
    match target {
        "alertmanager" | "grafana" | "generic" | "chatops" | "bpcs_output" => json(target),
        "nats" => json("generic")
            .into_iter()
            .map(|(name, payload)| {
                let mut message = b"rune.alerts.generic\nRune-Format: generic\n\n".to_vec();
                message.extend(payload);
                (name, message)
            })
            .collect(),
        "rules" => rules(),
        "inventory" => inventory(),
        "templates" => templates(),
        "plugin_header" => plugin_header(),
        "subject_pattern" => subject_pattern(),
        "token" => token(),
        _ => Vec::new(),
    }
}
