//! Matching: compiled conditions, NATS-style subject patterns, and the index that picks candidate rules for an
//! event so that the cost grows with the candidates, not with every regex of every rule.

use std::collections::HashMap;

use regex::Regex;

use crate::event::{AlertStatus, Event, Source};

use super::model::StatusMatch;

/// A compiled label or annotation condition.
#[derive(Debug, Clone)]
pub enum Condition {
    Equals(Box<str>),
    /// Anchored: must match the whole value.
    Regex(Regex),
    OneOf(Box<[Box<str>]>),
    Present,
    Absent,
    Not(Box<Condition>),
}

impl Condition {
    /// Does the condition hold for this value (`None` = the label is absent)?
    pub fn holds(&self, value: Option<&str>) -> bool {
        match self {
            Condition::Equals(want) => value == Some(&**want),
            Condition::Regex(re) => value.is_some_and(|v| re.is_match(v)),
            Condition::OneOf(set) => value.is_some_and(|v| set.iter().any(|w| **w == *v)),
            Condition::Present => value.is_some(),
            Condition::Absent => value.is_none(),
            Condition::Not(inner) => !inner.holds(value),
        }
    }

    /// True when the condition can only hold if the label is present (used to tell which template
    /// fields a match guarantees).
    pub fn requires_presence(&self) -> bool {
        match self {
            Condition::Equals(_) | Condition::Regex(_) | Condition::OneOf(_) | Condition::Present => true,
            Condition::Absent => false,
            Condition::Not(inner) => matches!(**inner, Condition::Absent),
        }
    }
}

/// A NATS subject pattern: `*` matches one token, a final `>` matches one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern {
    tokens: Box<[Box<str>]>,
}

