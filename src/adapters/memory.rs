//! What prenv remembers between runs about an environments repository, so that a sync costs what
//! changed and not what exists. Every fact is keyed by git object ids, hence true forever:
//!
//! - an environment directory with tree id T reads as metadata M and files F (T names the bytes
//!   those were parsed from), so an unchanged directory is never opened again;
//! - a directory T with wiring W matched its rendering (the metadata inside T carries the settings
//!   digest it was rendered with, and trust also requires that metadata to equal what this run
//!   wants), so it need not be rendered and compared again;
//! - the Flux index with blob id B lists the environments L.
//!
//! A fact never goes stale, so the memory is right for any branch tip, after any crash and beside
//! any number of concurrent writers; a lost or discarded memory costs only reads and renders. It is
//! written whole to a temporary file and renamed over the old one (a reader sees the old or the new
//! file, never half of one); of two runs saving at once the last one wins, and the other's facts are
//! simply learned again. A file that does not decode, or was written by another prenv version, is
//! ignored. Only facts about what the last read saw are kept, so the file stays the size of the
//! repository.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::ports::Verifications;
use crate::model::config::Database;
use crate::model::layout::{BlobId, ENV_FILES, TreeId};
use crate::model::meta::{EnvMeta, ImageWait};
use crate::model::naming::EnvName;

/// Bumped when the file's layout changes.
const FORMAT: &[u8] = b"prenv-memory 3\n";
/// A memory file larger than this is not read (a repository of 100,000 environments is ~50 MB).
const MAX_BYTES: u64 = 256 << 20;

/// One environment directory as a read found it: prenv's, holding only prenv's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownEnv {
    meta: StoredMeta,
    /// Each file as its index in [`ENV_FILES`] and its blob id.
    files: Vec<(u8, BlobId)>,
}

/// [`EnvMeta`] as the memory file holds it. bincode is not self-describing: a field that
/// `prenv.json` leaves out when empty (`skip_serializing_if`) must always be written here, or the
/// file does not decode; so every field is listed, and the conversions below fail to compile when
/// [`EnvMeta`] gains one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMeta {
    generator: String,
    schema: u32,
    env: EnvName,
    namespace: String,
    pr: u64,
    head_sha: String,
    head_ref: String,
    url: String,
    image: String,
    databases: Vec<Database>,
    created_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    merged: bool,
    preserve_until: Option<DateTime<Utc>>,
    render_digest: String,
    pr_updated_at: Option<DateTime<Utc>>,
    committed_at: Option<DateTime<Utc>>,
    eligible_at: Option<DateTime<Utc>>,
    waiting_for: Option<ImageWait>,
    project: Option<String>,
}

impl From<EnvMeta> for StoredMeta {
    fn from(m: EnvMeta) -> StoredMeta {
        let EnvMeta {
            generator,
            schema,
            env,
            namespace,
            pr,
            head_sha,
            head_ref,
            url,
            image,
            databases,
            created_at,
            closed_at,
            merged,
            preserve_until,
            render_digest,
            pr_updated_at,
            committed_at,
            eligible_at,
            waiting_for,
            project,
        } = m;
        StoredMeta {
            generator,
            schema,
            env,
            namespace,
            pr,
            head_sha,
            head_ref,
            url,
            image,
            databases,
            created_at,
            closed_at,
            merged,
            preserve_until,
            render_digest,
            pr_updated_at,
            committed_at,
            eligible_at,
            waiting_for,
            project,
        }
    }
}

impl From<StoredMeta> for EnvMeta {
    fn from(m: StoredMeta) -> EnvMeta {
        EnvMeta {
            generator: m.generator,
            schema: m.schema,
            env: m.env,
            namespace: m.namespace,
            pr: m.pr,
            head_sha: m.head_sha,
            head_ref: m.head_ref,
            url: m.url,
            image: m.image,
            databases: m.databases,
            created_at: m.created_at,
            closed_at: m.closed_at,
            merged: m.merged,
            preserve_until: m.preserve_until,
            render_digest: m.render_digest,
            pr_updated_at: m.pr_updated_at,
            committed_at: m.committed_at,
            eligible_at: m.eligible_at,
            waiting_for: m.waiting_for,
            project: m.project,
        }
    }
}

