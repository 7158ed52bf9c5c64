//! The environments repository, through git2 ([`EnvStore`]): read what prenv owns at the branch
//! tip, build one commit from the desired tree in git objects, and publish it with
//! compare-and-swap semantics.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use git2::{ErrorCode, ObjectType, Oid, Repository, Signature};

use super::pack::{
    BlobPack, Change as TreeChange, LooseWriter, MODE_FILE, MODE_TREE, RawEntry, find_dir, find_file, raw_entries,
    read_stored_tree, splice_tree,
};
use crate::core::diff::{EntryKind, Found, Inventory, env_files_after, is_flux_index, template_dir};
use crate::core::ports::{Change, EnvStore, FluxIndex, Published, RepoView, Revision, Settled, Verifications};
use crate::error::{Error, Result, Sdk};
use crate::model::config::Git as GitConfig;
use crate::model::layout::{
    ARGOCD_DIR, BASE_DIR, BlobId, ENVIRONMENTS_DIR, FLUX_DIR, META_FILE, OVERLAYS_DIR, PROJECTS_DIR, Place, TreeId,
    flux_project_dir, meta_path,
};
use crate::model::meta::owned_meta;
use crate::model::naming::EnvName;
use crate::model::tree::Tree;

use super::memory::{KnownEnv, RepoMemory};

/// Environment variables an HTTPS token is read from, in order.
pub const TOKEN_VARS: [&str; 2] = ["PRENV_GIT_TOKEN", "GITHUB_TOKEN"];
/// Commits writing more files than this go to the repository as one pack; smaller ones are
/// written loose (a pack per small commit would leave thousands of packs to search).
const PACK_THRESHOLD: usize = 64;
/// A branch lock file older than this was left by a writer that died: git holds it for milliseconds.
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(30);
/// A temporary pack older than this was left by a killed run: a run writes its pack in seconds.
const ORPHAN_PACK: std::time::Duration = std::time::Duration::from_secs(600);
/// How many times git may ask for credentials before we stop offering the same ones again.
const CREDENTIAL_TRIES: u32 = 3;

/// Where the environments repository is: `--repo`, else `git.url`, else the embedded default (a
/// local bare repository under `$XDG_DATA_HOME`, created on first use); and where clones of remote
/// repositories are cached.
#[derive(Debug, Clone)]
pub struct Location {
    pub location: String,
    /// May be created when nothing is there (the embedded default only).
    pub create: bool,
    pub cache_dir: PathBuf,
}

impl Location {
    pub fn resolve(git: &GitConfig, repo: Option<&str>, cache_dir: Option<&Path>) -> Result<Location> {
        let cache_dir = cache_dir
            .map(Path::to_path_buf)
            .or_else(|| git.cache_dir.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| xdg_dir("XDG_CACHE_HOME", ".cache").join("prenv"));
        let (location, create) = match repo.or(git.url.as_deref()) {
            Some(location) => (location.to_string(), false),
            None => {
                let path = default_repo_path();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
                }
                (path.display().to_string(), true)
            }
        };
        Ok(Location {
            location,
            create,
            cache_dir,
        })
    }
}

/// The embedded default environments repository: `$XDG_DATA_HOME/prenv/environments.git`.
pub fn default_repo_path() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share").join("prenv/environments.git")
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(fallback),
    }
}

/// Where the branch lives and how a commit is published there.
enum Target {
    /// A repository on this machine, updated in place: the compare-and-swap of the branch ref is the push.
    Local,
    /// A remote (URL), mirrored into a cache repository and pushed to.
    Remote { url: String },
}

/// The environments repository, opened for one run.
pub struct EnvRepo {
    repo: Repository,
    /// Where `repo` lives, to open a fresh handle.
    git_dir: PathBuf,
    target: Target,
    /// For messages: the path or URL, credentials removed.
    display: String,
    branch: String,
    /// The author of prenv's commits.
    author: Signature<'static>,
    ssh_key: Option<PathBuf>,
    /// Held for the run so two prenv processes on one machine never share a cache clone at once.
    _cache_lock: Option<std::fs::File>,
    /// What earlier runs read and verified here (see [`RepoMemory`]).
    memory: RepoMemory,
    /// The bodies of the large trees the last read listed, by id: the trees that list every
    /// environment (`environments/`, `flux/environments/<project>/`) are read by the listing
    /// and again as the base a commit splices, and at 10,000 environments inflating each twice
    /// was a fifth of a sync of one PR. Cleared at every read, so it holds one tip's trees.
    big_trees: RefCell<HashMap<Oid, Arc<Vec<u8>>>>,
}

/// A tree body at least this large is kept in [`EnvRepo::big_trees`] once read.
const BIG_TREE: usize = 16 << 10;

impl EnvRepo {
    /// Opens `location`: a local path (a bare repository is best; it is created when `create` is set
    /// and nothing exists there) or a URL (`https://`, `ssh://`, `git@host:path`, `file://`), which is
    /// mirrored into a cache below `cache_dir`.
    pub fn open_at(at: &Location, git: &GitConfig) -> Result<EnvRepo> {
        EnvRepo::open(&at.location, git, &at.cache_dir, at.create)
    }

