//! What prenv remembers between runs about an environments repository, so that a sync costs what
//! changed and not what exists. Every fact is keyed by git object ids, hence true forever:
//!
//! - an environment directory with tree id T reads as metadata M and files F (T names the bytes
//!   those were parsed from), so an unchanged directory is never opened again, and M is decoded
//!   only when a run needs it (the few facts every plan needs — the PR, the pin, the settings
//!   digest — are kept beside it, undecoded);
//! - a directory T with wiring W matched its rendering (the metadata inside T carries the settings
//!   digest it was rendered with, and trust also requires that metadata to equal what this run
//!   wants, or the environment to be one the run keeps as it is), so it need not be rendered and
//!   compared again;
//! - a root tree R holds every environment of a project as rendered with settings digest D and
//!   verified, with nothing about it left undone ([`Settled`]), so until its first pin ends a run
//!   whose snapshot names a few PRs reads only their environments.
//!
//! A fact never goes stale, so the memory is right for any branch tip, after any crash and beside
//! any number of concurrent writers; a lost or discarded memory costs only reads and renders.
//!
//! The file is a log: a header, then records, each with its length and a checksum. A run appends
//! only what it learned, in one `write` to a file opened for appending, so a run costs what it
//! learned, not what the memory holds. Reading stops at the first record that is cut short or does
//! not match its checksum (a run killed while appending, a damaged disk): what came before is kept,
//! and the next save rewrites the file whole. The file is also rewritten — to a temporary file
//! renamed over it, so a reader sees the old or the new file, never half of one — when most of its
//! records are about trees the last read no longer saw, so it stays about the size of the
//! repository. Two runs appending at once each add complete records (the kernel appends one
//! `write` to a local file at its end as a whole); a run that rewrites the file while another
//! appends loses the other's facts, which are simply learned again. A file written by another
//! prenv version is ignored.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::core::ports::{EnvEntry, MetaSource, Print, PrintEntry, Prints, Settled, Verifications};
use crate::model::layout::{BlobId, ENV_FILES, EnvFiles, TreeId};
use crate::model::meta::EnvMeta;
use crate::model::pr::ElementId;

use super::meta_codec;

/// Bumped when the file's layout changes.
const FORMAT: &[u8] = b"prenv-memory 5\n";
/// A memory file larger than this is not read (a repository of 100,000 environments is ~80 MB).
const MAX_BYTES: u64 = 256 << 20;
/// Rewrite the file when it holds more than this many times the records the last read needed
/// (plus [`SLACK`]): appends then cost what changed, and the file stays the repository's size.
const GROWTH: usize = 2;
const SLACK: usize = 64;

const ENV_RECORD: u8 = 1;
const VERIFIED_RECORD: u8 = 2;
const SETTLED_RECORD: u8 = 3;
/// Settled trees kept (the latest ones learned): a run asks about the tip it read, which is the
/// tree the last run of its project left unless someone pushed since; room for a few projects
/// sharing one repository.
const SETTLED_KEPT: usize = 32;
const PRINTS_RECORD: u8 = 5;
/// What changed in a project's fingerprints since the record before it ([`prints_delta`]).
const PRINTS_DELTA: u8 = 6;
/// The bytes of one PR in a fingerprints record.
const PRINT_ENTRY: usize = 41;
/// A fingerprints file is written whole again once the changes appended to it would pass this
/// many (or a 64th of its PRs, when more) or this many records: a run that changes one PR of
/// 10,000 appends about 120 bytes instead of writing 410 kB, and a read applies a bounded few.
const PRINTS_CHANGES: usize = 64;
const PRINTS_DELTAS: usize = 64;
/// Kilobytes of log per environment (plus a megabyte) past which partial reads stop appending
/// (see [`RepoMemory::outgrown`]): a record and its verification are about 0.6 KB, so about five
/// times what a compacted log holds.
const OUTGROWN: u64 = 3;
/// Length (u32) and checksum (u64) before every record.
const ENVELOPE: usize = 12;

/// One environment directory as a read found it: prenv's, holding only prenv's files; encoded as
/// the record the memory file holds.
#[derive(Debug, Clone)]
pub struct KnownEnv(Vec<u8>);

impl KnownEnv {
    /// `None` when a file is not one prenv writes (then the directory is not remembered).
    pub fn new<'a>(meta: &EnvMeta, files: impl IntoIterator<Item = (&'a str, BlobId)>) -> Option<KnownEnv> {
        let files = files
            .into_iter()
            .map(|(name, id)| Some((ENV_FILES.iter().position(|f| *f == name)? as u8, id)))
            .collect::<Option<Vec<_>>>()?;
        let name = meta.env.as_str().as_bytes();
        let digest = meta.render_digest.as_bytes();
        let mut out = Vec::with_capacity(512 + name.len() + digest.len() + files.len() * 21);
        out.push(ENV_RECORD);
        out.extend_from_slice(&[0; 20]); // the tree id, set by the memory
        out.push(u8::try_from(name.len()).ok()?);
        out.extend_from_slice(name);
        out.extend_from_slice(&meta.pr.to_le_bytes());
        let until = meta.preserve_until.map_or(i64::MIN, |t| t.timestamp());
        out.extend_from_slice(&until.to_le_bytes());
        out.push(u8::try_from(digest.len()).ok()?);
        out.extend_from_slice(digest);
        // The project: its length plus one, 0 for none.
        let project = meta.project.as_deref().map(str::as_bytes);
        out.push(match project {
            Some(p) => u8::try_from(p.len() + 1).ok()?,
            None => 0,
        });
        out.extend_from_slice(project.unwrap_or_default());
        out.push(u8::try_from(files.len()).ok()?);
        for (index, id) in &files {
            out.push(*index);
            out.extend_from_slice(&id.0);
        }
        meta_codec::encode(meta, &mut out)?;
        Some(KnownEnv(out))
    }
}

/// An environment record, parsed without decoding its metadata. Its texts are bytes until they are
/// used: the name is only compared with the directory's, and the digest and the project are the
/// same in most records (see [`RepoMemory::shared`]), so few are ever checked as UTF-8.
struct EnvRecord<'a> {
    tree: TreeId,
    name: &'a [u8],
    pr: u64,
    preserve_until: Option<DateTime<Utc>>,
    digest: &'a [u8],
    project: Option<&'a [u8]>,
    files: EnvFiles,
    /// Where the metadata ([`meta_codec`]'s form) starts in the record.
    meta_at: usize,
}

