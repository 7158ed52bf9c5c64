//! The history of a repository, through git2: every blob reachable from any ref or reflog, each
//! read once, and the files those blobs refer to, for `prenv audit`.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::Path;
use std::rc::Rc;

use git2::{ObjectType, Oid, Repository, Sort};

use super::git::git_err;
use crate::error::{Error, Result};

/// How many hex digits of a commit id name it in what the walk reports.
const SHORT_ID: usize = 12;
/// The file mode git gives a symbolic link: its blob is a path, not a file's content.
const LINK_MODE: i32 = 0o120000;

/// What reads the history. The walk decides what to read and when; the reader judges the bytes.
pub trait HistoryReader {
    /// A reference from one file to another, with what the reader needs to judge the target.
    type Ref: Clone + Eq + Hash;
    /// Whether a file of this name (not path: a tree met again elsewhere is not re-read) is read.
    fn wants(&self, name: &str) -> bool;
    /// A file, the first time its blob is met; `at` is the commit (12 hex digits) or the ref that
    /// reaches it. Returns the files it refers to, as paths relative to its own directory.
    fn file(&mut self, at: &str, path: &str, bytes: &[u8]) -> Vec<(String, Self::Ref)>;
    /// A file that another refers to, in a snapshot holding both: once per reference and blob.
    fn referenced(&mut self, reference: &Self::Ref, at: &str, path: &str, bytes: &[u8]);
}

/// Where the walk starts: everything a ref, HEAD or a reflog entry names, peeled through tags.
#[derive(Default)]
struct Starts {
    commits: Vec<Oid>,
    /// Commits of `refs/notes/*`, whose files are named by object id, so every one is read.
    notes: Vec<Oid>,
    /// Trees and blobs a ref names directly (`git tag t <tree-or-blob>`), with the ref's name.
    trees: Vec<(String, Oid)>,
    blobs: Vec<(String, Oid)>,
}

/// A file inside a tree that refers to others, with its path relative to that tree.
struct Site<R> {
    file: String,
    refs: Refs<R>,
}

/// Walks every commit reachable from any ref, HEAD or reflog entry of the repository at `path`
/// (branches, tags lightweight and annotated, notes, the stash and its older entries,
/// remote-tracking refs, anything under refs/), plus the trees and blobs a ref names directly;
/// calls the reader once per distinct blob it wants, and once per reference and referenced blob.
/// Commits go oldest first, so a file is reported at the first commit that holds it. Returns how
/// many commits it walked.
pub fn read_history<R: HistoryReader>(path: &Path, reader: &mut R) -> Result<usize> {
    let shown = path.display().to_string();
    let repo = Repository::open(path).map_err(|e| git_err("opening", &shown, e))?;
    let starts = starts(&repo, &shown)?;
    let mut walk = Walk {
        repo: &repo,
        shown: &shown,
        reader,
        every_blob: true,
        seen_blobs: HashSet::new(),
        refs_of: HashMap::new(),
        sites_of: HashMap::new(),
        seen_refs: HashSet::new(),
    };
    let mut commits = walk.commits(&starts.notes)?;
    walk.every_blob = false;
    commits += walk.commits(&starts.commits)?;
    for (name, tree) in &starts.trees {
        walk.snapshot(name, *tree)?;
    }
    for (name, id) in &starts.blobs {
        if walk.seen_blobs.insert(*id) {
            let blob = repo
                .find_blob(*id)
                .map_err(|e| git_err("reading a file of", &shown, e))?;
            walk.reader.file(name, name, blob.content());
        }
    }
    Ok(commits)
}

/// Every object the refs, HEAD and the reflogs name. A ref to a missing object is an error (the
/// audit could not be complete); a reflog entry whose commit was pruned is not.
fn starts(repo: &Repository, shown: &str) -> Result<Starts> {
    let err = |e| git_err("listing the refs of", shown, e);
    let mut names = vec!["HEAD".to_string()];
    for reference in repo.references().map_err(err)? {
        names.push(String::from_utf8_lossy(reference.map_err(err)?.name_bytes()).into_owned());
    }
    let mut starts = Starts::default();
    for name in &names {
        // A symbolic ref to a branch that does not exist yet (HEAD of an empty repository).
        if let Some(id) = repo.find_reference(name).ok().and_then(|r| r.resolve().ok()?.target()) {
            let object = repo
                .find_object(id, None)
                .map_err(|e| git_err("reading", &format!("{name} of {shown}"), e))?;
            add_start(&mut starts, name, object, shown)?;
        }
        let Ok(log) = repo.reflog(name) else { continue };
        for entry in log.iter() {
            for id in [entry.id_old(), entry.id_new()] {
                if let Ok(object) = repo.find_object(id, None) {
                    add_start(&mut starts, name, object, shown)?;
                }
            }
        }
    }
    Ok(starts)
}

/// Files `object` (peeled through any chain of tags) under what it is.
fn add_start(starts: &mut Starts, name: &str, object: git2::Object<'_>, shown: &str) -> Result<()> {
    let mut object = object;
    while object.kind() == Some(ObjectType::Tag) {
        let tag = object.into_tag().expect("a Tag-kind object is a tag");
        object = tag
            .target()
            .map_err(|e| git_err("reading the tag", &format!("{name} of {shown}"), e))?;
    }
    match object.kind() {
        Some(ObjectType::Commit) if name.starts_with("refs/notes/") => starts.notes.push(object.id()),
        Some(ObjectType::Commit) => starts.commits.push(object.id()),
        Some(ObjectType::Tree) => starts.trees.push((name.to_string(), object.id())),
        Some(ObjectType::Blob) => starts.blobs.push((name.to_string(), object.id())),
        // Only commits, trees, blobs and tags can be named by a ref.
        _ => {}
    }
    Ok(())
}

