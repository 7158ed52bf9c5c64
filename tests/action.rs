//! The release path and the GitHub Action: the Dockerfile, the workflows, the composite action and the
//! example workflow are linted by the real hadolint and actionlint, keep their supply-chain promises
//! (bases and actions pinned, least privilege, short-lived tokens), and the action really installs a
//! checksum-verified release and runs `prenv sync`, driven by a fake Actions runner.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use regex::Regex;
use serde_yaml::Value;
use wiremock::matchers::{header_regex, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Every workflow actionlint must pass: the project's own and the one users copy.
const WORKFLOWS: &[&str] = &[
    ".github/workflows/ci.yml",
    ".github/workflows/release.yml",
    "examples/github-workflow.yml",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn load(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// A tool scripts/tools.sh installs: `$VAR` (set by prenv_ensure_tools), else `name` on PATH.
fn tool(var: &str, name: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| name.into())
}

fn run_tool(var: &str, name: &str, args: &[&str]) -> Output {
    Command::new(tool(var, name))
        .current_dir(repo_root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}; run the tests with scripts/test, which installs it"))
}

#[test]
fn every_workflow_passes_actionlint_with_shellcheck_on_its_scripts() {
    let mut args = vec!["-verbose"];
    args.extend(WORKFLOWS);
    let out = run_tool("PRENV_ACTIONLINT", "actionlint", &args);
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // actionlint skips its shellcheck rule silently when shellcheck is missing; the scripts matter.
    let log = text(&out.stderr);
    assert!(!log.contains("Rule \"shellcheck\" was disabled"), "{log}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = run_tool("PRENV_HADOLINT", "hadolint", &["Dockerfile"]);
    assert!(
        out.status.success(),
        "hadolint Dockerfile:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_action_scripts_pass_shellcheck() {
    let action = load("action.yml");
    for step in steps(&action) {
        let Some(script) = step["run"].as_str() else {
            continue;
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("#!/usr/bin/env bash\n{script}")).unwrap();
        let out = Command::new("shellcheck")
            .arg(file.path())
            .output()
            .expect("running shellcheck; scripts/test installs it");
        assert!(
            out.status.success(),
            "shellcheck on step {:?}:\n{}",
            step["name"],
            text(&out.stdout)
        );
    }
}

/// One Dockerfile instruction: its keyword (upper case) and the rest, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(trimmed);
                let (keyword, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

/// The instructions of the last stage, the one that becomes the image.
fn runtime_stage(instructions: &[(String, String)]) -> &[(String, String)] {
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").expect("a FROM");
    &instructions[last_from..]
}

#[test]
fn every_base_image_is_pinned_by_exact_version_and_digest_never_latest() {
    let instructions = dockerfile();
    let exact = Regex::new(r":[^@/]*\d+\.\d+\.\d+[^@/]*@sha256:[0-9a-f]{64}$").unwrap();
    let digest_with_tag = Regex::new(r":[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$").unwrap();
    let mut stages = Vec::new();
    for (_, rest) in instructions.iter().filter(|(k, _)| k == "FROM") {
        let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let image = words[0];
        if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
            stages.push(words[i + 1].to_string());
        }
        if stages.iter().any(|s| s == image) || image == "scratch" {
            continue;
        }
        assert!(!image.contains(":latest"), "{image} uses the latest tag");
        // distroless publishes no version tags: its tag names the variant, the digest pins it.
        let pinned = if image.starts_with("gcr.io/distroless/") {
            digest_with_tag.is_match(image)
        } else {
            exact.is_match(image)
        };
        assert!(pinned, "{image} is not pinned by an exact version tag and a digest");
    }
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
}

#[test]
fn the_image_is_a_static_binary_on_distroless_run_as_non_root_on_a_read_only_root() {
    let instructions = dockerfile();
    let runtime = runtime_stage(&instructions);
    assert!(runtime[0].1.starts_with("gcr.io/distroless/static"), "{:?}", runtime[0]);
    assert!(
        !runtime.iter().any(|(k, _)| k == "RUN"),
        "the runtime stage has no shell: it only copies files in"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .expect("a USER")
        .1
        .clone();
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER {user}: numeric and not root, so runAsNonRoot can check it"
    );
    assert_eq!(
        uid, "65532",
        "the user the scaffolded serve and watch Deployments run as"
    );
    let entrypoint = runtime.iter().find(|(k, _)| k == "ENTRYPOINT").expect("an ENTRYPOINT");
    assert_eq!(
        entrypoint.1, r#"["/usr/local/bin/prenv"]"#,
        "exec form, so a Pod passes only args"
    );
    // With a read-only root, prenv's only writes (its git cache and data) go to a mounted /tmp.
    let env: String = runtime
        .iter()
        .filter(|(k, _)| k == "ENV")
        .map(|(_, r)| r.as_str())
        .collect();
    for var in ["XDG_CACHE_HOME=/tmp/", "XDG_DATA_HOME=/tmp/"] {
        assert!(env.contains(var), "{var} in {env}");
    }
    let build = instructions
        .iter()
        .find(|(k, r)| k == "RUN" && r.contains("cargo zigbuild"))
        .expect("a cargo build");
    for needle in [
        "--release",
        "--locked",
        "amd64) target=x86_64-unknown-linux-musl",
        "arm64) target=aarch64-unknown-linux-musl",
    ] {
        assert!(build.1.contains(needle), "{needle} in {}", build.1);
    }
    let cross = instructions
        .iter()
        .filter(|(k, r)| k == "FROM" && r.contains("--platform=$BUILDPLATFORM"));
    assert_eq!(
        cross.count(),
        2,
        "both build stages run on the build machine and cross-compile"
    );
}

/// Whether `.dockerignore` lets `rel` into the build context: the last matching line wins. Only the
/// forms the file uses are understood (`*`, `!dir/`, `!file`), so a new form fails here first.
fn admitted(rules: &str, rel: &str) -> bool {
    let mut admitted = true;
    for rule in rules
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (admit, pattern) = match rule.strip_prefix('!') {
            Some(p) => (true, p.trim_end_matches('/')),
            None => (false, rule.trim_end_matches('/')),
        };
        assert!(
            pattern == "*" || !pattern.contains(['*', '?', '[']),
            ".dockerignore rule {rule:?} is not understood by this test"
        );
        if pattern == "*" || rel == pattern || rel.starts_with(&format!("{pattern}/")) {
            admitted = admit;
        }
    }
    admitted
}

#[test]
fn the_build_context_holds_everything_cargo_and_build_rs_read_and_no_target_dir() {
    let rules = read(".dockerignore");
    // build.rs embeds these directories and skips a missing one silently: an image built without
    // one would lack templates, so each must reach the context.
    let build_rs = read("build.rs");
    let dirs = Regex::new(r"for dir in \[([^\]]*)\]")
        .unwrap()
        .captures(&build_rs)
        .expect("build.rs's dirs")[1]
        .to_string();
    let embedded: Vec<&str> = dirs.split(',').map(|d| d.trim().trim_matches('"')).collect();
    assert!(embedded.contains(&"base"), "{embedded:?}");
    for rel in embedded
        .iter()
        .copied()
        .chain(["Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs"])
    {
        assert!(admitted(&rules, rel), "{rel} is kept out of the build context");
    }
    for rel in ["target/release/prenv", ".tools/venv", ".git/config", "tests/action.rs"] {
        assert!(!admitted(&rules, rel), "{rel} reaches the build context");
    }
    // Cargo must find every target the manifest declares in what the context admits.
    let context = tempfile::tempdir().unwrap();
    copy_admitted(&rules, &repo_root(), Path::new(""), context.path());
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--no-deps", "--format-version", "1"])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata in the build context: {}",
        text(&out.stderr)
    );
}

fn copy_admitted(rules: &str, root: &Path, rel: &Path, to: &Path) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let child = rel.join(entry.file_name());
        let name = child.to_str().unwrap();
        let is_dir = entry.file_type().unwrap().is_dir();
        if is_dir && name != "target" && name != ".git" && name != ".tools" {
            copy_admitted(rules, root, &child, to);
        } else if !is_dir && admitted(rules, name) {
            std::fs::create_dir_all(to.join(&child).parent().unwrap()).unwrap();
            std::fs::copy(entry.path(), to.join(&child)).unwrap();
        }
    }
}