impl<'a> EnvRecord<'a> {
    fn parse(record: &'a [u8]) -> Option<EnvRecord<'a>> {
        let mut r = meta_codec::Reader::new(record);
        if r.byte().ok()? != ENV_RECORD {
            return None;
        }
        let tree = TreeId(r.array().ok()?);
        let len = r.byte().ok()? as usize;
        let name = r.take(len).ok()?;
        let pr = u64::from_le_bytes(r.array().ok()?);
        let until = i64::from_le_bytes(r.array().ok()?);
        let preserve_until = match until {
            i64::MIN => None,
            secs => Some(DateTime::from_timestamp(secs, 0)?),
        };
        let len = r.byte().ok()? as usize;
        let digest = r.take(len).ok()?;
        let project = match r.byte().ok()? as usize {
            0 => None,
            len => Some(r.take(len - 1).ok()?),
        };
        let count = r.byte().ok()? as usize;
        let mut files = EnvFiles::default();
        for _ in 0..count {
            let index = r.byte().ok()? as usize;
            files.set_at(index, BlobId(r.array().ok()?))?;
        }
        Some(EnvRecord {
            tree,
            name,
            pr,
            preserve_until,
            digest,
            project,
            files,
            meta_at: r.at(),
        })
    }
}

/// The bytes of the memory file: mapped (the file as read at open), or a record learned by this run.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// A record inside a buffer the memory shares with the environments it gave out.
#[derive(Clone)]
struct Slice {
    buf: Arc<Bytes>,
    start: usize,
    end: usize,
}

impl Slice {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// An environment record the memory holds, whether the last read saw its tree (marked in place,
/// not kept in a set of its own, so remembering what a read saw costs no second lookup), and the
/// wiring its directory was verified with, when it was: the one verification most directories
/// have is kept here and handed out with the environment (see [`EnvEntry::verified`]), so a plan
/// asks no set about it; a second one (its wiring changed) goes to the set.
struct Known {
    record: Slice,
    seen: Cell<bool>,
    wiring: Option<Option<BlobId>>,
}

/// Remembered metadata, decoded when a run asks for it.
struct Remembered {
    record: Slice,
    meta_at: usize,
}

impl MetaSource for Remembered {
    fn decode(&self) -> Result<EnvMeta, String> {
        meta_codec::decode(&self.record.bytes()[self.meta_at..])
    }
}

/// Hashes object ids by their own bits: a git id is a SHA-1, already uniform, so the keyed SipHash
/// the standard maps use bought nothing but a tenth of an incremental sync's time at 10,000
/// environments. (The keys come from the user's own repository and cache, not from a peer.)
type ById = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(17) ^ n;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A settled tree's fingerprints, with the tree they are about.
type TreePrints = (TreeId, Arc<Prints>);

/// What a project's fingerprints file held when it was read or written: the tree its records end
/// at and the fingerprints there, the checksum of its last record (which a change appended after
/// it names), and how many changes and records follow its whole record.
#[derive(Clone)]
struct PrintsFile {
    root: TreeId,
    prints: Arc<Prints>,
    last: u64,
    changes: usize,
    deltas: usize,
}

/// The memory of one environments repository, loaded at open and saved after a run. Reads of the
/// repository consult and extend it through `&self` (they hold git objects borrowed from the same
/// adapter), hence the cells.
#[derive(Default)]
pub struct RepoMemory {
    /// Where it is kept; `None`: nothing is loaded or saved.
    path: Option<PathBuf>,
    envs: RefCell<HashMap<TreeId, Known, ById>>,
    /// Verifications not kept with their environment's record (see [`Known`]).
    verified: HashSet<(TreeId, Option<BlobId>), ById>,
    /// Records in the file as read (damaged ones and what follows them excluded).
    records: usize,
    /// The file must be written whole: absent, of another version, or damaged.
    rewrite: bool,
    /// Records learned since the load, to append.
    pending: RefCell<Vec<Slice>>,
    pending_verified: Vec<(TreeId, Option<BlobId>)>,
    /// Trees the last read saw that have no record here (the rest are marked in theirs): only
    /// facts about trees the read saw are kept when the file is rewritten.
    seen_unknown: RefCell<HashSet<TreeId, ById>>,
    changed: Cell<bool>,
    /// The file's records are in `envs` and `verified` ([`RepoMemory::read_records`]): a full read
    /// asks about every directory, a partial one about a few, which it reads from git instead,
    /// so it never reads the file, and what it learns is appended.
    indexed: bool,
    /// Trees recorded as settled, oldest first (see [`Settled`]): kept in a small file of their
    /// own, read at load, so a partial read needs nothing of the large one.
    settled: Vec<(TreeId, Settled)>,
    settled_changed: bool,
    /// Per project, the fingerprints of its latest settled tree ([`Prints`]), read from their own
    /// file when a settled fact is asked for; a file about another tree is not used.
    prints: RefCell<HashMap<String, Option<TreePrints>>>,
    /// Per project, what its fingerprints file holds, as far as this run knows.
    prints_file: RefCell<HashMap<String, PrintsFile>>,
    /// Fingerprints learned, by project, to save.
    pending_prints: Vec<(String, TreeId, Arc<Prints>)>,
    /// The log's length at load.
    log_len: u64,
    /// The strings [`RepoMemory::shared`] gave out last.
    recent: RefCell<Vec<Arc<str>>>,
}

impl RepoMemory {
    /// The memory of the repository whose git directory is `git_dir`, kept below `cache_dir`.
    pub fn load(cache_dir: &Path, git_dir: &Path) -> RepoMemory {
        use sha2::Digest;
        let key = std::fs::canonicalize(git_dir).unwrap_or_else(|_| git_dir.to_path_buf());
        let digest = hex::encode(sha2::Sha256::digest(key.to_string_lossy().as_bytes()));
        let path = cache_dir.join("memory").join(format!("{}.log", &digest[..24]));
        let (usable, log_len) = has_header(&path);
        let mut memory = RepoMemory {
            rewrite: !usable,
            log_len,
            path: Some(path),
            ..RepoMemory::default()
        };
        memory.settled = read_settled(&memory.settled_path().unwrap_or_default());
        memory
    }

    /// Reads the records of the file, once: before a full read of the repository asks about its
    /// directories. Facts learned before (by a partial read) are kept.
    pub fn read_records(&mut self) {
        if std::mem::replace(&mut self.indexed, true) {
            return;
        }
        let Some(path) = self.path.clone() else { return };
        let learned = std::mem::take(self.envs.get_mut());
        self.rewrite = true;
        match read(&path) {
            Ok(Some(bytes)) => self.index(bytes),
            Ok(None) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "memory not read; starting without"),
        }
        self.envs.get_mut().extend(learned);
    }

    /// Whether the log has grown past what a repository of `envs` environments needs: partial
    /// reads only append to it (a full read compacts it), so a run that finds it so long reads
    /// the repository whole, and the log is its size again.
    pub fn outgrown(&self, envs: usize) -> bool {
        self.log_len > OUTGROWN * 1024 * envs as u64 + (1 << 20)
    }

    fn settled_path(&self) -> Option<PathBuf> {
        Some(self.path.as_ref()?.with_extension("settled"))
    }

    /// The file of a project's fingerprints (project ids are DNS labels: safe in a file name).
    fn prints_path(&self, project: &str) -> Option<PathBuf> {
        Some(self.path.as_ref()?.with_extension(format!("{project}.prints")))
    }

    /// The fingerprints of `project`'s settled tree `root`, when its file holds them.
    fn prints_of(&self, root: TreeId, project: &str) -> Option<Arc<Prints>> {
        let mut cache = self.prints.borrow_mut();
        let known = cache.entry(project.to_string()).or_insert_with(|| {
            let file = read_prints(&self.prints_path(project)?)?;
            let known = (file.root, file.prints.clone());
            self.prints_file.borrow_mut().insert(project.to_string(), file);
            Some(known)
        });
        known.as_ref().filter(|(tree, _)| *tree == root).map(|(_, p)| p.clone())
    }

