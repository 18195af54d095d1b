//! The layering rule of DESIGN section 1 holds for the real workspace: `cargo test` fails if a
//! pure crate gains a forbidden dependency or uses the filesystem, the clock or tokio, if the
//! server's layers are crossed (ARCHITECTURE.md, "Layers"), if files of server, agent or vmm
//! import each other in a loop, or if a file under `crates/*/src` passes 800 lines.

use std::path::Path;

#[test]
fn pure_crates_stay_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let report = xtask::check_workspace(&root).unwrap();
    for must in ["firefleet-types", "firefleet-scheduler"] {
        assert!(
            report.checked.iter().any(|c| c == must),
            "{must} was not checked: {:?}",
            report.checked
        );
    }
    let violations: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "layering violations:\n  {}",
        violations.join("\n  ")
    );
}
