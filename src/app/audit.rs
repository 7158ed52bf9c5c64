//! `prenv audit`: proof that no Secret was ever committed in plain text. Every file that can hold
//! a manifest, in every commit reachable from any ref, is read once (the walk is
//! adapters/git_history.rs); each Kubernetes Secret in it, each secretGenerator of a kustomization
//! and each file such a generator reads must be SOPS ciphertext, a template expression, or empty.
//! Findings name the commit, path, Secret and keys, never a value.
//!
//! The SOPS format checked here is sops's own (getsops/sops): a value is
//! `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<t>]` with a 32-byte IV and a 16-byte tag
//! (`aes/cipher.go`: `encre`, `nonceSize`, `Encrypt`, the `Decrypt` type switch), and the file's
//! `sops` map carries its `version`, the MAC, itself such a value over SHA-512 in upper-case hex
//! (`sops.go` `Tree.Encrypt`, `cmd/sops/common/common.go`), and at least one recipient's
//! encrypted data key (`stores/stores.go`: `metadata`, `keygroup`). sops would decrypt a value
//! with any IV length, but it only ever writes 32 bytes, so nothing else counts as its output.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use regex::Regex;
use serde::{Deserialize as _, Serialize};
use serde_yaml::{Mapping, Value};

use crate::adapters::git_history::{HistoryReader, read_history};
use crate::error::Result;

/// What the audit checks, for `prenv audit --help`: kept beside the code that checks it, and each
/// form has a case, clean and leaking, in tests/audit.rs.
pub const CHECKS: &str = "\
What is read: every commit reachable from any ref, HEAD or reflog entry (branches, tags, trees
and blobs a tag names directly, notes, the stash and its older entries, remote-tracking and
pull-request refs); each distinct file once. Files: any name holding .yaml, .yml or .json in any
case (.YAML, .yaml.tpl, .yml.j2) and `Kustomization`, in UTF-8 with or without a byte-order mark
or UTF-16; every YAML document of a file, a JSON object, array or stream. A document that does
not parse never hides the others; if it declares a Secret or a secretGenerator it is reported.

Leak forms reported:
  - data or stringData of a kind: Secret, at the top of a document, in a List or SecretList, in a
    JSON array, or nested in another object;
  - a Secret copied into a kubectl.kubernetes.io/last-applied-configuration annotation;
  - secretGenerator literals, and the files its envs:/env: and files: entries read;
  - Secrets in a kustomization's inline patches (strategic merge and JSON 6902 add/replace);
  - ENC[...] values without SOPS's structure, ENC[AES256_GCM,data:<b64>,iv:<32 bytes b64>,
    tag:<16 bytes b64>,type:str|int|float|bool|bytes|time|comment], and SOPS values in a file
    whose sops metadata lacks a version, an encrypted MAC or a recipient's data key.

Not leaks: empty or null values, values that are only template expressions ({{ }}, {% %}) or a
Flux ${VAR}, SOPS ciphertext in a sealed file, SealedSecrets, ConfigMaps.

Findings name the commit, path, Secret and keys, never a value. Exit status: 0 clean, 1 leaks
found, 2 the audit could not be completed.";

/// The prefix of every value SOPS encrypted with AES-256-GCM.
pub const SOPS_VALUE_PREFIX: &str = "ENC[AES256_GCM,";
/// sops seals with a 32-byte GCM nonce (aes/cipher.go `nonceSize`).
const SOPS_IV_LEN: usize = 32;
/// The GCM tag, the last AES block of the sealed output (aes/cipher.go `Encrypt`).
const SOPS_TAG_LEN: usize = 16;
/// The MAC is a SHA-512 in upper-case hex: 128 characters, so 128 sealed bytes (sops.go).
const SOPS_MAC_LEN: usize = 128;
/// The `type:` values sops writes and reads (aes/cipher.go `Encrypt` and `Decrypt`).
const SOPS_TYPES: &[&str] = &["str", "int", "float", "bool", "bytes", "time", "comment"];
/// The key sources of a `sops` map or of one of its `key_groups` (stores/stores.go).
const SOPS_KEY_SOURCES: &[&str] = &["age", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"];
/// kubectl copies the whole applied object, data included, into this annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// What a template expression (`{{ … }}`, `{% … %}`, `{# … #}`) is replaced by before parsing,
/// so that a templated file parses and a value that is only an expression is recognised.
const TEMPLATE: &str = "prenv-template-expression";

static TEMPLATE_SPAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}").expect("a valid regex"));
/// Flux's post-build substitution of a variable without a default (`${DB_PASSWORD}`).
static FLUX_VARIABLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$").expect("a valid regex"));
/// A document that does not parse is still judged by what it declares.
static DECLARES_SECRET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"\bkind["']?\s*:\s*["']?Secret(List)?\b"#).expect("a valid regex"));
static DECLARES_GENERATOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"\bsecretGenerator["']?\s*:"#).expect("a valid regex"));

/// One plain-text Secret found in the history.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The first commit (12 hex digits) that holds the file, or the ref that names it directly.
    pub commit: String,
    pub path: String,
    pub secret: String,
    /// The keys whose values are not encrypted (never the values).
    pub keys: Vec<String>,
    /// Which form of leak this is, and why the values do not count as encrypted.
    pub reason: String,
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
    let mut auditor = Auditor::default();
    let commits = read_history(path, &mut auditor)?;
    Ok(Audit {
        commits,
        blobs: auditor.blobs,
        findings: auditor.findings.into_iter().collect(),
    })
}

