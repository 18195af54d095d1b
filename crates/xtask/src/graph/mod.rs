//! The import graph of the workspace's source files, and the rules drawn over it.
//!
//! A node is one source file under `crates/<crate>/src` (one module). An edge runs from a file to
//! the file of a module that it names: a `use crate::…`, `use super::…`, `use self::…` (brace
//! groups expanded), the same paths written inline in code (`crate::repo::get(…)`), and a child
//! module named by its bare name (`snapshot::take(…)` in `qemu/mod.rs`). A path resolves to the
//! deepest module file it names: `crate::http::vms::create` is an edge to `http/vms.rs`,
//! `crate::http::Router` one to `http/mod.rs`.
//!
//! What does not count: comments and string literals; `#[cfg(test)]` items (test modules may
//! use anything); and an edge from a module to one of its own ancestors (`qemu/snapshot.rs`
//! using `super::QemuRuntime`), which is containment, not a dependency: a child module is part of
//! its parent. With those left out, an import loop is a set of files that reach each other, and
//! there must be none (see [`loops`]).
//!
//! The scan is textual (no macro expansion, no name resolution beyond module paths): glob
//! imports and re-exports count as an edge to the module they name, which is what a reader
//! follows too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::XtaskError;

mod scan;
#[cfg(test)]
mod tests;

use scan::{scan_text, Scan};

/// One source file: a module of a crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The crate's directory name under `crates/` (`server`, `vmm`…).
    pub krate: String,
    /// The module path below the crate root (empty for `lib.rs`/`main.rs`).
    pub path: Vec<String>,
    /// The file, relative to the workspace root.
    pub file: PathBuf,
    /// Its number of lines.
    pub lines: usize,
    /// Declared under `#[cfg(test)]` (itself or an ancestor).
    pub test: bool,
}

impl Module {
    /// `server::http::vms`, `vmm` for a crate root.
    pub fn name(&self) -> String {
        std::iter::once(self.krate.as_str())
            .chain(self.path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("::")
    }

    /// The first segment of the module path (`http` for `http::vms`), "" for the crate root.
    pub fn top(&self) -> &str {
        self.path.first().map_or("", String::as_str)
    }

    fn is_ancestor_of(&self, other: &Module) -> bool {
        self.krate == other.krate
            && self.path.len() < other.path.len()
            && other.path.starts_with(&self.path)
    }
}

/// The graph: modules and the edges between them (indices into `modules`).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Every source file found.
    pub modules: Vec<Module>,
    /// `(from, to)` for every reference from one file to another module's file, ancestors
    /// included (see [`Graph::dependencies`] for the edges that make loops).
    pub edges: BTreeSet<(usize, usize)>,
    /// `(from, crate)` for every workspace crate (`firefleet_store`…) a file names.
    pub crate_refs: BTreeSet<(usize, String)>,
}

impl Graph {
    /// Scans `crates/*/src` under the workspace `root`.
    pub fn scan(root: &Path) -> Result<Graph, XtaskError> {
        let mut graph = Graph::default();
        let mut texts = Vec::new();
        let crates_dir = root.join("crates");
        for krate in read_dir_sorted(&crates_dir)? {
            let src = krate.join("src");
            if !src.is_dir() {
                continue;
            }
            let name = krate
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            collect_rs(&src, &mut files)?;
            for file in files {
                let Some(path) = module_path(&src, &file) else {
                    continue;
                };
                let text =
                    std::fs::read_to_string(&file).map_err(|source| XtaskError::ReadSource {
                        path: file.clone(),
                        source,
                    })?;
                graph.modules.push(Module {
                    krate: name.clone(),
                    path,
                    file: file.strip_prefix(root).unwrap_or(&file).to_path_buf(),
                    lines: text.lines().count(),
                    test: false,
                });
                texts.push(text);
            }
        }
        let scans: Vec<Scan> = graph
            .modules
            .iter()
            .zip(&texts)
            .map(|(m, text)| scan_text(&m.path, text))
            .collect();
        graph.resolve(&scans);
        Ok(graph)
    }

