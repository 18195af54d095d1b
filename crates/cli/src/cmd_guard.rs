//! `firefleet guard`: the threat-detection rules and playbooks, offline; `firefleet threat`:
//! the threats the guard found, and what it did about them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use firefleet_guard::{replay, Finding, Playbooks, Rules, Sample, Severity};

use crate::{
    args::{Global, Output},
    output::print,
};

#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Response playbook files.
    #[command(subcommand)]
    Playbooks(PlaybooksCommand),
}

#[derive(Debug, Subcommand)]
pub enum PlaybooksCommand {
    /// Check a playbook file (errors give line and column) and print the actions per
    /// severity for the default and each tenant it names.
    Test {
        /// The playbook file (TOML; see crates/guard/rules/playbooks.toml).
        file: PathBuf,
    },
}

/// `firefleet threat`.
#[derive(Debug, Subcommand)]
pub enum ThreatCommand {
    /// Threats the guard found, newest first.
    Ls {
        /// Only those not acknowledged.
        #[arg(long)]
        open: bool,
        /// Only those of this VM (name or id).
        #[arg(long)]
        vm: Option<String>,
        /// Only those of this rule (or detector: baseline, peers, change-point).
        #[arg(long)]
        rule: Option<String>,
    },
    /// One threat: its evidence and each action of its playbook.
    Get {
        /// The threat's id.
        id: String,
    },
    /// Images quarantined by a playbook (new VMs of them are refused; admin).
    Images,
    /// Lift an image's quarantine (admin).
    Release {
        /// The image digest (`sha256:...`).
        image: String,
    },
    /// Acknowledge a threat (containment stays as it is).
    Ack {
        /// The threat's id.
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
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
        GuardCommand::Playbooks(PlaybooksCommand::Test { file }) => playbooks_test(g, &file),
    }
}

fn playbooks_test(g: &Global, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading playbook file {}", file.display()))?;
    let p = match Playbooks::parse(&text) {
        Ok(p) => p,
        Err(e) => bail!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message),
    };
    let mut json = serde_json::Map::new();
    let mut rows = Vec::new();
    let tenants: Vec<Option<&str>> = std::iter::once(None).chain(p.tenants().map(Some)).collect();
    for t in tenants {
        let name = t.unwrap_or("(default)");
        let book = match t {
            Some(t) => p.for_tenant(t),
            None => p.default_playbook(),
        };
        json.insert(name.to_owned(), serde_json::to_value(book)?);
        for sev in [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ] {
            let actions: Vec<&str> = book.actions(sev).iter().map(|a| a.as_str()).collect();
            rows.push(vec![
                name.to_owned(),
                crate::output::wire(&sev),
                if actions.is_empty() {
                    "-".to_owned()
                } else {
                    actions.join(", ")
                },
            ]);
        }
    }
    print(g.output, &json, &["TENANT", "SEVERITY", "ACTIONS"], rows)
}

fn actions_summary(t: &firefleet_api::Threat) -> String {
    if t.actions.is_empty() {
        return "-".to_owned();
    }
    t.actions
        .iter()
        .map(|a| format!("{}:{}", a.action, crate::output::wire(&a.state)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `firefleet threat ...`.
pub async fn threat(g: &Global, cmd: ThreatCommand) -> anyhow::Result<()> {
    let client = crate::cmd_vm::client(g)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match cmd {
        ThreatCommand::Ls { open, vm, rule } => {
            let mut threats = client.threats().await?;
            threats.retain(|t| {
                !(open && t.ack.is_some())
                    && vm
                        .as_ref()
                        .is_none_or(|v| t.vm_name == *v || t.vm.as_str() == v)
                    && rule.as_ref().is_none_or(|r| t.finding.rule == *r)
            });
            let rows = threats
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        crate::output::wire(&t.finding.severity),
                        t.finding.rule.clone(),
                        t.vm_name.clone(),
                        t.tenant.clone(),
                        crate::output::ago(now, t.detected_ms),
                        actions_summary(t),
                        if t.ack.is_some() { "acked" } else { "open" }.to_owned(),
                    ]
                })
                .collect();
            print(
                g.output,
                &threats,
                &[
                    "ID", "SEVERITY", "RULE", "VM", "TENANT", "AGE", "ACTIONS", "STATE",
                ],
                rows,
            )
        }
        ThreatCommand::Get { id } => {
            let t = client.threat(&id).await?;
            if g.output == Output::Json {
                return print(g.output, &t, &[], vec![]);
            }
            println!("threat     {}", t.id);
            println!(
                "finding    {} {} ({}): {}",
                crate::output::wire(&t.finding.severity),
                t.finding.rule,
                crate::output::wire(&t.finding.detector),
                t.finding.description
            );
            println!(
                "vm         {} ({}) tenant {} node {} image {}",
                t.vm_name,
                t.vm,
                t.tenant,
                crate::output::opt(&t.node),
                t.image
            );
            println!(
                "seen       {} samples, first {} ago, last {} ago; recorded {} ago",
                t.finding.count,
                crate::output::ago(now, t.finding.first_ms),
                crate::output::ago(now, t.finding.last_ms),
                crate::output::ago(now, t.detected_ms)
            );
            for (k, v) in &t.finding.evidence {
                println!("evidence   {k} = {v}");
            }
            for a in &t.actions {
                let took = match (a.started_ms, a.finished_ms) {
                    (Some(s), Some(f)) => format!(" in {} ms", f.saturating_sub(s)),
                    _ => String::new(),
                };
                println!(
                    "action     {:<16} {}{took}{}",
                    a.action.as_str(),
                    crate::output::wire(&a.state),
                    a.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
            if let Some(s) = &t.snapshot {
                println!("snapshot   {s} (firefleet vm snapshots {})", t.vm);
            }
            if let Some(r) = &t.replacement {
                println!("replaced   by {r}");
            }
            if let Some(c) = t.contained_ms {
                println!(
                    "contained  {} ms after it was recorded",
                    c.saturating_sub(t.detected_ms)
                );
            }
            match &t.ack {
                Some(a) => println!(
                    "ack        by {} {} ago{}",
                    a.by,
                    crate::output::ago(now, a.at_ms),
                    a.note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ),
                None => println!("ack        no"),
            }
            Ok(())
        }
        ThreatCommand::Images => {
            let images = client.quarantined_images().await?;
            let rows = images
                .iter()
                .map(|q| {
                    vec![
                        q.image.clone(),
                        q.threat.clone(),
                        crate::output::ago(now, q.at_ms),
                    ]
                })
                .collect();
            print(g.output, &images, &["IMAGE", "THREAT", "AGE"], rows)
        }
        ThreatCommand::Release { image } => {
            client.release_image(&image).await?;
            print(
                g.output,
                &serde_json::json!({ "released": image }),
                &["RELEASED"],
                vec![vec![image.clone()]],
            )
        }
        ThreatCommand::Ack { id, note } => {
            let t = client
                .ack_threat(&id, &firefleet_api::AckThreatRequest { note })
                .await?;
            print(
                g.output,
                &t,
                &["ID", "ACKED BY"],
                vec![vec![
                    t.id.clone(),
                    t.ack.as_ref().map(|a| a.by.clone()).unwrap_or_default(),
                ]],
            )
        }
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