    pub fn open(location: &str, git: &GitConfig, cache_dir: &Path, create: bool) -> Result<EnvRepo> {
        // prenv only links objects it has just written or read: skip libgit2's existence check per entry.
        git2::opts::strict_object_creation(false);
        // Nor re-hash every object it reads: git itself checks hashes in fsck, not on each read, and
        // libgit2's check (SHA-1 with collision detection) cost an incremental sync of 10,000
        // environments a tenth of its time, hashing the two trees that list them all.
        git2::opts::strict_hash_verification(false);
        let display = redact_url(location);
        // libgit2's file:// transport updates refs without a compare-and-swap; a local repository
        // opened in place gets one, so file:// URLs are opened as paths.
        let location = location.strip_prefix("file://").unwrap_or(location);
        let (repo, target, lock) = if is_url(location) {
            let (repo, lock) = open_cache(location, cache_dir, &display)?;
            let url = location.to_string();
            (repo, Target::Remote { url }, Some(lock))
        } else {
            let repo = open_local(Path::new(location), create, &git.branch, &display)?;
            point_head_at_branch(&repo, &git.branch, &display)?;
            (repo, Target::Local, None)
        };
        remove_orphan_packs(repo.path());
        let memory = RepoMemory::load(cache_dir, repo.path());
        Ok(EnvRepo {
            memory,
            big_trees: RefCell::default(),
            git_dir: repo.path().to_path_buf(),
            repo,
            target,
            display,
            branch: git.branch.clone(),
            author: signature(git)?,
            ssh_key: git.ssh_key.as_ref().map(PathBuf::from),
            _cache_lock: lock,
        })
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// The current tip of the branch, fetched first for a remote.
    fn tip(&mut self) -> Result<Option<Oid>> {
        let name = match &self.target {
            Target::Local => self.branch_ref(),
            Target::Remote { url } => {
                let mut remote = self
                    .repo
                    .remote_anonymous(url)
                    .map_err(|e| git_err("reaching", &self.display, e))?;
                let refspec = format!("+{}:{}", self.branch_ref(), self.tracking_ref());
                let mut options = git2::FetchOptions::new();
                options.remote_callbacks(self.callbacks());
                remote
                    .fetch(&[refspec.as_str()], Some(&mut options), None)
                    .map_err(|e| git_err("fetching from", &self.display, e))?;
                // A remote without the branch yet leaves the tracking ref as it was: clear it.
                let advertised = remote
                    .list()
                    .map_err(|e| git_err("listing branches of", &self.display, e))?;
                let has_branch = advertised.iter().any(|h| h.name() == self.branch_ref());
                if let Ok(head) = remote.default_branch()
                    && has_branch
                    && head.as_str().ok() != Some(self.branch_ref().as_str())
                {
                    tracing::warn!(repo = %self.display, head = ?head.as_str().ok(), branch = %self.branch, "the remote's default branch is not the one prenv commits to: a clone checks out something else; set the default branch in the repository's settings");
                }
                if !has_branch {
                    if let Ok(mut r) = self.repo.find_reference(&self.tracking_ref()) {
                        r.delete()
                            .map_err(|e| git_err("clearing tracking branch of", &self.display, e))?;
                    }
                    return Ok(None);
                }
                self.tracking_ref()
            }
        };
        let id = match self.repo.refname_to_id(&name) {
            Ok(id) => Some(id),
            Err(e) if e.code() == ErrorCode::NotFound => None,
            Err(e) => return Err(git_err("reading branch of", &self.display, e)),
        };
        // The tip's objects may sit in a pack written a moment ago (by another process, or by the
        // fetch); libgit2 notices new packs by the pack directory's mtime, in whole seconds. A fresh
        // handle opened after reading the ref sees every object the tip needs.
        self.repo = Repository::open(&self.git_dir).map_err(|e| git_err("reopening", &self.display, e))?;
        Ok(id)
    }

    /// Reads what prenv owns at `tip` without reading any file it does not need: metadata files and
    /// the Flux index are parsed, every other file is known by its blob id only.
    fn read_at(&self, tip: Option<Oid>) -> Result<RepoView> {
        self.big_trees.borrow_mut().clear();
        let mut inventory = Inventory::new(tip.map(|t| Revision(t.to_string())));
        let Some(tip) = tip else { return Ok(inventory.finish()) };
        let err = |e| git_err("reading the tree of", &self.display, e);
        let root = self.repo.find_commit(tip).and_then(|c| c.tree()).map_err(err)?;
        for entry in root.iter() {
            if let Ok(name) = entry.name() {
                inventory.top_level(name);
            }
        }
        if let Some(envs) = self.subtree_id(&root, ENVIRONMENTS_DIR, &mut inventory)? {
            let body = self.tree_body(envs)?;
            let entries = self.entries_of(envs, &body)?;
            inventory.expect_envs(entries.len());
            for entry in &entries {
                self.read_env_entry(&mut inventory, entry)?;
            }
        }
        if let Some(flux) = self.subtree(&root, FLUX_DIR, &mut inventory)? {
            // The indexes are read (one blob each: the root's and one per project) and parsed
            // only where the inventory or the plan needs what one lists.
            let files = self.files(&flux)?;
            let mut indexes = Vec::new();
            for f in files.iter().filter(|f| f.regular && is_flux_index(&f.name)) {
                let id = Oid::from_bytes(&f.id.0).map_err(err)?;
                let blob = self.repo.find_blob(id).map_err(err)?;
                indexes.push((f.name.clone(), FluxIndex::stored(f.id, blob.content())));
            }
            inventory.flux_wiring(indexes, &files);
        }
        if let Some(argo) = self.subtree(&root, ARGOCD_DIR, &mut inventory)? {
            let legacy = match argo.get_name("applicationset.yaml") {
                Some(e) if e.kind() == Some(ObjectType::Blob) => Some(self.repo.find_blob(e.id()).map_err(err)?),
                _ => None,
            };
            inventory.argo_wiring(&self.files(&argo)?, legacy.as_ref().map(|b| b.content()));
        }
        self.read_templates(&root, &mut inventory)?;
        Ok(inventory.finish())
    }

    /// Reads the tree at `tip`, whose root tree `root` an earlier run recorded as `settled`, for
    /// the environments `names` names only: their directories and their Kustomizations, the
    /// top-level entries and the templates. Nothing every environment shares is read (a partial
    /// view leaves it as it is), and no listing of thousands of entries becomes strings: the
    /// two large trees are searched for the names.
    fn read_partial(
        &self,
        tip: Oid,
        root: &git2::Tree<'_>,
        names: &BTreeSet<String>,
        settled: &Settled,
    ) -> Result<RepoView> {
        self.big_trees.borrow_mut().clear();
        let mut inventory = Inventory::new(Some(Revision(tip.to_string())));
        for entry in root.iter() {
            if let Ok(name) = entry.name() {
                inventory.top_level(name);
            }
        }
        let mut present = Vec::new();
        if let Some(envs) = self.subtree_id(root, ENVIRONMENTS_DIR, &mut inventory)? {
            let body = self.tree_body(envs)?;
            let entries = self.entries_of(envs, &body)?;
            // From git, not the memory: its file is not read for a few directories (see
            // `RepoMemory::read_records`).
            for name in names {
                if let Some(entry) = find_dir(&entries, name) {
                    let id = Oid::from_bytes(&entry.id_bytes())
                        .map_err(|e| git_err("reading the tree of", &self.display, e))?;
                    self.read_env(&mut inventory, name, id)?;
                    present.push(name.as_str());
                }
            }
        }
        let mut wiring = Vec::new();
        if !present.is_empty()
            && let Ok(dir) = root.get_path(Path::new(&flux_project_dir(&settled.project)))
            && dir.kind() == Some(ObjectType::Tree)
        {
            let body = self.tree_body(dir.id())?;
            let entries = self.entries_of(dir.id(), &body)?;
            // Named as a listing of the wiring names them: relative to its directory.
            let relative = &settled.project;
            for env in present {
                let file = format!("{env}.yaml");
                if let Some(entry) = find_file(&entries, &file) {
                    wiring.push(Found {
                        regular: raw_kind(entry.mode()) == EntryKind::File,
                        plain: false,
                        name: format!("{relative}/{file}"),
                        id: BlobId(entry.id_bytes()),
                    });
                }
            }
        }
        inventory.flux_wiring(Vec::new(), &wiring);
        self.read_templates(root, &mut inventory)?;
        let mut view = inventory.finish();
        view.settled = Some(settled.clone());
        Ok(view)
    }

    /// One entry of `environments/` into `inventory`: a directory read before (same tree id:
    /// same bytes) from memory, any other read from git.
    fn read_env_entry(&self, inventory: &mut Inventory, entry: &RawEntry<'_>) -> Result<()> {
        let Ok(name) = std::str::from_utf8(entry.name()) else {
            return Ok(());
        };
        let kind = raw_kind(entry.mode());
        if kind != EntryKind::Dir {
            inventory.env_entry(name, kind, None, None, &[]);
            return Ok(());
        }
        let tree = TreeId(entry.id_bytes());
        if let Some(entry) = self.memory.env(tree, name)
            && let Ok(name) = EnvName::try_from(name.to_string())
        {
            inventory.env_known(name, entry);
            return Ok(());
        }
        let id = Oid::from_bytes(&tree.0).map_err(|e| git_err("reading the tree of", &self.display, e))?;
        self.read_env(inventory, name, id)
    }

    /// Records which projects have a template of their own (`projects/<id>/base`, …): only
    /// tree entries are looked at, no file is read.
    fn read_templates(&self, root: &git2::Tree<'_>, inventory: &mut Inventory) -> Result<()> {
        let Ok(projects) = root.get_path(Path::new(PROJECTS_DIR)) else {
            return Ok(());
        };
        if projects.kind() != Some(ObjectType::Tree) {
            return Ok(());
        }
        let err = |e| git_err("reading the tree of", &self.display, e);
        let projects = self.repo.find_tree(projects.id()).map_err(err)?;
        for project in projects.iter().filter(|e| e.kind() == Some(ObjectType::Tree)) {
            let Ok(name) = project.name() else { continue };
            let tree = self.repo.find_tree(project.id()).map_err(err)?;
            let mut dirs = vec![format!("{BASE_DIR}/kustomization.yaml")];
            if let Some(overlays) = tree
                .get_name(OVERLAYS_DIR)
                .filter(|e| e.kind() == Some(ObjectType::Tree))
            {
                let overlays = self.repo.find_tree(overlays.id()).map_err(err)?;
                dirs.extend(
                    overlays
                        .iter()
                        .filter_map(|e| Some(format!("{OVERLAYS_DIR}/{}/kustomization.yaml", e.name().ok()?))),
                );
            }
            for rel in dirs {
                if tree
                    .get_path(Path::new(&rel))
                    .is_ok_and(|e| e.kind() == Some(ObjectType::Blob))
                    && let Some(dir) = template_dir(&format!("{PROJECTS_DIR}/{name}/{rel}"))
                {
                    inventory.template(dir);
                }
            }
        }
        Ok(())
    }

    /// Reads environment directory `name` (tree `id`) into `inventory`, and remembers what it gave
    /// when it is prenv's and holds nothing else.
    fn read_env(&self, inventory: &mut Inventory, name: &str, id: Oid) -> Result<()> {
        let err = |e| git_err("reading the tree of", &self.display, e);
        let dir = self.repo.find_tree(id).map_err(err)?;
        let files = self.files(&dir)?;
        let meta = match dir.get_name(META_FILE) {
            Some(m) if m.kind() == Some(ObjectType::Blob) => Some(self.repo.find_blob(m.id()).map_err(err)?),
            _ => None,
        };
        let tree = TreeId(oid_bytes(id));
        let clean = inventory.env_entry(
            name,
            EntryKind::Dir,
            Some(tree),
            meta.as_ref().map(|b| b.content()),
            &files,
        );
        if let Some(known) = clean.and_then(|meta| KnownEnv::new(meta, files.iter().map(|f| (f.name.as_str(), f.id)))) {
            self.memory.remember_env(tree, known);
        }
        Ok(())
    }

    /// Records what the environment directories `change` touched hold at `commit`, just written
    /// on top of `base`, from the bytes written and what `base` held, so the next read of them
    /// costs nothing. Nothing is read back but two trees (objects in a fresh pack are expensive to
    /// read); a directory whose tree id is not exactly the one those files give is not remembered.
    fn remember_written(&self, commit: Oid, base: &RepoView, change: &Change) -> Result<()> {
        let touched: BTreeSet<&str> = change
            .upserts
            .paths()
            .chain(change.removals.iter().map(String::as_str))
            .filter_map(|p| Place::of(p).env())
            .collect();
        if touched.is_empty() {
            return Ok(());
        }
        let err = |e| git_err("reading the tree of", &self.display, e);
        let root = self.repo.find_commit(commit).and_then(|c| c.tree()).map_err(err)?;
        let Ok(entry) = root.get_path(Path::new(ENVIRONMENTS_DIR)) else {
            return Ok(());
        };
        let body = self.tree_body(entry.id())?;
        let dirs = self.entries_of(entry.id(), &body)?;
        let removed: BTreeSet<&str> = change.removals.iter().map(String::as_str).collect();
        let touched: Vec<&str> = touched.into_iter().collect();
        // Each directory's metadata parsed and files hashed again: after a full sync, 10,000 of
        // them, on every core.
        let known = |env: &str| {
            let dir = find_dir(&dirs, env)?;
            let meta = match change.upserts.get(&meta_path(env)) {
                Some(bytes) => owned_meta(env, bytes).ok(),
                None => base.envs.get(env).cloned(),
            };
            let files = env_files_after(env, base, &change.upserts, |p| removed.contains(p));
            let tree = TreeId(dir.id_bytes());
            if TreeId::of_files(files.iter().copied()) != tree {
                return None;
            }
            Some((tree, KnownEnv::new(&meta?, files)?))
        };
        for (tree, known) in crate::model::parallel::map(&touched, |env| known(env))
            .into_iter()
            .flatten()
        {
            self.memory.remember_env(tree, known);
        }
        Ok(())
    }

    /// Every file below `tree`, with its path relative to it; links, submodules and files in
    /// subdirectories are marked as not plain.
    fn files(&self, tree: &git2::Tree<'_>) -> Result<Vec<Found>> {
        let mut out = Vec::new();
        let mut stack = vec![(tree.id(), String::new())];
        while let Some((id, prefix)) = stack.pop() {
            let body = self.tree_body(id)?;
            for entry in self.entries_of(id, &body)? {
                let Ok(name) = std::str::from_utf8(entry.name()) else {
                    continue;
                };
                let path = [prefix.as_str(), name].concat();
                let id = entry.id_bytes();
                match raw_kind(entry.mode()) {
                    EntryKind::Dir => {
                        let sub = Oid::from_bytes(&id).map_err(|e| git_err("reading the tree of", &self.display, e))?;
                        stack.push((sub, [path.as_str(), "/"].concat()));
                    }
                    kind => out.push(Found {
                        regular: kind == EntryKind::File,
                        plain: kind == EntryKind::File && prefix.is_empty(),
                        name: path,
                        id: BlobId(id),
                    }),
                }
            }
        }
        Ok(out)
    }

    /// The body of tree `id` as stored; a large one is read once per tip (see `big_trees`).
    fn tree_body(&self, id: Oid) -> Result<Arc<Vec<u8>>> {
        if let Some(body) = self.big_trees.borrow().get(&id) {
            return Ok(body.clone());
        }
        if let Some(body) = read_stored_tree(&self.repo.path().join("objects"), &oid_bytes(id), BIG_TREE) {
            let body = Arc::new(body);
            self.big_trees.borrow_mut().insert(id, body.clone());
            return Ok(body);
        }
        let err = |e| git_err("reading the tree of", &self.display, e);
        let odb = self.repo.odb().map_err(err)?;
        let object = odb.read(id).map_err(err)?;
        if object.kind() != ObjectType::Tree {
            let what = format!(
                "object {id} is a {}, not a tree; run `git fsck` on the repository",
                object.kind()
            );
            return Err(err(git2::Error::new(
                ErrorCode::Invalid,
                git2::ErrorClass::Object,
                what,
            )));
        }
        let body = Arc::new(object.data().to_vec());
        if body.len() >= BIG_TREE {
            self.big_trees.borrow_mut().insert(id, body.clone());
        }
        Ok(body)
    }

    /// The entries of tree `id`'s `body`, or an error naming the tree when it does not parse.
    fn entries_of<'b>(&self, id: Oid, body: &'b [u8]) -> Result<Vec<RawEntry<'b>>> {
        raw_entries(body).ok_or_else(|| {
            let what = format!("tree {id} is not a well-formed git tree; run `git fsck` on the repository");
            git_err(
                "reading the tree of",
                &self.display,
                git2::Error::new(ErrorCode::Invalid, git2::ErrorClass::Object, what),
            )
        })
    }

    /// The directory at `path`, `None` when absent; something else there is an obstacle.
    fn subtree(&self, root: &git2::Tree<'_>, path: &str, inventory: &mut Inventory) -> Result<Option<git2::Tree<'_>>> {
        self.subtree_id(root, path, inventory)?
            .map(|id| self.repo.find_tree(id))
            .transpose()
            .map_err(|e| git_err("reading the tree of", &self.display, e))
    }

    /// The id of the directory at `path` (not read), `None` when absent; something else there
    /// is an obstacle.
    fn subtree_id(&self, root: &git2::Tree<'_>, path: &str, inventory: &mut Inventory) -> Result<Option<Oid>> {
        match root.get_path(Path::new(path)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Tree) => Ok(Some(entry.id())),
            Ok(_) => {
                inventory.obstacle(path);
                Ok(None)
            }
            Err(e) if e.code() == ErrorCode::NotFound => {
                // A file where a parent directory belongs (`flux` a file) blocks the path too.
                if let Some((parent, _)) = path.rsplit_once('/')
                    && root
                        .get_path(Path::new(parent))
                        .is_ok_and(|p| p.kind() != Some(ObjectType::Tree))
                {
                    inventory.obstacle(parent);
                }
                Ok(None)
            }
            Err(e) => Err(git_err("reading the tree of", &self.display, e)),
        }
    }

    /// The bytes of a file at `tip` (for diffs); `None` when it is absent.
    fn read_file_at(&self, tip: Option<Oid>, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(tip) = tip else { return Ok(None) };
        let err = |e| git_err("reading a file of", &self.display, e);
        let root = self.repo.find_commit(tip).and_then(|c| c.tree()).map_err(err)?;
        match root.get_path(Path::new(path)) {
            Ok(entry) => Ok(Some(self.repo.find_blob(entry.id()).map_err(err)?.content().to_vec())),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Writes one commit on top of `base` that adds or replaces `upserts` and deletes `removals`;
    /// only the trees on changed paths are rewritten, each in one pass over its stored body.
    fn commit(&self, base: Option<Oid>, upserts: &Tree, removals: &[String], message: &str) -> Result<Oid> {
        let err = |e| git_err("writing a commit to", &self.display, e);
        let parent = base.map(|id| self.repo.find_commit(id)).transpose().map_err(err)?;
        let base_tree = parent.as_ref().map(|c| c.tree_id());
        let odb = self.repo.odb().map_err(err)?;
        // A few objects are cheaper written loose than packed; many go to the repository as one
        // pack (see `adapters/pack.rs`).
        let mut sink = if upserts.len() > PACK_THRESHOLD {
            let dir = self.repo.path().join("objects/pack");
            Sink::Pack(Box::new(
                BlobPack::new(&dir).map_err(|e| Error::io("writing a pack to", &dir, e))?,
            ))
        } else {
            Sink::Loose(LooseWriter::new(&self.repo.path().join("objects")))
        };
        let mut root = Dir::default();
        match &mut sink {
            Sink::Pack(pack) => {
                let (paths, contents): (Vec<&str>, Vec<&[u8]>) = upserts.iter().unzip();
                let ids = pack
                    .add_all(&contents)
                    .map_err(|e| git_err("writing a commit to", &self.display, pack_error(e)))?;
                for (path, id) in paths.into_iter().zip(ids) {
                    root.insert(path, Some(id.0));
                }
            }
            Sink::Loose(_) => {
                for (path, bytes) in upserts.iter() {
                    root.insert(path, Some(sink.write(ObjectType::Blob, bytes).map_err(err)?));
                }
            }
        }
        for path in removals {
            root.insert(path, None);
        }
        let tree = match self.write_tree(&mut sink, base_tree, &root)? {
            Some(id) => id,
            None => sink.write(ObjectType::Tree, &[]).map_err(err)?,
        };
        let mut body = format!("tree {}\n", hex::encode(tree));
        if let Some(p) = &parent {
            body.push_str(&format!("parent {}\n", p.id()));
        }
        let who = signature_line(&self.author);
        body.push_str(&format!("author {who}\ncommitter {who}\n\n{message}"));
        let commit = sink.write(ObjectType::Commit, body.as_bytes()).map_err(err)?;
        if let Sink::Pack(pack) = sink {
            let dir = self.repo.path().join("objects/pack");
            pack.finish(&dir).map_err(|e| Error::io("writing a pack to", &dir, e))?;
            // libgit2 also rescans on a miss; now, so the next read finds the commit at once.
            odb.refresh().map_err(err)?;
        }
        Oid::from_bytes(&commit).map_err(err)
    }

    /// The tree `dir`'s changes make of tree `base`; `None` when nothing is left in it (git keeps
    /// no empty directory). The base's body is read as stored and spliced: a directory of 10,000
    /// environments costs one copy of its bytes, not 10,000 parsed entries.
    fn write_tree(&self, sink: &mut Sink, base: Option<Oid>, dir: &Dir<'_>) -> Result<Option<[u8; 20]>> {
        let err = |e| git_err("reading the tree of", &self.display, e);
        let stored = base.map(|id| self.tree_body(id).map(|body| (id, body))).transpose()?;
        let entries = match &stored {
            Some((id, body)) => self.entries_of(*id, body)?,
            None => Vec::new(),
        };
        let mut changes: Vec<TreeChange<'_>> = Vec::with_capacity(dir.files.len() + dir.dirs.len());
        changes.extend(dir.files.iter().map(|(name, id)| (*name, id.map(|id| (MODE_FILE, id)))));
        for (name, sub) in &dir.dirs {
            let base_sub = match find_dir(&entries, name) {
                Some(e) => Some(Oid::from_bytes(&e.id_bytes()).map_err(err)?),
                None => None,
            };
            let id = self.write_tree(sink, base_sub, sub)?;
            changes.push((*name, id.map(|id| (MODE_TREE, id))));
        }
        let body = stored.as_ref().map_or(&[][..], |(_, body)| &body[..]);
        let spliced = splice_tree(body, &entries, &mut changes);
        if spliced.is_empty() {
            return Ok(None);
        }
        let id = sink
            .write(ObjectType::Tree, &spliced)
            .map_err(|e| git_err("writing a commit to", &self.display, e))?;
        // What it holds is known: reading it back (to remember what was written) costs nothing.
        if spliced.len() >= BIG_TREE {
            let id = Oid::from_bytes(&id).map_err(err)?;
            self.big_trees.borrow_mut().insert(id, Arc::new(spliced));
        }
        Ok(Some(id))
    }

    /// Moves the branch from `old` to `new`, only if it still points at `old`.
    fn swap(&self, new: Oid, old: Option<Oid>) -> Result<Published> {
        match &self.target {
            Target::Local => {
                let name = self.branch_ref();
                let result = match old {
                    Some(old) => self.repo.reference_matching(&name, new, true, old, "prenv sync"),
                    None => {
                        // libgit2 checks that a new branch does not exist before it takes the
                        // branch's lock (refs/refdb_fs.c `refdb_fs_backend__write`), so two
                        // first commits could both land, the second replacing the first: prenv's
                        // writers create the branch under a lock of their own, checking again inside.
                        let _lock = lock_file(&self.git_dir.join("prenv-new-branch.lock"))?;
                        match self.repo.refname_to_id(&name) {
                            Ok(_) => return Ok(Published::Rejected),
                            Err(_) => self.repo.reference(&name, new, false, "prenv sync"),
                        }
                    }
                };
                match result {
                    Ok(_) => Ok(Published::Done(Revision(new.to_string()))),
                    Err(e) if e.code() == ErrorCode::Locked => self.locked(&name),
                    Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => Ok(Published::Rejected),
                    Err(e) => Err(git_err("updating the branch of", &self.display, e)),
                }
            }
            Target::Remote { url } => self.push(url, new),
        }
    }

    /// The branch's lock file is there: another writer is updating it (try again), or a git or
    /// prenv that crashed left it behind, which no retry fixes: name it.
    fn locked(&self, branch_ref: &str) -> Result<Published> {
        let lock = self.git_dir.join(format!("{branch_ref}.lock"));
        let age = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        match age {
            Some(age) if age >= STALE_LOCK => Err(Error::Git {
                action: "updating the branch of",
                repo: self.display.clone(),
                source: Sdk {
                    system: "git2",
                    code: Some("Reference/Locked".into()),
                    message: format!(
                        "{} exists since {} s ago; remove it if no git or prenv is running on this repository",
                        lock.display(),
                        age.as_secs()
                    ),
                },
            }),
            _ => Ok(Published::Rejected),
        }
    }

    fn push(&self, url: &str, new: Oid) -> Result<Published> {
        let staging = "refs/prenv/publish";
        self.repo
            .reference(staging, new, true, "prenv publish")
            .map_err(|e| git_err("staging a commit in the cache of", &self.display, e))?;
        let mut remote = self
            .repo
            .remote_anonymous(url)
            .map_err(|e| git_err("reaching", &self.display, e))?;
        let rejected = std::cell::RefCell::new(None::<String>);
        let mut callbacks = self.callbacks();
        callbacks.push_update_reference(|_, status| {
            if let Some(status) = status {
                *rejected.borrow_mut() = Some(status.to_string());
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        let refspec = format!("{staging}:{}", self.branch_ref());
        match remote.push(&[refspec.as_str()], Some(&mut options)) {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::NotFastForward => return Ok(Published::Rejected),
            Err(e) => return Err(git_err("pushing to", &self.display, e)),
        }
        drop(options);
        if let Some(status) = rejected.into_inner() {
            tracing::info!(repo = %self.display, status, "push rejected");
            return Ok(Published::Rejected);
        }
        // Keep the tracking ref current so the next run's fetch has nothing to bring.
        self.repo
            .reference(&self.tracking_ref(), new, true, "prenv publish")
            .map_err(|e| git_err("updating the cache of", &self.display, e))?;
        Ok(Published::Done(Revision(new.to_string())))
    }

    /// Credentials: a token for HTTPS from the environment, a key file or the agent for SSH.
    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut callbacks = git2::RemoteCallbacks::new();
        let mut tries = 0;
        callbacks.credentials(move |_url, username, allowed| {
            tries += 1;
            if tries > CREDENTIAL_TRIES {
                return Err(git2::Error::from_str(
                    "the repository refused the credentials; check PRENV_GIT_TOKEN / GITHUB_TOKEN or git.ssh_key",
                ));
            }
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                let user = username.unwrap_or("git");
                return match &self.ssh_key {
                    Some(key) => git2::Cred::ssh_key(user, None, key, None),
                    None => git2::Cred::ssh_key_from_agent(user),
                };
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(token) = TOKEN_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
            {
                return git2::Cred::userpass_plaintext("x-access-token", &token);
            }
            Err(git2::Error::from_str(
                "the repository needs credentials: set PRENV_GIT_TOKEN (or GITHUB_TOKEN) for HTTPS, or git.ssh_key / an SSH agent for SSH",
            ))
        });
        callbacks
    }
}

/// Removes the temporary packs (`objects/pack/pack_git2_*`) a killed run left behind; a pack being
/// written right now is younger than [`ORPHAN_PACK`] and stays.
/// What one commit changes in one directory: files written (their blob ids) or removed, and the
/// subdirectories it changes, by name.
#[derive(Default)]
struct Dir<'a> {
    files: BTreeMap<&'a str, Option<[u8; 20]>>,
    dirs: BTreeMap<&'a str, Dir<'a>>,
}

impl<'a> Dir<'a> {
    fn insert(&mut self, path: &'a str, id: Option<[u8; 20]>) {
        match path.split_once('/') {
            Some((dir, rest)) => self.dirs.entry(dir).or_default().insert(rest, id),
            None => {
                self.files.insert(path, id);
            }
        }
    }
}

/// Where a commit's new objects go: loose into the object database, or into one pack.
enum Sink {
    /// Loose objects, into an object directory.
    Loose(LooseWriter),
    /// Boxed: the pack carries its compressor's state.
    Pack(Box<BlobPack>),
}

impl Sink {
    fn write(&mut self, kind: ObjectType, body: &[u8]) -> std::result::Result<[u8; 20], git2::Error> {
        match self {
            Sink::Loose(objects) => {
                let kind = match kind {
                    ObjectType::Blob => "blob",
                    ObjectType::Tree => "tree",
                    _ => "commit",
                };
                objects
                    .write(kind, body)
                    // The object directory is on the repository's disk: a full disk fails like a git write.
                    .map_err(|e| git2::Error::from_str(&format!("writing an object: {e}")))
            }
            Sink::Pack(pack) => match kind {
                ObjectType::Blob => pack.add(body).map(|id| id.0),
                ObjectType::Tree => pack.add_tree(body),
                _ => pack.add_commit(body),
            }
            .map_err(pack_error),
        }
    }
}

/// The pack's file is on the repository's disk: a full disk fails like a git write.
fn pack_error(e: std::io::Error) -> git2::Error {
    git2::Error::from_str(&format!("writing a pack: {e}"))
}

/// `name <email> <seconds> <±hhmm>`, as a commit's author and committer lines carry it.
fn signature_line(who: &Signature<'_>) -> String {
    let when = who.when();
    let offset = when.offset_minutes();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    format!(
        "{} <{}> {} {sign}{:02}{:02}",
        String::from_utf8_lossy(who.name_bytes()),
        String::from_utf8_lossy(who.email_bytes()),
        when.seconds(),
        offset / 60,
        offset % 60
    )
}

fn remove_orphan_packs(git_dir: &Path) {
    let dir = git_dir.join("objects/pack");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_PACK);
        if name.to_string_lossy().starts_with("pack_git2_") && old {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temporary pack a killed run left behind")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a leftover temporary pack")
                }
            }
        }
    }
}

