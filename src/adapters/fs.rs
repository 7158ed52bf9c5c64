//! The local file system: the config file, age identities, the sealing certificate, `--prs` snapshot
//! files, and directories prenv renders into (`render --out`) or scaffolds (`init`).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::core::diff::{EntryKind, Found, Inventory, is_flux_index, template_dir};
use crate::core::ports::{FluxIndex, PrSource, RepoView};
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::layout::{
    ARGOCD_APPLICATIONSET, ARGOCD_DIR, BlobId, ENVIRONMENTS_DIR, FLUX_DIR, META_FILE, PROJECTS_DIR,
};
use crate::model::pr::{self, Listing, Snapshot, Text};
use crate::model::tree::Tree;
use crate::secrets::{self, Material};

/// Reads and validates the configuration file.
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading config", path, e))?;
    Config::parse(&text, &path.display().to_string())
}

/// The config files of `dir`: every `*.toml` directly in it, sorted by name. Hidden files are left
/// out: a Kubernetes ConfigMap mounted as a directory also holds `..data` and its timestamped
/// directory, links to the same files.
pub fn config_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("reading config directory", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("reading config directory", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // Followed links: a mounted ConfigMap's files are links into its current data directory.
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Config {
            path: dir.display().to_string(),
            message: "the config directory holds no *.toml file; put one <project>.toml per project in it".into(),
        });
    }
    Ok(files)
}

/// Reads an age identity file (`AGE-SECRET-KEY-...` lines).
pub fn load_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading age identity file", path, e))?;
    secrets::parse_identities(&text, &path.display().to_string())
}

/// The secret material of one run: the age recipients, or the Sealed Secrets certificate read once.
pub fn load_material(config: &Config) -> Result<Material> {
    match config
        .secrets
        .sealed_secrets_cert
        .as_deref()
        .filter(|_| config.secrets.backend == crate::model::config::SecretsBackend::SealedSecrets)
    {
        Some(cert) => {
            let path = Path::new(cert);
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Error::io("reading the sealed-secrets certificate", path, e))?;
            Material::new(config, Some((&pem, cert)))
        }
        None => Material::new(config, None),
    }
}

/// Pull requests from a snapshot file (`--prs`): a JSON array in GitHub's REST shape.
pub struct SnapshotFile(pub PathBuf);

impl SnapshotFile {
    /// The file as a [`Listing`]: split into its elements as it is read, each digested, none
    /// built yet. The few elements a run builds are read again from the same open file, so a
    /// file renamed over it meanwhile changes nothing, and one written over in place is found
    /// by their digests.
    pub fn listing(&self) -> Result<Listing> {
        let io = |e| pr::unreadable(&self.0, e);
        let file = File::open(&self.0).map_err(io)?;
        // The same open file: each read again seeks first, as the two share an offset.
        let again = ListingFile(file.try_clone().map_err(io)?);
        Listing::streamed(&file, Box::new(again), &self.0.display().to_string())
    }
}

/// A snapshot file as a listing's [`Text`]: read again by range.
struct ListingFile(File);

impl Text for ListingFile {
    fn whole(&self) -> std::io::Result<Cow<'_, [u8]>> {
        let mut whole = Vec::new();
        let mut file = &self.0;
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut whole)?;
        Ok(Cow::Owned(whole))
    }

    fn at(&self, range: Range<usize>) -> std::io::Result<Cow<'_, [u8]>> {
        let mut file = &self.0;
        file.seek(SeekFrom::Start(range.start as u64))?;
        let mut bytes = Vec::with_capacity(range.len());
        file.take(range.len() as u64).read_to_end(&mut bytes)?;
        Ok(Cow::Owned(bytes))
    }

    fn may_change(&self) -> bool {
        true
    }
}

impl PrSource for SnapshotFile {
    fn snapshot(&self, _with_envs: &BTreeSet<u64>) -> Result<Snapshot> {
        let text = std::fs::read_to_string(&self.0).map_err(|e| pr::unreadable(&self.0, e))?;
        Ok(Snapshot {
            prs: pr::parse_snapshot(&text, &self.0.display().to_string())?,
            unconfirmed: Default::default(),
        })
    }
}

