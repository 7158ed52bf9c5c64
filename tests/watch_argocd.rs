//! `prenv watch` end to end on the Argo CD path: the real binary between a fake Kubernetes API
//! server (`tests/fakes/kube.rs`) replaying the argo-cd v3.0.23 Application fixtures (sync status,
//! health, operation state and its retries, conditions, the ApplicationSet's head annotation that
//! runs ahead of the status) and a fake GitHub (`tests/fakes/github.rs`).

mod fakes;

use std::time::Duration;

use fakes::replay::{Session, UNPACED, fixture, many};

const A: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const B: &str = "b5e5ed6dec4810da85f01fd692050e26bc5a09a9";
const C: &str = "103e6d3465f605daf999614fd9784c1ce9878d1c";

fn states(statuses: Vec<(String, String)>) -> Vec<String> {
    statuses.into_iter().map(|(s, _)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_first_deploy_fails_its_own_commit_only_and_the_fix_is_ready() {
    let mut session = Session::new("argocd", UNPACED).await;
    let steps = fixture("argocd", "first-deploy-degraded-then-fix").steps;
    // The fix is pushed after the failure was reported.
    session.replay(&steps[..13], &[]).await;
    session.replay(&steps[13..], &[]).await;
    let first = session.hub.statuses_on(A);
    assert_eq!(states(first.clone()), ["pending", "failure"]);
    assert!(first[1].1.starts_with("Degraded: "), "{}", first[1].1);
    assert_eq!(
        states(session.hub.statuses_on(B)),
        ["pending", "success"],
        "the old commit's Degraded was never the fix's"
    );
    let mut deployments = session.hub.deployment_states();
    deployments.sort();
    assert_eq!(
        deployments
            .iter()
            .map(|(_, sha, s)| (&sha[..7], s.as_str()))
            .collect::<Vec<_>>(),
        [("3f78685", "inactive"), ("b5e5ed6", "success")]
    );
    let comments = session.hub.prenv_comments();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].1.contains("is ready") && comments[0].1.contains("grafana.example.com/d/prenv-preview"),
        "{}",
        comments[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sync_is_reported_once_through_its_retries_and_a_fix_clears_it() {
    let mut session = Session::new("argocd", UNPACED).await;
    let steps = fixture("argocd", "new-commit-sync-fails-retries").steps;
    session.replay(&steps[..22], &[]).await;
    let failed = session.hub.statuses_on(B);
    assert_eq!(
        states(failed.clone()),
        ["pending", "failure"],
        "five retries and SyncError are one failure"
    );
    let description = &failed[1].1;
    assert!(
        description.starts_with("SyncFailed Cluster/shop-pr-101/db: …")
            && description.ends_with("can't shrink existing storage from 2Gi to 1Gi"),
        "{description}"
    );
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("| Failure | SyncFailed on `Cluster/shop-pr-101/db` |"),
        "{comment}"
    );
    session.replay(&steps[22..], &[]).await;
    assert_eq!(
        states(session.hub.statuses_on(C)),
        ["pending", "success"],
        "the old SyncError was not the fix's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_refreshes_of_50_ready_applications_writes_nothing() {
    let mut session = Session::new("argocd", UNPACED).await;
    session.hub.hub().limits = false;
    session.spaced = false;
    let steps = many(&fixture("argocd", "periodic-refresh-unchanged").steps, 50);
    let hour = steps
        .iter()
        .position(|s| s["at"].as_str().is_some_and(|t| t > "2026-11-24T13:00"))
        .unwrap();
    session.replay(&steps[..1], &[]).await;
    let initial = session.hub.writes();
    assert_eq!(
        session
            .hub
            .prenv_comments()
            .iter()
            .filter(|(_, b)| b.contains("is ready"))
            .count(),
        50
    );
    session.replay(&steps[1..hour], &[]).await;
    assert_eq!(
        session.hub.writes() - initial,
        0,
        "an hour of Argo CD refreshes wrote to GitHub"
    );
    println!("GitHub writes: 50 Applications first seen ready {initial}; then an hour of refreshes 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_deleted_during_a_410_gap_is_reported_gone() {
    let mut session = Session::new("argocd", UNPACED).await;
    session
        .hub
        .set_pull(99, "closed", false, false, &[], Some("2026-11-24T12:03:00Z"));
    session.replay(&fixture("argocd", "watch-410-relist").steps, &[]).await;
    let comments = session.hub.prenv_comments();
    let gone = &comments.iter().find(|(pr, _)| *pr == 99).unwrap().1;
    assert!(
        gone.contains("was removed") && gone.contains("after a gap in the watch"),
        "{gone}"
    );
    assert!(comments.iter().any(|(pr, b)| *pr == 102 && b.contains("is ready")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_sync_keeps_one_comment_each_and_finds_the_application_deleted_meanwhile() {
    let mut session = Session::new("argocd", UNPACED).await;
    session
        .hub
        .set_pull(99, "closed", false, true, &[], Some("2026-11-24T12:00:20Z"));
    session.replay(&fixture("argocd", "watcher-restart").steps, &[]).await;
    let mut comments = session.hub.prenv_comments();
    comments.sort();
    assert_eq!(comments.iter().map(|(pr, _)| *pr).collect::<Vec<_>>(), [99, 101, 102]);
    assert!(comments[0].1.contains("was removed"), "{}", comments[0].1);
    assert!(comments[1].1.contains("is ready"), "{}", comments[1].1);
    assert_eq!(
        session
            .hub
            .deployment_states()
            .iter()
            .filter(|(env, _, _)| env == "shop-pr-101")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_cascading_deletion_is_flagged_and_its_comparison_errors_are_not_failures() {
    let mut session = Session::new("argocd", &format!("{UNPACED}terminating_alert_secs = 1\n")).await;
    session
        .hub
        .set_pull(101, "closed", false, false, &[], Some("2026-11-24T12:00:30Z"));
    let steps = fixture("argocd", "deletion-stuck-then-completed").steps;
    session.replay(&steps[..9], &[]).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    session.settle().await;
    assert!(session.hub.prenv_comments()[0].1.contains("Still terminating"));
    session.replay(&steps[9..], &[]).await;
    assert!(
        !states(session.hub.statuses_on(A)).contains(&"failure".to_string()),
        "app path does not exist is the deletion, not a failure"
    );
    let comment = &session.hub.prenv_comments()[0].1;
    assert!(
        comment.contains("was removed") && comment.contains("the PR was closed"),
        "{comment}"
    );
    assert!(session.hub.deployment_states().iter().all(|(_, _, s)| s == "inactive"));
}
