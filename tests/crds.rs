//! Every custom resource prenv writes is checked against its upstream CustomResourceDefinition.
//!
//! The schemas are test fixtures in `tests/fixtures/crds/`: one upstream CRD file per kind, copied from
//! the project that owns the kind at the version prenv installs or requires, with only the served
//! versions prenv writes kept (`tests/fixtures/crds/README.md` names each file's repository, tag, commit
//! and path). The objects come from the rendered environments of both example configs (with their
//! `flux/` or `argocd/` wiring, plus the Sealed Secrets backend), and both `prenv init` scaffolds
//! (which include prenv's own serve and watch). An object of a non-core API group must have a fixture, and must fit its
//! `openAPIV3Schema`: known fields only (unless the schema preserves unknown fields), types, enums,
//! required fields, patterns, bounds and `anyOf`/`oneOf`/`allOf`/`not`. CEL rules
//! (`x-kubernetes-validations`) are not evaluated. Helm values and Argo CD `valuesObject` are
//! schema-less (`x-kubernetes-preserve-unknown-fields`), so the objects inside them are not checked.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use regex::Regex;
use serde_yaml::{Mapping, Value};

/// API groups built into Kubernetes (the core group is empty); any other group is a custom resource.
const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

/// The fields of `metadata` (ObjectMeta) that a manifest may set; the API server checks these itself,
/// whatever the CRD says about `metadata`.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
];

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds")
}

/// The `openAPIV3Schema` of every fixture, by (`apiVersion`, `kind`), with the file it came from.
fn schemas() -> &'static HashMap<(String, String), (String, Value)> {
    static SCHEMAS: OnceLock<HashMap<(String, String), (String, Value)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut found = HashMap::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
            .unwrap_or_else(|e| panic!("{}: {e}", fixtures_dir().display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for crd in documents(&std::fs::read_to_string(&path).unwrap(), &file) {
                assert_eq!(
                    str_at(&crd, &["kind"]),
                    Some("CustomResourceDefinition"),
                    "{file}: not a CRD"
                );
                let group = str_at(&crd, &["spec", "group"]).unwrap();
                let kind = str_at(&crd, &["spec", "names", "kind"]).unwrap();
                for version in crd["spec"]["versions"].as_sequence().unwrap() {
                    let api_version = format!("{group}/{}", version["name"].as_str().unwrap());
                    let schema = version["schema"]["openAPIV3Schema"].clone();
                    assert!(schema.is_mapping(), "{file}: {api_version} has no openAPIV3Schema");
                    let previous = found.insert((api_version.clone(), kind.to_string()), (file.clone(), schema));
                    assert!(previous.is_none(), "{file}: a second schema for {api_version} {kind}");
                }
            }
        }
        found
    })
}

/// The non-empty YAML documents of `text`.
fn parse_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let docs = serde_yaml::Deserializer::from_str(text)
        .map(serde::Deserialize::deserialize)
        .collect::<Result<Vec<Value>, _>>()?;
    Ok(docs.into_iter().filter(|v| !v.is_null()).collect())
}

fn documents(text: &str, what: &str) -> Vec<Value> {
    parse_documents(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `pattern` compiled once; the API server matches it unanchored, as `is_match` does.
fn regex(pattern: &str) -> Result<Regex, String> {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<String, Result<Regex, String>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).map_err(|e| e.to_string()))
        .clone()
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Sequence(_) => "array",
        Value::Mapping(_) => "object",
        Value::Tagged(_) => "tagged value",
    }
}

