//! The environments repository's layout: every path prenv writes is built here, and every path it
//! reads back is parsed here, so "where is the Flux wiring file?" has one answer.
//!
//! ```text
//! environments/<env>/            one directory per environment (its prenv.json carries the mark)
//!   prenv.json                   the metadata (model::meta)
//!   kustomization.yaml …         the rendered overlay
//!   mariadb-credentials.sops.yaml | mariadb-credentials.sealed.yaml
//! flux/environments/kustomization.yaml   the root index the platform's root Kustomization applies:
//!                                every project's file, and the environments wired before projects had one
//! flux/environments/<project>.yaml   the Flux Kustomization `prenv-environments-<project>` of one project
//! flux/environments/<project>/kustomization.yaml   that project's index, written only by its sync
//! flux/environments/<project>/<env>.yaml   the Flux Kustomization of one environment
//! flux/environments/<env>.yaml   an environment wired before projects had an index (kept there until pruned)
//! argocd/applicationset-<project>.yaml   one Argo CD ApplicationSet per project, over
//!                                its environments' prenv.json (argocd/applicationset.yaml: before projects)
//! base/, overlays/<db>/          the default application template (added only where the repository has none)
//! projects/<project>/base/, projects/<project>/overlays/<db>/   a project's own template
//! ```

use sha1::{Digest as _, Sha1};

use super::config::{Config, SecretsBackend};

/// Where environments live in the environments repository.
pub const ENVIRONMENTS_DIR: &str = "environments";
/// Where the Flux wiring lives: one Flux Kustomization per project, applied by the root
/// Kustomization, and one per environment in its project's directory, applied by its project's.
pub const FLUX_DIR: &str = "flux/environments";
/// The file name of every kustomize index prenv writes in the Flux wiring.
pub const KUSTOMIZATION_FILE: &str = "kustomization.yaml";
/// The prefix of each project's Flux Kustomization name (`prenv-environments-<project>`).
pub const FLUX_PROJECT_PREFIX: &str = "prenv-environments-";
/// Where the Argo CD wiring lives: one ApplicationSet over the environments' metadata files.
pub const ARGOCD_DIR: &str = "argocd";
/// The application template every environment builds on.
pub const BASE_DIR: &str = "base";
/// Kustomize Components an environment switches on, one per database.
pub const OVERLAYS_DIR: &str = "overlays";
/// Where each project's own application template lives: `projects/<project_id>/base/` and
/// `projects/<project_id>/overlays/<db>/`; a project without one builds on `base/` and `overlays/`.
pub const PROJECTS_DIR: &str = "projects";
/// The prefix of each project's ApplicationSet file in the Argo CD wiring directory.
const ARGOCD_PROJECT_PREFIX: &str = "applicationset-";
/// The metadata file in every environment directory; its `generator` field is the ownership mark.
pub const META_FILE: &str = "prenv.json";
/// The root index of the Flux wiring: it lists every project's Kustomization file, and the
/// Kustomizations of environments wired before projects had an index of their own.
pub const FLUX_INDEX: &str = "flux/environments/kustomization.yaml";
/// The ApplicationSet of the Argo CD wiring.
pub const ARGOCD_APPLICATIONSET: &str = "argocd/applicationset.yaml";
/// The kustomization of the Argo CD wiring directory.
pub const ARGOCD_INDEX: &str = "argocd/kustomization.yaml";
/// The keys SOPS encrypts in prenv's Secrets (and the `.sops.yaml` creation rule says so).
pub const SOPS_ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// The Secret `overlays/mariadb` reads its credentials from.
pub const MARIADB_SECRET_NAME: &str = "mariadb-credentials";

/// Every file name prenv writes in an environment directory. In a directory carrying the mark these
/// are prenv's; any other file there is someone else's, kept and reported, never written or deleted.
pub const ENV_FILES: [&str; 8] = [
    META_FILE,
    "kustomization.yaml",
    "namespace.yaml",
    "resourcequota.yaml",
    "limitrange.yaml",
    "networkpolicies.yaml",
    "mariadb-credentials.sops.yaml",
    "mariadb-credentials.sealed.yaml",
];

