//! The layering `src/lib.rs` describes, held by reading the sources (issue #19):
//! modules name only modules of their own layer or below ([`LAYERS`]), `sqlx`
//! only in `storage/`, no `storage::` in `api/` (handlers go through
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

/// The crate's top-level modules by layer, highest first. A module may name
/// (`crate::x`, or `super::x` at the top level) modules of its own layer and
/// of the layers below, never one above: `api → service → {federation
/// transport, domain, storage, …}`, with the server assembly and the CLI on
/// top. `AppState` is the service layer's (`service::state`).
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["server"],
    &["api"],
    &["service"],
    &["federation"],
    &[
        "domain", "storage", "config", "error", "clock", "outbound", "notify", "metrics",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None` for the crate
/// roots and the separate binaries), and whether it is that module's root file
/// (where `super::` is the crate).
fn module_of(file: &str) -> Option<(&str, bool)> {
    let rel = file.strip_prefix("src/")?;
    if rel == "lib.rs" || rel == "main.rs" || rel.starts_with("bin/") {
        return None;
    }
    match rel.split_once('/') {
        None => Some((rel.strip_suffix(".rs")?, true)),
        Some((dir, rest)) => Some((dir, rest == "mod.rs")),
    }
}

/// The leading identifier of `text`.
fn ident(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a file's code names through `crate::` (also inside
/// `use crate::{a::…, b, …}` groups) and, in a module's root file, `super::`;
/// each with the line it is named on.
fn named_modules(file: &str, code: &str) -> Vec<(usize, String)> {
    let root_file = module_of(file).is_some_and(|(_, root)| root);
    let mut named = Vec::new();
    let mut prefixes = vec!["crate::"];
    if root_file {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let start = at + prefix.len();
            let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
            let rest = &code[start..];
            if rest.starts_with('{') {
                // The items of the group at its own depth, each with its line.
                let (mut depth, mut item_start) = (0usize, start + 1);
                for (i, c) in rest.char_indices().skip(1) {
                    let end = match c {
                        '{' => {
                            depth += 1;
                            continue;
                        }
                        '}' if depth > 0 => {
                            depth -= 1;
                            continue;
                        }
                        '}' => true,
                        ',' if depth == 0 => false,
                        _ => continue,
                    };
                    let item = &code[item_start..start + i];
                    let lead = item.len() - item.trim_start().len();
                    named.push((line_at(item_start + lead), ident(item).to_owned()));
                    item_start = start + i + 1;
                    if end {
                        break;
                    }
                }
            } else {
                named.push((line_at(start), ident(rest).to_owned()));
            }
        }
    }
    named.retain(|(_, m)| !m.is_empty());
    named
}

/// Every place `file` names a module of a higher layer than its own.
fn upward_imports(file: &str, code: &str) -> Vec<String> {
    let Some((module, _)) = module_of(file) else {
        return Vec::new();
    };
    let own = layer_of(module).unwrap_or_else(|| {
        panic!("src/{module} is in no layer: add it to LAYERS in tests/layers.rs")
    });
    named_modules(file, code)
        .into_iter()
        .filter(|(_, named)| named != module && layer_of(named).is_some_and(|l| l < own))
        .map(|(line, named)| format!("{file}:{line}: `{module}` names `{named}`, a higher layer"))
        .collect()
}

/// Every file under `src/` with its code (comments blanked, lines kept).
fn files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|file| {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let code = std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .map(|line| line.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            (rel, code)
        })
        .collect()
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
fn no_layer_names_a_higher_one() {
    let found: Vec<String> = files()
        .iter()
        .filter(|(file, _)| !allowed("layers", file))
        .flat_map(|(file, code)| upward_imports(file, code))
        .collect();
    assert!(
        found.is_empty(),
        "a lower layer names a higher one (move the shared type down, or pass it in):\n{}",
        found.join("\n")
    );
}

/// The layer check on made-up files: it sees upward names in `use` groups,
/// nested groups and paths, and lets downward and same-layer ones pass.
#[test]
fn the_layer_check_catches_upward_names() {
    let storage = "use crate::{\n    config::Config,\n    service::{AppState, event},\n};";
    assert_eq!(
        upward_imports("src/storage/rooms.rs", storage),
        ["src/storage/rooms.rs:3: `storage` names `service`, a higher layer"]
    );
    let federation = "fn f(k: &crate::service::AppState) {}\nuse crate::domain::signing_key;";
    assert_eq!(
        upward_imports("src/federation/client.rs", federation).len(),
        1
    );
    let service = "use crate::{domain::pdu, storage::{self, rooms}, federation::client};";
    assert!(upward_imports("src/service/room.rs", service).is_empty());
    assert_eq!(
        upward_imports("src/service/room.rs", "let r = crate::api::router;").len(),
        1
    );
    // At a module's root, `super::` is the crate; below it, its own module.
    assert_eq!(
        upward_imports("src/config.rs", "use super::api::auth;").len(),
        1
    );
    assert!(upward_imports("src/service/federation/join.rs", "use super::api;").is_empty());
    // Other crates' paths are not ours.
    assert!(upward_imports("src/domain/filter.rs", "use ruma::api::client::filter;").is_empty());
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
        if *rule == "layers" {
            let (_, code) = files().into_iter().find(|(f, _)| f == file).unwrap();
            assert!(
                !upward_imports(file, &code).is_empty(),
                "{file} no longer breaks {rule}: remove it from ALLOWED"
            );
            continue;
        }
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

/// The `async fn`s of `text` whose signature names `Json<Value>` (a handler
/// taking or answering untyped JSON). Line numbers are 1-based.
fn untyped_json_handlers(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("async fn ") {
            continue;
        }
        let end = (i..lines.len())
            .find(|&j| lines[j].contains('{'))
            .unwrap_or(lines.len() - 1);
        let signature = lines[i..=end].join("\n");
        if signature.contains("Json<Value>") || signature.contains("Json<serde_json::Value>") {
            found.push(i + 1);
        }
    }
    found
}

/// Federation handlers take ruma's requests (`FedRuma<T>`) or read a raw body
/// leniently (`FedRequest`), and answer ruma's responses (`RumaResponse<R>`)
/// or a typed struct where ruma's would change the wire (issue #20): none
/// takes or answers `Json<Value>`.
#[test]
fn federation_handlers_are_typed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/api/federation"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for n in untyped_json_handlers(&text) {
            found.push(format!("{}:{n}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "federation handlers with Json<Value>:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_untyped_json_check_catches_a_json_handler() {
    let bare = "async fn f(\n    fed: FedRequest,\n) -> Result<Json<Value>> {\n}";
    assert_eq!(untyped_json_handlers(bare), vec![1]);
    let explained =
        "/// Doc.\n// JSON: ruma drops a field.\nasync fn f() -> Result<Json<Value>> {}";
    assert_eq!(untyped_json_handlers(explained), vec![3]);
    let taking = "async fn f(\n    Json(body): Json<serde_json::Value>,\n) -> Result<()> {}";
    assert_eq!(untyped_json_handlers(taking), vec![1]);
    let typed = "async fn f(r: FedRuma<T>) -> Result<RumaResponse<R>> {}";
    assert!(untyped_json_handlers(typed).is_empty());
    let v1 = "async fn f(fed: FedRequest) -> Result<Json<(u16, Answer)>> {}";
    assert!(untyped_json_handlers(v1).is_empty());
}