/// A value as JSON, short enough for a message.
fn show(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

fn key_name(key: &Value) -> String {
    key.as_str().map_or_else(|| format!("{key:?}"), str::to_string)
}

/// Collects every way `value` breaks `schema`, by path. `strict` reports fields the schema does not
/// know; it is off inside `anyOf`/`oneOf`/`allOf`/`not`, whose branches only add constraints.
fn violations(value: &Value, schema: &Value, path: &str, strict: bool, out: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            out.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if int_or_string && !(value.is_string() || value.is_i64() || value.is_u64()) {
        out.push(format!(
            "{path}: expected an integer or a string, got {}",
            type_name(value)
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_sequence)
        && !options.contains(value)
    {
        out.push(format!("{path}: {} is not one of {}", show(value), compact(options)));
    }
    combinators(value, schema, path, out);
    if let Some(s) = value.as_str() {
        string_constraints(s, schema, path, out);
    }
    if let Some(n) = value.as_f64() {
        number_constraints(n, schema, path, out);
    }
    if int_or_string {
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => match value.as_mapping() {
            Some(map) => object(map, schema, path, strict, out),
            None => out.push(format!("{path}: expected an object, got {}", type_name(value))),
        },
        Some("array") => match value.as_sequence() {
            Some(items) => {
                let len = items.len() as u64;
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && len < min
                {
                    out.push(format!("{path}: {len} items, at least {min} required"));
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && len > max
                {
                    out.push(format!("{path}: {len} items, at most {max} allowed"));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        violations(item, item_schema, &format!("{path}[{i}]"), strict, out);
                    }
                }
            }
            None => out.push(format!("{path}: expected an array, got {}", type_name(value))),
        },
        Some(scalar @ ("string" | "integer" | "number" | "boolean")) => {
            let fits = match scalar {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                _ => value.is_bool(),
            };
            if !fits {
                out.push(format!(
                    "{path}: expected {scalar}, got {} {}",
                    type_name(value),
                    show(value)
                ));
            }
        }
        // A schema without a type (an `anyOf` branch, say) only adds constraints: required fields and
        // those of the properties it names, never a closed set of fields.
        None if value.is_mapping() => object(value.as_mapping().unwrap(), schema, path, false, out),
        _ => {}
    }
}

fn preserves_unknown_fields(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn object(map: &Mapping, schema: &Value, path: &str, strict: bool, out: &mut Vec<String>) {
    for key in schema
        .get("required")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if !map.contains_key(key) {
            out.push(format!("{path}: missing required field {}", key_name(key)));
        }
    }
    let count = map.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && count < min
    {
        out.push(format!("{path}: {count} fields, at least {min} required"));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        out.push(format!("{path}: {count} fields, at most {max} allowed"));
    }
    let embedded = schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
    let props = schema.get("properties").and_then(Value::as_mapping);
    let open = preserves_unknown_fields(schema);
    for (key, child) in map {
        let child_path = format!("{path}.{}", key_name(key));
        if (path == "$" || embedded) && key.as_str() == Some("metadata") {
            object_meta(child, &child_path, out);
            if let Some(sub) = props.and_then(|p| p.get(key)) {
                violations(child, sub, &child_path, false, out); // what a CRD may add: name rules
            }
            continue;
        }
        match (props.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
            (Some(sub), _) => violations(child, sub, &child_path, strict, out),
            (None, Some(sub)) if sub.is_mapping() => violations(child, sub, &child_path, strict, out),
            (None, Some(Value::Bool(true))) => {}
            (None, _) if open || !strict => {}
            (None, _) if embedded && matches!(key.as_str(), Some("apiVersion" | "kind")) => {
                if !child.is_string() {
                    out.push(format!("{child_path}: expected a string"));
                }
            }
            (None, _) => out.push(format!("{child_path}: unknown field (not in the schema)")),
        }
    }
}

/// `metadata` as the API server checks it for every object: ObjectMeta's fields, string maps of labels
/// and annotations.
fn object_meta(meta: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = meta.as_mapping() else {
        out.push(format!("{path}: expected an object"));
        return;
    };
    for (key, value) in map {
        let name = key_name(key);
        if !OBJECT_META_FIELDS.contains(&name.as_str()) {
            out.push(format!("{path}.{name}: not a field of ObjectMeta"));
        } else if matches!(name.as_str(), "labels" | "annotations") {
            match value.as_mapping() {
                Some(entries) => {
                    for (k, v) in entries {
                        if !v.is_string() {
                            out.push(format!(
                                "{path}.{name}.{}: expected a string, got {}",
                                key_name(k),
                                show(v)
                            ));
                        }
                    }
                }
                None => out.push(format!("{path}.{name}: expected a map of strings")),
            }
        } else if matches!(name.as_str(), "name" | "namespace" | "generateName") && !value.is_string() {
            out.push(format!("{path}.{name}: expected a string"));
        }
    }
}

fn string_constraints(s: &str, schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex(pattern) {
            Ok(re) if !re.is_match(s) => out.push(format!("{path}: {s:?} does not match the pattern {pattern}")),
            Ok(_) => {}
            Err(e) => out.push(format!("{path}: the schema's pattern {pattern} does not compile: {e}")),
        }
    }
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        out.push(format!("{path}: {s:?} is shorter than {min} characters"));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        out.push(format!("{path}: {s:?} is longer than {max} characters"));
    }
}

fn number_constraints(n: f64, schema: &Value, path: &str, out: &mut Vec<String>) {
    let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && (n < min || (exclusive("exclusiveMinimum") && n == min))
    {
        out.push(format!("{path}: {n} is below the minimum {min}"));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && (n > max || (exclusive("exclusiveMaximum") && n == max))
    {
        out.push(format!("{path}: {n} is above the maximum {max}"));
    }
}

fn combinators(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let broken = |branch: &Value| {
        let mut found = Vec::new();
        violations(value, branch, path, false, &mut found);
        found
    };
    for branch in schema.get("allOf").and_then(Value::as_sequence).into_iter().flatten() {
        out.extend(broken(branch));
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_sequence)
        && branches.iter().all(|b| !broken(b).is_empty())
    {
        out.push(format!("{path}: matches none of anyOf {}", compact(branches)));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_sequence) {
        let matching = branches.iter().filter(|b| broken(b).is_empty()).count();
        if matching != 1 {
            out.push(format!(
                "{path}: matches {matching} of oneOf {}, not exactly one",
                compact(branches)
            ));
        }
    }
    if let Some(not) = schema.get("not")
        && broken(not).is_empty()
    {
        out.push(format!(
            "{path}: matches the schema under `not` {}",
            compact(std::slice::from_ref(not))
        ));
    }
}

fn compact(branches: &[Value]) -> String {
    serde_json::to_string(&branches).unwrap_or_default()
}

/// The `apiVersion`'s group, `""` for the core group.
fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// One object to check and where it was found.
struct Found {
    object: Value,
    from: String,
}

/// Every custom-resource object of a tree: what each non-Component kustomization builds to (by
/// kubectl), the resources of each Component, and any YAML file's objects that no build reached.
fn custom_resources(root: &Path) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut built_ids = BTreeSet::new();
    let mut keep = |object: Value, from: String, found: &mut Vec<Found>| {
        let Some(api_version) = str_at(&object, &["apiVersion"]) else {
            return;
        };
        // kustomize.config.k8s.io objects are kustomize's own input, never applied to the cluster.
        if BUILT_IN_GROUPS.contains(&group(api_version)) || group(api_version) == "kustomize.config.k8s.io" {
            return;
        }
        if seen.insert(serde_yaml::to_string(&object).unwrap()) {
            found.push(Found { object, from });
        }
    };
    let files = yaml_files(root);
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    for file in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"))
    {
        let dir = file.parent().unwrap();
        let kustomization = documents(&std::fs::read_to_string(file).unwrap(), &rel(file));
        if str_at(&kustomization[0], &["kind"]) == Some("Component") {
            // A Component builds only inside an environment; its own resources are whole objects.
            for resource in kustomization[0]["resources"].as_sequence().into_iter().flatten() {
                let path = dir.join(resource.as_str().unwrap());
                if path.is_file() {
                    for object in documents(&std::fs::read_to_string(&path).unwrap(), &rel(&path)) {
                        built_ids.insert(identity(&object));
                        keep(object, rel(&path), &mut found);
                    }
                }
            }
            continue;
        }
        for object in kustomize(dir) {
            built_ids.insert(identity(&object));
            keep(object, format!("kubectl kustomize {}", rel(dir)), &mut found);
        }
    }
    for file in &files {
        let Ok(docs) = parse_documents(&std::fs::read_to_string(file).unwrap()) else {
            continue; // not a manifest
        };
        for object in docs {
            // A Grafana data source file has `apiVersion: 1`, a manifest a string and a kind.
            let is_manifest = object["apiVersion"].is_string() && object["kind"].is_string();
            if is_manifest && !built_ids.contains(&identity(&object)) {
                keep(object, rel(file), &mut found);
            }
        }
    }
    found
}

/// What names an object in a tree: its group, kind, namespace and name.
fn identity(object: &Value) -> (String, String, String, String) {
    let at = |path: &[&str]| str_at(object, path).unwrap_or_default().to_string();
    (
        group(&at(&["apiVersion"])).to_string(),
        at(&["kind"]),
        at(&["metadata", "namespace"]),
        at(&["metadata", "name"]),
    )
}

fn yaml_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != ".git") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Checks every custom resource under `root`; returns how many objects of each `apiVersion kind`
/// were checked, and panics listing every missing schema and every violation.
fn check_tree(what: &str, root: &Path) -> BTreeMap<String, usize> {
    let mut checked = BTreeMap::new();
    let mut problems = Vec::new();
    for Found { object, from } in custom_resources(root) {
        let api_version = str_at(&object, &["apiVersion"]).unwrap_or_default().to_string();
        let kind = str_at(&object, &["kind"]).unwrap_or_default().to_string();
        let name = match str_at(&object, &["metadata", "namespace"]) {
            Some(ns) => format!("{ns}/{}", str_at(&object, &["metadata", "name"]).unwrap_or("?")),
            None => str_at(&object, &["metadata", "name"]).unwrap_or("?").to_string(),
        };
        let Some((fixture, schema)) = schemas().get(&(api_version.clone(), kind.clone())) else {
            problems.push(format!(
                "{from}: {kind} {name} ({api_version}) has no schema: add its upstream CRD to \
                 tests/fixtures/crds/ and list it in tests/fixtures/crds/README.md"
            ));
            continue;
        };
        let mut out = Vec::new();
        violations(&object, schema, "$", true, &mut out);
        problems.extend(
            out.iter()
                .map(|v| format!("{from}: {kind} {name} breaks {fixture}: {v}")),
        );
        *checked.entry(format!("{api_version} {kind}")).or_insert(0) += 1;
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
    checked
}

fn assert_checked(checked: &BTreeMap<String, usize>, kinds: &[&str]) {
    for kind in kinds {
        assert!(checked.contains_key(*kind), "checked no {kind}; checked {checked:?}");
    }
}

fn scaffold(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_root().join("examples").join(config);
    let out = prenv(&["--config", s(&config), "init", "--repo", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

#[test]
fn the_flux_example_render_fits_the_upstream_schemas() {
    let dir = render_example("prenv.toml");
    let checked = check_tree("examples/prenv.toml render", dir.path());
    assert_checked(
        &checked,
        &[
            "kustomize.toolkit.fluxcd.io/v1 Kustomization",
            "postgresql.cnpg.io/v1 Cluster",
        ],
    );
    assert!(
        checked["kustomize.toolkit.fluxcd.io/v1 Kustomization"] >= 5,
        "{checked:?}"
    );
}

#[test]
fn the_argocd_example_render_fits_the_upstream_schemas() {
    let dir = render_example("prenv-argocd.toml");
    let checked = check_tree("examples/prenv-argocd.toml render", dir.path());
    assert_checked(
        &checked,
        &["argoproj.io/v1alpha1 ApplicationSet", "postgresql.cnpg.io/v1 Cluster"],
    );
}

#[test]
fn the_sealed_secrets_render_fits_the_upstream_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=sealed-secret",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let example = std::fs::read_to_string(repo_root().join("examples/prenv-argocd.toml")).unwrap();
    let (before_secrets, _) = example.split_once("[secrets]").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{before_secrets}[secrets]\nbackend = \"sealed-secrets\"\nsealed_secrets_cert = \"{}\"\n",
            cert.display()
        ),
    );
    let out_dir = dir.path().join("out");
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&repo_root().join("examples/prs.json")),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked = check_tree("the Sealed Secrets render", &out_dir);
    assert_checked(
        &checked,
        &[
            "bitnami.com/v1alpha1 SealedSecret",
            "argoproj.io/v1alpha1 ApplicationSet",
        ],
    );
}

