//! Compiling policies: checking each one alone, then loading them all into one engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use regorus::Engine;

use crate::eval::{self, Compiled};
use crate::{Evaluation, Kind, Mode, PolicyDoc, PolicyError, PolicyInfo, TestResult};

/// The longest one rule's evaluation may take (wall clock, checked by the Rego interpreter
/// every 256 steps); past it the policy fails closed with a violation that says so.
pub const EVAL_BUDGET: std::time::Duration = std::time::Duration::from_millis(250);

/// A compiled, immutable set of policies; cheap to clone and share between threads.
#[derive(Clone)]
pub struct PolicySet {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every policy loaded and prepared (analysed); each evaluation works on a clone.
    engine: Engine,
    compiled: Vec<Compiled>,
    infos: Vec<PolicyInfo>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.inner.infos)
            .finish_non_exhaustive()
    }
}

/// Parses and compiles one policy alone: its package, kind, mode and tests, or why it is
/// refused.
pub fn inspect(doc: &PolicyDoc) -> Result<PolicyInfo, PolicyError> {
    let mut engine = budgeted_engine();
    let compiled = load(&mut engine, doc)?;
    Ok(compiled.info)
}

impl PolicySet {
    /// Compiles `docs` into a set. Each policy is checked alone first, so an error names the
    /// policy at fault; a name or package used twice is refused.
    pub fn compile(docs: &[PolicyDoc]) -> Result<PolicySet, PolicyError> {
        let mut names = HashSet::new();
        let mut packages: HashMap<String, String> = HashMap::new();
        let mut compiled = Vec::with_capacity(docs.len());
        for doc in docs {
            if !names.insert(doc.name.as_str()) {
                return Err(PolicyError::DuplicateName {
                    policy: doc.name.clone(),
                });
            }
            let c = load(&mut budgeted_engine(), doc)?;
            if let Some(other) = packages.get(&c.info.package) {
                return Err(PolicyError::DuplicatePackage {
                    policy: doc.name.clone(),
                    package: c.info.package.clone(),
                    other: other.clone(),
                });
            }
            packages.insert(c.info.package.clone(), doc.name.clone());
            compiled.push(c);
        }
        let mut engine = budgeted_engine();
        for doc in docs {
            add(&mut engine, doc)?;
        }
        if let Some(first) = compiled.first() {
            // Analyse once here, so that every clone starts prepared.
            engine
                .compile_with_entrypoint(&first.deny_path.as_str().into())
                .map_err(|e| invalid(&first.info.name, &e))?;
        }
        let infos = compiled.iter().map(|c| c.info.clone()).collect();
        Ok(PolicySet {
            inner: Arc::new(Inner {
                engine,
                compiled,
                infos,
            }),
        })
    }

    /// The policies, in the order they were given.
    #[must_use]
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.inner.infos
    }

    /// Runs every admission policy on `input` (`{"vm": .., "tenant": .., "function": ..}`).
    #[must_use]
    pub fn admit(&self, input: &serde_json::Value) -> Evaluation {
        self.evaluate(Kind::Admission, input)
    }

    /// Runs every host policy on `input` (`{"node": ..}`).
    #[must_use]
    pub fn check_host(&self, input: &serde_json::Value) -> Evaluation {
        self.evaluate(Kind::Host, input)
    }

    /// Runs every `test_` rule of every policy, each without input (tests bring their own with
    /// `with input as`).
    #[must_use]
    pub fn run_tests(&self) -> Vec<TestResult> {
        let mut engine = self.inner.engine.clone();
        engine.set_input(regorus::Value::new_object());
        self.inner
            .compiled
            .iter()
            .flat_map(|c| {
                c.info
                    .tests
                    .iter()
                    .map(|t| eval::run_test(&mut engine, c, t))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn evaluate(&self, kind: Kind, input: &serde_json::Value) -> Evaluation {
        let mut engine = self.inner.engine.clone();
        let results = eval::evaluate(&mut engine, &self.inner.compiled, kind, input);
        Evaluation { results }
    }
}

/// An engine whose every evaluation (and every clone's) stops at [`EVAL_BUDGET`]: a policy
/// that loops fails closed (or, when that happens while it is compiled, is refused) instead of
/// holding a thread.
fn budgeted_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_BUDGET,
        check_interval: std::num::NonZeroU32::MIN.saturating_add(255),
    });
    engine
}

