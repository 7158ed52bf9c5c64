//! The history of a repository, through git2: every blob of every commit reachable from any ref,
//! for `prenv audit`.

use std::path::Path;

use git2::{ObjectType, Repository};

use super::git::git_err;
use crate::error::Result;

/// Calls `each(commit, path, bytes)` once for every distinct blob whose path `wanted` accepts, in
/// every commit reachable from any ref (and HEAD) of the repository at `path`; returns how many
/// commits it walked. Trees and blobs already seen are not read again.
pub fn each_blob_in_history(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
    mut each: impl FnMut(&str, &str, &[u8]),
) -> Result<usize> {
    let shown = path.display().to_string();
    let shown = shown.as_str();
    let err = |action| move |e| git_err(action, shown, e);
    let repo = Repository::open(path).map_err(err("opening"))?;
    let mut walk = repo.revwalk().map_err(err("walking"))?;
    walk.push_glob("*").map_err(err("walking"))?;
    if let Ok(head) = repo.head()
        && let Some(id) = head.target()
    {
        walk.push(id).map_err(err("walking"))?;
    }
    let mut seen_trees = std::collections::HashSet::new();
    let mut seen_blobs = std::collections::HashSet::new();
    let mut commits = 0;
    for id in walk {
        let id = id.map_err(err("walking"))?;
        commits += 1;
        let name = id.to_string();
        let tree = repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .map_err(err("reading a commit of"))?;
        let mut stack = vec![(tree, String::new())];
        while let Some((tree, prefix)) = stack.pop() {
            if !seen_trees.insert(tree.id()) {
                continue;
            }
            for entry in tree.iter() {
                let file = format!("{prefix}{}", String::from_utf8_lossy(entry.name_bytes()));
                match entry.kind() {
                    Some(ObjectType::Tree) => {
                        let sub = repo.find_tree(entry.id()).map_err(err("reading a tree of"))?;
                        stack.push((sub, format!("{file}/")));
                    }
                    Some(ObjectType::Blob) if wanted(&file) && seen_blobs.insert(entry.id()) => {
                        let blob = repo.find_blob(entry.id()).map_err(err("reading a file of"))?;
                        each(&name, &file, blob.content());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(commits)
}
