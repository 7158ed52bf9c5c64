//! Fingerprints of the PRs a settled tree's decisions were made from ([`Prints`]): with them, a
//! snapshot of every PR decides only the PRs that changed since, and reads only their
//! environments. A decision is a function of the PR, the settings, the environment it finds and
//! the time; a settled tree is the environment every listed decision left, the settings are in
//! each fingerprint, and the time is checked against [`Prints::at`], so a PR whose fingerprint
//! matches would be decided again into exactly what the tree holds.

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::model::config::Config;
use crate::model::pr::{ElementId, Elements, PrState, PullRequest};

use super::plan::{Action, Plan};
use super::ports::{Print, PrintEntry, Prints, Settled};

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

/// The id of a run's [`keyed`] settings, kept with the fingerprints ([`Prints::key`]).
pub fn key_id(key: &Sha256) -> Print {
    first_16(key.clone())
}

/// The first 16 bytes of what `h` hashed: a fingerprint.
fn first_16(h: Sha256) -> Print {
    let digest = h.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
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
    first_16(h)
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
            .filter(|pr| prints.get(pr.number).is_none_or(|known| known.print != print(&key, pr)))
            .collect(),
    )
}

/// The listing elements whose PRs `settled`'s fingerprints hold, at `now`, by digest with the PR
/// each is: byte for byte the element a fingerprint was taken from, under the same settings, is
/// the same PR, so it needs no building to be left out ([`crate::model::pr::Listing::read`]).
/// Empty when no fingerprints hold now.
pub fn known_elements(config: &Config, settled: &Settled, now: DateTime<Utc>) -> FxHashMap<ElementId, u64> {
    match settled.prints.as_ref() {
        Some(prints) if now >= prints.at && prints.key == key_id(&keyed(config)) => prints.by_element(),
        _ => FxHashMap::default(),
    }
}

/// Records in `prints` the listing element each PR of `prs` was built from (`elements`, by PR),
/// where the PR is the one its entry was fingerprinted from: the next listing then leaves it
/// unread while its bytes stay the same.
pub fn learn_elements(config: &Config, prints: &mut Prints, prs: &[PullRequest], elements: &Elements) {
    let key = keyed(config);
    for pr in prs {
        let Some(id) = elements.get(&pr.number) else {
            continue;
        };
        let Ok(at) = prints.entries.binary_search_by_key(&pr.number, |e| e.pr) else {
            continue;
        };
        let entry = &mut prints.entries[at];
        if entry.element != Some(*id) && entry.print == print(&key, pr) {
            entry.element = Some(*id);
        }
    }
}

/// The fingerprints of the tree a run leaves: of each PR it decided into something that waits for
/// nothing, and, from the tree it read (`read`, a partial view's), of every PR it did not decide.
/// A PR decided into an environment waiting for its image, or a queue, is left out: it is
/// decided again on every run.
pub fn after(config: &Config, plan: &Plan, prs: &[PullRequest], read: Option<&Prints>, now: DateTime<Utc>) -> Prints {
    let key = keyed(config);
    let key_id = key_id(&key);
    // Fingerprints taken under other settings hold nothing under these.
    let read = read.filter(|r| r.key == key_id);
    let mut decided: Vec<PrintEntry> = prs
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
            Some(PrintEntry {
                pr: pr.number,
                print: print(&key, pr),
                env,
                element: None,
            })
        })
        .collect();
    decided.sort_unstable_by_key(|e| e.pr);
    decided.dedup_by_key(|e| e.pr);
    let mut entries = Vec::with_capacity(decided.len() + read.map_or(0, |r| r.entries.len()));
    let mut carried = read.map_or(&[][..], |r| &r.entries[..]).iter().peekable();
    // Sorted, for the many carried entries to look up (a run decides a few PRs, or all).
    let mut asked: Vec<u64> = prs.iter().map(|pr| pr.number).collect();
    asked.sort_unstable();
    let asked = |pr: &u64| asked.binary_search(pr).is_ok();
    for entry in decided {
        while let Some(old) = carried.next_if(|old| old.pr < entry.pr) {
            if !asked(&old.pr) {
                entries.push(*old);
            }
        }
        carried.next_if(|old| old.pr == entry.pr);
        entries.push(entry);
    }
    entries.extend(carried.filter(|old| !asked(&old.pr)).copied());
    Prints {
        at: read.map_or(now, |r| r.at.max(now)),
        key: key_id,
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text =
            format!("project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n{extra}");
        Config::parse(&text, "prenv.toml").unwrap()
    }

    fn settled(config: &Config, at: &str) -> Settled {
        let entry = |pr: u64, element| PrintEntry {
            pr,
            print: [pr as u8; 16],
            env: true,
            element,
        };
        Settled {
            project: "shop".into(),
            digest: config.render_digest(),
            due: None,
            envs: 2,
            prints: Some(std::sync::Arc::new(Prints {
                at: at.parse().unwrap(),
                key: key_id(&keyed(config)),
                entries: vec![entry(1, Some([1; 16])), entry(2, None)],
            })),
        }
    }

    #[test]
    fn elements_are_known_only_under_the_settings_and_after_the_time_they_were_decided_with() {
        let config = config("");
        let fact = settled(&config, "2026-11-24T12:00:00Z");
        let now = "2026-11-24T12:00:00Z".parse().unwrap();
        let known = known_elements(&config, &fact, now);
        assert_eq!(known.into_iter().collect::<Vec<_>>(), [([1; 16], 1)]);
        // Lifecycle settings are not rendered, so the settled fact stands; its elements do not.
        let drafts = self::config("[lifecycle]\ndeploy_drafts = true\n");
        assert_eq!(drafts.render_digest(), config.render_digest());
        assert!(known_elements(&drafts, &fact, now).is_empty());
        let before = "2026-11-24T11:59:59Z".parse().unwrap();
        assert!(known_elements(&config, &fact, before).is_empty());
    }

    #[test]
    fn an_element_is_learned_only_for_the_pr_its_entry_was_fingerprinted_from() {
        let config = config("");
        let key = keyed(&config);
        let pr = |n: u64, title: &str| PullRequest {
            title: title.into(),
            ..crate::core::plan::tests::pr(n)
        };
        let (same, changed, unlisted) = (pr(1, "t"), pr(2, "t"), pr(3, "t"));
        let mut prints = Prints {
            at: "2026-11-24T12:00:00Z".parse().unwrap(),
            key: key_id(&key),
            entries: [&same, &pr(2, "before")]
                .iter()
                .map(|p| PrintEntry {
                    pr: p.number,
                    print: print(&key, p),
                    env: true,
                    element: None,
                })
                .collect(),
        };
        let elements = [(1, [1; 16]), (2, [2; 16]), (3, [3; 16])].into_iter().collect();
        learn_elements(&config, &mut prints, &[same, changed, unlisted], &elements);
        let learned: Vec<_> = prints.entries.iter().map(|e| (e.pr, e.element)).collect();
        assert_eq!(learned, [(1, Some([1; 16])), (2, None)]);
    }
}
