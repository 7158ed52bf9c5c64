//! `prenv.toml`: the few keys a team must set, defaults for everything else, and validation at load
//! so that a bad value fails once, with the key and the fix, before anything is rendered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod capacity;
mod platform;
mod watch;

pub use capacity::{Capacity, EnvQuota, Fit};
pub use platform::{DnsProvider, Platform};
pub use watch::Watch;

use crate::error::{Error, Result};
use crate::model::naming::{self, PROJECT_ID_MAX};
use crate::model::quantity::{Bytes, Cpu};

/// The product promise: a closed PR's environment is kept at most this long when pinned.
pub const PIN_HOURS_MAX: u32 = 48;
/// Placeholders the image tag template may use.
pub const TAG_PLACEHOLDERS: &[&str] = &["{number}", "{sha}", "{short_sha}", "{branch}"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    Postgres,
    Mariadb,
}

impl Database {
    pub fn name(self) -> &'static str {
        match self {
            Database::Postgres => "postgres",
            Database::Mariadb => "mariadb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Flux,
    Argocd,
}

/// The whole configuration. Only `project_id`, `domain`, `image` and `engine` are required.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every environment name and namespace: `{project_id}-pr-{number}`.
    pub project_id: String,
    /// Wildcard preview domain: each environment is served at `{env}.{domain}`.
    pub domain: String,
    /// Image repository without a tag; the tag comes from `tag_template`.
    pub image: String,
    /// Databases every environment gets, each its own: `postgres` (CloudNativePG) and/or `mariadb`.
    #[serde(default)]
    pub databases: Vec<Database>,
    /// The GitOps engine that reconciles the environments repository: `flux` or `argocd`.
    pub engine: Engine,
    /// Image tag per PR; `{number}`, `{sha}`, `{short_sha}` (7 hex) and `{branch}` are replaced.
    #[serde(default = "defaults::tag_template")]
    pub tag_template: String,
    /// Storage class for database volumes; unset means the cluster's default class.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Not part of [`Config::render_digest`]: where PRs come from and which get an environment decide
    /// the plan, not the rendered files.
    #[serde(default, skip_serializing)]
    pub github: GithubConfig,
    #[serde(default, skip_serializing)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub quota: Quota,
    #[serde(default)]
    pub ingress: Ingress,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub flux: Flux,
    #[serde(default)]
    pub argocd: ArgoCd,
    #[serde(default)]
    pub secrets: Secrets,
    /// Not part of [`Config::render_digest`]: how the watcher reports changes no rendered file.
    #[serde(default, skip_serializing)]
    pub watch: Watch,
    /// Not part of [`Config::render_digest`]: where and how to commit changes no rendered file.
    #[serde(default, skip_serializing)]
    pub git: Git,
    #[serde(default, skip_serializing)]
    pub sync: Sync,
    /// Not part of [`Config::render_digest`]: how many environments run at once decides which
    /// are queued (recorded in their metadata), not how an environment renders.
    #[serde(default, skip_serializing)]
    pub capacity: Capacity,
    /// Not part of [`Config::render_digest`]: what `prenv init` scaffolds for the cluster.
    #[serde(default, skip_serializing)]
    pub platform: Platform,
}

/// How secrets are committed: SOPS-encrypted for age recipients (Flux decrypts them natively), or
/// sealed for the Sealed Secrets controller (the Argo CD path).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    pub backend: SecretsBackend,
    /// age public keys (`age1...`); the cluster's key must be one of them.
    pub age_recipients: Vec<String>,
    /// The Sealed Secrets controller's certificate (`kubeseal --fetch-cert > cert.pem`), a path
    /// relative to the working directory.
    pub sealed_secrets_cert: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretsBackend {
    #[default]
    Sops,
    SealedSecrets,
}

