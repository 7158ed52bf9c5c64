//! What prenv owns in an environments repository, and how the current tree differs from the desired
//! one. Pure: trees in, sets of paths out. Only directories carrying prenv's metadata file with its
//! ownership mark, and the engine wiring directories, are ever compared, written or removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::layout::{
    ARGOCD_APPLICATIONSET, ARGOCD_DIR, ARGOCD_INDEX, BASE_DIR, BlobId, ENV_FILES, ENVIRONMENTS_DIR, EnvFiles, FLUX_DIR,
    FLUX_INDEX, KUSTOMIZATION_FILE, META_FILE, OVERLAYS_DIR, PROJECTS_DIR, Place, TreeId, argocd_project_of, env_dir,
    flux_project_index, meta_path, project_of_env,
};
use crate::model::meta::{EnvMeta, NotOwned, owned_meta};
use crate::model::naming::EnvName;
use crate::model::tree::Tree;

use super::ports::{Blocked, EnvEntry, FluxIndex, IndexRead, RepoView, Revision};

/// What an entry of `environments/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Submodule,
}

/// One file found inside a directory prenv may own: its path below that directory, its content's
/// id, whether it is a regular file (not a link or a submodule), and whether it is a plain file
/// (a regular file not inside a subdirectory).
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub id: BlobId,
    pub regular: bool,
    pub plain: bool,
}

/// Builds a [`RepoView`] from what a repository holds, the same way for git trees, a rendered
/// directory and an in-memory tree: environment directories first, then the wiring.
#[derive(Debug, Default)]
pub struct Inventory {
    view: RepoView,
    /// The environments found so far, added to the view in one pass.
    known: Vec<(EnvName, EnvEntry)>,
}

impl Inventory {
    pub fn new(tip: Option<Revision>) -> Inventory {
        Inventory {
            view: RepoView {
                tip,
                ..RepoView::default()
            },
            known: Vec::new(),
        }
    }

    /// Makes room for `n` more environments: a repository's listing says how many entries
    /// `environments/` has, and a view of 10,000 grown one doubling at a time copied 6 MB.
    pub fn expect_envs(&mut self, n: usize) {
        self.known.reserve(n);
    }

    pub fn top_level(&mut self, name: &str) {
        self.view.top_level.insert(name.to_string());
    }

    /// A directory prenv writes into exists as something else.
    pub fn obstacle(&mut self, path: &str) {
        self.view.obstacles.insert(path.to_string());
    }

    /// One entry `name` of `environments/`. `meta` is its `prenv.json` (absent: `None`), `files`
    /// everything inside, `tree` the directory's tree id where the store knows it.
    /// Returns the metadata when the entry is prenv's and holds nothing else: then what it gave is a
    /// fact about its tree id, which a store may remember (see [`Inventory::env_known`]).
    pub fn env_entry(
        &mut self,
        name: &str,
        kind: EntryKind,
        tree: Option<TreeId>,
        meta: Option<&[u8]>,
        files: &[Found],
    ) -> Option<&EnvMeta> {
        let what = match kind {
            EntryKind::Dir => None,
            EntryKind::File => Some("a file"),
            EntryKind::Symlink => Some("a symbolic link"),
            EntryKind::Submodule => Some("a submodule"),
        };
        if let Some(what) = what {
            self.view
                .blocked
                .insert(name.to_string(), Blocked::NotPrenvs(what.into()));
            return None;
        }
        let meta_plain = files.iter().any(|f| f.name == META_FILE && f.plain);
        let owned = match meta {
            None => Err(NotOwned::Unmarked),
            Some(_) if !meta_plain => Err(NotOwned::Unreadable("it is not a plain file".into())),
            Some(bytes) => owned_meta(name, bytes),
        };
        let meta = match owned {
            Ok(meta) => meta,
            Err(NotOwned::Unmarked) => {
                let why = "a directory prenv did not make: no prenv.json carrying its mark".into();
                self.view.blocked.insert(name.to_string(), Blocked::NotPrenvs(why));
                return None;
            }
            Err(NotOwned::Unreadable(error)) => {
                tracing::warn!(env = name, %error, "unreadable metadata file; the environment is kept as it is");
                let file = meta_path(name);
                self.view
                    .blocked
                    .insert(name.to_string(), Blocked::Unreadable { file, error });
                return None;
            }
        };
        let dir = env_dir(name);
        let mut clean = true;
        let mut owned = EnvFiles::default();
        for f in files {
            match f.plain.then(|| owned.set(&f.name, f.id)).flatten() {
                Some(()) => {}
                None => {
                    self.view.strays.insert(format!("{dir}/{}", f.name));
                    clean = false;
                }
            }
        }
        self.known.push((meta.env.clone(), EnvEntry::read(meta, tree, owned)));
        let (_, entry) = self.known.last().expect("just added");
        clean.then(|| entry.meta().ok()).flatten()
    }

