//! SOPS with age, in pure Rust: files that the `sops` CLI and Flux's kustomize-controller decrypt,
//! written without shelling out, so per-PR credentials reach the repository only encrypted.
//!
//! The format, as sops (getsops/sops `aes/cipher.go`, `sops.go`, `stores/stores.go`,
//! `age/keysource.go`) defines it:
//! - a value becomes `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str|int|float|bool]`: AES-256-GCM with a
//!   32-byte IV, the associated data being the value's key path joined by `:` with a trailing `:`
//!   (list items add nothing to the path); empty strings and nulls stay as they are;
//! - the MAC is SHA-512 over every non-null value in document order (encrypted or not, unless
//!   `mac_only_encrypted`), as upper-case hex, itself encrypted with the `lastmodified` time
//!   (RFC 3339, whole seconds) as associated data;
//! - the 32-byte data key is age-encrypted and ASCII-armored once per recipient (`sops.age[].enc`);
//! - the `sops` map comes last, its keys in the order sops writes them.

use std::io::{Read, Write};
use std::str::FromStr;

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use regex::Regex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

use super::x25519;

/// Keys whose subtrees are encrypted, as Flux's documentation recommends for Secrets.
pub use crate::model::layout::SOPS_ENCRYPTED_REGEX as ENCRYPTED_REGEX;
/// The sops version recorded in files prenv writes (informational: sops reads any 3.x file).
pub const SOPS_VERSION: &str = "3.9.4";
/// sops seals values with a 32-byte GCM nonce, not the usual 12 bytes.
const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;
const DATA_KEY_LEN: usize = 32;
/// sops seeds the MAC with these bytes when `mac_only_encrypted` is set, so that such a MAC never
/// equals one over all values (sops.go `MACOnlyEncryptedInitialization`).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b, 0x0b, 0x97, 0x5b,
    0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

type Cipher = AesGcm<Aes256, U32>;

/// What can go wrong with a SOPS file. No variant ever carries a plaintext value or a key; paths
/// (`stringData.PASSWORD`) and public recipients are not secret.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    /// The input is not a document prenv can encrypt, or not a well-formed SOPS file.
    #[error("{0}")]
    Format(String),
    /// The file uses a sops feature prenv does not implement.
    #[error("unsupported SOPS file: {0}; decrypt it with the sops CLI instead")]
    Unsupported(String),
    /// None of the identities opens any `sops.age` stanza.
    #[error("{}", no_identity_message(.0))]
    NoIdentity(Vec<String>),
    /// A value does not decrypt under its key path: changed, moved, or not encrypted at all.
    #[error("value at {0} does not decrypt: the file was modified after encryption or the data key is wrong")]
    Tampered(String),
    /// Every value decrypts but the MAC disagrees: something was changed, added or removed.
    #[error("the MAC does not match the values: the file was modified after encryption")]
    MacMismatch,
    /// The age library failed while wrapping or unwrapping the data key.
    #[error("age: {0}")]
    Age(String),
}

fn no_identity_message(recipients: &[String]) -> String {
    if recipients.is_empty() {
        "the file has no age recipient (its data key is protected by other key types only)".into()
    } else {
        format!(
            "no age identity given can decrypt the data key; the file is encrypted for {}: pass the identity of one of them",
            recipients.join(", ")
        )
    }
}

type Result<T> = std::result::Result<T, SopsError>;

