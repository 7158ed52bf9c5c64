//! The seams where the imperative shells meet the pure core: small traits for the pull-request
//! source and the environments repository, the value a repository read returns, and in-memory
//! fakes that the sync flow's table tests (and anyone else's) use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::model::layout::{BlobId, EnvFiles, Place, TreeId, env_dir, flux_file, flux_legacy_file};
use crate::model::meta::EnvMeta;
use crate::model::naming::EnvName;
use crate::model::pr::{ElementId, Snapshot};
use crate::model::tree::Tree;

/// A commit of the environments repository, as its store names it (a git commit id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Revision(pub String);

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What prenv owns in the environments repository at one revision, and what else it found where
/// its files would go: read once per attempt, and planned against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoView {
    /// The branch tip that was read; `None` for a branch (or repository) with no commit yet.
    pub tip: Option<Revision>,
    /// The environments prenv created (their metadata files carry its mark), with their files.
    pub envs: Envs,
    /// Blob ids of the other files prenv owns: the wiring indexes, the projects' Flux
    /// Kustomizations, the Argo CD files, and the Kustomizations of environments without a
    /// directory of their own (`wired_only`, blocked).
    /// An environment's own files and Kustomization are in its [`EnvEntry`].
    pub owned: BTreeMap<String, BlobId>,
    /// Environment names prenv must not touch, and why: taken by something not prenv's, or prenv's
    /// but unreadable.
    pub blocked: BTreeMap<String, Blocked>,
    /// Environments whose wiring the index lists but whose directory is gone.
    pub wired_only: BTreeSet<EnvName>,
    /// The kustomize indexes of the Flux wiring by path: the root one and each project's.
    pub flux_indexes: BTreeMap<String, FluxIndex>,
    /// Files that are not prenv's inside the directories it writes to (kept, reported).
    pub strays: BTreeSet<String>,
    /// Directories prenv writes into (`environments`, `flux/environments`, …) that exist as something
    /// else: nothing can be written there until someone moves it away.
    pub obstacles: BTreeSet<String>,
    /// Top-level entries, so templates are added only where the repository has none.
    pub top_level: BTreeSet<String>,
    /// Template directories of projects that hold a `kustomization.yaml`
    /// (`projects/<id>/base`, `projects/<id>/overlays/<db>`): an environment builds on its
    /// project's own template where there is one.
    pub templates: BTreeSet<String>,
    /// The project the ApplicationSet of `argocd/applicationset.yaml` (the file before projects
    /// had one each) belongs to, when the file is there and names one.
    pub argo_legacy_project: Option<String>,
    /// `Some` for a partial view ([`EnvStore::read_settled`]): it holds only the environments a
    /// run asked for, and no wiring shared by all of them (indexes, project Kustomizations,
    /// ApplicationSets), because an earlier run left the tree it read settled; the rest of the
    /// project's environments are kept as they are without being read.
    pub settled: Option<Settled>,
    /// With a partial view, the PRs a run decides when it was read for a snapshot or a listing
    /// ([`crate::app::sync::read_for`], [`crate::app::sync::read_listed`]): what
    /// [`crate::core::prints::to_decide`] gave, so it is not worked out again.
    pub decide: Option<Arc<BTreeSet<u64>>>,
}

/// What a run that ended at a tree knows of it: every environment of `project` there is as prenv
/// renders it with settings of digest `digest`, verified, listed by indexes as rendered, with
/// nothing blocked, stray, held or wired without a directory; so a later run whose snapshot does
/// not mention an environment keeps it as it is, until the earliest pin among them ends (`due`).
/// A fact about the tree's content, keyed by its id: true whoever committed it, and void for any
/// other tree (anyone's push changes the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub project: String,
    /// [`crate::model::config::Config::render_digest`] of the settings it was rendered with.
    pub digest: String,
    /// When the first pin among the environments ends; `None` when none is pinned.
    pub due: Option<DateTime<Utc>>,
    /// How many environments of the project the tree holds.
    pub envs: usize,
    /// What each PR looked like to the runs that left its environment so ([`Prints`]), when the
    /// store kept it: a snapshot of every PR then needs reading only the environments of PRs that
    /// changed since.
    pub prints: Option<Arc<Prints>>,
}

