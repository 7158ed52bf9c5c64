//! Helpers shared by the integration tests: the real binary, real kubectl, temp directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const NOW: &str = "2026-11-24T12:00:00Z";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real `prenv` binary.
pub fn prenv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prenv"))
        .env("PRENV_IMAGE_CHECK", "false")
        .args(args)
        .env_remove("PRENV_CONFIG")
        .env("PRENV_LOG", "warn")
        .output()
        .expect("running the prenv binary")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The kubectl the tests use: `$PRENV_KUBECTL`, else `kubectl` on PATH (scripts/test installs it).
pub fn kubectl() -> String {
    std::env::var("PRENV_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl kustomize DIR`, parsed into its objects; panics with kubectl's message when the build fails.
pub fn kustomize(dir: &Path) -> Vec<serde_yaml::Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `{} kustomize`: {e}; run the tests with scripts/test, which installs kubectl",
                kubectl()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        text(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("kustomize output is YAML"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

/// The YAML documents of a file, empty ones left out.
pub fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

pub fn str_at<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i)?,
            Err(_) => cur.get(*key)?,
        };
    }
    cur.as_str()
}

/// Writes a GitHub-shaped PR list to a file.
pub fn write_prs(dir: &Path, prs: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("prs.json");
    std::fs::write(&path, serde_json::to_string_pretty(prs).unwrap()).unwrap();
    path
}

/// A pull request in GitHub's REST shape.
pub fn gh_pr(number: u64, branch: &str, sha: &str, labels: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "number": number, "state": "open", "draft": false, "title": format!("PR {number}"),
        "labels": labels.iter().map(|l| serde_json::json!({"name": l})).collect::<Vec<_>>(),
        "head": {"sha": sha, "ref": branch, "repo": {"full_name": "acme/shop"}},
        "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
        "user": {"login": "dev"}, "closed_at": null, "merged_at": null,
        "updated_at": "2026-11-24T10:00:00Z"
    })
}

pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("prenv.toml");
    std::fs::write(&path, body).unwrap();
    path
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Renders examples/prs.json with one of the example configs into a fresh directory.
pub fn render_example(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = prenv(&[
        "--config",
        s(&repo_root().join("examples").join(config)),
        "render",
        "--prs",
        s(&repo_root().join("examples/prs.json")),
        "--out",
        s(dir.path()),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// A flux config with one PostgreSQL database and no secrets, for tests that drive the library.
pub fn postgres_config(extra: &str) -> prenv::model::config::Config {
    let text = format!(
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"postgres\"]\n{extra}"
    );
    prenv::model::config::Config::parse(&text, "test").unwrap()
}

/// A credential maker for configs without MariaDB: it is never asked.
pub struct NoCredentials;

impl prenv::secrets::CredentialMaker for NoCredentials {
    fn mariadb_credentials(
        &mut self,
        _: &prenv::model::meta::EnvMeta,
        _: chrono::DateTime<chrono::Utc>,
    ) -> prenv::Result<Vec<u8>> {
        unreachable!("the config has no mariadb")
    }
}

/// PR `n` of acme/shop from its own repository, at `sha`, last updated at `updated`.
pub fn lib_pr(n: u64, state: prenv::model::pr::PrState, sha: String, updated: &str) -> prenv::model::pr::PullRequest {
    prenv::model::pr::PullRequest {
        number: n,
        state,
        draft: false,
        title: "t".into(),
        labels: vec![],
        head_sha: sha,
        head_ref: format!("f/{n}"),
        head_repo: Some("acme/shop".into()),
        base_repo: Some("acme/shop".into()),
        author: None,
        closed_at: (state == prenv::model::pr::PrState::Closed).then(|| "2026-11-24T11:00:00Z".parse().unwrap()),
        merged_at: None,
        updated_at: updated.parse().unwrap(),
        created_at: None,
        trigger: None,
    }
}

/// Renders PR 1 of project `q` with `databases = {dbs}` (a TOML list) and builds its environment
/// with `kubectl kustomize`: the objects the cluster would get.
pub fn render_env_with_databases(dbs: &str) -> Vec<serde_yaml::Value> {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "project_id = \"q\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = {dbs}\n[secrets]\nage_recipients = [\"{}\"]\n",
            age::x25519::Identity::generate().to_public()
        ),
    );
    let snapshot = write_prs(dir.path(), &[gh_pr(1, "main", &"a".repeat(40), &[])]);
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&snapshot),
        "--out",
        s(&dir.path().join("o")),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    kustomize(&dir.path().join("o/environments/q-pr-1"))
}

/// Runs git in `dir` and returns its standard output; a failure fails the test with git's message.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A temporary directory holding an empty bare repository `envs.git` (branch `main`): an
/// environments repository as a platform starts with.
pub fn bare_envs_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("envs.git");
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)],
    );
    (dir, remote)
}

/// Every file at the tip of `main` in repository `repo` with its mode and blob id (so links and
/// submodules show).
pub fn tip_tree(repo: &Path) -> std::collections::BTreeMap<String, String> {
    git(repo, &["ls-tree", "-r", "main"])
        .lines()
        .filter_map(|l| {
            let (meta, path) = l.split_once('\t')?;
            Some((path.to_string(), meta.to_string()))
        })
        .collect()
}

/// The file at `path` on the tip of `main` in repository `repo`, `None` when there is none.
pub fn tip_file(repo: &Path, path: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["-C", s(repo), "show", &format!("main:{path}")])
        .output()
        .unwrap();
    out.status.success().then(|| text(&out.stdout))
}

/// Sends `raw` (one HTTP/1.1 request) to `127.0.0.1:port` and reads the answer to its end: the
/// status code and the whole response; `(0, "")` when nothing listens or the write fails.
pub fn http_request(port: u16, raw: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(raw).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// The environments on `main` of repository `remote`, by directory name; none while `main` has no
/// commit yet.
pub fn env_names(remote: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args(["-C", s(remote), "ls-tree", "--name-only", "main", "environments/"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("environments/").to_string())
        .collect()
}

/// A local port free at the moment of asking: bound by the OS, then released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