    /// An environment directory whose tree id the store has read before and found prenv's with
    /// nothing else in it: what it gave then, without reading it again.
    pub fn env_known(&mut self, name: EnvName, entry: EnvEntry) {
        self.known.push((name, entry));
    }

    fn add_known(&mut self) {
        let known = std::mem::take(&mut self.known);
        self.view.envs.extend(known);
    }

    /// The files of `flux/environments/` (`files`, named relative to it at any depth) and the bytes
    /// of its indexes (`indexes`: the root `kustomization.yaml` and each project's
    /// `<project>/kustomization.yaml`, where they are regular files). prenv's there: the indexes;
    /// each project's Kustomization (`<project>.yaml`) when its directory has an index or the root
    /// index lists it; each environment's Kustomization, in its project's directory or (wired
    /// before projects had one) at the top, when its environment is prenv's or the index beside it
    /// lists it (its directory may have been removed by hand). Anything else is a stray. An index
    /// is parsed only when a file beside it is none of these: in the common case none is.
    pub fn flux_wiring(&mut self, indexes: Vec<(String, FluxIndex)>, files: &[Found]) {
        self.add_known();
        for (name, index) in indexes {
            self.view.flux_indexes.insert(format!("{FLUX_DIR}/{name}"), index);
        }
        let mut rest = Vec::new();
        // Files in project directories first: when an environment has a Kustomization in both
        // places, the one at the top is the one the cluster runs (see `layout::flux_legacy_file`).
        let (nested, top): (Vec<&Found>, Vec<&Found>) = files.iter().partition(|f| f.name.contains('/'));
        // The environments' own Kustomizations in their projects' directories (nearly all of the
        // files) are matched with the environments in one ordered walk of both, not by a lookup
        // each: at 10,000 environments the lookups were most of reading the wiring.
        let mut own: Vec<(&str, &Found)> = Vec::with_capacity(nested.len());
        let mut others = Vec::new();
        for f in nested {
            match Place::in_flux(&f.name) {
                Place::FluxWiring { env, legacy: false } if f.regular => own.push((env, f)),
                _ => others.push(f),
            }
        }
        own.sort_by(|a, b| a.0.cmp(b.0));
        {
            let mut envs = self.view.envs.entries_mut().peekable();
            for (env, f) in own {
                while envs.next_if(|(name, _)| name.as_str() < env).is_some() {}
                match envs.next_if(|(name, _)| name.as_str() == env) {
                    Some((_, entry)) => {
                        entry.wiring = Some(f.id);
                        entry.legacy_wiring = false;
                    }
                    None => rest.push((f, Place::FluxWiring { env, legacy: false })),
                }
            }
        }
        for f in others.into_iter().chain(top) {
            // Formatted only where it is kept: an environment's own Kustomization needs none.
            let path = || format!("{FLUX_DIR}/{}", f.name);
            let place = if f.regular {
                Place::in_flux(&f.name)
            } else {
                Place::Other
            };
            match place {
                Place::FluxOther if f.name == KUSTOMIZATION_FILE => {
                    self.view.owned.insert(path(), f.id);
                }
                Place::FluxProject { project } => {
                    let index = flux_project_index(project);
                    if f.name.contains('/') || self.view.flux_indexes.contains_key(&index) {
                        self.view.owned.insert(path(), f.id);
                    } else {
                        rest.push((f, place));
                    }
                }
                Place::FluxWiring { env, legacy } => match self.view.envs.entry_mut(env) {
                    Some(entry) => {
                        if let Some(before) = entry.wiring {
                            self.view.owned.insert(entry.wiring_path(env), before);
                        }
                        entry.wiring = Some(f.id);
                        entry.legacy_wiring = legacy;
                    }
                    None => rest.push((f, place)),
                },
                _ => {
                    self.view.strays.insert(path());
                }
            }
        }
        for (f, place) in rest {
            let (index, name, env) = match place {
                Place::FluxWiring { env, legacy: true } => (FLUX_INDEX.to_string(), env, Some(env)),
                Place::FluxWiring { env, legacy: false } => (
                    flux_project_index(project_of_env(env).unwrap_or_default()),
                    env,
                    Some(env),
                ),
                Place::FluxProject { project } => (FLUX_INDEX.to_string(), project, None),
                _ => continue,
            };
            // Listed by the index beside it, or no index we can read there (then nothing it lists
            // can be trusted away: every Kustomization is kept).
            let listed = self.view.flux_indexes.get(&index).map(|i| i.read().listed.as_ref());
            let listed_here = match listed {
                Some(Some(l)) => l.contains(name),
                Some(None) => true,
                None => false,
            };
            let ours = match env {
                Some(env) if self.view.blocked.contains_key(env) => listed.is_none() || listed_here,
                Some(env) if listed_here => match EnvName::try_from(env.to_string()) {
                    Ok(name) => {
                        self.view.wired_only.insert(name);
                        true
                    }
                    Err(_) => false,
                },
                Some(_) => false,
                None => listed_here,
            };
            let path = format!("{FLUX_DIR}/{}", f.name);
            if ours {
                self.view.owned.insert(path, f.id);
            } else {
                self.view.strays.insert(path);
            }
        }
    }