/// How many custom resources a check covered, for the test's output.
fn total(checked: &BTreeMap<String, usize>) -> usize {
    checked.values().sum()
}

#[test]
fn the_flux_scaffold_fits_the_upstream_schemas() {
    let dir = scaffold("prenv.toml");
    let checked = check_tree("prenv init (Flux)", dir.path());
    assert_checked(
        &checked,
        &[
            "source.toolkit.fluxcd.io/v1 GitRepository",
            "source.toolkit.fluxcd.io/v1 HelmRepository",
            "kustomize.toolkit.fluxcd.io/v1 Kustomization",
            "notification.toolkit.fluxcd.io/v1 Receiver",
            "helm.toolkit.fluxcd.io/v2 HelmRelease",
            "cert-manager.io/v1 ClusterIssuer",
            "cert-manager.io/v1 Certificate",
            "monitoring.coreos.com/v1 PrometheusRule",
            "monitoring.coreos.com/v1 ServiceMonitor",
            "helm.cattle.io/v1 HelmChartConfig",
            "traefik.io/v1alpha1 TLSStore",
            "postgresql.cnpg.io/v1 Cluster",
        ],
    );
    assert!(
        checked["kustomize.toolkit.fluxcd.io/v1 Kustomization"] >= 7,
        "{checked:?}"
    );
    println!(
        "prenv init (Flux): {} custom resources checked: {checked:?}",
        total(&checked)
    );
}