    fn resolve(&mut self, scans: &[Scan]) {
        let index: BTreeMap<(String, Vec<String>), usize> = self
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.krate.clone(), m.path.clone()), i))
            .collect();
        // Test modules: declared under #[cfg(test)], or below one, or named `tests`.
        let mut test_paths: BTreeSet<(String, Vec<String>)> = BTreeSet::new();
        for (m, scan) in self.modules.iter().zip(scans) {
            for child in &scan.test_children {
                let mut p = m.path.clone();
                p.push(child.clone());
                test_paths.insert((m.krate.clone(), p));
            }
        }
        for m in &mut self.modules {
            m.test = m.path.iter().any(|s| s == "tests")
                || test_paths
                    .iter()
                    .any(|(k, p)| *k == m.krate && m.path.starts_with(p));
        }
        // The deepest module a path names, following `use` re-exports (a few steps at most).
        let resolve = |krate: &str, path: &[String]| -> Option<usize> {
            let mut path = path.to_vec();
            for _ in 0..8 {
                let (n, &at) = (0..=path.len())
                    .rev()
                    .find_map(|n| Some((n, index.get(&(krate.to_owned(), path[..n].to_vec()))?)))?;
                match path.get(n).and_then(|name| scans[at].aliases.get(name)) {
                    Some(target) if !target.is_empty() && *target != path[..=n] => {
                        let mut next = target.clone();
                        next.extend_from_slice(&path[n + 1..]);
                        path = next;
                    }
                    _ => return Some(at),
                }
            }
            None
        };
        for (from, scan) in scans.iter().enumerate() {
            let krate = self.modules[from].krate.clone();
            for path in &scan.paths {
                if let Some(to) = resolve(&krate, path) {
                    if to != from {
                        self.edges.insert((from, to));
                    }
                }
            }
            for c in &scan.crates {
                self.crate_refs.insert((from, c.clone()));
            }
        }
    }

    /// The edges that are dependencies: between non-test modules, and not from a module to one
    /// of its ancestors.
    pub fn dependencies(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.edges.iter().copied().filter(|&(a, b)| {
            !self.modules[a].test
                && !self.modules[b].test
                && !self.modules[b].is_ancestor_of(&self.modules[a])
        })
    }

    /// The graph in Graphviz's DOT language, one cluster per crate (`crates` empty: all).
    pub fn dot(&self, crates: &[String]) -> String {
        let keep = |m: &Module| !m.test && (crates.is_empty() || crates.contains(&m.krate));
        let mut out = String::from("digraph imports {\n  rankdir=LR;\n  node [shape=box];\n");
        let mut by_crate: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            if keep(m) {
                by_crate.entry(&m.krate).or_default().push(i);
            }
        }
        for (krate, ids) in by_crate {
            out.push_str(&format!(
                "  subgraph \"cluster_{krate}\" {{\n    label=\"{krate}\";\n"
            ));
            for i in ids {
                out.push_str(&format!("    \"{}\";\n", self.modules[i].name()));
            }
            out.push_str("  }\n");
        }
        for (a, b) in self.dependencies() {
            if keep(&self.modules[a]) && keep(&self.modules[b]) {
                out.push_str(&format!(
                    "  \"{}\" -> \"{}\";\n",
                    self.modules[a].name(),
                    self.modules[b].name()
                ));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// The import loops: sets of two or more files that reach each other through
/// [`Graph::dependencies`] (strongly connected components, Tarjan's algorithm), each sorted by
/// file, the list sorted.
pub fn loops(graph: &Graph) -> Vec<Vec<usize>> {
    let n = graph.modules.len();
    let mut adj = vec![Vec::new(); n];
    for (a, b) in graph.dependencies() {
        adj[a].push(b);
    }
    // Iterative Tarjan.
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut found = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = adj[v].get(*child) {
                *child += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_by(|&a, &b| graph.modules[a].file.cmp(&graph.modules[b].file));
                    found.push(component);
                }
            }
        }
    }
    found.sort_by(|a, b| graph.modules[a[0]].file.cmp(&graph.modules[b[0]].file));
    found
}

/// A rule over the graph, broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphViolation {
    /// Files of a crate whose loops are forbidden reach each other.
    Loop {
        /// The files, sorted.
        files: Vec<PathBuf>,
    },
    /// A file names a module its layer must not.
    Layer {
        /// The importing file.
        from: PathBuf,
        /// The imported module (`server::http`).
        to: String,
        /// The rule, in words.
        rule: &'static str,
    },
    /// A file is longer than [`MAX_LINES`].
    TooLong {
        /// The file.
        file: PathBuf,
        /// Its lines.
        lines: usize,
    },
}

impl fmt::Display for GraphViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphViolation::Loop { files } => {
                let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                write!(f, "import loop: {}", names.join(" <-> "))
            }
            GraphViolation::Layer { from, to, rule } => {
                write!(f, "{} imports {to}: {rule}", from.display())
            }
            GraphViolation::TooLong { file, lines } => {
                write!(
                    f,
                    "{} has {lines} lines (at most {MAX_LINES})",
                    file.display()
                )
            }
        }
    }
}

/// Crates in which an import loop between files is an error.
pub const NO_LOOP_CRATES: &[&str] = &["server", "agent", "vmm"];

/// The most lines a file under `crates/*/src` may have.
pub const MAX_LINES: usize = 800;