impl SubjectPattern {
    pub fn parse(pattern: &str) -> Result<SubjectPattern, String> {
        if pattern.is_empty() || pattern.len() > 256 {
            return Err("a subject pattern is 1 to 256 bytes".into());
        }
        let tokens: Vec<&str> = pattern.split('.').collect();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(format!("empty token in subject pattern `{pattern}`"));
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("subject pattern `{pattern}` contains whitespace or a control character"));
            }
            if *t == ">" && i + 1 != tokens.len() {
                return Err(format!("`>` must be the last token of subject pattern `{pattern}`"));
            }
            if t.len() > 1 && (t.contains('*') || t.contains('>')) {
                return Err(format!("`*` and `>` must be whole tokens in subject pattern `{pattern}`"));
            }
        }
        Ok(SubjectPattern { tokens: tokens.into_iter().map(Box::from).collect() })
    }

    /// The pattern when it has no wildcard (it can then be indexed).
    pub fn literal(&self) -> Option<String> {
        if self.tokens.iter().any(|t| &**t == "*" || &**t == ">") { None } else { Some(self.tokens.join(".")) }
    }

    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for (i, t) in self.tokens.iter().enumerate() {
            match &**t {
                ">" => return i < self.tokens.len() && parts.next().is_some_and(|p| !p.is_empty()),
                "*" => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                lit => {
                    if parts.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Everything a rule requires of an event.
#[derive(Debug, Clone)]
pub struct CompiledMatch {
    /// Bit per [`Source`]; 0 = any alert source.
    pub sources: u8,
    pub subject: Option<SubjectPattern>,
    pub status: StatusMatch,
    pub labels: Vec<(Box<str>, Condition)>,
    pub annotations: Vec<(Box<str>, Condition)>,
}

pub fn source_bit(s: Source) -> u8 {
    1 << (s as u8)
}

/// How a rule relates to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The rule matches: a decision to act follows.
    Act,
    /// A resolved event that matches a firing rule in everything but status: it clears that rule's dedup key.
    Clear,
}

impl CompiledMatch {
    /// Checks everything but the status; then tells whether the status makes it an `Act`, a `Clear`, or nothing.
    pub fn evaluate(&self, event: &Event, clears_on_resolved: bool) -> Option<MatchKind> {
        if event.source == Source::Chatops {
            return None;
        }
        if self.sources != 0 && self.sources & source_bit(event.source) == 0 {
            return None;
        }
        let kind = match (self.status, event.status) {
            (StatusMatch::Any, _) | (StatusMatch::Firing, AlertStatus::Firing) => MatchKind::Act,
            (StatusMatch::Resolved, AlertStatus::Resolved) => MatchKind::Act,
            (StatusMatch::Firing, AlertStatus::Resolved) if clears_on_resolved => MatchKind::Clear,
            _ => return None,
        };
        if let Some(p) = &self.subject
            && !p.matches(&event.subject)
        {
            return None;
        }
        for (name, cond) in &self.labels {
            if !cond.holds(event.labels.get(&**name).map(String::as_str)) {
                return None;
            }
        }
        for (name, cond) in &self.annotations {
            if !cond.holds(event.annotations.get(&**name).map(String::as_str)) {
                return None;
            }
        }
        Some(kind)
    }
}

/// Where a rule is filed in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexKey {
    /// Under each of these values of a label (an `equals` or `one_of` condition).
    Label(Box<str>, Vec<Box<str>>),
    /// Under a literal subject.
    Subject(String),
    /// Evaluated for every event.
    Always,
}

impl IndexKey {
    /// Picks the most selective key: `alertname` first, then any other equality label, then a literal subject.
    pub fn choose(m: &CompiledMatch) -> IndexKey {
        let equality = |(name, cond): &(Box<str>, Condition)| -> Option<IndexKey> {
            match cond {
                Condition::Equals(v) => Some(IndexKey::Label(name.clone(), vec![v.clone()])),
                Condition::OneOf(vs) => Some(IndexKey::Label(name.clone(), vs.to_vec())),
                _ => None,
            }
        };
        if let Some(k) = m.labels.iter().filter(|(n, _)| &**n == "alertname").find_map(equality) {
            return k;
        }
        if let Some(k) = m.labels.iter().find_map(equality) {
            return k;
        }
        if let Some(lit) = m.subject.as_ref().and_then(SubjectPattern::literal) {
            return IndexKey::Subject(lit);
        }
        IndexKey::Always
    }
}

/// Rule numbers filed under each value of one label.
type ByValue = HashMap<Box<str>, Vec<u32>>;

/// Candidate rules per event: a few hash lookups plus the rules that cannot be indexed.
#[derive(Debug, Default)]
pub struct Index {
    /// One entry per label name used as an index key (few: `alertname`, `severity`, ...).
    by_label: Vec<(Box<str>, ByValue)>,
    by_subject: HashMap<Box<str>, Vec<u32>>,
    always: Vec<u32>,
}

impl Index {
    pub fn insert(&mut self, rule: u32, key: &IndexKey) {
        match key {
            IndexKey::Label(name, values) => {
                let pos = match self.by_label.iter().position(|(n, _)| n == name) {
                    Some(p) => p,
                    None => {
                        self.by_label.push((name.clone(), HashMap::new()));
                        self.by_label.len() - 1
                    }
                };
                if let Some((_, map)) = self.by_label.get_mut(pos) {
                    for v in values {
                        let ids = map.entry(v.clone()).or_default();
                        if ids.last() != Some(&rule) {
                            ids.push(rule);
                        }
                    }
                }
            }
            IndexKey::Subject(s) => self.by_subject.entry(s.as_str().into()).or_default().push(rule),
            IndexKey::Always => self.always.push(rule),
        }
    }

    /// Fills `out` with the candidate rule numbers for `event`, in file order, without duplicates.
    pub fn candidates(&self, event: &Event, out: &mut Vec<u32>) {
        out.clear();
        for (name, map) in &self.by_label {
            if let Some(value) = event.labels.get(&**name)
                && let Some(ids) = map.get(value.as_str())
            {
                out.extend_from_slice(ids);
            }
        }
        if let Some(ids) = self.by_subject.get(event.subject.as_str()) {
            out.extend_from_slice(ids);
        }
        out.extend_from_slice(&self.always);
        out.sort_unstable();
        out.dedup();
    }

    /// Rules evaluated for every event (shown by `rules list`; many of them make matching slow).
    pub fn unindexed(&self) -> usize {
        self.always.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> Condition {
        Condition::Regex(Regex::new(&format!("^(?:{p})$")).unwrap_or_else(|e| panic!("{p}: {e}")))
    }

    #[test]
    fn conditions_table() {
        let one_of = Condition::OneOf(vec!["a".into(), "b".into()].into_boxed_slice());
        let cases: Vec<(Condition, Option<&str>, bool)> = vec![
            (Condition::Equals("x".into()), Some("x"), true),
            (Condition::Equals("x".into()), Some("xy"), false),
            (Condition::Equals("x".into()), None, false),
            (re("web-[0-9]+"), Some("web-12"), true),
            (re("web-[0-9]+"), Some("web-12x"), false),
            (re("web-[0-9]+"), Some("xweb-1"), false),
            (re("web-[0-9]+"), None, false),
            (one_of.clone(), Some("b"), true),
            (one_of.clone(), Some("c"), false),
            (one_of, None, false),
            (Condition::Present, Some(""), true),
            (Condition::Present, None, false),
            (Condition::Absent, None, true),
            (Condition::Absent, Some("x"), false),
            (Condition::Not(Box::new(Condition::Equals("dev".into()))), Some("prod"), true),
            (Condition::Not(Box::new(Condition::Equals("dev".into()))), Some("dev"), false),
            (Condition::Not(Box::new(Condition::Equals("dev".into()))), None, true),
            (Condition::Not(Box::new(re("d.*"))), Some("prod"), true),
            (Condition::Not(Box::new(Condition::Absent)), Some("x"), true),
        ];
        for (cond, value, want) in cases {
            assert_eq!(cond.holds(value), want, "{cond:?} on {value:?}");
        }
    }

    #[test]
    fn subject_patterns_table() {
        let cases = [
            ("alerts.prod", "alerts.prod", true),
            ("alerts.prod", "alerts.prod.x", false),
            ("alerts.*", "alerts.prod", true),
            ("alerts.*", "alerts", false),
            ("alerts.*", "alerts.prod.x", false),
            ("alerts.>", "alerts.prod", true),
            ("alerts.>", "alerts.prod.x.y", true),
            ("alerts.>", "alerts", false),
            ("*.prod.>", "alerts.prod.web", true),
            ("*.prod.>", "alerts.dev.web", false),
            (">", "anything.at.all", true),
            ("a.*.c", "a..c", false),
        ];
        for (pattern, subject, want) in cases {
            let p = SubjectPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(p.matches(subject), want, "{pattern} vs {subject}");
        }
        for bad in ["", "a..b", "a.>.b", "a.b*", "a b", ".a", "a."] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(SubjectPattern::parse("a.b").ok().and_then(|p| p.literal()), Some("a.b".into()));
        assert_eq!(SubjectPattern::parse("a.*").ok().and_then(|p| p.literal()), None);
    }
}
