//! The desired state as a value: a sorted map from repository path to file bytes. The same value
//! drives `render`, `--check`, `plan`, `sync` and the snapshot tests.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    files: BTreeMap<String, Vec<u8>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds a file; the path must be relative, `/`-separated and free of `.`/`..` segments, so no
    /// value can ever be written outside the tree's root.
    pub fn insert(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Result<()> {
        let path = path.into();
        check_path(&path)?;
        self.files.insert(path, bytes.into());
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
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
            .map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// Writes every file below `root`, creating directories as needed; unchanged files are not rewritten.
    pub fn write_to(&self, root: &Path) -> Result<usize> {
        let mut written = 0;
        for (path, bytes) in &self.files {
            let target = root.join(path);
            if std::fs::read(&target).is_ok_and(|old| &old == bytes) {
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
            }
            std::fs::write(&target, bytes).map_err(|e| Error::io("writing", &target, e))?;
            written += 1;
        }
        Ok(written)
    }

    /// Reads every regular file below `root/dir` into a tree whose paths start with `dir`.
    pub fn read_dir(root: &Path, dir: &str) -> Result<Tree> {
        let mut tree = Tree::new();
        let start = root.join(dir);
        if !start.exists() {
            return Ok(tree);
        }
        let mut stack = vec![(start, dir.to_string())];
        while let Some((abs, rel)) = stack.pop() {
            let entries = std::fs::read_dir(&abs).map_err(|e| Error::io("listing", &abs, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("listing", &abs, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let (abs, rel) = (entry.path(), format!("{rel}/{name}"));
                let kind = entry.file_type().map_err(|e| Error::io("inspecting", &abs, e))?;
                if kind.is_dir() {
                    stack.push((abs, rel));
                } else if kind.is_file() {
                    let bytes = std::fs::read(&abs).map_err(|e| Error::io("reading", &abs, e))?;
                    tree.insert(rel, bytes)?;
                }
            }
        }
        Ok(tree)
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

    #[test]
    fn a_tree_written_and_read_back_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new();
        tree.insert("d/a.yaml", "a").unwrap();
        tree.insert("d/e/b.yaml", "b").unwrap();
        assert_eq!(tree.write_to(dir.path()).unwrap(), 2);
        assert_eq!(
            tree.write_to(dir.path()).unwrap(),
            0,
            "unchanged files are not rewritten"
        );
        assert_eq!(Tree::read_dir(dir.path(), "d").unwrap(), tree);
    }
}
