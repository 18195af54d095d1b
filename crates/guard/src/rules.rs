//! The rule file: a readable TOML list of rules, parsed with errors that carry a line and
//! column, merged over the built-in set by rule id.
//!
//! ```toml
//! [[rule]]
//! id = "miner-process"
//! severity = "high"              # low | medium | high | critical
//! description = "A known crypto-miner process runs"
//! enabled = true                 # optional; `false` switches off a rule of the same id
//! when = { process_name_in = ["xmrig", "minerd"] }
//! ```
//!
//! All conditions in one `when` must hold (all-of). Process conditions (`process_name_in`,
//! `process_cpu_above`, `shell_stdio_socket`, `shell_outbound_connection`) must hold for the
//! *same* process; connection conditions (`connect_port_in`, `remote_addr_in`) for the same
//! outbound connection. `window_secs` (default 60) is the window of `distinct_remote_*_above`
//! `process_growth_above` and `failed_connects_above`; `for_secs` (default 0) asks the whole rule to hold in every sample
//! for that long before it fires.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The built-in rule file, embedded in the binary.
pub const BUILTIN_RULES: &str = include_str!("../rules/builtin.toml");

/// Longest `window_secs` or `for_secs` a rule may ask for: it bounds the per-VM history.
pub const MAX_WINDOW_SECS: u64 = 3600;

/// How bad a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look (statistical anomalies alone).
    #[default]
    Low,
    /// Suspicious.
    Medium,
    /// Very likely malicious.
    High,
    /// Malicious, act now.
    Critical,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique id, `[a-z0-9_-]+`; a later file's rule with the same id replaces this one.
    pub id: String,
    /// Severity of its findings.
    pub severity: Severity,
    /// What it means, for people.
    pub description: String,
    /// A disabled rule never fires (used to switch off a built-in rule).
    pub enabled: bool,
    /// Its conditions, all of which must hold.
    pub when: When,
}

/// The conditions of a rule; every present one must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// A process whose `comm` or executable file name is one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name_in: Option<Vec<String>>,
    /// A process using more than this share of one CPU (1.0 = one full CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_cpu_above: Option<f64>,
    /// A shell whose stdin or stdout is a socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_stdio_socket: Option<bool>,
    /// A shell whose stdin or stdout is an outbound connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_outbound_connection: Option<bool>,
    /// An outbound connection to one of these remote ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_port_in: Option<Vec<u16>>,
    /// An outbound connection to one of these remote addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr_in: Option<Vec<String>>,
    /// More than this many distinct remote ports in outbound connections within `window_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_remote_ports_above: Option<usize>,
    /// More than this many distinct remote hosts in outbound connections within `window_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_remote_hosts_above: Option<usize>,
    /// A listener (not on loopback) on a port not in this list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_port_not_in: Option<Vec<u16>>,
    /// More than this many processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_count_above: Option<usize>,
    /// The process count grew by more than this within `window_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_growth_above: Option<usize>,
    /// More than this many outbound TCP connection attempts failed (refused or reset) within
    /// `window_secs`: a connect scan of closed ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_connects_above: Option<u64>,
    /// The guest sends more than this many bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bytes_per_sec_above: Option<f64>,
    /// Window of the windowed conditions, seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// The rule must hold continuously this long before it fires, seconds (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
}

impl When {
    /// Window of the windowed conditions in milliseconds.
    #[must_use]
    pub fn window_ms(&self) -> u64 {
        self.window_secs.unwrap_or(60) * 1000
    }

    /// How long the rule must hold before it fires, milliseconds.
    #[must_use]
    pub fn for_ms(&self) -> u64 {
        self.for_secs.unwrap_or(0) * 1000
    }

    fn has_condition(&self) -> bool {
        self.process_name_in.is_some()
            || self.process_cpu_above.is_some()
            || self.shell_stdio_socket == Some(true)
            || self.shell_outbound_connection == Some(true)
            || self.connect_port_in.is_some()
            || self.remote_addr_in.is_some()
            || self.distinct_remote_ports_above.is_some()
            || self.distinct_remote_hosts_above.is_some()
            || self.listener_port_not_in.is_some()
            || self.process_count_above.is_some()
            || self.process_growth_above.is_some()
            || self.failed_connects_above.is_some()
            || self.egress_bytes_per_sec_above.is_some()
    }