/// A fingerprint of one PR as a run saw it, with the settings that decide what it gets
/// ([`crate::core::prints::print`]).
pub type Print = [u8; 16];

/// The PRs whose decision a settled tree already holds: for each, the fingerprint of the PR the
/// decision was made from. Deciding a PR with the same fingerprint again, against that tree and
/// with the same settings, changes nothing (a decision is a function of the PR, the settings, the
/// environment it finds and the time), so a run may leave it out. Only decisions that wait for
/// nothing are listed: an environment waiting for its image asks the registry on every run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prints {
    /// The latest time a listed decision was made at: a run at an earlier time (a `--now` in the
    /// past) decides everything again, since creation and commit times are clamped to it.
    pub at: DateTime<Utc>,
    /// The settings every fingerprint is keyed by ([`crate::core::prints::key_id`]): element
    /// digests are not keyed, so they count only under these.
    pub key: Print,
    /// By PR number, ascending, each PR once.
    pub entries: Vec<PrintEntry>,
}

/// One PR of [`Prints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrintEntry {
    pub pr: u64,
    pub print: Print,
    /// Whether the PR has an environment in the tree.
    pub env: bool,
    /// The digest of the listing element the PR was built from ([`crate::model::pr::Listing`]),
    /// when one was: the same bytes again are the same PR, known without building it.
    pub element: Option<ElementId>,
}

impl Prints {
    /// The entry of PR `pr`.
    pub fn get(&self, pr: u64) -> Option<&PrintEntry> {
        let at = self.entries.binary_search_by_key(&pr, |e| e.pr).ok()?;
        Some(&self.entries[at])
    }

    /// The PRs by the digest of the listing element each was built from.
    pub fn by_element(&self) -> rustc_hash::FxHashMap<ElementId, u64> {
        let mut known = rustc_hash::FxHashMap::with_capacity_and_hasher(self.entries.len(), Default::default());
        known.extend(self.entries.iter().filter_map(|e| Some((e.element?, e.pr))));
        known
    }
}

impl Settled {
    /// Whether a run for `project` with settings of digest `digest`, at `now`, may trust it.
    pub fn holds_for(&self, project: &str, digest: &str, now: DateTime<Utc>) -> bool {
        self.project == project && self.digest == digest && self.due.is_none_or(|due| now < due)
    }
}

/// Metadata a store remembers from an earlier read of the same tree, decoded only when a run needs
/// it: in a repository of thousands of environments most are only counted and kept, and decoding
/// every one would make each sync cost what exists rather than what changed.
pub trait MetaSource: Send + Sync {
    /// The metadata, or why the remembered bytes do not decode.
    fn decode(&self) -> std::result::Result<EnvMeta, String>;
}

/// The metadata of one environment: read with its directory, or remembered and decoded on demand.
/// Boxed: an environment entry is moved several times on its way into a view of thousands, and
/// carrying the metadata inline made each move hundreds of bytes.
#[derive(Clone)]
enum Meta {
    Read(Box<EnvMeta>),
    Remembered {
        source: Arc<dyn MetaSource>,
        decoded: OnceLock<std::result::Result<Box<EnvMeta>, String>>,
    },
}

/// One environment prenv owns: what its metadata says (decoded when asked), the few facts a plan
/// needs for every environment (kept here so that most environments are never decoded), and the
/// ids of its files and its Kustomization.
#[derive(Clone)]
pub struct EnvEntry {
    pub pr: u64,
    /// When a pinned environment goes; `None` when it is not pinned.
    pub preserve_until: Option<DateTime<Utc>>,
    /// The settings digest its files were rendered with ([`crate::model::config::Config::render_digest`]).
    /// Shared (all of a project's environments carry the same one): one allocation fewer per
    /// environment of a view of thousands.
    pub render_digest: Arc<str>,
    /// The project its metadata names; `None` in metadata from before projects shared a repository.
    pub project: Option<Arc<str>>,
    /// The directory's tree id, where the store knows it.
    pub tree: Option<TreeId>,
    /// prenv's files in the directory.
    pub files: EnvFiles,
    /// A verification the store's memory holds for this directory (its tree id and a wiring blob
    /// id), handed out with the entry so that [`Verifications::knows_entry`] needs no second
    /// lookup; not part of what the environment is (ignored by `==`).
    pub verified: Option<(TreeId, Option<BlobId>)>,
    /// Its Flux Kustomization, when there is one.
    pub wiring: Option<BlobId>,
    /// The Kustomization sits where environments were wired before projects had an index
    /// ([`flux_legacy_file`]), not in its project's directory ([`flux_file`]).
    pub legacy_wiring: bool,
    meta: Meta,
}

