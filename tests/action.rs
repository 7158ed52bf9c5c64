//! The GitHub Action and the example workflow: well-formed, and safe with untrusted input.

mod common;

use common::*;

fn load(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(path)).unwrap()).unwrap()
}

#[test]
fn the_action_runs_prenv_sync_with_inputs_only_through_the_environment() {
    let action = load("action.yml");
    assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
    for input in [
        "config",
        "environments-repo",
        "github-token",
        "push-token",
        "allow-mass-prune",
    ] {
        assert!(action["inputs"].get(input).is_some(), "input {input}");
    }
    let steps = action["runs"]["steps"].as_sequence().unwrap();
    for step in steps {
        let run = step["run"].as_str().unwrap();
        assert!(
            !run.contains("${{"),
            "an expression is interpolated into a script: {run}"
        );
        assert_eq!(step["shell"].as_str(), Some("bash"));
    }
    assert!(
        steps
            .iter()
            .any(|s| s["run"].as_str().unwrap().contains("prenv/bin/prenv\" \"${args[@]}\""))
    );
    let env = &steps[1]["env"];
    assert_eq!(env["PRENV_GIT_TOKEN"].as_str(), Some("${{ inputs.push-token }}"));
    assert_eq!(env["PRENV_CONFIG"].as_str(), Some("${{ inputs.config }}"));
}

#[test]
fn the_example_workflow_serializes_syncs_and_never_checks_out_pr_code() {
    let wf = load("examples/github-workflow.yml");
    assert_eq!(wf["concurrency"]["cancel-in-progress"].as_bool(), Some(false));
    assert!(wf["concurrency"]["group"].as_str().unwrap().starts_with("prenv-"));
    let on = &wf["on"];
    let types: Vec<&str> = on["pull_request_target"]["types"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for t in [
        "opened",
        "synchronize",
        "closed",
        "labeled",
        "unlabeled",
        "ready_for_review",
        "reopened",
    ] {
        assert!(types.contains(&t), "{t}");
    }
    let checkout = &wf["jobs"]["sync"]["steps"][0];
    assert_eq!(
        checkout["with"]["ref"].as_str(),
        Some("${{ github.event.repository.default_branch }}")
    );
}
