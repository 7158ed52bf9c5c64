//! What prenv owns in an environments repository, and how the current tree differs from the desired
//! one. Pure: trees in, sets of paths out. Only directories carrying prenv's metadata file with its
//! ownership mark, and the engine wiring directories, are ever compared, written or removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::layout::{BlobId, META_FILE, Place, env_dir};
use crate::model::meta::{EnvMeta, owned_meta};
use crate::model::naming::EnvName;
use crate::model::tree::Tree;

use super::ports::RepoView;

/// The environments prenv created, read from their metadata files. A directory whose metadata file
/// is missing, unreadable or lacks the ownership mark is not prenv's and is left alone.
pub fn existing_envs(current: &Tree) -> BTreeMap<EnvName, EnvMeta> {
    current
        .iter()
        .filter_map(|(path, bytes)| match Place::of(path) {
            Place::EnvFile { env, file } if file == META_FILE => owned_meta(env, bytes),
            _ => None,
        })
        .map(|meta| (meta.env.clone(), meta))
        .collect()
}

/// The part of `current` that prenv owns: the owned environment directories and the wiring.
pub fn owned_part(current: &Tree, owned: &BTreeMap<EnvName, EnvMeta>) -> Tree {
    let mut part = Tree::new();
    for env in owned.keys() {
        for (path, bytes) in current.under(&env_dir(env.as_str())) {
            part.insert(path, bytes).expect("paths of an existing tree are valid");
        }
    }
    for (path, bytes) in current.iter().filter(|(p, _)| Place::of(p).is_wiring()) {
        part.insert(path, bytes).expect("paths of an existing tree are valid");
    }
    part
}

/// What prenv owns in a whole tree held in memory (a rendered directory, a test's repository).
pub fn view_of(current: &Tree, tip: Option<super::ports::Revision>) -> RepoView {
    let envs = existing_envs(current);
    let owned = owned_part(current, &envs)
        .iter()
        .map(|(path, bytes)| (path.to_string(), BlobId::of(bytes)))
        .collect();
    let top_level = current
        .paths()
        .filter_map(|p| p.split('/').next())
        .map(String::from)
        .collect::<BTreeSet<_>>();
    RepoView {
        tip,
        envs,
        owned,
        top_level,
    }
}

/// The difference between the owned part of the current tree and the desired owned tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: BTreeSet<String>,
    pub modified: BTreeSet<String>,
    pub removed: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.modified.len() + self.removed.len()
    }
}

/// Compares the owned part of the current tree with the desired one.
pub fn changes(current_owned: &Tree, desired: &Tree) -> Changes {
    let current: BTreeMap<&str, BlobId> = current_owned.iter().map(|(p, b)| (p, BlobId::of(b))).collect();
    changes_of(&current, desired)
}

/// Compares current owned files, known by their blob ids, with the desired tree.
pub fn changes_of<K: std::borrow::Borrow<str> + Ord>(current: &BTreeMap<K, BlobId>, desired: &Tree) -> Changes {
    let mut c = Changes::default();
    for (path, bytes) in desired.iter() {
        match current.get(path) {
            None => {
                c.added.insert(path.to_string());
            }
            Some(old) if *old != BlobId::of(bytes) => {
                c.modified.insert(path.to_string());
            }
            Some(_) => {}
        }
    }
    for path in current.keys().map(|k| k.borrow()).filter(|p| desired.get(p).is_none()) {
        c.removed.insert(path.to_string());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_json(env: &str, generator: &str) -> String {
        serde_json::json!({
            "generator": generator, "schema": 1, "env": env, "namespace": env, "pr": 1,
            "head_sha": "a".repeat(40), "head_ref": "x", "url": format!("https://{env}.example.com"),
            "image": "i:t", "databases": [], "created_at": "2026-11-24T12:00:00Z",
            "closed_at": null, "merged": false, "preserve_until": null
        })
        .to_string()
    }

    #[test]
    fn only_directories_with_prenvs_mark_are_owned() {
        let mut tree = Tree::new();
        tree.insert("environments/shop-pr-1/prenv.json", meta_json("shop-pr-1", "prenv"))
            .unwrap();
        tree.insert("environments/shop-pr-1/namespace.yaml", "x").unwrap();
        tree.insert(
            "environments/shop-pr-2/prenv.json",
            meta_json("shop-pr-2", "someone-else"),
        )
        .unwrap();
        tree.insert("environments/shop-pr-3/prenv.json", "{not json").unwrap();
        tree.insert("environments/shop-pr-4/prenv.json", meta_json("shop-pr-1", "prenv"))
            .unwrap();
        tree.insert("environments/hand-made/kustomization.yaml", "x").unwrap();
        tree.insert("flux/environments/shop-pr-1.yaml", "x").unwrap();
        tree.insert("flux/environments-extra/x.yaml", "x").unwrap();
        tree.insert("base/deployment.yaml", "x").unwrap();
        let owned = existing_envs(&tree);
        assert_eq!(owned.keys().map(|e| e.as_str()).collect::<Vec<_>>(), ["shop-pr-1"]);
        let part = owned_part(&tree, &owned);
        assert_eq!(
            part.paths().collect::<Vec<_>>(),
            [
                "environments/shop-pr-1/namespace.yaml",
                "environments/shop-pr-1/prenv.json",
                "flux/environments/shop-pr-1.yaml"
            ]
        );
    }

    #[test]
    fn changes_list_added_modified_and_removed_paths() {
        let mut current = Tree::new();
        current.insert("a", "1").unwrap();
        current.insert("b", "2").unwrap();
        let mut desired = Tree::new();
        desired.insert("b", "3").unwrap();
        desired.insert("c", "4").unwrap();
        let c = changes(&current, &desired);
        assert_eq!(c.added, BTreeSet::from(["c".to_string()]));
        assert_eq!(c.modified, BTreeSet::from(["b".to_string()]));
        assert_eq!(c.removed, BTreeSet::from(["a".to_string()]));
        assert!(changes(&desired, &desired).is_empty());
    }
}
