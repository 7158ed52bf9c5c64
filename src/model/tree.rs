//! The desired state as a value: a sorted map from repository path to file bytes. The same value
//! drives `render`, `--check`, `plan`, `sync` and the snapshot tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Each file's bytes are shared: the files every environment has alike (its quota, limits and
/// network policies) are held once, not once per environment of a full sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    files: BTreeMap<String, Arc<[u8]>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds a file; the path must be relative, `/`-separated and free of `.`/`..` segments, so no
    /// value can ever be written outside the tree's root.
    pub fn insert(&mut self, path: impl Into<String>, bytes: impl AsRef<[u8]>) -> Result<()> {
        // Copied to an allocation of its exact size: a rendered file arrives with its writer's
        // growth slack, and a full sync holds every file.
        self.insert_shared(path, Arc::from(bytes.as_ref()))
    }

    /// Adds a file whose bytes other files share.
    pub fn insert_shared(&mut self, path: impl Into<String>, bytes: Arc<[u8]>) -> Result<()> {
        let path = path.into();
        check_path(&path)?;
        self.files.insert(path, bytes);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(|b| &**b)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), &**b))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Keeps only the files whose path `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.files.retain(|p, _| keep(p));
    }

    /// The files of all of `parts`, a path in more than one from the last: the map is built once
    /// from all of them, where appending part after part would build it again for each.
    pub fn joined(parts: impl IntoIterator<Item = Tree>) -> Tree {
        Tree {
            files: parts.into_iter().flat_map(|t| t.files).collect(),
        }
    }

    /// Adds every file of `other`, replacing files at the same paths.
    pub fn extend(&mut self, other: Tree) {
        self.files.extend(other.files);
    }

    /// The files under a directory prefix (given without a trailing slash).
    pub fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let prefix = format!("{dir}/");
        self.files
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, b)| (p.as_str(), &**b))
    }
}

/// Every file, path and bytes, in path order.
impl IntoIterator for Tree {
    type Item = (String, Arc<[u8]>);
    type IntoIter = std::collections::btree_map::IntoIter<String, Arc<[u8]>>;

    fn into_iter(self) -> Self::IntoIter {
        self.files.into_iter()
    }
}

fn check_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(Error::Render(format!(
            "refusing to write {path:?}: tree paths are relative, '/'-separated and have no '.' or '..' segments"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_the_root_are_refused() {
        let mut tree = Tree::new();
        for bad in ["", "/etc/passwd", "a/../../b", "./a", "a//b", "a\\b", "a/"] {
            assert!(tree.insert(bad, "x").is_err(), "{bad:?}");
        }
        assert!(tree.insert("environments/a/b.yaml", "x").is_ok());
    }

    #[test]
    fn under_lists_only_a_directory_and_not_its_namesakes() {
        let mut tree = Tree::new();
        for p in ["env/a-1/x", "env/a-1/y", "env/a-10/x", "env/a-1x"] {
            tree.insert(p, "").unwrap();
        }
        let got: Vec<_> = tree.under("env/a-1").map(|(p, _)| p).collect();
        assert_eq!(got, ["env/a-1/x", "env/a-1/y"]);
    }
}