impl EnvEntry {
    /// An environment whose metadata was just read.
    pub fn read(meta: EnvMeta, tree: Option<TreeId>, files: EnvFiles) -> EnvEntry {
        EnvEntry {
            pr: meta.pr,
            preserve_until: meta.preserve_until,
            render_digest: Arc::from(meta.render_digest.as_str()),
            project: meta.project.as_deref().map(Arc::from),
            tree,
            files,
            verified: None,
            wiring: None,
            legacy_wiring: false,
            meta: Meta::Read(Box::new(meta)),
        }
    }

    /// An environment the store knows from an earlier read of tree `tree`; `pr`, `preserve_until`
    /// and `render_digest` are what the remembered metadata says.
    #[allow(clippy::too_many_arguments, reason = "the facts a record keeps, each distinct")]
    pub fn remembered(
        pr: u64,
        preserve_until: Option<DateTime<Utc>>,
        render_digest: Arc<str>,
        project: Option<Arc<str>>,
        tree: TreeId,
        files: EnvFiles,
        source: Arc<dyn MetaSource>,
    ) -> EnvEntry {
        EnvEntry {
            pr,
            preserve_until,
            render_digest,
            project,
            tree: Some(tree),
            files,
            verified: None,
            wiring: None,
            legacy_wiring: false,
            meta: Meta::Remembered {
                source,
                decoded: OnceLock::new(),
            },
        }
    }

    /// The metadata, decoded on first use; an error says why remembered bytes did not decode.
    pub fn meta(&self) -> std::result::Result<&EnvMeta, &str> {
        match &self.meta {
            Meta::Read(meta) => Ok(meta),
            Meta::Remembered { source, decoded } => decoded
                .get_or_init(|| source.decode().map(Box::new))
                .as_deref()
                .map_err(String::as_str),
        }
    }

    /// Whether environment `name` is project `project_id`'s (the rule of
    /// [`crate::model::meta::belongs_to`], without decoding the metadata).
    pub fn belongs_to(&self, name: &str, project_id: &str) -> bool {
        let named = crate::model::naming::pr_of(project_id, name).is_some();
        match &self.project {
            Some(project) => **project == *project_id && named,
            None => named,
        }
    }

    /// The blob id of prenv's file `name` in the directory.
    pub fn file(&self, name: &str) -> Option<BlobId> {
        self.files.get(name)
    }

    /// Where environment `env`'s Flux Kustomization is (when it has one).
    pub fn wiring_path(&self, env: &str) -> String {
        if self.legacy_wiring {
            flux_legacy_file(env)
        } else {
            flux_file(env)
        }
    }
}

impl std::fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvEntry")
            .field("meta", &self.meta())
            .field("tree", &self.tree)
            .field("files", &self.files)
            .field("wiring", &self.wiring)
            .field("legacy_wiring", &self.legacy_wiring)
            .finish()
    }
}

impl PartialEq for EnvEntry {
    fn eq(&self, other: &EnvEntry) -> bool {
        self.tree == other.tree
            && self.files == other.files
            && self.wiring == other.wiring
            && self.legacy_wiring == other.legacy_wiring
            && self.meta() == other.meta()
    }
}

impl Eq for EnvEntry {}

/// The environments prenv owns, by name: a vector kept in name order, each name once. Not a map: a
/// view of 10,000 environments is built once from a tree that lists them in order and then only
/// walked and searched, and a map's nodes, the sort it does to be built and the walk that frees it
/// were a tenth of an incremental sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envs(Vec<(EnvName, EnvEntry)>);

