//! Repository checks behind `cargo xtask check`.
//!
//! This crate owns the machine check of the layering rule of DESIGN section 1: the pure crates
//! ([`PURE_CRATES`], those that exist) must not depend, directly or transitively through
//! normal dependencies, on an async runtime, an HTTP stack or a database driver
//! ([`FORBIDDEN_DEPS`]), and their `src/` must not touch the filesystem, the clock or tokio
//! ([`FORBIDDEN_SOURCE`]). Dependencies come from `cargo metadata`'s resolve graph, not from
//! reading `Cargo.toml`.
//!
//! It also owns the import graph of the source files ([`graph`]): no import loop between files
//! of `server`, `agent` and `vmm`, the server's layers ([`graph::LAYER_RULES`]), and no file
//! under `crates/*/src` over [`graph::MAX_LINES`] lines. `cargo xtask graph` draws the graph.
//!
//! It is developer tooling: it must never be a dependency of a product crate. The logic is here
//! (testable on fake metadata); `main.rs` only parses the command line and prints.

mod deps;
pub mod graph;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use deps::{check_dependencies, Metadata};
pub use graph::{check_graph, loops, Graph, GraphViolation};
pub use source::{check_source_dir, scan_source};

/// Crates that must stay pure (no I/O, no async, no clock). Those not in the workspace yet are
/// skipped.
pub const PURE_CRATES: &[&str] = &[
    "firefleet-types",
    "firefleet-scheduler",
    "firefleet-autoscaler",
    "firefleet-guard",
    "firefleet-audit",
    "firefleet-policy",
];

/// Packages a pure crate must not reach through normal dependencies.
pub const FORBIDDEN_DEPS: &[&str] = &[
    "tokio",
    "hyper",
    "axum",
    "reqwest",
    "rusqlite",
    "libsqlite3-sys",
    "etcd-client",
    "tonic",
    "sqlx",
    "mio",
];

/// Text a pure crate's `src/` must not contain outside `//` comments.
pub const FORBIDDEN_SOURCE: &[&str] = &["std::fs", "SystemTime::now", "Instant::now", "tokio::"];

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A pure crate reaches a forbidden package; `path` runs from the crate to it.
    Dependency {
        /// The pure crate.
        krate: String,
        /// Package names, the pure crate first and the forbidden package last.
        path: Vec<String>,
    },
    /// A pure crate's source uses something forbidden.
    Source {
        /// The pure crate.
        krate: String,
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The forbidden text found.
        pattern: &'static str,
    },
    /// A rule over the import graph of the source files.
    Graph(GraphViolation),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Dependency { krate, path } => {
                let forbidden = path.last().map_or("?", String::as_str);
                write!(f, "{krate} depends on {forbidden}: {}", path.join(" -> "))
            }
            Violation::Source {
                krate,
                file,
                line,
                pattern,
            } => {
                write!(f, "{krate} uses `{pattern}` at {}:{line}", file.display())
            }
            Violation::Graph(v) => write!(f, "{v}"),
        }
    }
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The pure crates found and checked.
    pub checked: Vec<String>,
    /// Everything wrong; empty when the rule holds.
    pub violations: Vec<Violation>,
}

/// The check could not run.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// `cargo metadata` could not be started.
    #[error("could not run `{cargo} metadata`")]
    SpawnCargo {
        /// The cargo binary.
        cargo: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `cargo metadata` failed.
    #[error("`cargo metadata` failed ({status}): {stderr}")]
    CargoFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Its output was not the JSON we expect.
    #[error("could not parse the output of `cargo metadata`")]
    ParseMetadata(#[source] serde_json::Error),
    /// `cargo metadata` gave no resolve graph.
    #[error("`cargo metadata` gave no dependency resolution")]
    NoResolve,
    /// A source file or directory could not be read.
    #[error("could not read {}", path.display())]
    ReadSource {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `cargo metadata --format-version 1` on the workspace whose root manifest is
/// `manifest_path`.
pub fn cargo_metadata(manifest_path: &Path) -> Result<Metadata, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_path)
        .output()
        .map_err(|source| XtaskError::SpawnCargo {
            cargo: cargo.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(XtaskError::CargoFailed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(XtaskError::ParseMetadata)
}

/// Checks the layering rule on `metadata`: dependencies of every pure crate present, and the
/// source under each one's `src/`.
pub fn check(metadata: &Metadata) -> Result<Report, XtaskError> {
    let mut report = Report {
        checked: Vec::new(),
        violations: check_dependencies(metadata)?,
    };
    for package in metadata.pure_packages() {
        report.checked.push(package.name.clone());
        let src = package
            .manifest_path
            .parent()
            .map(|dir| dir.join("src"))
            .unwrap_or_default();
        report
            .violations
            .extend(check_source_dir(&package.name, &src)?);
    }
    Ok(report)
}

/// [`cargo_metadata`] then [`check`], for the workspace at `root` (its directory), and the
/// rules over its import graph ([`check_graph`]).
pub fn check_workspace(root: &Path) -> Result<Report, XtaskError> {
    let mut report = check(&cargo_metadata(&root.join("Cargo.toml"))?)?;
    let graph = Graph::scan(root)?;
    report
        .violations
        .extend(check_graph(&graph).into_iter().map(Violation::Graph));
    Ok(report)
}
