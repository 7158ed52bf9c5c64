//! The seams where the imperative shells meet the pure core: small traits for the pull-request
//! source and the environments repository, the value a repository read returns, and in-memory
//! fakes that the sync flow's table tests (and anyone else's) use.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::model::layout::{BlobId, TreeId};
use crate::model::meta::EnvMeta;
use crate::model::naming::EnvName;
use crate::model::pr::Snapshot;
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
    /// The environments prenv created (their metadata files carry its mark).
    pub envs: BTreeMap<EnvName, EnvMeta>,
    /// Blob ids of every file prenv owns: the files it writes in its environment directories, the
    /// wiring of its environments and the wiring indexes.
    pub owned: BTreeMap<String, BlobId>,
    /// The tree id of each owned environment directory, to know it unchanged without reading it.
    pub env_trees: BTreeMap<EnvName, TreeId>,
    /// Environment names prenv must not touch, and why: taken by something not prenv's, or prenv's
    /// but unreadable.
    pub blocked: BTreeMap<String, Blocked>,
    /// Environments whose wiring the index lists but whose directory is gone.
    pub wired_only: BTreeSet<EnvName>,
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
        self.envs_of(project_id).map(|m| m.pr).collect()
    }

    /// The environments of project `project_id` ([`crate::model::meta::belongs_to`]).
    pub fn envs_of<'a>(&'a self, project_id: &'a str) -> impl Iterator<Item = &'a EnvMeta> + 'a {
        self.envs
            .values()
            .filter(move |m| crate::model::meta::belongs_to(m, project_id))
    }
}

/// What is known about environment contents from earlier runs: an environment directory with tree
/// id T, and wiring with blob id W, that once matched its rendering always does (the content
/// includes the metadata it is rendered from), so the memory is right for any repository, any time,
/// and a lost or stale memory costs only a render.
pub trait Verifications {
    fn knows(&self, tree: TreeId, wiring: Option<BlobId>) -> bool;
    fn learn(&mut self, verified: &[(TreeId, Option<BlobId>)]);
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
