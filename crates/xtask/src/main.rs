//! `cargo xtask <command>`: repository checks. See the library for what each check enforces.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str =
    "usage: cargo xtask check\n\n  check   enforce the layering rule of DESIGN section 1 \
                     (pure crates: no tokio/HTTP/DB dependencies, no std::fs or clock in src/)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check"] => check(),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check() -> ExitCode {
    // crates/xtask -> the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match xtask::check_workspace(&root) {
        Ok(report) if report.violations.is_empty() => {
            println!("layering: ok ({} checked)", report.checked.join(", "));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!(
                "layering: {} violation(s) of DESIGN section 1:",
                report.violations.len()
            );
            for v in &report.violations {
                eprintln!("  {v}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprint!("xtask: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprint!(": {cause}");
                source = cause.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}