/// The cache clone of a remote, locked for this run so two prenv processes on one machine take turns.
fn open_cache(url: &str, cache_dir: &Path, shown: &str) -> Result<(Repository, std::fs::File)> {
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io("creating cache directory", cache_dir, e))?;
    let name = format!("{}.git", &hex::encode(sha2_digest(url.as_bytes()))[..16]);
    let path = cache_dir.join(name);
    let lock = lock_file(&path.with_extension("lock"))?;
    let repo = match Repository::open_bare(&path) {
        Ok(repo) => repo,
        Err(_) => Repository::init_bare(&path).map_err(|e| git_err("creating cache clone of", shown, e))?,
    };
    Ok((repo, lock))
}

/// A repository on this machine; created (bare, HEAD on `branch`) when `create` is set and
/// nothing is there.
fn open_local(path: &Path, create: bool, branch: &str, shown: &str) -> Result<Repository> {
    match Repository::open(path) {
        Ok(repo) => Ok(repo),
        Err(e)
            if create
                && e.code() == ErrorCode::NotFound
                && !path.join("HEAD").exists()
                && is_empty_or_missing(path) =>
        {
            let repo = Repository::init_bare(path).map_err(|e| git_err("creating repository", shown, e))?;
            repo.set_head(&format!("refs/heads/{branch}"))
                .map_err(|e| git_err("setting HEAD of", shown, e))?;
            tracing::info!(repo = shown, "created the local environments repository");
            Ok(repo)
        }
        Err(e) => Err(Error::Git {
            action: "opening",
            repo: shown.to_string(),
            source: sdk(&e, "; pass --repo with a git repository (a bare one is best) or a URL"),
        }),
    }
}

