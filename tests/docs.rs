//! The documentation's citations stay true: every repository path that the README, the
//! benchmarks, the specification under docs/, the code's comments or the scripts name exists,
//! and every test they name as `tests/<file>.rs::<name>` is a function of that file.

use std::path::{Path, PathBuf};

/// Where citations may point.
const ROOTS: [&str; 7] = ["src/", "tests/", "scripts/", "docs/", "configs/", "examples/", "assets/"];

/// The files whose text is checked.
fn cited_from(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "BENCHMARKS.md"].iter().map(|f| root.join(f)).collect();
    let mut stack: Vec<PathBuf> = ["docs", "src", "tests", "scripts"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Each (path, test name) cited in `text`: a root of [`ROOTS`] not preceded by a path
/// character (so `torch/csrc/...` and `target/release/examples/...` are not citations).
fn citations(text: &str) -> Vec<(String, Option<String>)> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut found = vec![];
    for root in ROOTS {
        for (at, _) in text.match_indices(root) {
            if text[..at].chars().next_back().is_some_and(|c| is_path(c) || c == '$') {
                continue;
            }
            let rest = &text[at..];
            let end = rest.find(|c: char| !is_path(c)).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(['.', '-']);
            let test = rest[end..].strip_prefix("::").map(|t| {
                let n = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
                t[..n].to_string()
            });
            found.push((path.to_string(), test.filter(|t| !t.is_empty())));
        }
    }
    found
}

#[test]
fn every_cited_path_and_test_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = vec![];
    for file in cited_from(root) {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let shown = file.strip_prefix(root).unwrap().display().to_string();
        for (path, test) in citations(&text) {
            let target = root.join(&path);
            if !target.exists() {
                wrong.push(format!("{shown}: {path} does not exist"));
            } else if let Some(test) = test {
                let body = std::fs::read_to_string(&target).unwrap_or_default();
                if !body.contains(&format!("fn {test}(")) {
                    wrong.push(format!("{shown}: {path} has no test {test}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "stale citations:\n{}", wrong.join("\n"));
}

#[test]
fn citations_are_found_and_look_alikes_are_not() {
    let text = "see `src/optim.rs` and tests/train.rs::adam_matches_pytorch. Not torch/csrc/jit/x.h, \
                not target/release/examples/bench, not $OUT/src/x.";
    assert_eq!(
        citations(text),
        [
            ("src/optim.rs".to_string(), None),
            ("tests/train.rs".to_string(), Some("adam_matches_pytorch".to_string()))
        ]
    );
}
