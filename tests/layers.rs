//! The layering `src/lib.rs` describes, held by reading the sources (issue #19):
//! `sqlx` only in `storage/`, no `storage::` in `api/` (handlers go through
//! services), and no I/O in `domain/`. A rule broken by a new line fails here
//! with the file and line; the few places still allowed are listed, each with
//! why, so the list can only shrink.

use std::path::{Path, PathBuf};

/// Places allowed to break a rule today: (rule, file).
const ALLOWED: &[(&str, &str)] = &[
    // A benchmark tool, not the server: it measures PostgreSQL itself.
    ("sqlx", "src/bin/lattice-bench.rs"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every code line (comments dropped) of every file under `src/`, with the
/// file's path relative to the crate root.
fn sources() -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut lines = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").to_owned();
            if !code.trim().is_empty() {
                lines.push((rel.clone(), n + 1, code));
            }
        }
    }
    lines
}

fn allowed(rule: &str, file: &str) -> bool {
    ALLOWED.iter().any(|(r, f)| *r == rule && *f == file)
}

fn check(rule: &str, applies: impl Fn(&str) -> bool, forbidden: &[&str]) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(file, _, _)| applies(file) && !allowed(rule, file))
        .filter(|(_, _, code)| forbidden.iter().any(|f| code.contains(f)))
        .map(|(file, n, code)| format!("{file}:{n}: {}", code.trim()))
        .collect()
}

#[test]
fn sqlx_only_in_storage() {
    let found = check(
        "sqlx",
        |f| !f.starts_with("src/storage/"),
        &["sqlx::", "use sqlx", "sqlx::query"],
    );
    assert!(
        found.is_empty(),
        "sqlx outside storage/ (use storage's re-exports or a storage function):\n{}",
        found.join("\n")
    );
}

#[test]
fn api_does_not_reach_storage() {
    let found = check(
        "storage-in-api",
        |f| f.starts_with("src/api/"),
        &["storage::"],
    );
    assert!(
        found.is_empty(),
        "api/ calls storage directly (go through a service):\n{}",
        found.join("\n")
    );
}

#[test]
fn domain_does_no_io() {
    let found = check(
        "io-in-domain",
        |f| f.starts_with("src/domain/"),
        &[
            "tokio::",
            "sqlx",
            "reqwest::",
            "std::fs",
            "std::net::TcpStream",
            "crate::storage",
            "crate::service",
            "crate::api",
            "crate::app",
            "crate::federation",
            "crate::outbound",
        ],
    );
    assert!(
        found.is_empty(),
        "domain/ must stay pure (no I/O, no upper layers):\n{}",
        found.join("\n")
    );
}

/// The allow-list names files that still break their rule: once one is fixed,
/// it must leave the list.
#[test]
fn the_allow_list_is_current() {
    let lines = sources();
    for (rule, file) in ALLOWED {
        let pattern = match *rule {
            "sqlx" => "sqlx",
            "storage-in-api" => "storage::",
            other => panic!("unknown rule {other}"),
        };
        assert!(
            lines
                .iter()
                .any(|(f, _, code)| f == file && code.contains(pattern)),
            "{file} no longer breaks {rule}: remove it from ALLOWED"
        );
    }
}