#[test]
fn the_argocd_scaffold_fits_the_upstream_schemas() {
    let dir = scaffold("prenv-argocd.toml");
    let checked = check_tree("prenv init (Argo CD)", dir.path());
    assert_checked(
        &checked,
        &[
            "argoproj.io/v1alpha1 Application",
            "argoproj.io/v1alpha1 ApplicationSet",
            "cert-manager.io/v1 ClusterIssuer",
            "cert-manager.io/v1 Certificate",
            "monitoring.coreos.com/v1 PrometheusRule",
            "monitoring.coreos.com/v1 ServiceMonitor",
            "helm.cattle.io/v1 HelmChartConfig",
            "traefik.io/v1alpha1 TLSStore",
            "postgresql.cnpg.io/v1 Cluster",
        ],
    );
    println!(
        "prenv init (Argo CD): {} custom resources checked: {checked:?}",
        total(&checked)
    );
}

#[test]
fn the_cluster_issuer_of_every_dns_provider_fits_the_upstream_schema() {
    let example = std::fs::read_to_string(repo_root().join("examples/prenv.toml")).unwrap();
    for (provider, extra) in [("digitalocean", ""), ("route53", "dns_region = \"eu-west-1\"\n")] {
        let dir = tempfile::tempdir().unwrap();
        let body = example.replace(
            "dns_provider = \"cloudflare\"",
            &format!("{extra}dns_provider = \"{provider}\""),
        );
        let config = write_config(dir.path(), &body);
        let repo = dir.path().join("repo");
        let out = prenv(&["--config", s(&config), "init", "--repo", s(&repo)]);
        assert!(out.status.success(), "{provider}: {}", text(&out.stderr));
        let issuer = std::fs::read_to_string(repo.join("infrastructure/certificates/cluster-issuer.yaml")).unwrap();
        assert!(issuer.contains(&format!("{provider}:")), "{issuer}");
        let checked = check_tree(provider, &repo.join("infrastructure/certificates"));
        assert_checked(&checked, &["cert-manager.io/v1 ClusterIssuer"]);
    }
}

