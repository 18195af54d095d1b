//! Response playbooks: what to do about a finding, by severity, per tenant.
//!
//! ```toml
//! [default]                      # every tenant, unless its own table says otherwise
//! low = []
//! medium = ["alert"]
//! high = ["alert", "isolate", "snapshot", "pause"]
//! critical = ["alert", "isolate", "snapshot", "replace"]
//! rate_limit_mbit = 10           # what `rate-limit` sets the VM's egress to
//!
//! [tenant.acme]                  # only the severities named here change for tenant acme
//! high = ["alert", "rate-limit", "snapshot"]
//! ```
//!
//! Actions run in the order given, each once per finding: `alert` (recorded, logged, counted),
//! `rate-limit` (the VM's egress bandwidth), `isolate` (all traffic to and from the VM dropped),
//! `pause`, `snapshot` (a forensic snapshot, kept and linked from the finding), `replace` (the
//! VM is stopped and kept for forensics; a fresh instance of the same spec takes its place),
//! `cordon` (its node takes no new VMs), `quarantine-image` (no new VM may use its image).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::{toml_error, RuleError, Severity};

/// The built-in playbooks, embedded in the binary.
pub const BUILTIN_PLAYBOOKS: &str = include_str!("../rules/playbooks.toml");

/// One response step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Record, log and count the finding (nothing changes on the VM).
    Alert,
    /// Limit the VM's egress bandwidth.
    RateLimit,
    /// Drop all network traffic to and from the VM.
    Isolate,
    /// Pause the VM.
    Pause,
    /// Take a forensic snapshot (kept, linked from the finding).
    Snapshot,
    /// Stop the VM (kept for forensics) and start a fresh instance of its spec.
    Replace,
    /// Cordon the VM's node.
    Cordon,
    /// Refuse new VMs of the VM's image.
    QuarantineImage,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 8] = [
        Action::Alert,
        Action::RateLimit,
        Action::Isolate,
        Action::Pause,
        Action::Snapshot,
        Action::Replace,
        Action::Cordon,
        Action::QuarantineImage,
    ];

    /// The name used in playbook files and the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::RateLimit => "rate-limit",
            Action::Isolate => "isolate",
            Action::Pause => "pause",
            Action::Snapshot => "snapshot",
            Action::Replace => "replace",
            Action::Cordon => "cordon",
            Action::QuarantineImage => "quarantine-image",
        }
    }

    /// Whether the action needs the VM still there and running (so cannot follow `replace`).
    fn needs_running_vm(self) -> bool {
        matches!(
            self,
            Action::RateLimit | Action::Isolate | Action::Pause | Action::Snapshot
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The actions for each severity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Playbook {
    /// For low-severity findings.
    pub low: Vec<Action>,
    /// For medium ones.
    pub medium: Vec<Action>,
    /// For high ones.
    pub high: Vec<Action>,
    /// For critical ones.
    pub critical: Vec<Action>,
    /// Egress limit set by `rate-limit`, Mbit/s.
    pub rate_limit_mbit: u32,
}

impl Playbook {
    /// The actions for a severity, in order.
    #[must_use]
    pub fn actions(&self, severity: Severity) -> &[Action] {
        match severity {
            Severity::Low => &self.low,
            Severity::Medium => &self.medium,
            Severity::High => &self.high,
            Severity::Critical => &self.critical,
        }
    }
}

/// The default playbook and tenants' overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playbooks {
    default: Playbook,
    tenants: BTreeMap<String, Playbook>,
}

impl Default for Playbooks {
    fn default() -> Self {
        Self::builtin()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    default: Option<toml::Spanned<RawPlaybook>>,
    #[serde(default)]
    tenant: BTreeMap<String, toml::Spanned<RawPlaybook>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    low: Option<toml::Spanned<Vec<Action>>>,
    medium: Option<toml::Spanned<Vec<Action>>>,
    high: Option<toml::Spanned<Vec<Action>>>,
    critical: Option<toml::Spanned<Vec<Action>>>,
    rate_limit_mbit: Option<toml::Spanned<u32>>,
}

/// The largest rate limit accepted, Mbit/s (as for a VM's own limits).
const MAX_RATE_LIMIT_MBIT: u32 = 100_000;

impl Playbooks {
    /// The built-in playbooks ([`BUILTIN_PLAYBOOKS`]).
    ///
    /// # Panics
    /// Never: the embedded file is checked by a unit test.
    #[must_use]
    pub fn builtin() -> Playbooks {
        match Self::parse_over(None, BUILTIN_PLAYBOOKS) {
            Ok(p) => p,
            Err(e) => unreachable!("built-in playbooks: {e}"),
        }
    }

    /// A playbook file merged over the built-in playbooks: its `[default]` replaces the named
    /// severities of the built-in default, each `[tenant.NAME]` the named severities of the
    /// (merged) default for that tenant. Errors carry the line and column and name the field.
    pub fn parse(text: &str) -> Result<Playbooks, RuleError> {
        Self::parse_over(Some(&Self::builtin().default), text)
    }

    fn parse_over(base: Option<&Playbook>, text: &str) -> Result<Playbooks, RuleError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut default = base.cloned().unwrap_or_default();
        if let Some(d) = raw.default {
            merge(&mut default, d.into_inner(), text, "default")?;
        }
        if default.rate_limit_mbit == 0 {
            default.rate_limit_mbit = 10;
        }
        let mut tenants = BTreeMap::new();
        for (name, p) in raw.tenant {
            let span = p.span();
            if name.is_empty() || name.len() > 63 {
                return Err(RuleError::at(
                    text,
                    span.start,
                    format!("`tenant.{name}`: a tenant name has 1 to 63 characters"),
                ));
            }
            let mut merged = default.clone();
            merge(&mut merged, p.into_inner(), text, &format!("tenant.{name}"))?;
            tenants.insert(name, merged);
        }
        Ok(Playbooks { default, tenants })
    }

    /// The playbook in force for a tenant.
    #[must_use]
    pub fn for_tenant(&self, tenant: &str) -> &Playbook {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }

    /// The playbook of tenants without their own.
    #[must_use]
    pub fn default_playbook(&self) -> &Playbook {
        &self.default
    }

    /// The tenants with their own playbook.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }
}

fn merge(into: &mut Playbook, raw: RawPlaybook, text: &str, table: &str) -> Result<(), RuleError> {
    for (name, list, slot) in [
        ("low", raw.low, &mut into.low),
        ("medium", raw.medium, &mut into.medium),
        ("high", raw.high, &mut into.high),
        ("critical", raw.critical, &mut into.critical),
    ] {
        let Some(list) = list else { continue };
        let start = list.span().start;
        let actions = list.into_inner();
        let field = format!("`{table}.{name}`");
        let mut seen = Vec::new();
        let mut replaced = false;
        for a in &actions {
            if seen.contains(a) {
                return Err(RuleError::at(
                    text,
                    start,
                    format!("{field}: `{a}` is listed twice"),
                ));
            }
            if replaced && a.needs_running_vm() {
                return Err(RuleError::at(
                    text,
                    start,
                    format!(
                        "{field}: `{a}` after `replace` would act on the stopped VM; put it before"
                    ),
                ));
            }
            replaced |= *a == Action::Replace;
            seen.push(*a);
        }
        *slot = actions;
    }
    if let Some(r) = raw.rate_limit_mbit {
        let start = r.span().start;
        let v = r.into_inner();
        if v == 0 || v > MAX_RATE_LIMIT_MBIT {
            return Err(RuleError::at(
                text,
                start,
                format!("`{table}.rate_limit_mbit`: {v} is not in 1..={MAX_RATE_LIMIT_MBIT}"),
            ));
        }
        into.rate_limit_mbit = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_contains_containment_for_high_and_critical() {
        let p = Playbooks::builtin();
        let d = p.for_tenant("anyone");
        assert!(d.actions(Severity::Low).is_empty());
        assert!(d.actions(Severity::High).contains(&Action::Isolate));
        assert!(d.actions(Severity::High).contains(&Action::Snapshot));
        assert!(d.actions(Severity::Critical).contains(&Action::Replace));
        assert!(d.rate_limit_mbit > 0);
    }

    #[test]
    fn tenant_overrides_only_what_it_names() {
        let p = Playbooks::parse(
            "[default]\nmedium = [\"alert\", \"rate-limit\"]\nrate_limit_mbit = 5\n\
             [tenant.acme]\nhigh = [\"alert\", \"cordon\", \"quarantine-image\"]\n",
        )
        .unwrap();
        let acme = p.for_tenant("acme");
        assert_eq!(
            acme.actions(Severity::High),
            [Action::Alert, Action::Cordon, Action::QuarantineImage]
        );
        assert_eq!(
            acme.actions(Severity::Medium),
            [Action::Alert, Action::RateLimit]
        );
        assert_eq!(acme.rate_limit_mbit, 5);
        let other = p.for_tenant("other");
        assert_eq!(
            other.actions(Severity::High),
            Playbooks::builtin().for_tenant("x").actions(Severity::High)
        );
        assert_eq!(p.tenants().collect::<Vec<_>>(), ["acme"]);
    }

    #[test]
    fn errors_name_the_field_with_line_and_column() {
        let e = Playbooks::parse("[default]\nhigh = [\"alert\", \"nuke\"]\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.contains("nuke"), "{e:?}");
        let e = Playbooks::parse("[tenant.a]\ncritical = [\"replace\", \"pause\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 12), "{e:?}");
        assert!(e.message.contains("tenant.a.critical"), "{e:?}");
        let e = Playbooks::parse("[default]\nrate_limit_mbit = 0\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("rate_limit_mbit"), "{e:?}");
        let e = Playbooks::parse("[default]\nhigh = [\"alert\", \"alert\"]\n").unwrap_err();
        assert!(e.message.contains("twice"), "{e:?}");
        let e = Playbooks::parse("[defaults]\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            let s = serde_json::to_string(&a).unwrap();
            assert_eq!(s, format!("\"{}\"", a.as_str()));
        }
    }
}
