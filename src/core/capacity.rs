//! The capacity guard (`[capacity]`): which new environments the cluster has room for, and which
//! wait. One queue across every project of the environments repository, first come first served
//! by when an environment was first queued (ties by PR number). Existing environments, pinned ones
//! included, are never evicted; a project activates only its own queued environments, but a queue
//! position counts everyone's, and room that the head of the queue gets is kept for it even when
//! it is another project's (that project's next sync creates it). Pure: what the repository holds,
//! one project's plan and the limits in; the plan's decisions rewritten.
//!
//! A decision taken on the repository's current tree is atomic: a sync that loses the push race
//! reads the new tree and decides again (`app::sync`), so two projects never both take the last
//! place.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::config::Config;
use crate::model::meta::{EnvMeta, Queued};

use super::plan::{Action, Plan, rfc3339};
use super::ports::RepoView;

/// The limits the queue applies; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cluster: Option<u32>,
    pub per_project: Option<u32>,
}

/// An environment that waits for room, or is new in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub project: String,
    pub env: String,
    pub pr: u64,
    /// When it was first queued; for an environment new in this run, now.
    pub since: DateTime<Utc>,
}

/// Which limit keeps an environment waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Cluster,
    Project,
}

/// Where the queue puts one waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// There is room for it now.
    Admitted,
    /// It waits: `position` of `of` (from 1), held back by `full`.
    Queued { position: u32, of: u32, full: Full },
}

/// What the queue decided, with the counts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// One place per waiter, in the order they were given.
    pub places: Vec<Place>,
    /// Environments running or with room kept for them, all projects.
    pub used: u32,
    /// The same per project.
    pub used_by: BTreeMap<String, u32>,
}

/// Orders the waiters and gives each room while there is some: the cluster's and its project's.
/// `occupants` names the project of every environment that runs (or stays) whatever the queue
/// says. A waiter whose project is full does not hold back the ones behind it of other projects.
pub fn queue(limits: Limits, occupants: &[&str], waiters: &[Waiter]) -> Decided {
    let mut used = u32::try_from(occupants.len()).unwrap_or(u32::MAX);
    let mut used_by: BTreeMap<String, u32> = BTreeMap::new();
    for project in occupants {
        *used_by.entry((*project).to_string()).or_default() += 1;
    }
    let mut order: Vec<usize> = (0..waiters.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&waiters[a], &waiters[b]);
        (a.since, a.pr, &a.project, &a.env).cmp(&(b.since, b.pr, &b.project, &b.env))
    });
    let mut held: Vec<Option<Full>> = vec![None; waiters.len()];
    for &i in &order {
        let project = &waiters[i].project;
        let mine = used_by.get(project).copied().unwrap_or(0);
        held[i] = if limits.cluster.is_some_and(|max| used >= max) {
            Some(Full::Cluster)
        } else if limits.per_project.is_some_and(|max| mine >= max) {
            Some(Full::Project)
        } else {
            used += 1;
            *used_by.entry(project.clone()).or_default() += 1;
            None
        };
    }
    let of = u32::try_from(held.iter().filter(|h| h.is_some()).count()).unwrap_or(u32::MAX);
    let mut places = vec![Place::Admitted; waiters.len()];
    let mut position = 0;
    for &i in &order {
        if let Some(full) = held[i] {
            position += 1;
            places[i] = Place::Queued { position, of, full };
        }
    }
    Decided { places, used, used_by }
}

/// How full the cluster is once a plan is applied: what `prenv plan` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub cluster: Count,
    /// The project that planned.
    pub project_id: String,
    /// Its own count.
    pub project: Count,
    /// The node arithmetic of the config ([`crate::model::config::Fit::explain`]), when the node's
    /// size is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Environments in use against one limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Running, or with room kept for them.
    pub used: u32,
    /// `None`: no limit.
    pub max: Option<u32>,
    pub left: Option<u32>,
    /// Waiting in the queue.
    pub queued: u32,
}

impl Count {
    fn of(used: u32, max: Option<u32>, queued: u32) -> Count {
        Count {
            used,
            max,
            left: max.map(|m| m.saturating_sub(used)),
            queued,
        }
    }