/// A leak in one file, before the walk says where the file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub secret: String,
    pub keys: Vec<String>,
    pub reason: String,
}

/// A file a secretGenerator reads: the value of a Secret comes from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GeneratorSource {
    kustomization: String,
    generator: String,
    /// `None` for an `envs:` file (KEY=value lines), the key for a `files:` entry.
    file_key: Option<String>,
}

#[derive(Default)]
struct Auditor {
    blobs: usize,
    findings: BTreeSet<Finding>,
}

impl Auditor {
    fn record(&mut self, at: &str, path: &str, leaks: Vec<Leak>) {
        self.findings.extend(leaks.into_iter().map(|leak| Finding {
            commit: at.to_string(),
            path: path.to_string(),
            secret: leak.secret,
            keys: leak.keys,
            reason: leak.reason,
        }));
    }
}

impl HistoryReader for Auditor {
    type Ref = GeneratorSource;

    fn wants(&self, name: &str) -> bool {
        is_manifest(name)
    }

    fn file(&mut self, at: &str, path: &str, bytes: &[u8]) -> Vec<(String, GeneratorSource)> {
        self.blobs += 1;
        let (leaks, sources) = manifest_leaks(path, bytes);
        self.record(at, path, leaks);
        sources
    }

    fn referenced(&mut self, source: &GeneratorSource, at: &str, path: &str, bytes: &[u8]) {
        self.blobs += 1;
        let leaks = match &source.file_key {
            None => env_file_leaks(source, bytes),
            Some(key) => generator_file_leaks(source, key, bytes),
        };
        self.record(at, path, leaks);
    }
}

/// The files read on their own: any name holding `.yaml`, `.yml` or `.json` in any case (so
/// `secret.YAML`, `secret.yaml.tpl`, `values.yml.j2` too), and kustomize's `Kustomization`
/// (kustomize api/konfig/general.go `RecognizedKustomizationFileNames`). The files a
/// kustomization's secretGenerator reads are followed from it, whatever their names.
pub fn is_manifest(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".yaml", ".yml", ".json"].iter().any(|ext| lower.contains(ext)) || lower == "kustomization"
}

/// Every leak in one manifest file, and the files its secretGenerators read (relative to it).
pub fn manifest_leaks(path: &str, bytes: &[u8]) -> (Vec<Leak>, Vec<(String, GeneratorSource)>) {
    let mut leaks = Vec::new();
    let mut sources = Vec::new();
    for doc in documents(bytes) {
        match doc {
            Document::Parsed(value) => {
                scan(&value, None, &mut leaks);
                generators(&value, path, &mut leaks, &mut sources);
                inline_patches(&value, &mut leaks);
            }
            Document::Broken {
                line,
                declares: Some(what),
            } => leaks.push(Leak {
                secret: format!("document at line {line}"),
                keys: vec!["(unreadable)".into()],
                reason: format!("the document does not parse as YAML or JSON and declares {what}: fix or remove it"),
            }),
            Document::Broken { declares: None, .. } => {}
        }
    }
    (leaks, sources)
}

/// One document of a file.
#[derive(Debug)]
enum Document {
    Parsed(Value),
    /// A document that does not parse, with the line it starts on and what it declares (`kind: Secret`,
    /// a secretGenerator) if anything: its values cannot be checked.
    Broken {
        line: usize,
        declares: Option<&'static str>,
    },
}

/// The documents of a file: a JSON stream (objects or arrays, one after another) or YAML
/// documents. A document that fails to parse is reported as broken and the others are still read.
fn documents(bytes: &[u8]) -> Vec<Document> {
    let text = decode(bytes);
    let text = detemplate(&text);
    let mut docs = Vec::new();
    let mut rest: &str = &text;
    let mut line = 1;
    if rest.trim_start().starts_with(['{', '[']) {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        while let Some(Ok(value)) = stream.next() {
            docs.push(Document::Parsed(value));
        }
        let read = stream.byte_offset();
        line += rest[..read].matches('\n').count();
        rest = &rest[read..];
    }
    for (first, chunk) in split_documents(rest, line) {
        parse_chunk(first, chunk, &mut docs);
    }
    docs
}

/// Text from bytes: UTF-8 with or without a byte-order mark, or UTF-16 with one (YAML allows
/// it; git shows it as binary, so it hides well). Invalid bytes become U+FFFD.
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    let utf16 = |big_endian: bool| {
        let units = bytes[2..].chunks_exact(2).map(|pair| {
            let pair = [pair[0], pair[1]];
            if big_endian {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        });
        let text: String = char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        Cow::Owned(text)
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest),
        [0xFF, 0xFE, ..] => utf16(false),
        [0xFE, 0xFF, ..] => utf16(true),
        _ => String::from_utf8_lossy(bytes),
    }
}

/// Replaces every template expression by [`TEMPLATE`] and blanks the lines that held only
/// expressions (`{{- if … }}`, `{% for … %}`): what is left parses like the manifest it renders.
/// Line numbers stay those of the file.
fn detemplate(text: &str) -> Cow<'_, str> {
    if !text.contains("{{") && !text.contains("{%") {
        return Cow::Borrowed(text);
    }
    let replaced = TEMPLATE_SPAN.replace_all(text, |span: &regex::Captures| {
        format!("{TEMPLATE}{}", "\n".repeat(span[0].matches('\n').count()))
    });
    let lines: Vec<&str> = replaced
        .split('\n')
        .map(|line| if is_template(line) { "" } else { line })
        .collect();
    Cow::Owned(lines.join("\n"))
}

