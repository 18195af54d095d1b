//! The source half of the check: forbidden text in a pure crate's `src/`.

use std::path::{Path, PathBuf};

use crate::{Violation, XtaskError, FORBIDDEN_SOURCE};

/// Scans one file's text. Lines whose first non-blank characters are `//` (comments, docs) are
/// ignored, and so is the part of a line after a `//` that is outside a string literal. `use
/// std::{..., fs, ...}` on one line counts as `std::fs`.
pub fn scan_source(krate: &str, file: &Path, text: &str) -> Vec<Violation> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        let mut hit = |pattern| {
            found.push(Violation::Source {
                krate: krate.to_owned(),
                file: file.to_owned(),
                line: index + 1,
                pattern,
            })
        };
        for pattern in FORBIDDEN_SOURCE {
            if code.contains(pattern) {
                hit(pattern);
            }
        }
        if !code.contains("std::fs") && imports_fs_in_braces(code) {
            hit("std::fs");
        }
    }
    found
}

/// The line without its trailing `//` comment (a `//` inside a string literal is kept).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

fn imports_fs_in_braces(code: &str) -> bool {
    code.find("std::{").is_some_and(|at| {
        code[at..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|token| token == "fs")
    })
}

/// Scans every `.rs` file under `dir` (recursively, in name order).
pub fn check_source_dir(krate: &str, dir: &Path) -> Result<Vec<Violation>, XtaskError> {
    let mut files = Vec::new();
    collect_rs_files(dir, &mut files)?;
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| XtaskError::ReadSource {
            path: file.clone(),
            source,
        })?;
        found.extend(scan_source(krate, &file, &text));
    }
    Ok(found)
}

fn collect_rs_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), XtaskError> {
    let read_err = |source| XtaskError::ReadSource {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        if entry.file_type().map_err(read_err)?.is_dir() {
            collect_rs_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(text: &str) -> Vec<(usize, &'static str)> {
        scan_source("k", Path::new("lib.rs"), text)
            .into_iter()
            .map(|v| match v {
                Violation::Source { line, pattern, .. } => (line, pattern),
                Violation::Dependency { .. } | Violation::Graph(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn forbidden_uses_are_found_with_their_line() {
        let text = "fn a() {}\nlet t = std::time::SystemTime::now();\nuse std::fs::File;\n\
                    let i = Instant::now(); tokio::spawn(x);\nuse std::{collections::HashMap, fs};\n";
        assert_eq!(
            patterns(text),
            [
                (2, "SystemTime::now"),
                (3, "std::fs"),
                (4, "Instant::now"),
                (4, "tokio::"),
                (5, "std::fs")
            ]
        );
    }

    #[test]
    fn comments_are_ignored() {
        let text = "//! Never use std::fs here.\n    /// `Instant::now` is banned\n// tokio::spawn\n\
                    let x = 1; // SystemTime::now would be wrong\nlet url = \"http://x\"; let y = 2;\n\
                    let fsx = std::{a, fsb};\n";
        assert_eq!(patterns(text), []);
    }

    #[test]
    fn a_comment_marker_inside_a_string_does_not_hide_code() {
        assert_eq!(
            patterns("let u = \"a//b\"; std::fs::read(u);"),
            [(1, "std::fs")]
        );
    }
}
