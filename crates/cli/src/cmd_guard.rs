//! `firefleet guard`: the threat-detection rules, offline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use firefleet_guard::{replay, Finding, Rules, Sample};

use crate::{
    args::{Global, Output},
    output::print,
};

#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check a rule file (errors give line and column); with `--telemetry`, run the rules
    /// (the built-in set with the file's rules over it, same ids replacing) against recorded
    /// telemetry and print the findings.
    Test {
        /// The rule file (TOML, `[[rule]]` tables; see crates/guard/rules/builtin.toml).
        file: PathBuf,
        /// Recorded telemetry: JSON lines, one sample each.
        #[arg(long)]
        telemetry: Option<PathBuf>,
        /// The file's rules only, without the built-in set.
        #[arg(long)]
        only: bool,
    },
}

pub fn run(g: &Global, cmd: GuardCommand) -> anyhow::Result<()> {
    match cmd {
        GuardCommand::Rules(RulesCommand::Test {
            file,
            telemetry,
            only,
        }) => test(g, &file, telemetry.as_deref(), only),
    }
}

fn load_samples(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading telemetry {}", path.display()))?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: Sample = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: not a telemetry sample: {e}",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        samples.push(s);
    }
    Ok(samples)
}

fn test(g: &Global, file: &Path, telemetry: Option<&Path>, only: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading rule file {}", file.display()))?;
    let parsed = match Rules::parse(&text) {
        Ok(r) => r,
        Err(e) => bail!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message),
    };
    let rules = if only {
        parsed
    } else {
        let mut all = Rules::builtin();
        all.merge(parsed);
        all
    };
    let Some(telemetry) = telemetry else {
        let rows = rules
            .rules()
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    format!("{:?}", r.severity).to_lowercase(),
                    r.enabled.to_string(),
                    r.description.clone(),
                ]
            })
            .collect();
        let ids: Vec<&str> = rules.rules().iter().map(|r| r.id.as_str()).collect();
        return print(
            g.output,
            &serde_json::json!({ "file": file, "ok": true, "rules": ids }),
            &["RULE", "SEVERITY", "ENABLED", "DESCRIPTION"],
            rows,
        );
    };
    let samples = load_samples(telemetry)?;
    let findings: Vec<Finding> = replay(&rules, &samples);
    let rows = findings
        .iter()
        .map(|f| {
            vec![
                format!("{:?}", f.severity).to_lowercase(),
                f.rule.clone(),
                f.vm.clone(),
                f.first_ms.to_string(),
                f.last_ms.to_string(),
                f.count.to_string(),
                f.evidence
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    print(
        g.output,
        &findings,
        &[
            "SEVERITY", "RULE", "VM", "FIRST MS", "LAST MS", "COUNT", "EVIDENCE",
        ],
        rows,
    )?;
    if g.output == Output::Table {
        eprintln!("{} samples, {} findings", samples.len(), findings.len());
    }
    Ok(())
}
