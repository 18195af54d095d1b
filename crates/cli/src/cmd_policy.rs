//! `firefleet policy`: Rego policies (applied on the server, or tested here without one);
//! `firefleet tenant`: the tenant attributes policies see; `firefleet compliance`: every VM's
//! and node's evaluation, and reports of it (JSON, or a self-contained HTML page).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use firefleet_api::{
    ApplyPolicyRequest, ComplianceList, ComplianceRecord, ComplianceReport, PolicyRecord,
};
use firefleet_policy::{inspect, Mode, PolicyDoc, PolicyError, PolicySet};

use crate::{
    args::{Global, Output},
    output::{opt, print},
};

/// `firefleet policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Add or replace a policy (admin). The file is checked here first: a syntax error names
    /// its line and column before the server is contacted.
    Apply {
        /// The Rego file (`package firefleet.admission.<name>` or `firefleet.host.<name>`).
        file: PathBuf,
        /// The policy's name (default: `<kind>/<file stem>`, e.g. `admission/no_gpus`; a
        /// built-in's name replaces the built-in).
        #[arg(long)]
        name: Option<String>,
        /// Enforcement: deny, warn or audit (default: the policy's `enforcement` rule, else
        /// deny).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
    },
    /// List the policies in force and the policy set's version.
    Ls,
    /// Show a policy and its source.
    Get {
        /// The policy's name (e.g. `admission/resource_limits`).
        name: String,
    },
    /// Remove a policy (admin).
    Rm {
        /// The policy's name.
        name: String,
    },
    /// Run the `test_` rules of Rego files here, without a server; exits non-zero when a test
    /// fails or a file does not compile.
    Test {
        /// Rego files (with `--builtin`, a file whose package is a built-in's replaces it).
        #[arg(required_unless_present = "builtin")]
        files: Vec<PathBuf>,
        /// With the built-in bundle (alone: test the bundle).
        #[arg(long)]
        builtin: bool,
    },
}

/// `firefleet compliance`.
#[derive(Debug, Subcommand)]
pub enum ComplianceCommand {
    /// Every VM's and node's latest evaluation against the policies.
    Ls {
        /// Only those that fail (a policy in deny mode is violated).
        #[arg(long)]
        failing: bool,
    },
    /// A report: pass/fail per control, with the evidence per VM and node.
    Report {
        /// JSON, or a self-contained HTML page.
        #[arg(long, value_enum, default_value = "json")]
        format: ReportFormat,
        /// Only this tenant's VMs.
        #[arg(long)]
        tenant: Option<String>,
        /// Write it here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `compliance report --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Json,
    Html,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

/// Runs `firefleet policy ...`.
pub async fn policy(g: &Global, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Apply { file, name, mode } => apply(g, &file, name, mode).await,
        PolicyCommand::Ls => {
            let list = crate::cmd_vm::client(g)?.policy_list().await?;
            let rows = list
                .policies
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.kind.clone(),
                        p.mode.clone(),
                        p.version.to_string(),
                        yes_no(p.builtin),
                        p.tests.len().to_string(),
                    ]
                })
                .collect();
            print(
                g.output,
                &list,
                &["NAME", "KIND", "MODE", "VERSION", "BUILTIN", "TESTS"],
                rows,
            )?;
            if g.output == Output::Table {
                println!("policy set version {}", list.version);
            }
            Ok(())
        }
        PolicyCommand::Get { name } => {
            let p = crate::cmd_vm::client(g)?.policy_get(&name).await?;
            print(
                g.output,
                &p,
                &[
                    "NAME", "KIND", "PACKAGE", "MODE", "VERSION", "BUILTIN", "TESTS",
                ],
                vec![vec![
                    p.name.clone(),
                    p.kind.clone(),
                    p.package.clone(),
                    p.mode.clone(),
                    p.version.to_string(),
                    yes_no(p.builtin),
                    if p.tests.is_empty() {
                        "-".to_owned()
                    } else {
                        p.tests.join(", ")
                    },
                ]],
            )?;
            if g.output == Output::Table {
                println!();
                print!("{}", p.source);
                if !p.source.ends_with('\n') {
                    println!();
                }
            }
            Ok(())
        }
        PolicyCommand::Rm { name } => {
            crate::cmd_vm::client(g)?.policy_delete(&name).await?;
            if g.output == Output::Json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                eprintln!("policy {name} removed");
            }
            Ok(())
        }
        PolicyCommand::Test { files, builtin } => test(g.output, &files, builtin),
    }
}