/// One layer rule: in `krate`, files under a top-level module in `from` (or, with `from_not`,
/// outside them and outside the crate root) must not name a module whose top-level module is in
/// `to` (or, with `to_not`, any module outside `to` but the crate root).
#[derive(Debug, Clone, Copy)]
pub struct LayerRule {
    /// The crate (its directory name).
    pub krate: &'static str,
    /// Top-level modules the rule applies to.
    pub from: &'static [&'static str],
    /// The rule applies to every file *outside* `from` (and outside the root) instead.
    pub from_not: bool,
    /// Top-level modules named.
    pub to: &'static [&'static str],
    /// The rule forbids every module *outside* `to` (and the root) instead.
    pub to_not: bool,
    /// With `to_not`, the crate root (`lib.rs`'s own items) is forbidden too.
    pub not_root: bool,
    /// The rule, in words, for the message.
    pub rule: &'static str,
}

/// The server's layers (ARCHITECTURE.md, "Layers"): HTTP handlers parse, authorise and call the
/// application layer; controllers call the application layer; repositories know only the store
/// and the types.
pub const LAYER_RULES: &[LayerRule] = &[
    LayerRule {
        krate: "server",
        from: &["http"],
        from_not: true,
        to: &["http"],
        to_not: false,
        not_root: false,
        rule: "nothing outside http/ imports http (the crate root wires the router)",
    },
    LayerRule {
        krate: "server",
        from: &["repo"],
        from_not: false,
        to: &["repo"],
        to_not: true,
        not_root: true,
        rule: "repo imports no other module of the server, nor the crate root's items (only the \
               store, types and api crates)",
    },
    LayerRule {
        krate: "server",
        from: &["http", "app"],
        from_not: false,
        to: &["controllers"],
        to_not: false,
        not_root: false,
        rule: "controllers are not imported by http or app",
    },
];

/// Workspace crates `repo` may name (the store, the types, the wire types).
pub const REPO_CRATES: &[&str] = &["firefleet_store", "firefleet_types", "firefleet_api"];

/// Every rule over `graph`: no loops in [`NO_LOOP_CRATES`], [`LAYER_RULES`], the server's
/// `repo` naming only [`REPO_CRATES`], and no file over [`MAX_LINES`].
pub fn check_graph(graph: &Graph) -> Vec<GraphViolation> {
    let mut out = Vec::new();
    for component in loops(graph) {
        if component
            .iter()
            .any(|&i| NO_LOOP_CRATES.contains(&graph.modules[i].krate.as_str()))
        {
            out.push(GraphViolation::Loop {
                files: component
                    .iter()
                    .map(|&i| graph.modules[i].file.clone())
                    .collect(),
            });
        }
    }
    // Every edge between non-test modules, ancestors included (`crate::now_ms` from `repo`).
    let edges = graph
        .edges
        .iter()
        .filter(|&&(a, b)| !graph.modules[a].test && !graph.modules[b].test);
    for &(a, b) in edges {
        let (from, to) = (&graph.modules[a], &graph.modules[b]);
        for rule in LAYER_RULES {
            if from.krate != rule.krate || to.krate != rule.krate {
                continue;
            }
            let in_from = rule.from.contains(&from.top());
            let applies = if rule.from_not {
                !in_from && !from.path.is_empty()
            } else {
                in_from
            };
            let in_to = rule.to.contains(&to.top());
            let forbidden = if rule.to_not {
                !in_to && (rule.not_root || !to.path.is_empty())
            } else {
                in_to
            };
            if applies && forbidden {
                out.push(GraphViolation::Layer {
                    from: from.file.clone(),
                    to: to.name(),
                    rule: rule.rule,
                });
            }
        }
    }
    for (i, krate) in &graph.crate_refs {
        let m = &graph.modules[*i];
        if m.krate == "server"
            && m.top() == "repo"
            && !m.test
            && !REPO_CRATES.contains(&krate.as_str())
        {
            out.push(GraphViolation::Layer {
                from: m.file.clone(),
                to: krate.clone(),
                rule: "repo names only the store, types and api crates",
            });
        }
    }
    for m in &graph.modules {
        if m.lines > MAX_LINES {
            out.push(GraphViolation::TooLong {
                file: m.file.clone(),
                lines: m.lines,
            });
        }
    }
    out
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    let rd = std::fs::read_dir(dir).map_err(|source| XtaskError::ReadSource {
        path: dir.to_owned(),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), XtaskError> {
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            collect_rs(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `src/lib.rs` → [], `src/a/mod.rs` → [a], `src/a/b.rs` → [a, b]; `src/main.rs` is the root
/// only where there is no `lib.rs`, and `src/bin/` holds other crates (left out).
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match (parts.is_empty(), stem) {
        (true, "lib") => {}
        (true, "main") if !src.join("lib.rs").exists() => {}
        (true, "main") => return None,
        (_, "mod") => {}
        _ => parts.push(stem.to_owned()),
    }
    Some(parts)
}