/// Every `uses:` in the workflows and the action: (file, value, the comment after it).
fn uses_lines() -> Vec<(String, String, String)> {
    let line = Regex::new(r"^\s*(?:-\s+)?uses:\s*(\S+)\s*(?:#\s*(.*))?$").unwrap();
    let mut out = Vec::new();
    for file in WORKFLOWS.iter().chain(&["action.yml"]) {
        for l in read(file).lines() {
            if let Some(c) = line.captures(l) {
                let comment = c.get(2).map_or("", |m| m.as_str()).trim().to_string();
                out.push((file.to_string(), c[1].to_string(), comment));
            }
        }
    }
    out
}

fn yaml_uses(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    (Some("uses"), Some(u)) => out.push(u.to_string()),
                    _ => yaml_uses(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| yaml_uses(v, out)),
        _ => {}
    }
}

#[test]
fn every_action_is_pinned_to_a_full_commit_sha_with_its_version_beside_it() {
    let pinned = Regex::new(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}$").unwrap();
    let version = Regex::new(r"^v\d+\.\d+\.\d+$").unwrap();
    let lines = uses_lines();
    let mut parsed = Vec::new();
    for file in WORKFLOWS.iter().chain(&["action.yml"]) {
        yaml_uses(&load(file), &mut parsed);
    }
    assert_eq!(
        lines.len(),
        parsed.len(),
        "every uses: is on a line of its own: {parsed:?}"
    );
    assert!(lines.len() >= 10, "{lines:?}");
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (file, uses, comment) in &lines {
        assert!(
            pinned.is_match(uses),
            "{file}: `uses: {uses}` is not pinned to a commit SHA"
        );
        assert!(
            version.is_match(comment),
            "{file}: `uses: {uses}` has no `# vX.Y.Z` comment"
        );
        let previous = seen.insert(uses, comment);
        assert!(
            previous.is_none_or(|p| p == comment),
            "{uses} is called {comment} here and {previous:?} elsewhere"
        );
    }
}