impl KnownEnv {
    /// `None` when a file is not one prenv writes (then the directory is not remembered).
    pub fn new<'a>(meta: EnvMeta, files: impl IntoIterator<Item = (&'a str, BlobId)>) -> Option<KnownEnv> {
        let files = files
            .into_iter()
            .map(|(name, id)| Some((ENV_FILES.iter().position(|f| *f == name)? as u8, id)))
            .collect::<Option<Vec<_>>>()?;
        Some(KnownEnv {
            meta: meta.into(),
            files,
        })
    }

    pub fn meta(&self) -> EnvMeta {
        self.meta.clone().into()
    }

    pub fn files(&self) -> Vec<(&'static str, BlobId)> {
        self.files
            .iter()
            .filter_map(|(i, id)| Some((*ENV_FILES.get(*i as usize)?, *id)))
            .collect()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    /// The prenv version that wrote the file: another version may render differently.
    version: String,
    envs: Vec<(TreeId, KnownEnv)>,
    verified: Vec<(TreeId, Option<BlobId>)>,
    index: Option<(BlobId, Option<BTreeSet<String>>)>,
}

/// The memory of one environments repository, loaded at open and saved after a run. Reads of the
/// repository consult and extend it through `&self` (they hold git objects borrowed from the same
/// adapter), hence the cells.
#[derive(Default)]
pub struct RepoMemory {
    /// Where it is kept; `None`: nothing is loaded or saved.
    path: Option<PathBuf>,
    envs: RefCell<HashMap<TreeId, KnownEnv>>,
    verified: HashSet<(TreeId, Option<BlobId>)>,
    index: RefCell<Option<(BlobId, Option<BTreeSet<String>>)>>,
    /// Trees the last read saw: only facts about them are saved.
    seen: RefCell<HashSet<TreeId>>,
    changed: Cell<bool>,
}

impl RepoMemory {
    /// The memory of the repository whose git directory is `git_dir`, kept below `cache_dir`.
    pub fn load(cache_dir: &Path, git_dir: &Path) -> RepoMemory {
        use sha2::Digest;
        let key = std::fs::canonicalize(git_dir).unwrap_or_else(|_| git_dir.to_path_buf());
        let digest = hex::encode(sha2::Sha256::digest(key.to_string_lossy().as_bytes()));
        let path = cache_dir.join("memory").join(format!("{}.bin", &digest[..24]));
        let mut memory = RepoMemory {
            path: Some(path.clone()),
            ..RepoMemory::default()
        };
        match read(&path) {
            Ok(Some(stored)) if stored.version == env!("CARGO_PKG_VERSION") => {
                memory.envs = RefCell::new(stored.envs.into_iter().collect());
                memory.verified = stored.verified.into_iter().collect();
                memory.index = RefCell::new(stored.index);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "memory not read; starting without"),
        }
        memory
    }