/// Splits a YAML stream where kubectl does (apimachinery pkg/util/yaml/decoder.go
/// `YAMLReader.Read`): before every line that starts with `---`. Each piece keeps its separator
/// line, so `--- {kind: Secret}` (which kubectl refuses) is still read. Returns each piece with
/// its first line's number.
fn split_documents(text: &str, first_line: usize) -> Vec<(usize, &str)> {
    let mut pieces = Vec::new();
    let (mut start, mut start_line, mut at) = (0, first_line, 0);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if at > start && line.trim_start_matches('\u{feff}').starts_with("---") {
            pieces.push((start_line, &text[start..at]));
            (start, start_line) = (at, first_line + n);
        }
        at += line.len();
    }
    if start < text.len() {
        pieces.push((start_line, &text[start..]));
    }
    pieces
}

/// The documents of one piece (more than one after a `...` end marker); a parse error ends the
/// piece and only the piece.
fn parse_chunk(first_line: usize, chunk: &str, docs: &mut Vec<Document>) {
    let chunk = chunk.trim_start_matches('\u{feff}');
    for doc in serde_yaml::Deserializer::from_str(chunk) {
        match Value::deserialize(doc) {
            Ok(mut value) => {
                // kubectl applies `<<` merge keys; a bad merge leaves the value as it was.
                let _ = value.apply_merge();
                docs.push(Document::Parsed(value));
            }
            Err(_) => {
                let declares = if DECLARES_SECRET.is_match(chunk) {
                    Some("kind: Secret")
                } else if DECLARES_GENERATOR.is_match(chunk) {
                    Some("a secretGenerator")
                } else {
                    None
                };
                docs.push(Document::Broken {
                    line: first_line,
                    declares,
                });
                return;
            }
        }
    }
}

/// How a value stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Empty, null, SOPS ciphertext in a sealed document, or only a template expression.
    Clean,
    Plain,
    /// Starts like SOPS ciphertext but does not have its structure.
    NotSops,
    /// SOPS ciphertext in a document whose `sops` metadata is missing or incomplete.
    Unsealed(&'static str),
}

impl Verdict {
    fn reason(self) -> Option<String> {
        match self {
            Verdict::Clean => None,
            Verdict::Plain => Some("plain value".into()),
            Verdict::NotSops => Some("ENC[…] value that is not SOPS ciphertext".into()),
            Verdict::Unsealed(why) => Some(format!("SOPS-shaped value, but {why}")),
        }
    }
}

/// Whether the `sops` metadata of a document is complete: `Err` says what is missing.
type Seal = std::result::Result<(), &'static str>;

fn untag(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untag(&tagged.value),
        other => other,
    }
}

fn judge(value: &Value, seal: Seal) -> Verdict {
    match untag(value) {
        Value::Null => Verdict::Clean,
        Value::String(text) => judge_text(text, seal),
        // Numbers, booleans, maps and lists are values in plain text too.
        _ => Verdict::Plain,
    }
}

fn judge_text(text: &str, seal: Seal) -> Verdict {
    if text.is_empty() || is_template(text) {
        Verdict::Clean
    } else if !text.starts_with("ENC[") {
        Verdict::Plain
    } else if !is_sops_value(text) {
        Verdict::NotSops
    } else {
        seal.map_or_else(Verdict::Unsealed, |()| Verdict::Clean)
    }
}

/// A value that is only template expressions (Helm, Jinja) or only a Flux `${VAR}`: what
/// reaches the cluster comes from elsewhere (values files and substitutions are not audited).
fn is_template(text: &str) -> bool {
    (text.contains(TEMPLATE) && text.replace(TEMPLATE, "").trim().is_empty()) || FLUX_VARIABLE.is_match(text.trim())
}

/// The length of the sealed data and the type of a value in sops's format, if it is one.
fn sops_parts(text: &str) -> Option<(usize, &str)> {
    let inner = text.strip_prefix(SOPS_VALUE_PREFIX)?.strip_suffix(']')?;
    let mut parts = inner.split(',');
    let mut field = |name: &str| parts.next()?.strip_prefix(name);
    let (data, iv, tag, kind) = (field("data:")?, field("iv:")?, field("tag:")?, field("type:")?);
    let decoded = |b64: &str| B64.decode(b64).ok();
    let (data, iv, tag) = (decoded(data)?, decoded(iv)?, decoded(tag)?);
    let well_formed = parts.next().is_none()
        && !data.is_empty()
        && iv.len() == SOPS_IV_LEN
        && tag.len() == SOPS_TAG_LEN
        && SOPS_TYPES.contains(&kind);
    well_formed.then_some((data.len(), kind))
}

/// Whether `text` has the structure of a value sops encrypted.
pub fn is_sops_value(text: &str) -> bool {
    sops_parts(text).is_some()
}