    /// A project template directory holding a `kustomization.yaml` (`projects/<id>/base`, …).
    pub fn template(&mut self, dir: &str) {
        self.view.templates.insert(dir.to_string());
    }

    /// The files of `argocd/`: the ApplicationSets (one per project, or the one file from before
    /// projects) and their kustomization are prenv's. `legacy` is the content of
    /// `argocd/applicationset.yaml` where there is one: the project it names owns it.
    pub fn argo_wiring(&mut self, files: &[Found], legacy: Option<&[u8]>) {
        self.add_known();
        self.view.argo_legacy_project = legacy.and_then(|bytes| {
            let value: serde_yaml::Value = serde_yaml::from_slice(bytes).ok()?;
            let project = value
                .get("metadata")?
                .get("labels")?
                .get(crate::model::labels::PROJECT)?;
            project.as_str().map(String::from)
        });
        for f in files {
            let path = format!("{ARGOCD_DIR}/{}", f.name);
            let per_project = argocd_project_of(&f.name).is_some();
            if f.plain && (per_project || matches!(path.as_str(), ARGOCD_APPLICATIONSET | ARGOCD_INDEX)) {
                self.view.owned.insert(path, f.id);
            } else {
                self.view.strays.insert(path);
            }
        }
    }

    pub fn finish(mut self) -> RepoView {
        self.add_known();
        self.view
    }
}

/// The files prenv owns in environment `env` once `written` is written and the paths `removed`
/// says are deleted, on top of what `current` holds: each name with its blob id, in the order of
/// [`ENV_FILES`]. With [`TreeId::of_files`] it names the directory git will hold.
pub fn env_files_after(
    env: &str,
    current: &RepoView,
    written: &Tree,
    removed: impl Fn(&str) -> bool,
) -> Vec<(&'static str, BlobId)> {
    let dir = env_dir(env);
    ENV_FILES
        .iter()
        .filter_map(|f| {
            let path = format!("{dir}/{f}");
            let id = match written.get(&path) {
                Some(bytes) => Some(BlobId::of(bytes)),
                None if removed(&path) => None,
                None => current.envs.entry(env).and_then(|e| e.file(f)),
            };
            id.map(|id| (*f, id))
        })
        .collect()
}

