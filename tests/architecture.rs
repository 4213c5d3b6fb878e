//! The module layering holds: the import graph between tollgate's rooms has no cycle, the
//! config schema (the serde model and its helpers) imports no feature, and the request path
//! (`src/proxy/`) uses no serde model type.
//!
//! A room is a top-level module (`cache`, `upstream`, `proxy`, ...), except that `config` is
//! two: the schema (`config::model` and the files it is built from, which every feature's
//! compile step reads) and the rest (`config`: load, validate, compile, which call the
//! features). Edges come from `crate::room::...` paths and, inside `src/config/`, from
//! `super::file` paths; unit test modules and comments are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The files of the config schema room: the model and what it is built from.
const SCHEMA: &[&str] = &[
    "model",
    "units",
    "error",
    "locate",
    "interpolate",
    "address",
    "parse",
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

fn config_room(file_stem: &str) -> String {
    match SCHEMA.contains(&file_stem) {
        true => "config::model".into(),
        false => "config".into(),
    }
}

/// The room of a file under `src/` (`None`: the crate roots, which are not rooms).
fn room_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [root] if root == "main" || root == "lib" => None,
        [dir, file] if dir == "config" => Some(config_room(file)),
        [first, ..] => Some(first.clone()),
        [] => None,
    }
}

/// The code of a file without its unit test module and its comment lines (a doc link is
/// not an import).
fn non_test_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers following each occurrence of `prefix` (`crate::cache::key` -> `[cache, key]`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(from) = room_of(rel) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        let code = &non_test_code(&text);
        let edges = graph.entry(from.clone()).or_default();
        for path in paths_after(code, "crate::") {
            let to = match path.as_slice() {
                ["config", second, ..] => config_room(second),
                ["config"] => "config".into(),
                [first, ..] => first.to_string(),
                [] => continue,
            };
            edges.insert(to);
        }
        if rel.starts_with("config") {
            for path in paths_after(code, "super::") {
                if let Some(first) = path.first() {
                    edges.insert(config_room(first));
                }
            }
        }
        edges.remove(&from);
    }
    graph
}

/// A cycle through `node`, if there is one reachable from it.
fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = stack.iter().position(|n| n == node) {
        let mut cycle = stack[i..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(graph, next, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_import_graph_between_rooms_has_no_cycle() {
    let graph = import_graph();
    assert!(graph.contains_key("proxy") && graph.contains_key("config::model"));
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_config_schema_imports_no_feature() {
    let graph = import_graph();
    let schema = &graph["config::model"];
    assert!(schema.is_empty(), "config::model imports {schema:?}");
}

#[test]
fn the_request_path_uses_no_serde_model_type() {
    let graph = import_graph();
    assert!(
        !graph["proxy"].contains("config::model"),
        "src/proxy/ imports config::model"
    );
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    let cycle = find_cycle(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(cycle.unwrap(), ["a", "b", "c", "a"]);
}
