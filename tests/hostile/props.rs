//! Property tests: arbitrary bytes and structured-but-hostile inputs (JSON of random shape, rule and inventory
//! YAML with random fields and values, template token soup) through every target, plus the round trips that
//! exist (subject tokens, shell literals, subject patterns).

use proptest::prelude::*;
use rune::results::nats::{decode_token, encode_token};
use rune::rules::matcher::SubjectPattern;
use rune::transport::push_printf_literal;
use serde_json::{Map, Value};

use super::targets::{self, Outcome, check_shell_literal, check_token, decode_printf_literal};
use super::{run_one, targets::target};

/// Runs `input` through the target `name`; a panic, a broken invariant or a memory bound fails the case (as a
/// case failure, not a panic: proptest then shrinks without printing every step).
fn check(name: &str, input: &[u8]) -> Result<Outcome, TestCaseError> {
    let t = target(name);
    let verdict = run_one(t, input, None);
    if let Some(why) = verdict.failure(t, input.len()) {
        let why: String = why.chars().take(600).collect();
        let input: String = String::from_utf8_lossy(input).chars().take(600).collect();
        return Err(TestCaseError::fail(format!("{name}: {why}\ninput: {input:?}")));
    }
    verdict.outcome.map_err(TestCaseError::fail)
}

/// Strings an attacker would try in any field.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "a b",
            "a.>",
            "*",
            ">",
            "..",
            "../../etc/passwd",
            "/etc/shadow",
            "$(id)",
            "`id`",
            "a;id",
            "a|id",
            "a&&id",
            "'",
            "\"",
            "\\",
            "\n",
            "\r\n",
            "\t",
            "\0",
            "\u{1b}[2J",
            "-oProxyCommand=id",
            "--help",
            "%2E",
            "%00",
            "{{ labels.x }}",
            "{% raw %}",
            "@RUN_ID@",
            "\u{feff}",
            "\u{202e}",
            "\u{fffd}",
            "é",
            "漢字",
            "web-1",
            "web-1:9100",
            "[::1]:9100",
            "noop",
            "critical",
            "firing",
            "4",
            "1e400",
            "-1",
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
        "[a-z.*>$`;|&' \"\\\\-]{0,24}",
        (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Keys: valid label names, near misses, hostile text.
fn hostile_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "alertname",
            "instance",
            "severity",
            "job",
            "a",
            "_",
            "a.b",
            "k8s.io/app",
            "a:b",
            "9a",
            "-a",
            "a b",
            "a=b",
            "é",
            "labels",
            "status",
        ])
        .prop_map(str::to_owned),
        hostile_text(),
        "[A-Za-z_][A-Za-z0-9_.:/-]{0,130}",
    ]
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_text().prop_map(Value::String),
    ]
}

/// JSON of random shape and depth, keys and values from the hostile sets.
fn json_value() -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((hostile_key(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A label map: mostly strings, sometimes another type.
fn labels() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (hostile_key(), prop_oneof![8 => hostile_text().prop_map(Value::String), 1 => json_scalar()]),
        0..12,
    )
    .prop_map(|entries| Value::Object(entries.into_iter().collect()))
}

/// A webhook body in the shape of `format`, with hostile fields.
fn webhook_body(format: &'static str) -> impl Strategy<Value = Value> {
    let alert = (labels(), labels(), hostile_text(), hostile_text(), prop::option::of(hostile_text()));
    let alerts = prop::collection::vec(alert, 0..4);
    (alerts, hostile_text(), labels(), json_value(), hostile_text()).prop_map(
        move |(alerts, text, common, extra, target)| {
            let alerts: Vec<Value> = alerts
                .into_iter()
                .map(|(labels, annotations, status, fingerprint, starts)| {
                    let mut a = serde_json::json!({"labels": labels, "annotations": annotations, "status": status,
                    "fingerprint": fingerprint});
                    if let Some(s) = starts {
                        a["startsAt"] = Value::String(s);
                    }
                    a
                })
                .collect();
            match format {
                "alertmanager" | "grafana" => serde_json::json!({"version": "4", "status": "firing", "alerts": alerts,
                "groupKey": text, "commonLabels": common, "truncatedAlerts": 0, "extra": extra}),
                "chatops" => serde_json::json!({"action": text, "target": target, "requester": "u", "args": common,
                "correlation_id": extra}),
                _ => serde_json::json!({"labels": common, "status": "firing", "fingerprint": text,
                "correlation_id": target}),
            }
        },
    )
}

/// A YAML scalar of hostile text, sometimes quoted, sometimes plain (and then maybe not what it looks like).
fn yaml_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_text().prop_map(|t| serde_json::to_string(&t).unwrap_or_default()),
        hostile_text().prop_map(|t| t.replace('\n', " ")),
        prop::sample::select(vec!["web-1", "noop", "30m", "0", "-1", "1e400", "yes", "~", "[]", "{}", "*a", "&a x"])
            .prop_map(str::to_owned),
    ]
}