/// What a Flux wiring index lists (`resources: [<name>.yaml, …]`), and whether it is one prenv
/// writes: only `apiVersion`, `kind` and `resources`, each entry a file beside the index.
pub fn read_index(bytes: &[u8]) -> IndexRead {
    let unreadable = |why: String| IndexRead {
        listed: None,
        foreign: Some(why),
    };
    let value: serde_yaml::Value = match serde_yaml::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return unreadable(format!("it does not parse as YAML ({e})")),
    };
    let Some(map) = value.as_mapping() else {
        return unreadable("it is not a kustomization (not a mapping)".into());
    };
    let mut listed = BTreeSet::new();
    let mut foreign = None;
    for (key, value) in map {
        match key.as_str() {
            Some("apiVersion" | "kind") => {}
            Some("resources") if value.is_null() => {}
            Some("resources") => {
                let Some(resources) = value.as_sequence() else {
                    return unreadable("its `resources` is not a list".into());
                };
                for r in resources {
                    let file = r.as_str().and_then(|r| r.strip_suffix(".yaml"));
                    match file.filter(|n| !n.is_empty() && !n.contains('/')) {
                        Some(name) => {
                            listed.insert(name.to_string());
                        }
                        None => {
                            foreign
                                .get_or_insert_with(|| format!("it lists {}, which prenv never writes", yaml_text(r)));
                        }
                    }
                }
            }
            _ => {
                foreign.get_or_insert_with(|| format!("it holds the key {}, which prenv never writes", yaml_text(key)));
            }
        }
    }
    IndexRead {
        listed: Some(listed),
        foreign,
    }
}

/// A YAML value as one line, for messages.
fn yaml_text(value: &serde_yaml::Value) -> String {
    match value.as_str() {
        Some(s) => format!("{s:?}"),
        None => serde_yaml::to_string(value)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    }
}

/// What prenv owns in a whole tree held in memory (a rendered directory, a test's repository),
/// classified exactly as a git repository's tree is.
pub fn view_of(current: &Tree, tip: Option<Revision>) -> RepoView {
    let mut inventory = Inventory::new(tip);
    let mut dirs: BTreeMap<&str, Vec<Found>> = BTreeMap::new();
    let mut metas: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let (mut flux, mut argo, mut indexes, mut argo_legacy) = (Vec::new(), Vec::new(), Vec::new(), None);
    let mut files_in_place = Vec::new();
    for (path, bytes) in current.iter() {
        if let Some(top) = path.split('/').next() {
            inventory.top_level(top);
        }
        let found = |name: &str| Found {
            name: name.to_string(),
            id: BlobId::of(bytes),
            regular: true,
            plain: !name.contains('/'),
        };
        if let Some(rest) = path.strip_prefix("environments/") {
            match rest.split_once('/') {
                Some((env, file)) => {
                    dirs.entry(env).or_default().push(found(file));
                    if file == META_FILE {
                        metas.insert(env, bytes);
                    }
                }
                None => files_in_place.push(rest),
            }
        } else if let Some(file) = path.strip_prefix(&format!("{FLUX_DIR}/")) {
            if is_flux_index(file) {
                indexes.push((file.to_string(), FluxIndex::new(bytes.to_vec())));
            }
            flux.push(found(file));
        } else if let Some(file) = path.strip_prefix(&format!("{ARGOCD_DIR}/")) {
            if path == ARGOCD_APPLICATIONSET {
                argo_legacy = Some(bytes);
            }
            argo.push(found(file));
        } else if let Some(dir) = template_dir(path) {
            inventory.template(dir);
        } else if path == ENVIRONMENTS_DIR {
            inventory.obstacle(ENVIRONMENTS_DIR);
        }
    }
    for name in files_in_place {
        inventory.env_entry(name, EntryKind::File, None, None, &[]);
    }
    for (env, files) in &dirs {
        // The id git would give the directory (nested directories aside, which prenv never writes).
        let tree = files
            .iter()
            .all(|f| f.plain)
            .then(|| TreeId::of_files(files.iter().map(|f| (f.name.as_str(), f.id))));
        inventory.env_entry(env, EntryKind::Dir, tree, metas.get(env).copied(), files);
    }
    inventory.flux_wiring(indexes, &flux);
    inventory.argo_wiring(&argo, argo_legacy);
    inventory.finish()
}