/// The environments repository and how prenv commits to it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Git {
    /// Path or URL of the environments repository; `--repo` overrides it. Unset: a local bare
    /// repository at `$XDG_DATA_HOME/prenv/environments.git` (created on first use).
    pub url: Option<String>,
    /// The branch prenv commits to.
    pub branch: String,
    pub author_name: String,
    pub author_email: String,
    /// Private key for SSH URLs; unset uses the SSH agent. HTTPS URLs read a token from
    /// `PRENV_GIT_TOKEN` or `GITHUB_TOKEN`.
    pub ssh_key: Option<String>,
    /// Where clones of remote repositories are cached; unset: `$XDG_CACHE_HOME/prenv`.
    pub cache_dir: Option<String>,
}

impl Default for Git {
    fn default() -> Self {
        Git {
            url: None,
            branch: "main".into(),
            author_name: "prenv".into(),
            author_email: "prenv@users.noreply.github.com".into(),
            ssh_key: None,
            cache_dir: None,
        }
    }
}

/// Safety limits of one sync.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sync {
    /// The circuit breaker: one run may prune at most this share of the existing environments ...
    pub max_prune_share: f64,
    /// ... once more than this many exist; `--allow-mass-prune` overrides it for one run.
    pub breaker_min_envs: usize,
    /// Attempts to publish a commit when other writers keep moving the branch.
    pub max_attempts: u32,
    /// Ask the registry whether a head's image exists before an environment moves to it
    /// (`HEAD /v2/<name>/manifests/<tag>`); `false` for a registry prenv cannot reach, which moves
    /// environments at once as before. Credentials come from the environment only:
    /// `PRENV_REGISTRY_USERNAME` with `PRENV_REGISTRY_PASSWORD` (or `PRENV_REGISTRY_TOKEN`), and
    /// `GITHUB_TOKEN` for ghcr.io.
    pub image_check: bool,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            max_prune_share: 0.5,
            breaker_min_envs: 4,
            max_attempts: 10,
            image_check: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// `owner/name` of the application repository; PRs whose head lives elsewhere are forks.
    /// Unset: the `base.repo.full_name` of each PR is used (and `--prs` is required).
    pub repository: Option<String>,
    /// The REST API root; unset: https://api.github.com.
    pub api_url: Option<String>,
    /// A GitHub App to authenticate as (its private key PEM in `PRENV_GITHUB_APP_KEY`).
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    /// The PR label that keeps a closed PR's environment for `pin_hours` after close.
    pub pin_label: String,
    /// How long a pinned environment outlives its PR (1 to 48).
    pub pin_hours: u32,
    /// Deploy draft PRs too.
    pub deploy_drafts: bool,
    /// Deploy PRs from forks without review (their code runs in the cluster).
    pub deploy_forks: bool,
    /// A label a maintainer puts on a fork PR after review to deploy it anyway.
    pub fork_label: String,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            pin_label: "preserve=true".into(),
            pin_hours: PIN_HOURS_MAX,
            deploy_drafts: false,
            deploy_forks: false,
            fork_label: "safe-to-preview".into(),
        }
    }
}

/// Per-namespace quota (RF-06, RNF-13): the base plus one step per enabled database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub postgres: QuotaStep,
    pub mariadb: QuotaStep,
    /// LimitRange defaults for containers that set no resources of their own.
    pub default_cpu: String,
    pub default_memory: String,
    pub default_request_cpu: String,
    pub default_request_memory: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaStep {
    pub cpu: String,
    pub memory: String,
    pub storage: String,
    pub pods: u32,
}

