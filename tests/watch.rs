//! `prenv watch` end to end on the Flux path: the real binary between a fake Kubernetes API server
//! (list/watch semantics of kubernetes/apiserver, `tests/fakes/kube.rs`) replaying the
//! kustomize-controller v1.9.4 status fixtures, and a fake GitHub that refuses what GitHub refuses
//! and keeps every write (`tests/fakes/github.rs`).

mod fakes;

use std::time::Duration;

use fakes::replay::{Session, UNPACED, deletion, fixture, many};

const A: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const B: &str = "b5e5ed6dec4810da85f01fd692050e26bc5a09a9";
const C: &str = "103e6d3465f605daf999614fd9784c1ce9878d1c";
const PR99: &str = "b6589fc6ab0dc82cf12099d1c2d40ab994e8410c";

fn states(statuses: Vec<(String, String)>) -> Vec<String> {
    statuses.into_iter().map(|(s, _)| s).collect()
}

/// Every deployment of the session is inactive.
fn all_inactive(session: &Session) {
    let deployments = session.hub.deployment_states();
    assert!(!deployments.is_empty());
    for (env, sha, state) in deployments {
        assert_eq!(state, "inactive", "{env} at {sha} left {state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_deploy_is_reported_the_fix_is_ready_and_a_merge_retires_every_deployment() {
    let mut session = Session::new("flux", UNPACED).await;
    session
        .hub
        .set_pull(101, "closed", false, true, &[], Some("2026-11-24T12:20:00Z"));
    let steps = fixture("flux", "first-deploy-health-timeout-then-fix").steps;
    // The fix is pushed minutes after the failure: GitHub has been told of the failure by then.
    session.replay(&steps[..14], &[]).await;
    session.replay(&steps[14..], &[]).await;
    let failed = session.hub.statuses_on(A);
    assert_eq!(
        states(failed.clone()),
        ["pending", "failure"],
        "reported within one event, whatever observedGeneration says"
    );
    let description = &failed[1].1;
    assert!(description.chars().count() <= 140, "{description}");
    assert!(
        description.starts_with("HealthCheckFailed")
            && description.contains("Deployment/shop-pr-101/app")
            && description.contains("InProgress"),
        "{description}"
    );
    assert_eq!(states(session.hub.statuses_on(B)), ["pending", "success"]);
    let comments = session.hub.prenv_comments();
    assert_eq!(comments.len(), 1, "one comment per PR, edited in place");
    assert!(
        comments[0].1.contains("is ready")
            && comments[0].1.contains("`3f78685`")
            && comments[0].1.contains("`b5e5ed6`"),
        "{}",
        comments[0].1
    );

    let last = steps.last().unwrap()["object"].clone();
    session.replay(&deletion(&last), &[]).await;
    let removed = session.hub.statuses_on(B).pop().unwrap();
    assert_eq!(
        removed,
        ("success".into(), "Preview removed: the PR was merged".into()),
        "a merged PR may resolve to success"
    );
    all_inactive(&session);
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("was removed") && comment.contains("the PR was merged"),
        "{comment}"
    );
    println!(
        "GitHub writes, a first deploy that fails, its fix, and the merge: {}",
        session.hub.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_new_commit_keeps_the_old_deployment_until_a_fix_is_ready() {
    let mut session = Session::new("flux", UNPACED).await;
    let steps = fixture("flux", "new-commit-apply-fails-old-keeps-running").steps;
    session.replay(&steps[..23], &[]).await;
    let failure = session.hub.statuses_on(B).pop().unwrap();
    assert_eq!(failure.0, "failure");
    assert!(
        failure.1.starts_with("ReconciliationFailed Cluster/shop-pr-101/db: …")
            && failure.1.ends_with("can't shrink existing storage from 2Gi to 1Gi"),
        "{}",
        failure.1
    );
    let deployments = session.hub.deployment_states();
    assert!(
        deployments.contains(&("shop-pr-101".into(), A.into(), "success".into())),
        "the old commit still runs: {deployments:?}"
    );
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("### ❌ Preview environment `shop-pr-101` failed\n"),
        "the heading names no reason: {comment}"
    );
    assert!(comment.contains("`3f78685` was ready"), "{comment}");
    assert_eq!(
        states(session.hub.statuses_on(B)),
        ["pending", "failure"],
        "retries every minute add nothing"
    );

    session.replay(&steps[23..], &[]).await;
    assert_eq!(states(session.hub.statuses_on(C)), ["pending", "success"]);
    let mut deployments = session.hub.deployment_states();
    deployments.sort();
    assert_eq!(
        deployments
            .iter()
            .map(|(_, sha, state)| (&sha[..7], state.as_str()))
            .collect::<Vec<_>>(),
        [("103e6d3", "success"), ("3f78685", "inactive"), ("b5e5ed6", "inactive")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_interval_reconciles_of_50_ready_environments_writes_nothing_nor_does_a_restart() {
    let mut session = Session::new("flux", UNPACED).await;
    // 50 environments reported at once exceed GitHub's 80 writes a minute; this test is about what
    // comes after, so the fake's limit is off (the pacing test keeps it on).
    session.hub.hub().limits = false;
    session.spaced = false;
    let steps = many(&fixture("flux", "interval-reconciles-unchanged").steps, 50);
    let hour = steps
        .iter()
        .position(|s| s["at"].as_str().is_some_and(|t| t > "2026-11-24T13:00"))
        .unwrap();
    session.replay(&steps[..1], &[]).await;
    let initial = session.hub.writes();
    assert_eq!(session.hub.prenv_comments().len(), 50);
    session.replay(&steps[1..hour], &[]).await;
    let events = session
        .watcher
        .as_ref()
        .unwrap()
        .metric("prenv_watch_events_total")
        .await
        .unwrap();
    assert!(
        events > 3_000.0,
        "an hour of reconciles is thousands of events: {events}"
    );
    assert_eq!(
        session.hub.writes() - initial,
        0,
        "an hour of interval reconciles wrote to GitHub"
    );
    println!(
        "GitHub writes: 50 environments first seen ready {initial}; then an hour of interval reconciles ({events} watch events) 0"
    );

    session.stop();
    session.start();
    session.settle().await;
    assert_eq!(session.hub.writes() - initial, 0, "a restart wrote to GitHub");
    let watcher = session.watcher.as_ref().unwrap();
    assert_eq!(
        watcher.metric("prenv_open_to_ready_seconds_count").await,
        Some(0.0),
        "a restart invented a sample"
    );
    let metrics = watcher.metrics().await;
    for family in [
        "prenv_environments{project=\"shop\",state=\"ready\"} 50",
        "prenv_github_writes_total{project=\"shop\",kind=\"comment\"} 0",
        "prenv_github_pending_reports{project=\"shop\"} 0",
        "prenv_report_delay_seconds_count",
        "prenv_watch_relists_total{project=\"shop\"} 1",
        "prenv_github_requests_total{project=\"shop\",outcome=\"ok\"}",
        "prenv_environments_terminating_too_long{project=\"shop\"} 0",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_deleted_during_a_410_gap_is_reported_gone_at_the_relist() {
    let mut session = Session::new("flux", UNPACED).await;
    session
        .hub
        .set_pull(99, "closed", false, false, &[], Some("2026-11-24T12:05:00Z"));
    session.replay(&fixture("flux", "watch-410-relist").steps, &[]).await;
    let comments = session.hub.prenv_comments();
    let gone = comments
        .iter()
        .find(|(pr, _)| *pr == 99)
        .map(|(_, b)| b.clone())
        .unwrap();
    assert!(
        gone.contains("was removed") && gone.contains("after a gap in the watch") && gone.contains("the PR was closed"),
        "{gone}"
    );
    assert_eq!(
        session.hub.statuses_on(PR99).pop().unwrap().1,
        "Preview removed: the PR was closed"
    );
    assert!(
        session
            .hub
            .deployment_states()
            .iter()
            .any(|(env, _, s)| env == "shop-pr-99" && s == "inactive")
    );
    let appeared = comments
        .iter()
        .find(|(pr, _)| *pr == 102)
        .map(|(_, b)| b.clone())
        .unwrap();
    assert!(appeared.contains("is ready"), "{appeared}");
    assert_eq!(comments.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_way_keeps_one_comment_and_one_deployment_and_finds_what_was_deleted_meanwhile() {
    let mut session = Session::new("flux", UNPACED).await;
    session
        .hub
        .set_pull(99, "closed", false, true, &[], Some("2026-11-24T12:00:20Z"));
    session.replay(&fixture("flux", "watcher-restart").steps, &[]).await;
    let mut comments = session.hub.prenv_comments();
    comments.sort();
    assert_eq!(
        comments.iter().map(|(pr, _)| *pr).collect::<Vec<_>>(),
        [99, 101, 102],
        "one comment each"
    );
    let gone = &comments[0].1;
    assert!(
        gone.contains("was removed") && gone.contains("the PR was merged"),
        "{gone}"
    );
    let ready = &comments[1].1;
    // The steps reported before the restart are kept (the marker carries them), in time order.
    assert!(
        ready.contains("is ready") && ready.contains("committed ") && ready.contains("→ ready "),
        "the timeline survived: {ready}"
    );
    let deployments = session.hub.deployment_states();
    assert_eq!(
        deployments.iter().filter(|(env, _, _)| env == "shop-pr-101").count(),
        1,
        "{deployments:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_stuck_past_the_alert_is_flagged_then_gone_and_a_draft_does_not_read_as_passing() {
    let mut session = Session::new("flux", &format!("{UNPACED}terminating_alert_secs = 1\n")).await;
    session.hub.set_pull(101, "open", true, false, &[], None);
    let steps = fixture("flux", "deletion-stuck-prune-error").steps;
    session.replay(&steps[..2], &[]).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    session.settle().await;
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("Still terminating past the alert threshold"),
        "{comment}"
    );
    let watcher = session.watcher.as_ref().unwrap();
    assert_eq!(
        watcher.metric("prenv_environments_terminating_too_long").await,
        Some(1.0)
    );
    session.replay(&steps[2..], &[]).await;
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("was removed") && !comment.contains("Still terminating"),
        "{comment}"
    );
    let watcher = session.watcher.as_ref().unwrap();
    assert_eq!(
        watcher.metric("prenv_environments_terminating_too_long").await,
        Some(0.0)
    );
    session.settle().await;
    assert_eq!(
        watcher.metric("prenv_close_to_gone_seconds_count").await,
        Some(0.0),
        "a draft's environment removed is no close: no close→gone sample"
    );
    let removed = session.hub.statuses_on(A).pop().unwrap();
    assert_eq!(
        removed.0, "pending",
        "an open PR's check must not pass without a preview"
    );
    assert!(
        removed.1.starts_with("Preview removed: the PR was converted to draft"),
        "{}",
        removed.1
    );
    all_inactive(&session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_paced_a_second_apart_and_the_comment_is_found_past_other_comments() {
    let mut session = Session::new("flux", "").await;
    for i in 0..250u64 {
        session.hub.hub().comments.push((i + 1, 101, format!("LGTM #{i}")));
    }
    let steps = fixture("flux", "first-deploy-succeeds").steps;
    // The deploy takes longer than writing "pending" does (in a loaded test run the ready event
    // could otherwise replace the waiting pending report, which is the outbox's job).
    session.replay(&steps[..9], &[]).await;
    session.replay(&steps[9..], &[]).await;
    let writes = session.hub.hub().writes.clone();
    assert_eq!(
        writes.len(),
        6,
        "pending and ready: status, deployment (+status) and comment each: {writes:?}"
    );
    for pair in writes.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(990),
            "{gap:?} between {} and {}",
            pair[0].path,
            pair[1].path
        );
    }
    // A restart reads all three pages of comments and finds its own: no second comment.
    session.stop();
    session.start();
    session.settle().await;
    assert_eq!(session.hub.prenv_comments().len(), 1);
    assert_eq!(session.hub.writes(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_to_gone_counts_from_the_prs_close_not_from_the_deletion() {
    let mut session = Session::new("flux", UNPACED).await;
    // Closed a moment ago, while the fixture's deletion started days before: measured from the
    // close the sample is seconds (bucket le="30"), from the deletion it would be days.
    let closed = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    session.hub.set_pull(101, "closed", false, true, &[], Some(&closed));
    session
        .replay(&fixture("flux", "deletion-stuck-prune-error").steps, &[])
        .await;
    session.settle().await;
    let watcher = session.watcher.as_ref().unwrap();
    assert_eq!(watcher.metric("prenv_close_to_gone_seconds_count").await, Some(1.0));
    let metrics = watcher.metrics().await;
    assert!(
        metrics.contains("prenv_close_to_gone_seconds_bucket{project=\"shop\",le=\"30\"} 1\n"),
        "close→gone did not count from the close:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projects_own_flux_kustomization_is_not_taken_for_an_environment() {
    let mut session = Session::new("flux", UNPACED).await;
    // What the wiring applies over the project's index (manifests/kinds.rs `for_project`): prenv's
    // labels, but no environment's; its status changes at every reconcile of the project.
    session.kube.apply(serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {
            "name": "prenv-environments-shop",
            "namespace": "flux-system",
            "labels": {"app.kubernetes.io/managed-by": "prenv", "prenv.dev/project": "shop"},
            "generation": 1
        },
        "spec": {"path": "./flux/environments/shop", "prune": true},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
            "message": "Applied revision: main@sha1:0", "observedGeneration": 1,
            "lastTransitionTime": "2026-11-24T12:00:00Z"}]}
    }));
    let steps = fixture("flux", "first-deploy-health-timeout-then-fix").steps;
    session.replay(&steps, &[]).await;
    assert_eq!(states(session.hub.statuses_on(B)), ["pending", "success"]);
    let watcher = session.watcher.as_ref().unwrap();
    assert_eq!(
        watcher.metric("prenv_watch_skipped_objects_total").await,
        Some(0.0),
        "the project's Kustomization was read as an environment"
    );
}