    /// Indexes the records of a file's bytes, stopping at the first damaged one.
    fn index(&mut self, bytes: Bytes) {
        let Some(at) = header_len(&bytes) else { return };
        let buf = Arc::new(bytes);
        let mut at = at;
        // An environment record is 500 to 800 bytes: room for them all at once, no rehash as the
        // map fills.
        let mut envs: HashMap<TreeId, Known, ById> =
            HashMap::with_capacity_and_hasher(buf.len() / 600, ById::default());
        while at < buf.len() {
            let Some((start, end)) = record_at(&buf, at) else {
                tracing::debug!(offset = at, "memory record damaged; keeping what precedes it");
                self.rewrite = true;
                self.envs = RefCell::new(envs);
                return;
            };
            let record = &buf[start..end];
            match record.first() {
                Some(&ENV_RECORD) if record.len() > 21 => {
                    let tree = TreeId(record[1..21].try_into().expect("20 bytes"));
                    let record = Slice {
                        buf: buf.clone(),
                        start,
                        end,
                    };
                    // A tree recorded again (learned twice, appended twice) keeps the verification
                    // read with its earlier record.
                    envs.entry(tree)
                        .and_modify(|known| known.record = record.clone())
                        .or_insert_with(|| Known {
                            record,
                            seen: Cell::new(false),
                            wiring: None,
                        });
                }
                Some(&VERIFIED_RECORD) if record.len() == 42 => {
                    let tree = TreeId(record[1..21].try_into().expect("20 bytes"));
                    let wiring = (record[21] == 1).then(|| BlobId(record[22..42].try_into().expect("20 bytes")));
                    // Written right after its environment's record, whose slot was just filled.
                    match envs.get_mut(&tree) {
                        Some(known) if known.wiring.is_none() => known.wiring = Some(wiring),
                        Some(known) if known.wiring == Some(wiring) => {}
                        _ => {
                            self.verified.insert((tree, wiring));
                        }
                    }
                }
                _ => {}
            }
            self.records += 1;
            at = end;
        }
        self.rewrite = false;
        self.envs = RefCell::new(envs);
    }

    /// What a read of directory `tree` named `name` gives, when an earlier read recorded it.
    pub fn env(&self, tree: TreeId, name: &str) -> Option<EnvEntry> {
        let envs = self.envs.borrow();
        let Some(known) = envs.get(&tree) else {
            self.seen_unknown.borrow_mut().insert(tree);
            return None;
        };
        known.seen.set(true);
        let slice = &known.record;
        let record = EnvRecord::parse(slice.bytes()).filter(|r| r.tree == tree && r.name == name.as_bytes())?;
        let source = Arc::new(Remembered {
            record: slice.clone(),
            meta_at: record.meta_at,
        });
        let verified = known.wiring.map(|wiring| (tree, wiring));
        let mut entry = EnvEntry::remembered(
            record.pr,
            record.preserve_until,
            self.shared(record.digest)?,
            match record.project {
                Some(p) => Some(self.shared(p)?),
                None => None,
            },
            tree,
            record.files,
            source,
        );
        entry.verified = verified;
        Some(entry)
    }

    /// `text` as a shared string: the digest and the project are the same in most records, so
    /// the last few given out are handed out again instead of allocated (and checked as UTF-8)
    /// per environment. `None` when it is not UTF-8.
    fn shared(&self, text: &[u8]) -> Option<Arc<str>> {
        let mut recent = self.recent.borrow_mut();
        if let Some(found) = recent.iter().find(|s| s.as_bytes() == text) {
            return Some(found.clone());
        }
        let made: Arc<str> = Arc::from(std::str::from_utf8(text).ok()?);
        if recent.len() == 4 {
            recent.remove(0);
        }
        recent.push(made.clone());
        Some(made)
    }

    pub fn remember_env(&self, tree: TreeId, known: KnownEnv) {
        let mut bytes = known.0;
        bytes[1..21].copy_from_slice(&tree.0);
        let end = bytes.len();
        let slice = Slice {
            buf: Arc::new(Bytes::Owned(bytes)),
            start: 0,
            end,
        };
        let mut envs = self.envs.borrow_mut();
        // The same tree remembered again keeps the verification it had.
        let wiring = envs.get(&tree).and_then(|k| k.wiring);
        let known = Known {
            record: slice.clone(),
            seen: Cell::new(true),
            wiring,
        };
        envs.insert(tree, known);
        drop(envs);
        self.pending.borrow_mut().push(slice);
        self.changed.set(true);
    }

    /// What an earlier run recorded about root tree `root` being settled for `project` (projects
    /// sharing a repository each settle it for themselves), the latest fact first.
    /// With the tree's fingerprints, when they are kept.
    pub fn settled(&self, root: TreeId, project: &str) -> Option<Settled> {
        let fact = self.fact(root, project)?;
        Some(Settled {
            prints: self.prints_of(root, project),
            ..fact.clone()
        })
    }

    /// The latest fact recorded about `project`'s tree `root`, without its fingerprints.
    fn fact(&self, root: TreeId, project: &str) -> Option<&Settled> {
        self.settled
            .iter()
            .rev()
            .find(|(t, s)| *t == root && s.project == project)
            .map(|(_, s)| s)
    }

    /// Records that root tree `root` is settled, to be saved with the rest: the fact in the small
    /// file of settled trees, its fingerprints (when it has) in the project's own.
    pub fn settle(&mut self, root: TreeId, settled: &Settled) {
        if settled_record(root, settled).is_none() {
            return;
        }
        let project = &settled.project;
        let fact = Settled {
            prints: None,
            ..settled.clone()
        };
        if self.fact(root, project) != Some(&fact) {
            if self.settled.len() == SETTLED_KEPT {
                self.settled.remove(0);
            }
            self.settled.push((root, fact));
            self.settled_changed = true;
        }
        if let Some(prints) = settled
            .prints
            .as_ref()
            .filter(|p| self.prints_of(root, project).as_ref() != Some(*p))
        {
            self.prints
                .get_mut()
                .insert(project.clone(), Some((root, prints.clone())));
            self.pending_prints.retain(|(p, _, _)| p != project);
            self.pending_prints.push((project.clone(), root, prints.clone()));
        }
    }

