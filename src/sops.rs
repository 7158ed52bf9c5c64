//! SOPS with age, in pure Rust: files that the `sops` CLI and Flux's kustomize-controller decrypt,
//! written without shelling out. Values under `data`/`stringData` become `ENC[AES256_GCM,...]`
//! (AES-256-GCM, 32-byte IV, the key path as associated data); the MAC is SHA-512 over every value
//! in document order, encrypted with the last-modified time as associated data; the 32-byte data key
//! is age-encrypted once per recipient.

use std::io::{Read, Write};
use std::str::FromStr;

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

/// Keys whose subtrees are encrypted, as Flux's documentation recommends for Secrets.
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// The sops version whose format prenv writes.
pub const SOPS_VERSION: &str = "3.9.4";
/// sops uses a 32-byte GCM nonce.
const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;
const DATA_KEY_LEN: usize = 32;

type Cipher = AesGcm<Aes256, U32>;

/// What can go wrong with a SOPS file. No variant ever carries a plaintext value or a key.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("{0}")]
    Format(String),
    #[error("no age identity given can decrypt the data key (recipients: {0}); set SOPS_AGE_KEY_FILE or --identity")]
    NoIdentity(String),
    #[error("value at {0} does not decrypt: the file was modified or the data key is wrong")]
    Tampered(String),
    #[error("the MAC does not match the values: the file was modified after encryption")]
    MacMismatch,
    #[error("age: {0}")]
    Age(String),
}

type Result<T> = std::result::Result<T, SopsError>;

fn is_encrypted_key(key: &str) -> bool {
    key == "data" || key == "stringData"
}

/// Encrypts a manifest (a JSON value, as read from YAML) for `recipients` (age public keys).
pub fn encrypt(doc: &Value, recipients: &[String], now: DateTime<Utc>) -> Result<Value> {
    let map = doc
        .as_object()
        .ok_or_else(|| SopsError::Format("a SOPS document must be a mapping".into()))?;
    if map.contains_key("sops") {
        return Err(SopsError::Format(
            "the document is already encrypted (it has a `sops` key)".into(),
        ));
    }
    if recipients.is_empty() {
        return Err(SopsError::Format(
            "no age recipients configured (secrets.age_recipients)".into(),
        ));
    }
    let mut data_key = [0u8; DATA_KEY_LEN];
    getrandom::fill(&mut data_key).map_err(|e| SopsError::Format(format!("no randomness: {e}")))?;
    let mut hasher = Sha512::new();
    let mut path = Vec::new();
    let encrypted = encrypt_map(map, &data_key, &mut path, false, &mut hasher)?;
    let lastmodified = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mac = encrypt_scalar(&Value::String(hex_upper(&hasher.finalize())), &data_key, &lastmodified)?;
    let age = recipients
        .iter()
        .map(|r| age_stanza(r, &data_key))
        .collect::<Result<Vec<_>>>()?;
    let mut out = encrypted;
    let mut sops = Map::new();
    sops.insert("age".into(), Value::Array(age));
    sops.insert("lastmodified".into(), Value::String(lastmodified));
    sops.insert("mac".into(), Value::String(mac));
    sops.insert("encrypted_regex".into(), Value::String(ENCRYPTED_REGEX.into()));
    sops.insert("version".into(), Value::String(SOPS_VERSION.into()));
    out.insert("sops".into(), Value::Object(sops));
    Ok(Value::Object(out))
}

