//! The tracker against the status fixtures (kustomize-controller v1.9.4 and argo-cd v3.0.23, written
//! write by write; `tests/fixtures/status/*/README.md`): every scenario replayed as the watcher sees
//! it (live events, 410 re-lists, restarts that lose memory except what the PR comment's marker
//! carries), and the reports a PR would get compared against a table.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prenv::core::status::{self, Observation};
use prenv::core::tracker::{Effect, EnvRecord, Event, State, Tracker};
use serde_json::Value;

const IMAGE: &str = "ghcr.io/acme/shop";

/// What a PR is told: "<pr> <short head> <state>[ <reason> <object>]".
fn told(record: &EnvRecord) -> String {
    let head = &record.head()[..7];
    let extra = match &record.state {
        State::Failed(f) => format!(" {} {}", f.reason, f.object.as_deref().unwrap_or("-")),
        _ if record.stuck => " stuck".into(),
        _ => String::new(),
    };
    format!("{} {head} {}{extra}", record.pr, record.state.word())
}

/// The watcher, simulated: a tracker, and the markers of the PR comments (the last record reported
/// per environment), which are all that survives a restart.
struct Sim {
    engine: &'static str,
    tracker: Tracker,
    markers: BTreeMap<String, EnvRecord>,
    told: Vec<String>,
    samples: Vec<String>,
    now: DateTime<Utc>,
}

impl Sim {
    fn new(engine: &'static str) -> Sim {
        Sim {
            engine,
            tracker: Tracker::new(chrono::Duration::minutes(5)),
            markers: BTreeMap::new(),
            told: Vec::new(),
            samples: Vec::new(),
            now: DateTime::<Utc>::MIN_UTC,
        }
    }

    fn read(&self, object: &Value) -> Observation {
        match self.engine {
            "flux" => status::from_flux(object),
            _ => status::from_argo(object, IMAGE),
        }
        .unwrap()
    }

    fn feed(&mut self, event: Event) {
        let mut queue = vec![event];
        while let Some(event) = queue.pop() {
            for effect in self.tracker.observe(event, self.now) {
                match effect {
                    Effect::Recall { env, .. } => queue.push(Event::Recalled {
                        memory: self.markers.get(&env).cloned(),
                        env,
                    }),
                    Effect::Report(record) => {
                        self.told.push(told(&record));
                        self.markers.insert(record.env.clone(), *record);
                    }
                    Effect::OpenToReady { env, seconds } => self.samples.push(format!("{env} ready after {seconds}s")),
                    Effect::CommitToReady { env, seconds } => {
                        self.samples.push(format!("{env} commit ready after {seconds}s"))
                    }
                    Effect::CloseToGone { env, seconds, .. } => {
                        self.samples.push(format!("{env} gone after {seconds}s"))
                    }
                    Effect::Failure { .. } => {}
                }
            }
        }
    }

    fn list(&mut self, list: &Value, fresh: bool) {
        self.feed(Event::Listing);
        let items = list["items"].as_array().unwrap();
        for item in items {
            let observed = self.read(item);
            self.feed(Event::Applied(observed));
        }
        self.feed(Event::Listed);
        if fresh {
            // The startup sweep: PR comments whose environment the list lacks.
            let listed: Vec<&str> = items.iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
            let absent: Vec<EnvRecord> = self
                .markers
                .values()
                .filter(|r| !listed.contains(&r.env.as_str()))
                .cloned()
                .collect();
            for memory in absent {
                self.feed(Event::Recalled {
                    env: memory.env.clone(),
                    memory: Some(memory),
                });
            }
        }
    }