/// One rule in YAML with every field optional and every value hostile.
fn rule_yaml() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        yaml_scalar().prop_map(|v| format!("name: {v}")),
        Just("name: r1".to_owned()),
        (hostile_key(), yaml_scalar()).prop_map(|(k, v)| format!(
            "match: {{ labels: {{ {}: {v} }} }}",
            serde_json::to_string(&k).unwrap_or_default()
        )),
        yaml_scalar().prop_map(|v| format!("match: {{ labels: {{ x: {{ regex: {v} }} }} }}")),
        yaml_scalar().prop_map(|v| format!("match: {{ subject: {v} }}")),
        Just("match: { labels: { alertname: A } }".to_owned()),
        yaml_scalar().prop_map(|v| format!("target: {{ host: {v} }}")),
        yaml_scalar().prop_map(|v| format!("target: {{ host_from: {v} }}")),
        Just("target: { host_from: \"{{ labels.instance | strip_port }}\" }".to_owned()),
        yaml_scalar().prop_map(|v| format!("target: {{ group: {v} }}")),
        yaml_scalar().prop_map(|v| format!("action: {v}")),
        Just("action: noop".to_owned()),
        Just("action: echo-args".to_owned()),
        (yaml_scalar(), yaml_scalar()).prop_map(|(k, v)| format!("args: {{ {k}: {v} }}")),
        yaml_scalar().prop_map(|v| format!("args: {{ message: {v} }}")),
        yaml_scalar().prop_map(|v| format!("args: {{ text: \"{{{{ labels.cmd }}}}{}\" }}", v.replace('"', ""))),
        yaml_scalar().prop_map(|v| format!("dedup: {{ window: {v} }}")),
        yaml_scalar().prop_map(|v| format!("dedup: {{ key: {v} }}")),
        yaml_scalar().prop_map(|v| format!("rate_limit: {{ host: {{ count: {v}, per: {v} }} }}")),
        yaml_scalar().prop_map(|v| format!("safety: {{ blast_radius: {{ max_hosts: {v}, window: {v} }} }}")),
        yaml_scalar().prop_map(|v| format!("stop: {v}")),
        yaml_scalar().prop_map(|v| format!("{v}: 1")),
    ];
    prop::collection::vec(field, 0..8).prop_map(|fields| {
        let mut s = String::from("rules:\n  - ");
        s.push_str(&fields.join("\n    "));
        s.push('\n');
        s
    })
}

/// An inventory in YAML: hosts with random names and fields.
fn inventory_yaml() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        yaml_scalar().prop_map(|v| format!("address: {v}")),
        yaml_scalar().prop_map(|v| format!("user: {v}")),
        yaml_scalar().prop_map(|v| format!("port: {v}")),
        yaml_scalar().prop_map(|v| format!("groups: [{v}]")),
        yaml_scalar().prop_map(|v| format!("key: {v}")),
        yaml_scalar().prop_map(|v| format!("known_hosts: {v}")),
        yaml_scalar().prop_map(|v| format!("transport: {v}")),
        yaml_scalar().prop_map(|v| format!("ssm: {{ instance_id: {v} }}")),
        yaml_scalar().prop_map(|v| format!("connect_timeout_s: {v}")),
        yaml_scalar().prop_map(|v| format!("sudo: {v}")),
    ];
    let host = (yaml_scalar(), prop::collection::vec(field, 0..5));
    prop::collection::vec(host, 0..4).prop_map(|hosts| {
        let mut s = String::from("defaults:\n  user: u\nhosts:\n");
        for (name, fields) in hosts {
            s.push_str(&format!("  {name}:\n"));
            for f in fields {
                s.push_str(&format!("    {f}\n"));
            }
            if !s.ends_with(":\n") {
                continue;
            }
            s.push_str("    port: 22\n");
        }
        s
    })
}