fn encrypt_map(
    map: &Map<String, Value>,
    key: &[u8],
    path: &mut Vec<String>,
    inside: bool,
    hasher: &mut Sha512,
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in map {
        path.push(k.clone());
        let v = encrypt_value(v, key, path, inside || is_encrypted_key(k), hasher)?;
        path.pop();
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn encrypt_value(
    value: &Value,
    key: &[u8],
    path: &mut Vec<String>,
    inside: bool,
    hasher: &mut Sha512,
) -> Result<Value> {
    match value {
        Value::Object(map) => Ok(Value::Object(encrypt_map(map, key, path, inside, hasher)?)),
        Value::Array(items) => items
            .iter()
            .map(|item| encrypt_value(item, key, path, inside, hasher))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        scalar => {
            hasher.update(to_bytes(scalar));
            if inside && !is_empty(scalar) {
                Ok(Value::String(encrypt_scalar(scalar, key, &aad(path))?))
            } else {
                Ok(scalar.clone())
            }
        }
    }
}

/// Decrypts a SOPS document with any of `identities`, verifying the MAC; returns it without `sops`.
pub fn decrypt(doc: &Value, identities: &[age::x25519::Identity]) -> Result<Value> {
    let (key, meta) = data_key(doc, identities)?;
    let lastmodified = meta
        .get("lastmodified")
        .and_then(Value::as_str)
        .ok_or_else(|| SopsError::Format("sops.lastmodified is missing".into()))?;
    let mac = meta
        .get("mac")
        .and_then(Value::as_str)
        .ok_or_else(|| SopsError::Format("sops.mac is missing".into()))?;
    let mut body = doc.as_object().cloned().unwrap_or_default();
    body.remove("sops");
    let mut hasher = Sha512::new();
    let mut path = Vec::new();
    let plain = decrypt_map(&body, &key, &mut path, &mut hasher)?;
    let expected = decrypt_scalar(mac, &key, lastmodified).map_err(|_| SopsError::MacMismatch)?;
    if expected.as_str() != Some(hex_upper(&hasher.finalize()).as_str()) {
        return Err(SopsError::MacMismatch);
    }
    Ok(Value::Object(plain))
}

fn decrypt_map(
    map: &Map<String, Value>,
    key: &[u8],
    path: &mut Vec<String>,
    hasher: &mut Sha512,
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in map {
        path.push(k.clone());
        let v = decrypt_value(v, key, path, hasher)?;
        path.pop();
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn decrypt_value(value: &Value, key: &[u8], path: &mut Vec<String>, hasher: &mut Sha512) -> Result<Value> {
    match value {
        Value::Object(map) => Ok(Value::Object(decrypt_map(map, key, path, hasher)?)),
        Value::Array(items) => items
            .iter()
            .map(|item| decrypt_value(item, key, path, hasher))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        Value::String(s) if s.starts_with("ENC[") => {
            let plain = decrypt_scalar(s, key, &aad(path)).map_err(|_| SopsError::Tampered(path.join(".")))?;
            hasher.update(to_bytes(&plain));
            Ok(plain)
        }
        scalar => {
            hasher.update(to_bytes(scalar));
            Ok(scalar.clone())
        }
    }
}

/// Re-encrypts only the data key for a new set of recipients: every `ENC[...]` value, the MAC and
/// the last-modified time stay byte-identical, so the secrets (and the running database) are unchanged.
pub fn rewrap(doc: &Value, identities: &[age::x25519::Identity], recipients: &[String]) -> Result<Value> {
    if recipients.is_empty() {
        return Err(SopsError::Format("no age recipients to rewrap for".into()));
    }
    let (key, _) = data_key(doc, identities)?;
    let age = recipients
        .iter()
        .map(|r| age_stanza(r, &key))
        .collect::<Result<Vec<_>>>()?;
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

fn data_key<'a>(doc: &'a Value, identities: &[age::x25519::Identity]) -> Result<(Vec<u8>, &'a Map<String, Value>)> {
    let meta = doc
        .get("sops")
        .and_then(Value::as_object)
        .ok_or_else(|| SopsError::Format("not a SOPS document: no `sops` metadata".into()))?;
    let stanzas = meta.get("age").and_then(Value::as_array).cloned().unwrap_or_default();
    for stanza in &stanzas {
        let Some(enc) = stanza.get("enc").and_then(Value::as_str) else {
            continue;
        };
        let Ok(decryptor) = age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes())) else {
            continue;
        };
        let Ok(mut reader) = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) else {
            continue;
        };
        let mut key = Vec::new();
        reader
            .read_to_end(&mut key)
            .map_err(|e| SopsError::Age(e.to_string()))?;
        if key.len() != DATA_KEY_LEN {
            return Err(SopsError::Format(format!(
                "the data key has {} bytes, not {DATA_KEY_LEN}",
                key.len()
            )));
        }
        return Ok((key, meta));
    }
    Err(SopsError::NoIdentity(recipients(doc).join(", ")))
}

fn age_stanza(recipient: &str, data_key: &[u8]) -> Result<Value> {
    let parsed = age::x25519::Recipient::from_str(recipient)
        .map_err(|e| SopsError::Format(format!("age recipient {recipient:?}: {e}")))?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&parsed as &dyn age::Recipient))
        .map_err(|e| SopsError::Age(e.to_string()))?;
    let mut armored = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)
        .map_err(|e| SopsError::Age(e.to_string()))?;
    let mut writer = encryptor
        .wrap_output(armor)
        .map_err(|e| SopsError::Age(e.to_string()))?;
    writer.write_all(data_key).map_err(|e| SopsError::Age(e.to_string()))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| SopsError::Age(e.to_string()))?;
    let mut enc = String::from_utf8(armored).map_err(|e| SopsError::Age(e.to_string()))?;
    if !enc.ends_with('\n') {
        enc.push('\n');
    }
    let mut stanza = Map::new();
    stanza.insert("recipient".into(), Value::String(recipient.into()));
    stanza.insert("enc".into(), Value::String(enc));
    Ok(Value::Object(stanza))
}