    /// `5 of 8 used, 3 left, 0 queued` or `5 used (no limit), 0 queued`.
    pub fn words(&self) -> String {
        match (self.max, self.left) {
            (Some(max), Some(left)) => format!("{} of {max} used, {left} left, {} queued", self.used, self.queued),
            _ => format!("{} used (no limit), {} queued", self.used, self.queued),
        }
    }
}

impl Usage {
    /// The lines `prenv plan` and `prenv sync` print.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "capacity: cluster {}; project {} {}",
            self.cluster.words(),
            self.project_id,
            self.project.words()
        )];
        out.extend(self.node.iter().map(|n| format!("capacity: node {n}")));
        out
    }
}

/// Applies the guard to one project's plan against everything the repository holds: new
/// environments without room are queued (recorded in their metadata, position included), queued
/// ones with room are created, and [`Plan::capacity`] says how full the cluster is. Without a
/// limit in the config the plan is left exactly as it is.
pub fn admit(config: &Config, plan: &mut Plan, view: &RepoView, now: DateTime<Utc>) {
    let capacity = &config.capacity;
    if !capacity.limited() {
        return;
    }
    let project = config.project_id.as_str();
    let mut occupants: Vec<String> = Vec::new();
    let mut waiters: Vec<Waiter> = Vec::new();
    // Decisions of this project that wait (or are new), by index into the plan.
    let mut mine: Vec<(usize, Option<&EnvMeta>)> = Vec::new();
    for (i, d) in plan.decisions.iter().enumerate() {
        let prior = view.envs.get(&d.env);
        match (&d.desired, d.action) {
            (_, Action::Prune | Action::Skip) => {}
            (Some(meta), _) => {
                let running = match prior {
                    Some(p) => !p.is_queued(),
                    // A directory gone whose wiring is still listed still runs.
                    None => view.wired_only.iter().any(|w| w.as_str() == d.env),
                };
                if running {
                    occupants.push(project.to_string());
                } else {
                    let since = prior.and_then(|p| p.queued.as_ref()).map_or(now, |q| q.queued_at);
                    waiters.push(Waiter {
                        project: project.to_string(),
                        env: meta.env.to_string(),
                        pr: d.pr,
                        since,
                    });
                    mine.push((i, prior));
                }
            }
            // Kept as it is without metadata (verified, or its directory gone), or blocked with
            // prenv's unreadable metadata: it may run, so it counts.
            (None, _) => {
                let exists = view.envs.contains_key(&d.env) || view.wired_only.iter().any(|w| w.as_str() == d.env);
                if exists && prior.is_none_or(|p| !p.is_queued()) {
                    occupants.push(project.to_string());
                }
            }
        }
    }
    for (name, entry) in view.envs.entries().filter(|(n, e)| !e.belongs_to(n.as_str(), project)) {
        let owner = entry
            .project
            .as_deref()
            .map(String::from)
            .or_else(|| crate::model::naming::split_env(name.as_str()).map(|(p, _)| p.to_string()))
            .unwrap_or_default();
        // Metadata that does not decode counts as running: the guard errs towards fewer environments.
        match entry.meta().ok().and_then(|m| m.queued.as_ref()) {
            Some(q) => waiters.push(Waiter {
                project: owner,
                env: name.to_string(),
                pr: entry.pr,
                since: q.queued_at,
            }),
            None => occupants.push(owner),
        }
    }
    let limits = Limits {
        cluster: capacity.max_environments,
        per_project: capacity.max_environments_per_project,
    };
    let names: Vec<&str> = occupants.iter().map(String::as_str).collect();
    let decided = queue(limits, &names, &waiters);
    let queued_all = decided.places.iter().filter(|p| **p != Place::Admitted).count();
    let mut queued_mine = 0;
    for (k, (i, prior)) in mine.iter().enumerate() {
        let place = decided.places[k];
        let since = waiters[k].since;
        if place != Place::Admitted {
            queued_mine += 1;
        }
        settle(config, &mut plan.decisions[*i], *prior, place, since, now, decided.used);
    }
    let mine_used = decided.used_by.get(project).copied().unwrap_or(0);
    plan.capacity = Some(Usage {
        cluster: Count::of(
            decided.used,
            limits.cluster,
            u32::try_from(queued_all).unwrap_or(u32::MAX),
        ),
        project_id: project.to_string(),
        project: Count::of(mine_used, limits.per_project, queued_mine),
        node: config.capacity_fit().map(|f| f.explain()),
    });
}