    /// What a read of directory `tree` named `name` gives, when an earlier read recorded it.
    pub fn env(&self, tree: TreeId, name: &str) -> Option<(EnvMeta, Vec<(&'static str, BlobId)>)> {
        self.seen.borrow_mut().insert(tree);
        let envs = self.envs.borrow();
        let known = envs.get(&tree).filter(|k| k.meta.env.as_str() == name)?;
        Some((known.meta(), known.files()))
    }

    pub fn remember_env(&self, tree: TreeId, known: KnownEnv) {
        self.seen.borrow_mut().insert(tree);
        self.envs.borrow_mut().insert(tree, known);
        self.changed.set(true);
    }

    /// The environments the Flux index with blob id `id` lists, when known.
    pub fn index(&self, id: BlobId) -> Option<Option<BTreeSet<String>>> {
        self.index
            .borrow()
            .as_ref()
            .filter(|(i, _)| *i == id)
            .map(|(_, l)| l.clone())
    }

    pub fn remember_index(&self, id: BlobId, listed: Option<BTreeSet<String>>) {
        *self.index.borrow_mut() = Some((id, listed));
        self.changed.set(true);
    }

    /// Writes the memory when it learned something; failures are logged, never fatal.
    pub fn save(&mut self) {
        let Some(path) = self.path.clone().filter(|_| self.changed.get()) else {
            return;
        };
        let seen = self.seen.borrow();
        let stored = Stored {
            version: env!("CARGO_PKG_VERSION").into(),
            envs: self
                .envs
                .borrow()
                .iter()
                .filter(|(t, _)| seen.contains(*t))
                .map(|(t, k)| (*t, k.clone()))
                .collect(),
            verified: self
                .verified
                .iter()
                .filter(|(t, _)| seen.contains(t))
                .copied()
                .collect(),
            index: self.index.borrow().clone(),
        };
        match write(&path, &stored) {
            Ok(()) => self.changed.set(false),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not save what this run learned; the next run reads more")
            }
        }
    }
}

impl Verifications for RepoMemory {
    fn knows(&self, tree: TreeId, wiring: Option<BlobId>) -> bool {
        self.verified.contains(&(tree, wiring))
    }

    fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]) {
        for fact in verified {
            self.seen.get_mut().insert(fact.0);
            if self.verified.insert(*fact) {
                self.changed.set(true);
            }
        }
    }
}

fn codec() -> impl bincode::Options {
    bincode::DefaultOptions::new().with_limit(MAX_BYTES)
}

fn read(path: &Path) -> std::io::Result<Option<Stored>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(body) = bytes.strip_prefix(FORMAT) else {
        return Ok(None);
    };
    codec()
        .deserialize(body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn write(path: &Path, stored: &Stored) -> std::io::Result<()> {
    let dir = path.parent().expect("the memory path has a directory");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    let body = codec()
        .serialize(stored)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    tmp.1.write_all(FORMAT)?;
    tmp.1.write_all(&body)?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp.0);
    })
}

/// A new file next to the memory, named uniquely for this process and moment.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = dir.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_without_its_optional_times_survives_the_file() {
        let json = r#"{"generator":"prenv","schema":1,"env":"shop-pr-7","namespace":"shop-pr-7","pr":7,
            "head_sha":"0000000000000000000000000000000000000007","head_ref":"f/7",
            "url":"https://shop-pr-7.p.example.com","image":"r/i:pr-7","databases":["postgres","mariadb"],
            "created_at":"2026-11-24T12:00:00Z","closed_at":null,"merged":false,"preserve_until":null}"#;
        let meta: EnvMeta = serde_json::from_str(json).unwrap();
        assert!(meta.pr_updated_at.is_none() && meta.committed_at.is_none());
        let mut with_times = meta.clone();
        with_times.committed_at = Some("2026-11-24T12:00:01Z".parse().unwrap());
        let stored = Stored {
            version: "v".into(),
            envs: vec![
                (
                    TreeId([1; 20]),
                    KnownEnv::new(meta.clone(), [("prenv.json", BlobId([2; 20]))]).unwrap(),
                ),
                (
                    TreeId([3; 20]),
                    KnownEnv::new(with_times.clone(), [("prenv.json", BlobId([4; 20]))]).unwrap(),
                ),
            ],
            verified: vec![(TreeId([1; 20]), None)],
            index: None,
        };
        let bytes = codec().serialize(&stored).unwrap();
        let back: Stored = codec().deserialize(&bytes).unwrap();
        assert_eq!(back.envs[0].1.meta(), meta);
        assert_eq!(back.envs[1].1.meta(), with_times);
        assert_eq!(back.envs[1].1.files(), vec![("prenv.json", BlobId([4; 20]))]);
    }
}
