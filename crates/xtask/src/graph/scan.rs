//! The textual scan of one file: comments and literals blanked, tokens, the module paths named.

use std::collections::{BTreeMap, BTreeSet};

/// A file's scanned text: what it names, before resolution.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Absolute module paths (below the crate root) named by the file.
    pub(super) paths: Vec<Vec<String>>,
    /// Children declared with `mod x;` under `#[cfg(test)]`.
    pub(super) test_children: BTreeSet<String>,
    /// `firefleet_*` crates named.
    pub(super) crates: BTreeSet<String>,
    /// Names a `use` brings into the module, with the absolute path they stand for (so that
    /// `crate::ApiError`, re-exported by the root, resolves to `error.rs`).
    pub(super) aliases: BTreeMap<String, Vec<String>>,
}

/// Comments, string and character literals replaced by spaces (newlines kept).
pub(super) fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && raw_prefix_ok(&b, i) {
            // A raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 3;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                for _ in i..=j.min(b.len() - 1) {
                    out.push(' ');
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br"`), not the end of an identifier.
fn raw_prefix_ok(b: &[char], i: usize) -> bool {
    let ident = |k: usize| b.get(k).is_some_and(|p| p.is_alphanumeric() || *p == '_');
    if i == 0 || !ident(i - 1) {
        return true;
    }
    b[i - 1] == 'b' && (i < 2 || !ident(i - 2))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Path, // ::
    Open,
    Close,
    Comma,
    Semi,
    Hash,
    OpenBracket,
    CloseBracket,
    Other(char),
}

fn tokenize(text: &str) -> Vec<Tok> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
            continue;
        }
        if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(Tok::Path);
            i += 2;
            continue;
        }
        i += 1;
        match c {
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            ';' => out.push(Tok::Semi),
            '#' => out.push(Tok::Hash),
            '[' => out.push(Tok::OpenBracket),
            ']' => out.push(Tok::CloseBracket),
            c if c.is_whitespace() => {}
            c => out.push(Tok::Other(c)),
        }
    }
    out
}

fn is_ident(t: Option<&Tok>, s: &str) -> bool {
    matches!(t, Some(Tok::Ident(x)) if x == s)
}

/// The index just past the item that starts at `i` (through its `;` or its matching `}`).
fn item_end(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Semi if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether the attribute starting at `i` (`#` `[` …) is `#[cfg(test)]`; and the index after it.
fn attribute(toks: &[Tok], i: usize) -> (bool, usize) {
    let mut j = i + 2;
    let mut depth = 1usize;
    let start = j;
    while j < toks.len() && depth > 0 {
        match toks[j] {
            Tok::OpenBracket => depth += 1,
            Tok::CloseBracket => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    let inner = &toks[start..j.saturating_sub(1)];
    let test = inner.len() == 4
        && is_ident(inner.first(), "cfg")
        && inner.get(1) == Some(&Tok::Other('('))
        && is_ident(inner.get(2), "test")
        && inner.get(3) == Some(&Tok::Other(')'));
    (test, j)
}

pub(super) fn scan_text(module: &[String], text: &str) -> Scan {
    let toks = tokenize(&strip(text));
    let mut scan = Scan::default();
    // Children declared with `mod x;` (bare names resolve to them), and test children.
    let mut children: BTreeSet<String> = BTreeSet::new();
    // Drop #[cfg(test)] items first.
    let mut kept: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == Tok::Hash && toks.get(i + 1) == Some(&Tok::OpenBracket) {
            let (test, after) = attribute(&toks, i);
            if test {
                // Skip further attributes and visibility, then the item.
                let mut j = after;
                while toks.get(j) == Some(&Tok::Hash) {
                    j = attribute(&toks, j).1;
                }
                let end = item_end(&toks, j);
                let item = &toks[j..end];
                if let Some(pos) = item.iter().position(|t| is_ident(Some(t), "mod")) {
                    if let (Some(Tok::Ident(name)), Some(Tok::Semi)) =
                        (item.get(pos + 1), item.get(pos + 2))
                    {
                        scan.test_children.insert(name.clone());
                    }
                }
                i = end;
                continue;
            }
            // Keep other attributes out of the scan (paths in derives are not module paths
            // of this crate, but `#[path]`-like text is rare): drop them.
            i = after;
            continue;
        }
        kept.push(toks[i].clone());
        i += 1;
    }
    let toks = kept;
    for w in toks.windows(3) {
        if let [Tok::Ident(m), Tok::Ident(name), Tok::Semi] = w {
            if m == "mod" {
                children.insert(name.clone());
            }
        }
    }
    // Inline modules: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Open => {
                depth += 1;
                if i >= 2 && is_ident(toks.get(i - 2), "mod") {
                    if let Some(Tok::Ident(name)) = toks.get(i - 1) {
                        inline.push((name.clone(), depth));
                    }
                }
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(word) => {
                let after_path = i > 0 && toks[i - 1] == Tok::Path;
                let before_path = toks.get(i + 1) == Some(&Tok::Path);
                if word.starts_with("firefleet_") && !after_path {
                    scan.crates.insert(word.clone());
                }
                if !after_path && before_path {
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(inline.iter().map(|(n, _)| n.clone()));
                    let base = match word.as_str() {
                        "crate" => Some(Vec::new()),
                        "self" => Some(here.clone()),
                        "super" => {
                            let mut p = here.clone();
                            p.pop();
                            Some(p)
                        }
                        w if inline.is_empty() && children.contains(w) => {
                            let mut p = here.clone();
                            p.push(w.to_owned());
                            Some(p)
                        }
                        _ => None,
                    };
                    if let Some(base) = base {
                        let (paths, next) = parse_tree(&toks, i + 2, base);
                        if i > 0 && is_ident(toks.get(i - 1), "use") {
                            for p in &paths {
                                if let Some(name) = p.last() {
                                    scan.aliases.insert(name.clone(), p.clone());
                                }
                            }
                        }
                        scan.paths.extend(paths);
                        i = next.max(i + 1);
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Parses the path (or use tree) that starts at `i` below `base`; returns every full path and
/// the index after it. `super` segments pop.
fn parse_tree(toks: &[Tok], mut i: usize, mut base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut out = Vec::new();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                match s.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => base.push(s.clone()),
                }
                i += 1;
                if toks.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push(base);
                return (out, i);
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Comma) => i += 1,
                        None => break,
                        Some(_) => {
                            let (paths, next) = parse_tree(toks, i, base.clone());
                            out.extend(paths);
                            // Skip `as name` and anything else up to `,` or `}`.
                            i = next;
                            while let Some(t) = toks.get(i) {
                                if matches!(t, Tok::Comma | Tok::Close) {
                                    break;
                                }
                                i += 1;
                            }
                        }
                    }
                }
                if out.is_empty() {
                    out.push(base);
                }
                return (out, i);
            }
            _ => {
                // `crate::*`, `super::*`: the module itself.
                out.push(base);
                return (out, i);
            }
        }
    }
}