fn invalid(policy: &str, e: &impl std::fmt::Display) -> PolicyError {
    PolicyError::Invalid {
        policy: policy.to_string(),
        message: eval::one_line(e),
    }
}

/// Adds `doc` to `engine`; returns its package without `data.`.
fn add(engine: &mut Engine, doc: &PolicyDoc) -> Result<String, PolicyError> {
    let package = engine
        .add_policy(doc.name.clone(), doc.source.clone())
        .map_err(|e| invalid(&doc.name, &e))?;
    Ok(package
        .strip_prefix("data.")
        .unwrap_or(&package)
        .to_string())
}

/// Loads `doc` into an engine of its own and checks the conventions.
fn load(engine: &mut Engine, doc: &PolicyDoc) -> Result<Compiled, PolicyError> {
    let package = add(engine, doc)?;
    let kind = kind_of(&package).ok_or_else(|| PolicyError::Package {
        policy: doc.name.clone(),
        package: package.clone(),
    })?;
    let declared = |rule: &str| {
        engine
            .has_declared_rule_rooted_at(&doc.name, rule)
            .map_err(|e| invalid(&doc.name, &e))
    };
    if !declared("deny")? {
        return Err(PolicyError::NoDeny {
            policy: doc.name.clone(),
            package,
        });
    }
    let has_controls = declared("controls")?;
    let has_enforcement = declared("enforcement")?;
    let mut tests = Vec::new();
    for t in candidate_tests(&doc.source) {
        if !tests.contains(&t) && declared(&t)? {
            tests.push(t);
        }
    }
    let compiled = Compiled::new(doc, &package, kind, has_controls, tests);
    // Analysing the module finds unknown functions, unsafe variables and the like.
    engine
        .compile_with_entrypoint(&compiled.deny_path.as_str().into())
        .map_err(|e| invalid(&doc.name, &e))?;
    // Unknown functions are only found when called: evaluate once, without input.
    engine
        .eval_rule(compiled.deny_path.clone())
        .map_err(|e| invalid(&doc.name, &e))?;
    let enforcement = if has_enforcement {
        let value = engine
            .eval_rule(format!("data.{package}.enforcement"))
            .map_err(|e| invalid(&doc.name, &e))?;
        match &value {
            regorus::Value::Undefined => None,
            regorus::Value::String(s) => {
                Some(s.parse::<Mode>().map_err(|_| PolicyError::Enforcement {
                    policy: doc.name.clone(),
                    value: eval::to_json(&value).to_string(),
                })?)
            }
            other => {
                return Err(PolicyError::Enforcement {
                    policy: doc.name.clone(),
                    value: eval::to_json(other).to_string(),
                })
            }
        }
    } else {
        None
    };
    let mode = doc.mode.or(enforcement).unwrap_or(Mode::Deny);
    Ok(compiled.with_mode(mode))
}

/// `firefleet.admission.<name>` or `firefleet.host.<name>`, `<name>` an identifier.
fn kind_of(package: &str) -> Option<Kind> {
    let mut parts = package.split('.');
    let (Some("firefleet"), Some(kind), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ident {
        return None;
    }
    match kind {
        "admission" => Some(Kind::Admission),
        "host" => Some(Kind::Host),
        _ => None,
    }
}

/// Names of rules that look like tests (`test_...` heading a line); each is then confirmed as
/// a rule of the module.
fn candidate_tests(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            if !line.starts_with("test_") {
                return None;
            }
            let end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(line.len());
            Some(line[..end].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_map_to_kinds() {
        assert_eq!(kind_of("firefleet.admission.x"), Some(Kind::Admission));
        assert_eq!(kind_of("firefleet.host.y_2"), Some(Kind::Host));
        for bad in [
            "firefleet.admission",
            "firefleet.other.x",
            "acme.admission.x",
            "firefleet.host.a.b",
            "firefleet.host.x-y",
            "firefleet.host.",
        ] {
            assert_eq!(kind_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn test_rules_are_found_by_line() {
        let src = "package p\ntest_a if { true }\n  test_b := true\nnot_test_c if true\ntest_a if false\n";
        assert_eq!(candidate_tests(src), ["test_a", "test_b", "test_a"]);
    }
}