/// A `sops` map is complete when it names its version (sops's own `filestatus` requires it and the
/// MAC: cmd/sops/subcommand/filestatus/filestatus.go `cfs`), its MAC is a sealed SHA-512
/// (cmd/sops/common/common.go encrypts it with the `lastmodified` time as associated data) and
/// some recipient holds the data key (`enc` of a key source in stores/stores.go).
fn seal_of(sops: Option<&Value>) -> Seal {
    let Some(meta) = sops.map(untag).and_then(Value::as_mapping) else {
        return Err("the document has no sops metadata");
    };
    if !meta
        .get("version")
        .map(untag)
        .is_some_and(|v| matches!(v, Value::String(t) if !t.is_empty()) || v.is_number())
    {
        return Err("its sops metadata has no version");
    }
    let mac = meta.get("mac").and_then(Value::as_str);
    if mac.and_then(sops_parts) != Some((SOPS_MAC_LEN, "str")) {
        return Err("its sops metadata has no valid mac");
    }
    let in_groups = meta
        .get("key_groups")
        .and_then(Value::as_sequence)
        .is_some_and(|groups| groups.iter().filter_map(Value::as_mapping).any(has_recipient));
    if !(has_recipient(meta) || in_groups) {
        return Err("its sops metadata names no recipient");
    }
    Ok(())
}

fn has_recipient(keys: &Mapping) -> bool {
    SOPS_KEY_SOURCES.iter().any(|source| {
        keys.get(*source).and_then(Value::as_sequence).is_some_and(|entries| {
            entries.iter().any(|e| {
                e.get("enc")
                    .and_then(Value::as_str)
                    .is_some_and(|k| !k.trim().is_empty())
            })
        })
    })
}

/// Every Secret anywhere in a document: at its top, in the items of a `List` or `SecretList`, in
/// a JSON array, or nested in another object (a policy that generates one, a template). A
/// Secret is judged against its own `sops` map or the enclosing document's: sops appends its
/// metadata to every document of a file (stores/metadata.go `SerializeMetadata`).
fn scan(value: &Value, sops: Option<&Value>, leaks: &mut Vec<Leak>) {
    match untag(value) {
        Value::Sequence(items) => items.iter().for_each(|item| scan(item, sops, leaks)),
        Value::Mapping(map) => {
            let sops = map.get("sops").or(sops);
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                secret_leaks(map, sops, leaks);
            } else {
                map.values().for_each(|child| scan(child, sops, leaks));
            }
        }
        _ => {}
    }
}

fn secret_leaks(secret: &Mapping, sops: Option<&Value>, leaks: &mut Vec<Leak>) {
    let metadata = secret.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .map_or_else(|| "(unnamed)".to_string(), |n| n.replace(TEMPLATE, "{{…}}"));
    let seal = seal_of(sops);
    let mut judged = Vec::new();
    for field in ["data", "stringData"] {
        match secret.get(field).map(untag) {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(entries)) => {
                for (key, value) in entries {
                    judged.push((format!("{field}.{}", key_text(key)), judge(value, seal)));
                }
            }
            Some(other) => judged.push((field.to_string(), judge(other, seal))),
        }
    }
    group(leaks, &name, "", judged);
    let applied = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    if let Some(applied) = applied {
        let mut inner = Vec::new();
        scan(&applied, None, &mut inner);
        leaks.extend(inner.into_iter().map(|leak| Leak {
            reason: format!("in its {LAST_APPLIED} annotation, {}", leak.reason),
            ..leak
        }));
    }
}

fn key_text(key: &Value) -> String {
    match untag(key) {
        Value::String(s) => s.replace(TEMPLATE, "{{…}}"),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// One leak per reason, with the keys it applies to, in the order they were judged.
fn group(leaks: &mut Vec<Leak>, secret: &str, context: &str, judged: Vec<(String, Verdict)>) {
    let mut by_reason: Vec<(String, Vec<String>)> = Vec::new();
    for (key, verdict) in judged {
        let Some(reason) = verdict.reason() else { continue };
        match by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, keys)) => keys.push(key),
            None => by_reason.push((reason, vec![key])),
        }
    }
    leaks.extend(by_reason.into_iter().map(|(reason, keys)| Leak {
        secret: secret.to_string(),
        keys,
        reason: format!("{context}{reason}"),
    }));
}

fn sequence<'v>(value: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    value.get(key).and_then(Value::as_sequence).into_iter().flatten()
}

/// The literals of every secretGenerator of a kustomization, and the `envs:`/`env:` and
/// `files:` it reads (kustomize api/types/kvpairsources.go `KvPairSources`).
fn generators(doc: &Value, path: &str, leaks: &mut Vec<Leak>, sources: &mut Vec<(String, GeneratorSource)>) {
    let seal = seal_of(doc.get("sops"));
    for generator in sequence(doc, "secretGenerator") {
        let name = generator.get("name").and_then(Value::as_str).unwrap_or("(unnamed)");
        let mut judged = Vec::new();
        for (i, literal) in sequence(generator, "literals").enumerate() {
            // kustomize api/kv/kv.go `parseLiteralSource`: key=value, surrounding quotes removed.
            judged.push(match untag(literal).as_str().and_then(|l| l.split_once('=')) {
                Some((key, value)) if !key.is_empty() => (format!("literals.{key}"), judge_text(unquote(value), seal)),
                _ => (format!("literals[{i}]"), judge(literal, seal)),
            });
        }
        group(leaks, name, "secretGenerator literal, ", judged);
        let source = |file_key| GeneratorSource {
            kustomization: path.to_string(),
            generator: name.to_string(),
            file_key,
        };
        let envs = sequence(generator, "envs").chain(generator.get("env"));
        for env in envs.filter_map(Value::as_str) {
            sources.push((env.to_string(), source(None)));
        }
        for file in sequence(generator, "files").filter_map(Value::as_str) {
            if let Some((key, file)) = file_source(file) {
                sources.push((file.to_string(), source(Some(key.to_string()))));
            }
        }
    }
}