    /// Writes what the memory learned; failures are logged, never fatal.
    pub fn save(&mut self) {
        for (project, root, prints) in std::mem::take(&mut self.pending_prints) {
            let Some(path) = self.prints_path(&project) else {
                continue;
            };
            let files = self.prints_file.get_mut();
            let delta = files.get(&project).and_then(|file| prints_delta(file, root, &prints));
            let saved = match delta {
                Some((record, changes)) => append(&path, &[&record]).map(|()| {
                    let file = &files[&project];
                    (checksum(&record), file.changes + changes, file.deltas + 1)
                }),
                None => {
                    let record = prints_record(root, &prints);
                    rewrite(&path, &[&record]).map(|()| (checksum(&record), 0, 0))
                }
            };
            match saved {
                Ok((last, changes, deltas)) => {
                    let file = PrintsFile {
                        root,
                        prints,
                        last,
                        changes,
                        deltas,
                    };
                    files.insert(project, file);
                }
                Err(e) => {
                    files.remove(&project);
                    tracing::warn!(path = %path.display(), error = %e, "could not save the settled tree's fingerprints; the next run with every PR reads it whole");
                }
            }
        }
        if std::mem::take(&mut self.settled_changed)
            && let Some(path) = self.settled_path()
        {
            let records: Vec<Vec<u8>> = self
                .settled
                .iter()
                .filter_map(|(root, fact)| settled_record(*root, fact))
                .collect();
            let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            if let Err(e) = rewrite(&path, &records) {
                tracing::warn!(path = %path.display(), error = %e, "could not save the settled tree; the next run reads it whole");
            }
        }
        let Some(path) = self.path.clone().filter(|_| self.changed.get()) else {
            return;
        };
        let envs = self.envs.get_mut();
        let unknown = self.seen_unknown.get_mut();
        let seen = |tree: &TreeId| envs.get(tree).map_or_else(|| unknown.contains(tree), |k| k.seen.get());
        let inline = envs.values().filter(|k| k.seen.get() && k.wiring.is_some()).count();
        let live = envs.values().filter(|k| k.seen.get()).count()
            + inline
            + self.verified.iter().filter(|(t, _)| seen(t)).count();
        let pending = self.pending.get_mut();
        let appended = pending.len() + self.pending_verified.len();
        // Without its records read (a partial read), the file is only appended to: what this run
        // learned about a few trees, a duplicate of a fact the file holds costing one record; a
        // full read compacts it. Unless it is unusable (absent, another version): then it is
        // started again with what this run learned.
        let growth = self.indexed && self.records + appended > GROWTH * live + SLACK;
        let whole = self.rewrite || growth;
        let result = if whole {
            // Each verification right after its environment's record, where a read of the file
            // finds that record's slot still at hand.
            let mut facts: HashMap<TreeId, Vec<[u8; 42]>, ById> = HashMap::default();
            for (tree, wiring) in self.verified.iter().filter(|(t, _)| seen(t)) {
                facts.entry(*tree).or_default().push(verified_record(*tree, *wiring));
            }
            for (tree, known) in envs.iter().filter(|(_, k)| k.seen.get()) {
                if let Some(wiring) = known.wiring {
                    facts.entry(*tree).or_default().push(verified_record(*tree, wiring));
                }
            }
            // In the order a read asks for them (a tree lists its directories by name), not the
            // map's: a read then walks the file from start to end instead of jumping about in it,
            // and at 10,000 environments the jumps (a cache miss each) were a tenth of a sync.
            // Each name is parsed out of its record once, not at every comparison.
            let mut known: Vec<(&[u8], &TreeId, &Known)> = envs
                .iter()
                .filter(|(_, k)| k.seen.get())
                .map(|(tree, k)| (record_name(k.record.bytes()), tree, k))
                .collect();
            known.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut records: Vec<&[u8]> = Vec::with_capacity(live);
            for (_, tree, k) in &known {
                records.push(k.record.bytes());
                records.extend(facts.get(*tree).into_iter().flatten().map(|r| &r[..]));
            }
            for (tree, list) in &facts {
                if !envs.get(tree).is_some_and(|k| k.seen.get()) {
                    records.extend(list.iter().map(|r| &r[..]));
                }
            }
            rewrite(&path, &records)
        } else {
            let verified = self.pending_verified.iter().map(|(t, w)| verified_record(*t, *w));
            let verified: Vec<[u8; 42]> = verified.collect();
            let records: Vec<&[u8]> = pending
                .iter()
                .map(Slice::bytes)
                .chain(verified.iter().map(|r| &r[..]))
                .collect();
            append(&path, &records)
        };
        match result {
            Ok(()) => {
                self.changed.set(false);
                pending.clear();
                self.pending_verified.clear();
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not save what this run learned; the next run reads more")
            }
        }
    }
}

impl Verifications for RepoMemory {
    fn knows(&self, tree: TreeId, wiring: Option<BlobId>) -> bool {
        self.envs.borrow().get(&tree).is_some_and(|k| k.wiring == Some(wiring))
            || self.verified.contains(&(tree, wiring))
    }

    fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]) {
        for &(tree, wiring) in verified {
            let known = self.knows(tree, wiring);
            match self.envs.get_mut().get_mut(&tree) {
                Some(k) => {
                    k.seen.set(true);
                    if known {
                        continue;
                    }
                    if k.wiring.is_none() {
                        k.wiring = Some(wiring);
                    } else {
                        self.verified.insert((tree, wiring));
                    }
                }
                None => {
                    self.seen_unknown.get_mut().insert(tree);
                    if known || !self.verified.insert((tree, wiring)) {
                        continue;
                    }
                }
            }
            self.pending_verified.push((tree, wiring));
            self.changed.set(true);
        }
    }
}

fn verified_record(tree: TreeId, wiring: Option<BlobId>) -> [u8; 42] {
    let mut out = [0; 42];
    out[0] = VERIFIED_RECORD;
    out[1..21].copy_from_slice(&tree.0);
    out[21] = u8::from(wiring.is_some());
    out[22..].copy_from_slice(&wiring.map_or([0; 20], |w| w.0));
    out
}

/// A settled root tree as a record: its id, the pin deadline (`i64::MIN` for none), the number of
/// environments, then the digest and the project, each after its length. `None` for texts too
/// long to record (nothing is recorded then: a run reads the tree whole).
fn settled_record(root: TreeId, settled: &Settled) -> Option<Vec<u8>> {
    let digest = u8::try_from(settled.digest.len()).ok()?;
    let project = u8::try_from(settled.project.len()).ok()?;
    let mut out = Vec::with_capacity(39 + settled.digest.len() + settled.project.len());
    out.push(SETTLED_RECORD);
    out.extend_from_slice(&root.0);
    out.extend_from_slice(&settled.due.map_or(i64::MIN, |t| t.timestamp()).to_le_bytes());
    out.extend_from_slice(&(settled.envs as u64).to_le_bytes());
    out.push(digest);
    out.extend_from_slice(settled.digest.as_bytes());
    out.push(project);
    out.extend_from_slice(settled.project.as_bytes());
    Some(out)
}

/// A settled tree's fingerprints as a record: the root tree id, the time (seconds, nanoseconds),
/// the settings' key, the number of entries, then each: PR number, fingerprint, flags (bit 0: it
/// has an environment; bit 1: an element digest follows, else zeros), element digest.
fn prints_record(root: TreeId, prints: &Prints) -> Vec<u8> {
    let mut out = Vec::with_capacity(57 + prints.entries.len() * PRINT_ENTRY);
    out.push(PRINTS_RECORD);
    out.extend_from_slice(&root.0);
    prints_head(&mut out, prints, prints.entries.len());
    for entry in &prints.entries {
        put_entry(&mut out, entry, false);
    }
    out
}

/// The time, key and entry count of a fingerprints record.
fn prints_head(out: &mut Vec<u8>, prints: &Prints, entries: usize) {
    out.extend_from_slice(&prints.at.timestamp().to_le_bytes());
    out.extend_from_slice(&prints.at.timestamp_subsec_nanos().to_le_bytes());
    out.extend_from_slice(&prints.key);
    out.extend_from_slice(&(entries as u64).to_le_bytes());
}

/// One entry of a fingerprints record; `gone` (flag bit 2, in a change record only): the PR has
/// no fingerprint any more.
fn put_entry(out: &mut Vec<u8>, entry: &PrintEntry, gone: bool) {
    out.extend_from_slice(&entry.pr.to_le_bytes());
    out.extend_from_slice(&entry.print);
    out.push(u8::from(entry.env) | u8::from(entry.element.is_some()) << 1 | u8::from(gone) << 2);
    out.extend_from_slice(&entry.element.unwrap_or_default());
}

/// The change from what `file` holds to the fingerprints `prints` of tree `root`, as a record
/// to append: the checksum of the file's last record (so a reader applies it only right after
/// that record: a file another run wrote meanwhile does not take it), the root tree id, the
/// time, key and count as in [`prints_record`], then each PR whose entry is new, changed or gone
/// (flag bit 2). With how many; `None` when the file is to be written whole instead: other
/// settings, or the changes past [`PRINTS_CHANGES`] or [`PRINTS_DELTAS`].
fn prints_delta(file: &PrintsFile, root: TreeId, prints: &Prints) -> Option<(Vec<u8>, usize)> {
    let (old, new) = (&file.prints.entries, &prints.entries);
    if file.prints.key != prints.key || file.deltas >= PRINTS_DELTAS {
        return None;
    }
    let limit = PRINTS_CHANGES.max(new.len() / 64);
    let mut changed: Vec<(&PrintEntry, bool)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.pr == b.pr => {
                if a != b {
                    changed.push((b, false));
                }
                (i, j) = (i + 1, j + 1);
            }
            (Some(a), b) if b.is_none_or(|b| a.pr < b.pr) => {
                changed.push((a, true));
                i += 1;
            }
            (_, Some(b)) => {
                changed.push((b, false));
                j += 1;
            }
            (_, None) => unreachable!("one side has an entry left"),
        }
        if file.changes + changed.len() > limit {
            return None;
        }
    }
    let mut out = Vec::with_capacity(65 + changed.len() * PRINT_ENTRY);
    out.push(PRINTS_DELTA);
    out.extend_from_slice(&file.last.to_le_bytes());
    out.extend_from_slice(&root.0);
    prints_head(&mut out, prints, changed.len());
    for (entry, gone) in &changed {
        put_entry(&mut out, entry, *gone);
    }
    Some((out, changed.len()))
}