/// A repository with no commit yet (`git init --bare` on a host whose default branch is `master`)
/// gets its HEAD pointed at the branch prenv commits to, so that a clone checks out what prenv
/// wrote; so does one whose HEAD names a branch that does not exist (an unborn HEAD holds nothing).
/// A HEAD that names an existing branch is its owner's choice and stays.
fn point_head_at_branch(repo: &Repository, branch: &str, shown: &str) -> Result<()> {
    let want = format!("refs/heads/{branch}");
    let err = |action| move |e| git_err(action, shown, e);
    let head = repo.find_reference("HEAD").map_err(err("reading HEAD of"))?;
    let Some(target) = head.symbolic_target().map_err(err("reading HEAD of"))? else {
        return Ok(());
    };
    if target == want || repo.find_reference(target).is_ok() {
        return Ok(());
    }
    let from = target.to_string();
    repo.set_head(&want).map_err(err("setting HEAD of"))?;
    tracing::info!(repo = shown, from, to = %want, "pointed the unborn HEAD at the branch prenv commits to");
    Ok(())
}

/// The author of prenv's commits.
fn signature(git: &GitConfig) -> Result<Signature<'static>> {
    Signature::now(&git.author_name, &git.author_email).map_err(|e| Error::Config {
        path: "prenv.toml".into(),
        message: format!(
            "keys `git.author_name` / `git.author_email` are not a valid git identity: {}",
            e.message()
        ),
    })
}