/// kustomize api/kv/kv.go `removeQuotes`.
fn unquote(value: &str) -> &str {
    let bytes = value.as_bytes();
    match bytes {
        [first @ (b'"' | b'\''), .., last] if first == last => &value[1..value.len() - 1],
        _ => value,
    }
}

/// `[key=]path` (kustomize api/internal/generators/utils.go `ParseFileSource`): the key defaults
/// to the file's name; anything else kustomize refuses.
fn file_source(source: &str) -> Option<(&str, &str)> {
    match source.split('=').collect::<Vec<_>>()[..] {
        [path] => Some((path.rsplit('/').next().unwrap_or(path), path)),
        [key, path] if !key.is_empty() && !path.is_empty() => Some((key, path)),
        _ => None,
    }
}

/// Secrets in the inline patches of a kustomization: a strategic-merge patch that is a Secret,
/// or JSON 6902 operations that add data to a Secret target. An inline patch is never decrypted.
fn inline_patches(doc: &Value, leaks: &mut Vec<Leak>) {
    let patches = sequence(doc, "patches").chain(sequence(doc, "patchesJson6902"));
    let strategic = sequence(doc, "patchesStrategicMerge").filter_map(Value::as_str);
    let inline = patches
        .filter_map(|p| Some((p.get("patch")?.as_str()?, p.get("target"))))
        .chain(strategic.filter(|p| p.contains('\n')).map(|p| (p, None)));
    for (text, target) in inline {
        let secret_target = target.filter(|t| t.get("kind").and_then(Value::as_str) == Some("Secret"));
        let mut found = Vec::new();
        for doc in documents(text.as_bytes()) {
            let Document::Parsed(value) = doc else { continue };
            scan(&value, None, &mut found);
            if let Some(target) = secret_target {
                json_patch_leaks(&value, target, &mut found);
            }
        }
        leaks.extend(found.into_iter().map(|leak| Leak {
            reason: format!("inline patch in a kustomization, {}", leak.reason),
            ..leak
        }));
    }
}

/// The values that `add`/`replace` operations put under `/data` or `/stringData` of a Secret.
fn json_patch_leaks(ops: &Value, target: &Value, leaks: &mut Vec<Leak>) {
    const NO_SOPS: Seal = Err("an inline patch has no sops metadata");
    let mut judged = Vec::new();
    for op in ops.as_sequence().into_iter().flatten() {
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let writes = matches!(op.get("op").and_then(Value::as_str), Some("add" | "replace"));
        let Some((field, key)) = ["data", "stringData"]
            .into_iter()
            .find_map(|f| Some((f, path.strip_prefix('/')?.strip_prefix(f)?)))
            .filter(|(_, key)| writes && (key.is_empty() || key.starts_with('/')))
        else {
            continue;
        };
        let value = op.get("value").unwrap_or(&Value::Null);
        match (key.strip_prefix('/'), untag(value)) {
            // RFC 6901: `~1` is `/` and `~0` is `~` in a key.
            (Some(key), _) => judged.push((
                format!("{field}.{}", key.replace("~1", "/").replace("~0", "~")),
                judge(value, NO_SOPS),
            )),
            (None, Value::Mapping(entries)) => {
                judged.extend(
                    entries
                        .iter()
                        .map(|(k, v)| (format!("{field}.{}", key_text(k)), judge(v, NO_SOPS))),
                );
            }
            (None, other) => judged.push((field.to_string(), judge(other, NO_SOPS))),
        }
    }
    let name = target.get("name").and_then(Value::as_str).unwrap_or("(any)");
    group(leaks, name, "", judged);
}

/// The KEY=value lines of an env file as kustomize reads them (api/kv/kv.go
/// `keyValuesFromLine`): leading white space trimmed, blank and `#` lines skipped, split at the
/// first `=`; a line without one has an empty value.
fn env_entries(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .collect()
}

/// The seal of a dotenv file sops encrypted: its metadata is flattened into `sops_*` keys
/// (stores/dotenv/store.go, stores/flatten.go), the MAC in `sops_mac`, each recipient's data
/// key in a `sops_…__map_enc`. Returns the seal and the entries that are data.
fn dotenv_seal<'t>(entries: &[(&'t str, &'t str)]) -> (Seal, Vec<(&'t str, &'t str)>) {
    let Some((_, mac)) = entries.iter().find(|(key, _)| *key == "sops_mac") else {
        return (Err("the file has no sops metadata"), entries.to_vec());
    };
    let data = entries
        .iter()
        .filter(|(key, _)| !key.starts_with("sops_"))
        .copied()
        .collect();
    let recipient = entries
        .iter()
        .any(|(key, value)| key.starts_with("sops_") && key.ends_with("__map_enc") && !value.is_empty());
    let version = entries
        .iter()
        .any(|(key, value)| *key == "sops_version" && !value.is_empty());
    let seal = if !version {
        Err("its sops metadata has no version")
    } else if sops_parts(mac) != Some((SOPS_MAC_LEN, "str")) {
        Err("its sops metadata has no valid mac")
    } else if !recipient {
        Err("its sops metadata names no recipient")
    } else {
        Ok(())
    };
    (seal, data)
}