/// Whether a file of the Flux wiring directory (named relative to it) is one of its indexes: the
/// root one or a project's.
pub fn is_flux_index(file: &str) -> bool {
    match file.split_once('/') {
        None => file == KUSTOMIZATION_FILE,
        Some((project, name)) => !project.is_empty() && name == KUSTOMIZATION_FILE,
    }
}

/// The template directory a path's `kustomization.yaml` makes (`projects/<id>/base` or
/// `projects/<id>/overlays/<db>`), if it is one.
pub fn template_dir(path: &str) -> Option<&str> {
    let dir = path.strip_suffix("/kustomization.yaml")?;
    let parts: Vec<&str> = dir.split('/').collect();
    let is_template = matches!(
        parts.as_slice(),
        [PROJECTS_DIR, _, BASE_DIR] | [PROJECTS_DIR, _, OVERLAYS_DIR, _]
    );
    is_template.then_some(dir)
}

/// The environments prenv created in a whole tree held in memory.
pub fn existing_envs(current: &Tree) -> BTreeMap<EnvName, EnvMeta> {
    view_of(current, None).envs.to_map()
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

    /// Every changed path.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.added
            .iter()
            .chain(&self.modified)
            .chain(&self.removed)
            .map(String::as_str)
    }

    /// Every changed path with what happens to it: "restored" (added back), "rewrote", "removed".
    pub fn labelled(&self) -> impl Iterator<Item = (&str, &'static str)> {
        let added = self.added.iter().map(|p| (p.as_str(), "restored"));
        let modified = self.modified.iter().map(|p| (p.as_str(), "rewrote"));
        added
            .chain(modified)
            .chain(self.removed.iter().map(|p| (p.as_str(), "removed")))
    }
}

/// Compares the owned part of the current tree with the desired one.
pub fn changes(current_owned: &Tree, desired: &Tree) -> Changes {
    let current: BTreeMap<&str, BlobId> = current_owned.iter().map(|(p, b)| (p, BlobId::of(b))).collect();
    changes_of(&current, desired, |_| None)
}

