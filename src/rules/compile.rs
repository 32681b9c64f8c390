//! Loading and validating rule files into a [`RuleSet`]: every problem of every file is reported at once, each
//! with file, line and column; nothing half-valid is ever returned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde_saphyr::{Location, Spanned};

use crate::bpcs::{RawArg, SafetyClass};
use crate::event::Source;
use crate::inventory::Inventory;
use crate::plugins::Registry;

use super::matcher::{CompiledMatch, Condition, Index, IndexKey, SubjectPattern, source_bit};
use super::model::{
    ArgConfig, BlastRadiusConfig, BreakerConfig, ConditionConfig, ConditionOp, PolicyConfig, RateConfig, RuleConfig,
    RuleFileConfig, TargetConfig,
};
use super::template::{ProbeContext, Templates};
use super::{ArgSource, BlastRadius, Dedup, DedupMode, Origin, Policy, Rule, RuleDiagnostic, RuleSet, Target};
use crate::gate::breaker::BreakerSpec;
use crate::gate::ratelimit::RateSpec;
use std::num::{NonZeroU32, NonZeroUsize};

/// Largest rule file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most rules in one set.
pub const MAX_RULES: usize = 100_000;
/// Longest duration anywhere in a rule file.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// Longest regular expression, and the compiled-size cap that keeps a hostile one from eating memory.
const MAX_REGEX_BYTES: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

static RULE_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,63}$").unwrap_or_else(|_| unreachable!()));
static FIELD_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$").unwrap_or_else(|_| unreachable!()));

/// Reads every `*.yaml` / `*.yml` file of `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, Vec<RuleDiagnostic>> {
    let at = |path: &Path, message: String| RuleDiagnostic {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        rule: None,
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| vec![at(dir, format!("cannot read the rules folder: {e}"))])?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match read_bounded(&path) {
            Ok(text) => files.push((path, text)),
            Err(message) => errors.push(at(&path, message)),
        }
    }
    if errors.is_empty() { Ok(files) } else { Err(errors) }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is larger than the limit of {MAX_FILE_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

/// Parses and validates rule files (path, text) into one rule set.
pub fn parse_files(
    files: &[(PathBuf, String)],
    registry: &Registry,
    inventory: &Inventory,
) -> Result<RuleSet, Vec<RuleDiagnostic>> {
    let mut c = Compiler {
        registry,
        inventory,
        errors: Vec::new(),
        warnings: Vec::new(),
        templates: Templates::new(),
        file: Arc::from(""),
        rule: None,
    };
    let mut parsed = Vec::new();
    for (path, text) in files {
        c.file = Arc::from(path.display().to_string());
        match parse_file(text) {
            Ok(f) => parsed.push((c.file.clone(), f)),
            Err(d) => c.errors.extend(d.into_iter().map(|(line, column, message)| RuleDiagnostic {
                file: c.file.to_string(),
                line,
                column,
                rule: None,
                message: excerpt(&message, MESSAGE_CHARS),
            })),
        }
    }
    let mut policy = None;
    let mut policy_at: Option<(Arc<str>, Location)> = None;
    let mut raw_rules = Vec::new();
    for (file, f) in parsed {
        if let Some(p) = f.policy {
            c.file = file.clone();
            match &policy_at {
                Some((first_file, first)) => c.error(
                    p.referenced,
                    format!(
                        "a second `policy` section (the first is at {first_file}:{}:{}); only one is allowed",
                        first.line(),
                        first.column()
                    ),
                ),
                None => {
                    policy_at = Some((file.clone(), p.referenced));
                    policy = Some(p.value);
                }
            }
        }
        for r in f.rules {
            raw_rules.push((file.clone(), r));
        }
    }
    if raw_rules.len() > MAX_RULES {
        c.errors.push(RuleDiagnostic {
            file: String::new(),
            line: 0,
            column: 0,
            rule: None,
            message: format!("{} rules; the limit is {MAX_RULES}", raw_rules.len()),
        });
        return Err(c.errors);
    }
    let policy_file = policy_at.as_ref().map(|(f, _)| f.clone()).unwrap_or_else(|| Arc::from("<default policy>"));
    c.file = policy_file;
    let policy = c.policy(policy.unwrap_or_default());
    let mut rules = Vec::with_capacity(raw_rules.len());
    let mut names: HashMap<String, Origin> = HashMap::new();
    let mut index = Index::default();
    for (file, raw) in raw_rules {
        c.file = file.clone();
        let at = raw.referenced;
        let name = raw.value.name.value.clone();
        c.rule = Some(name.clone());
        let origin = Origin { file: file.clone(), line: at.line(), column: at.column() };
        let duplicate = match names.get(&name) {
            Some(first) => {
                let message =
                    format!("duplicate rule name (first defined at {}:{}:{})", first.file, first.line, first.column);
                c.error(raw.value.name.referenced, message);
                true
            }
            None => {
                names.insert(name, origin.clone());
                false
            }
        };
        let number = rules.len() as u32;
        // A duplicate is still compiled, so that its other mistakes are reported too.
        if let Some(rule) = c.rule(number, raw.value, origin, &policy)
            && !duplicate
        {
            if rule.enabled {
                index.insert(number, &IndexKey::choose(&rule.matcher));
            }
            rules.push(rule);
        }
        c.rule = None;
    }
    c.file = policy_at.as_ref().map(|(f, _)| f.clone()).unwrap_or_else(|| Arc::from("<default policy>"));
    let at = policy_at.as_ref().map(|(_, l)| *l).unwrap_or(Location::UNKNOWN);
    if let Some(allowed) = &policy.remediation_allowed_rules {
        for name in allowed {
            if !names.contains_key(name) {
                c.error(at, format!("policy.remediation.allowed_rules names `{name}`, which is not a rule"));
            }
        }
    }
    for rule in &rules {
        let allowed = policy.remediation_allowed_rules.as_ref().is_none_or(|a| a.contains(&*rule.name));
        if rule.plugin.class == SafetyClass::Remediation && !allowed {
            c.warnings.push(RuleDiagnostic {
                file: rule.origin.file.to_string(),
                line: rule.origin.line,
                column: rule.origin.column,
                rule: Some(rule.name.to_string()),
                message: format!(
                    "runs remediation plugin `{}` but is not in policy.remediation.allowed_rules: \
                     every decision will be suppressed (safety_class)",
                    rule.plugin.name
                ),
            });
        }
    }
    if !c.errors.is_empty() {
        c.errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(c.errors);
    }
    Ok(RuleSet {
        rules,
        policy,
        warnings: c.warnings,
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        index,
        templates: c.templates,
    })
}

/// Parses one file; on a shape error, also tries each rule on its own so that one file can report several.
fn parse_file(text: &str) -> Result<RuleFileConfig, Vec<(u64, u64, String)>> {
    let options = serde_saphyr::options! { strict_booleans: true, budget: yaml_budget() };
    match serde_saphyr::from_str_with_options::<RuleFileConfig>(text, options) {
        Ok(f) => Ok(f),
        Err(e) => {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
            let first = (line, column, first_line(&e.to_string()));
            let mut all = per_rule_errors(text);
            if !all.iter().any(|(l, c, _)| (*l, *c) == (line, column)) {
                all.push(first);
            }
            all.sort();
            all.dedup();
            Err(all)
        }
    }
}

/// The parser's message without its own `error: line N column M:` prefix (RUNE prints file:line:column itself,
/// and for a rule re-parsed alone the parser's numbers would be the slice's).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("invalid rule file");
    let rest = line.strip_prefix("error: ").unwrap_or(line);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((position, message)) if position.contains(" column ") => message.to_owned(),
        _ => rest.to_owned(),
    }
}