/// The values of an `envs:` file of a secretGenerator (each line becomes a key of the Secret).
fn env_file_leaks(source: &GeneratorSource, bytes: &[u8]) -> Vec<Leak> {
    let text = decode(bytes);
    let entries = env_entries(&text);
    let (seal, data) = dotenv_seal(&entries);
    let judged = data
        .iter()
        .map(|(key, value)| (format!("envs.{key}"), judge_text(unquote(value), seal)))
        .collect();
    let mut leaks = Vec::new();
    let context = format!("env file of the secretGenerator in {}, ", source.kustomization);
    group(&mut leaks, &source.generator, &context, judged);
    leaks
}

/// A `files:` entry of a secretGenerator: its whole content is a value, so the file must be
/// one sops encrypted (as Flux's kustomize-controller decrypts it before the build, in
/// internal/decryptor/decryptor.go `decryptKustomizationSources`).
fn generator_file_leaks(source: &GeneratorSource, key: &str, bytes: &[u8]) -> Vec<Leak> {
    if bytes.iter().all(u8::is_ascii_whitespace) || is_sops_file(bytes) {
        return Vec::new();
    }
    vec![Leak {
        secret: source.generator.clone(),
        keys: vec![format!("files.{key}")],
        reason: format!(
            "file of the secretGenerator in {}, not SOPS-encrypted",
            source.kustomization
        ),
    }]
}

/// A file sops encrypted: a YAML or JSON tree (binary files too: sops wraps them in JSON) with
/// complete `sops` metadata, some ciphertext and no fake ciphertext; or such a dotenv file.
fn is_sops_file(bytes: &[u8]) -> bool {
    let tree = documents(bytes).iter().any(|doc| match doc {
        Document::Parsed(Value::Mapping(map)) => {
            let (mut sealed, mut fake) = (0, 0);
            for (key, value) in map {
                if key.as_str() != Some("sops") {
                    count_ciphertext(value, &mut sealed, &mut fake);
                }
            }
            seal_of(map.get("sops")).is_ok() && sealed > 0 && fake == 0
        }
        _ => false,
    });
    let text = decode(bytes);
    let entries = env_entries(&text);
    let (seal, data) = dotenv_seal(&entries);
    tree || (seal.is_ok()
        && data.iter().any(|(_, v)| is_sops_value(v))
        && data.iter().all(|(_, v)| v.is_empty() || is_sops_value(v)))
}