/// The write permissions each job may have, and why; anything else is a failure.
const WRITES: &[(&str, &str, &str)] = &[
    (".github/workflows/release.yml", "image", "packages"), // push to ghcr.io
    (".github/workflows/release.yml", "image", "id-token"), // sign the provenance attestation
    (".github/workflows/release.yml", "image", "attestations"),
    (".github/workflows/release.yml", "release", "contents"), // create the GitHub release
    (".github/workflows/release.yml", "release", "id-token"),
    (".github/workflows/release.yml", "release", "attestations"),
];

#[test]
fn every_workflow_grants_nothing_by_default_and_each_job_only_what_it_uses() {
    for file in WORKFLOWS {
        let wf = load(file);
        let top = wf["permissions"].as_mapping();
        assert!(
            top.is_some_and(|m| m.is_empty()),
            "{file}: top-level `permissions: {{}}`"
        );
        for (job, body) in wf["jobs"].as_mapping().unwrap() {
            let job = job.as_str().unwrap();
            let perms = body["permissions"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{file}: job {job} lists its permissions"));
            for (name, level) in perms {
                let (name, level) = (name.as_str().unwrap(), level.as_str().unwrap());
                assert!(
                    ["read", "write", "none"].contains(&level),
                    "{file}: {job}: {name}: {level}"
                );
                if level == "write" {
                    assert!(
                        WRITES.contains(&(file, job, name)),
                        "{file}: job {job} may write {name}, which nothing in it needs"
                    );
                }
            }
        }
    }
}

fn job_steps<'a>(wf: &'a Value, job: &str) -> &'a [Value] {
    wf["jobs"][job]["steps"].as_sequence().map_or(&[], |s| s.as_slice())
}

fn step_using<'a>(steps: &'a [Value], action: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(&format!("{action}@"))))
        .unwrap_or_else(|| panic!("a step using {action}"))
}