/// prenv's files in one environment directory: the blob id of each of [`ENV_FILES`] that is there.
/// Held inline, not as a list: a view of 10,000 environments held 10,000 small lists, an
/// allocation and a free each, and 2.8 MB of memory touched for the first time.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvFiles([Option<BlobId>; ENV_FILES.len()]);

impl EnvFiles {
    /// Sets the id of the file at place `index` of [`ENV_FILES`]; `None` (nothing set) when there
    /// is no such place.
    pub fn set_at(&mut self, index: usize, id: BlobId) -> Option<()> {
        *self.0.get_mut(index)? = Some(id);
        Some(())
    }

    /// Sets the id of file `name`; `None` (nothing set) when `name` is not one of [`ENV_FILES`].
    pub fn set(&mut self, name: &str, id: BlobId) -> Option<()> {
        self.set_at(ENV_FILES.iter().position(|f| *f == name)?, id)
    }

    /// The id of file `name`, when it is there.
    pub fn get(&self, name: &str) -> Option<BlobId> {
        self.0[ENV_FILES.iter().position(|f| *f == name)?]
    }

    /// The files that are there with their ids, in the order of [`ENV_FILES`].
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, BlobId)> + '_ {
        ENV_FILES
            .iter()
            .zip(&self.0)
            .filter_map(|(name, id)| Some((*name, (*id)?)))
    }

    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl std::fmt::Debug for EnvFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The directory of one environment.
pub fn env_dir(env: &str) -> String {
    format!("{ENVIRONMENTS_DIR}/{env}")
}

/// The metadata file of one environment.
pub fn meta_path(env: &str) -> String {
    format!("{ENVIRONMENTS_DIR}/{env}/{META_FILE}")
}

/// The Flux Kustomization file of one environment: in its project's directory (the project is the
/// part of the name before `-pr-`); a name without a project stays where names were before.
pub fn flux_file(env: &str) -> String {
    match project_of_env(env) {
        Some(project) => format!("{FLUX_DIR}/{project}/{env}.yaml"),
        None => flux_legacy_file(env),
    }
}

/// Where an environment's Flux Kustomization sat before each project had an index of its own. An
/// environment wired there stays there until it is pruned: moving the file would drop it from the
/// root Kustomization's inventory, and kustomize-controller deletes what leaves an inventory
/// (fluxcd/kustomize-controller `internal/controller/kustomization_controller.go`: the stale
/// objects of `inventory.Diff(old, new)` go to `prune`, which calls ssa `ResourceManager.DeleteAll`
/// for those still labelled with the root's name). The root does that in the same reconciliation
/// that creates the project's Kustomization, before that one has applied anything, so the
/// environment's Kustomization is deleted, and with it (`WaitForTermination`) its namespace and
/// database.
pub fn flux_legacy_file(env: &str) -> String {
    format!("{FLUX_DIR}/{env}.yaml")
}

/// The Flux Kustomization file of one project, listed by the root index.
pub fn flux_project_file(project: &str) -> String {
    format!("{FLUX_DIR}/{project}.yaml")
}

/// The directory of one project's Flux wiring: its index and its environments' Kustomizations.
pub fn flux_project_dir(project: &str) -> String {
    format!("{FLUX_DIR}/{project}")
}

/// The name of project `project`'s Flux Kustomization. kustomize-controller labels every object it
/// applies with its Kustomization's name (`kustomize.toolkit.fluxcd.io/name`), and a label value
/// holds at most 63 characters: a longer name is cut and told apart by a digest of the project id.
pub fn flux_project_name(project: &str) -> String {
    let max = crate::model::naming::LABEL_VALUE_MAX;
    let name = format!("{FLUX_PROJECT_PREFIX}{project}");
    if name.len() <= max {
        return name;
    }
    let digest = hex::encode(Sha1::digest(project.as_bytes()));
    let cut: String = name.chars().take(max - 1 - FLUX_NAME_DIGEST).collect();
    format!("{}-{}", cut.trim_end_matches('-'), &digest[..FLUX_NAME_DIGEST])
}