/// The data key; never printed.
struct DataKey([u8; DATA_KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// Which values a file encrypts: sops allows exactly one rule per file.
enum Rule {
    EncryptedRegex(Regex),
    UnencryptedRegex(Regex),
    EncryptedSuffix(String),
    UnencryptedSuffix(String),
}

impl Rule {
    /// The rule of every file prenv encrypts. Compiled once: building the regex cost more than
    /// the encryption of a small file, and a full sync encrypts one file per environment.
    fn flux() -> Rule {
        static FLUX: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(ENCRYPTED_REGEX).expect("ENCRYPTED_REGEX is a valid regex"));
        Rule::EncryptedRegex(FLUX.clone())
    }

    fn from_metadata(meta: &Map<String, Value>) -> Result<Rule> {
        let text = |key: &str| meta.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
        let regex = |key: &str, pattern: &str| {
            Regex::new(pattern).map_err(|e| SopsError::Format(format!("sops.{key} is not a valid regex: {e}")))
        };
        let set: Vec<&str> = [
            "encrypted_regex",
            "unencrypted_regex",
            "encrypted_suffix",
            "unencrypted_suffix",
            "encrypted_comment_regex",
            "unencrypted_comment_regex",
        ]
        .into_iter()
        .filter(|key| text(key).is_some())
        .collect();
        match set.as_slice() {
            // sops's default when a file names no rule.
            [] => Ok(Rule::UnencryptedSuffix("_unencrypted".into())),
            ["encrypted_regex"] => {
                regex("encrypted_regex", text("encrypted_regex").unwrap_or_default()).map(Rule::EncryptedRegex)
            }
            ["unencrypted_regex"] => {
                regex("unencrypted_regex", text("unencrypted_regex").unwrap_or_default()).map(Rule::UnencryptedRegex)
            }
            ["encrypted_suffix"] => Ok(Rule::EncryptedSuffix(
                text("encrypted_suffix").unwrap_or_default().into(),
            )),
            ["unencrypted_suffix"] => Ok(Rule::UnencryptedSuffix(
                text("unencrypted_suffix").unwrap_or_default().into(),
            )),
            [comment] => Err(SopsError::Unsupported(format!(
                "sops.{comment} selects values by YAML comments, which prenv does not read"
            ))),
            several => Err(SopsError::Format(format!(
                "sops metadata sets several encryption rules ({}); sops allows one",
                several.join(", ")
            ))),
        }
    }

    /// Whether the value at `path` is (to be) encrypted: any key on the path decides, as in sops.
    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::EncryptedRegex(re) => path.iter().any(|k| re.is_match(k)),
            Rule::UnencryptedRegex(re) => !path.iter().any(|k| re.is_match(k)),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
        }
    }
}

/// Encrypts a manifest (a JSON value, as read from YAML) for `recipients` (age public keys):
/// every value under a `data` or `stringData` key becomes `ENC[...]`, and the `sops` metadata is
/// appended with `now` as its last-modified time.
pub fn encrypt(doc: &Value, recipients: &[String], now: DateTime<Utc>) -> Result<Value> {
    encrypt_for(doc, &Recipients::new(recipients, 1)?, now)
}

/// [`encrypt`] for recipients parsed once for a batch of files.
pub fn encrypt_for(doc: &Value, recipients: &Recipients, now: DateTime<Utc>) -> Result<Value> {
    let map = doc
        .as_object()
        .ok_or_else(|| SopsError::Format("a SOPS document must be a mapping".into()))?;
    if map.contains_key("sops") {
        return Err(SopsError::Format(
            "the document is already encrypted (it has a `sops` key)".into(),
        ));
    }
    if recipients.0.is_empty() {
        return Err(SopsError::Format(
            "no age recipients configured (secrets.age_recipients)".into(),
        ));
    }
    let mut bytes = [0u8; DATA_KEY_LEN];
    getrandom::fill(&mut bytes).map_err(|e| SopsError::Format(format!("no randomness: {e}")))?;
    let key = DataKey(bytes);
    bytes.fill(0);
    // Wrap the key first: a bad recipient fails before any work is done.
    let age = recipients.stanzas(&key)?;

    let rule = Rule::flux();
    let mut mac = Sha512::new();
    let mut encrypt_leaf = |leaf: &Value, path: &[String]| -> Result<Value> {
        mac.update(plaintext_bytes(leaf)?.0);
        if rule.encrypts(path) {
            encrypt_scalar(leaf, &key, &aad(path))
        } else {
            Ok(leaf.clone())
        }
    };
    let Value::Object(mut out) = walk(doc, &mut Vec::new(), &mut encrypt_leaf)? else {
        unreachable!("walking a mapping yields a mapping")
    };
    let lastmodified = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let digest = Value::String(hex::encode_upper(mac.finalize()));
    let mac = encrypt_scalar(&digest, &key, &lastmodified)?;

    // Key order as sops writes it: key types, lastmodified, mac, the rule, version.
    let mut sops = Map::new();
    sops.insert("age".into(), Value::Array(age));
    sops.insert("lastmodified".into(), Value::String(lastmodified));
    sops.insert("mac".into(), mac);
    sops.insert("encrypted_regex".into(), Value::String(ENCRYPTED_REGEX.into()));
    sops.insert("version".into(), Value::String(SOPS_VERSION.into()));
    out.insert("sops".into(), Value::Object(sops));
    Ok(Value::Object(out))
}

