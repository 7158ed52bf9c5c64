//! The default `base/` and `overlays/` templates, embedded at build time from the repository's own
//! directories, so the binary renders a self-contained tree with nothing else installed.

use crate::error::Result;
use crate::model::config::Database;
use crate::model::layout::{BASE_DIR, OVERLAYS_DIR, PROJECTS_DIR};
use crate::model::tree::Tree;

/// Every template file, by its path in the repository.
pub const FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The environment templates (`base/`, `overlays/`) as a tree.
pub fn tree() -> Result<Tree> {
    let mut tree = Tree::new();
    for (path, bytes) in FILES.iter().filter(|(p, _)| !p.starts_with("platform/")) {
        tree.insert(*path, *bytes)?;
    }
    Ok(tree)
}

/// The platform scaffold of one engine (`platform/<engine>/…`), with that prefix removed.
pub fn platform(engine: &str) -> Result<Tree> {
    let prefix = format!("platform/{engine}/");
    let mut tree = Tree::new();
    for (path, bytes) in FILES {
        if let Some(rest) = path.strip_prefix(&prefix) {
            tree.insert(rest, *bytes)?;
        }
    }
    Ok(tree)
}

/// The templates whose top-level directory (`base`, `overlays`) is absent: a team's own win.
pub fn missing(exists: impl Fn(&str) -> bool) -> Result<Tree> {
    let mut tree = Tree::new();
    for (path, bytes) in FILES.iter().filter(|(p, _)| !p.starts_with("platform/")) {
        let top = path.split('/').next().unwrap_or(path);
        if !exists(top) {
            tree.insert(*path, *bytes)?;
        }
    }
    Ok(tree)
}

/// A project's own copy of the default template: `base/` and the overlay of each database it
/// uses, below `projects/<project>/`, for `prenv onboard` to scaffold and the team to edit.
pub fn for_project(project: &str, databases: &[Database]) -> Result<Tree> {
    let mut tree = Tree::new();
    let wanted = |path: &str| {
        path.starts_with(&format!("{BASE_DIR}/"))
            || databases
                .iter()
                .any(|db| path.starts_with(&format!("{OVERLAYS_DIR}/{}/", db.name())))
    };
    for (path, bytes) in FILES.iter().filter(|(p, _)| wanted(p)) {
        tree.insert(format!("{PROJECTS_DIR}/{project}/{path}"), *bytes)?;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_base_and_both_database_overlays_are_embedded() {
        let tree = super::tree().unwrap();
        for path in [
            "base/kustomization.yaml",
            "overlays/postgres/kustomization.yaml",
            "overlays/mariadb/kustomization.yaml",
        ] {
            assert!(tree.get(path).is_some(), "{path} is not embedded");
        }
    }
}