/// Hex digits of the digest that tells apart project Kustomization names cut to fit a label value.
const FLUX_NAME_DIGEST: usize = 8;

/// The index of one project's Flux wiring.
pub fn flux_project_index(project: &str) -> String {
    format!("{FLUX_DIR}/{project}/{KUSTOMIZATION_FILE}")
}

/// The project of an environment name (`<project>-pr-<number>`), `None` for any other name. A
/// project id holds no `-pr-` (the config refuses it), so the split is unambiguous.
pub fn project_of_env(env: &str) -> Option<&str> {
    let (project, number) = crate::model::naming::split_env(env)?;
    let numbered = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    (numbered && !project.is_empty() && !project.contains('/')).then_some(project)
}

/// The glob of every environment's metadata file, for Argo CD's git files generator.
pub fn meta_glob() -> String {
    format!("{ENVIRONMENTS_DIR}/*/{META_FILE}")
}

/// The directory of project `project`'s own base template.
pub fn project_base(project: &str) -> String {
    format!("{PROJECTS_DIR}/{project}/{BASE_DIR}")
}

/// The directory of project `project`'s own overlay for one database.
pub fn project_overlay(project: &str, db: &str) -> String {
    format!("{PROJECTS_DIR}/{project}/{OVERLAYS_DIR}/{db}")
}

/// The ApplicationSet file of one project: one per project, so a project's sync never rewrites
/// another's (and the Argo CD wiring of one never removes another's Applications).
pub fn argocd_applicationset(project: &str) -> String {
    format!("{ARGOCD_DIR}/{ARGOCD_PROJECT_PREFIX}{project}.yaml")
}

/// The project of an ApplicationSet file name inside `argocd/` (`applicationset-<project>.yaml`).
pub fn argocd_project_of(file: &str) -> Option<&str> {
    let project = file.strip_prefix(ARGOCD_PROJECT_PREFIX)?.strip_suffix(".yaml")?;
    (!project.is_empty() && !project.contains('/')).then_some(project)
}

/// The glob of one project's environments' metadata files, for its ApplicationSet. A project id
/// holds no `-pr-` (the config refuses it), so no other project's environment matches.
pub fn project_meta_glob(project: &str) -> String {
    format!("{ENVIRONMENTS_DIR}/{project}-pr-*/{META_FILE}")
}

/// The file name (inside the environment directory) of the MariaDB credentials, SOPS-encrypted or sealed.
pub fn secret_file(config: &Config) -> &'static str {
    match config.secrets.backend {
        SecretsBackend::Sops => "mariadb-credentials.sops.yaml",
        SecretsBackend::SealedSecrets => "mariadb-credentials.sealed.yaml",
    }
}

/// The path of one environment's MariaDB credentials.
pub fn secret_path(config: &Config, env: &str) -> String {
    format!("{}/{}", env_dir(env), secret_file(config))
}