impl EnvStore for EnvRepo {
    fn display(&self) -> &str {
        &self.display
    }

    fn branch(&self) -> &str {
        &self.branch
    }

    fn read(&mut self) -> Result<RepoView> {
        let tip = self.tip()?;
        self.memory.read_records();
        self.read_at(tip)
    }

    fn read_file(&self, view: &RepoView, path: &str) -> Result<Option<Vec<u8>>> {
        self.read_file_at(revision_oid(view)?, path)
    }

    fn publish(&mut self, base_view: &RepoView, change: &Change) -> Result<Published> {
        let base = revision_oid(base_view)?;
        let commit = self.commit(base, &change.upserts, &change.removals, &change.message)?;
        let published = self.swap(commit, base)?;
        // The commit has landed: failing to remember it only costs the next run a read.
        if let Published::Done(_) = published
            && let Err(e) = self.remember_written(commit, base_view, change)
        {
            tracing::debug!(error = %e, "what this commit wrote is not remembered; the next run reads it");
        }
        Ok(published)
    }

    fn verifications(&self) -> &dyn Verifications {
        &self.memory
    }

    fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]) {
        self.memory.learn(verified);
        self.memory.save();
    }

    fn read_settled(
        &mut self,
        project: &str,
        digest: &str,
        envs: &mut dyn FnMut(&Settled) -> Option<BTreeSet<String>>,
        now: DateTime<Utc>,
    ) -> Result<RepoView> {
        // The tip once: for a remote, each asking is a fetch.
        let tip = self.tip()?;
        if let Some(tip) = tip {
            let err = |e| git_err("reading the tree of", &self.display, e);
            let root = self.repo.find_commit(tip).and_then(|c| c.tree()).map_err(err)?;
            let settled = self
                .memory
                .settled(TreeId(oid_bytes(root.id())), project)
                .filter(|s| s.holds_for(project, digest, now) && !self.memory.outgrown(s.envs));
            if let Some(settled) = settled
                && let Some(names) = envs(&settled)
            {
                return self.read_partial(tip, &root, &names, &settled);
            }
        }
        self.memory.read_records();
        self.read_at(tip)
    }

    fn settle(&mut self, at: &Revision, settled: &Settled) {
        // A commit just written as a pack may be one this handle has not seen yet (libgit2 looks
        // for new packs by the directory's mtime, in whole seconds): a fresh handle sees it.
        let root_in = |repo: &Repository| {
            Oid::from_str(&at.0)
                .and_then(|id| repo.find_commit(id))
                .map(|c| c.tree_id())
        };
        let root = root_in(&self.repo).or_else(|_| Repository::open(&self.git_dir).and_then(|repo| root_in(&repo)));
        match root {
            Ok(root) => self.memory.settle(TreeId(oid_bytes(root)), settled),
            Err(e) => tracing::debug!(error = %e, "the settled tree is not remembered; the next run reads it whole"),
        }
    }
}

