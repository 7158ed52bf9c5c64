//! `prenv audit` over real repository histories.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=u", "-c", "user.email=u@x"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

fn commit_file(dir: &Path, path: &str, body: Option<&str>, message: &str) {
    let file = dir.join(path);
    match body {
        Some(body) => {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, body).unwrap();
        }
        None => std::fs::remove_file(&file).unwrap(),
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", message]);
}

const ENCRYPTED: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ok\nstringData:\n  P: ENC[AES256_GCM,data:AAAA,iv:BBBB,tag:CCCC,type:str]\nsops:\n  version: 3.9.4\n";

#[test]
fn audit_catches_a_plaintext_secret_planted_in_an_old_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"]);
    commit_file(repo, "environments/a/secret.sops.yaml", Some(ENCRYPTED), "encrypted");
    commit_file(
        repo,
        "environments/b/leak.yaml",
        Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: leaked\ndata:\n  PASSWORD: aHVudGVyMg==\n"),
        "oops",
    );
    commit_file(repo, "environments/b/leak.yaml", None, "remove the leak");
    commit_file(repo, "README.md", Some("# envs\n"), "later work");

    let out = prenv(&["audit", "--repo", s(repo)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("plain-text Secret leaked in environments/b/leak.yaml at commit")
            && stdout.contains("data.PASSWORD"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("aHVudGVyMg==") && !text(&out.stderr).contains("aHVudGVyMg=="),
        "a value leaked into the output"
    );
    assert!(stdout.contains("audited 4 commits"), "{stdout}");

    let json = prenv(&["audit", "--repo", s(repo), "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), 1);
}

#[test]
fn audit_passes_a_repository_with_only_encrypted_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"]);
    commit_file(repo, "environments/a/secret.sops.yaml", Some(ENCRYPTED), "encrypted");
    let out = prenv(&["audit", "--repo", s(repo)]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("0 plain-text Secrets"));
}

#[test]
fn audit_of_a_missing_repository_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = prenv(&["audit", "--repo", s(&dir.path().join("nope"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}
