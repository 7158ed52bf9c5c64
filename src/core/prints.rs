//! Fingerprints of the PRs a settled tree's decisions were made from ([`Prints`]): with them, a
//! snapshot of every PR decides only the PRs that changed since, and reads only their
//! environments. A decision is a function of the PR, the settings, the environment it finds and
//! the time; a settled tree is the environment every listed decision left, the settings are in
//! each fingerprint, and the time is checked against [`Prints::at`], so a PR whose fingerprint
//! matches would be decided again into exactly what the tree holds.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::model::config::Config;
use crate::model::pr::{PrState, PullRequest};

use super::plan::{Action, Plan};
use super::ports::{Print, Prints, Settled};

/// The hasher every fingerprint of a run starts from: the prenv version and every setting a
/// decision reads (the render digest holds the version and the rendered settings; lifecycle and
/// the application repository decide what a PR gets without being rendered).
pub fn keyed(config: &Config) -> Sha256 {
    let mut key = Sha256::new();
    key.update(b"prenv-print 1\0");
    text(&mut key, &config.project_id);
    text(&mut key, &config.render_digest());
    text(
        &mut key,
        &serde_json::to_string(&config.lifecycle).expect("the lifecycle settings serialize"),
    );
    optional(&mut key, config.github.repository.as_deref());
    key
}

/// The fingerprint of `pr`, from the run's [`keyed`] hasher: every field of the PR, each
/// length-prefixed, so no two PRs share the bytes hashed.
pub fn print(key: &Sha256, pr: &PullRequest) -> Print {
    let mut h = key.clone();
    h.update(pr.number.to_le_bytes());
    h.update([u8::from(pr.state == PrState::Open), u8::from(pr.draft)]);
    text(&mut h, &pr.title);
    h.update((pr.labels.len() as u64).to_le_bytes());
    for label in &pr.labels {
        text(&mut h, label);
    }
    text(&mut h, &pr.head_sha);
    text(&mut h, &pr.head_ref);
    optional(&mut h, pr.head_repo.as_deref());
    optional(&mut h, pr.base_repo.as_deref());
    optional(&mut h, pr.author.as_deref());
    for at in [pr.closed_at, pr.merged_at, Some(pr.updated_at), pr.created_at] {
        time(&mut h, at);
    }
    match &pr.trigger {
        None => h.update([0]),
        Some(trigger) => {
            h.update([1]);
            text(&mut h, &trigger.action);
            optional(&mut h, trigger.label.as_deref());
            time(&mut h, Some(trigger.at));
        }
    }
    let digest = h.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn text(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn optional(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0]),
        Some(s) => {
            h.update([1]);
            text(h, s);
        }
    }
}

fn time(h: &mut Sha256, at: Option<DateTime<Utc>>) {
    match at {
        None => h.update([0]),
        Some(at) => {
            h.update([1]);
            h.update(at.timestamp().to_le_bytes());
            h.update(at.timestamp_subsec_nanos().to_le_bytes());
        }
    }
}

/// The PRs of `prs` to decide against the tree `settled` is about, at `now`: those whose
/// fingerprint is not the one its decision was made from. `None` when the tree has no
/// fingerprints that hold now (every PR is decided).
pub fn to_decide<'a>(
    config: &Config,
    settled: &Settled,
    prs: &'a [PullRequest],
    now: DateTime<Utc>,
) -> Option<Vec<&'a PullRequest>> {
    let prints = settled.prints.as_ref().filter(|p| now >= p.at)?;
    let key = keyed(config);
    Some(
        prs.iter()
            .filter(|pr| prints.get(pr.number).is_none_or(|(known, _)| known != print(&key, pr)))
            .collect(),
    )
}

/// The fingerprints of the tree a run leaves: of each PR it decided into something that waits for
/// nothing, and, from the tree it read (`read`, a partial view's), of every PR it did not decide.
/// A PR decided into an environment waiting for its image, or a queue, is left out: it is
/// decided again on every run.
pub fn after(config: &Config, plan: &Plan, prs: &[PullRequest], read: Option<&Prints>, now: DateTime<Utc>) -> Prints {
    let key = keyed(config);
    let mut decided: Vec<(u64, Print, bool)> = prs
        .iter()
        .filter_map(|pr| {
            let first = plan.decisions.partition_point(|d| d.pr < pr.number);
            let mut of_pr = plan.decisions[first..].iter().take_while(|d| d.pr == pr.number);
            let d = of_pr.next()?;
            if of_pr.next().is_some() {
                return None;
            }
            let env = match d.action {
                Action::Skip | Action::Prune => false,
                Action::Keep | Action::Update | Action::Create | Action::Pin => {
                    let meta = d.desired.as_ref()?;
                    if meta.waiting_for.is_some() || meta.is_queued() {
                        return None;
                    }
                    true
                }
                _ => return None,
            };
            Some((pr.number, print(&key, pr), env))
        })
        .collect();
    decided.sort_unstable_by_key(|e| e.0);
    decided.dedup_by_key(|e| e.0);
    let mut entries = Vec::with_capacity(decided.len() + read.map_or(0, |r| r.entries.len()));
    let mut carried = read.map_or(&[][..], |r| &r.entries[..]).iter().peekable();
    let asked: rustc_hash::FxHashSet<u64> = prs.iter().map(|pr| pr.number).collect();
    for entry in decided {
        while let Some(old) = carried.next_if(|old| old.0 < entry.0) {
            if !asked.contains(&old.0) {
                entries.push(*old);
            }
        }
        carried.next_if(|old| old.0 == entry.0);
        entries.push(entry);
    }
    entries.extend(carried.filter(|old| !asked.contains(&old.0)).copied());
    Prints {
        at: read.map_or(now, |r| r.at.max(now)),
        entries,
    }
}