/// Decrypts a SOPS document with any of `identities`, verifying the MAC; returns it without `sops`.
///
/// Honours the file's own rule (`encrypted_regex`, `unencrypted_suffix`, … or sops's default) and
/// `mac_only_encrypted`, so files written by the sops CLI open too.
pub fn decrypt(doc: &Value, identities: &[age::x25519::Identity]) -> Result<Value> {
    let meta = metadata(doc)?;
    let key = data_key(meta, identities)?;
    open(doc, meta, &key)
}

/// Re-encrypts only the data key for a new set of recipients, as `sops updatekeys` does: every
/// `ENC[...]` value, the MAC and the last-modified time stay byte-identical (the MAC covers values,
/// not recipients), so the secrets, and the database using them, are unchanged. The file is
/// verified first, so a tampered file is never passed on under new keys.
pub fn rewrap(doc: &Value, identities: &[age::x25519::Identity], recipients: &[String]) -> Result<Value> {
    if recipients.is_empty() {
        return Err(SopsError::Format("no age recipients to rewrap for".into()));
    }
    let meta = metadata(doc)?;
    let key = data_key(meta, identities)?;
    open(doc, meta, &key)?;
    let age = Recipients::new(recipients, 1)?.stanzas(&key)?;
    let mut out = doc.clone();
    out["sops"]["age"] = Value::Array(age);
    Ok(out)
}