fn template_source() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![prop::sample::select(targets::template_words()).prop_map(str::to_owned), hostile_text()],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_reach_a_verdict_in_every_target(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for t in targets::TARGETS {
            check(t.name, &bytes)?;
        }
    }

    #[test]
    fn hostile_webhook_bodies(
        format in prop::sample::select(vec!["alertmanager", "grafana", "generic", "chatops"]),
        body in prop::sample::select(vec!["alertmanager", "grafana", "generic", "chatops"]).prop_flat_map(webhook_body),
    ) {
        let bytes = body.to_string().into_bytes();
        check(format, &bytes)?;
        let mut message = b"rune.alerts.x\n\n".to_vec();
        message.extend_from_slice(&bytes);
        check("nats", &message)?;
    }

    #[test]
    fn random_json_through_every_json_target(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        for name in ["alertmanager", "grafana", "generic", "chatops", "nats", "bpcs_output"] {
            check(name, &bytes)?;
        }
    }

    #[test]
    fn nats_headers_and_subjects(subject in hostile_text(), format in hostile_text(), id in hostile_text()) {
        let head = format!("{}\nRune-Format: {}\nRune-Correlation-Id: {}", subject.replace('\n', ""),
            format.replace('\n', ""), id.replace('\n', ""));
        let mut message = head.into_bytes();
        message.extend_from_slice(b"\n\n{\"labels\":{\"a\":\"b\"}}");
        check("nats", &message)?;
    }

    #[test]
    fn hostile_rule_files(rules in prop::collection::vec(rule_yaml(), 1..3)) {
        let text = rules.join("");
        check("rules", text.as_bytes())?;
    }

    #[test]
    fn hostile_inventories(text in inventory_yaml()) {
        check("inventory", text.as_bytes())?;
    }

    #[test]
    fn template_token_soup(source in template_source()) {
        check("templates", source.as_bytes())?;
    }

    #[test]
    fn bpcs_outputs(status in hostile_text(), summary in hostile_text(), data in json_value(), extra in json_value()) {
        let out = serde_json::json!({"bpcs": "0.1", "status": status, "summary": summary, "changed": false,
            "data": data, "x": extra});
        check("bpcs_output", out.to_string().as_bytes())?;
        let out = serde_json::json!({"bpcs": "0.1", "status": "ok", "summary": summary, "changed": true, "data": data});
        check("bpcs_output", out.to_string().as_bytes())?;
    }

    #[test]
    fn tokens_round_trip(text in any::<String>()) {
        check_token(&text);
        check("token", text.as_bytes())?;
    }

    #[test]
    fn decoded_tokens_are_canonical(token in "[A-Za-z0-9_%+.*> -]{0,16}") {
        if let Some(text) = decode_token(&token) {
            prop_assert_eq!(encode_token(&text), token);
        }
    }

    #[test]
    fn shell_literals_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut literal = String::new();
        push_printf_literal(&mut literal, &bytes);
        prop_assert!(!literal.contains('\''));
        prop_assert_eq!(decode_printf_literal(&literal), bytes);
    }

    #[test]
    fn rendered_text_is_shell_safe(text in any::<String>()) {
        check_shell_literal(&text);
    }

    #[test]
    fn literal_subject_patterns_match_themselves(tokens in prop::collection::vec("[^.*> \t\n\r]{1,8}", 1..6)) {
        let subject = tokens.join(".");
        if let Ok(pattern) = SubjectPattern::parse(&subject) {
            prop_assert!(pattern.matches(&subject));
            let literal = pattern.literal();
            prop_assert_eq!(literal.as_deref(), Some(subject.as_str()));
            let wild = SubjectPattern::parse(&format!("{}.>", tokens[0])).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(wild.matches(&subject), tokens.len() > 1);
        }
        check("subject_pattern", subject.as_bytes())?;
    }
}