/// What prenv owns in a rendered directory, read the way a repository is. Nothing is followed
/// through a symbolic link: a link where an environment belongs is something prenv does not own.
pub fn read_rendered(dir: &Path) -> Result<RepoView> {
    let mut inventory = Inventory::new(None);
    for name in top_level(dir)? {
        inventory.top_level(&name);
    }
    if let Some(entries) = real_dir(dir, ENVIRONMENTS_DIR, &mut inventory)? {
        for (name, kind) in entries {
            if kind != EntryKind::Dir {
                inventory.env_entry(&name, kind, None, None, &[]);
                continue;
            }
            let rel = format!("{ENVIRONMENTS_DIR}/{name}");
            let files = found_below(dir, &rel)?;
            let meta = files
                .iter()
                .find(|f| f.name == META_FILE && f.plain)
                .map(|_| read_file(&dir.join(&rel).join(META_FILE)))
                .transpose()?;
            inventory.env_entry(&name, kind, None, meta.as_deref(), &files);
        }
    }
    if real_dir(dir, FLUX_DIR, &mut inventory)?.is_some() {
        let files = found_below(dir, FLUX_DIR)?;
        let mut indexes = Vec::new();
        for f in files.iter().filter(|f| f.regular && is_flux_index(&f.name)) {
            let bytes = read_file(&dir.join(FLUX_DIR).join(&f.name))?;
            indexes.push((f.name.clone(), FluxIndex::new(bytes)));
        }
        inventory.flux_wiring(indexes, &files);
    }
    if real_dir(dir, ARGOCD_DIR, &mut inventory)?.is_some() {
        let files = found_below(dir, ARGOCD_DIR)?;
        let legacy = files
            .iter()
            .find(|f| f.name == "applicationset.yaml" && f.plain)
            .map(|_| read_file(&dir.join(ARGOCD_APPLICATIONSET)))
            .transpose()?;
        inventory.argo_wiring(&files, legacy.as_deref());
    }
    if real_dir(dir, PROJECTS_DIR, &mut inventory)?.is_some() {
        for f in found_below(dir, PROJECTS_DIR)? {
            if let Some(template) = template_dir(&format!("{PROJECTS_DIR}/{}", f.name)) {
                inventory.template(template);
            }
        }
    }
    Ok(inventory.finish())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("reading", path, e))
}

/// What a directory entry is, without following a link.
fn kind_of(meta: &std::fs::Metadata) -> EntryKind {
    let t = meta.file_type();
    if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    }
}

/// The entries of `root/rel` when every component of `rel` is a real directory; `None` when it
/// is absent; an obstacle when something else (a file, a link) stands there.
fn real_dir(root: &Path, rel: &str, inventory: &mut Inventory) -> Result<Option<Vec<(String, EntryKind)>>> {
    let mut at = root.to_path_buf();
    let mut walked = String::new();
    for part in rel.split('/') {
        at.push(part);
        walked = if walked.is_empty() {
            part.to_string()
        } else {
            format!("{walked}/{part}")
        };
        match std::fs::symlink_metadata(&at) {
            Ok(m) if kind_of(&m) == EntryKind::Dir => {}
            Ok(_) => {
                inventory.obstacle(&walked);
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("inspecting", &at, e)),
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&at).map_err(|e| Error::io("listing", &at, e))? {
        let entry = entry.map_err(|e| Error::io("listing", &at, e))?;
        let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| Error::io("inspecting", entry.path(), e))?;
        out.push((entry.file_name().to_string_lossy().into_owned(), kind_of(&meta)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(out))
}

/// Every entry below `root/rel` as the inventory sees it (a link is an entry, never followed).
fn found_below(root: &Path, rel: &str) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.join(rel), String::new())];
    while let Some((abs, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).map_err(|e| Error::io("listing", &abs, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &abs, e))?;
            let path = entry.path();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("inspecting", &path, e))?;
            match kind_of(&meta) {
                EntryKind::Dir => stack.push((path, format!("{name}/"))),
                EntryKind::Symlink => out.push(Found {
                    id: BlobId::of(name.as_bytes()),
                    name,
                    regular: false,
                    plain: false,
                }),
                _ => out.push(Found {
                    id: BlobId::of(&read_file(&path)?),
                    regular: true,
                    plain: prefix.is_empty(),
                    name,
                }),
            }
        }
    }
    Ok(out)
}

fn top_level(dir: &Path) -> Result<BTreeSet<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| Error::io("listing", dir, e))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(Error::io("listing", dir, e)),
    }
}