/// A fingerprints record, whole or a change: its root tree id, the checksum of the record it
/// follows (a change's), time, key, entries, and the PRs a change says are gone. `None` when it
/// does not parse whole or its PRs are not in ascending order.
struct PrintsRecord {
    after: Option<u64>,
    root: TreeId,
    at: DateTime<Utc>,
    key: Print,
    entries: Vec<PrintEntry>,
    gone: Vec<u64>,
}

fn prints_of_record(record: &[u8]) -> Option<PrintsRecord> {
    let mut r = meta_codec::Reader::new(record);
    let after = match r.byte().ok()? {
        PRINTS_RECORD => None,
        PRINTS_DELTA => Some(u64::from_le_bytes(r.array().ok()?)),
        _ => return None,
    };
    let root = TreeId(r.array().ok()?);
    let secs = i64::from_le_bytes(r.array().ok()?);
    let nanos = u32::from_le_bytes(r.array().ok()?);
    let at = DateTime::from_timestamp(secs, nanos)?;
    let key: Print = r.array().ok()?;
    let count = usize::try_from(u64::from_le_bytes(r.array().ok()?)).ok()?;
    if record.len() - r.at() != count.checked_mul(PRINT_ENTRY)? {
        return None;
    }
    let (mut entries, mut gone) = (Vec::with_capacity(count), Vec::new());
    let mut last = None;
    // Sliced, not read field by field: 10,000 entries are read on every run of a settled tree.
    for bytes in record[r.at()..].chunks_exact(PRINT_ENTRY) {
        let (pr, rest) = bytes.split_first_chunk::<8>()?;
        let (print, rest) = rest.split_first_chunk::<16>()?;
        let (&flags, element) = rest.split_first()?;
        let (pr, print, element) = (u64::from_le_bytes(*pr), *print, ElementId::try_from(element).ok()?);
        let allowed = if after.is_some() { 7 } else { 3 };
        if flags > allowed || last.is_some_and(|last| last >= pr) {
            return None;
        }
        last = Some(pr);
        if flags & 4 == 4 {
            gone.push(pr);
            continue;
        }
        let entry = PrintEntry {
            pr,
            print,
            env: flags & 1 == 1,
            element: (flags & 2 == 2).then_some(element),
        };
        entries.push(entry);
    }
    Some(PrintsRecord {
        after,
        root,
        at,
        key,
        entries,
        gone,
    })
}

/// What the fingerprints file at `path` holds: its whole record, and each change after it that
/// follows the record before it; none when it is absent, of another version or damaged. A change
/// that does not follow (a cut record, or one another run appended to a file since rewritten)
/// ends it.
fn read_prints(path: &Path) -> Option<PrintsFile> {
    read_prints_bytes(&read(path).ok()??)
}

fn read_prints_bytes(bytes: &[u8]) -> Option<PrintsFile> {
    let (start, mut at) = record_at(bytes, header_len(bytes)?)?;
    let whole = prints_of_record(&bytes[start..at]).filter(|r| r.after.is_none())?;
    let mut last = stored_checksum(bytes, start);
    let mut prints = Prints {
        at: whole.at,
        key: whole.key,
        entries: whole.entries,
    };
    let (mut root, mut changed, mut deltas) = (whole.root, std::collections::BTreeMap::new(), 0);
    while let Some((start, end)) = record_at(bytes, at) {
        let Some(delta) = prints_of_record(&bytes[start..end]).filter(|r| r.after == Some(last)) else {
            break;
        };
        (root, prints.at, prints.key) = (delta.root, delta.at, delta.key);
        changed.extend(delta.entries.into_iter().map(|entry| (entry.pr, Some(entry))));
        changed.extend(delta.gone.into_iter().map(|pr| (pr, None)));
        (last, at, deltas) = (stored_checksum(bytes, start), end, deltas + 1);
    }
    let changes = changed.len();
    apply_changes(&mut prints.entries, changed);
    Some(PrintsFile {
        root,
        prints: Arc::new(prints),
        last,
        changes,
        deltas,
    })
}

/// `entries` (by PR, ascending) with each PR of `changed` set to its entry, or removed: in place
/// when only entries already there change, else merged into a new list.
fn apply_changes(entries: &mut Vec<PrintEntry>, changed: std::collections::BTreeMap<u64, Option<PrintEntry>>) {
    let mut moved = Vec::new();
    for (pr, entry) in changed {
        match (entries.binary_search_by_key(&pr, |e| e.pr), entry) {
            (Ok(i), Some(entry)) => entries[i] = entry,
            (_, entry) => moved.push((pr, entry)),
        }
    }
    if moved.is_empty() {
        return;
    }
    let old = std::mem::take(entries);
    let mut moved = moved.into_iter().peekable();
    for entry in old {
        while let Some((_, new)) = moved.next_if(|(pr, _)| *pr < entry.pr) {
            entries.extend(new);
        }
        match moved.next_if(|(pr, _)| *pr == entry.pr) {
            Some((_, new)) => entries.extend(new),
            None => entries.push(entry),
        }
    }
    entries.extend(moved.filter_map(|(_, new)| new));
}

/// The fact a settled record holds, `None` when it does not parse whole.
fn settled_of(record: &[u8]) -> Option<(TreeId, Settled)> {
    let mut r = meta_codec::Reader::new(record);
    if r.byte().ok()? != SETTLED_RECORD {
        return None;
    }
    let root = TreeId(r.array().ok()?);
    let due = match i64::from_le_bytes(r.array().ok()?) {
        i64::MIN => None,
        secs => Some(DateTime::from_timestamp(secs, 0)?),
    };
    let envs = usize::try_from(u64::from_le_bytes(r.array().ok()?)).ok()?;
    let len = r.byte().ok()? as usize;
    let digest = std::str::from_utf8(r.take(len).ok()?).ok()?.to_string();
    let len = r.byte().ok()? as usize;
    let project = std::str::from_utf8(r.take(len).ok()?).ok()?.to_string();
    (r.at() == record.len()).then_some((
        root,
        Settled {
            project,
            digest,
            due,
            envs,
            prints: None,
        },
    ))
}

/// The header: the format, then the prenv version that wrote the file (another version may
/// render differently, so its facts do not hold).
fn header() -> Vec<u8> {
    let mut out = FORMAT.to_vec();
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.push(b'\n');
    out
}

