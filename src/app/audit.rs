//! `prenv audit`: proof that no Secret was ever committed in plain text. Every blob of every commit
//! reachable from any ref is read once; each Kubernetes Secret in it must have its data encrypted
//! (SOPS `ENC[...]` values) or be a SealedSecret. Findings name the commit, path, Secret and keys,
//! never a value.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize as _, Serialize};

use crate::error::Result;

/// The prefix of every value SOPS encrypted with AES-256-GCM.
pub const SOPS_VALUE_PREFIX: &str = "ENC[AES256_GCM,";

/// One plain-text Secret found in the history.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub commit: String,
    pub path: String,
    pub secret: String,
    /// The keys whose values are not encrypted (never the values).
    pub keys: Vec<String>,
}

/// What an audit read, and what it found.
#[derive(Debug, Default, Serialize)]
pub struct Audit {
    pub commits: usize,
    pub blobs: usize,
    pub findings: Vec<Finding>,
}

/// Scans every commit reachable from any ref of the repository at `path`.
pub fn audit(path: &Path) -> Result<Audit> {
    let mut audit = Audit::default();
    let mut findings = BTreeSet::new();
    let walked = crate::adapters::git_history::each_blob_in_history(path, is_manifest, |commit, path, bytes| {
        audit.blobs += 1;
        for (secret, keys) in plaintext_secrets(bytes) {
            findings.insert(Finding {
                commit: commit[..12].to_string(),
                path: path.to_string(),
                secret,
                keys,
            });
        }
    })?;
    audit.commits = walked;
    audit.findings = findings.into_iter().collect();
    Ok(audit)
}

fn is_manifest(path: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|ext| path.ends_with(ext))
}

/// The Secrets in a file (any number of YAML documents, or JSON) whose data is not encrypted, each
/// with the offending keys. Unparsable files are not manifests and hold no finding.
pub fn plaintext_secrets(bytes: &[u8]) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for doc in serde_yaml::Deserializer::from_slice(bytes) {
        let Ok(value) = serde_yaml::Value::deserialize(doc) else {
            break;
        };
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            if item.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
                continue;
            }
            let encrypted = item.get("sops").is_some();
            let mut keys = Vec::new();
            for field in ["data", "stringData"] {
                let Some(map) = item.get(field).and_then(|d| d.as_mapping()) else {
                    continue;
                };
                for (key, value) in map {
                    let sealed = value.as_str().is_some_and(|v| v.starts_with(SOPS_VALUE_PREFIX));
                    let empty = value.is_null() || value.as_str() == Some("");
                    if !(empty || encrypted && sealed) {
                        keys.push(format!("{field}.{}", key.as_str().unwrap_or("?")));
                    }
                }
            }
            if !keys.is_empty() {
                let name = item
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or("(unnamed)")
                    .to_string();
                found.push((name, keys));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_secrets_are_found_and_encrypted_ones_are_not() {
        let table: &[(&str, &str, &[&str])] = &[
            (
                "plain data",
                "kind: Secret\nmetadata: {name: a}\ndata: {PASSWORD: aHVudGVyMg==}\n",
                &["data.PASSWORD"],
            ),
            (
                "plain stringData",
                "kind: Secret\nmetadata: {name: b}\nstringData: {TOKEN: x}\n",
                &["stringData.TOKEN"],
            ),
            (
                "sops",
                "kind: Secret\nmetadata: {name: c}\nstringData: {P: 'ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]'}\nsops: {version: 3.9.4}\n",
                &[],
            ),
            (
                "ENC without sops metadata",
                "kind: Secret\nmetadata: {name: d}\nstringData: {P: 'ENC[AES256_GCM,data:x]'}\n",
                &["stringData.P"],
            ),
            ("empty", "kind: Secret\nmetadata: {name: e}\ndata: {}\n", &[]),
            ("configmap", "kind: ConfigMap\nmetadata: {name: f}\ndata: {P: x}\n", &[]),
            (
                "second document",
                "kind: ConfigMap\n---\nkind: Secret\nmetadata: {name: g}\ndata: {K: dg==}\n",
                &["data.K"],
            ),
            (
                "list",
                "kind: List\nitems:\n- kind: Secret\n  metadata: {name: h}\n  data: {K: dg==}\n",
                &["data.K"],
            ),
            ("not yaml", "{{{{", &[]),
        ];
        for (name, text, keys) in table {
            let found = plaintext_secrets(text.as_bytes());
            let got: Vec<&str> = found.iter().flat_map(|(_, k)| k.iter().map(String::as_str)).collect();
            assert_eq!(got, *keys, "{name}");
        }
    }
}