#[test]
fn every_fixture_is_listed_in_the_readme_with_its_source() {
    let readme = std::fs::read_to_string(fixtures_dir().join("README.md")).unwrap();
    let files: BTreeSet<&String> = schemas().values().map(|(file, _)| file).collect();
    for file in files {
        assert!(
            readme.contains(file.as_str()),
            "tests/fixtures/crds/README.md does not list {file}"
        );
    }
}

fn check(yaml: &str) -> Vec<String> {
    let object: Value = serde_yaml::from_str(yaml).unwrap();
    let key = (
        str_at(&object, &["apiVersion"]).unwrap().to_string(),
        str_at(&object, &["kind"]).unwrap().to_string(),
    );
    let mut out = Vec::new();
    violations(&object, &schemas()[&key].1, "$", true, &mut out);
    out
}

#[test]
fn the_schema_check_catches_what_it_should() {
    let cnpg = check(
        "apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata: {name: db, labelz: {}}\nspec:\n  instances: \"one\"\n  storage: {sizee: 1Gi}\n",
    );
    for want in [
        "$.spec.instances: expected integer, got string \"one\"",
        "$.spec.storage.sizee: unknown field",
        "$.metadata.labelz: not a field of ObjectMeta",
    ] {
        assert!(cnpg.iter().any(|v| v.contains(want)), "{want} not in {cnpg:#?}");
    }
    let flux = check(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: k}\nspec:\n  interval: 5 minutes\n  prune: true\n  deletionPolicy: Sometimes\n  sourceRef: {kind: GitRepository}\n",
    );
    for want in [
        "$.spec.interval: \"5 minutes\" does not match the pattern",
        "$.spec.deletionPolicy: \"Sometimes\" is not one of",
        "$.spec.sourceRef: missing required field name",
    ] {
        assert!(flux.iter().any(|v| v.contains(want)), "{want} not in {flux:#?}");
    }
    let fine = check(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: k, namespace: flux-system}\nspec:\n  interval: 1h5m0.5s\n  prune: true\n  sourceRef: {kind: GitRepository, name: repo}\n",
    );
    assert!(fine.is_empty(), "{fine:#?}");
    // Helm values are free-form: nothing inside them is checked.
    let release = check(
        "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: r}\nspec:\n  interval: 1h\n  chart: {spec: {chart: c, sourceRef: {kind: HelmRepository, name: r}}}\n  values: {anything: {goes: [1, two]}}\n",
    );
    assert!(release.is_empty(), "{release:#?}");
}

#[test]
fn a_custom_resource_without_a_fixture_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("monitor.yaml"),
        "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: m, namespace: monitoring}\nspec: {}\n",
    )
    .unwrap();
    let panic = std::panic::catch_unwind(|| check_tree("a tree", dir.path())).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("monitor.yaml: PodMonitor monitoring/m (monitoring.coreos.com/v1) has no schema"),
        "{message}"
    );
}