/// Writes `upserts` below `dir` and removes `removals`; a directory left empty by a removal goes
/// too. Never through a symbolic link: a link on the way is refused, naming it.
pub fn apply_rendered(dir: &Path, upserts: &Tree, removals: &BTreeSet<String>) -> Result<()> {
    for path in upserts.paths().chain(removals.iter().map(String::as_str)) {
        refuse_links(dir, path)?;
    }
    write_tree(upserts, dir)?;
    for path in removals {
        let file = dir.join(path);
        std::fs::remove_file(&file).map_err(|e| Error::io("removing stale file", &file, e))?;
        // Empty environment directories go too; a directory still holding other files stays.
        if let Some(parent) = file.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// An error naming the first symbolic link on `rel` below `root` (the file itself included).
fn refuse_links(root: &Path, rel: &str) -> Result<()> {
    let mut at = root.to_path_buf();
    for part in rel.split('/') {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Render(format!(
                    "refusing to write through the symbolic link {}: prenv writes only real files in real directories; replace the link with a directory or render elsewhere",
                    at.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("inspecting", &at, e)),
        }
    }
    Ok(())
}

/// Writes every file below `root`, creating directories as needed; unchanged files are not rewritten.
pub fn write_tree(tree: &Tree, root: &Path) -> Result<usize> {
    let mut written = 0;
    for (path, bytes) in tree.iter() {
        let target = root.join(path);
        if std::fs::read(&target).is_ok_and(|old| old == bytes) {
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
pub fn read_tree(root: &Path, dir: &str) -> Result<Tree> {
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

/// What writing a scaffold did.
#[derive(Debug, Default)]
pub struct Written {
    pub written: Vec<String>,
    pub unchanged: usize,
    /// Files that exist with other content and were left alone (no `--force`).
    pub kept: Vec<String>,
}

/// Writes `tree` below `dir`: new files are created, identical ones skipped, and a file with other
/// content (someone's edit) is kept as it is unless `force`.
pub fn write_keeping_edits(tree: &Tree, dir: &Path, force: bool) -> Result<Written> {
    let mut out = Written::default();
    for (path, bytes) in tree.iter() {
        let target = dir.join(path);
        match std::fs::read(&target) {
            Ok(existing) if existing == bytes => {
                out.unchanged += 1;
                continue;
            }
            Ok(_) if !force => {
                out.kept.push(path.to_string());
                continue;
            }
            _ => {}
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
        }
        std::fs::write(&target, bytes).map_err(|e| Error::io("writing", &target, e))?;
        out.written.push(path.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr_text(number: u64, sha: char) -> String {
        let sha = sha.to_string().repeat(40);
        format!(
            r#"{{"number":{number},"state":"open","draft":false,"title":"PR {{}} \" {number}","labels":[],"head":{{"sha":"{sha}","ref":"f","repo":{{"full_name":"acme/shop"}}}},"base":{{"repo":{{"full_name":"acme/shop"}}}},"user":{{"login":"dev"}},"closed_at":null,"merged_at":null,"updated_at":"2026-11-20T10:00:00Z","body":"{}"}}"#,
            "x".repeat(number as usize * 97 % 3000)
        )
    }

    #[test]
    fn a_snapshot_file_read_in_pieces_builds_what_its_whole_text_builds_and_a_file_changed_meanwhile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prs.json");
        // 400 PRs of up to 3 kB: 600 kB, many times the stream's buffer.
        let prs: Vec<String> = (1..=400).map(|n| pr_text(n, 'a')).collect();
        let text = format!("[\n  {}\n]\n", prs.join(",\n  "));
        std::fs::write(&path, &text).unwrap();
        let file = SnapshotFile(path.clone());
        let streamed = file.listing().unwrap();
        let whole = Listing::new(text.clone(), "prs.json").unwrap();
        assert_eq!(streamed.len(), 400);
        assert_eq!(streamed.every().unwrap().prs, whole.every().unwrap().prs);
        assert_eq!(streamed.every().unwrap().elements, whole.every().unwrap().elements);
        assert_eq!(
            streamed.every().unwrap().prs,
            file.snapshot(&BTreeSet::new()).unwrap().prs
        );
        // Knowing all but two, it reads those two again by range.
        let all = whole.every().unwrap().elements;
        let known = all
            .iter()
            .filter(|(pr, _)| ![7, 300].contains(*pr))
            .map(|(pr, id)| (*id, *pr))
            .collect();
        let read = streamed.read(&known).unwrap();
        assert_eq!(read.prs.iter().map(|p| p.number).collect::<Vec<_>>(), [7, 300]);
        assert_eq!(read.unread, 398);
        // PR 300 written over in place, the same length, after the split: refused, not mixed.
        let mut changed = text.clone().into_bytes();
        let start = text.find(&pr_text(300, 'a')).unwrap();
        let at = start + text[start..].find(&"a".repeat(40)).unwrap();
        changed[at..at + 40].copy_from_slice("b".repeat(40).as_bytes());
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
            &changed,
        )
        .unwrap();
        let err = streamed.read(&known).unwrap_err().to_string();
        assert!(
            err.contains("prs.json") && err.contains("changed while prenv read it"),
            "{err}"
        );
        assert!(streamed.every().is_err(), "the whole read is checked too");
        // A file that is not an array of objects is named as a parser names it.
        std::fs::write(&path, "[1, 2]").unwrap();
        let err = SnapshotFile(path.clone())
            .listing()
            .and_then(|l| l.every())
            .unwrap_err()
            .to_string();
        let want = Listing::new("[1, 2]".into(), &path.display().to_string())
            .and_then(|l| l.every())
            .unwrap_err()
            .to_string();
        assert_eq!(err, want);
        std::fs::write(&path, b"[{\"number\": \"\xff\"}]").unwrap();
        let err = SnapshotFile(path)
            .listing()
            .and_then(|l| l.every())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_tree_written_and_read_back_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new();
        tree.insert("d/a.yaml", "a").unwrap();
        tree.insert("d/e/b.yaml", "b").unwrap();
        assert_eq!(write_tree(&tree, dir.path()).unwrap(), 2);
        assert_eq!(
            write_tree(&tree, dir.path()).unwrap(),
            0,
            "unchanged files are not rewritten"
        );
        assert_eq!(read_tree(dir.path(), "d").unwrap(), tree);
    }
}