/// What a repository path is to prenv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A file inside an environment directory (`file` may contain `/`).
    EnvFile { env: &'a str, file: &'a str },
    /// One environment's Flux Kustomization: in its project's directory, or (`legacy`) at the top
    /// of the wiring directory, where environments were wired before projects had an index.
    FluxWiring { env: &'a str, legacy: bool },
    /// One project's Flux Kustomization (`flux/environments/<project>.yaml`) or its index
    /// (`flux/environments/<project>/kustomization.yaml`).
    FluxProject { project: &'a str },
    /// Another file of the Flux wiring directory (the root index, or anything else).
    FluxOther,
    /// A file of the Argo CD wiring directory.
    ArgoWiring,
    /// Anything else: templates, a README, someone's own files.
    Other,
}

impl<'a> Place<'a> {
    /// Parses a repository path (relative, `/`-separated).
    pub fn of(path: &'a str) -> Place<'a> {
        if let Some(rest) = path.strip_prefix(ENVIRONMENTS_DIR).and_then(|r| r.strip_prefix('/'))
            && let Some((env, file)) = rest.split_once('/')
            && !env.is_empty()
            && !file.is_empty()
        {
            return Place::EnvFile { env, file };
        }
        if let Some(file) = path.strip_prefix(FLUX_DIR).and_then(|r| r.strip_prefix('/')) {
            return Place::in_flux(file);
        }
        if path.strip_prefix(ARGOCD_DIR).is_some_and(|r| r.starts_with('/')) {
            return Place::ArgoWiring;
        }
        Place::Other
    }

    /// A path inside the Flux wiring directory (`file` relative to it).
    pub fn in_flux(file: &'a str) -> Place<'a> {
        match file.split_once('/') {
            None if file == KUSTOMIZATION_FILE => Place::FluxOther,
            None => match file.strip_suffix(".yaml") {
                Some(env) if project_of_env(env).is_some() => Place::FluxWiring { env, legacy: true },
                Some(project) if !project.is_empty() => Place::FluxProject { project },
                _ => Place::FluxOther,
            },
            Some((project, name)) if !project.is_empty() => match name.strip_suffix(".yaml") {
                _ if name == KUSTOMIZATION_FILE => Place::FluxProject { project },
                Some(env) if project_of_env(env) == Some(project) => Place::FluxWiring { env, legacy: false },
                _ => Place::FluxOther,
            },
            Some(_) => Place::FluxOther,
        }
    }

    /// The environment this path belongs to: its directory or its Flux Kustomization.
    pub fn env(self) -> Option<&'a str> {
        match self {
            Place::EnvFile { env, .. } | Place::FluxWiring { env, .. } => Some(env),
            _ => None,
        }
    }
}

/// A git tree id: how the repository names a directory's whole content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TreeId(pub [u8; 20]);

impl TreeId {
    /// The id git gives a directory holding exactly `files` (plain files, mode 100644, no
    /// subdirectory): SHA-1 of `tree <len>\0` and the entries sorted by name, each
    /// `100644 <name>\0<20-byte blob id>` (git's `tree-walk` format; for plain files git's name
    /// order is byte order). Lets the core predict the tree a commit will hold without writing it.
    pub fn of_files<'a>(files: impl IntoIterator<Item = (&'a str, BlobId)>) -> TreeId {
        let mut files: Vec<(&str, BlobId)> = files.into_iter().collect();
        files.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut body = Vec::with_capacity(files.len() * 48);
        for (name, id) in &files {
            body.extend_from_slice(b"100644 ");
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&id.0);
        }
        let mut hasher = Sha1::new();
        hasher.update(format!("tree {}\0", body.len()).as_bytes());
        hasher.update(&body);
        TreeId(hasher.finalize().into())
    }
}

impl std::fmt::Display for TreeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A git blob id (SHA-1 of `blob <len>\0` and the bytes): how the repository names a file's
/// content, so the desired bytes can be compared with a committed file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlobId(pub [u8; 20]);