/// Whether the file at `path` starts with this version's header (read without the rest).
/// With its length, the file's, when it has.
fn has_header(path: &Path) -> (bool, u64) {
    use std::io::Read;
    let mut start = vec![0; header().len()];
    let Ok(mut file) = std::fs::File::open(path) else {
        return (false, 0);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    (file.read_exact(&mut start).is_ok() && header_len(&start).is_some(), len)
}

/// The settled trees of the file at `path`, the latest [`SETTLED_KEPT`]; none when it is absent,
/// of another version or damaged (a record that does not match its checksum ends it).
fn read_settled(path: &Path) -> Vec<(TreeId, Settled)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Some(mut at) = header_len(&bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some((start, end)) = record_at(&bytes, at) {
        out.extend(settled_of(&bytes[start..end]));
        at = end;
    }
    let skip = out.len().saturating_sub(SETTLED_KEPT);
    out.drain(..skip);
    out
}

fn header_len(bytes: &[u8]) -> Option<usize> {
    let header = header();
    bytes.starts_with(&header).then_some(header.len())
}

/// The directory name an environment record is about (empty for one that does not parse).
fn record_name(record: &[u8]) -> &[u8] {
    EnvRecord::parse(record).map_or(&[], |r| r.name)
}

/// The record at `at`: its start and end, when it is whole and matches its checksum.
fn record_at(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let envelope = buf.get(at..at.checked_add(ENVELOPE)?)?;
    let len = u32::from_le_bytes(envelope[..4].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(envelope[4..].try_into().ok()?);
    let start = at + ENVELOPE;
    let end = start.checked_add(len)?;
    let record = buf.get(start..end)?;
    (checksum(record) == sum).then_some((start, end))
}

/// The checksum the envelope of the record starting at `start` holds: that of the record, once
/// [`record_at`] has found it whole, without computing it again.
fn stored_checksum(buf: &[u8], start: usize) -> u64 {
    u64::from_le_bytes(
        buf[start - 8..start]
            .try_into()
            .expect("an envelope ends with 8 bytes of checksum"),
    )
}

fn envelope(out: &mut Vec<u8>, record: &[u8]) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(record).to_le_bytes());
    out.extend_from_slice(record);
}

/// A fast 64-bit checksum (FNV-1a over 8-byte words): it tells a record cut short or overwritten
/// from a whole one. Not a defence against someone forging the cache, which is the user's own.
fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        hash = (hash ^ u64::from_le_bytes(word.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
        hash ^= hash >> 29;
    }
    for &b in words.remainder() {
        hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
    }
    hash
}

/// The file, mapped rather than copied: at 10,000 environments it is 8 MB, and copying it into
/// fresh heap pages was about a sixth of an incremental sync's time. The file is only
/// ever appended to (bytes past the mapped length) or replaced by a rename (the old file stays
/// mapped), never changed in place, so the mapped bytes do not change under the reader.
fn read(path: &Path) -> std::io::Result<Option<Bytes>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_BYTES {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some(Bytes::Owned(Vec::new())));
    }
    // SAFETY: prenv never writes inside the mapped length (see above); a file truncated by hand
    // while a run reads it is the one case this does not cover.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    Ok(Some(Bytes::Mapped(map)))
}

/// Appends `records` to the file in one write.
fn append(path: &Path, records: &[&[u8]]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + ENVELOPE).sum());
    for record in records {
        envelope(&mut out, record);
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(&out)
}