impl Envs {
    fn find(&self, env: &str) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| name.as_str().cmp(env))
    }

    /// Adds environment `name`, or replaces what was there under it.
    pub fn insert(&mut self, name: EnvName, entry: EnvEntry) {
        match self.find(name.as_str()) {
            Ok(at) => self.0[at].1 = entry,
            Err(at) => self.0.insert(at, (name, entry)),
        }
    }

    /// Adds many environments at once; a later one replaces an earlier one of the same name, as
    /// [`Envs::insert`] would. Into an empty set, a list already in order (a repository's tree lists
    /// them so) is taken as it is.
    pub fn extend(&mut self, entries: Vec<(EnvName, EnvEntry)>) {
        if self.0.is_empty() {
            self.0 = entries;
        } else {
            self.0.extend(entries);
        }
        if !self.0.is_sorted_by(|a, b| a.0 < b.0) {
            self.0.sort_by(|a, b| a.0.cmp(&b.0));
            // Of equal names the stable sort keeps the order they came in; the last one stays
            // (`dedup_by` keeps the first of a run, so each later one is swapped into its place).
            self.0.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
    }

    /// The metadata of environment `env`; `None` when there is no such environment, or its
    /// remembered metadata does not decode (see [`Envs::entry`]).
    pub fn get(&self, env: &str) -> Option<&EnvMeta> {
        self.entry(env)?.meta().ok()
    }

    pub fn entry(&self, env: &str) -> Option<&EnvEntry> {
        self.find(env).ok().map(|at| &self.0[at].1)
    }

    pub fn entry_mut(&mut self, env: &str) -> Option<&mut EnvEntry> {
        self.find(env).ok().map(|at| &mut self.0[at].1)
    }

    /// Every environment, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&EnvName, &EnvEntry)> {
        self.0.iter().map(|(name, entry)| (name, entry))
    }

    /// Every environment, in name order, to change.
    pub fn entries_mut(&mut self) -> impl Iterator<Item = (&EnvName, &mut EnvEntry)> {
        self.0.iter_mut().map(|(name, entry)| (&*name, entry))
    }

    /// Every environment with metadata that decodes (decoding all of them).
    pub fn iter(&self) -> impl Iterator<Item = (&EnvName, &EnvMeta)> {
        self.0.iter().filter_map(|(n, e)| Some((n, e.meta().ok()?)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &EnvName> {
        self.0.iter().map(|(name, _)| name)
    }

    pub fn contains_key(&self, env: &str) -> bool {
        self.find(env).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The metadata of every environment, decoded: for small repositories and tests.
    pub fn to_map(&self) -> BTreeMap<EnvName, EnvMeta> {
        self.iter().map(|(n, m)| (n.clone(), m.clone())).collect()
    }
}

impl FromIterator<(EnvName, EnvMeta)> for Envs {
    fn from_iter<I: IntoIterator<Item = (EnvName, EnvMeta)>>(iter: I) -> Envs {
        let mut envs = Envs::default();
        envs.extend(
            iter.into_iter()
                .map(|(n, m)| (n, EnvEntry::read(m, None, EnvFiles::default())))
                .collect(),
        );
        envs
    }
}

/// Why prenv keeps its hands off an environment's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Something that is not prenv's: a directory without the mark, a file, a link, a submodule.
    NotPrenvs(String),
    /// A directory with prenv's metadata file that cannot be read (merge conflict, wrong type, …).
    Unreadable { file: String, error: String },
}

impl Blocked {
    /// What the operator reads in the plan.
    pub fn explain(&self, env: &str) -> String {
        match self {
            Blocked::NotPrenvs(what) => format!(
                "environments/{env} exists and is not prenv's ({what}); it is left alone: rename or remove it to let prenv deploy this PR"
            ),
            Blocked::Unreadable { file, error } => format!(
                "cannot read {file} ({error}); the environment is kept as it is: fix or restore the file (git log -p {file})"
            ),
        }
    }
}

impl RepoView {
    /// PR numbers of the environments project `project_id` has: the ones its listing must
    /// account for (another project's PR numbers mean other pull requests).
    pub fn prs_with_envs(&self, project_id: &str) -> BTreeSet<u64> {
        self.envs_of(project_id).map(|(_, e)| e.pr).collect()
    }

    /// The environments of project `project_id` ([`EnvEntry::belongs_to`]), undecoded.
    pub fn envs_of<'a>(&'a self, project_id: &'a str) -> impl Iterator<Item = (&'a EnvName, &'a EnvEntry)> + 'a {
        self.envs
            .entries()
            .filter(move |(name, e)| e.belongs_to(name.as_str(), project_id))
    }

    /// How many environments project `project_id` has that a prune could remove: those with a
    /// directory and those whose directory is gone but whose wiring is listed (a closed PR's
    /// wiring goes by a prune decision too). The circuit breaker's denominator: counting only
    /// directories, a run that prunes every environment plus one wired-only one would weigh more
    /// than all that exists.
    pub fn env_count_of(&self, project_id: &str) -> usize {
        let wired_only = self
            .wired_only
            .iter()
            .filter(|env| {
                crate::model::naming::pr_of(project_id, env.as_str()).is_some() && !self.envs.contains_key(env.as_str())
            })
            .count();
        self.envs_of(project_id).count() + wired_only
    }

    /// The environments with a Kustomization prenv owns at the top of the wiring (`legacy`,
    /// [`flux_legacy_file`]) or in their project's directory ([`flux_file`]): those whose path
    /// [`RepoView::owned_id`] knows, found in one pass over the entries and the (few) other owned
    /// files rather than by a formatted path and a lookup per name.
    pub fn wired_envs(&self, legacy: bool) -> impl Iterator<Item = &str> {
        let entries = self
            .envs
            .entries()
            .filter(move |(_, e)| e.wiring.is_some() && e.legacy_wiring == legacy)
            .map(|(env, _)| env.as_str());
        let owned = self.owned.keys().filter_map(move |path| match Place::of(path) {
            Place::FluxWiring { env, legacy: l } if l == legacy => Some(env),
            _ => None,
        });
        entries.chain(owned)
    }

    /// The blob id of a file prenv owns, `None` when it owns no such file.
    pub fn owned_id(&self, path: &str) -> Option<BlobId> {
        match Place::of(path) {
            Place::EnvFile { env, file } => self.envs.entry(env)?.file(file),
            Place::FluxWiring { env, legacy } => match self.envs.entry(env) {
                Some(entry) if entry.legacy_wiring == legacy && entry.wiring.is_some() => entry.wiring,
                _ => self.owned.get(path).copied(),
            },
            _ => self.owned.get(path).copied(),
        }
    }

    /// Every file prenv owns with its blob id: the files of each environment `keep` accepts and
    /// the rest of the wiring.
    pub fn owned_files(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, BlobId)> {
        let mut out: Vec<(String, BlobId)> = Vec::new();
        for (env, entry) in self.envs.entries().filter(|(env, _)| keep(env.as_str())) {
            let dir = env_dir(env.as_str());
            out.extend(entry.files.iter().map(|(f, id)| (format!("{dir}/{f}"), id)));
            if let Some(id) = entry.wiring {
                out.push((entry.wiring_path(env.as_str()), id));
            }
        }
        let other = self
            .owned
            .iter()
            .filter(|(path, _)| Place::of(path).env().is_none_or(&keep))
            .map(|(p, id)| (p.clone(), *id));
        out.extend(other);
        out
    }
}

/// One kustomize index of the Flux wiring as the repository holds it: its bytes are kept and
/// parsed only when a run needs to know what it lists (for the root index and the running
/// project's, and only when it would change or a file beside it is not an environment's own), so
/// another project's index of thousands of entries costs a blob read, not a parse.
#[derive(Clone)]
pub struct FluxIndex {
    pub id: BlobId,
    bytes: Arc<[u8]>,
    read: OnceLock<IndexRead>,
}

/// What an index lists, and whether it is one prenv writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRead {
    /// The names it lists as `<name>.yaml`; `None` when it does not parse as a kustomization.
    pub listed: Option<BTreeSet<String>>,
    /// Why it is not an index as prenv writes it (it does not parse, or holds a key or an entry
    /// prenv never writes); `None` when it is one.
    pub foreign: Option<String>,
}

impl FluxIndex {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> FluxIndex {
        let bytes = bytes.into();
        FluxIndex::stored(BlobId::of(&bytes), bytes)
    }

    /// An index whose blob id `id` the store already knows: not hashed again (the project index
    /// of 10,000 environments is a quarter of a megabyte).
    pub fn stored(id: BlobId, bytes: impl Into<Arc<[u8]>>) -> FluxIndex {
        FluxIndex {
            id,
            bytes: bytes.into(),
            read: OnceLock::new(),
        }
    }

    /// Its bytes as the repository holds them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What it lists, parsed on first use.
    pub fn read(&self) -> &IndexRead {
        self.read.get_or_init(|| crate::core::diff::read_index(&self.bytes))
    }

    /// Whether it has been parsed (tests check that a run parses only what it needs).
    pub fn parsed(&self) -> bool {
        self.read.get().is_some()
    }
}

impl std::fmt::Debug for FluxIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluxIndex").field("id", &self.id.to_string()).finish()
    }
}