impl BlobId {
    pub fn of(bytes: &[u8]) -> BlobId {
        let mut hasher = Sha1::new();
        hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
        hasher.update(bytes);
        BlobId(hasher.finalize().into())
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environments_files_are_named_by_prenvs_file_names_only() {
        let mut files = EnvFiles::default();
        assert!(files.is_empty());
        assert_eq!(files.set("namespace.yaml", BlobId([2; 20])), Some(()));
        assert_eq!(files.set(META_FILE, BlobId([1; 20])), Some(()));
        assert_eq!(
            files.set("namespace.yaml", BlobId([3; 20])),
            Some(()),
            "set again, replaced"
        );
        assert_eq!(files.set("notes.md", BlobId([4; 20])), None, "not prenv's");
        assert_eq!(files.set_at(ENV_FILES.len(), BlobId([5; 20])), None, "no such place");
        assert_eq!(files.get("namespace.yaml"), Some(BlobId([3; 20])));
        assert_eq!(files.get("limitrange.yaml"), None);
        assert_eq!(files.get("notes.md"), None);
        assert_eq!(files.len(), 2);
        assert_eq!(
            files.iter().collect::<Vec<_>>(),
            [(META_FILE, BlobId([1; 20])), ("namespace.yaml", BlobId([3; 20]))],
            "in the order of ENV_FILES"
        );
        let mut same = EnvFiles::default();
        same.set_at(2, BlobId([3; 20])).unwrap();
        same.set_at(0, BlobId([1; 20])).unwrap();
        assert_eq!(files, same, "equal whatever order they were set in");
    }

    #[test]
    fn paths_are_parsed_back_to_what_they_are() {
        let table = [
            (
                "environments/shop-pr-1/prenv.json",
                Place::EnvFile {
                    env: "shop-pr-1",
                    file: "prenv.json",
                },
            ),
            (
                "environments/shop-pr-1/sub/x.yaml",
                Place::EnvFile {
                    env: "shop-pr-1",
                    file: "sub/x.yaml",
                },
            ),
            ("environments/shop-pr-1", Place::Other),
            ("environments-extra/a/b", Place::Other),
            (
                "flux/environments/shop-pr-1.yaml",
                Place::FluxWiring {
                    env: "shop-pr-1",
                    legacy: true,
                },
            ),
            (
                "flux/environments/shop/shop-pr-1.yaml",
                Place::FluxWiring {
                    env: "shop-pr-1",
                    legacy: false,
                },
            ),
            ("flux/environments/shop.yaml", Place::FluxProject { project: "shop" }),
            (
                "flux/environments/shop/kustomization.yaml",
                Place::FluxProject { project: "shop" },
            ),
            ("flux/environments/shop/web-pr-1.yaml", Place::FluxOther),
            ("flux/environments/shop/a/shop-pr-1.yaml", Place::FluxOther),
            ("flux/environments/kustomization.yaml", Place::FluxOther),
            ("flux/environments/notes.txt", Place::FluxOther),
            ("flux/environments-x/a.yaml", Place::Other),
            ("argocd/applicationset.yaml", Place::ArgoWiring),
            ("argocdx/a", Place::Other),
            ("base/deployment.yaml", Place::Other),
        ];
        for (path, want) in table {
            assert_eq!(Place::of(path), want, "{path}");
        }
        assert_eq!(Place::of(&flux_file("a-pr-1")).env(), Some("a-pr-1"));
        assert_eq!(flux_file("a-b-pr-1"), "flux/environments/a-b/a-b-pr-1.yaml");
        assert_eq!(Place::of(&flux_legacy_file("a-pr-1")).env(), Some("a-pr-1"));
        assert_eq!(project_of_env("shop-pr-12"), Some("shop"));
        assert_eq!(project_of_env("shop-pr-"), None);
        assert_eq!(project_of_env("shop"), None);
        assert_eq!(Place::of(&meta_path("a-pr-1")).env(), Some("a-pr-1"));
        assert_eq!(Place::of(FLUX_INDEX), Place::FluxOther);
    }

    #[test]
    fn project_kustomization_names_fit_a_label_value() {
        assert_eq!(flux_project_name("shop"), "prenv-environments-shop");
        let long = "a".repeat(crate::model::naming::PROJECT_ID_MAX);
        let name = flux_project_name(&long);
        assert_eq!(name.len(), crate::model::naming::LABEL_VALUE_MAX);
        assert_ne!(name, flux_project_name(&format!("{}b", &long[1..])));
        assert!(crate::model::naming::dns_label_problem(&name).is_none(), "{name}");
    }

    #[test]
    fn blob_ids_are_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            BlobId::of(b"hello\n").to_string(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(BlobId::of(b"").to_string(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }
}