fn count_ciphertext(value: &Value, sealed: &mut usize, fake: &mut usize) {
    match untag(value) {
        Value::String(text) if text.starts_with("ENC[") => {
            *if is_sops_value(text) { &mut *sealed } else { &mut *fake } += 1;
        }
        Value::Sequence(items) => items.iter().for_each(|v| count_ciphertext(v, sealed, fake)),
        Value::Mapping(map) => map.values().for_each(|v| count_ciphertext(v, sealed, fake)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with sops's structure: data of `len` bytes, a 32-byte IV, a 16-byte tag.
    fn enc(len: usize, kind: &str) -> String {
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            B64.encode(vec![7u8; len]),
            B64.encode([1u8; SOPS_IV_LEN]),
            B64.encode([2u8; SOPS_TAG_LEN])
        )
    }

    fn sops_block() -> String {
        format!(
            "sops:\n  age:\n  - recipient: age1xyz\n    enc: |\n      -----BEGIN AGE ENCRYPTED FILE-----\n      YWdl\n      -----END AGE ENCRYPTED FILE-----\n  lastmodified: \"2026-11-24T12:00:00Z\"\n  mac: {}\n  version: 3.9.4\n",
            enc(SOPS_MAC_LEN, "str")
        )
    }

    fn leaks(path: &str, text: &str) -> Vec<(String, Vec<String>, String)> {
        let (found, _) = manifest_leaks(path, text.as_bytes());
        found.into_iter().map(|l| (l.secret, l.keys, l.reason)).collect()
    }

    /// Each form, clean and leaking: (case, file, the keys reported, a word of the reason).
    #[test]
    fn every_form_of_secret_is_judged() {
        let sealed = format!(
            "kind: Secret\nmetadata: {{name: s}}\nstringData:\n  P: {}\n{}",
            enc(9, "str"),
            sops_block()
        );
        let no_mac = sealed.replace("  mac: ENC", "  mac_: ENC");
        let no_recipient = sealed.replace("  age:\n", "  age_:\n");
        let short_iv = sealed.replace(&B64.encode([1u8; SOPS_IV_LEN]), &B64.encode([1u8; 12]));
        let groups = sealed.replace("  age:\n  - recipient", "  key_groups:\n  - age:\n    - recipient").replace("    enc: |\n      -----BEGIN AGE ENCRYPTED FILE-----\n      YWdl\n      -----END AGE ENCRYPTED FILE-----\n", "      enc: x\n");
        let listed = format!(
            "kind: List\nitems:\n- kind: Secret\n  metadata: {{name: s}}\n  data: {{P: '{}'}}\n{}",
            enc(9, "str"),
            sops_block()
        );
        let table: Vec<(&str, String, Vec<&str>, &str)> = vec![
            ("plain data", "kind: Secret\nmetadata: {name: a}\ndata: {PASSWORD: aHVudGVyMg==}\n".into(), vec!["data.PASSWORD"], "plain value"),
            ("plain stringData", "kind: Secret\nmetadata: {name: b}\nstringData: {TOKEN: x, N: 5}\n".into(), vec!["stringData.TOKEN", "stringData.N"], "plain"),
            ("null, empty and missing values", "kind: Secret\nmetadata: {name: e}\ndata: {A: null, B: '', C: ~}\nstringData:\n".into(), vec![], ""),
            ("sealed by sops", sealed.clone(), vec![], ""),
            ("sealed by sops key groups", groups, vec![], ""),
            ("sops without a version", sealed.replace("  version: 3.9.4\n", ""), vec!["stringData.P"], "no version"),
            ("sops without a mac", no_mac, vec!["stringData.P"], "no valid mac"),
            ("sops without a recipient", no_recipient, vec!["stringData.P"], "no recipient"),
            ("ENC with a 12-byte IV", short_iv, vec!["stringData.P"], "not SOPS ciphertext"),
            ("ENC without sops metadata", format!("kind: Secret\nmetadata: {{name: d}}\nstringData: {{P: '{}'}}\n", enc(3, "str")), vec!["stringData.P"], "no sops metadata"),
            ("ENC of an unknown type", sealed.replace("type:str]", "type:password]"), vec!["stringData.P"], "not SOPS"),
            ("fake ENC under a real-looking sops block", format!("kind: Secret\nmetadata: {{name: f}}\nstringData: {{P: 'ENC[AES256_GCM,data:aHVudGVy,iv:x,tag:y,type:str]'}}\n{}", sops_block()), vec!["stringData.P"], "not SOPS"),
            ("configmap", "kind: ConfigMap\nmetadata: {name: f}\ndata: {P: x}\n".into(), vec![], ""),
            ("sealed secret", "kind: SealedSecret\nmetadata: {name: f}\nspec: {encryptedData: {P: AgBy}}\n".into(), vec![], ""),
            ("after a broken document", "kind: ConfigMap\ndata: {a: [}\n---\nkind: Secret\nmetadata: {name: g}\ndata: {K: dg==}\n".into(), vec!["data.K"], "plain"),
            ("a broken Secret", "kind: Secret\nmetadata: {name: h}\ndata: {K: dg==, K: dg==}\n".into(), vec!["(unreadable)"], "does not parse"),
            ("a byte-order mark", "\u{feff}kind: Secret\nmetadata: {name: i}\ndata: {K: dg==}\n".into(), vec!["data.K"], "plain"),
            ("List", "kind: List\nitems:\n- kind: Secret\n  metadata: {name: j}\n  data: {K: dg==}\n".into(), vec!["data.K"], "plain"),
            ("SecretList", "kind: SecretList\nitems:\n- kind: Secret\n  metadata: {name: k}\n  data: {K: dg==}\n".into(), vec!["data.K"], "plain"),
            ("a List sealed at its top", listed, vec![], ""),
            ("JSON array", r#"[{"kind": "ConfigMap"}, {"kind": "Secret", "metadata": {"name": "l"}, "data": {"K": "dg=="}}]"#.into(), vec!["data.K"], "plain"),
            ("JSON object with an escaped slash", r#"{"kind": "Secret", "metadata": {"name": "m\/n"}, "stringData": {"K": "v"}}"#.into(), vec!["stringData.K"], "plain"),
            ("JSON stream", "{\"kind\": \"Secret\", \"data\": {\"A\": \"dg==\"}}\n{\"kind\": \"Secret\", \"data\": {\"B\": \"dg==\"}}\n".into(), vec!["data.A", "data.B"], "plain"),
            ("merge keys", "base: &b {K: dg==}\n---\nkind: Secret\nmetadata: {name: o}\ndata:\n  <<: {K: dg==}\n".into(), vec!["data.K"], "plain"),
            ("helm template", "{{- if .Values.create }}\nkind: Secret\nmetadata:\n  name: {{ include \"x\" . }}\ndata:\n  {{- range $k, $v := .Values.d }}\n  {{ $k }}: {{ $v | b64enc }}\n  {{- end }}\n  password: {{ .Values.pw | b64enc | quote }}\n{{- end }}\n".into(), vec![], ""),
            ("helm template with a literal", "kind: Secret\nmetadata: {name: p}\nstringData:\n  url: \"postgres://app:hunter2@{{ .Values.host }}/db\"\n".into(), vec!["stringData.url"], "plain"),
            ("flux substitution", "kind: Secret\nmetadata: {name: q}\nstringData: {P: '${DB_PASSWORD}', Q: '${DB:=hunter2}'}\n".into(), vec!["stringData.Q"], "plain"),
            ("last-applied annotation", format!("kind: Secret\nmetadata:\n  name: r\n  annotations:\n    {LAST_APPLIED}: '{{\"kind\":\"Secret\",\"stringData\":{{\"P\":\"hunter2\"}}}}'\nstringData:\n  P: {}\n{}", enc(9, "str"), sops_block()), vec!["stringData.P"], "annotation"),
            ("nested in another object", "kind: ClusterPolicy\nspec:\n  rules:\n  - generate:\n      kind: Secret\n      data: {stringData: {P: hunter2}}\n".into(), vec!["data.stringData"], "plain"),
            ("secretGenerator literals", "secretGenerator:\n- name: db\n  literals: [PASSWORD=hunter2, 'QUOTED=\"x\"', EMPTY=, 'T={{ .x }}']\n".into(), vec!["literals.PASSWORD", "literals.QUOTED"], "secretGenerator literal"),
            ("strategic-merge inline patch", "patches:\n- patch: |\n    kind: Secret\n    metadata: {name: db}\n    stringData: {P: hunter2}\n".into(), vec!["stringData.P"], "inline patch"),
            ("JSON 6902 inline patch", "patches:\n- target: {kind: Secret, name: db}\n  patch: |\n    - op: add\n      path: /data/P\n      value: aHVudGVy\n    - op: remove\n      path: /data/Q\n".into(), vec!["data.P"], "inline patch"),
            ("not yaml", "{{{{".into(), vec![], ""),
        ];
        for (case, text, keys, reason) in table {
            let found = leaks("k/kustomization.yaml", &text);
            let got: Vec<&str> = found
                .iter()
                .flat_map(|(_, k, _)| k.iter().map(String::as_str))
                .collect();
            assert_eq!(got, keys, "{case}: {found:?}");
            assert!(found.iter().all(|(_, _, r)| r.contains(reason)), "{case}: {found:?}");
            let shown = format!("{found:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("dg=="),
                "{case} shows a value: {shown}"
            );
        }
    }

    #[test]
    fn a_utf16_file_is_read() {
        let text = "kind: Secret\nmetadata: {name: u}\nstringData: {K: v}\n";
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(manifest_leaks("a.yaml", &bytes).0.len(), 1);
    }

    #[test]
    fn generators_name_the_files_they_read() {
        let text = "secretGenerator:\n- name: db\n  envs: [db.env]\n  env: old.env\n  files: [tls.key, ca=certs/ca.pem, a=b=c]\n";
        let (_, sources) = manifest_leaks("e/kustomization.yaml", text.as_bytes());
        let got: Vec<(&str, Option<&str>)> = sources
            .iter()
            .map(|(p, s)| (p.as_str(), s.file_key.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("db.env", None),
                ("old.env", None),
                ("tls.key", Some("tls.key")),
                ("certs/ca.pem", Some("ca"))
            ]
        );
    }

    #[test]
    fn env_files_are_read_as_kustomize_reads_them() {
        let source = GeneratorSource {
            kustomization: "k.yaml".into(),
            generator: "db".into(),
            file_key: None,
        };
        let plain = "\u{feff}# comment\n\n  PASSWORD=hunter2\nEMPTY=\nQUOTED=''\nFROM_ENV\n";
        let found = env_file_leaks(&source, plain.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].keys, ["envs.PASSWORD"]);
        let sealed = format!(
            "PASSWORD={}\nsops_age__list_0__map_enc=x\nsops_mac={}\nsops_version=3.9.4\n",
            enc(7, "str"),
            enc(SOPS_MAC_LEN, "str")
        );
        assert!(env_file_leaks(&source, sealed.as_bytes()).is_empty());
        assert!(is_sops_file(sealed.as_bytes()));
        let unsealed = sealed.replace("sops_age__list_0__map_enc=x\n", "");
        assert!(
            env_file_leaks(&source, unsealed.as_bytes())[0]
                .reason
                .contains("no recipient")
        );
    }

    #[test]
    fn only_files_sops_encrypted_count_as_such() {
        let yaml = format!("password: {}\n{}", enc(4, "str"), sops_block());
        let binary = format!(
            "{{\"data\": \"{}\", \"sops\": {}}}",
            enc(40, "str"),
            serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(&sops_block()).unwrap()["sops"]).unwrap()
        );
        assert!(is_sops_file(yaml.as_bytes()));
        assert!(is_sops_file(binary.as_bytes()));
        assert!(!is_sops_file(yaml.replace("  mac:", "  mac_:").as_bytes()));
        assert!(!is_sops_file(b"-----BEGIN PRIVATE KEY-----\nMIIE\n"));
        assert!(!is_sops_file(format!("password: hunter2\n{}", sops_block()).as_bytes()));
    }

    #[test]
    fn manifests_are_chosen_by_name() {
        for name in [
            "a.yaml",
            "a.YML",
            "a.Yaml",
            "s.yaml.tpl",
            "s.yml.j2",
            "s.json",
            "s.JSON.gotmpl",
            "kustomization",
            "Kustomization",
        ] {
            assert!(is_manifest(name), "{name}");
        }
        for name in ["README.md", "db.env", "yaml", "tls.key"] {
            assert!(!is_manifest(name), "{name}");
        }
    }

    #[test]
    fn documents_split_where_kubectl_splits_them_and_keep_their_line_numbers() {
        let text = "a: 1\n--- # two\nb: [\n---\nkind: Secret\n";
        let pieces: Vec<(usize, &str)> = split_documents(text, 1);
        assert_eq!(
            pieces,
            [(1, "a: 1\n"), (2, "--- # two\nb: [\n"), (4, "---\nkind: Secret\n")]
        );
        let broken: Vec<usize> = documents(text.as_bytes())
            .iter()
            .filter_map(|d| match d {
                Document::Broken { line, .. } => Some(*line),
                Document::Parsed(_) => None,
            })
            .collect();
        assert_eq!(broken, [2]);
    }
}