impl PartialEq for FluxIndex {
    fn eq(&self, other: &FluxIndex) -> bool {
        self.id == other.id
    }
}

impl Eq for FluxIndex {}

/// What is known about environment contents from earlier runs: an environment directory with tree
/// id T, and wiring with blob id W, that once matched its rendering always does (the content
/// includes the metadata it is rendered from), so the memory is right for any repository, any time,
/// and a lost or stale memory costs only a render.
pub trait Verifications {
    fn knows(&self, tree: TreeId, wiring: Option<BlobId>) -> bool;
    fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]);

    /// Whether environment `entry`'s directory and wiring are known to be as rendered: the
    /// verification it was handed out with, when that is about its tree and wiring, or
    /// [`Verifications::knows`].
    fn knows_entry(&self, entry: &EnvEntry) -> bool {
        let Some(tree) = entry.tree else { return false };
        entry.verified == Some((tree, entry.wiring)) || self.knows(tree, entry.wiring)
    }
}

/// No memory: every environment is rendered and compared.
pub struct NoMemory;

impl Verifications for NoMemory {
    fn knows(&self, _: TreeId, _: Option<BlobId>) -> bool {
        false
    }

    fn learn(&mut self, _: &[(TreeId, Option<BlobId>)]) {}
}

/// Where pull requests come from: a snapshot file, or GitHub.
pub trait PrSource {
    /// The PRs to plan with; `with_envs` are the PRs that have an environment, which the source must
    /// account for (listed, looked up, or reported unconfirmed).
    fn snapshot(&self, with_envs: &BTreeSet<u64>) -> Result<Snapshot>;
}