fn revision_oid(view: &RepoView) -> Result<Option<Oid>> {
    view.tip
        .as_ref()
        .map(|r| Oid::from_str(&r.0).map_err(|e| git_err("reading a revision of", "the environments repository", e)))
        .transpose()
}

fn is_url(location: &str) -> bool {
    location.contains("://") || (location.contains('@') && location.contains(':') && !Path::new(location).exists())
}

fn is_empty_or_missing(path: &Path) -> bool {
    std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none())
}

fn lock_file(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening lock file", path, e))?;
    file.lock().map_err(|e| Error::io("locking", path, e))?;
    Ok(file)
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// Removes credentials from a URL (`https://user:token@host/...` → `https://***@host/...`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!(
            "{scheme}://***@{host}{}{path}",
            if rest.contains('/') { "/" } else { "" }
        ),
        None => url.to_string(),
    }
}

pub(super) fn git_err(action: &'static str, repo: &str, e: git2::Error) -> Error {
    Error::Git {
        action,
        repo: repo.to_string(),
        source: sdk(&e, certificate_hint(&e)),
    }
}

/// What to do when the remote's identity is refused. prenv sets no `certificate_check` callback, so
/// libgit2's own checks decide: over SSH (libgit2 1.9 `transports/ssh_libssh2.c`,
/// `check_certificate`) a host key missing from `$HOME/.ssh/known_hosts`, or differing from it,
/// fails with class Ssh, code Certificate ("invalid or unknown remote ssh hostkey"); over HTTPS
/// (`streams/openssl.c`, `verify_server_cert`) a certificate the system's CA roots do not vouch for
/// fails with class Ssl, code Certificate.
fn certificate_hint(e: &git2::Error) -> &'static str {
    match (e.class(), e.code()) {
        (git2::ErrorClass::Ssh, ErrorCode::Certificate) => {
            "; prenv accepts only SSH host keys listed in $HOME/.ssh/known_hosts: add the host's key there \
             after checking its fingerprint (`ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts`; in the cluster, \
             the `known_hosts` key of the prenv-git Secret)"
        }
        (git2::ErrorClass::Ssl, ErrorCode::Certificate) => {
            "; the server's TLS certificate is not signed by a CA in the system's roots or names another host (SSL_CERT_FILE / \
             SSL_CERT_DIR choose others)"
        }
        _ => "",
    }
}