/// Best effort: the shape errors of each item of a block-style `rules:` list, parsed one by one.
fn per_rule_errors(text: &str) -> Vec<(u64, u64, String)> {
    #[derive(serde::Deserialize)]
    struct Outline {
        #[serde(default)]
        rules: Vec<Spanned<serde::de::IgnoredAny>>,
    }
    let options = serde_saphyr::options! { strict_booleans: true, budget: yaml_budget() };
    let Ok(outline) = serde_saphyr::from_str_with_options::<Outline>(text, options.clone()) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts: Vec<usize> = outline.rules.iter().map(|r| r.referenced.line() as usize).collect();
    let mut out = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        if start == 0 {
            continue;
        }
        let end = starts.get(i + 1).copied().unwrap_or(lines.len() + 1);
        if end <= start {
            continue;
        }
        let Some(chunk) = lines.get(start - 1..end - 1) else { continue };
        // Blank out everything before the item's `- ` so the slice parses as a one-item list at the same columns.
        let mut slice = String::from("rules:\n");
        for (n, line) in chunk.iter().enumerate() {
            if n == 0 {
                // Only a block-style item (`  - key: ...`) can be cut out and parsed alone.
                match line.find("- ").filter(|&dash| line[..dash].bytes().all(|b| b == b' ')) {
                    Some(dash) => {
                        slice.push_str(&" ".repeat(dash));
                        slice.push_str(&line[dash..]);
                    }
                    None => return Vec::new(),
                }
            } else {
                slice.push_str(line);
            }
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct One {
            #[allow(dead_code)]
            rules: Vec<RuleConfig>,
        }
        if let Err(e) = serde_saphyr::from_str_with_options::<One>(&slice, options.clone()) {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
            // The slice has one extra line (`rules:`) in front of the item's first line.
            out.push((line + start as u64 - 2, column, first_line(&e.to_string())));
        }
    }
    out
}

struct Compiler<'a> {
    registry: &'a Registry,
    inventory: &'a Inventory,
    errors: Vec<RuleDiagnostic>,
    warnings: Vec<RuleDiagnostic>,
    templates: Templates,
    file: Arc<str>,
    rule: Option<String>,
}

/// The most characters of rule-file text (a name, a template, a value) quoted in a diagnostic.
const EXCERPT_CHARS: usize = 80;
/// The most characters of one diagnostic's message, whatever it quotes.
const MESSAGE_CHARS: usize = 1024;

