//! When a PR became deployable: the start of its open→ready time (RNF-01, "ready ≤ 10 min after
//! the PR event"). The sync records it once, when it creates the environment (`prenv.json`
//! `eligible_at`, the `prenv.dev/eligible-at` annotation), and the watcher measures the first head
//! of the environment from it.
//!
//! The evidence, from best to worst:
//! 1. A webhook event that made the PR deployable: `ready_for_review` (a draft, when drafts are not
//!    deployed), `labeled` with the fork label (a fork, when forks need it), `reopened`. Its time is
//!    the payload's `pull_request.updated_at`, which GitHub sets to the event's moment. Exact.
//! 2. From a listing (the polling backstop: no event, only the PR as it is now), a fork that needed
//!    the label: its `updated_at`. The label changed the PR, so `updated_at` is no earlier than the
//!    label; a later comment or edit moves it later, so this can under-measure.
//! 3. The PR's `created_at`: exact for a PR deployable from its opening (the common case: opened
//!    ready, same repository). From a listing, a PR that was a draft first or was reopened looks the
//!    same, so this can over-measure; only when the webhook for that event was lost.
//! 4. Nothing (a snapshot without `created_at`): `None`, and the watcher falls back to the commit.
//!
//! Whatever the evidence, the time is clamped into `[created_at, now]`: never before the PR
//! existed, never in the future of the sync that records it.

use chrono::{DateTime, Utc};

use crate::model::config::Lifecycle;
use crate::model::pr::PullRequest;

/// When `pr` became deployable, by the rules above; `fork` says whether it is a fork PR.
pub fn eligible_at(pr: &PullRequest, fork: bool, lifecycle: &Lifecycle, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let needs_label = fork && !lifecycle.deploy_forks;
    let event = pr.trigger.as_ref().filter(|t| match t.action.as_str() {
        "ready_for_review" => !lifecycle.deploy_drafts,
        "labeled" => needs_label && t.label.as_deref() == Some(lifecycle.fork_label.as_str()),
        "reopened" => true,
        _ => false,
    });
    let at = match (event, needs_label) {
        (Some(t), _) => Some(t.at),
        (None, true) => Some(pr.updated_at),
        (None, false) => pr.created_at,
    }?;
    let at = at.min(now);
    Some(pr.created_at.map_or(at, |created| at.max(created)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pr::Trigger;

    fn at(hhmm: &str) -> DateTime<Utc> {
        format!("2026-11-24T{hhmm}:00Z").parse().unwrap()
    }

    fn pr(trigger: Option<(&str, Option<&str>, &str)>) -> PullRequest {
        PullRequest {
            labels: vec!["safe-to-preview".into()],
            updated_at: at("11:30"),
            created_at: Some(at("09:00")),
            trigger: trigger.map(|(action, label, when)| Trigger {
                action: action.into(),
                label: label.map(String::from),
                at: at(when),
            }),
            ..crate::core::plan::tests::pr(7)
        }
    }

    #[test]
    fn the_best_evidence_of_the_pr_event_wins() {
        let lc = Lifecycle::default();
        let now = at("12:00");
        let table: Vec<(&str, PullRequest, bool, Option<DateTime<Utc>>)> = vec![
            (
                "opened ready: its creation",
                pr(Some(("opened", None, "09:00"))),
                false,
                Some(at("09:00")),
            ),
            ("a listing: its creation", pr(None), false, Some(at("09:00"))),
            (
                "a push is no eligibility event",
                pr(Some(("synchronize", None, "11:30"))),
                false,
                Some(at("09:00")),
            ),
            (
                "ready for review: the event",
                pr(Some(("ready_for_review", None, "10:15"))),
                false,
                Some(at("10:15")),
            ),
            (
                "reopened: the event",
                pr(Some(("reopened", None, "10:40"))),
                false,
                Some(at("10:40")),
            ),
            (
                "fork labelled: the event",
                pr(Some(("labeled", Some("safe-to-preview"), "10:05"))),
                true,
                Some(at("10:05")),
            ),
            (
                "fork, another label: its last update",
                pr(Some(("labeled", Some("bug"), "10:05"))),
                true,
                Some(at("11:30")),
            ),
            ("fork in a listing: its last update", pr(None), true, Some(at("11:30"))),
            (
                "an event after the sync: now",
                pr(Some(("reopened", None, "12:30"))),
                false,
                Some(now),
            ),
            (
                "an event before the PR: its creation",
                pr(Some(("reopened", None, "08:00"))),
                false,
                Some(at("09:00")),
            ),
            (
                "no creation time: unknown",
                PullRequest {
                    created_at: None,
                    ..pr(None)
                },
                false,
                None,
            ),
        ];
        for (name, pr, fork, want) in table {
            assert_eq!(eligible_at(&pr, fork, &lc, now), want, "{name}");
        }
    }

    #[test]
    fn events_that_did_not_gate_the_pr_are_not_its_start() {
        // Drafts deployed: ready_for_review changed nothing; forks deployed: the label neither.
        let lc = Lifecycle {
            deploy_drafts: true,
            deploy_forks: true,
            ..Lifecycle::default()
        };
        let now = at("12:00");
        let ready = pr(Some(("ready_for_review", None, "10:15")));
        assert_eq!(eligible_at(&ready, false, &lc, now), Some(at("09:00")));
        let labelled = pr(Some(("labeled", Some("safe-to-preview"), "10:05")));
        assert_eq!(eligible_at(&labelled, true, &lc, now), Some(at("09:00")));
    }
}