/// The associated data of a value: its key path joined by `:`, with a trailing `:`.
fn aad(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

/// How sops feeds a value to the MAC (Python-style booleans, Go number formatting).
fn to_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bool(true) => b"True".to_vec(),
        Value::Bool(false) => b"False".to_vec(),
        Value::Number(n) => n.to_string().into_bytes(),
        Value::Null => Vec::new(),
        Value::Array(_) | Value::Object(_) => Vec::new(),
    }
}

fn is_empty(value: &Value) -> bool {
    matches!(value, Value::Null) || value.as_str() == Some("")
}

fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

fn encrypt_scalar(value: &Value, key: &[u8], aad: &str) -> Result<String> {
    let (mut plain, kind) = match value {
        Value::String(s) => (s.as_bytes().to_vec(), "str"),
        Value::Bool(b) => (if *b { b"True".to_vec() } else { b"False".to_vec() }, "bool"),
        Value::Number(n) if n.is_f64() => (n.to_string().into_bytes(), "float"),
        Value::Number(n) => (n.to_string().into_bytes(), "int"),
        _ => return Err(SopsError::Format("only scalars are encrypted".into())),
    };
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).map_err(|e| SopsError::Format(format!("no randomness: {e}")))?;
    let cipher = Cipher::new_from_slice(key).map_err(|_| SopsError::Format("data key is not 32 bytes".into()))?;
    let nonce = Nonce::<Cipher>::try_from(&iv[..]).expect("IV_LEN matches the cipher's nonce size");
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad.as_bytes(), plain.as_mut_slice().into())
        .map_err(|_| SopsError::Format("encryption failed".into()))?;
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        B64.encode(&plain),
        B64.encode(iv),
        B64.encode(tag.as_slice())
    ))
}

fn decrypt_scalar(enc: &str, key: &[u8], aad: &str) -> Result<Value> {
    let bad = || SopsError::Format("malformed ENC[...] value".into());
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(bad)?;
    let mut fields = std::collections::HashMap::new();
    for part in inner.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(bad)?;
        fields.insert(k, v);
    }
    let field = |name: &str| fields.get(name).copied().ok_or_else(bad);
    let mut data = B64.decode(field("data")?).map_err(|_| bad())?;
    let iv = B64.decode(field("iv")?).map_err(|_| bad())?;
    let tag = B64.decode(field("tag")?).map_err(|_| bad())?;
    if iv.len() != IV_LEN || tag.len() != TAG_LEN {
        return Err(bad());
    }
    let cipher = Cipher::new_from_slice(key).map_err(|_| bad())?;
    let nonce = Nonce::<Cipher>::try_from(&iv[..]).map_err(|_| bad())?;
    let tag = Tag::<Cipher>::try_from(&tag[..]).map_err(|_| bad())?;
    cipher
        .decrypt_inout_detached(&nonce, aad.as_bytes(), data.as_mut_slice().into(), &tag)
        .map_err(|_| SopsError::Tampered(aad.trim_end_matches(':').replace(':', ".")))?;
    let text = String::from_utf8(data).map_err(|_| bad())?;
    Ok(match field("type")? {
        "str" => Value::String(text),
        "bool" => Value::Bool(text == "True"),
        "int" => text.parse::<i64>().map(Value::from).map_err(|_| bad())?,
        "float" => text.parse::<f64>().map(Value::from).map_err(|_| bad())?,
        _ => Value::String(text),
    })
}