    /// The first invalid field and why, if any.
    fn invalid(&self) -> Option<(&'static str, &'static str)> {
        let positive = |v: Option<f64>| v.is_some_and(|x| !(x.is_finite() && x > 0.0));
        if positive(self.process_cpu_above) {
            return Some(("process_cpu_above", "must be a positive number"));
        }
        if positive(self.egress_bytes_per_sec_above) {
            return Some(("egress_bytes_per_sec_above", "must be a positive number"));
        }
        if self.window_secs == Some(0) || self.window_secs > Some(MAX_WINDOW_SECS) {
            return Some(("window_secs", "must be between 1 and 3600"));
        }
        if self.for_secs > Some(MAX_WINDOW_SECS) {
            return Some(("for_secs", "must be at most 3600"));
        }
        None
    }
}

/// A rule file that could not be used: where and why. Line and column are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct RuleError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

impl RuleError {
    pub(crate) fn at(text: &str, offset: usize, message: String) -> Self {
        let (line, column) = line_column(text, offset);
        RuleError {
            line,
            column,
            message,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

/// The key whose value contains the byte offset `start` (`key = value` or
/// `key = [.., value]`), for messages that do not name it: the nearest `key =` before it.
fn key_before(text: &str, start: usize) -> Option<&str> {
    let mut before = text.get(..start)?;
    while let Some(eq) = before.rfind('=') {
        let head = before[..eq].trim_end();
        let key_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let key = &head[key_start..];
        if !key.is_empty() {
            return Some(key);
        }
        before = &before[..eq];
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    severity: Severity,
    #[serde(default)]
    description: String,
    #[serde(default = "enabled_default")]
    enabled: bool,
    when: Spanned<When>,
}

fn enabled_default() -> bool {
    true
}

/// A set of rules, unique by id, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Parses and validates a rule file.
    pub fn parse(text: &str) -> Result<Rules, RuleError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for r in raw.rule {
            let id_span = r.id.span();
            let id = r.id.into_inner();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                return Err(RuleError::at(
                    text,
                    id_span.start,
                    format!("`id`: {id:?} must be non-empty and use only a-z, 0-9, '-' and '_'"),
                ));
            }
            if rules.iter().any(|x| x.id == id) {
                return Err(RuleError::at(
                    text,
                    id_span.start,
                    format!("`id`: rule {id:?} is defined twice"),
                ));
            }
            let when_span: Range<usize> = r.when.span();
            let when = r.when.into_inner();
            if let Some((field, why)) = when.invalid() {
                let offset = find_key(text, when_span.clone(), field).unwrap_or(when_span.start);
                return Err(RuleError::at(
                    text,
                    offset,
                    format!("`{field}` of rule {id:?} {why}"),
                ));
            }
            if !when.has_condition() {
                return Err(RuleError::at(
                    text,
                    when_span.start,
                    format!("`when` of rule {id:?} has no condition"),
                ));
            }
            rules.push(Rule {
                id,
                severity: r.severity,
                description: r.description,
                enabled: r.enabled,
                when,
            });
        }
        Ok(Rules { rules })
    }

    /// The built-in rules ([`BUILTIN_RULES`]).
    #[must_use]
    pub fn builtin() -> Rules {
        match Rules::parse(BUILTIN_RULES) {
            Ok(rules) => rules,
            // The file is part of the build and a test parses it.
            Err(e) => panic!("built-in rule file is broken: {e}"),
        }
    }

    /// Merges `other` over `self`: a rule of `other` replaces the rule with the same id (in
    /// place), new ids are appended. `enabled = false` in `other` switches a rule off.
    pub fn merge(&mut self, other: Rules) {
        for rule in other.rules {
            match self.rules.iter_mut().find(|r| r.id == rule.id) {
                Some(existing) => *existing = rule,
                None => self.rules.push(rule),
            }
        }
    }

    /// All rules, enabled or not, in order.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule with this id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Longest window or hold time over the enabled rules, milliseconds.
    #[must_use]
    pub fn max_window_ms(&self) -> u64 {
        self.rules
            .iter()
            .filter(|r| r.enabled)
            .map(|r| r.when.window_ms().max(r.when.for_ms()))
            .max()
            .unwrap_or(0)
    }
}

/// Offset of `field` (as a key) within `span` of `text`.
fn find_key(text: &str, span: Range<usize>, field: &str) -> Option<usize> {
    let inner = text.get(span.clone())?;
    let mut from = 0;
    while let Some(i) = inner[from..].find(field) {
        let at = from + i;
        let before_ok = at == 0
            || !inner[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let after = inner[at + field.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            return Some(span.start + at);
        }
        from = at + field.len();
    }
    None
}

pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> RuleError {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return RuleError {
            line: 1,
            column: 1,
            message,
        };
    };
    let names_field = message.contains("field `") || message.contains("key `");
    let message = match key_before(text, span.start) {
        Some(key) if !names_field => format!("`{key}`: {message}"),
        _ => message,
    };
    RuleError::at(text, span.start, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_has_every_kind() {
        let rules = Rules::builtin();
        for id in [
            "miner-process",
            "miner-pool-cpu",
            "reverse-shell-stdio",
            "shell-outbound-connection",
            "port-scan-ports",
            "port-scan-hosts",
            "unexpected-listener",
            "process-explosion",
            "egress-spike",
            "metadata-access",
        ] {
            assert!(rules.get(id).is_some(), "missing {id}");
        }
        let listener = rules.get("unexpected-listener").map(|r| r.severity);
        assert_eq!(listener, Some(Severity::Medium));
    }

    #[test]
    fn line_column_counts_chars() {
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
        assert_eq!(line_column("x", 0), (1, 1));
    }

    #[test]
    fn bad_syntax_points_at_the_spot() {
        let text = "[[rule]]\nid = \"a\"\nseverity = \"low\nwhen = {}\n";
        let e = Rules::parse(text).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn unknown_key_in_when_is_named_with_position() {
        let text = "[[rule]]\nid = \"a\"\nseverity = \"low\"\n[rule.when]\nprocess_count_above = 3\nprocess_nmae_in = [\"x\"]\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("process_nmae_in"), "{e}");
        assert_eq!((e.line, e.column), (6, 1), "{e}");
    }

    #[test]
    fn unknown_key_in_rule_is_named_with_position() {
        let text =
            "[[rule]]\nid = \"a\"\n  sevrity = \"low\"\nwhen = { process_count_above = 3 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("sevrity"), "{e}");
        assert_eq!((e.line, e.column), (3, 3), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text =
            "[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { process_count_above = \"many\" }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("process_count_above"), "{e}");
        assert_eq!((e.line, e.column), (4, 32), "{e}");
    }

    #[test]
    fn out_of_range_array_element_names_the_field() {
        let text =
            "[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { connect_port_in = [1, 70000] }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.starts_with("`connect_port_in`"), "{e}");
        assert_eq!((e.line, e.column), (4, 32), "{e}");
    }

    #[test]
    fn bad_severity_points_at_the_value() {
        let text =
            "[[rule]]\nid = \"a\"\nseverity = \"urgent\"\nwhen = { process_count_above = 3 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("severity"), "{e}");
        assert!(e.message.contains("urgent"), "{e}");
        assert_eq!((e.line, e.column), (3, 12), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_field() {
        let text = "[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { window_secs = 0, process_growth_above = 3 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("window_secs"), "{e}");
        assert_eq!((e.line, e.column), (4, 10), "{e}");

        let text = "[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { for_secs = 5 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("no condition"), "{e}");
        assert_eq!(e.line, 4, "{e}");

        let text = "[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { process_count_above = 1 }\n[[rule]]\nid = \"a\"\nseverity = \"low\"\nwhen = { process_count_above = 1 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        assert_eq!((e.line, e.column), (6, 6), "{e}");

        let text =
            "[[rule]]\nid = \"Bad Id\"\nseverity = \"low\"\nwhen = { process_count_above = 1 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert_eq!((e.line, e.column), (2, 6), "{e}");
    }

    #[test]
    fn missing_field_is_an_error() {
        let text = "[[rule]]\nid = \"a\"\nwhen = { process_count_above = 1 }\n";
        let e = Rules::parse(text).unwrap_err();
        assert!(e.message.contains("severity"), "{e}");
    }

    #[test]
    fn merge_overrides_by_id_and_disables() {
        let mut rules = Rules::builtin();
        let n = rules.rules().len();
        let mine = Rules::parse(
            "[[rule]]\nid = \"unexpected-listener\"\nseverity = \"low\"\nwhen = { listener_port_not_in = [22, 9000] }\n\
             [[rule]]\nid = \"miner-process\"\nseverity = \"high\"\nenabled = false\nwhen = { process_name_in = [\"x\"] }\n\
             [[rule]]\nid = \"many-procs\"\nseverity = \"medium\"\nwhen = { process_count_above = 500 }\n",
        )
        .unwrap();
        rules.merge(mine);
        assert_eq!(rules.rules().len(), n + 1);
        let l = rules.get("unexpected-listener").unwrap();
        assert_eq!(l.severity, Severity::Low);
        assert_eq!(l.when.listener_port_not_in, Some(vec![22, 9000]));
        assert!(!rules.get("miner-process").unwrap().enabled);
        assert!(rules.get("many-procs").is_some());
    }

    #[test]
    fn empty_file_is_no_rules() {
        assert_eq!(Rules::parse("").unwrap().rules().len(), 0);
    }
}
