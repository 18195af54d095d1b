//! Tests of the scanner and the rules over the graph.

use super::scan::{scan_text, Scan};
use super::*;

fn paths(module: &[&str], text: &str) -> Vec<String> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    let mut p: Vec<String> = scan_text(&module, text)
        .paths
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    p.sort();
    p
}

#[test]
fn use_trees_expand() {
    let text = "use crate::{http::{vms, Router}, repo::Repo as R};\nuse super::Thing;\n\
                fn f() { crate::app::vms::create(); self::inner::g(); }";
    assert_eq!(
        paths(&["controllers", "compliance"], text),
        [
            "app::vms::create",
            "controllers::Thing",
            "controllers::compliance::inner::g",
            "http::Router",
            "http::vms",
            "repo::Repo",
        ]
    );
}

#[test]
fn comments_strings_and_test_items_do_not_count() {
    let text = "// use crate::a;\n/* crate::b::c */ let s = \"crate::d::e\";\n\
                let r = r#\"crate::f\"#; let c = '\"'; let l: &'static str = x;\n\
                #[cfg(test)]\nmod tests { use crate::g; }\n\
                #[cfg(test)]\nmod fake;\nuse crate::h;";
    assert_eq!(paths(&[], text), ["h"]);
    let scan = scan_text(&[], text);
    assert!(scan.test_children.contains("fake"));
}

#[test]
fn child_modules_by_bare_name_and_super_inside_inline_modules() {
    let text = "mod snapshot;\nfn f() { snapshot::take(); other::x(); }\n\
                mod inner { use super::Thing; }";
    assert_eq!(
        paths(&["qemu"], text),
        ["qemu::Thing", "qemu::snapshot::take"]
    );
}

fn module(krate: &str, path: &[&str]) -> Module {
    Module {
        krate: krate.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        file: PathBuf::from(format!("crates/{krate}/src/{}.rs", path.join("/"))),
        lines: 10,
        test: false,
    }
}

#[test]
fn loops_ignore_containment_and_find_cycles() {
    let mut g = Graph {
        modules: vec![
            module("server", &["http"]),
            module("server", &["http", "plan"]),
            module("server", &["controllers", "scheduling"]),
            module("server", &["repo"]),
        ],
        ..Graph::default()
    };
    // http/plan -> http (ancestor: containment), http -> http/plan.
    g.edges.insert((1, 0));
    g.edges.insert((0, 1));
    assert!(loops(&g).is_empty());
    // http/plan <-> controllers/scheduling: a loop, and http imported from outside http.
    g.edges.insert((1, 2));
    g.edges.insert((2, 1));
    assert_eq!(loops(&g), vec![vec![2, 1]]);
    let v = check_graph(&g);
    assert!(v.iter().any(|v| matches!(v, GraphViolation::Loop { .. })));
    assert!(
        v.iter()
            .any(|v| v.to_string().contains("nothing outside http/")),
        "{v:?}"
    );
    assert!(v
        .iter()
        .any(|v| v.to_string().contains("controllers are not imported")));
    // repo naming http, and the crate root.
    g.modules.push(module("server", &[]));
    g.edges.insert((3, 0));
    g.edges.insert((3, 4));
    let repo: Vec<String> = check_graph(&g)
        .iter()
        .map(ToString::to_string)
        .filter(|v| v.contains("repo imports no other module"))
        .collect();
    assert_eq!(repo.len(), 2, "{repo:?}");
}

#[test]
fn long_files_are_reported() {
    let mut m = module("types", &["vm"]);
    m.lines = MAX_LINES + 1;
    let g = Graph {
        modules: vec![m],
        ..Graph::default()
    };
    assert!(matches!(
        check_graph(&g).as_slice(),
        [GraphViolation::TooLong { lines, .. }] if *lines == MAX_LINES + 1
    ));
}

#[test]
fn re_exports_resolve_to_the_defining_module() {
    let root = scan_text(
        &[],
        "mod error;\npub use error::ApiError;\npub struct AppState;",
    );
    assert_eq!(
        root.aliases.get("ApiError"),
        Some(&vec!["error".to_owned(), "ApiError".to_owned()])
    );
    let repo = scan_text(&["repo".to_owned()], "use crate::{ApiError, AppState};");
    let mut g = Graph {
        modules: vec![
            module("server", &[]),
            module("server", &["error"]),
            module("server", &["repo"]),
        ],
        ..Graph::default()
    };
    let empty = Scan::default();
    g.resolve(&[root, empty, repo]);
    assert!(g.edges.contains(&(2, 1)), "{:?}", g.edges);
    assert!(g.edges.contains(&(2, 0)), "{:?}", g.edges);
}

#[test]
fn module_paths() {
    let src = Path::new("/nonexistent/src");
    let p = |f: &str| module_path(src, &src.join(f));
    assert_eq!(p("lib.rs"), Some(vec![]));
    assert_eq!(p("a/mod.rs"), Some(vec!["a".to_owned()]));
    assert_eq!(p("a/b.rs"), Some(vec!["a".to_owned(), "b".to_owned()]));
    assert_eq!(p("bin/x.rs"), None);
}