/// Rewrites one decision of this project for its place in the queue.
fn settle(
    config: &Config,
    d: &mut super::plan::Decision,
    prior: Option<&EnvMeta>,
    place: Place,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    used: u32,
) {
    let Some(meta) = d.desired.as_mut() else { return };
    let was_queued = prior.is_some_and(EnvMeta::is_queued);
    let (position, of, full) = match place {
        Place::Admitted if !was_queued => return, // new, with room: created as planned
        Place::Admitted => {
            // Out of the queue: deployed from now, so the push is timed from now.
            meta.queued = None;
            meta.committed_at = Some(now);
            d.action = if meta.preserve_until.is_some() {
                Action::Pin
            } else {
                Action::Create
            };
            d.reason = format!("room in the cluster: leaves the queue it joined at {}", rfc3339(since)).into();
            return;
        }
        Place::Queued { position, of, full } => (position, of, full),
    };
    meta.queued = Some(Queued {
        queued_at: since,
        position,
        of,
    });
    if let Some(p) = prior {
        // A title edit while queued commits nothing, as in the plan itself.
        if (EnvMeta {
            pr_updated_at: p.pr_updated_at,
            ..(**meta).clone()
        }) == *p
        {
            meta.pr_updated_at = p.pr_updated_at;
        }
    }
    let c = &config.capacity;
    let why = match full {
        Full::Cluster => format!(
            "the cluster is full ({used} of capacity.max_environments = {} in use)",
            c.max_environments.unwrap_or_default()
        ),
        Full::Project => format!(
            "project {} is full (capacity.max_environments_per_project = {})",
            config.project_id,
            c.max_environments_per_project.unwrap_or_default()
        ),
    };
    let unchanged = prior == Some(&*meta);
    (d.action, d.reason) = if unchanged {
        (
            Action::Keep,
            format!("{} since {}: {why}", words(position, of), rfc3339(since)).into(),
        )
    } else {
        (
            Action::Queue,
            format!(
                "{}: {why}; nothing runs until room frees, then it is created",
                words(position, of)
            )
            .into(),
        )
    };
}

/// How a queue place reads, in the plan, the commit status and the PR comment.
pub fn words(position: u32, of: u32) -> String {
    format!("{QUEUED} {position} of {of}")
}