impl Default for Quota {
    fn default() -> Self {
        let step = QuotaStep {
            cpu: "500m".into(),
            memory: "512Mi".into(),
            storage: "1Gi".into(),
            pods: 2,
        };
        Quota {
            cpu: "300m".into(),
            memory: "512Mi".into(),
            pods: 5,
            postgres: step.clone(),
            mariadb: step,
            default_cpu: "100m".into(),
            default_memory: "128Mi".into(),
            default_request_cpu: "50m".into(),
            default_request_memory: "64Mi".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingress {
    pub class: String,
    /// Namespace of the ingress controller, the only outside source of traffic to the app.
    pub namespace: String,
    /// A TLS secret in each environment namespace; unset uses the controller's default certificate
    /// (the wildcard for `*.{domain}`).
    pub tls_secret: Option<String>,
    /// A cert-manager ClusterIssuer that issues one certificate per environment instead.
    pub cluster_issuer: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Default for Ingress {
    fn default() -> Self {
        Ingress {
            class: "traefik".into(),
            namespace: "kube-system".into(),
            tls_secret: None,
            cluster_issuer: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Namespaces whose pods may reach every pod of an environment (metrics scraping).
    pub allow_from_namespaces: Vec<String>,
    /// Namespace of the cluster DNS (`k8s-app: kube-dns` pods).
    pub dns_namespace: String,
    /// Namespace of the CloudNativePG operator, which must reach the database pods.
    pub cnpg_namespace: String,
    /// Ports of the Kubernetes API server, which CloudNativePG instance pods must reach.
    pub api_server_ports: Vec<u16>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            allow_from_namespaces: vec!["monitoring".into()],
            dns_namespace: "kube-system".into(),
            cnpg_namespace: "cnpg-system".into(),
            api_server_ports: vec![443, 6443],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flux {
    pub namespace: String,
    /// The GitRepository that points at the environments repository.
    pub source: String,
    pub interval: String,
    pub timeout: String,
    /// The Secret holding the age key kustomize-controller decrypts SOPS files with.
    pub sops_secret: String,
}

impl Default for Flux {
    fn default() -> Self {
        Flux {
            namespace: "flux-system".into(),
            source: "prenv-environments".into(),
            interval: "5m".into(),
            timeout: "5m".into(),
            sops_secret: "sops-age".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArgoCd {
    pub namespace: String,
    pub project: String,
    /// Clone URL of the environments repository (required with `engine = "argocd"`).
    pub repo_url: Option<String>,
    pub target_revision: String,
}

impl Default for ArgoCd {
    fn default() -> Self {
        ArgoCd {
            namespace: "argocd".into(),
            project: "default".into(),
            repo_url: None,
            target_revision: "main".into(),
        }
    }
}

mod defaults {
    pub fn tag_template() -> String {
        "pr-{number}-{short_sha}".into()
    }
}

impl Config {
    /// Reads and validates a config file.
    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let err = |message: String| Error::Config {
            path: origin.to_string(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Every check, in the order a user fixes them; the first problem is the error.
    fn validate(&self) -> std::result::Result<(), String> {
        self.validate_names()?;
        self.validate_image()?;
        self.validate_lifecycle()?;
        self.validate_quota()?;
        self.validate_capacity()?;
        self.validate_cluster_names()?;
        self.validate_github()?;
        self.validate_secrets()?;
        self.validate_sync_and_git()?;
        self.platform.validate()?;
        self.validate_engine()
    }

    /// The project id and the domain: every environment name and host is built from them.
    fn validate_names(&self) -> std::result::Result<(), String> {
        // The longest environment name plus a dot must leave room for the domain in a 253-character host.
        let host_room = naming::DNS_NAME_MAX - naming::DNS_LABEL_MAX - 1;
        let (id, domain) = (&self.project_id, &self.domain);
        let checks = [
            (
                "project_id",
                id,
                (id.len() > PROJECT_ID_MAX).then(|| format!(
                    "is {} characters, but at most {PROJECT_ID_MAX} leave room for `-pr-` and a 6-digit PR number in a 63-character namespace",
                    id.len()
                )),
                "choose a shorter project_id",
            ),
            ("project_id", id, naming::dns_label_problem(id), "use lowercase letters, digits and '-'"),
            (
                "project_id",
                id,
                id.contains(naming::ENV_INFIX).then(|| {
                    format!("contains {:?}, which separates the project from the PR number in environment names: another project's environments would look like this one's", naming::ENV_INFIX)
                }),
                "choose a project_id without \"-pr-\"",
            ),
            (
                "domain",
                domain,
                (domain.len() > host_room).then(|| {
                    format!("is {} characters; at most {host_room} leave room for the environment name", domain.len())
                }),
                "use a shorter preview domain",
            ),
            (
                "domain",
                domain,
                naming::dns_name_problem(domain),
                "give the wildcard DNS domain without `*.` or a scheme, e.g. \"preview.example.com\"",
            ),
        ];
        for (k, v, problem, fix) in checks {
            if let Some(problem) = problem {
                return Err(key(k, v, problem, fix));
            }
        }
        Ok(())
    }

    /// Databases listed once; pins and labels that mean something.
    fn validate_lifecycle(&self) -> std::result::Result<(), String> {
        let mut seen = Vec::new();
        for db in &self.databases {
            if seen.contains(db) {
                return Err(format!(
                    "key `databases` lists {:?} twice; list each database once",
                    db.name()
                ));
            }
            seen.push(*db);
        }
        let lc = &self.lifecycle;
        if !(1..=PIN_HOURS_MAX).contains(&lc.pin_hours) {
            return Err(format!(
                "key `lifecycle.pin_hours` = {} is out of range; pinned environments are kept 1 to {PIN_HOURS_MAX} hours",
                lc.pin_hours
            ));
        }
        for (k, v) in [
            ("lifecycle.pin_label", &lc.pin_label),
            ("lifecycle.fork_label", &lc.fork_label),
        ] {
            if v.trim().is_empty() {
                return Err(format!("key `{k}` is empty; give the name of a GitHub label"));
            }
        }
        Ok(())
    }

    /// Namespaces, classes and object names the rendered manifests refer to; Flux durations.
    fn validate_cluster_names(&self) -> std::result::Result<(), String> {
        for (k, v) in [
            ("ingress.class", &self.ingress.class),
            ("ingress.namespace", &self.ingress.namespace),
            ("network.dns_namespace", &self.network.dns_namespace),
            ("network.cnpg_namespace", &self.network.cnpg_namespace),
            ("flux.namespace", &self.flux.namespace),
            ("argocd.namespace", &self.argocd.namespace),
        ]
        .into_iter()
        .chain(
            self.network
                .allow_from_namespaces
                .iter()
                .map(|n| ("network.allow_from_namespaces", n)),
        ) {
            if let Some(p) = naming::dns_label_problem(v) {
                return Err(key(k, v, p, "give a Kubernetes namespace or class name"));
            }
        }
        for (k, v) in [
            ("ingress.tls_secret", &self.ingress.tls_secret),
            ("ingress.cluster_issuer", &self.ingress.cluster_issuer),
            ("storage_class", &self.storage_class),
        ] {
            if let Some(v) = v
                && let Some(p) = naming::dns_name_problem(v)
            {
                return Err(key(k, v, p, "give a Kubernetes object name"));
            }
        }
        if self.ingress.tls_secret.is_some() && self.ingress.cluster_issuer.is_some() {
            return Err("keys `ingress.tls_secret` and `ingress.cluster_issuer` are both set; set one (or neither, to use the controller's default certificate)".into());
        }
        for (k, v) in [
            ("flux.interval", &self.flux.interval),
            ("flux.timeout", &self.flux.timeout),
        ] {
            if !is_go_duration(v) {
                return Err(key(
                    k,
                    v,
                    "is not a duration".into(),
                    "write it like \"5m\", \"90s\" or \"1h30m\"",
                ));
            }
        }
        if let Some(p) = naming::dns_name_problem(&self.flux.source) {
            return Err(key(
                "flux.source",
                &self.flux.source,
                p,
                "give the name of the Flux GitRepository",
            ));
        }
        Ok(())
    }

    /// Where PRs come from.
    fn validate_github(&self) -> std::result::Result<(), String> {
        if let Some(repo) = &self.github.repository
            && (repo.split('/').count() != 2 || repo.split('/').any(str::is_empty))
        {
            return Err(key(
                "github.repository",
                repo,
                "is not owner/name".into(),
                "write it like \"acme/shop\"",
            ));
        }
        Ok(())
    }

    /// Credentials are only ever committed encrypted: the recipients or the certificate must be there.
    fn validate_secrets(&self) -> std::result::Result<(), String> {
        for r in &self.secrets.age_recipients {
            if <age::x25519::Recipient as std::str::FromStr>::from_str(r).is_err() {
                return Err(key(
                    "secrets.age_recipients",
                    r,
                    "is not an age public key".into(),
                    "give the age1... line age-keygen prints as \"Public key\"",
                ));
            }
        }
        // Only the MariaDB credentials are committed as a secret file: without them nothing needs decrypting.
        let sops_file = self.secrets.backend == SecretsBackend::Sops && self.databases.contains(&Database::Mariadb);
        if self.engine == Engine::Argocd && sops_file {
            return Err("key `secrets.backend` = \"sops\" does not work with `engine` = \"argocd\": Argo CD cannot decrypt SOPS files and `prenv init` installs no decryptor (such as KSOPS), so the MariaDB credentials Secret would never be created; set `secrets.backend = \"sealed-secrets\"` with `secrets.sealed_secrets_cert` (prenv init installs the Sealed Secrets controller for Argo CD), or use `engine = \"flux\"`, which decrypts SOPS itself".into());
        }
        let sealed = self.secrets.backend == SecretsBackend::SealedSecrets;
        if sealed && self.secrets.sealed_secrets_cert.as_deref().is_none_or(str::is_empty) {
            return Err("key `secrets.sealed_secrets_cert` is missing; with backend = \"sealed-secrets\" prenv seals for the controller's certificate (kubeseal --fetch-cert > cert.pem)".into());
        }
        if !sealed && self.databases.contains(&Database::Mariadb) && self.secrets.age_recipients.is_empty() {
            return Err("key `secrets.age_recipients` is empty, but `databases` includes \"mariadb\": prenv commits its credentials only encrypted; add the cluster's age public key (age-keygen -y on its key file)".into());
        }
        Ok(())
    }

    /// The breaker, the retries and the branch.
    fn validate_sync_and_git(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.sync.max_prune_share) {
            return Err(format!(
                "key `sync.max_prune_share` = {} is not a share; give a number from 0.0 to 1.0 (default 0.5)",
                self.sync.max_prune_share
            ));
        }
        if self.sync.max_attempts == 0 {
            return Err("key `sync.max_attempts` = 0 would never publish; give at least 1 (default 10)".into());
        }
        if git_ref_problem(&self.git.branch) {
            return Err(key(
                "git.branch",
                &self.git.branch,
                "is not a valid branch name".into(),
                "write it like \"main\"",
            ));
        }
        Ok(())
    }

    /// What the chosen engine needs.
    fn validate_engine(&self) -> std::result::Result<(), String> {
        if self.engine == Engine::Argocd && self.argocd.repo_url.as_deref().is_none_or(str::is_empty) {
            return Err("key `argocd.repo_url` is missing; with engine = \"argocd\" the ApplicationSet needs the clone URL of the environments repository".into());
        }
        Ok(())
    }

    fn validate_image(&self) -> std::result::Result<(), String> {
        let image = &self.image;
        let last = image.rsplit('/').next().unwrap_or("");
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(format!(
                "key `image` = {image:?} is not an image repository; write it like \"ghcr.io/acme/shop\""
            ));
        }
        if last.contains(':') || image.contains('@') {
            return Err(format!(
                "key `image` = {image:?} carries a tag or digest; give the repository only, prenv sets the tag from `tag_template` (default \"pr-{{number}}-{{short_sha}}\")"
            ));
        }
        let mut rest = self.tag_template.clone();
        for p in TAG_PLACEHOLDERS {
            rest = rest.replace(p, "");
        }
        if rest.contains(['{', '}']) {
            return Err(format!(
                "key `tag_template` = {:?} has an unknown placeholder; use {}",
                self.tag_template,
                TAG_PLACEHOLDERS.join(", ")
            ));
        }
        let sample = render_tag(&self.tag_template, 999_999, &"f".repeat(40), "branch");
        if !naming::is_image_tag(&sample) {
            return Err(format!(
                "key `tag_template` = {:?} gives tags like {sample:?}, which is not a valid image tag; use letters, digits, '_', '.' and '-'",
                self.tag_template
            ));
        }
        if !self.tag_template.contains("{sha}") && !self.tag_template.contains("{short_sha}") {
            return Err(format!(
                "key `tag_template` = {:?} has no {{sha}} or {{short_sha}}; without the commit every push would reuse the tag and nothing would re-deploy",
                self.tag_template
            ));
        }
        Ok(())
    }

    fn validate_quota(&self) -> std::result::Result<(), String> {
        let q = &self.quota;
        let cpus = [
            ("quota.cpu", &q.cpu),
            ("quota.postgres.cpu", &q.postgres.cpu),
            ("quota.mariadb.cpu", &q.mariadb.cpu),
            ("quota.default_cpu", &q.default_cpu),
            ("quota.default_request_cpu", &q.default_request_cpu),
        ];
        for (k, v) in cpus {
            if Cpu::parse(v).is_none() {
                return Err(format!(
                    "key `{k}` = {v:?} is not a CPU quantity; write it like \"300m\" or \"1\""
                ));
            }
        }
        let bytes = [
            ("quota.memory", &q.memory),
            ("quota.postgres.memory", &q.postgres.memory),
            ("quota.postgres.storage", &q.postgres.storage),
            ("quota.mariadb.memory", &q.mariadb.memory),
            ("quota.mariadb.storage", &q.mariadb.storage),
            ("quota.default_memory", &q.default_memory),
            ("quota.default_request_memory", &q.default_request_memory),
        ];
        for (k, v) in bytes {
            if Bytes::parse(v).is_none() {
                return Err(format!(
                    "key `{k}` = {v:?} is not a byte quantity; write it like \"512Mi\" or \"1Gi\""
                ));
            }
        }
        Ok(())
    }

    /// A short digest of the prenv version and every setting, recorded in each environment's metadata:
    /// an environment whose metadata (digest included) is unchanged renders to the same files, so
    /// a sync need not render or compare it again; a new version or setting re-renders all of them.
    pub fn render_digest(&self) -> String {
        use sha2::Digest;
        // Where the Sealed Secrets certificate file sits changes no rendered file (credentials
        // are sealed once and kept byte for byte): the in-cluster `prenv serve` reads it from its
        // mount, CI from the checkout, and both must render alike.
        let mut settings = self.clone();
        settings.secrets.sealed_secrets_cert = None;
        let settings = serde_json::to_string(&settings).expect("the config serializes");
        let mut hasher = sha2::Sha256::new();
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update([0]);
        hasher.update(settings.as_bytes());
        hex::encode(hasher.finalize())[..16].to_string()
    }

    /// The quota step of one database.
    pub fn quota_step(&self, db: Database) -> &QuotaStep {
        match db {
            Database::Postgres => &self.quota.postgres,
            Database::Mariadb => &self.quota.mariadb,
        }
    }
}

/// The error text of a bad key: which key, its value, what is wrong and what to do.
fn key(k: &str, v: &str, problem: String, fix: &str) -> String {
    format!("key `{k}` = {v:?} {problem}; {fix}")
}

/// Longest branch fragment put into a tag, so a 40-hex SHA and the PR number always fit in 128.
const TAG_BRANCH_MAX: usize = 48;
/// Hex digits of `{short_sha}`, as `git log --oneline` shows them.
pub const SHORT_SHA_LEN: usize = 7;

/// Fills the tag template for one PR; the branch is reduced to tag characters first.
/// One pass over the template (every sync fills it for every PR); what it puts in has no braces,
/// so it is what replacing each placeholder in turn gives.
pub fn render_tag(template: &str, number: u64, sha: &str, branch: &str) -> String {
    let mut tag = String::with_capacity(template.len() + sha.len() + 16);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        tag.push_str(&rest[..at]);
        let tail = &rest[at..];
        rest = if let Some(after) = tail.strip_prefix("{number}") {
            tag.push_str(itoa::Buffer::new().format(number));
            after
        } else if let Some(after) = tail.strip_prefix("{short_sha}") {
            tag.push_str(&sha[..sha.len().min(SHORT_SHA_LEN)]);
            after
        } else if let Some(after) = tail.strip_prefix("{sha}") {
            tag.push_str(sha);
            after
        } else if let Some(after) = tail.strip_prefix("{branch}") {
            let branch = naming::sanitize_tag_part(branch);
            tag.push_str(branch[..branch.len().min(TAG_BRANCH_MAX)].trim_end_matches(['.', '-']));
            after
        } else {
            tag.push('{');
            &tail[1..]
        };
    }
    tag.push_str(rest);
    // A branch that sanitizes to nothing can leave a leading separator, which no registry accepts.
    match tag.trim_start_matches(['.', '-']).len() {
        n if n == tag.len() => tag,
        n => tag[tag.len() - n..].to_string(),
    }
}

/// A conservative subset of `git check-ref-format`: what prenv accepts as a branch name.
fn git_ref_problem(branch: &str) -> bool {
    branch.is_empty()
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c))
}

/// Go's `time.ParseDuration` forms that Flux accepts: `90s`, `5m`, `1h30m`, `500ms`.
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.').len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h"].into_iter().find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `render_tag` did before it was one pass: each placeholder replaced in turn.
    fn tag_by_replacing(template: &str, number: u64, sha: &str, branch: &str) -> String {
        let branch = naming::sanitize_tag_part(branch);
        let branch = branch[..branch.len().min(TAG_BRANCH_MAX)].trim_end_matches(['.', '-']);
        let tag = template
            .replace("{number}", &number.to_string())
            .replace("{short_sha}", &sha[..sha.len().min(SHORT_SHA_LEN)])
            .replace("{sha}", sha)
            .replace("{branch}", branch);
        tag.trim_start_matches(['.', '-']).to_string()
    }

    proptest::proptest! {
        #[test]
        fn a_tag_filled_in_one_pass_is_the_tag_filled_placeholder_by_placeholder(
            template in "([a-z.{}_-]|\\{number\\}|\\{sha\\}|\\{short_sha\\}|\\{branch\\}){0,12}",
            number: u64,
            sha in "[0-9a-f]{40}",
            branch in "[ -~]{0,80}",
        ) {
            proptest::prop_assert_eq!(
                render_tag(&template, number, &sha, &branch),
                tag_by_replacing(&template, number, &sha, &branch)
            );
        }
    }

    const MINIMAL: &str = r#"
project_id = "shop"
domain = "preview.example.com"
image = "ghcr.io/acme/shop"
databases = ["postgres"]
engine = "flux"
"#;

    fn with(extra: &str) -> Result<Config> {
        Config::parse(&format!("{MINIMAL}{extra}"), "prenv.toml")
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = with("").unwrap();
        assert_eq!(c.tag_template, "pr-{number}-{short_sha}");
        assert_eq!(c.lifecycle.pin_hours, 48);
        assert_eq!(c.lifecycle.pin_label, "preserve=true");
        assert!(!c.lifecycle.deploy_drafts && !c.lifecycle.deploy_forks);
        assert_eq!(c.quota.cpu, "300m");
        assert_eq!(c.quota.memory, "512Mi");
        assert_eq!(c.ingress.class, "traefik");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_and_the_fix() {
        let long_id = format!("project_id = \"{}\"", "p".repeat(54));
        let table: &[(&str, &str, &[&str])] = &[
            ("long project id", &long_id, &["project_id", "at most 53", "shorter"]),
            (
                "uppercase project id",
                "project_id = \"Shop\"",
                &["project_id", "lowercase"],
            ),
            ("unknown key", "colour = \"blue\"", &["unknown field `colour`"]),
            (
                "pin too long",
                "[lifecycle]\npin_hours = 72",
                &["lifecycle.pin_hours", "1 to 48"],
            ),
            (
                "tagged image",
                "image = \"ghcr.io/acme/shop:latest\"",
                &["image", "tag"],
            ),
            (
                "tag without sha",
                "tag_template = \"pr-{number}\"",
                &["tag_template", "re-deploy"],
            ),
            (
                "unknown placeholder",
                "tag_template = \"{sha}-{user}\"",
                &["tag_template", "placeholder"],
            ),
            ("bad cpu", "[quota]\ncpu = \"lots\"", &["quota.cpu", "300m"]),
            ("bad domain", "domain = \"https://x.com\"", &["domain"]),
            ("unknown database", "databases = [\"mongo\"]", &["mongo"]),
            ("bad interval", "[flux]\ninterval = \"often\"", &["flux.interval", "5m"]),
            ("argocd without repo", "engine = \"argocd\"", &["argocd.repo_url"]),
            ("duplicate db", "databases = [\"postgres\", \"postgres\"]", &["twice"]),
            ("bad branch", "[git]\nbranch = \"a..b\"", &["git.branch"]),
            (
                "mariadb without recipients",
                "databases = [\"mariadb\"]",
                &["secrets.age_recipients", "encrypted"],
            ),
            (
                "bad recipient",
                "[secrets]\nage_recipients = [\"age1nope\"]",
                &["secrets.age_recipients", "age-keygen"],
            ),
            ("bad share", "[sync]\nmax_prune_share = 1.5", &["sync.max_prune_share"]),
        ];
        for (name, extra, wants) in table {
            // Later keys win in our test helper only if the minimal config does not set them: rebuild.
            let text = merge(extra);
            let err = Config::parse(&text, "prenv.toml").expect_err(name).to_string();
            assert!(err.starts_with("config prenv.toml: "), "{name}: {err}");
            for want in *wants {
                assert!(err.contains(want), "{name}: {err:?} lacks {want:?}");
            }
        }
    }

    /// Replaces a top-level key of the minimal config, or appends a table.
    fn merge(extra: &str) -> String {
        let first = extra.lines().next().unwrap_or("");
        match first.split_once(" = ") {
            Some((k, _)) if !first.starts_with('[') => {
                let kept: Vec<&str> = MINIMAL.lines().filter(|l| !l.starts_with(&format!("{k} = "))).collect();
                format!("{extra}\n{}", kept.join("\n"))
            }
            _ => format!("{MINIMAL}{extra}"),
        }
    }

    #[test]
    fn argo_cd_with_sops_encrypted_credentials_is_refused_naming_both_fixes() {
        let argo = |databases: &str, secrets: &str| {
            format!(
                "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"argocd\"\ndatabases = {databases}\n[argocd]\nrepo_url = \"https://git.example.com/e.git\"\n{secrets}"
            )
        };
        let recipients =
            "[secrets]\nage_recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n";
        // With or without age recipients: the Argo CD problem is named first, not the missing key.
        for secrets in ["", recipients] {
            let err = Config::parse(&argo("[\"mariadb\"]", secrets), "prenv.toml")
                .unwrap_err()
                .to_string();
            for want in [
                "`secrets.backend` = \"sops\"",
                "`engine` = \"argocd\"",
                "KSOPS",
                "secrets.sealed_secrets_cert",
                "engine = \"flux\"",
            ] {
                assert!(err.contains(want), "{err:?} lacks {want:?}");
            }
        }
        // Without MariaDB nothing is committed as a secret file: nothing to decrypt, nothing refused.
        assert!(Config::parse(&argo("[\"postgres\"]", recipients), "prenv.toml").is_ok());
        let sealed = "[secrets]\nbackend = \"sealed-secrets\"\nsealed_secrets_cert = \"cert.pem\"\n";
        assert!(Config::parse(&argo("[\"mariadb\"]", sealed), "prenv.toml").is_ok());
    }

    #[test]
    fn go_durations_are_recognised() {
        for ok in ["5m", "90s", "1h30m", "500ms", "1.5h"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "5", "m", "5d", "five"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }
}