/// `text` cut to `max` characters (with `…` when cut): a diagnostic quotes file text, and a file may hold a
/// megabyte-long name or template.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

impl Compiler<'_> {
    fn diagnostic(&self, at: Location, message: String) -> RuleDiagnostic {
        RuleDiagnostic {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            rule: self.rule.as_deref().map(|name| excerpt(name, EXCERPT_CHARS)),
            message: excerpt(&message, MESSAGE_CHARS),
        }
    }

    fn error(&mut self, at: Location, message: String) {
        let d = self.diagnostic(at, message);
        self.errors.push(d);
    }

    fn warn(&mut self, at: Location, message: String) {
        let d = self.diagnostic(at, message);
        self.warnings.push(d);
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if d.is_zero() => {
                self.error(s.referenced, format!("{what} must be longer than zero"));
                None
            }
            Ok(d) if d > MAX_DURATION => {
                self.error(s.referenced, format!("{what} `{}` is longer than 30 days", s.value));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(s.referenced, format!("{what} `{}` is not a duration such as 30s, 10m, 1h: {e}", s.value));
                None
            }
        }
    }

    fn rate(&mut self, r: &RateConfig, what: &str) -> Option<RateSpec> {
        let per = self.duration(&r.per, &format!("{what}.per"));
        let Some(count) = NonZeroU32::new(r.count) else {
            self.error(r.per.referenced, format!("{what}.count must be at least 1"));
            return None;
        };
        let Some(burst) = NonZeroU32::new(r.burst.unwrap_or(r.count)) else {
            self.error(r.per.referenced, format!("{what}.burst must be at least 1"));
            return None;
        };
        match RateSpec::new(count, per?, burst) {
            Ok(spec) => Some(spec),
            Err(e) => {
                self.error(r.per.referenced, format!("{what}: {e}"));
                None
            }
        }
    }

    fn blast(&mut self, b: &BlastRadiusConfig, what: &str) -> Option<BlastRadius> {
        let window = self.duration(&b.window, &format!("{what}.window"));
        let Some(max_hosts) = NonZeroUsize::new(b.max_hosts) else {
            self.error(b.window.referenced, format!("{what}.max_hosts must be at least 1"));
            return None;
        };
        Some(BlastRadius { max_hosts, window: window? })
    }

    fn breaker(&mut self, b: &BreakerConfig, what: &str) -> Option<BreakerSpec> {
        let cool_down = self.duration(&b.cool_down, &format!("{what}.cool_down"));
        let (Some(failures), Some(of_last)) = (NonZeroU32::new(b.failures), NonZeroU32::new(b.of_last)) else {
            self.error(b.cool_down.referenced, format!("{what}: failures and of_last must be at least 1"));
            return None;
        };
        match BreakerSpec::new(failures, of_last, cool_down?) {
            Ok(spec) => Some(spec),
            Err(e) => {
                self.error(b.cool_down.referenced, format!("{what}: {e}"));
                None
            }
        }
    }

    fn policy(&mut self, p: PolicyConfig) -> Policy {
        let mut policy = Policy::default();
        if let Some(r) = &p.rate_limit.global
            && let Some(r) = self.rate(r, "policy.rate_limit.global")
        {
            policy.global = r;
        }
        if let Some(r) = &p.rate_limit.host
            && let Some(r) = self.rate(r, "policy.rate_limit.host")
        {
            policy.host = r;
        }
        if let Some(w) = &p.defaults.dedup_window
            && let Some(d) = self.duration(w, "policy.defaults.dedup_window")
        {
            policy.default_dedup_window = d;
        }
        if let Some(b) = &p.defaults.blast_radius
            && let Some(b) = self.blast(b, "policy.defaults.blast_radius")
        {
            policy.default_blast_radius = b;
        }
        if let Some(b) = &p.defaults.breaker
            && let Some(b) = self.breaker(b, "policy.defaults.breaker")
        {
            policy.default_breaker = b;
        }
        if let Some(r) = &p.chatops.rate_limit
            && let Some(r) = self.rate(r, "policy.chatops.rate_limit")
        {
            policy.chatops_rate = r;
        }
        policy.remediation_allowed_rules = p.remediation.allowed_rules.map(|v| v.into_iter().collect());
        if let Some(actions) = p.chatops.allowed_actions {
            for a in &actions {
                if self.registry.resolve(a).is_err() {
                    self.error(
                        Location::UNKNOWN,
                        format!("policy.chatops.allowed_actions names `{a}`, which is not a known plugin"),
                    );
                }
            }
            policy.chatops_allowed_actions = Some(actions.into_iter().collect::<BTreeSet<_>>());
        }
        policy
    }

    fn condition(&mut self, c: &ConditionConfig, at: Location, field: &str) -> Option<Condition> {
        Some(match c {
            ConditionConfig::Equals(v) => Condition::Equals(v.as_str().into()),
            ConditionConfig::Op(op) => match &**op {
                ConditionOp::Equals(v) => Condition::Equals(v.as_str().into()),
                ConditionOp::Regex(p) => {
                    if p.len() > MAX_REGEX_BYTES {
                        self.error(at, format!("{field}: regex is longer than {MAX_REGEX_BYTES} bytes"));
                        return None;
                    }
                    // Compiled alone first, so that a pattern such as `a)|(.*` cannot escape the anchoring group.
                    let alone = RegexBuilder::new(p).size_limit(REGEX_SIZE_LIMIT).build();
                    let anchored = alone
                        .and_then(|_| RegexBuilder::new(&format!("^(?:{p})$")).size_limit(REGEX_SIZE_LIMIT).build());
                    match anchored {
                        Ok(re) => Condition::Regex(re),
                        Err(e) => {
                            let e = e.to_string();
                            self.error(at, format!("{field}: invalid regex `{p}`: {}", e.lines().last().unwrap_or("")));
                            return None;
                        }
                    }
                }
                ConditionOp::OneOf(vs) => {
                    if vs.is_empty() {
                        self.error(at, format!("{field}: one_of needs at least one value"));
                        return None;
                    }
                    Condition::OneOf(vs.iter().map(|v| Box::from(v.as_str())).collect())
                }
                ConditionOp::Present(true) | ConditionOp::Absent(false) => Condition::Present,
                ConditionOp::Present(false) | ConditionOp::Absent(true) => Condition::Absent,
                ConditionOp::Not(inner) => Condition::Not(Box::new(self.condition(inner, at, field)?)),
            },
        })
    }

    fn conditions(
        &mut self,
        map: &BTreeMap<String, Spanned<ConditionConfig>>,
        what: &str,
    ) -> Option<Vec<(Box<str>, Condition)>> {
        let mut out = Vec::with_capacity(map.len());
        let mut ok = true;
        for (name, cond) in map {
            let field = format!("match.{what}.{name}");
            if !FIELD_NAME_RE.is_match(name) {
                self.error(cond.referenced, format!("{field}: `{name}` is not a valid {what} name"));
                ok = false;
                continue;
            }
            match self.condition(&cond.value, cond.referenced, &field) {
                Some(c) => out.push((Box::from(name.as_str()), c)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Adds a template; a syntax error, an unknown variable, filter or test is a load error.
    fn template(&mut self, name: String, source: &Spanned<String>, what: &str) -> bool {
        if let Err(e) = self.templates.add(name.clone(), source.value.clone()) {
            self.error(source.referenced, format!("{what}: template `{}`: {e}", excerpt(&source.value, EXCERPT_CHARS)));
            return false;
        }
        let (_, unknown) = self.templates.references(&name);
        if !unknown.is_empty() {
            self.error(
                source.referenced,
                format!(
                    "{what}: template `{}` uses unknown variable(s) {}; available: {}",
                    excerpt(&source.value, EXCERPT_CHARS),
                    unknown.join(", "),
                    super::template::VARIABLES.join(", ")
                ),
            );
            return false;
        }
        if let Err(e) = self.templates.probe(&name, ProbeContext) {
            self.error(source.referenced, format!("{what}: template `{}`: {e}", excerpt(&source.value, EXCERPT_CHARS)));
            return false;
        }
        true
    }

    fn uses_target(&self, name: &str) -> bool {
        self.templates.reads(name, "target")
    }

    /// Warns about label/annotation fields a template reads that the match does not guarantee.
    fn warn_unguaranteed(&mut self, name: &str, source: &Spanned<String>, m: &CompiledMatch, what: &str) {
        if source.value.contains("default(") || source.value.contains("is defined") {
            return;
        }
        let (fields, _) = self.templates.references(name);
        for (kind, field) in fields {
            let list = if kind == "labels" { &m.labels } else { &m.annotations };
            if !list.iter().any(|(n, c)| **n == *field && c.requires_presence()) {
                self.warn(
                    source.referenced,
                    format!(
                        "{what} reads {kind}.{field}, which the match does not require: events without it are \
                         suppressed (template_error)"
                    ),
                );
            }
        }
    }

    fn rule(&mut self, number: u32, r: RuleConfig, origin: Origin, policy: &Policy) -> Option<Rule> {
        let errors_before = self.errors.len();
        if r.name.value == crate::engine::CHATOPS_RULE {
            self.error(r.name.referenced, "the rule name `chatops` is reserved for chatops requests".into());
        }
        if !RULE_NAME_RE.is_match(&r.name.value) {
            self.error(
                r.name.referenced,
                format!(
                    "rule name `{}` must match {} (it becomes a subject token)",
                    r.name.value,
                    RULE_NAME_RE.as_str()
                ),
            );
        }
        // Match.
        let mut sources = 0u8;
        if let Some(list) = &r.match_.source {
            for s in list.to_vec() {
                if s == Source::Chatops {
                    self.error(
                        r.name.referenced,
                        "match.source: chatops requests name their action themselves and never match rules".into(),
                    );
                }
                sources |= source_bit(s);
            }
        }
        let subject = match &r.match_.subject {
            Some(s) => match SubjectPattern::parse(&s.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error(s.referenced, format!("match.subject: {e}"));
                    None
                }
            },
            None => None,
        };
        let labels = self.conditions(&r.match_.labels, "labels");
        let annotations = self.conditions(&r.match_.annotations, "annotations");
        let matcher = CompiledMatch {
            sources,
            subject,
            status: r.match_.status,
            labels: labels.unwrap_or_default(),
            annotations: annotations.unwrap_or_default(),
        };
        // Action.
        let plugin = match self.registry.resolve(&r.action.value) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(r.action.referenced, format!("action: {e}"));
                None
            }
        };
        if let Some(kind) = r.transport.filter(|k| *k != crate::inventory::TransportKind::Ssm) {
            self.error(
                r.action.referenced,
                format!("transport: only `ssm` can replace the hosts' own transport, not `{kind}`"),
            );
        }
        // Target.
        let unreachable_via = |hosts: &[&crate::inventory::Host]| -> Vec<String> {
            match r.transport {
                Some(kind) => hosts.iter().filter(|h| h.via(kind).is_none()).map(|h| h.name.clone()).collect(),
                None => Vec::new(),
            }
        };
        let target = match &r.target {
            TargetConfig::Host(h) => {
                match self.inventory.get(&h.value) {
                    None => self.error(h.referenced, format!("target.host: `{}` is not in the inventory", h.value)),
                    Some(host) => {
                        if !unreachable_via(&[host]).is_empty() {
                            self.error(h.referenced, format!("transport: host `{}` has no `ssm` section", h.value));
                        }
                    }
                }
                Target::Host(h.value.clone())
            }
            TargetConfig::Group(g) => {
                match self.inventory.select(&[], std::slice::from_ref(&g.value)) {
                    Err(_) => {
                        self.error(g.referenced, format!("target.group: `{}` is not a group of the inventory", g.value))
                    }
                    Ok(hosts) => {
                        let hosts: Vec<&crate::inventory::Host> = hosts.iter().map(|h| h.as_ref()).collect();
                        let missing = unreachable_via(&hosts);
                        if !missing.is_empty() {
                            let list = missing.join(", ");
                            self.error(g.referenced, format!("transport: hosts without an `ssm` section: {list}"));
                        }
                    }
                }
                Target::Group(g.value.clone())
            }
            TargetConfig::HostFrom(t) => {
                let name = format!("{number}/target");
                if self.template(name.clone(), t, "target.host_from") {
                    if self.uses_target(&name) {
                        self.error(t.referenced, "target.host_from: `target` is what this template computes".into());
                    } else {
                        self.warn_unguaranteed(&name, t, &matcher, "target.host_from");
                    }
                }
                Target::HostFrom { template: name, source: t.value.clone() }
            }
        };
        // Arguments.
        let mut args = Vec::with_capacity(r.args.len());
        let r_transport_is_ssm = r.transport == Some(crate::inventory::TransportKind::Ssm);
        for (arg, value) in &r.args {
            let text = match &value.value {
                ArgConfig::Boolean(b) => b.to_string(),
                ArgConfig::Integer(i) => i.to_string(),
                ArgConfig::Template(s) => s.clone(),
            };
            let spec = plugin.as_ref().map(|p| (p.args.get(arg), p));
            if let Some((None, p)) = spec {
                let declared = p.args.keys().cloned().collect::<Vec<_>>().join(", ");
                let declared = if declared.is_empty() { "none".to_owned() } else { declared };
                self.error(
                    value.referenced,
                    format!("args.{arg}: plugin `{}` has no argument `{arg}` (declared: {declared})", p.name),
                );
                continue;
            }
            if is_template(&text) {
                let name = format!("{number}/arg/{arg}");
                let spanned = Spanned { value: text.clone(), referenced: value.referenced, defined: value.defined };
                if self.template(name.clone(), &spanned, &format!("args.{arg}")) {
                    self.warn_unguaranteed(&name, &spanned, &matcher, &format!("args.{arg}"));
                }
                args.push((arg.clone(), ArgSource::Template { template: name, source: text }));
            } else if let Some(reference) = crate::secrets::SecretRef::parse(&text) {
                // A literal `ssm:/path` is a secret reference: checked for form and type now, resolved at run time.
                match reference {
                    Ok(r) => {
                        if r_transport_is_ssm {
                            self.error(
                                value.referenced,
                                format!("args.{arg}: secrets are not sent through SSM (`transport: ssm`): command parameters stay in SSM's history"),
                            );
                        }
                        if let Some((Some(s), _)) = spec
                            && s.arg_type != crate::bpcs::ArgType::String
                        {
                            self.error(
                                value.referenced,
                                format!("args.{arg}: a secret reference (ssm:) can only fill a string argument"),
                            );
                        }
                        args.push((arg.clone(), ArgSource::Secret(r)));
                    }
                    Err(e) => self.error(value.referenced, format!("args.{arg}: {e}")),
                }
            } else {
                if let Some((Some(s), _)) = spec
                    && let Err(e) = s.check(arg, &RawArg::Text(text.clone()))
                {
                    self.error(value.referenced, format!("args.{arg}: {e}"));
                }
                args.push((arg.clone(), ArgSource::Literal(text)));
            }
        }
        if let Some(p) = &plugin {
            for (name, s) in &p.args {
                if s.required && s.default.is_none() && !r.args.contains_key(name) {
                    self.error(r.action.referenced, format!("args: plugin `{}` requires argument `{name}`", p.name));
                }
            }
        }
        // Gates.
        let dedup_config = r.dedup.as_ref();
        let window = match dedup_config.and_then(|d| d.window.as_ref()) {
            Some(w) => self.duration(w, "dedup.window").unwrap_or(policy.default_dedup_window),
            None => policy.default_dedup_window,
        };
        let (key_template, key) = match dedup_config.and_then(|d| d.key.as_ref()) {
            Some(k) => {
                let name = format!("{number}/dedup");
                if self.template(name.clone(), k, "dedup.key") {
                    self.warn_unguaranteed(&name, k, &matcher, "dedup.key");
                }
                (Some(name), k.value.clone())
            }
            None => (None, "{{ fingerprint }}/{{ status }}/{{ target }}".to_owned()),
        };
        let mode = dedup_config.map(|d| d.mode).unwrap_or_default();
        let dedup = Dedup {
            mode,
            window,
            key_template,
            key,
            // With dedup off there is no key to clear: a resolved event is then no business of a firing rule.
            clear_on_resolved: mode != DedupMode::Off && dedup_config.is_none_or(|d| d.clear_on_resolved),
        };
        let rate = r.rate_limit.clone().unwrap_or_default();
        let rate_rule = rate.rule.as_ref().and_then(|x| self.rate(x, "rate_limit.rule"));
        let rate_host = rate.host.as_ref().and_then(|x| self.rate(x, "rate_limit.host"));
        let safety = r.safety.clone().unwrap_or_default();
        let remediation = plugin.as_ref().is_some_and(|p| p.class == SafetyClass::Remediation);
        let blast_radius = match &safety.blast_radius {
            Some(b) => {
                let b = self.blast(b, "safety.blast_radius");
                if !remediation && b.is_some() {
                    self.warn(
                        r.action.referenced,
                        "safety.blast_radius is ignored: the plugin is a diagnostic (only remediations are storm-guarded)"
                            .into(),
                    );
                }
                b.filter(|_| remediation)
            }
            None => remediation.then_some(policy.default_blast_radius),
        };
        let breaker = match &safety.breaker {
            Some(b) => self.breaker(b, "safety.breaker").unwrap_or(policy.default_breaker),
            None => policy.default_breaker,
        };
        if self.errors.len() > errors_before {
            return None;
        }
        let plugin = plugin?;
        Some(Rule {
            name: Arc::from(r.name.value.as_str()),
            description: r.description,
            origin,
            enabled: r.enabled,
            matcher,
            target,
            action: r.action.value.clone(),
            plugin,
            args,
            dedup,
            rate_rule,
            rate_host,
            blast_radius,
            breaker,
            stop: r.stop,
            transport: r.transport,
        })
    }
}