/// How a queue place begins in words: the watcher and the PR status know a queued environment by it.
pub const QUEUED: &str = "queued, position";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        format!("2026-11-24T12:{minute:02}:00Z").parse().unwrap()
    }

    fn waiter(project: &str, pr: u64, minute: u32) -> Waiter {
        Waiter {
            project: project.into(),
            env: format!("{project}-pr-{pr}"),
            pr,
            since: at(minute),
        }
    }

    const A: Place = Place::Admitted;

    fn q(position: u32, of: u32, full: Full) -> Place {
        Place::Queued { position, of, full }
    }

    #[test]
    fn the_queue_is_first_come_first_served_across_projects_and_never_evicts() {
        use Full::{Cluster, Project};
        let limits = |cluster, per_project| Limits { cluster, per_project };
        // (what happens, limits, running environments' projects, waiters, expected places, used)
        type Row = (&'static str, Limits, Vec<&'static str>, Vec<Waiter>, Vec<Place>, u32);
        let table: Vec<Row> = vec![
            (
                "no limit: everyone is admitted",
                limits(None, None),
                vec!["shop"; 20],
                vec![waiter("shop", 21, 0)],
                vec![A],
                21,
            ),
            (
                "room for two of three: the third waits, first of one",
                limits(Some(4), None),
                vec!["shop", "shop"],
                vec![waiter("shop", 3, 0), waiter("shop", 4, 1), waiter("shop", 5, 2)],
                vec![A, A, q(1, 1, Cluster)],
                4,
            ),
            (
                "the earliest queued goes first, whatever its PR number or project",
                limits(Some(3), None),
                vec!["shop", "shop"],
                vec![waiter("shop", 1, 5), waiter("blog", 9, 1), waiter("shop", 2, 3)],
                vec![q(2, 2, Cluster), A, q(1, 2, Cluster)],
                3,
            ),
            (
                "ties in time go by PR number",
                limits(Some(1), None),
                vec![],
                vec![waiter("shop", 8, 0), waiter("blog", 7, 0)],
                vec![q(1, 1, Cluster), A],
                1,
            ),
            (
                "over the limit (it was lowered): nobody is evicted, nobody admitted",
                limits(Some(2), None),
                vec!["shop", "shop", "blog"],
                vec![waiter("shop", 9, 0)],
                vec![q(1, 1, Cluster)],
                3,
            ),
            (
                "a full project waits without holding back another project's",
                limits(Some(5), Some(2)),
                vec!["shop", "shop"],
                vec![waiter("shop", 3, 0), waiter("blog", 1, 1), waiter("shop", 4, 2)],
                vec![q(1, 2, Project), A, q(2, 2, Project)],
                3,
            ),
            (
                "a per-project limit alone",
                limits(None, Some(1)),
                vec!["blog"],
                vec![waiter("blog", 2, 0), waiter("shop", 1, 0)],
                vec![q(1, 1, Project), A],
                2,
            ),
        ];
        for (name, limits, occupants, waiters, want, used) in table {
            let got = queue(limits, &occupants, &waiters);
            assert_eq!(got.places, want, "{name}");
            assert_eq!(got.used, used, "{name}");
        }
    }

    #[test]
    fn counts_say_what_is_used_and_left() {
        assert_eq!(Count::of(6, Some(8), 0).words(), "6 of 8 used, 2 left, 0 queued");
        assert_eq!(Count::of(9, Some(8), 2).words(), "9 of 8 used, 0 left, 2 queued");
        assert_eq!(Count::of(3, None, 0).words(), "3 used (no limit), 0 queued");
        assert_eq!(words(1, 3), "queued, position 1 of 3");
    }

    mod through_the_plan {
        use std::collections::BTreeMap;

        use crate::core::plan::tests::{at, closed, pr};
        use crate::core::plan::{Action, plan};
        use crate::model::config::Config;
        use crate::model::meta::EnvMeta;
        use crate::model::naming::EnvName;

        fn limited(max: u32) -> Config {
            Config::parse(
                &format!(
                    "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[capacity]\nmax_environments = {max}\n"
                ),
                "test",
            )
            .unwrap()
        }

        fn existing(metas: impl IntoIterator<Item = EnvMeta>) -> BTreeMap<EnvName, EnvMeta> {
            metas.into_iter().map(|m| (m.env.clone(), m)).collect()
        }

        #[test]
        fn a_queued_environment_stays_put_through_an_edit_and_leaves_the_queue_when_room_frees() {
            let cfg = limited(1);
            let t0 = at("2026-11-24T12:00:00Z");
            let first = plan(&cfg, &[pr(1), pr(2)], &BTreeMap::new(), t0);
            let got: Vec<Action> = first.decisions.iter().map(|d| d.action).collect();
            assert_eq!(got, [Action::Create, Action::Queue]);
            let usage = first.capacity.as_ref().unwrap();
            assert_eq!(
                usage.lines(),
                ["capacity: cluster 1 of 1 used, 0 left, 1 queued; project shop 1 used (no limit), 1 queued"]
            );
            let repo = existing(first.desired().cloned());
            // A title edit (a newer updated_at) while queued commits nothing.
            let mut edited = pr(2);
            edited.updated_at = at("2026-11-24T12:30:00Z");
            let later = at("2026-11-24T13:00:00Z");
            let again = plan(&cfg, &[pr(1), edited], &repo, later);
            assert!(again.is_noop(), "{:?}", again.decisions);
            // PR 1 closes: PR 2 is created in the same plan, timed from now.
            let freed = plan(&cfg, &[closed(pr(1), "2026-11-24T12:50:00Z", &[]), pr(2)], &repo, later);
            let got: Vec<Action> = freed.decisions.iter().map(|d| d.action).collect();
            assert_eq!(got, [Action::Prune, Action::Create]);
            let created = freed.decisions[1].desired.as_ref().unwrap();
            assert_eq!((created.queued.as_ref(), created.committed_at), (None, Some(later)));
            // Without a limit nothing is counted or queued.
            let free = plan(
                &crate::core::plan::tests::config(),
                &[pr(1), pr(2)],
                &BTreeMap::new(),
                t0,
            );
            assert!(free.capacity.is_none() && free.decisions.iter().all(|d| d.action == Action::Create));
        }
    }
}
