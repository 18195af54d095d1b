//! The dependency half of the check: walk `cargo metadata`'s resolve graph from each pure crate
//! along normal dependency edges.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Violation, XtaskError, FORBIDDEN_DEPS, PURE_CRATES};

/// The parts of `cargo metadata --format-version 1` output this check reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Every package in the graph.
    pub packages: Vec<Package>,
    /// Ids of the workspace members.
    pub workspace_members: Vec<String>,
    /// The resolved graph (absent with `--no-deps`).
    pub resolve: Option<Resolve>,
}

/// A package.
#[derive(Debug, Clone, Deserialize)]
pub struct Package {
    /// Opaque package id.
    pub id: String,
    /// Crate name as in `Cargo.toml`.
    pub name: String,
    /// Path of its `Cargo.toml`.
    pub manifest_path: PathBuf,
}

/// The resolved dependency graph.
#[derive(Debug, Clone, Deserialize)]
pub struct Resolve {
    /// One node per package.
    pub nodes: Vec<Node>,
}

/// A package's resolved dependencies.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// The package id.
    pub id: String,
    /// Its dependencies, with their kinds.
    #[serde(default)]
    pub deps: Vec<NodeDep>,
}

/// One dependency edge.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeDep {
    /// The id of the package depended on.
    pub pkg: String,
    /// How it is depended on (normal, dev, build; per target).
    #[serde(default)]
    pub dep_kinds: Vec<DepKind>,
}

/// A dependency kind: `None` is a normal dependency.
#[derive(Debug, Clone, Deserialize)]
pub struct DepKind {
    /// `null` (normal), `"dev"` or `"build"`.
    pub kind: Option<String>,
}

impl NodeDep {
    fn is_normal(&self) -> bool {
        self.dep_kinds.iter().any(|k| k.kind.is_none())
    }
}

impl Metadata {
    /// The workspace members named in [`PURE_CRATES`], in that order.
    pub fn pure_packages(&self) -> Vec<&Package> {
        PURE_CRATES
            .iter()
            .filter_map(|name| {
                self.packages
                    .iter()
                    .find(|p| p.name == *name && self.workspace_members.contains(&p.id))
            })
            .collect()
    }
}

/// For each pure crate, every forbidden package it reaches through normal dependencies, with
/// the shortest path to it.
pub fn check_dependencies(metadata: &Metadata) -> Result<Vec<Violation>, XtaskError> {
    let resolve = metadata.resolve.as_ref().ok_or(XtaskError::NoResolve)?;
    let names: HashMap<&str, &str> = metadata
        .packages
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();
    let graph: HashMap<&str, &Node> = resolve.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let name_of = |id: &str| {
        names
            .get(id)
            .map_or_else(|| id.to_owned(), |n| (*n).to_owned())
    };

    let mut violations = Vec::new();
    for package in metadata.pure_packages() {
        // Breadth first, so the path reported to each package is a shortest one.
        let mut parent: HashMap<&str, Option<&str>> = HashMap::from([(package.id.as_str(), None)]);
        let mut queue = VecDeque::from([package.id.as_str()]);
        while let Some(id) = queue.pop_front() {
            if id != package.id
                && FORBIDDEN_DEPS.contains(&names.get(id).copied().unwrap_or_default())
            {
                let mut path = vec![name_of(id)];
                let mut at = parent.get(id).copied().flatten();
                while let Some(p) = at {
                    path.push(name_of(p));
                    at = parent.get(p).copied().flatten();
                }
                path.reverse();
                violations.push(Violation::Dependency {
                    krate: package.name.clone(),
                    path,
                });
            }
            let Some(node) = graph.get(id) else { continue };
            for dep in node.deps.iter().filter(|d| d.is_normal()) {
                if !parent.contains_key(dep.pkg.as_str()) {
                    parent.insert(dep.pkg.as_str(), Some(id));
                    queue.push_back(dep.pkg.as_str());
                }
            }
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake metadata: `packages` are `(name, [(dep name, kind)])`; `firefleet-types` and
    /// `firefleet-scheduler` are workspace members.
    /// `(package name, its dependencies as (name, kind))`.
    type FakePackage<'a> = (&'a str, &'a [(&'a str, Option<&'a str>)]);

    fn metadata(packages: &[FakePackage<'_>]) -> Metadata {
        let id = |name: &str| format!("registry+fake#{name}@1.0.0");
        let json = serde_json::json!({
            "packages": packages.iter().map(|(name, _)| serde_json::json!({
                "id": id(name), "name": name, "manifest_path": format!("/ws/crates/{name}/Cargo.toml"),
            })).collect::<Vec<_>>(),
            "workspace_members": [id("firefleet-types"), id("firefleet-scheduler")],
            "resolve": { "nodes": packages.iter().map(|(name, deps)| serde_json::json!({
                "id": id(name),
                "deps": deps.iter().map(|(dep, kind)| serde_json::json!({
                    "name": dep.replace('-', "_"), "pkg": id(dep),
                    "dep_kinds": [{ "kind": kind, "target": null }],
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>() },
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn forbidden_transitive_dependency_is_caught_with_its_path() {
        let m = metadata(&[
            ("firefleet-types", &[("serde", None)]),
            (
                "firefleet-scheduler",
                &[("firefleet-types", None), ("helper", None)],
            ),
            ("serde", &[]),
            ("helper", &[("mio", None)]),
            ("mio", &[("libc", None)]),
            ("libc", &[]),
        ]);
        let v = check_dependencies(&m).unwrap();
        assert_eq!(
            v,
            [Violation::Dependency {
                krate: "firefleet-scheduler".into(),
                path: vec!["firefleet-scheduler".into(), "helper".into(), "mio".into()],
            }]
        );
        assert_eq!(
            v[0].to_string(),
            "firefleet-scheduler depends on mio: firefleet-scheduler -> helper -> mio"
        );
    }

    #[test]
    fn clean_graph_and_dev_or_build_dependencies_pass() {
        let m = metadata(&[
            (
                "firefleet-types",
                &[("serde", None), ("tokio", Some("dev"))],
            ),
            (
                "firefleet-scheduler",
                &[
                    ("firefleet-types", None),
                    ("rand", None),
                    ("reqwest", Some("build")),
                ],
            ),
            ("serde", &[]),
            ("rand", &[]),
            ("tokio", &[]),
            ("reqwest", &[("tokio", None)]),
            // Not a pure crate: may use anything.
            ("firefleet-server", &[("tokio", None)]),
        ]);
        assert_eq!(check_dependencies(&m).unwrap(), []);
        let pure: Vec<_> = m.pure_packages().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pure, ["firefleet-types", "firefleet-scheduler"]);
    }

    #[test]
    fn every_forbidden_package_reached_is_reported() {
        let m = metadata(&[
            ("firefleet-types", &[("hyper", None)]),
            ("firefleet-scheduler", &[]),
            ("hyper", &[("tokio", None)]),
            ("tokio", &[("mio", None)]),
            ("mio", &[]),
        ]);
        let paths: Vec<String> = check_dependencies(&m)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            paths,
            [
                "firefleet-types depends on hyper: firefleet-types -> hyper",
                "firefleet-types depends on tokio: firefleet-types -> hyper -> tokio",
                "firefleet-types depends on mio: firefleet-types -> hyper -> tokio -> mio",
            ]
        );
    }

    #[test]
    fn missing_resolve_is_an_error() {
        let mut m = metadata(&[("firefleet-types", &[])]);
        m.resolve = None;
        assert!(matches!(check_dependencies(&m), Err(XtaskError::NoResolve)));
    }
}