/// The age recipients a document is currently encrypted for.
pub fn recipients(doc: &Value) -> Vec<String> {
    doc.get("sops")
        .and_then(|s| s.get("age"))
        .and_then(Value::as_array)
        .map(|stanzas| {
            stanzas
                .iter()
                .filter_map(|s| s.get("recipient").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a YAML (or JSON) document into a value with its key order kept, ready for [`decrypt`].
pub fn parse_yaml(text: &str) -> Result<Value> {
    serde_yaml::from_str(text).map_err(|e| SopsError::Format(format!("not a YAML document: {e}")))
}

fn metadata(doc: &Value) -> Result<&Map<String, Value>> {
    doc.get("sops")
        .and_then(Value::as_object)
        .ok_or_else(|| SopsError::Format("not a SOPS document: no `sops` metadata".into()))
}

/// Decrypts every value the file's rule covers and checks the MAC.
fn open(doc: &Value, meta: &Map<String, Value>, key: &DataKey) -> Result<Value> {
    let rule = Rule::from_metadata(meta)?;
    let lastmodified = meta
        .get("lastmodified")
        .and_then(Value::as_str)
        .ok_or_else(|| SopsError::Format("sops.lastmodified is missing".into()))?;
    // sops parses the time and formats it again (Go's RFC 3339: whole seconds, `Z` for UTC).
    let lastmodified = DateTime::parse_from_rfc3339(lastmodified)
        .map_err(|e| SopsError::Format(format!("sops.lastmodified is not an RFC 3339 time: {e}")))?
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let stored_mac = meta
        .get("mac")
        .and_then(Value::as_str)
        .ok_or_else(|| SopsError::Format("sops.mac is missing".into()))?;
    let mac_only_encrypted = meta.get("mac_only_encrypted").and_then(Value::as_bool).unwrap_or(false);

    let mut body = doc.as_object().cloned().unwrap_or_default();
    body.remove("sops");
    let mut mac = Sha512::new();
    if mac_only_encrypted {
        mac.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut decrypt_leaf = |leaf: &Value, path: &[String]| -> Result<Value> {
        let encrypted = rule.encrypts(path);
        let plain = match leaf {
            Value::String(s) if encrypted && s.is_empty() => leaf.clone(),
            Value::String(s) if encrypted => decrypt_scalar(s, key, &aad(path))?,
            _ if encrypted => return Err(SopsError::Tampered(path.join("."))),
            _ => leaf.clone(),
        };
        if encrypted || !mac_only_encrypted {
            mac.update(plaintext_bytes(&plain)?.0);
        }
        Ok(plain)
    };
    let plain = walk(&Value::Object(body), &mut Vec::new(), &mut decrypt_leaf)?;
    let expected = hex::encode_upper(mac.finalize());
    match decrypt_scalar(stored_mac, key, &lastmodified) {
        Ok(Value::String(found)) if found == expected => Ok(plain),
        _ => Err(SopsError::MacMismatch),
    }
}

/// Rebuilds `value` with every non-null scalar replaced by `leaf(scalar, key path)`; nulls are
/// skipped, as sops skips them (they are neither encrypted nor part of the MAC).
fn walk(
    value: &Value,
    path: &mut Vec<String>,
    leaf: &mut dyn FnMut(&Value, &[String]) -> Result<Value>,
) -> Result<Value> {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                path.push(k.clone());
                let v = walk(v, path, leaf);
                path.pop();
                out.insert(k.clone(), v?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(walk(item, path, leaf)?);
            }
            Ok(Value::Array(out))
        }
        Value::Null => Ok(Value::Null),
        scalar => leaf(scalar, path),
    }
}

/// The associated data of a value: its key path joined by `:`, with a trailing `:`.
fn aad(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

/// A scalar as sops feeds it to both the cipher and the MAC, with its `type:` tag: booleans
/// Python-style (`True`), floats the way Go's `FormatFloat(f, 'f', -1, 64)` writes them.
fn plaintext_bytes(value: &Value) -> Result<(Vec<u8>, &'static str)> {
    Ok(match value {
        Value::String(s) => (s.as_bytes().to_vec(), "str"),
        Value::Bool(true) => (b"True".to_vec(), "bool"),
        Value::Bool(false) => (b"False".to_vec(), "bool"),
        Value::Number(n) => match n.as_i64() {
            Some(i) => (i.to_string().into_bytes(), "int"),
            // Rust's shortest round-trip notation without exponent equals Go's 'f', -1.
            None if n.is_f64() => (n.as_f64().unwrap_or_default().to_string().into_bytes(), "float"),
            None => {
                return Err(SopsError::Format(
                    "an integer does not fit in 64 bits; sops cannot represent it".into(),
                ));
            }
        },
        Value::Null | Value::Array(_) | Value::Object(_) => {
            return Err(SopsError::Format("only scalars are encrypted".into()));
        }
    })
}

fn encrypt_scalar(value: &Value, key: &DataKey, aad: &str) -> Result<Value> {
    let (mut data, kind) = plaintext_bytes(value)?;
    if data.is_empty() && kind == "str" {
        // sops leaves empty strings as they are.
        return Ok(value.clone());
    }
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).map_err(|e| SopsError::Format(format!("no randomness: {e}")))?;
    let cipher = Cipher::new_from_slice(&key.0).expect("the data key is 32 bytes");
    let nonce = Nonce::<Cipher>::try_from(&iv[..]).expect("IV_LEN matches the cipher's nonce size");
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad.as_bytes(), data.as_mut_slice().into())
        .map_err(|_| SopsError::Format("AES-GCM encryption failed".into()))?;
    Ok(Value::String(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        B64.encode(&data),
        B64.encode(iv),
        B64.encode(tag.as_slice())
    )))
}

/// Opens one `ENC[...]` value; any failure means the file was changed (or the key is wrong).
fn decrypt_scalar(enc: &str, key: &DataKey, aad: &str) -> Result<Value> {
    let tampered = || SopsError::Tampered(aad.trim_end_matches(':').replace(':', "."));
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(tampered)?;
    let mut data = None;
    let mut iv = None;
    let mut tag = None;
    let mut kind = None;
    for part in inner.split(',') {
        match part.split_once(':').ok_or_else(tampered)? {
            ("data", v) => data = Some(v),
            ("iv", v) => iv = Some(v),
            ("tag", v) => tag = Some(v),
            ("type", v) => kind = Some(v),
            _ => return Err(tampered()),
        }
    }
    let decode = |field: Option<&str>| field.and_then(|f| B64.decode(f).ok()).ok_or_else(tampered);
    let mut data = decode(data)?;
    let iv = decode(iv)?;
    let tag = decode(tag)?;
    let kind = kind.ok_or_else(tampered)?;
    if iv.len() != IV_LEN || tag.len() != TAG_LEN {
        return Err(tampered());
    }
    let cipher = Cipher::new_from_slice(&key.0).expect("the data key is 32 bytes");
    let nonce = Nonce::<Cipher>::try_from(&iv[..]).map_err(|_| tampered())?;
    let tag = Tag::<Cipher>::try_from(&tag[..]).map_err(|_| tampered())?;
    cipher
        .decrypt_inout_detached(&nonce, aad.as_bytes(), data.as_mut_slice().into(), &tag)
        .map_err(|_| tampered())?;
    let text = String::from_utf8(data).map_err(|_| {
        SopsError::Unsupported(format!(
            "the value at {} is binary",
            aad.trim_end_matches(':').replace(':', ".")
        ))
    })?;
    // sops does not authenticate `type:`, so a value that does not parse as its type was changed.
    Ok(match kind {
        "str" | "time" | "bytes" | "comment" => Value::String(text),
        "int" => Value::from(text.parse::<i64>().map_err(|_| tampered())?),
        "float" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(tampered)?,
        "bool" => Value::Bool(go_parse_bool(&text).ok_or_else(tampered)?),
        other => {
            return Err(SopsError::Unsupported(format!("values of type {other:?}")));
        }
    })
}

/// Go's `strconv.ParseBool`, which sops uses for `type:bool`.
fn go_parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The data key from the first `sops.age` stanza one of `identities` opens.
fn data_key(meta: &Map<String, Value>, identities: &[age::x25519::Identity]) -> Result<DataKey> {
    if meta
        .get("key_groups")
        .and_then(Value::as_array)
        .is_some_and(|groups| !groups.is_empty())
    {
        return Err(SopsError::Unsupported(
            "key groups (Shamir secret sharing of the data key)".into(),
        ));
    }
    let stanzas = meta
        .get("age")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for stanza in stanzas {
        let Some(enc) = stanza.get("enc").and_then(Value::as_str) else {
            continue;
        };
        let Ok(decryptor) = age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes())) else {
            continue;
        };
        let Ok(mut reader) = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(DATA_KEY_LEN);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| SopsError::Age(e.to_string()))?;
        let key = <[u8; DATA_KEY_LEN]>::try_from(bytes.as_slice()).map(DataKey);
        bytes.fill(0);
        return key
            .map_err(|_| SopsError::Format(format!("the age-encrypted data key does not have {DATA_KEY_LEN} bytes")));
    }
    let recipients = stanzas
        .iter()
        .filter_map(|s| s.get("recipient").and_then(Value::as_str).map(String::from))
        .collect();
    Err(SopsError::NoIdentity(recipients))
}