    fn replay(mut self, fixture: &str) -> Sim {
        let path = format!(
            "{}/tests/fixtures/status/{}/{fixture}.json",
            env!("CARGO_MANIFEST_DIR"),
            self.engine
        );
        let scenario: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut fresh = true;
        let mut tick: Option<DateTime<Utc>> = None;
        for step in scenario["steps"].as_array().unwrap() {
            let at: DateTime<Utc> = step["at"].as_str().unwrap().parse().unwrap();
            // The watcher ticks every 30 s (terminating_alert_secs clamped to 30).
            let mut next = tick.unwrap_or(at);
            while next + chrono::Duration::seconds(30) <= at {
                next += chrono::Duration::seconds(30);
                self.now = next;
                self.feed(Event::Tick);
            }
            tick = Some(next);
            self.now = at;
            let missed = step["missed"].as_bool().unwrap_or(false);
            match step["event"].as_str().unwrap() {
                "apply" | "delete" if missed => {}
                "apply" => self.feed(Event::Applied(self.read(&step["object"]))),
                "delete" => self.feed(Event::Deleted(self.read(&step["object"]))),
                "list" => {
                    self.list(&step["list"], fresh);
                    fresh = false;
                }
                "relist" => self.list(&step["list"], false),
                "restart" => {
                    self.tracker = Tracker::new(chrono::Duration::minutes(5));
                    fresh = true;
                }
                "bookmark" | "disconnect" | "resume" => {}
                other => panic!("{fixture}: unknown event {other}"),
            }
            self.feed(Event::Tick);
        }
        self
    }
}

fn check(engine: &'static str, fixture: &str, told: &[&str], samples: &[&str]) {
    let sim = Sim::new(engine).replay(fixture);
    assert_eq!(sim.told, told, "{engine}/{fixture}: what the PR was told");
    assert_eq!(sim.samples, samples, "{engine}/{fixture}: histogram samples");
}

#[test]
fn flux_first_deploy_reports_pending_then_ready_and_interval_runs_change_nothing() {
    check(
        "flux",
        "first-deploy-succeeds",
        &["101 3f78685 committed", "101 3f78685 ready"],
        &["shop-pr-101 ready after 66s"],
    );
}

#[test]
fn flux_a_failed_first_deploy_is_reported_at_once_and_the_fix_recovers() {
    check(
        "flux",
        "first-deploy-health-timeout-then-fix",
        &[
            "101 3f78685 committed",
            "101 3f78685 failed HealthCheckFailed Deployment/shop-pr-101/app",
            "101 b5e5ed6 committed",
            "101 b5e5ed6 ready",
        ],
        // The environment first ready with the fix: open→ready runs from the opening, not the fix.
        &["shop-pr-101 ready after 718s"],
    );
}

#[test]
fn flux_a_failed_new_commit_is_reported_while_the_old_one_keeps_running() {
    check(
        "flux",
        "new-commit-apply-fails-old-keeps-running",
        &[
            "101 3f78685 ready",
            "101 b5e5ed6 committed",
            "101 b5e5ed6 failed ReconciliationFailed Cluster/shop-pr-101/db",
            "101 103e6d3 committed",
            "101 103e6d3 ready",
        ],
        &["shop-pr-101 commit ready after 41.1s"],
    );
}

#[test]
fn flux_ready_for_an_older_generation_is_not_ready_for_the_new_head() {
    check(
        "flux",
        "new-commit-race-generation-lags",
        &["101 3f78685 ready", "101 b5e5ed6 committed", "101 b5e5ed6 ready"],
        &["shop-pr-101 commit ready after 43.4s"],
    );
}

#[test]
fn flux_two_hours_of_interval_reconciles_tell_the_pr_nothing() {
    check("flux", "interval-reconciles-unchanged", &["101 3f78685 ready"], &[]);
}

#[test]
fn flux_a_dependency_not_ready_is_waiting_not_failed() {
    check(
        "flux",
        "dependency-not-ready",
        &["101 3f78685 committed", "101 3f78685 ready"],
        &["shop-pr-101 ready after 239s"],
    );
}

#[test]
fn flux_environments_deleted_during_a_watch_gap_are_reported_gone_at_the_relist() {
    check(
        "flux",
        "watch-410-relist",
        &[
            "101 3f78685 ready",
            "99 b6589fc ready",
            "102 89e6c98 reconciling",
            "99 b6589fc destroyed",
            "102 89e6c98 ready",
        ],
        &["shop-pr-102 ready after 82s"],
    );
}

