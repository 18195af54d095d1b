//! `firefleet audit`: the tamper-evident audit log: list it, check it (on the server, or an
//! export offline against the control plane's public key `DATA/audit.pub`), export it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use firefleet_api::{AuditVerifyResponse, FirstBad};
use firefleet_audit::{verify, verifying_key_from_hex, Entry, Reason, Tampered};

use crate::{
    args::{Global, Output},
    output::print,
};

/// Entries fetched per request by `export`.
const PAGE: usize = 5_000;

/// `firefleet audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit log entries, oldest first (admin).
    Ls {
        /// Only entries after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check the chain: every hash, signature and link. Fails naming the first bad entry.
    /// Without --file the server checks its stored log; with --file an export is checked here.
    Verify {
        /// An export (`firefleet audit export`, JSON lines) to check offline.
        #[arg(long, requires = "public_key")]
        file: Option<PathBuf>,
        /// The control plane's public key (`DATA/audit.pub`), for --file.
        #[arg(long, requires = "file")]
        public_key: Option<PathBuf>,
    },
    /// Write the whole log as JSON lines, one entry per line (admin).
    Export {
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `firefleet audit ...`.
pub async fn run(g: &Global, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Ls { after, limit } => {
            let client = crate::cmd_vm::client(g)?;
            let list = client.audit_list(after, limit).await?;
            let rows = list
                .entries
                .iter()
                .map(|e| {
                    let ev = &e.event;
                    vec![
                        ev.seq.to_string(),
                        ev.at_ms.to_string(),
                        ev.actor.clone(),
                        ev.action.clone(),
                        ev.target.clone(),
                        ev.outcome.clone(),
                    ]
                })
                .collect();
            print(
                g.output,
                &list,
                &["SEQ", "AT_MS", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
                rows,
            )
        }
        AuditCommand::Verify {
            file: Some(file),
            public_key: Some(public_key),
        } => report(g.output, &verify_export(&file, &public_key)?),
        AuditCommand::Verify { .. } => {
            let client = crate::cmd_vm::client(g)?;
            report(g.output, &client.audit_verify().await?)
        }
        AuditCommand::Export { out } => {
            let client = crate::cmd_vm::client(g)?;
            let mut text = String::new();
            let mut after = 0;
            let mut count = 0u64;
            loop {
                let page = client.audit_list(after, Some(PAGE)).await?.entries;
                let Some(last) = page.last() else { break };
                after = last.event.seq;
                for e in &page {
                    text.push_str(&serde_json::to_string(e)?);
                    text.push('\n');
                    count += 1;
                }
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let summary = serde_json::json!({"entries": count, "file": path});
                    print(
                        g.output,
                        &summary,
                        &["ENTRIES", "FILE"],
                        vec![vec![count.to_string(), path.display().to_string()]],
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

/// Checks an export against a public key file. Entries deleted at the end of an export cannot
/// be seen (an export carries no head); compare its last seq with the server's.
fn verify_export(file: &Path, public_key: &Path) -> anyhow::Result<AuditVerifyResponse> {
    let key_text = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    let key = verifying_key_from_hex(&key_text)
        .with_context(|| format!("reading the public key {}", public_key.display()))?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut entries = Vec::new();
    let mut unreadable = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) => {
                unreadable = Some(format!("line {}: {e}", n + 1));
                break;
            }
        }
    }
    let result = verify(&entries, &key).and_then(|v| match unreadable {
        Some(error) => Err(Tampered {
            index: entries.len(),
            seq: v.head.seq + 1,
            reason: Reason::Unreadable { error },
        }),
        None => Ok(v),
    });
    Ok(AuditVerifyResponse {
        ok: result.is_ok(),
        entries: entries.len() as u64,
        key_id: firefleet_audit::key_id(&key),
        first_bad: result.err().map(|t| FirstBad {
            seq: t.seq,
            index: t.index as u64,
            message: t.reason.to_string(),
            reason: t.reason,
        }),
    })
}

/// Prints a check's result; an error (exit status 1) when the log is bad.
fn report(output: Output, r: &AuditVerifyResponse) -> anyhow::Result<()> {
    let verdict = if r.ok { "ok" } else { "TAMPERED" };
    let (seq, why) = match &r.first_bad {
        Some(b) => (b.seq.to_string(), b.message.clone()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    print(
        output,
        r,
        &["RESULT", "ENTRIES", "KEY", "FIRST BAD SEQ", "REASON"],
        vec![vec![
            verdict.to_owned(),
            r.entries.to_string(),
            r.key_id.clone(),
            seq,
            why,
        ]],
    )?;
    match &r.first_bad {
        Some(b) => bail!(
            "audit log tampered: first bad entry is seq {}: {}",
            b.seq,
            b.message
        ),
        None => Ok(()),
    }
}
