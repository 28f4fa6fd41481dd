//! The crate's shape, checked from its source: no module names one of a layer above its
//! own (the layers the module map in `src/lib.rs` lists), so the data path reads top-down
//! and no two modules need each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and its layer: a module may name modules of its own layer or
/// below, never above. One layer's modules must not name each other both ways.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("backoff", 0),
    ("datasets", 1),
    ("log", 1),
    ("actors", 2),
    ("ingest", 2),
    ("projections", 2),
    ("forecast", 3),
    ("live", 3),
    ("metrics", 3),
    ("config", 4),
    ("api", 5),
    ("import", 5),
    ("simulate", 5),
    ("systemd", 6),
    ("telemetry", 6),
    ("app", 7),
    ("cli", 8),
];

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` a file mentions, comments left out.
fn mentions(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_names_one_of_a_layer_above_it_and_none_need_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" || from == "main" {
            continue;
        }
        assert!(
            layer.contains_key(from.as_str()),
            "module {from} is not in LAYERS: give it its layer here and in the module map"
        );
        for to in mentions(&std::fs::read_to_string(file).unwrap()) {
            if to != from && layer.contains_key(to.as_str()) {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| file.display().to_string());
            }
        }
    }
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| layer[from.as_str()] < layer[to.as_str()])
        .map(|((from, to), file)| format!("{from} -> {to} ({file})"))
        .collect();
    assert!(upward.is_empty(), "imports from a layer above: {upward:#?}");
    let both_ways: Vec<String> = edges
        .keys()
        .filter(|(from, to)| from < to && edges.contains_key(&(to.clone(), from.clone())))
        .map(|(from, to)| format!("{from} <-> {to}"))
        .collect();
    assert!(
        both_ways.is_empty(),
        "modules that need each other: {both_ways:?}"
    );
    // The check sees the edges that are there (a test that could not fail would not).
    assert!(edges.contains_key(&("api".to_owned(), "actors".to_owned())));
}