#[test]
fn flux_a_restart_keeps_the_history_and_finds_what_was_deleted_meanwhile() {
    check(
        "flux",
        "watcher-restart",
        &[
            "102 89e6c98 ready",
            "99 b6589fc ready",
            "99 b6589fc destroying",
            "101 3f78685 committed",
            "101 3f78685 ready",
            "99 b6589fc destroyed",
        ],
        &["shop-pr-101 ready after 49s"],
    );
}

#[test]
fn flux_a_deletion_past_the_alert_is_flagged_then_gone() {
    // Flux gives up waiting after spec.timeout (5m) and removes its finalizer anyway: gone 302 s
    // after deletion started, just after the 300 s alert.
    check(
        "flux",
        "deletion-wait-for-termination-timeout",
        &[
            "101 3f78685 ready",
            "101 3f78685 destroying",
            "101 3f78685 destroying stuck",
            "101 3f78685 destroyed",
        ],
        &["shop-pr-101 gone after 302.403s"],
    );
    check(
        "flux",
        "deletion-stuck-prune-error",
        &[
            "101 3f78685 ready",
            "101 3f78685 destroying",
            "101 3f78685 destroying stuck",
            "101 3f78685 destroyed",
        ],
        &["shop-pr-101 gone after 1513.003s"],
    );
}

#[test]
fn argo_a_fresh_application_is_committed_and_ready_only_when_synced_and_healthy() {
    check(
        "argocd",
        "first-deploy-succeeds",
        &["101 3f78685 committed", "101 3f78685 ready"],
        &["shop-pr-101 ready after 74s"],
    );
}

#[test]
fn argo_degraded_is_a_failure_of_its_commit_only() {
    check(
        "argocd",
        "first-deploy-degraded-then-fix",
        &[
            "101 3f78685 committed",
            "101 3f78685 failed Degraded -",
            "101 b5e5ed6 committed",
            "101 b5e5ed6 ready",
        ],
        // The environment first ready with the fix: open→ready runs from the opening, not the fix.
        &["shop-pr-101 ready after 1048s"],
    );
}

#[test]
fn argo_a_failing_sync_is_reported_at_its_first_failed_attempt_once() {
    check(
        "argocd",
        "new-commit-sync-fails-retries",
        &[
            "101 3f78685 ready",
            "101 b5e5ed6 committed",
            "101 b5e5ed6 failed SyncFailed Cluster/shop-pr-101/db",
            "101 103e6d3 committed",
            "101 103e6d3 ready",
        ],
        &["shop-pr-101 commit ready after 106.9s"],
    );
}

#[test]
fn argo_two_hours_of_refreshes_tell_the_pr_nothing() {
    check("argocd", "periodic-refresh-unchanged", &["101 3f78685 ready"], &[]);
}

#[test]
fn argo_applications_deleted_during_a_watch_gap_are_reported_gone() {
    check(
        "argocd",
        "watch-410-relist",
        &[
            "101 3f78685 ready",
            "99 b6589fc ready",
            "102 89e6c98 reconciling",
            "99 b6589fc destroyed",
            "102 89e6c98 ready",
        ],
        &["shop-pr-102 ready after 111s"],
    );
}

#[test]
fn argo_a_restart_keeps_the_history_and_finds_what_was_deleted_meanwhile() {
    check(
        "argocd",
        "watcher-restart",
        &[
            "102 89e6c98 ready",
            "99 b6589fc ready",
            "99 b6589fc destroying",
            "101 3f78685 committed",
            "101 3f78685 ready",
            "99 b6589fc destroyed",
        ],
        // Ready happened while no watcher ran, but the marker kept when the commit was first seen,
        // and the controller dates the transition: one honest sample.
        &["shop-pr-101 ready after 70s"],
    );
}

#[test]
fn argo_a_stuck_deletion_is_flagged_and_its_comparison_errors_are_not_failures() {
    check(
        "argocd",
        "deletion-stuck-then-completed",
        &[
            "101 3f78685 ready",
            "101 3f78685 destroying",
            "101 3f78685 destroying stuck",
            "101 3f78685 destroyed",
        ],
        &["shop-pr-101 gone after 1235s"],
    );
}