/// The age recipients of a batch of files, parsed once, each once.
pub struct Recipients(Vec<Recipient>);

struct Recipient {
    text: String,
    wrap: Wrap,
}

/// How a recipient wraps a data key: age's own recipient, or the same stanza made with a table of
/// the recipient's multiples, which pays from [`x25519::FILES_A_TABLE_PAYS_FOR`] files on.
enum Wrap {
    Ladder(age::x25519::Recipient),
    Tabled(x25519::Tabled),
}

impl Recipients {
    /// `recipients` (age public keys, duplicates dropped) for a batch of `files` files.
    pub fn new(recipients: &[String], files: usize) -> Result<Recipients> {
        let mut seen = std::collections::HashSet::new();
        recipients
            .iter()
            .filter(|r| seen.insert(r.as_str()))
            .map(|text| {
                let parsed = age::x25519::Recipient::from_str(text)
                    .map_err(|e| SopsError::Format(format!("age recipient {text:?}: {e}")))?;
                let tabled = (files >= x25519::FILES_A_TABLE_PAYS_FOR)
                    .then(|| x25519::key_of(text).and_then(x25519::Tabled::new))
                    .flatten();
                Ok(Recipient {
                    text: text.clone(),
                    wrap: tabled.map_or(Wrap::Ladder(parsed), Wrap::Tabled),
                })
            })
            .collect::<Result<_>>()
            .map(Recipients)
    }