/// Compares current owned files, known by their blob ids, with the desired tree. `stored` gives
/// the bytes of a current file where they are at hand (the Flux indexes): a desired file equal to
/// them is unchanged without hashing it, and the project index of 10,000 environments is a
/// quarter of a megabyte.
pub fn changes_of<'a, K: std::borrow::Borrow<str> + Ord>(
    current: &BTreeMap<K, BlobId>,
    desired: &Tree,
    stored: impl Fn(&str) -> Option<&'a [u8]>,
) -> Changes {
    // Both walks go in path order, so each set is built from a sorted list in one pass rather
    // than by 60,000 inserts on a full sync.
    let (mut added, mut modified) = (Vec::new(), Vec::new());
    for (path, bytes) in desired.iter() {
        match current.get(path) {
            None => added.push(path.to_string()),
            Some(old) if stored(path) != Some(bytes) && *old != BlobId::of(bytes) => modified.push(path.to_string()),
            Some(_) => {}
        }
    }
    Changes {
        added: added.into_iter().collect(),
        modified: modified.into_iter().collect(),
        removed: current
            .keys()
            .map(|k| k.borrow())
            .filter(|p| desired.get(p).is_none())
            .map(String::from)
            .collect(),
    }
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
    fn only_what_prenv_marked_is_owned_and_everything_else_is_named() {
        let mut tree = Tree::new();
        let files = [
            ("environments/shop-pr-1/prenv.json", meta_json("shop-pr-1", "prenv")),
            ("environments/shop-pr-1/namespace.yaml", "x".into()),
            ("environments/shop-pr-1/notes.txt", "a person's file".into()),
            ("environments/shop-pr-1/sub/kustomization.yaml", "x".into()),
            (
                "environments/shop-pr-2/prenv.json",
                meta_json("shop-pr-2", "someone-else"),
            ),
            ("environments/shop-pr-3/prenv.json", "{not json".into()),
            ("environments/shop-pr-4/prenv.json", meta_json("shop-pr-1", "prenv")),
            ("environments/shop-pr-5/kustomization.yaml", "x".into()),
            (
                "flux/environments/kustomization.yaml",
                "resources:\n- shop-pr-1.yaml\n- shop-pr-3.yaml\n- shop-pr-9.yaml\n".into(),
            ),
            ("flux/environments/shop-pr-1.yaml", "x".into()),
            ("flux/environments/shop-pr-3.yaml", "x".into()),
            ("flux/environments/shop-pr-9.yaml", "x".into()),
            ("flux/environments/mine.yaml", "x".into()),
            ("flux/environments-extra/x.yaml", "x".into()),
            ("base/deployment.yaml", "x".into()),
        ];
        for (path, body) in files {
            tree.insert(path, body).unwrap();
        }
        let view = view_of(&tree, None);
        assert_eq!(view.envs.keys().map(|e| e.as_str()).collect::<Vec<_>>(), ["shop-pr-1"]);
        let mut owned: Vec<String> = view.owned_files(|_| true).into_iter().map(|(p, _)| p).collect();
        owned.sort();
        assert_eq!(
            owned,
            [
                "environments/shop-pr-1/namespace.yaml",
                "environments/shop-pr-1/prenv.json",
                "flux/environments/kustomization.yaml",
                "flux/environments/shop-pr-1.yaml",
                "flux/environments/shop-pr-3.yaml",
                "flux/environments/shop-pr-9.yaml",
            ]
        );
        assert_eq!(
            view.strays.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "environments/shop-pr-1/notes.txt",
                "environments/shop-pr-1/sub/kustomization.yaml",
                "flux/environments/mine.yaml",
            ]
        );
        let blocked: Vec<(&str, bool)> = view
            .blocked
            .iter()
            .map(|(env, b)| (env.as_str(), matches!(b, Blocked::Unreadable { .. })))
            .collect();
        assert_eq!(
            blocked,
            [
                ("shop-pr-2", false),
                ("shop-pr-3", true),
                ("shop-pr-4", true),
                ("shop-pr-5", false)
            ]
        );
        assert_eq!(
            view.wired_only.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            ["shop-pr-9"]
        );
    }

    fn tree_of(files: &[(&str, String)]) -> Tree {
        let mut tree = Tree::new();
        for (path, body) in files {
            tree.insert(*path, body.clone()).unwrap();
        }
        tree
    }

    #[test]
    fn each_projects_wiring_is_read_from_its_own_directory_and_the_legacy_files_stay_the_roots() {
        let tree = tree_of(&[
            ("environments/shop-pr-1/prenv.json", meta_json("shop-pr-1", "prenv")),
            ("environments/shop-pr-2/prenv.json", meta_json("shop-pr-2", "prenv")),
            ("environments/blog-pr-1/prenv.json", meta_json("blog-pr-1", "prenv")),
            (
                "flux/environments/kustomization.yaml",
                "resources:\n- blog.yaml\n- shop.yaml\n- shop-pr-1.yaml\n".into(),
            ),
            ("flux/environments/shop-pr-1.yaml", "legacy".into()),
            ("flux/environments/shop.yaml", "x".into()),
            (
                "flux/environments/shop/kustomization.yaml",
                "resources:\n- shop-pr-2.yaml\n".into(),
            ),
            ("flux/environments/shop/shop-pr-2.yaml", "nested".into()),
            ("flux/environments/shop/blog-pr-1.yaml", "in the wrong directory".into()),
            ("flux/environments/shop/notes/a.yaml", "x".into()),
            ("flux/environments/blog.yaml", "x".into()),
            ("flux/environments/blog/kustomization.yaml", "{{ broken".into()),
            ("flux/environments/blog/blog-pr-1.yaml", "nested".into()),
            (
                "flux/environments/wiki.yaml",
                "someone's, no directory, not listed".into(),
            ),
        ]);
        let view = view_of(&tree, None);
        let shop1 = view.envs.entry("shop-pr-1").unwrap();
        assert!(shop1.legacy_wiring);
        assert_eq!(shop1.wiring, Some(BlobId::of(b"legacy")));
        assert_eq!(shop1.wiring_path("shop-pr-1"), "flux/environments/shop-pr-1.yaml");
        let shop2 = view.envs.entry("shop-pr-2").unwrap();
        assert!(!shop2.legacy_wiring);
        assert_eq!(shop2.wiring_path("shop-pr-2"), "flux/environments/shop/shop-pr-2.yaml");
        assert_eq!(
            view.owned_id("flux/environments/blog/blog-pr-1.yaml"),
            Some(BlobId::of(b"nested"))
        );
        let owned: BTreeSet<&str> = view.owned.keys().map(String::as_str).collect();
        assert_eq!(
            owned,
            BTreeSet::from([
                "flux/environments/blog.yaml",
                "flux/environments/blog/kustomization.yaml",
                "flux/environments/kustomization.yaml",
                "flux/environments/shop.yaml",
                "flux/environments/shop/kustomization.yaml",
            ])
        );
        assert_eq!(
            view.strays.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "flux/environments/shop/blog-pr-1.yaml",
                "flux/environments/shop/notes/a.yaml",
                "flux/environments/wiki.yaml",
            ]
        );
        // Only the root index had to be read (for wiki.yaml); blog's broken one never was.
        assert!(view.flux_indexes["flux/environments/kustomization.yaml"].parsed());
        assert!(!view.flux_indexes["flux/environments/blog/kustomization.yaml"].parsed());
        assert!(!view.flux_indexes["flux/environments/shop/kustomization.yaml"].parsed());
    }

    #[test]
    fn a_kustomization_whose_environment_is_gone_is_prenvs_when_the_index_beside_it_lists_it() {
        let tree = tree_of(&[
            (
                "flux/environments/kustomization.yaml",
                "resources:\n- shop.yaml\n- shop-pr-8.yaml\n".into(),
            ),
            ("flux/environments/shop-pr-8.yaml", "x".into()),
            ("flux/environments/shop-pr-9.yaml", "x".into()),
            (
                "flux/environments/shop/kustomization.yaml",
                "resources:\n- shop-pr-3.yaml\n".into(),
            ),
            ("flux/environments/shop/shop-pr-3.yaml", "x".into()),
            ("flux/environments/shop/shop-pr-4.yaml", "x".into()),
        ]);
        let view = view_of(&tree, None);
        let wired: Vec<&str> = view.wired_only.iter().map(|e| e.as_str()).collect();
        assert_eq!(wired, ["shop-pr-3", "shop-pr-8"]);
        assert_eq!(
            view.strays.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "flux/environments/shop-pr-9.yaml",
                "flux/environments/shop/shop-pr-4.yaml"
            ]
        );
    }

    #[test]
    fn an_index_is_prenvs_only_when_it_holds_nothing_prenv_never_writes() {
        let table: [(&str, Option<&[&str]>, bool); 7] = [
            (
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- a.yaml\n- b-pr-1.yaml\n",
                Some(&["a", "b-pr-1"]),
                false,
            ),
            ("resources: []\n", Some(&[]), false),
            ("resources:\n- a.yaml\n- ../../elsewhere\n", Some(&["a"]), true),
            ("resources:\n- a.yaml\npatches:\n- path: p.yaml\n", Some(&["a"]), true),
            ("<<<<<<< HEAD\nresources:\n- a.yaml\n=======\n", None, true),
            ("resources: a.yaml\n", None, true),
            ("- a.yaml\n", None, true),
        ];
        for (text, listed, foreign) in table {
            let read = read_index(text.as_bytes());
            let want = listed.map(|l| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
            assert_eq!(read.listed, want, "{text}");
            assert_eq!(read.foreign.is_some(), foreign, "{text}: {:?}", read.foreign);
        }
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
