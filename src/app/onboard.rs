//! `prenv onboard`: adds one project to an environments repository in one step — its config
//! checked, its own application template scaffolded from the defaults in one commit, and what
//! the platform owner does on GitHub spelled out. Running it again changes nothing.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::core::ports::{Change, EnvStore, Published};
use crate::error::{Error, Result};
use crate::manifests::templates;
use crate::model::config::Config;
use crate::model::layout;
use crate::model::naming;

/// What onboarding found and did.
#[derive(Debug, Serialize)]
pub struct Onboarded {
    pub project: String,
    pub repo: String,
    pub branch: String,
    /// The template files written (or, with `--dry-run`, that would be).
    pub scaffolded: Vec<String>,
    /// Why no template was scaffolded, when none was.
    pub template: String,
    /// The other projects the repository serves already.
    pub other_projects: BTreeSet<String>,
    /// The commit, when something was written.
    pub commit: Option<String>,
    /// What the platform owner does on GitHub, in order.
    pub github_steps: Vec<String>,
    /// What the platform owner does so the cluster's `prenv serve` and `prenv watch` act for the
    /// project too.
    pub platform_steps: Vec<String>,
}

/// Onboards `config`'s project onto the repository of `store`: scaffolds
/// `projects/<project_id>/base/` and the overlays of its databases from the defaults, unless the
/// project has a template of its own already, or environments that build on the shared one
/// (moving those is the team's decision: copy `base/` there when you want it). `dry_run` writes
/// nothing.
pub fn onboard(store: &mut dyn EnvStore, config: &Config, dry_run: bool) -> Result<Onboarded> {
    let project = config.project_id.as_str();
    for attempt in 1..=config.sync.max_attempts {
        let view = store.read()?;
        let other_projects: BTreeSet<String> = view
            .envs
            .entries()
            .filter(|(env, e)| !e.belongs_to(env.as_str(), project))
            .filter_map(|(env, e)| {
                let named = e.project.as_deref().map(String::from);
                named.or_else(|| Some(naming::split_env(env.as_str())?.0.to_string()))
            })
            .collect();
        let own_base = view.templates.contains(&layout::project_base(project));
        let existing = view.envs_of(project).count();
        let (tree, template) = if own_base {
            (
                Default::default(),
                format!("{} exists already", layout::project_base(project)),
            )
        } else if existing > 0 {
            let why = format!(
                "{existing} environments of {project} build on the shared {}/ already; to give {project} its own template, copy base/ (and overlays/) to {}/{project}/ and commit",
                layout::BASE_DIR,
                layout::PROJECTS_DIR
            );
            (Default::default(), why)
        } else {
            let tree = templates::for_project(project, &config.databases)?;
            let why = format!("scaffolded from the defaults into {}/{project}/", layout::PROJECTS_DIR);
            (tree, why)
        };
        let mut done = Onboarded {
            project: project.to_string(),
            repo: store.display().to_string(),
            branch: store.branch().to_string(),
            scaffolded: tree.paths().map(String::from).collect(),
            template,
            other_projects,
            commit: None,
            github_steps: github_steps(config),
            platform_steps: platform_steps(config),
        };
        if dry_run || tree.is_empty() {
            return Ok(done);
        }
        let repo = config.github.repository.as_deref().unwrap_or("its repository");
        let change = Change {
            message: format!(
                "prenv: onboard project {project} ({repo})\n\nits application template, from the defaults, in {}/{project}/\n",
                layout::PROJECTS_DIR
            ),
            upserts: tree,
            removals: Vec::new(),
        };
        match store.publish(&view, &change)? {
            Published::Done(commit) => {
                done.commit = Some(commit.to_string());
                return Ok(done);
            }
            Published::Rejected => super::sync::backoff(attempt),
        }
    }
    Err(Error::Contention {
        repo: store.display().to_string(),
        branch: store.branch().to_string(),
        attempts: config.sync.max_attempts,
    })
}

/// What the platform owner does on GitHub for this project, so its PRs reach prenv and its
/// reports reach the PRs.
pub fn github_steps(config: &Config) -> Vec<String> {
    let repo = config.github.repository.as_deref().unwrap_or("<owner>/<name>");
    let mut steps = Vec::new();
    match config.github.app_id {
        Some(app) => steps.push(format!(
            "install the GitHub App {app} on {repo} (https://github.com/{repo}/settings/installations): permissions Pull requests read, Commit statuses write, Deployments write, Issues write (the PR comment); its webhook delivers Pull request events to `prenv serve`"
        )),
        None => steps.push(format!(
            "add a webhook on {repo} (https://github.com/{repo}/settings/hooks/new): payload URL https://<prenv serve host>/webhook, content type application/json, secret = PRENV_WEBHOOK_SECRET of `prenv serve` (or a secret of its own, given to serve as {}), events: Pull requests",
            crate::app::projects::secret_var(&config.project_id)
        )),
    }
    steps.push(format!(
        "give prenv's token (GITHUB_TOKEN or the App) access to {repo}: it lists the PRs and posts the status `{}`, the deployment and one comment",
        config.watch.status_context
    ));
    steps.push(format!(
        "require the status check `{}` on {repo}'s default branch (Settings → Branches → branch protection), if a PR must not merge before its preview is ready",
        config.watch.status_context
    ));
    steps.push(format!(
        "run `prenv sync` (or `prenv serve` and `prenv watch`, which take every project's config at once) with this project's config: its environments are named {}-pr-<number> and served at https://{}-pr-<number>.{}",
        config.project_id, config.project_id, config.domain
    ));
    steps
}

/// What the platform owner does so the one `prenv serve` and the one `prenv watch` of the cluster
/// act for this project too: its config joins the others' in the ConfigMap they read.
pub fn platform_steps(config: &Config) -> Vec<String> {
    use crate::manifests::scaffold::{CONFIG_MAP, PROJECTS_CONFIG_DIR};
    let project = &config.project_id;
    vec![
        format!(
            "copy this config to {PROJECTS_CONFIG_DIR}/{project}.toml in the environments repository, with the [git] keys of the other projects' files there (url: the SSH URL serve pushes to; ssh_key = \"/etc/prenv-git/identity\"; no cache_dir)"
        ),
        format!(
            "add \"projects/{project}.toml\" to the `files` of the ConfigMap generator {CONFIG_MAP} in infrastructure/prenv/kustomization.yaml and commit: serve and watch restart with it and act for {project} too, on {}",
            config.github.repository.as_deref().unwrap_or("its repository")
        ),
    ]
}