/// Reads a YAML (or JSON) document into a value with its key order kept.
pub fn parse_yaml(text: &str) -> Result<Value> {
    serde_yaml::from_str(text).map_err(|e| SopsError::Format(format!("not a YAML document: {e}")))
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

    #[test]
    fn a_secret_round_trips_and_only_its_data_is_encrypted() {
        let (id, public) = keypair();
        let enc = encrypt(&secret(), &[public], Utc::now()).unwrap();
        let pw = enc["stringData"]["MARIADB_PASSWORD"].as_str().unwrap();
        assert!(pw.starts_with("ENC[AES256_GCM,data:") && pw.ends_with(",type:str]"));
        assert_eq!(enc["metadata"]["name"], "mariadb-credentials");
        assert!(!enc.to_string().contains("s3cret-value"));
        assert_eq!(decrypt(&enc, &[id]).unwrap(), secret());
    }

    #[test]
    fn tampering_with_a_value_or_the_mac_is_rejected() {
        let (id, public) = keypair();
        let enc = encrypt(&secret(), &[public], Utc::now()).unwrap();
        let mut flipped = enc.clone();
        let pw = flipped["stringData"]["MARIADB_PASSWORD"].as_str().unwrap().to_string();
        let data = pw.split("data:").nth(1).unwrap().split(',').next().unwrap().to_string();
        let mut bytes = B64.decode(&data).unwrap();
        bytes[0] ^= 1;
        flipped["stringData"]["MARIADB_PASSWORD"] = json!(pw.replace(&data, &B64.encode(bytes)));
        assert!(matches!(
            decrypt(&flipped, std::slice::from_ref(&id)),
            Err(SopsError::Tampered(_))
        ));

        let mut renamed = enc.clone();
        renamed["metadata"]["name"] = json!("other");
        assert!(matches!(
            decrypt(&renamed, std::slice::from_ref(&id)),
            Err(SopsError::MacMismatch)
        ));

        let mut moved = enc.clone();
        let user = moved["stringData"]["MARIADB_USER"].clone();
        moved["stringData"]["MARIADB_PASSWORD"] = user;
        assert!(
            matches!(decrypt(&moved, &[id]), Err(SopsError::Tampered(_))),
            "values are bound to their key path"
        );
    }

    #[test]
    fn rewrap_changes_only_the_recipients() {
        let (old_id, old_pub) = keypair();
        let (new_id, new_pub) = keypair();
        let enc = encrypt(&secret(), &[old_pub], Utc::now()).unwrap();
        let re = rewrap(&enc, std::slice::from_ref(&old_id), std::slice::from_ref(&new_pub)).unwrap();
        assert_eq!(re["stringData"], enc["stringData"]);
        assert_eq!(re["sops"]["mac"], enc["sops"]["mac"]);
        assert_eq!(recipients(&re), vec![new_pub]);
        assert_eq!(decrypt(&re, &[new_id]).unwrap(), secret());
        assert!(matches!(decrypt(&re, &[old_id]), Err(SopsError::NoIdentity(_))));
    }

    #[test]
    fn errors_never_show_a_value() {
        let (_, public) = keypair();
        let (stranger, _) = keypair();
        let enc = encrypt(&secret(), &[public], Utc::now()).unwrap();
        let err = decrypt(&enc, &[stranger]).unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
