//! What prenv renders for kinds it does not own is checked against the upstream CRD schemas in
//! `../shared/crds/` (Flux `Kustomization` v1, CloudNativePG `Cluster` v1): every field must exist
//! in the schema with the right type, enum value and pattern, and required fields must be present.

mod common;

use common::*;
use serde_yaml::Value;

/// The `openAPIV3Schema` of `version` in a CRD file beside the project.
fn crd_schema(file: &str, version: &str) -> Value {
    let path = repo_root().join("../shared/crds").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the CRDs come with ../shared beside the project",
            path.display()
        )
    });
    let crd: Value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|v: &Value| !v.is_null())
        .unwrap();
    let versions = crd["spec"]["versions"].as_sequence().unwrap();
    let v = versions.iter().find(|v| v["name"].as_str() == Some(version)).unwrap();
    v["schema"]["openAPIV3Schema"].clone()
}

/// Collects every way `value` breaks `schema`, by path.
fn violations(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            out.push(format!("{path}: expected int or string"));
        }
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_sequence)
        && !options.contains(value)
    {
        out.push(format!("{path}: {value:?} is not one of {options:?}"));
    }
    if let (Some(pattern), Some(s)) = (schema.get("pattern").and_then(Value::as_str), value.as_str()) {
        // Only the anchored duration pattern Flux uses matters here; check it literally.
        if pattern.contains("(ms|s|m|h)") && !s.chars().all(|c| c.is_ascii_digit() || "msh.".contains(c)) {
            out.push(format!("{path}: {s:?} does not match {pattern}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = value.as_mapping() else {
                out.push(format!("{path}: expected an object"));
                return;
            };
            if let Some(required) = schema.get("required").and_then(Value::as_sequence) {
                for key in required {
                    if !map.contains_key(key) {
                        out.push(format!("{path}: missing required {key:?}"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_mapping);
            let additional = schema.get("additionalProperties");
            let open = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            for (key, child) in map {
                let key_s = key.as_str().unwrap_or("?");
                let child_path = format!("{path}.{key_s}");
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => violations(child, sub, &child_path, out),
                    (None, Some(sub)) if sub.is_mapping() => violations(child, sub, &child_path, out),
                    (None, _) if open || path.ends_with(".metadata") || path == "$.metadata" => {}
                    (None, _) => out.push(format!("{child_path}: not in the schema")),
                }
            }
        }
        Some("array") => match value.as_sequence() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    violations(item, &schema["items"], &format!("{path}[{i}]"), out);
                }
            }
            None => out.push(format!("{path}: expected an array")),
        },
        Some("string") if !value.is_string() => out.push(format!("{path}: expected a string, got {value:?}")),
        Some("integer") if !(value.is_i64() || value.is_u64()) => out.push(format!("{path}: expected an integer")),
        Some("boolean") if !value.is_bool() => out.push(format!("{path}: expected a boolean")),
        _ => {}
    }
}

fn rendered(config: &str) -> (tempfile::TempDir, Vec<Value>) {
    let dir = render_example(config);
    let mut objects = kustomize(&dir.path().join("environments/shop-pr-101"));
    if dir.path().join("flux/environments").exists() {
        objects.extend(kustomize(&dir.path().join("flux/environments")));
    }
    (dir, objects)
}

#[test]
fn rendered_flux_kustomizations_and_cnpg_clusters_fit_the_upstream_schemas() {
    let flux = crd_schema("flux-kustomizations.yaml", "v1");
    let cnpg = crd_schema("cnpg-clusters.yaml", "v1");
    let mut checked = 0;
    for config in ["prenv.toml", "prenv-argocd.toml"] {
        let (_dir, objects) = rendered(config);
        for o in &objects {
            let schema = match (str_at(o, &["apiVersion"]), str_at(o, &["kind"])) {
                (Some("kustomize.toolkit.fluxcd.io/v1"), Some("Kustomization")) => &flux,
                (Some("postgresql.cnpg.io/v1"), Some("Cluster")) => &cnpg,
                _ => continue,
            };
            let mut out = Vec::new();
            violations(o, schema, "$", &mut out);
            assert!(
                out.is_empty(),
                "{config}: {:?} breaks its CRD schema:\n{}",
                str_at(o, &["kind"]),
                out.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= 7, "checked only {checked} objects");
}

#[test]
fn the_schema_check_catches_what_it_should() {
    let cnpg = crd_schema("cnpg-clusters.yaml", "v1");
    let bad: Value = serde_yaml::from_str(
        "apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata: {name: db}\nspec:\n  instances: \"one\"\n  storage: {sizee: 1Gi}\n",
    )
    .unwrap();
    let mut out = Vec::new();
    violations(&bad, &cnpg, "$", &mut out);
    assert!(
        out.iter().any(|v| v.contains("spec.instances: expected an integer")),
        "{out:?}"
    );
    assert!(
        out.iter().any(|v| v.contains("spec.storage.sizee: not in the schema")),
        "{out:?}"
    );
}