/// A rule argument is a template when it contains template syntax; otherwise it is a literal.
fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The YAML parser's budget, tighter than its default in one place: anchors may retain at most 50,000 events
/// (default 1,000,000, about 150 MB: a 1.4 KB alias bomb held that much before the parser refused it). No
/// hand-written configuration file comes near it.
fn yaml_budget() -> Option<serde_saphyr::Budget> {
    serde_saphyr::budget! { max_recorded_anchor_events: 50_000 }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const INVENTORY: &str = "
hosts:
  web-1: { transport: local, groups: [web] }
  web-2: { transport: local, groups: [web], ssm: { instance_id: i-0123456789abcdef0 } }
  db-1: { transport: local, groups: [db] }
";

    pub(crate) fn registry() -> Registry {
        Registry::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins")])
    }

    pub(crate) fn inventory() -> Inventory {
        Inventory::parse(INVENTORY, "test", None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    pub(crate) fn compile(files: &[(&str, &str)]) -> Result<RuleSet, Vec<RuleDiagnostic>> {
        let files: Vec<(PathBuf, String)> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        parse_files(&files, &registry(), &inventory())
    }

    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        match compile(files) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn literal_ssm_arguments_are_checked_as_references() {
        let rule = |action: &str, args: &str| {
            format!(
                "rules:\n  - name: r\n    match: {{ labels: {{ a: b }} }}\n    target: {{ host: web-1 }}\n    action: {action}\n    args: {args}\n"
            )
        };
        let ok = compile(&[("t.yaml", &rule("noop", "{ message: \"ssm:/a/b\" }"))]).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(&ok.rules[0].args[0].1, ArgSource::Secret(r) if r.path() == "/a/b"));
        let e = errors(&[("t.yaml", &rule("noop", "{ message: \"ssm:a b\" }"))]);
        assert!(e[0].contains("not a Parameter Store reference"), "{e:?}");
        let e = errors(&[("t.yaml", &rule("gather-logs", "{ lines: \"ssm:/n\" }"))]);
        assert!(e.iter().any(|m| m.contains("can only fill a string argument")), "{e:?}");
    }

    #[test]
    fn a_rule_transport_needs_every_static_target_to_have_it() {
        let rule = |target: &str| {
            format!(
                "rules:\n  - name: r\n    match: {{ labels: {{ a: b }} }}\n    target: {target}\n    action: noop\n    transport: ssm\n"
            )
        };
        let ok = compile(&[("t.yaml", &rule("{ host: web-2 }"))]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.rules[0].transport, Some(crate::inventory::TransportKind::Ssm));
        let e = errors(&[("t.yaml", &rule("{ host: web-1 }"))]);
        assert!(e[0].contains("host `web-1` has no `ssm` section"), "{e:?}");
        let e = errors(&[("t.yaml", &rule("{ group: web }"))]);
        assert!(e[0].contains("without an `ssm` section: web-1"), "{e:?}");
        let local = rule("{ host: web-2 }").replace("transport: ssm", "transport: local");
        let e = errors(&[("t.yaml", &local)]);
        assert!(e.iter().any(|m| m.contains("only `ssm` can replace")), "{e:?}");
        let secret = rule("{ host: web-2 }").replace("action: noop", "action: noop\n    args: { message: \"ssm:/a\" }");
        let e = errors(&[("t.yaml", &secret)]);
        assert!(e.iter().any(|m| m.contains("secrets are not sent through SSM")), "{e:?}");
    }

    #[test]
    fn shipped_rules_load_without_errors() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
        let files = load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
        let set = parse_files(&files, &registry(), &inventory()).unwrap_or_else(|e| panic!("{e:#?}"));
        let names: Vec<&str> = set.rules.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["critical-gather-logs", "docker-down", "nomad-client-down"]);
        assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
        assert_eq!(set.unindexed(), 0);
        assert!(set.policy.remediation_allowed_rules.as_ref().is_some_and(|a| a.contains("docker-down")));
    }

    #[test]
    fn every_error_of_every_file_is_reported_with_its_position() {
        let a = "\
rules:
  - name: bad-plugin
    match: { labels: { alertname: A } }
    target: { host: web-1 }
    action: no-such-plugin
  - name: bad-regex
    match:
      labels:
        alertname: { regex: \"web-(\" }
    target: { host: web-1 }
    action: noop
  - name: bad-arg
    match: { labels: { alertname: C } }
    target: { host: nowhere }
    action: noop
    args: { colour: red }
";
        let b = "\
rules:
  - name: bad-template
    match: { labels: { alertname: D } }
    target: { host_from: \"{{ lables.instance }}\" }
    action: noop
    dedup: { window: 10 minutes please }
  - name: bad-filter
    match: { labels: { alertname: E } }
    target: { host_from: \"{{ labels.instance | no_such_filter }}\" }
    action: restart-docker
    args: { service: \"sshd\" }
  - name: bad-regex
    match: { labels: { alertname: F } }
    target: { group: nogroup }
    action: noop@9.9.9
";
        let errs = errors(&[("a.yaml", a), ("b.yaml", b)]);
        let expect = [
            "a.yaml:5:13: rule `bad-plugin`: action: unknown action `no-such-plugin`",
            "a.yaml:9:20: rule `bad-regex`: match.labels.alertname: invalid regex `web-(`",
            "a.yaml:14:21: rule `bad-arg`: target.host: `nowhere` is not in the inventory",
            "a.yaml:16:21: rule `bad-arg`: args.colour: plugin `noop` has no argument `colour`",
            "b.yaml:4:26: rule `bad-template`: target.host_from: template `{{ lables.instance }}` uses unknown variable(s) lables",
            "b.yaml:6:22: rule `bad-template`: dedup.window `10 minutes please` is not a duration",
            "b.yaml:9:26: rule `bad-filter`: target.host_from: template `{{ labels.instance | no_such_filter }}`: unknown filter `no_such_filter`",
            "b.yaml:11:22: rule `bad-filter`: args.service: argument `service`: value does not match the declared pattern",
            "b.yaml:12:11: rule `bad-regex`: duplicate rule name (first defined at a.yaml:6:5)",
            "b.yaml:14:22: rule `bad-regex`: target.group: `nogroup` is not a group of the inventory",
            "b.yaml:15:13: rule `bad-regex`: action: action `noop` has no version 9.9.9",
        ];
        for want in expect {
            assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in\n{errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn shape_errors_in_several_rules_of_one_file_are_all_reported() {
        let text = "\
rules:
  - name: one
    match: { labels: { alertname: A } }
    target: { host: web-1 }
    action: noop
    colour: red
  - name: two
    match: { labels: { alertname: { regx: x } } }
    target: { host: web-1 }
    action: noop
  - name: three
    match: { status: sometimes }
    target: { host: web-1 }
    action: noop
";
        let errs = errors(&[("s.yaml", text)]);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        for (e, line) in errs.iter().zip([6, 8, 12]) {
            assert!(e.starts_with(&format!("s.yaml:{line}:")), "{e} should be on line {line}");
        }
    }

    #[test]
    fn policy_checks() {
        let p1 = "policy: { remediation: { allowed_rules: [ghost] } }\n";
        let p2 = "policy: { rate_limit: { global: { count: 0, per: 1m } } }\n";
        let errs = errors(&[("p1.yaml", p1), ("p2.yaml", p2)]);
        assert!(errs.iter().any(|e| e.contains("a second `policy` section")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("`ghost`, which is not a rule")), "{errs:#?}");
        let errs = errors(&[("p.yaml", "policy: { chatops: { allowed_actions: [nope] } }\n")]);
        assert!(errs[0].contains("`nope`, which is not a known plugin"), "{errs:#?}");
    }

    #[test]
    fn warnings_do_not_stop_loading() {
        let text = "\
policy: { remediation: { allowed_rules: [] } }
rules:
  - name: w
    match: { labels: { alertname: A } }
    target: { host_from: \"{{ labels.instance }}\" }
    action: restart-docker
";
        let set = compile(&[("w.yaml", text)]).unwrap_or_else(|e| panic!("{e:#?}"));
        let w: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        assert!(w.iter().any(|w| w.contains("reads labels.instance, which the match does not require")), "{w:#?}");
        assert!(w.iter().any(|w| w.contains("not in policy.remediation.allowed_rules")), "{w:#?}");
        let rule = &set.rules[0];
        assert_eq!(rule.blast_radius, Some(set.policy.default_blast_radius));
        assert_eq!(rule.dedup.window, Duration::from_secs(600));
    }

    /// Regressions (review): an escaping regex, the reserved name, `target` in host_from, MiniJinja's globals.
    #[test]
    fn regex_anchoring_reserved_names_and_template_variables() {
        let rule = |name: &str, extra: &str| {
            format!(
                "rules:\n  - name: {name}\n    match: {{ labels: {{ a: {{ regex: \"web-1)|(.*\" }} }} }}\n    target: {{ host: web-1 }}\n    action: noop\n{extra}"
            )
        };
        let errs = errors(&[("r.yaml", &rule("chatops", ""))]);
        assert!(errs.iter().any(|e| e.contains("invalid regex `web-1)|(.*`")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("`chatops` is reserved")), "{errs:#?}");
        let errs = errors(&[(
            "t.yaml",
            "rules: [{ name: t, match: { labels: { a: x } }, target: { host_from: \"{{ target }}\" }, action: noop }]\n",
        )]);
        assert!(errs[0].contains("`target` is what this template computes"), "{errs:#?}");
        let ok = "rules: [{ name: t, match: { labels: { a: x } }, target: { host: web-1 }, action: noop, \
                  args: { message: \"{{ dict(n=3).n }}{% if labels.a is defined %}-{{ labels.a }}{% endif %}\" } }]\n";
        assert!(compile(&[("ok.yaml", ok)]).is_ok());
        // Loops, `set` and repetition are not part of the rule template language (no memory bound).
        let looped = ok.replace("{{ dict(n=3).n }}", "{% for i in range(3) %}{{ i }}{% endfor %}");
        let errs = errors(&[("loop.yaml", &looped)]);
        assert!(errs.iter().any(|e| e.contains("`{% for %}` blocks are not allowed")), "{errs:#?}");
    }

    #[test]
    fn hostile_rule_files_give_errors_not_panics() {
        let long_regex = format!(
            "rules: [{{ name: r, match: {{ labels: {{ a: {{ regex: \"{}\" }} }} }}, target: {{ host: web-1 }}, action: noop }}]\n",
            "a".repeat(2000)
        );
        let huge_rep = "rules: [{ name: r, match: { labels: { a: { regex: \"(a{1000}){1000}\" } } }, target: { host: web-1 }, action: noop }]\n";
        let deep = format!("rules: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            laughs.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        laughs.push_str("rules: [*a11]\n");
        for text in [long_regex.as_str(), huge_rep, deep.as_str(), laughs.as_str(), "rules: 3\n", ": : :\n", "\0"] {
            assert!(compile(&[("h.yaml", text)]).is_err(), "{text:.60}");
        }
    }

    #[test]
    fn diagnostics_quote_long_names_and_templates_in_part() {
        // Regression (hostile-input corpus, tests/corpus/rules/bad-long-name.yaml and the generated template of
        // 1 MiB): a 100,000-character name or template came back whole, twice, in a diagnostic.
        let long_name = format!("rules:\n  - name: {}\n    action: noop\n", "a".repeat(100_000));
        let long_template = format!(
            "rules: [{{ name: r, match: {{ labels: {{ a: b }} }}, target: {{ host_from: \"{}\" }}, action: noop }}]\n",
            "{{ labels.a }}".repeat(10_000)
        );
        for text in [long_name, long_template] {
            let errors = compile(&[("h.yaml", &text)]).err().unwrap_or_default();
            assert!(!errors.is_empty());
            for e in errors {
                assert!(e.to_string().len() < 2048, "a diagnostic of {} bytes", e.to_string().len());
            }
        }
    }
}