/// What the registry said about one image (`repository:tag`), asked before an environment moves to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFact {
    /// The registry has it: the environment may move.
    Present,
    /// The registry answered that it has no such tag (a 404): CI has not pushed it yet.
    Absent,
    /// No answer prenv can trust (an outage, a timeout, refused credentials), and why: the
    /// environment keeps what it runs, exactly as for an absent image, and the plan says why.
    Unknown(String),
}

/// Facts by image (`repository:tag`). An image the map does not name was not asked about (the check
/// is off, or the caller is a test or benchmark): it counts as present, as before the check existed.
pub type ImageFacts = BTreeMap<String, ImageFact>;

/// Where image facts come from: the registry, or a fake. One call per run, for the images of the
/// heads that would change; an implementation answers every image it is given.
pub trait ImageRegistry {
    fn check(&self, images: &BTreeSet<String>) -> ImageFacts;
}

/// One commit to publish: files to add or replace, paths to delete, and the message.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub upserts: Tree,
    pub removals: Vec<String>,
    pub message: String,
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Done(Revision),
    /// Another writer moved the branch first; read again and re-plan.
    Rejected,
}

/// The environments repository.
pub trait EnvStore {
    /// For messages: the path or URL, credentials removed.
    fn display(&self) -> &str;
    /// The branch prenv commits to.
    fn branch(&self) -> &str;
    /// Reads what prenv owns at the branch tip now (fetching first, for a remote).
    fn read(&mut self) -> Result<RepoView>;
    /// The bytes of a file at the view's revision, `None` when absent.
    fn read_file(&self, view: &RepoView, path: &str) -> Result<Option<Vec<u8>>>;
    /// Writes one commit on top of `base.tip` and moves the branch to it only if the branch still
    /// points at `base.tip` (compare and swap).
    fn publish(&mut self, base: &RepoView, change: &Change) -> Result<Published>;
    /// What the store remembers of earlier runs' verifications; a store may remember nothing.
    fn verifications(&self) -> &dyn Verifications {
        &NoMemory
    }
    /// Keeps what this run verified (see [`Verifications`]) for the next run, where the store can.
    fn learn(&mut self, _verified: &[(TreeId, Option<BlobId>)]) {}
    /// Reads the tip like [`EnvStore::read`], but as a partial view (see [`RepoView::settled`])
    /// when its tree is one an earlier run recorded as settled and [`Settled::holds_for`] this
    /// run: of only the environments `envs` names, given that fact (`None`: read it all); `envs`
    /// is called once at most. A store that remembers nothing reads it all.
    fn read_settled(
        &mut self,
        _project: &str,
        _digest: &str,
        _envs: &mut dyn FnMut(&Settled) -> Option<BTreeSet<String>>,
        _now: DateTime<Utc>,
    ) -> Result<RepoView> {
        self.read()
    }
    /// Records that the tree of commit `at` is settled (kept with what [`EnvStore::learn`] keeps,
    /// so call it first).
    fn settle(&mut self, _at: &Revision, _settled: &Settled) {}
}