/// git2's error as a cause: its class and code kept, its message cleaned of tokens.
fn sdk(e: &git2::Error, hint: &str) -> Sdk {
    Sdk {
        system: "git2",
        code: Some(format!("{:?}/{:?}", e.class(), e.code())),
        message: format!("{}{hint}", redact_tokens(e.message())),
    }
}

/// Removes any token from the environment that a message might echo.
fn redact_tokens(message: &str) -> String {
    let mut out = message.to_string();
    for var in TOKEN_VARS {
        if let Ok(token) = std::env::var(var)
            && token.len() >= 8
        {
            out = out.replace(&token, "***");
        }
    }
    out
}

fn oid_bytes(id: Oid) -> [u8; 20] {
    let mut bytes = [0; 20];
    bytes.copy_from_slice(&id.as_bytes()[..20]);
    bytes
}

/// What a tree entry is, by its mode as stored (octal digits): the type bits say a directory
/// (`040000`), a submodule (`160000`) or a symbolic link (`120000`); anything else is a file, as
/// libgit2 reads it (`tree.c`, `git_tree_entry__is_tree` and friends compare the numeric mode).
fn raw_kind(mode: &[u8]) -> EntryKind {
    let value = mode.iter().try_fold(0u32, |v, &b| {
        (b'0'..=b'7').contains(&b).then(|| (v << 3) | u32::from(b - b'0'))
    });
    match value.map(|v| v & 0o170000) {
        Some(0o040000) => EntryKind::Dir,
        Some(0o160000) => EntryKind::Submodule,
        Some(0o120000) => EntryKind::Symlink,
        _ => EntryKind::File,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_in_a_displayed_url() {
        let table = [
            (
                "https://x-access-token:ghs_secret@github.com/acme/envs.git",
                "https://***@github.com/acme/envs.git",
            ),
            ("https://github.com/acme/envs.git", "https://github.com/acme/envs.git"),
            (
                "ssh://git@github.com/acme/envs.git",
                "ssh://***@github.com/acme/envs.git",
            ),
            ("/srv/envs.git", "/srv/envs.git"),
        ];
        for (url, want) in table {
            assert_eq!(redact_url(url), want);
        }
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://github.com/a/b.git"));
        assert!(is_url("git://127.0.0.1/x.git"));
        assert!(is_url("git@github.com:acme/envs.git"));
        assert!(!is_url("/tmp/envs.git"));
        assert!(!is_url("relative/dir"));
    }
}