#[test]
fn a_version_tag_releases_both_linux_binaries_with_checksums_and_the_multi_arch_image() {
    let wf = load(".github/workflows/release.yml");
    let tags: Vec<&str> = wf["on"]["push"]["tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tags, ["v[0-9]+.[0-9]+.[0-9]+"]);
    let targets = wf["env"]["TARGETS"].as_str().unwrap();
    assert_eq!(targets, "x86_64-unknown-linux-musl aarch64-unknown-linux-musl");
    let scripts = |job: &str| -> String {
        job_steps(&wf, job)
            .iter()
            .filter_map(|s| s["run"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let binaries = scripts("binaries");
    for needle in [
        "cargo zigbuild --release --locked",
        "sha256sum prenv-* >SHA256SUMS",
        "GITHUB_REF_NAME",
    ] {
        assert!(binaries.contains(needle), "{needle} in the binaries job");
    }
    let release = scripts("release");
    assert!(
        release.contains("gh release create") && release.contains("dist/SHA256SUMS"),
        "{release}"
    );
    assert!(release.contains("sha256sum --check SHA256SUMS"), "{release}");
    let needs: Vec<&str> = wf["jobs"]["release"]["needs"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(needs, ["binaries", "image"], "no release without its image");
    let build = &step_using(job_steps(&wf, "image"), "docker/build-push-action")["with"];
    assert_eq!(build["platforms"].as_str(), Some("linux/amd64,linux/arm64"));
    assert_eq!(build["push"].as_bool(), Some(true));
    assert_eq!(build["provenance"].as_str(), Some("mode=max"));
    let login = &step_using(job_steps(&wf, "image"), "docker/login-action")["with"];
    assert_eq!(login["registry"].as_str(), Some("ghcr.io"));
    assert_eq!(
        login["password"].as_str(),
        Some("${{ secrets.GITHUB_TOKEN }}"),
        "no stored registry credential"
    );
    step_using(job_steps(&wf, "release"), "actions/attest-build-provenance");
}

#[test]
fn the_release_builds_with_the_dockerfiles_toolchain_and_tool_versions() {
    let wf = load(".github/workflows/release.yml");
    let instructions = dockerfile();
    let arg = |name: &str| -> String {
        let prefix = format!("{name}=");
        instructions
            .iter()
            .find_map(|(k, r)| (k == "ARG").then(|| r.strip_prefix(&prefix)).flatten())
            .unwrap_or_else(|| panic!("ARG {name} in the Dockerfile"))
            .to_string()
    };
    for name in ["ZIGLANG_VERSION", "CARGO_ZIGBUILD_VERSION"] {
        assert_eq!(wf["env"][name].as_str(), Some(arg(name).as_str()), "{name}");
    }
    let rust = format!("rust:{}-", wf["env"]["RUST_VERSION"].as_str().unwrap());
    assert!(
        instructions.iter().any(|(k, r)| k == "FROM" && r.contains(&rust)),
        "the Dockerfile builds with {rust}"
    );
}

#[test]
fn ci_runs_the_projects_test_command_and_builds_the_image_without_pushing() {
    let wf = load(".github/workflows/ci.yml");
    let runs: Vec<&str> = job_steps(&wf, "test")
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert_eq!(runs, ["bash .ci/run"]);
    let build = &step_using(job_steps(&wf, "image"), "docker/build-push-action")["with"];
    assert_eq!(build["push"].as_bool(), Some(false));
    assert_eq!(build["platforms"].as_str(), Some("linux/amd64,linux/arm64"));
}

#[test]
fn the_example_workflow_mints_an_app_token_per_run_and_stores_no_pat() {
    let raw = read("examples/github-workflow.yml");
    for banned in ["PRENV_PUSH_TOKEN", "PAT"] {
        assert!(!raw.contains(&format!("secrets.{banned}")), "a stored {banned}");
    }
    assert!(
        !Regex::new(r"secrets\.\w*PAT\w*").unwrap().is_match(&raw),
        "a stored PAT"
    );
    let secrets: Vec<&str> = Regex::new(r"secrets\.(\w+)")
        .unwrap()
        .captures_iter(&raw)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert_eq!(
        secrets,
        ["PRENV_APP_PRIVATE_KEY"],
        "the App's key is the only stored secret"
    );
    let wf = load("examples/github-workflow.yml");
    let steps = job_steps(&wf, "sync");
    let mint = step_using(steps, "actions/create-github-app-token");
    let id = mint["id"].as_str().unwrap();
    assert_eq!(mint["with"]["permission-contents"].as_str(), Some("write"));
    assert_eq!(mint["with"]["permission-pull-requests"].as_str(), Some("read"));
    let token = format!("${{{{ steps.{id}.outputs.token }}}}");
    let prenv = step_using(steps, "acme/prenv");
    assert_eq!(
        prenv["with"]["github-token"].as_str(),
        Some(token.as_str()),
        "the API call uses it"
    );
    assert_eq!(
        prenv["with"]["push-token"].as_str(),
        Some(token.as_str()),
        "the git push uses it"
    );
    let perms = wf["jobs"]["sync"]["permissions"].as_mapping().unwrap();
    assert_eq!(perms.len(), 1, "the workflow's own token only checks out: {perms:?}");
    assert_eq!(wf["jobs"]["sync"]["permissions"]["contents"].as_str(), Some("read"));
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
    let checkout = step_using(job_steps(&wf, "sync"), "actions/checkout");
    assert_eq!(
        checkout["with"]["ref"].as_str(),
        Some("${{ github.event.repository.default_branch }}")
    );
    assert_eq!(checkout["with"]["persist-credentials"].as_bool(), Some(false));
}

fn steps(action: &Value) -> &[Value] {
    action["runs"]["steps"].as_sequence().expect("runs.steps")
}

#[test]
fn the_action_is_composite_and_passes_inputs_to_scripts_only_through_the_environment() {
    let action = load("action.yml");
    assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
    for input in [
        "config",
        "environments-repo",
        "github-token",
        "push-token",
        "allow-mass-prune",
        "version",
        "release-repository",
        "build-from-source",
    ] {
        let spec = &action["inputs"][input];
        assert!(spec["description"].as_str().is_some(), "input {input} is described");
    }
    assert_eq!(action["inputs"]["build-from-source"]["default"].as_str(), Some("false"));
    for step in steps(&action) {
        assert!(step["name"].as_str().is_some(), "every step is named: {step:?}");
        match (step["run"].as_str(), step["uses"].as_str()) {
            (Some(run), None) => {
                assert!(
                    !run.contains("${{"),
                    "an expression is interpolated into a script: {run}"
                );
                assert_eq!(
                    step["shell"].as_str(),
                    Some("bash"),
                    "a composite run step names its shell"
                );
            }
            (None, Some(_)) => {}
            _ => panic!("a step runs a script or uses an action: {step:?}"),
        }
    }
    let install = step_named(&action, "Install prenv (checksum verified)");
    let script = install["run"].as_str().unwrap();
    assert!(
        script.contains("sha256sum --check"),
        "the binary is checked against SHA256SUMS"
    );
    let source = step_named(&action, "Build prenv from source");
    assert_eq!(source["if"].as_str(), Some("steps.resolve.outputs.source == 'true'"));
}

fn step_named<'a>(action: &'a Value, name: &str) -> &'a Value {
    steps(action)
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("a step named {name:?}"))
}

/// A stand-in for the GitHub Actions runner executing this composite action, modelling what the
/// action relies on (actions/runner at 258d6c8, 2026-08-17):
/// - a `shell: bash` step runs as `bash --noprofile --norc -e -o pipefail FILE`
///   (src/Runner.Worker/Handlers/ScriptHandlerHelpers.cs, the "bash" entry);
/// - `NAME=VALUE` lines a step appends to `$GITHUB_OUTPUT` become `steps.<id>.outputs.NAME`
///   (src/Runner.Worker/FileCommandManager.cs, SetOutputFileCommand / EnvFileKeyValuePairs);
/// - the action's own directory is `_actions/<owner>/<name>/<ref>` (src/Runner.Worker/ActionManager.cs);
/// - RUNNER_OS is Linux, macOS or Windows and RUNNER_ARCH X86, X64, ARM or ARM64
///   (src/Runner.Common/Util/VarUtil.cs, OS and OSArchitecture);
/// - actions/cache/restore sets `cache-hit` to "true" on an exact key match and leaves it unset on a
///   miss (actions/cache v5.0.5 src/restoreImpl.ts); cache/save stores the path under the key.
///
/// Expressions are evaluated only in the forms the action uses (`inputs.*`, `steps.*.outputs.*`,
/// `github.*`, `a || b`, `x == 'v'`, `x != 'v'`, `&&`); any other form fails the test.
struct FakeRunner {
    action: Value,
    dir: tempfile::TempDir,
    inputs: BTreeMap<String, String>,
    github: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// actions/cache's store: key → saved directory.
    cache: BTreeMap<String, PathBuf>,
}

impl FakeRunner {
    /// A runner for `os`/`arch` that took the action from `_actions/acme/prenv/v0` (a copy of this
    /// repository's action.yml and Cargo.toml, which is all the install path reads).
    fn new(os: &str, arch: &str, server: &str) -> FakeRunner {
        let dir = tempfile::tempdir().unwrap();
        let action_path = dir.path().join("_actions/acme/prenv/v0");
        std::fs::create_dir_all(&action_path).unwrap();
        for file in ["action.yml", "Cargo.toml"] {
            std::fs::copy(repo_root().join(file), action_path.join(file)).unwrap();
        }
        let mut env = BTreeMap::new();
        for (k, sub) in [
            ("RUNNER_TEMP", "temp"),
            ("RUNNER_TOOL_CACHE", "toolcache"),
            ("GITHUB_WORKSPACE", "work"),
        ] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).unwrap();
            env.insert(k.to_string(), s(&p).to_string());
        }
        env.insert("RUNNER_OS".into(), os.into());
        env.insert("RUNNER_ARCH".into(), arch.into());
        env.insert("GITHUB_SERVER_URL".into(), server.into());
        env.insert("GITHUB_ACTION_PATH".into(), s(&action_path).into());
        env.insert("XDG_CACHE_HOME".into(), s(&dir.path().join("xdg")).into());
        env.insert("HOME".into(), s(&dir.path().join("home")).into());
        let github = BTreeMap::from([("token".to_string(), "ghs_workflow_token".to_string())]);
        let action = load("action.yml");
        let mut runner = FakeRunner {
            action,
            dir,
            inputs: BTreeMap::new(),
            github,
            env,
            outputs: BTreeMap::new(),
            cache: BTreeMap::new(),
        };
        runner.default_inputs();
        runner
    }

    fn default_inputs(&mut self) {
        let defaults: Vec<(String, String)> = self.action["inputs"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v["default"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (name, default) in defaults {
            let value = self.eval_template(&default);
            self.inputs.insert(name, value);
        }
    }

    fn input(mut self, name: &str, value: &str) -> Self {
        assert!(self.inputs.contains_key(name), "action.yml has no input {name}");
        self.inputs.insert(name.into(), value.into());
        self
    }

    fn workspace(&self) -> PathBuf {
        PathBuf::from(&self.env["GITHUB_WORKSPACE"])
    }

    fn eval_template(&self, text: &str) -> String {
        let expr = Regex::new(r"\$\{\{\s*(.*?)\s*\}\}").unwrap();
        expr.replace_all(text, |c: &regex::Captures| self.eval(&c[1]))
            .into_owned()
    }

    fn eval(&self, expr: &str) -> String {
        if let Some((a, b)) = expr.split_once("&&") {
            let truthy = |v: String| !v.is_empty() && v != "false";
            return (truthy(self.eval(a.trim())) && truthy(self.eval(b.trim()))).to_string();
        }
        if let Some((a, b)) = expr.split_once("||") {
            let a = self.eval(a.trim());
            return if a.is_empty() { self.eval(b.trim()) } else { a };
        }
        for (op, equal) in [("==", true), ("!=", false)] {
            if let Some((a, b)) = expr.split_once(op) {
                let literal = b
                    .trim()
                    .strip_prefix('\'')
                    .and_then(|b| b.strip_suffix('\''))
                    .expect("a quoted literal");
                return ((self.eval(a.trim()) == literal) == equal).to_string();
            }
        }
        let parts: Vec<&str> = expr.split('.').collect();
        match parts.as_slice() {
            ["inputs", name] => self
                .inputs
                .get(*name)
                .cloned()
                .unwrap_or_else(|| panic!("no input {name}")),
            ["steps", id, "outputs", name] => self
                .outputs
                .get(*id)
                .and_then(|o| o.get(*name))
                .cloned()
                .unwrap_or_default(),
            ["github", name] => self.github.get(*name).cloned().unwrap_or_default(),
            _ => panic!("the fake runner does not evaluate `{expr}`"),
        }
    }

    /// Runs every step whose `if:` holds, stopping at the first failure; returns each script's output.
    fn run(&mut self) -> Result<Vec<Output>, Output> {
        let mut outs = Vec::new();
        for step in steps(&self.action.clone()) {
            if let Some(cond) = step["if"].as_str()
                && self.eval(cond) != "true"
            {
                continue;
            }
            let id = step["id"].as_str().unwrap_or("").to_string();
            match step["uses"].as_str() {
                Some(uses) => self.use_action(uses, &id, &step["with"]),
                None => {
                    let out = self.run_script(step, &id);
                    if !out.status.success() {
                        return Err(out);
                    }
                    outs.push(out);
                }
            }
        }
        Ok(outs)
    }

    fn run_script(&mut self, step: &Value, id: &str) -> Output {
        let script = self.dir.path().join("step.sh");
        std::fs::write(&script, step["run"].as_str().unwrap()).unwrap();
        let output_file = self.dir.path().join("github_output");
        std::fs::write(&output_file, "").unwrap();
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-e", "-o", "pipefail"]).arg(&script);
        cmd.current_dir(self.workspace()).env_clear();
        // No test reaches a registry: image checks are tests/image_wait.rs's.
        cmd.env("PATH", std::env::var("PATH").unwrap())
            .env("PRENV_IMAGE_CHECK", "false")
            .env("GITHUB_OUTPUT", &output_file);
        cmd.envs(&self.env);
        for (k, v) in step["env"].as_mapping().into_iter().flatten() {
            cmd.env(k.as_str().unwrap(), self.eval_template(v.as_str().unwrap()));
        }
        let out = cmd.output().unwrap();
        let written = std::fs::read_to_string(&output_file).unwrap();
        let outputs = self.outputs.entry(id.to_string()).or_default();
        for line in written.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .expect("NAME=VALUE, the only form the action writes");
            outputs.insert(k.to_string(), v.to_string());
        }
        out
    }

    fn use_action(&mut self, uses: &str, id: &str, with: &Value) {
        let path = PathBuf::from(self.eval_template(with["path"].as_str().unwrap()));
        let key = self.eval_template(with["key"].as_str().unwrap());
        let store = self.dir.path().join("cache-store").join(&key);
        if uses.starts_with("actions/cache/restore@") {
            if let Some(saved) = self.cache.get(&key) {
                copy_dir(saved, &path);
                self.outputs
                    .entry(id.into())
                    .or_default()
                    .insert("cache-hit".into(), "true".into());
            }
        } else if uses.starts_with("actions/cache/save@") {
            copy_dir(&path, &store);
            self.cache.insert(key, store);
        } else {
            panic!("the fake runner does not model {uses}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn stderr_of(r: &Result<Vec<Output>, Output>) -> String {
    match r {
        Ok(outs) => outs.iter().map(|o| text(&o.stdout) + &text(&o.stderr)).collect(),
        Err(o) => text(&o.stdout) + &text(&o.stderr),
    }
}

#[test]
fn the_runner_platform_picks_the_release_asset_or_asks_for_a_source_build() {
    for (os, arch, build_from_source, expect) in [
        ("Linux", "X64", "false", Ok("prenv-x86_64-unknown-linux-musl")),
        ("Linux", "ARM64", "false", Ok("prenv-aarch64-unknown-linux-musl")),
        (
            "macOS",
            "ARM64",
            "false",
            Err("no prenv release binary for macOS/ARM64"),
        ),
        ("Windows", "X64", "false", Err("set build-from-source: true")),
        ("macOS", "ARM64", "true", Ok("")),
        ("Linux", "X64", "yes", Err("set it to \"true\" or \"false\"")),
    ] {
        let mut runner = FakeRunner::new(os, arch, "http://127.0.0.1:9").input("build-from-source", build_from_source);
        let step = step_named(&runner.action, "Resolve the prenv release").clone();
        let out = runner.run_script(&step, "resolve");
        let outputs = runner.outputs.get("resolve").cloned().unwrap_or_default();
        match expect {
            Ok(asset) => {
                assert!(out.status.success(), "{os}/{arch}: {}", text(&out.stdout));
                assert_eq!(outputs["asset"], asset, "{os}/{arch}");
                assert_eq!(outputs["source"], build_from_source, "{os}/{arch}");
                assert_eq!(
                    outputs["version"],
                    format!("v{}", env!("CARGO_PKG_VERSION")),
                    "from Cargo.toml"
                );
                assert_eq!(outputs["repository"], "acme/prenv", "from the action's directory");
            }
            Err(message) => {
                assert!(!out.status.success(), "{os}/{arch} {build_from_source}");
                assert!(
                    text(&out.stdout).contains(message),
                    "{os}/{arch}: {}",
                    text(&out.stdout)
                );
            }
        }
    }
}

/// A local stand-in for a GitHub release of v<crate version> in acme/prenv: `binary` as the Linux X64
/// asset, with `sums` as SHA256SUMS; the asset must be downloaded exactly `downloads` times.
async fn release(server: &MockServer, binary: Vec<u8>, sums: String, downloads: u64) {
    let base = format!("/acme/prenv/releases/download/v{}", env!("CARGO_PKG_VERSION"));
    Mock::given(method("GET"))
        .and(path(format!("{base}/SHA256SUMS")))
        .respond_with(ResponseTemplate::new(200).set_body_string(sums))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{base}/prenv-x86_64-unknown-linux-musl")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(binary))
        .expect(downloads)
        .mount(server)
        .await;
}

/// The real prenv binary standing in for the released one, and its SHA256SUMS (sha256sum's format).
fn built_binary() -> (Vec<u8>, String) {
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_prenv")).unwrap();
    let out = Command::new("sha256sum")
        .arg(env!("CARGO_BIN_EXE_prenv"))
        .output()
        .unwrap();
    let sum = text(&out.stdout).split_whitespace().next().unwrap().to_string();
    let sums = format!(
        "{sum}  prenv-x86_64-unknown-linux-musl\n{}  prenv-aarch64-unknown-linux-musl\n",
        "0".repeat(64)
    );
    (bytes, sums)
}

/// An empty environments repository, the app repository's prenv.toml pointing at the mock GitHub
/// API, and one open PR listed there (for the bearer of `token` only).
async fn sync_fixture(runner: &FakeRunner, server: &MockServer, token: &str) -> PathBuf {
    let remote = runner.dir.path().join("envs.git");
    assert!(
        Command::new("git")
            .args(["init", "--quiet", "--bare", s(&remote)])
            .status()
            .unwrap()
            .success()
    );
    let config = format!(
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\napi_url = \"{}\"\n",
        server.uri()
    );
    write_config(&runner.workspace(), &config);
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .and(header_regex("authorization", &format!(" {token}$")))
        .respond_with(ResponseTemplate::new(200).set_body_json(vec![gh_pr(7, "f/7", &"a".repeat(40), &[])]))
        .mount(server)
        .await;
    remote
}

/// The PR numbers of the environments the sync wrote, read from their `prenv.json` on `main`.
fn synced_prs(remote: &Path) -> Vec<u64> {
    let tree = Command::new("git")
        .args(["-C", s(remote), "ls-tree", "-r", "--name-only", "main"])
        .output()
        .unwrap();
    text(&tree.stdout)
        .lines()
        .filter(|f| f.starts_with("environments/") && f.ends_with("/prenv.json"))
        .map(|f| {
            let blob = Command::new("git")
                .args(["-C", s(remote), "show", &format!("main:{f}")])
                .output()
                .unwrap();
            let meta: serde_json::Value = serde_json::from_slice(&blob.stdout).expect("prenv.json is JSON");
            meta["pr"]
                .as_u64()
                .unwrap_or_else(|| panic!("{f} names its PR: {meta}"))
        })
        .collect()
}

/// Runs the whole action on a blocking thread (the mock servers keep answering meanwhile); returns
/// the outcome, everything the scripts printed, and the runner for a later job.
async fn run_action(mut runner: FakeRunner) -> (Result<Vec<Output>, Output>, String, FakeRunner) {
    tokio::task::spawn_blocking(move || {
        let result = runner.run();
        let log = stderr_of(&result);
        (result, log, runner)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_installs_the_verified_release_once_then_from_the_cache_and_syncs() {
    let server = MockServer::start().await;
    let (binary, sums) = built_binary();
    release(&server, binary, sums, 1).await;
    let runner = FakeRunner::new("Linux", "X64", &server.uri());
    let remote = sync_fixture(&runner, &server, "ghs_minted_by_the_app").await;
    let runner = runner
        .input("environments-repo", s(&remote))
        .input("github-token", "ghs_minted_by_the_app");
    let (first, log, runner) = run_action(runner).await;
    assert!(first.is_ok(), "{log}");
    assert!(log.contains("(SHA-256 verified)"), "{log}");
    assert_eq!(synced_prs(&remote), [7], "{log}");
    assert!(!log.contains("ghs_minted_by_the_app"), "a token in the log: {log}");
    // A second job on a fresh runner: the binary comes from the cache, checked against SHA256SUMS again.
    let second = FakeRunner {
        outputs: BTreeMap::new(),
        ..runner
    };
    std::fs::remove_dir_all(&second.env["RUNNER_TOOL_CACHE"]).unwrap();
    let (again, log, _) = run_action(second).await;
    assert!(again.is_ok(), "{log}");
    assert!(
        log.contains("restored from the cache") && log.contains("(SHA-256 verified)"),
        "{log}"
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_does_not_match_its_checksum_is_deleted_and_never_run() {
    let server = MockServer::start().await;
    let (mut binary, sums) = built_binary();
    binary.extend_from_slice(b"tampered");
    release(&server, binary, sums, 1).await;
    let runner = FakeRunner::new("Linux", "X64", &server.uri()).input("environments-repo", "/nonexistent");
    let (result, log, runner) = run_action(runner).await;
    assert!(result.is_err(), "{log}");
    assert!(log.contains("does not match the SHA-256"), "{log}");
    let dir = PathBuf::from(&runner.outputs["resolve"]["dir"]);
    assert!(!dir.join("prenv").exists() && !dir.join("prenv-x86_64-unknown-linux-musl").exists());
    assert!(runner.cache.is_empty(), "nothing was cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cache_is_replaced_by_a_verified_download() {
    let server = MockServer::start().await;
    let (binary, sums) = built_binary();
    release(&server, binary, sums, 1).await;
    let runner = FakeRunner::new("Linux", "X64", &server.uri());
    let remote = sync_fixture(&runner, &server, "ghs_workflow_token").await;
    let mut runner = runner.input("environments-repo", s(&remote));
    // The cache holds a binary of the right name whose bytes are not the release's.
    let poisoned = runner.dir.path().join("poisoned");
    std::fs::create_dir_all(&poisoned).unwrap();
    std::fs::write(
        poisoned.join("prenv-x86_64-unknown-linux-musl"),
        b"#!/bin/sh\necho owned\n",
    )
    .unwrap();
    let key = format!("prenv-v{}-prenv-x86_64-unknown-linux-musl", env!("CARGO_PKG_VERSION"));
    runner.cache.insert(key, poisoned);
    let (result, log, _runner) = run_action(runner).await;
    assert!(result.is_ok(), "{log}");
    assert!(log.contains("does not match SHA256SUMS; downloading it again"), "{log}");
    assert!(!log.contains("owned"), "{log}");
    assert_eq!(synced_prs(&remote), [7], "{log}");
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_the_asset_in_its_checksums_is_refused() {
    let server = MockServer::start().await;
    let (binary, _) = built_binary();
    release(
        &server,
        binary,
        format!("{}  prenv-aarch64-unknown-linux-musl\n", "0".repeat(64)),
        0,
    )
    .await;
    let runner = FakeRunner::new("Linux", "X64", &server.uri()).input("environments-repo", "/nonexistent");
    let (result, log, _) = run_action(runner).await;
    assert!(result.is_err(), "{log}");
    assert!(
        log.contains("has 0 entries for prenv-x86_64-unknown-linux-musl"),
        "{log}"
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_was_never_released_says_what_to_do() {
    let server = MockServer::start().await;
    let runner = FakeRunner::new("Linux", "X64", &server.uri())
        .input("environments-repo", "/nonexistent")
        .input("version", "v9.9.9");
    let (result, log, _) = run_action(runner).await;
    assert!(result.is_err(), "{log}");
    assert!(
        log.contains("is v9.9.9 released in acme/prenv?") && log.contains("build-from-source: true"),
        "{log}"
    );
}
