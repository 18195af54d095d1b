//! Evaluating compiled policies on one input.

use regorus::{Engine, Value};
use serde::Deserialize;

use crate::{Control, Kind, Mode, PolicyDoc, PolicyInfo, PolicyResult, TestResult};

/// One policy of a set, with the rule paths evaluation needs.
pub(crate) struct Compiled {
    pub(crate) info: PolicyInfo,
    /// `data.<package>.deny`.
    pub(crate) deny_path: String,
    /// `data.<package>.controls`, when the policy defines it.
    controls_path: Option<String>,
    /// The last component of the package: the control id of a policy without `controls`.
    short: String,
}

impl Compiled {
    pub(crate) fn new(
        doc: &PolicyDoc,
        package: &str,
        kind: Kind,
        has_controls: bool,
        tests: Vec<String>,
    ) -> Self {
        Compiled {
            info: PolicyInfo {
                name: doc.name.clone(),
                package: package.to_string(),
                kind,
                mode: Mode::Deny,
                tests,
            },
            deny_path: format!("data.{package}.deny"),
            controls_path: has_controls.then(|| format!("data.{package}.controls")),
            short: package.rsplit('.').next().unwrap_or(package).to_string(),
        }
    }

    pub(crate) fn with_mode(mut self, mode: Mode) -> Self {
        self.info.mode = mode;
        self
    }
}

/// Runs every policy of `kind` on `input`.
pub(crate) fn evaluate(
    engine: &mut Engine,
    policies: &[Compiled],
    kind: Kind,
    input: &serde_json::Value,
) -> Vec<PolicyResult> {
    let input = Value::deserialize(input);
    let input_error = input.as_ref().err().map(ToString::to_string);
    engine.set_input(input.unwrap_or(Value::Undefined));
    policies
        .iter()
        .filter(|c| c.info.kind == kind)
        .map(|c| match &input_error {
            Some(e) => failed(c, format!("input: {e}")),
            None => evaluate_one(engine, c),
        })
        .collect()
}

fn evaluate_one(engine: &mut Engine, c: &Compiled) -> PolicyResult {
    let violations = match engine.eval_rule(c.deny_path.clone()) {
        Ok(v) => match messages(&v) {
            Ok(m) => m,
            Err(e) => return failed(c, e),
        },
        Err(e) => return failed(c, one_line(&e)),
    };
    let controls = match &c.controls_path {
        None => vec![Control {
            id: c.short.clone(),
            name: c.info.name.clone(),
            passed: violations.is_empty(),
            evidence: serde_json::Value::from(violations.clone()),
        }],
        Some(path) => match eval_document(engine, path) {
            Ok(v) => match controls(&v) {
                Ok(controls) => controls,
                Err(e) => return failed(c, e),
            },
            Err(e) => return failed(c, e),
        },
    };
    PolicyResult {
        policy: c.info.name.clone(),
        mode: c.info.mode,
        violations,
        controls,
    }
}

/// The result of a policy that could not be evaluated: one violation (fail closed) and one
/// failed control.
fn failed(c: &Compiled, error: String) -> PolicyResult {
    let message = format!("policy could not be evaluated: {error}");
    PolicyResult {
        policy: c.info.name.clone(),
        mode: c.info.mode,
        controls: vec![Control {
            id: c.short.clone(),
            name: c.info.name.clone(),
            passed: false,
            evidence: serde_json::Value::String(message.clone()),
        }],
        violations: vec![message],
    }
}

/// The value of `path`, a rule or a document made of rules (`controls["x"] := ...` defines
/// no rule `controls` but a document of that name).
fn eval_document(engine: &mut Engine, path: &str) -> Result<Value, String> {
    let results = engine
        .eval_query(path.to_string(), false)
        .map_err(|e| one_line(&e))?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map_or(Value::Undefined, |e| e.value))
}

/// The messages of a `deny` set (undefined: none).
fn messages(deny: &Value) -> Result<Vec<String>, String> {
    let items: Vec<&Value> = match deny {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(s) => s.iter().collect(),
        Value::Array(a) => a.iter().collect(),
        other => return Err(format!("deny is {}, not a set of messages", to_json(other))),
    };
    let mut out: Vec<String> = items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s.to_string(),
            other => to_json(other).to_string(),
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The report of a `controls` object (undefined: no controls).
fn controls(value: &Value) -> Result<Vec<Control>, String> {
    let object = match value {
        Value::Undefined => return Ok(Vec::new()),
        Value::Object(o) => o,
        other => return Err(format!("controls is {}, not an object", to_json(other))),
    };
    object
        .iter()
        .map(|(id, c)| {
            let id = match id {
                Value::String(s) => s.to_string(),
                other => to_json(other).to_string(),
            };
            let field = |f: &str| match c {
                Value::Object(o) => o
                    .iter()
                    .find(|(k, _)| matches!(k, Value::String(s) if s.as_ref() == f))
                    .map(|(_, v)| v),
                _ => None,
            };
            let passed = match field("passed") {
                Some(Value::Bool(b)) => *b,
                _ => return Err(format!("controls[{id:?}].passed is not a boolean")),
            };
            let name = match field("name") {
                Some(Value::String(s)) => s.to_string(),
                _ => id.clone(),
            };
            let evidence = field("evidence").map_or(serde_json::Value::Null, to_json);
            Ok(Control {
                id,
                name,
                passed,
                evidence,
            })
        })
        .collect()
}

/// Runs one `test_` rule: passes when it evaluates to true.
pub(crate) fn run_test(engine: &mut Engine, c: &Compiled, test: &str) -> TestResult {
    let (passed, error) = match engine.eval_rule(format!("data.{}.{test}", c.info.package)) {
        Ok(Value::Bool(true)) => (true, None),
        Ok(Value::Undefined | Value::Bool(false)) => (false, None),
        Ok(other) => (
            false,
            Some(format!("evaluated to {}, not true", to_json(&other))),
        ),
        Err(e) => (false, Some(one_line(&e))),
    };
    TestResult {
        policy: c.info.name.clone(),
        test: test.to_string(),
        passed,
        error,
    }
}

/// A regorus value as JSON (sets become arrays, undefined becomes null).
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Undefined => serde_json::Value::Null,
        other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
    }
}

/// A regorus error on one line: `<file>:<line>:<col>: <message>` from its
/// `--> <file>:<line>:<col>`, source excerpt and `error: <message>` lines; other errors as they
/// are, lines joined.
pub(crate) fn one_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let location = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let message = text.lines().rev().find_map(|l| l.strip_prefix("error: "));
    match (location, message) {
        (Some(location), Some(message)) => format!("{}: {}", location.trim(), message.trim()),
        _ => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}