/// Reads a Rego file as a policy named by its path (so that errors read `FILE:LINE:COL`).
fn read_doc(file: &Path, mode: Option<Mode>) -> anyhow::Result<PolicyDoc> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(PolicyDoc {
        name: file.display().to_string(),
        source,
        mode,
    })
}

/// A policy error for people: a parse or compile error as the parser's `FILE:LINE:COL: ...`,
/// any other as it is (it names the policy).
fn policy_error(e: PolicyError) -> anyhow::Error {
    match e {
        PolicyError::Invalid { message, .. } => anyhow::anyhow!("{message}"),
        other => anyhow::Error::new(other),
    }
}

async fn apply(
    g: &Global,
    file: &Path,
    name: Option<String>,
    mode: Option<Mode>,
) -> anyhow::Result<()> {
    let doc = read_doc(file, mode)?;
    let info = inspect(&doc).map_err(policy_error)?;
    let name = match name {
        Some(n) => n,
        None => {
            let stem = file.file_stem().and_then(|s| s.to_str()).with_context(|| {
                format!(
                    "{}: no file name to name the policy by: pass --name",
                    file.display()
                )
            })?;
            format!("{}/{stem}", info.kind)
        }
    };
    let req = ApplyPolicyRequest {
        name,
        source: doc.source,
        mode: mode.map(|m| m.as_str().to_owned()),
    };
    let record = crate::cmd_vm::client(g)?.policy_apply(&req).await?;
    print_record(g.output, &record)
}

fn print_record(output: Output, p: &PolicyRecord) -> anyhow::Result<()> {
    print(
        output,
        p,
        &["NAME", "KIND", "MODE", "VERSION", "SET VERSION"],
        vec![vec![
            p.name.clone(),
            p.kind.clone(),
            p.mode.clone(),
            p.version.to_string(),
            p.set_version.to_string(),
        ]],
    )
}

/// `policy test`: compiles the files (and the built-in bundle) into one set and runs every
/// `test_` rule.
fn test(output: Output, files: &[PathBuf], builtin: bool) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    let mut packages = Vec::new();
    for file in files {
        let doc = read_doc(file, None)?;
        packages.push(inspect(&doc).map_err(policy_error)?.package);
        docs.push(doc);
    }
    if builtin {
        let mut bundle = Vec::new();
        for doc in firefleet_policy::builtin() {
            let replaced = inspect(&doc)
                .map(|i| packages.contains(&i.package))
                .unwrap_or(false);
            if !replaced {
                bundle.push(doc);
            }
        }
        bundle.append(&mut docs);
        docs = bundle;
    }
    let set = PolicySet::compile(&docs).map_err(policy_error)?;
    let results = set.run_tests();
    let failed = results.iter().filter(|r| !r.passed).count();
    match output {
        Output::Json => {
            let value = serde_json::json!({
                "passed": results.len() - failed,
                "failed": failed,
                "results": results,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Table => {
            for r in &results {
                let verdict = if r.passed { "PASS" } else { "FAIL" };
                match &r.error {
                    Some(e) if !r.passed => println!("{verdict} {} {}: {e}", r.policy, r.test),
                    _ => println!("{verdict} {} {}", r.policy, r.test),
                }
            }
            println!(
                "{} passed, {failed} failed ({} policies)",
                results.len() - failed,
                docs.len()
            );
        }
    }
    if results.is_empty() {
        eprintln!("warning: no test_ rules found");
    }
    if failed > 0 {
        let names: Vec<String> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("{} {}", r.policy, r.test))
            .collect();
        bail!(
            "{failed} of {} tests failed: {}",
            results.len(),
            names.join(", ")
        );
    }
    Ok(())
}

/// Runs `firefleet compliance ...`.
pub async fn compliance(g: &Global, cmd: ComplianceCommand) -> anyhow::Result<()> {
    let client = crate::cmd_vm::client(g)?;
    match cmd {
        ComplianceCommand::Ls { failing } => {
            let mut list = client.compliance_list().await?;
            if failing {
                list.records.retain(|r| !r.passed);
            }
            print_compliance(g.output, &list)
        }
        ComplianceCommand::Report {
            format,
            tenant,
            out,
        } => {
            let report = client.compliance_report(tenant.as_deref()).await?;
            let mut text = match format {
                ReportFormat::Json => serde_json::to_string_pretty(&report)?,
                ReportFormat::Html => render_html(&report),
            };
            if !text.ends_with('\n') {
                text.push('\n');
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let failing = report.records.iter().filter(|r| !r.passed).count();
                    let summary = serde_json::json!({
                        "file": path,
                        "subjects": report.records.len(),
                        "failing": failing,
                        "controls": report.controls.len(),
                    });
                    print(
                        g.output,
                        &summary,
                        &["FILE", "SUBJECTS", "FAILING", "CONTROLS"],
                        vec![vec![
                            path.display().to_string(),
                            report.records.len().to_string(),
                            failing.to_string(),
                            report.controls.len().to_string(),
                        ]],
                    )
                }
                None => {
                    std::io::stdout().write_all(text.as_bytes())?;
                    Ok(())
                }
            }
        }
    }
}

