//! `prenv audit`: proof that no Secret was ever committed in plain text. Every blob of every commit
//! reachable from any ref is read once; each Kubernetes Secret in it must have its data encrypted
//! (SOPS `ENC[...]` values) or be a SealedSecret. Findings name the commit, path, Secret and keys,
//! never a value.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use git2::{ObjectType, Oid, Repository};
use serde::{Deserialize as _, Serialize};

use crate::error::{Error, Result};

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
pub struct Report {
    pub commits: usize,
    pub blobs: usize,
    pub findings: Vec<Finding>,
}

/// Scans every commit reachable from any ref of the repository at `path`.
pub fn audit(path: &Path) -> Result<Report> {
    let display = path.display().to_string();
    let err = |action: &'static str| {
        let repo = display.clone();
        move |e: git2::Error| Error::Git {
            action,
            repo: repo.clone(),
            message: e.message().to_string(),
        }
    };
    let repo = Repository::open(path).map_err(err("opening"))?;
    let mut walk = repo.revwalk().map_err(err("walking"))?;
    walk.push_glob("*").map_err(err("walking"))?;
    if let Ok(head) = repo.head()
        && let Some(id) = head.target()
    {
        walk.push(id).map_err(err("walking"))?;
    }
    let mut report = Report::default();
    let mut seen_trees = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut findings = BTreeSet::new();
    for id in walk {
        let id = id.map_err(err("walking"))?;
        report.commits += 1;
        let commit = repo.find_commit(id).map_err(err("reading a commit of"))?;
        let tree = commit.tree().map_err(err("reading a commit of"))?;
        let mut stack = vec![(tree, String::new())];
        while let Some((tree, prefix)) = stack.pop() {
            if !seen_trees.insert(tree.id()) {
                continue;
            }
            for entry in tree.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
                let path = format!("{prefix}{name}");
                match entry.kind() {
                    Some(ObjectType::Tree) => {
                        let sub = repo.find_tree(entry.id()).map_err(err("reading a tree of"))?;
                        stack.push((sub, format!("{path}/")));
                    }
                    Some(ObjectType::Blob) if is_manifest(&path) && seen_blobs.insert(entry.id()) => {
                        report.blobs += 1;
                        let blob = repo.find_blob(entry.id()).map_err(err("reading a file of"))?;
                        for (secret, keys) in plaintext_secrets(blob.content()) {
                            findings.insert(Finding {
                                commit: commit_name(id),
                                path: path.clone(),
                                secret,
                                keys,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    report.findings = findings.into_iter().collect();
    Ok(report)
}

fn commit_name(id: Oid) -> String {
    id.to_string()[..12].to_string()
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
