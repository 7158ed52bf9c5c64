//! Embeds the default `base/` and `overlays/` templates so the binary works standalone.
//! Lists the files at build time, so a template added to the repository is embedded without a code change.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["base", "overlays", "platform"] {
        println!("cargo:rerun-if-changed={dir}");
        collect(&root, Path::new(dir), &mut files);
    }
    files.sort();
    let mut out = String::from("&[\n");
    for rel in &files {
        let rel = rel.to_str().expect("template paths are UTF-8").replace('\\', "/");
        let abs = root.join(&rel);
        writeln!(out, "    ({rel:?}, include_bytes!({:?})),", abs.display().to_string()).unwrap();
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("templates.rs");
    std::fs::write(dest, out).expect("writing the template list");
}

fn collect(root: &Path, rel: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = rel.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                println!("cargo:rerun-if-changed={}", path.display());
                collect(root, &path, files);
            }
            Ok(t) if t.is_file() => files.push(path),
            _ => {}
        }
    }
}
