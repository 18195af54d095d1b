//! `cargo xtask <command>`: repository checks. See the library for what each check enforces.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask check | graph [--loops] [CRATE...]

  check   enforce the layering rule of DESIGN section 1 (pure crates: no tokio/HTTP/DB
          dependencies, no std::fs or clock in src/), the server's layers, no import loop
          between files of server, agent and vmm, and no file in crates/*/src over 800 lines
  graph   print the import graph of the source files (of CRATEs, by directory name) in
          Graphviz DOT; with --loops, list the import loops instead";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check"] => check(),
        ["graph", rest @ ..] => graph(rest),
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

/// crates/xtask -> the workspace root.
fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn graph(args: &[&str]) -> ExitCode {
    let graph = match xtask::Graph::scan(&root()) {
        Ok(g) => g,
        Err(e) => return fail(&e),
    };
    let only_loops = args.contains(&"--loops");
    let crates: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.to_string())
        .collect();
    if !only_loops {
        print!("{}", graph.dot(&crates));
        return ExitCode::SUCCESS;
    }
    let loops = xtask::loops(&graph);
    let mut shown = 0;
    for component in &loops {
        let files: Vec<String> = component
            .iter()
            .map(|&i| &graph.modules[i])
            .filter(|m| crates.is_empty() || crates.contains(&m.krate))
            .map(|m| m.file.display().to_string())
            .collect();
        if !files.is_empty() {
            shown += 1;
            println!("loop: {}", files.join(" <-> "));
        }
    }
    println!(
        "{} files, {} dependencies, {shown} import loop(s)",
        graph.modules.iter().filter(|m| !m.test).count(),
        graph.dependencies().count()
    );
    ExitCode::SUCCESS
}

fn fail(e: &xtask::XtaskError) -> ExitCode {
    eprint!("xtask: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        eprint!(": {cause}");
        source = cause.source();
    }
    eprintln!();
    ExitCode::FAILURE
}

fn check() -> ExitCode {
    match xtask::check_workspace(&root()) {
        Ok(report) if report.violations.is_empty() => {
            println!("layering: ok ({} checked)", report.checked.join(", "));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!(
                "layering: {} violation(s) of DESIGN section 1 and ARCHITECTURE.md:",
                report.violations.len()
            );
            for v in &report.violations {
                eprintln!("  {v}");
            }
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}