/// Writes the file whole: to a temporary file, renamed over the old one.
fn rewrite(path: &Path, records: &[&[u8]]) -> std::io::Result<()> {
    let dir = path.parent().expect("the memory path has a directory");
    std::fs::create_dir_all(dir)?;
    let mut out = header();
    out.reserve(records.iter().map(|r| r.len() + ENVELOPE).sum());
    for record in records {
        envelope(&mut out, record);
    }
    let (tmp, mut file) = tempfile_in(dir)?;
    file.write_all(&out)?;
    drop(file);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
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

    fn meta(json_tail: &str) -> EnvMeta {
        let json = format!(
            r#"{{"generator":"prenv","schema":1,"env":"shop-pr-7","namespace":"shop-pr-7","pr":7,
            "head_sha":"0000000000000000000000000000000000000007","head_ref":"f/7",
            "url":"https://shop-pr-7.p.example.com","image":"r/i:pr-7","databases":["postgres","mariadb"],
            "created_at":"2026-11-24T12:00:00Z","closed_at":null,"merged":false{json_tail}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    /// The memory as a full read of the repository has it: its records read.
    fn memory_at(dir: &Path) -> RepoMemory {
        let mut memory = RepoMemory::load(dir, Path::new("/nonexistent/repo.git"));
        memory.read_records();
        memory
    }

    #[test]
    fn remembered_metadata_and_files_come_back_from_the_file_and_decode_only_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let plain = meta(r#","preserve_until":null"#);
        let pinned = meta(r#","preserve_until":"2026-11-26T12:00:00Z","committed_at":"2026-11-24T12:00:01Z""#);
        let mut memory = memory_at(dir.path());
        let files = [("prenv.json", BlobId([2; 20])), ("namespace.yaml", BlobId([5; 20]))];
        memory.remember_env(TreeId([1; 20]), KnownEnv::new(&plain, files).unwrap());
        memory.remember_env(TreeId([3; 20]), KnownEnv::new(&pinned, files).unwrap());
        memory.learn(&[(TreeId([1; 20]), None)]);
        memory.save();

        let back = memory_at(dir.path());
        let entry = back.env(TreeId([3; 20]), "shop-pr-7").unwrap();
        assert_eq!(entry.pr, 7);
        assert_eq!(entry.preserve_until, pinned.preserve_until);
        assert_eq!(entry.files.iter().collect::<Vec<_>>(), files);
        assert_eq!(entry.meta(), Ok(&pinned));
        assert_eq!(back.env(TreeId([1; 20]), "shop-pr-7").unwrap().meta(), Ok(&plain));
        assert!(
            back.env(TreeId([1; 20]), "shop-pr-8").is_none(),
            "a record names its directory"
        );
        assert!(back.knows(TreeId([1; 20]), None) && !back.knows(TreeId([3; 20]), None));
    }

    fn settled(envs: usize, due: Option<&str>) -> Settled {
        Settled {
            project: "shop".into(),
            digest: "0123456789abcdef".into(),
            due: due.map(|d| d.parse().unwrap()),
            envs,
            prints: None,
        }
    }

    #[test]
    fn fingerprints_come_back_with_their_tree_only_and_a_damaged_file_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = memory_at(dir.path());
        let entry = |pr, print, env, element| PrintEntry {
            pr,
            print,
            env,
            element,
        };
        let prints = Prints {
            at: "2026-11-24T12:00:00.5Z".parse().unwrap(),
            key: [5; 16],
            entries: vec![
                entry(1, [1; 16], true, Some([3; 16])),
                entry(2, [2; 16], false, None),
                entry(40_000, [7; 16], true, Some([4; 16])),
            ],
        };
        let fact = Settled {
            prints: Some(Arc::new(prints.clone())),
            ..settled(2, None)
        };
        memory.settle(TreeId([9; 20]), &fact);
        memory.save();
        let back = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(back.settled(TreeId([9; 20]), "shop"), Some(fact.clone()));
        assert_eq!(
            back.settled(TreeId([9; 20]), "shop").unwrap().prints.unwrap().get(2),
            Some(&entry(2, [2; 16], false, None))
        );
        // A later tree of the project has its own fingerprints; the earlier one keeps its fact only.
        let mut later = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        later.settle(TreeId([8; 20]), &fact);
        later.save();
        let back = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(back.settled(TreeId([8; 20]), "shop"), Some(fact.clone()));
        assert_eq!(back.settled(TreeId([9; 20]), "shop"), Some(settled(2, None)));
        // One byte changed: the record fails its checksum, and the fact stands without them.
        let path = back.prints_path("shop").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let damaged = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(damaged.settled(TreeId([8; 20]), "shop"), Some(settled(2, None)));
    }

    /// Fingerprints of PRs `prs`, PR `bumped` with a fingerprint of its own.
    fn prints_of_prs(prs: impl IntoIterator<Item = u64>, bumped: Option<(u64, u8)>) -> Prints {
        Prints {
            at: "2026-11-24T12:00:00Z".parse().unwrap(),
            key: [5; 16],
            entries: prs
                .into_iter()
                .map(|pr| PrintEntry {
                    pr,
                    print: match bumped {
                        Some((p, print)) if p == pr => [print; 16],
                        _ => [1; 16],
                    },
                    env: pr % 2 == 0,
                    element: Some([pr as u8; 16]),
                })
                .collect(),
        }
    }

    /// Settles tree `root` with `prints` in a fresh load of `dir`'s memory, as a run does.
    fn settle_run(dir: &Path, root: u8, prints: &Prints) {
        let mut run = RepoMemory::load(dir, Path::new("/nonexistent/repo.git"));
        let fact = Settled {
            prints: Some(Arc::new(prints.clone())),
            ..settled(prints.entries.len(), None)
        };
        // A run asks about the tree it read first, which loads the file.
        let _ = run.settled(TreeId([root.wrapping_sub(1); 20]), "shop");
        run.settle(TreeId([root; 20]), &fact);
        run.save();
    }

    fn prints_back(dir: &Path, root: u8) -> Option<Prints> {
        let back = RepoMemory::load(dir, Path::new("/nonexistent/repo.git"));
        back.settled(TreeId([root; 20]), "shop")?.prints.map(|p| (*p).clone())
    }

    #[test]
    fn a_run_that_changes_a_few_fingerprints_appends_the_change_and_a_read_applies_only_changes_that_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = memory_at(dir.path()).prints_path("shop").unwrap();
        let first = prints_of_prs(1..=1000, None);
        settle_run(dir.path(), 1, &first);
        let whole = std::fs::metadata(&path).unwrap().len();
        assert!(whole > 41_000, "the first run writes every entry: {whole} bytes");
        // One PR changed, one opened, one closed: a change of three entries is appended.
        let second = prints_of_prs((2..=1000).chain([1001]), Some((500, 9)));
        settle_run(dir.path(), 2, &second);
        let grown = std::fs::metadata(&path).unwrap().len() - whole;
        assert_eq!(grown, (ENVELOPE + 65 + 3 * PRINT_ENTRY) as u64);
        assert_eq!(prints_back(dir.path(), 2), Some(second.clone()));
        assert_eq!(prints_back(dir.path(), 1), None, "the file is about the later tree");
        // Changes pile up to the limit, then the file is written whole again.
        let mut last = second;
        let mut root = 2u8;
        let mut sizes = Vec::new();
        for n in 0..PRINTS_DELTAS as u8 {
            root += 1;
            last = prints_of_prs((2..=1000).chain([1001]), Some((600, n)));
            settle_run(dir.path(), root, &last);
            sizes.push(std::fs::metadata(&path).unwrap().len());
            assert_eq!(prints_back(dir.path(), root), Some(last.clone()), "after change {n}");
        }
        assert!(
            sizes.windows(2).take(PRINTS_DELTAS - 2).all(|w| w[1] > w[0]),
            "{sizes:?}"
        );
        assert!(*sizes.last().unwrap() < whole + 200, "written whole again: {sizes:?}");
        // A change appended after a record it does not follow (the file another run rewrote
        // meanwhile) is not applied: the read ends at the other run's tree.
        let bytes = std::fs::read(&path).unwrap();
        let mut other = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        let theirs = prints_of_prs(1..=10, None);
        other.settle(
            TreeId([200; 20]),
            &Settled {
                prints: Some(Arc::new(theirs.clone())),
                ..settled(10, None)
            },
        );
        other.save();
        let mut ours = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        ours.prints_file.get_mut().insert(
            "shop".into(),
            read_prints_bytes(&bytes).expect("the file before the other run"),
        );
        ours.prints
            .get_mut()
            .insert("shop".into(), Some((TreeId([root; 20]), Arc::new(last.clone()))));
        ours.settle(
            TreeId([201; 20]),
            &Settled {
                prints: Some(Arc::new(prints_of_prs((2..=1000).chain([1001]), Some((700, 1))))),
                ..settled(1000, None)
            },
        );
        ours.save();
        assert_eq!(prints_back(dir.path(), 201), None);
        assert_eq!(prints_back(dir.path(), 200), Some(theirs.clone()));
        // A change cut short ends the read before it.
        settle_run(dir.path(), 202, &prints_of_prs(1..=10, Some((3, 3))));
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert_eq!(prints_back(dir.path(), 202), None);
        assert_eq!(prints_back(dir.path(), 200), Some(theirs));
    }

    #[test]
    fn a_settled_tree_comes_back_for_its_project_until_its_pin_ends_and_a_cut_loses_only_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = memory_at(dir.path());
        let pinned = settled(3, Some("2026-11-26T12:00:00Z"));
        memory.settle(TreeId([9; 20]), &pinned);
        memory.settle(TreeId([8; 20]), &settled(3, None));
        memory.save();

        // Read at load, without the records of the large file (which may be gone).
        std::fs::remove_file(memory.path.as_ref().unwrap()).ok();
        let back = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(back.settled(TreeId([9; 20]), "shop"), Some(pinned.clone()));
        assert_eq!(back.settled(TreeId([8; 20]), "shop"), Some(settled(3, None)));
        assert_eq!(
            back.settled(TreeId([7; 20]), "shop"),
            None,
            "a fact is about one tree only"
        );
        assert_eq!(back.settled(TreeId([9; 20]), "blog"), None, "and one project");
        let at: DateTime<Utc> = "2026-11-26T11:59:59Z".parse().unwrap();
        assert!(pinned.holds_for("shop", "0123456789abcdef", at));
        assert!(!pinned.holds_for("shop", "0123456789abcdef", at + chrono::Duration::seconds(1)));
        assert!(
            !pinned.holds_for("blog", "0123456789abcdef", at),
            "another project's run"
        );
        assert!(!pinned.holds_for("shop", "fedcba9876543210", at), "other settings");

        let path = back.settled_path().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let cut = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(cut.settled(TreeId([9; 20]), "shop"), Some(pinned.clone()));
        assert_eq!(cut.settled(TreeId([8; 20]), "shop"), None);

        // Only the latest few are kept.
        let mut many = memory_at(dir.path());
        for i in 0..(SETTLED_KEPT as u8 + 3) {
            many.settle(TreeId([100 + i; 20]), &settled(usize::from(i), None));
        }
        many.save();
        let kept = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert_eq!(kept.settled.len(), SETTLED_KEPT);
        assert_eq!(kept.settled(TreeId([100; 20]), "shop"), None);
        assert!(
            kept.settled(TreeId([100 + SETTLED_KEPT as u8 + 2; 20]), "shop")
                .is_some()
        );
    }

    /// A memory in `dir` that knows 100 directories (trees `[i; 20]`), each verified; returns
    /// their metadata and files.
    fn hundred_verified(dir: &Path) -> (EnvMeta, [(&'static str, BlobId); 1]) {
        let m = meta(r#","preserve_until":null"#);
        let file = [("prenv.json", BlobId([2; 20]))];
        let mut memory = memory_at(dir);
        for i in 0..100u8 {
            memory.remember_env(TreeId([i; 20]), KnownEnv::new(&m, file).unwrap());
        }
        memory.learn(&(0..100u8).map(|i| (TreeId([i; 20]), None)).collect::<Vec<_>>());
        memory.save();
        (m, file)
    }

    #[test]
    fn a_partial_read_never_reads_the_file_and_appends_what_it_learned() {
        let dir = tempfile::tempdir().unwrap();
        let (m, file) = hundred_verified(dir.path());

        let mut partial = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert!(
            partial.env(TreeId([5; 20]), "shop-pr-7").is_none(),
            "the records are not read"
        );
        partial.remember_env(TreeId([200; 20]), KnownEnv::new(&m, file).unwrap());
        partial.learn(&[(TreeId([200; 20]), None), (TreeId([5; 20]), None)]);
        partial.save();

        let again = memory_at(dir.path());
        assert_eq!(
            again.records, 203,
            "appended: one record and two verifications, one a duplicate"
        );
        assert!((0..100u8).chain([200]).all(|i| again.knows(TreeId([i; 20]), None)));
        assert!(again.env(TreeId([200; 20]), "shop-pr-7").is_some());

        // Appending forever would grow the log without end: past about five times its size
        // a partial read is refused, and the full read that follows compacts it.
        let path = again.path.clone().unwrap();
        let mut log = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        log.write_all(&vec![0; 2 << 20]).unwrap();
        let long = RepoMemory::load(dir.path(), Path::new("/nonexistent/repo.git"));
        assert!(long.outgrown(100) && !long.outgrown(1000));
    }

    #[test]
    fn a_rewrite_keeps_only_the_facts_about_trees_the_last_read_saw() {
        let dir = tempfile::tempdir().unwrap();
        hundred_verified(dir.path());

        // A read that sees two of the remembered trees and one the memory never knew.
        let mut back = memory_at(dir.path());
        assert_eq!(back.records, 200);
        assert!(back.env(TreeId([5; 20]), "shop-pr-7").is_some());
        assert!(back.env(TreeId([6; 20]), "shop-pr-7").is_some());
        assert!(back.env(TreeId([200; 20]), "shop-pr-7").is_none());
        back.learn(&[(TreeId([200; 20]), None)]);
        // 201 records against 5 live ones: the file is rewritten with only those.
        back.save();

        let again = memory_at(dir.path());
        assert_eq!(again.records, 5);
        assert!(again.env(TreeId([5; 20]), "shop-pr-7").is_some());
        assert!(again.env(TreeId([7; 20]), "shop-pr-7").is_none());
        assert!(again.knows(TreeId([6; 20]), None) && again.knows(TreeId([200; 20]), None));
        assert!(!again.knows(TreeId([7; 20]), None));
    }

    #[test]
    fn a_file_written_whole_holds_its_environments_in_the_order_a_read_asks_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = [("prenv.json", BlobId([2; 20]))];
        let mut memory = memory_at(dir.path());
        for n in (1..=50u8).rev() {
            let mut m = meta(r#","preserve_until":null"#);
            m.env = crate::model::naming::EnvName::new("shop", u64::from(n)).unwrap();
            memory.remember_env(TreeId([n; 20]), KnownEnv::new(&m, file).unwrap());
        }
        // Every directory verified, and PR #3's with a second wiring too (its wiring changed).
        let facts: Vec<_> = (1..=50u8).map(|n| (TreeId([n; 20]), Some(BlobId([n; 20])))).collect();
        memory.learn(&facts);
        memory.learn(&[(TreeId([3; 20]), None)]);
        // No file yet: the first save writes it whole.
        memory.save();
        let bytes = std::fs::read(memory.path.clone().unwrap()).unwrap();
        let mut at = header_len(&bytes).unwrap();
        let (mut names, mut kinds) = (Vec::new(), Vec::new());
        while let Some((start, end)) = record_at(&bytes, at) {
            let record = &bytes[start..end];
            kinds.push((record[0], record[1]));
            if record[0] == ENV_RECORD {
                names.push(String::from_utf8(record_name(record).to_vec()).unwrap());
            }
            at = end;
        }
        assert_eq!(names.len(), 50);
        assert_eq!(names[..3], ["shop-pr-1", "shop-pr-10", "shop-pr-11"]);
        assert!(names.is_sorted(), "{names:?}");
        // Each verification right after the record of the directory it is about.
        assert_eq!(kinds.len(), 101);
        for pair in kinds.chunks(2).take(22) {
            assert_eq!(pair[1], (VERIFIED_RECORD, pair[0].1), "{kinds:?}");
        }
        let three = kinds.iter().position(|k| *k == (ENV_RECORD, 3)).unwrap();
        assert_eq!(kinds[three + 1..three + 3], [(VERIFIED_RECORD, 3); 2]);

        // PR #7's directory recorded once more after its verification (a second run learned it
        // too and appended it): the verification still holds.
        let mut m = meta(r#","preserve_until":null"#);
        m.env = crate::model::naming::EnvName::new("shop", 7).unwrap();
        let mut again = KnownEnv::new(&m, file).unwrap().0;
        again[1..21].copy_from_slice(&[7; 20]);
        append(&memory.path.clone().unwrap(), &[&again]).unwrap();

        // Read back: a directory's verification comes with it, and both of PR #3's are known.
        let back = memory_at(dir.path());
        assert_eq!(back.records, 102);
        let mut entry = back.env(TreeId([7; 20]), "shop-pr-7").unwrap();
        assert_eq!(entry.verified, Some((TreeId([7; 20]), Some(BlobId([7; 20])))));
        assert!(back.knows(TreeId([3; 20]), Some(BlobId([3; 20]))) && back.knows(TreeId([3; 20]), None));
        assert!(!back.knows(TreeId([3; 20]), Some(BlobId([4; 20]))));
        // Its wiring is found later in the read, beside the directory.
        entry.wiring = Some(BlobId([7; 20]));
        let mut rewired = entry.clone();
        rewired.wiring = Some(BlobId([8; 20]));
        assert!(back.knows_entry(&entry) && !back.knows_entry(&rewired));
    }

    #[test]
    fn a_run_appends_what_it_learned_and_a_cut_record_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(r#","preserve_until":null"#);
        let file = [("prenv.json", BlobId([2; 20]))];
        let mut memory = memory_at(dir.path());
        for i in 0..10u8 {
            memory.remember_env(TreeId([i; 20]), KnownEnv::new(&m, file).unwrap());
        }
        memory.save();
        let path = memory.path.clone().unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();

        // The next run sees the same ten trees and learns one fact: the file grows by one record.
        let mut next = memory_at(dir.path());
        for i in 0..10u8 {
            assert!(next.env(TreeId([i; 20]), "shop-pr-7").is_some());
        }
        next.learn(&[(TreeId([4; 20]), Some(BlobId([9; 20])))]);
        next.save();
        let grown = std::fs::metadata(&path).unwrap().len();
        assert_eq!(grown, whole + (ENVELOPE + 42) as u64, "appended, not rewritten");

        // A run killed mid-append: the cut record is dropped, everything before it is kept.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        let damaged = memory_at(dir.path());
        assert!(damaged.knows(TreeId([4; 20]), Some(BlobId([9; 20]))));
        assert!(damaged.env(TreeId([9; 20]), "shop-pr-7").is_some());
        assert!(damaged.rewrite, "a damaged file is written whole at the next save");

        // A flipped byte inside a record fails its checksum.
        let mut flipped = std::fs::read(&path).unwrap();
        let at = header().len() + ENVELOPE + 30;
        flipped[at] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        let damaged = memory_at(dir.path());
        assert!(
            damaged.envs.borrow().is_empty(),
            "nothing after a damaged record is trusted"
        );
    }
}