    /// How many of the recipients wrap with a table (the rest with age's ladder).
    pub fn tabled(&self) -> usize {
        self.0.iter().filter(|r| matches!(r.wrap, Wrap::Tabled(_))).count()
    }

    /// One `{recipient, enc}` stanza per recipient, each its own armored age file.
    fn stanzas(&self, key: &DataKey) -> Result<Vec<Value>> {
        self.0.iter().map(|r| r.stanza(key)).collect()
    }
}

impl Recipient {
    fn stanza(&self, key: &DataKey) -> Result<Value> {
        let wrap: &dyn age::Recipient = match &self.wrap {
            Wrap::Ladder(recipient) => recipient,
            Wrap::Tabled(recipient) => recipient,
        };
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(wrap)).map_err(|e| SopsError::Age(e.to_string()))?;
        let mut armored = Vec::new();
        let armor = age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)
            .map_err(|e| SopsError::Age(e.to_string()))?;
        let mut writer = encryptor
            .wrap_output(armor)
            .map_err(|e| SopsError::Age(e.to_string()))?;
        writer.write_all(&key.0).map_err(|e| SopsError::Age(e.to_string()))?;
        writer
            .finish()
            .and_then(|armor| armor.finish())
            .map_err(|e| SopsError::Age(e.to_string()))?;
        let mut enc = String::from_utf8(armored).map_err(|e| SopsError::Age(e.to_string()))?;
        // sops's armor ends with a newline; keeping it makes the YAML a `|` block like sops's own.
        if !enc.ends_with('\n') {
            enc.push('\n');
        }
        let mut stanza = Map::new();
        stanza.insert("recipient".into(), Value::String(self.text.clone()));
        stanza.insert("enc".into(), Value::String(enc));
        Ok(Value::Object(stanza))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "mariadb-credentials", "namespace": "shop-pr-1"},
            "type": "Opaque",
            "stringData": {"MARIADB_USER": "app", "MARIADB_PASSWORD": "s3cret-value"}
        })
    }

    fn keypair() -> (age::x25519::Identity, String) {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        (id, public)
    }

    fn now() -> DateTime<Utc> {
        "2026-01-02T03:04:05Z".parse().unwrap()
    }

    #[test]
    fn a_secret_round_trips_and_only_its_data_is_encrypted() {
        let (id, public) = keypair();
        let enc = encrypt(&secret(), &[public], now()).unwrap();
        let pw = enc["stringData"]["MARIADB_PASSWORD"].as_str().unwrap();
        assert!(pw.starts_with("ENC[AES256_GCM,data:") && pw.ends_with(",type:str]"));
        assert_eq!(enc["metadata"]["name"], "mariadb-credentials");
        assert_eq!(enc["sops"]["lastmodified"], "2026-01-02T03:04:05Z");
        assert!(!enc.to_string().contains("s3cret-value"));
        assert_eq!(decrypt(&enc, &[id]).unwrap(), secret());
    }

    #[test]
    fn the_sops_map_comes_last_with_its_keys_in_sops_order() {
        let (_, public) = keypair();
        let enc = encrypt(&secret(), &[public], now()).unwrap();
        assert_eq!(enc.as_object().unwrap().keys().next_back().unwrap(), "sops");
        let keys: Vec<_> = enc["sops"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["age", "lastmodified", "mac", "encrypted_regex", "version"]);
    }

    #[test]
    fn scalars_are_written_the_way_sops_writes_them() {
        let cases = [
            (json!("x"), "x", "str"),
            (json!(true), "True", "bool"),
            (json!(false), "False", "bool"),
            (json!(42), "42", "int"),
            (json!(-7), "-7", "int"),
            (json!(1.0), "1", "float"),
            (json!(1.5), "1.5", "float"),
            (json!(1e21), "1000000000000000000000", "float"),
            (json!(0.000001), "0.000001", "float"),
        ];
        for (value, bytes, kind) in cases {
            let (b, k) = plaintext_bytes(&value).unwrap();
            assert_eq!((String::from_utf8(b).unwrap().as_str(), k), (bytes, kind), "{value}");
        }
    }

    #[test]
    fn values_of_every_type_round_trip_and_empty_ones_stay_plain() {
        let (id, public) = keypair();
        let doc = json!({"kind": "X", "ratio": 1.0, "data": {
            "s": "text", "i": 3, "f": 2.5, "b": false, "e": "", "n": null, "l": ["a", 1, {"deep": "v"}]
        }});
        let enc = encrypt(&doc, &[public], now()).unwrap();
        assert_eq!(enc["data"]["e"], "");
        assert_eq!(enc["data"]["n"], Value::Null);
        assert!(enc["data"]["l"][2]["deep"].as_str().unwrap().starts_with("ENC["));
        assert_eq!(decrypt(&enc, &[id]).unwrap(), doc);
    }

    #[test]
    fn list_items_share_their_key_path_as_associated_data() {
        let (id, public) = keypair();
        let enc = encrypt(&json!({"data": {"l": ["a", "b"]}}), &[public], now()).unwrap();
        let key = data_key(metadata(&enc).unwrap(), &[id]).unwrap();
        let item = enc["data"]["l"][1].as_str().unwrap();
        assert_eq!(decrypt_scalar(item, &key, "data:l:").unwrap(), "b");
        assert!(decrypt_scalar(item, &key, "data:l:1:").is_err());
    }

    #[test]
    fn tampering_with_a_value_or_the_mac_is_rejected() {
        let (id, public) = keypair();
        let enc = encrypt(&secret(), &[public], now()).unwrap();
        let ids = std::slice::from_ref(&id);
        let mut flipped = enc.clone();
        let pw = flipped["stringData"]["MARIADB_PASSWORD"].as_str().unwrap().to_string();
        let data = pw.split("data:").nth(1).unwrap().split(',').next().unwrap().to_string();
        let mut bytes = B64.decode(&data).unwrap();
        bytes[0] ^= 1;
        flipped["stringData"]["MARIADB_PASSWORD"] = json!(pw.replace(&data, &B64.encode(bytes)));
        assert!(matches!(decrypt(&flipped, ids), Err(SopsError::Tampered(_))));

        let mut renamed = enc.clone();
        renamed["metadata"]["name"] = json!("other");
        assert!(matches!(decrypt(&renamed, ids), Err(SopsError::MacMismatch)));

        let mut later = enc.clone();
        later["sops"]["lastmodified"] = json!("2026-01-02T03:04:06Z");
        assert!(matches!(decrypt(&later, ids), Err(SopsError::MacMismatch)));

        let mut moved = enc.clone();
        let user = moved["stringData"]["MARIADB_USER"].clone();
        moved["stringData"]["MARIADB_PASSWORD"] = user;
        assert!(
            matches!(decrypt(&moved, ids), Err(SopsError::Tampered(_))),
            "values are bound to their key path"
        );

        let mut plain = enc.clone();
        plain["stringData"]["MARIADB_PASSWORD"] = json!("chosen-by-attacker");
        assert!(
            matches!(decrypt(&plain, ids), Err(SopsError::Tampered(p)) if p == "stringData.MARIADB_PASSWORD"),
            "a plain value where the rule says encrypted is refused, as sops refuses it"
        );
    }

    #[test]
    fn the_file_rule_decides_what_is_decrypted() {
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        let meta = |k: &str, v: &str| json!({ k: v }).as_object().unwrap().clone();
        let table = [
            (meta("encrypted_regex", "^data$"), "metadata.data.x", true),
            (meta("encrypted_regex", "^data$"), "metadata.name", false),
            (meta("unencrypted_regex", "^kind$"), "kind", false),
            (meta("encrypted_suffix", "_secret"), "db_secret.pw", true),
            (meta("unencrypted_suffix", "_plain"), "a.b_plain", false),
            (Map::new(), "password", true),
            (Map::new(), "name_unencrypted", false),
        ];
        for (meta, p, encrypted) in table {
            let rule = Rule::from_metadata(&meta).unwrap();
            assert_eq!(rule.encrypts(&path(p)), encrypted, "{meta:?} {p}");
        }
        assert!(matches!(
            Rule::from_metadata(&meta("unencrypted_comment_regex", "x")),
            Err(SopsError::Unsupported(_))
        ));
    }

    #[test]
    fn a_file_with_the_mac_over_encrypted_values_only_opens() {
        let (id, public) = keypair();
        let enc = encrypt(&secret(), &[public], now()).unwrap();
        let key = data_key(metadata(&enc).unwrap(), std::slice::from_ref(&id)).unwrap();
        let mut mac = Sha512::new();
        mac.update(MAC_ONLY_ENCRYPTED_INIT);
        mac.update(b"app");
        mac.update(b"s3cret-value");
        let mut doc = enc.clone();
        doc["sops"]["mac_only_encrypted"] = json!(true);
        doc["sops"]["mac"] =
            encrypt_scalar(&json!(hex::encode_upper(mac.finalize())), &key, "2026-01-02T03:04:05Z").unwrap();
        assert_eq!(decrypt(&doc, std::slice::from_ref(&id)).unwrap(), secret());
        doc["metadata"]["name"] = json!("unprotected-by-this-mac");
        assert!(decrypt(&doc, &[id]).is_ok());
    }

    #[test]
    fn rewrap_changes_only_the_recipients() {
        let (old_id, old_pub) = keypair();
        let (new_id, new_pub) = keypair();
        let enc = encrypt(&secret(), &[old_pub], now()).unwrap();
        let re = rewrap(&enc, std::slice::from_ref(&old_id), std::slice::from_ref(&new_pub)).unwrap();
        assert_eq!(re["stringData"], enc["stringData"]);
        assert_eq!(re["sops"]["mac"], enc["sops"]["mac"]);
        assert_eq!(re["sops"]["lastmodified"], enc["sops"]["lastmodified"]);
        assert_eq!(recipients(&re), vec![new_pub]);
        assert_eq!(decrypt(&re, &[new_id]).unwrap(), secret());
        assert!(matches!(decrypt(&re, &[old_id]), Err(SopsError::NoIdentity(_))));
    }

    #[test]
    fn rewrap_refuses_a_tampered_file() {
        let (id, public) = keypair();
        let (_, other) = keypair();
        let mut enc = encrypt(&secret(), &[public], now()).unwrap();
        enc["metadata"]["namespace"] = json!("elsewhere");
        assert!(matches!(rewrap(&enc, &[id], &[other]), Err(SopsError::MacMismatch)));
    }

    #[test]
    fn duplicate_recipients_get_one_stanza() {
        let (_, public) = keypair();
        let enc = encrypt(&secret(), &[public.clone(), public.clone()], now()).unwrap();
        assert_eq!(recipients(&enc), vec![public]);
    }

    #[test]
    fn errors_never_show_a_value_and_name_the_recipients() {
        let (_, public) = keypair();
        let (stranger, _) = keypair();
        let enc = encrypt(&secret(), std::slice::from_ref(&public), now()).unwrap();
        let err = decrypt(&enc, &[stranger]).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(&public), "{shown}");
        assert_eq!(format!("{:?}", DataKey([7; 32])), "DataKey(redacted)");
    }
}