/// The files a file refers to, shared by every tree that holds the file.
type Refs<R> = Rc<[(String, R)]>;
/// The files of a tree that refer to others, shared by every snapshot that holds the tree.
type Sites<R> = Rc<[Site<R>]>;

struct Walk<'a, R: HistoryReader> {
    repo: &'a Repository,
    shown: &'a str,
    reader: &'a mut R,
    /// In notes every file is read: their names are object ids, not file names.
    every_blob: bool,
    seen_blobs: HashSet<Oid>,
    /// The references of every blob read that has any.
    refs_of: HashMap<Oid, Refs<R::Ref>>,
    /// Per tree (and mode), the files inside it that refer to others: a tree met again is not
    /// walked again, but what its files refer to is resolved again in each snapshot, since a
    /// reference can leave the tree (`../secrets/db.env`).
    sites_of: HashMap<(Oid, bool), Sites<R::Ref>>,
    seen_refs: HashSet<(R::Ref, Oid)>,
}

impl<R: HistoryReader> Walk<'_, R> {
    fn err(&self, action: &'static str) -> impl Fn(git2::Error) -> Error + '_ {
        move |e| git_err(action, self.shown, e)
    }

    fn commits(&mut self, tips: &[Oid]) -> Result<usize> {
        if tips.is_empty() {
            return Ok(0);
        }
        let mut walk = self.repo.revwalk().map_err(self.err("walking"))?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
            .map_err(self.err("walking"))?;
        for tip in tips {
            walk.push(*tip).map_err(self.err("walking"))?;
        }
        let mut count = 0;
        for id in walk {
            let id = id.map_err(self.err("walking"))?;
            count += 1;
            let tree = self
                .repo
                .find_commit(id)
                .map(|c| c.tree_id())
                .map_err(self.err("reading a commit of"))?;
            let at = id.to_string();
            self.snapshot(&at[..SHORT_ID], tree)?;
        }
        Ok(count)
    }

    /// One tree as a whole: its new files, then what its files refer to, resolved in it.
    fn snapshot(&mut self, at: &str, root: Oid) -> Result<()> {
        let sites = self.sites(at, root, "")?;
        if sites.is_empty() {
            return Ok(());
        }
        let repo = self.repo;
        let tree = repo.find_tree(root).map_err(self.err("reading a tree of"))?;
        for site in sites.iter() {
            let dir = site.file.rsplit_once('/').map_or("", |(dir, _)| dir);
            for (relative, reference) in site.refs.iter() {
                let Some(target) = join(dir, relative) else { continue };
                let Ok(entry) = tree.get_path(Path::new(&target)) else {
                    continue;
                };
                if entry.kind() != Some(ObjectType::Blob)
                    || entry.filemode() == LINK_MODE
                    || !self.seen_refs.insert((reference.clone(), entry.id()))
                {
                    continue;
                }
                let blob = repo.find_blob(entry.id()).map_err(self.err("reading a file of"))?;
                self.reader.referenced(reference, at, &target, blob.content());
            }
        }
        Ok(())
    }

    /// Reads the files of a tree not read before, and returns the files in it that refer to
    /// others. `prefix` is the tree's path in the snapshot where it is first met.
    fn sites(&mut self, at: &str, id: Oid, prefix: &str) -> Result<Sites<R::Ref>> {
        let key = (id, self.every_blob);
        if let Some(sites) = self.sites_of.get(&key) {
            return Ok(sites.clone());
        }
        let repo = self.repo;
        let tree = repo.find_tree(id).map_err(self.err("reading a tree of"))?;
        let mut sites = Vec::new();
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes());
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let inner = self.sites(at, entry.id(), &format!("{prefix}{name}/"))?;
                    sites.extend(inner.iter().map(|s| Site {
                        file: format!("{name}/{}", s.file),
                        refs: s.refs.clone(),
                    }));
                }
                Some(ObjectType::Blob)
                    if entry.filemode() != LINK_MODE && (self.every_blob || self.reader.wants(&name)) =>
                {
                    if self.seen_blobs.insert(entry.id()) {
                        let blob = repo.find_blob(entry.id()).map_err(self.err("reading a file of"))?;
                        let refs = self.reader.file(at, &format!("{prefix}{name}"), blob.content());
                        if !refs.is_empty() {
                            self.refs_of.insert(entry.id(), refs.into());
                        }
                    }
                    if let Some(refs) = self.refs_of.get(&entry.id()) {
                        sites.push(Site {
                            file: name.into_owned(),
                            refs: refs.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        let sites: Sites<R::Ref> = sites.into();
        self.sites_of.insert(key, sites.clone());
        Ok(sites)
    }
}

/// `relative` (as a kustomization writes it) from directory `dir`, as a path from the tree's
/// root; None for an absolute path or one that leaves the tree, which Flux refuses too
/// (kustomize-controller `securePaths`).
fn join(dir: &str, relative: &str) -> Option<String> {
    if relative.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn references_resolve_from_their_directory_and_never_leave_the_tree() {
        let table = [
            ("envs/a", "db.env", Some("envs/a/db.env")),
            ("envs/a", "./secrets/../db.env", Some("envs/a/db.env")),
            ("envs/a", "../../common/db.env", Some("common/db.env")),
            ("", "db.env", Some("db.env")),
            ("envs/a", "../../../etc/passwd", None),
            ("envs/a", "/etc/passwd", None),
            ("envs", "..", None),
        ];
        for (dir, relative, want) in table {
            assert_eq!(join(dir, relative).as_deref(), want, "{dir} + {relative}");
        }
    }
}