/// In-memory fakes of the ports, for table tests of the flows and for benchmarks.
pub mod memory {
    use super::*;

    /// A PR source that answers the same snapshot every time.
    #[derive(Debug, Clone, Default)]
    pub struct FixedPrs(pub Snapshot);

    impl PrSource for FixedPrs {
        fn snapshot(&self, _with_envs: &BTreeSet<u64>) -> Result<Snapshot> {
            Ok(self.0.clone())
        }
    }

    /// A registry that holds a fixed set of images and fails for the ones in `failing`; it counts
    /// the images it was asked about, so tests see which checks a run made.
    #[derive(Debug, Default)]
    pub struct KnownImages {
        pub present: BTreeSet<String>,
        /// Image → the error the registry gives for it.
        pub failing: BTreeMap<String, String>,
        pub asked: std::sync::Mutex<Vec<String>>,
    }

    impl ImageRegistry for KnownImages {
        fn check(&self, images: &BTreeSet<String>) -> ImageFacts {
            let mut asked = self.asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            asked.extend(images.iter().cloned());
            images
                .iter()
                .map(|image| {
                    let fact = match self.failing.get(image) {
                        Some(why) => ImageFact::Unknown(why.clone()),
                        None if self.present.contains(image) => ImageFact::Present,
                        None => ImageFact::Absent,
                    };
                    (image.clone(), fact)
                })
                .collect()
        }
    }

    /// A verification memory held in memory.
    #[derive(Debug, Clone, Default)]
    pub struct Remembered(pub BTreeSet<(TreeId, Option<BlobId>)>);

    impl Verifications for Remembered {
        fn knows(&self, tree: TreeId, wiring: Option<BlobId>) -> bool {
            self.0.contains(&(tree, wiring))
        }

        fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]) {
            self.0.extend(verified.iter().copied());
        }
    }

    /// A repository held in memory with the semantics prenv relies on from git: each publish is one
    /// commit, applied only if the branch has not moved (compare and swap).
    #[derive(Default)]
    pub struct MemoryStore {
        /// What runs verified, as a store that remembers keeps it.
        pub memory: Remembered,
        /// Every commit's whole tree, oldest first; the last is the branch tip.
        pub commits: Vec<(Tree, String)>,
        /// Called before each publish to simulate another writer; returning a tree commits it first.
        #[allow(clippy::type_complexity)]
        pub interloper: Option<Box<dyn FnMut(&Tree) -> Option<Tree> + Send>>,
    }

    impl MemoryStore {
        pub fn new() -> MemoryStore {
            MemoryStore::default()
        }

        /// The tree at the tip (empty before the first commit).
        pub fn tip_tree(&self) -> Tree {
            self.commits.last().map(|(t, _)| t.clone()).unwrap_or_default()
        }

        fn revision(&self) -> Option<Revision> {
            (!self.commits.is_empty()).then(|| Revision(self.commits.len().to_string()))
        }
    }

    impl EnvStore for MemoryStore {
        fn display(&self) -> &str {
            "memory"
        }

        fn branch(&self) -> &str {
            "main"
        }

        fn read(&mut self) -> Result<RepoView> {
            Ok(crate::core::diff::view_of(&self.tip_tree(), self.revision()))
        }

        fn read_file(&self, view: &RepoView, path: &str) -> Result<Option<Vec<u8>>> {
            let at = view.tip.as_ref().and_then(|r| r.0.parse::<usize>().ok());
            Ok(at
                .and_then(|n| self.commits.get(n - 1))
                .and_then(|(t, _)| t.get(path).map(<[u8]>::to_vec)))
        }

        fn verifications(&self) -> &dyn Verifications {
            &self.memory
        }

        fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]) {
            self.memory.learn(verified);
        }

        fn publish(&mut self, base: &RepoView, change: &Change) -> Result<Published> {
            let tip = self.tip_tree();
            if let Some(interloper) = self.interloper.as_mut()
                && let Some(theirs) = interloper(&tip)
            {
                self.commits.push((theirs, "another writer".into()));
            }
            if base.tip != self.revision() {
                return Ok(Published::Rejected);
            }
            let mut tree = Tree::new();
            for (path, bytes) in self.tip_tree().iter() {
                if !change.removals.iter().any(|r| r == path) {
                    tree.insert(path, bytes)?;
                }
            }
            tree.extend(change.upserts.clone());
            self.commits.push((tree, change.message.clone()));
            Ok(Published::Done(self.revision().expect("just committed")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plan::tests::{at, config, env_meta_for, pr};

    /// Environment of PR `n`, told apart from another of the same name by its head ref.
    fn entry(n: u64, head_ref: &str) -> (EnvName, EnvEntry) {
        let cfg = config();
        let name = EnvName::new(&cfg.project_id, n).unwrap();
        let mut meta = env_meta_for(&cfg, &pr(n), name.clone(), at("2026-11-01T00:00:00Z"));
        meta.head_ref = head_ref.into();
        (name, EnvEntry::read(meta, None, EnvFiles::default()))
    }

    fn names(envs: &Envs) -> Vec<&str> {
        envs.keys().map(EnvName::as_str).collect()
    }

    #[test]
    fn environments_stay_in_name_order_each_name_once() {
        let mut envs = Envs::default();
        // Out of order, with a name twice: the later one is the one kept, as a map's insert would.
        envs.extend(vec![
            entry(3, "three"),
            entry(10, "ten"),
            entry(1, "one"),
            entry(3, "three again"),
        ]);
        assert_eq!(names(&envs), ["shop-pr-1", "shop-pr-10", "shop-pr-3"]);
        assert_eq!(envs.get("shop-pr-3").unwrap().head_ref, "three again");
        envs.extend(vec![entry(2, "two"), entry(1, "one again")]);
        assert_eq!(names(&envs), ["shop-pr-1", "shop-pr-10", "shop-pr-2", "shop-pr-3"]);
        assert_eq!(envs.get("shop-pr-1").unwrap().head_ref, "one again");
        let (name, e) = entry(25, "twenty-five");
        envs.insert(name, e);
        let (name, e) = entry(10, "ten again");
        envs.insert(name, e);
        assert_eq!(
            names(&envs),
            ["shop-pr-1", "shop-pr-10", "shop-pr-2", "shop-pr-25", "shop-pr-3"]
        );
        assert_eq!(envs.get("shop-pr-10").unwrap().head_ref, "ten again");
        assert_eq!(envs.len(), 5);
        assert!(envs.contains_key("shop-pr-25") && !envs.contains_key("shop-pr-4"));
        assert!(envs.entry("shop-pr-4").is_none() && envs.entry_mut("shop-pr-0").is_none());
        envs.entry_mut("shop-pr-2").unwrap().wiring = Some(BlobId([7; 20]));
        assert_eq!(envs.entry("shop-pr-2").unwrap().wiring, Some(BlobId([7; 20])));
    }
}