fn print_compliance(output: Output, list: &ComplianceList) -> anyhow::Result<()> {
    let rows = list.records.iter().map(compliance_row).collect();
    print(
        output,
        list,
        &[
            "KIND",
            "NAME",
            "TENANT",
            "VERSION",
            "PASSED",
            "VIOLATIONS",
            "REMEDIATION",
        ],
        rows,
    )?;
    if output == Output::Table {
        println!("policy set version {}", list.policy_version);
    }
    Ok(())
}

fn compliance_row(r: &ComplianceRecord) -> Vec<String> {
    let violations: Vec<String> = r
        .violations
        .iter()
        .map(|v| format!("{} ({})", v.policy, v.mode))
        .collect();
    vec![
        r.kind.clone(),
        r.name.clone(),
        opt(&r.tenant),
        r.policy_version.to_string(),
        yes_no(r.passed),
        list_or_dash(&violations),
        opt(&r.remediation),
    ]
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

pub(crate) fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// A compliance report as one self-contained HTML page (inline CSS, no script): a summary per
/// control, then each subject's controls with their evidence, and its violations. Every value
/// from the report is escaped.
pub fn render_html(report: &ComplianceReport) -> String {
    let mut h = String::new();
    let tenant = report.tenant.as_deref().unwrap_or("all tenants");
    let failing = report.records.iter().filter(|r| !r.passed).count();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!(
        "<title>FireFleet compliance report: {}</title>\n",
        esc(tenant)
    ));
    h.push_str(STYLE);
    h.push_str("</head>\n<body>\n<h1>FireFleet compliance report</h1>\n<dl>\n");
    for (k, v) in [
        ("Generated", utc(report.generated_ms)),
        ("Policy set version", report.policy_version.to_string()),
        ("Tenant", tenant.to_owned()),
        (
            "Subjects",
            format!("{} ({failing} failing)", report.records.len()),
        ),
    ] {
        h.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(&v)));
    }
    h.push_str("</dl>\n<h2>Controls</h2>\n<table>\n<tr><th>Policy</th><th>Control</th><th>Id</th><th>Passed</th><th>Failed</th></tr>\n");
    for c in &report.controls {
        let class = if c.failed > 0 { " class=\"fail\"" } else { "" };
        h.push_str(&format!(
            "<tr{class}><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            esc(&c.policy),
            esc(&c.name),
            esc(&c.id),
            c.passed,
            c.failed
        ));
    }
    h.push_str("</table>\n<h2>Subjects</h2>\n");
    for r in &report.records {
        subject_html(&mut h, r);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn subject_html(h: &mut String, r: &ComplianceRecord) {
    let verdict = if r.passed {
        "<span class=\"pass\">PASS</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    };
    h.push_str(&format!(
        "<section>\n<h3>{} {} {verdict}</h3>\n<p>id <code>{}</code>, tenant {}, evaluated {} at policy set version {}",
        esc(&r.kind),
        esc(&r.name),
        esc(&r.subject),
        esc(r.tenant.as_deref().unwrap_or("-")),
        esc(&utc(r.evaluated_ms)),
        r.policy_version
    ));
    if let Some(rem) = &r.remediation {
        h.push_str(&format!(", remediation: {}", esc(rem)));
    }
    h.push_str("</p>\n");
    if !r.controls.is_empty() {
        h.push_str("<table>\n<tr><th>Policy</th><th>Control</th><th>Id</th><th>Result</th><th>Evidence</th></tr>\n");
        for c in &r.controls {
            let result = if c.passed {
                "<td class=\"pass\">PASS</td>"
            } else {
                "<td class=\"fail\">FAIL</td>"
            };
            let evidence = serde_json::to_string(&c.evidence).unwrap_or_default();
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td>{result}<td><code>{}</code></td></tr>\n",
                esc(&c.policy),
                esc(&c.name),
                esc(&c.id),
                esc(&evidence)
            ));
        }
        h.push_str("</table>\n");
    }
    if !r.violations.is_empty() {
        h.push_str("<h4>Violations</h4>\n<ul>\n");
        for v in &r.violations {
            h.push_str(&format!(
                "<li><code>{}</code> ({}): {}</li>\n",
                esc(&v.policy),
                esc(&v.mode),
                esc(&v.message)
            ));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
}

const STYLE: &str = "<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td code { white-space: pre-wrap; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
.pass { color: #17692b; font-weight: bold; }
.fail { color: #b00020; font-weight: bold; }
tr.fail td { background: #fdecee; }
section { border-top: 1px solid #ddd; margin-top: 1em; }
</style>
";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: u64) -> String {
    let t = i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use firefleet_api::{ComplianceControl, ControlSummary, PolicyViolation};

    use super::*;

    fn report() -> ComplianceReport {
        ComplianceReport {
            generated_ms: 1_700_000_000_000,
            policy_version: 7,
            tenant: Some("acme".to_owned()),
            controls: vec![ControlSummary {
                policy: "host/cpu_side_channels".to_owned(),
                id: "smt-off".to_owned(),
                name: "SMT disabled".to_owned(),
                passed: 1,
                failed: 1,
            }],
            records: vec![ComplianceRecord {
                kind: "node".to_owned(),
                subject: "n1".to_owned(),
                name: "n1".to_owned(),
                tenant: None,
                policy_version: 7,
                passed: false,
                violations: vec![PolicyViolation {
                    policy: "host/cpu_side_channels".to_owned(),
                    mode: "deny".to_owned(),
                    message: "SMT disabled (smt-off) failed: <b>".to_owned(),
                }],
                controls: vec![ComplianceControl {
                    policy: "host/cpu_side_channels".to_owned(),
                    id: "smt-off".to_owned(),
                    name: "SMT disabled".to_owned(),
                    passed: false,
                    evidence: serde_json::json!({"smt_control": "<script>alert(1)</script>"}),
                }],
                evaluated_ms: 1_700_000_000_000,
                remediation: Some("tainted".to_owned()),
            }],
        }
    }

    #[test]
    fn html_escapes_evidence() {
        let html = render_html(&report());
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("{&quot;smt_control&quot;:"), "{html}");
        assert!(html.contains("failed: &lt;b&gt;"), "{html}");
    }

    #[test]
    fn html_shows_a_failing_control_as_fail() {
        let html = render_html(&report());
        assert!(
            html.contains(
                "<td>SMT disabled</td><td><code>smt-off</code></td><td class=\"fail\">FAIL</td>"
            ),
            "{html}"
        );
        assert!(html.contains("<span class=\"fail\">FAIL</span>"), "{html}");
        assert!(html.contains("2023-11-14 22:13:20 UTC"), "{html}");
        assert!(html.contains("acme"), "{html}");
        let mut passing = report();
        passing.records[0].passed = true;
        passing.records[0].controls[0].passed = true;
        let html = render_html(&passing);
        assert!(!html.contains("FAIL"), "{html}");
        assert!(html.contains("<td class=\"pass\">PASS</td>"), "{html}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
    }
}
