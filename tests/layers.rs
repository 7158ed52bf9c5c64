//! The architecture, checked: each layer of `src/` imports only the layers below it, and each SDK
//! (and the clock) is touched only where the table allows. The layers are the ones in src/lib.rs
//! and the README's layout section.

use std::path::{Path, PathBuf};

/// The layers, bottom first. `error` is the one error type every layer may use.
const LAYERS: &[&str] = &["error", "model", "manifests", "secrets", "core", "adapters", "app"];

/// Where each SDK or clock may appear (path prefixes under src/). `main.rs`, `cli.rs` and `cmd.rs`
/// are the binary's edge.
const CONFINED: &[(&str, &[&str])] = &[
    ("git2::", &["adapters/git.rs", "adapters/git_history.rs"]),
    ("octocrab", &["adapters/github.rs"]),
    ("kube::", &["adapters/kube.rs"]),
    ("std::fs", &["adapters/", "main.rs", "cmd.rs"]),
    ("Utc::now()", &["adapters/", "app/", "cmd.rs"]),
    ("Instant::now()", &["adapters/", "app/"]),
    ("thread::sleep", &["app/"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn layer_of(rel: &str) -> Option<usize> {
    let top = rel.split('/').next()?.trim_end_matches(".rs");
    LAYERS.iter().position(|l| *l == top)
}

/// Every way the file at `rel` (relative to src/) breaks the layering or the confinement rules.
/// Comments and the test module may name anything.
fn violations(rel: &str, text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let own = layer_of(rel);
    let mut wrong = Vec::new();
    for (i, line) in code
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
    {
        let at = format!("src/{rel}:{}", i + 1);
        for (pos, _) in line.match_indices("crate::") {
            let name: String = line[pos + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let (Some(own), Some(theirs)) = (own, LAYERS.iter().position(|l| *l == name))
                && theirs > own
            {
                wrong.push(format!("{at}: {} imports {name}", LAYERS[own]));
            }
        }
        for (needle, allowed) in CONFINED {
            // `adapters::kube::Seen` is prenv's own path, not the SDK.
            let used = line.match_indices(needle).any(|(pos, _)| !line[..pos].ends_with("::"));
            if used && !allowed.iter().any(|a| rel.starts_with(a)) {
                wrong.push(format!("{at}: {needle} outside {allowed:?}"));
            }
        }
    }
    wrong
}

#[test]
fn each_layer_imports_only_the_layers_below_it_and_sdks_stay_in_their_adapters() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        wrong.extend(violations(&rel, &std::fs::read_to_string(file).unwrap()));
    }
    assert!(wrong.is_empty(), "the architecture is broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_catches_what_it_should() {
    let table: &[(&str, &str, usize)] = &[
        ("core/plan.rs", "use crate::adapters::git::EnvRepo;\n", 1),
        ("model/meta.rs", "use crate::core::plan::Plan;\n", 1),
        ("app/sync.rs", "use crate::core::plan::Plan;\n", 0),
        ("manifests/render.rs", "let r = git2::Repository::open(p);\n", 1),
        ("app/watch.rs", "use crate::adapters::kube::Seen;\n", 0),
        ("app/watch.rs", "let c = kube::Client::try_default();\n", 1),
        (
            "core/desired.rs",
            "// crate::app in a comment\nlet t = Utc::now();\n",
            1,
        ),
        (
            "core/desired.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests { fn g() { std::fs::read(\"x\"); } }\n",
            0,
        ),
    ];
    for (rel, text, want) in table {
        assert_eq!(
            violations(rel, text).len(),
            *want,
            "{rel}: {text:?} -> {:?}",
            violations(rel, text)
        );
    }
}
