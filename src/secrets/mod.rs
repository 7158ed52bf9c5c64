//! Secrets: the SOPS format ([`sops`]), Sealed Secrets ([`sealed`]), and per-environment database
//! credentials — strong random values generated once per environment, committed only encrypted, and
//! never regenerated while the environment lives (the encrypted file is kept byte for byte, so
//! syncs do not churn and the database keeps its password).
//!
//! The shell loads the sealing material once per run ([`Material`]); the pure core asks it for new
//! credentials through [`CredentialMaker`], so tests can hand the core a deterministic maker.

pub mod sealed;
pub mod sops;
mod x25519;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::{Error, Result};
use crate::model::config::{Config, SecretsBackend};
use crate::model::layout::MARIADB_SECRET_NAME;
use crate::model::meta::EnvMeta;
use crate::model::parallel;

/// Length of generated passwords: 32 alphanumerics carry about 190 bits.
const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Makes the encrypted credentials file of a new environment.
pub trait CredentialMaker {
    /// The file's bytes: a Secret with fresh credentials, SOPS-encrypted or sealed.
    fn mariadb_credentials(&mut self, meta: &EnvMeta, now: DateTime<Utc>) -> Result<Vec<u8>>;

    /// [`CredentialMaker::mariadb_credentials`] of each of `metas`, in their order; the first
    /// error of them is the answer. A maker may make them side by side.
    fn mariadb_credentials_of(&mut self, metas: &[&EnvMeta], now: DateTime<Utc>) -> Result<Vec<Vec<u8>>> {
        metas.iter().map(|meta| self.mariadb_credentials(meta, now)).collect()
    }
}

/// What protecting credentials needs, loaded once per run: the age recipients (SOPS) or the Sealed
/// Secrets controller's public key.
pub enum Material {
    Sops { recipients: Vec<String> },
    Sealed { key: Box<rsa::RsaPublicKey> },
}

impl Material {
    /// From the config and, for sealed secrets, the controller's certificate (PEM text read by the
    /// shell from `secrets.sealed_secrets_cert`; `origin` names it in errors).
    pub fn new(config: &Config, certificate: Option<(&str, &str)>) -> Result<Material> {
        match config.secrets.backend {
            SecretsBackend::Sops => Ok(Material::Sops {
                recipients: config.secrets.age_recipients.clone(),
            }),
            SecretsBackend::SealedSecrets => {
                let (pem, origin) = certificate.ok_or_else(|| Error::Config {
                    path: "prenv.toml".into(),
                    message: "key `secrets.sealed_secrets_cert` is missing; with backend = \"sealed-secrets\" prenv seals for the controller's certificate (kubeseal --fetch-cert > cert.pem)".into(),
                })?;
                let key = sealed::public_key_from_pem(pem).map_err(|e| Error::Secrets {
                    what: format!("reading {origin}"),
                    source: Box::new(e),
                })?;
                Ok(Material::Sealed { key: Box::new(key) })
            }
        }
    }
}

impl CredentialMaker for Material {
    fn mariadb_credentials(&mut self, meta: &EnvMeta, now: DateTime<Utc>) -> Result<Vec<u8>> {
        credentials(&self.sealer(1)?, meta, now)
    }

    /// On every core: a full sync of 10,000 environments with MariaDB encrypted as many secrets
    /// (an age stanza each), a third of its time on one core.
    fn mariadb_credentials_of(&mut self, metas: &[&EnvMeta], now: DateTime<Utc>) -> Result<Vec<Vec<u8>>> {
        // A run that makes none reads no recipient, as before there were batches.
        if metas.is_empty() {
            return Ok(Vec::new());
        }
        let sealer = self.sealer(metas.len())?;
        let made = parallel::by_parts(metas, |part| {
            part.iter()
                .map(|meta| credentials(&sealer, meta, now))
                .collect::<Result<Vec<_>>>()
        });
        let mut all = Vec::with_capacity(metas.len());
        for part in made {
            all.extend(part?);
        }
        Ok(all)
    }
}

/// The material made ready for a batch of files.
enum Sealer<'a> {
    Sops(sops::Recipients),
    Sealed(&'a rsa::RsaPublicKey),
}

impl Material {
    /// Ready for `files` files: age recipients are parsed once, with their tables for a batch.
    fn sealer(&self, files: usize) -> Result<Sealer<'_>> {
        match self {
            Material::Sops { recipients } => {
                sops::Recipients::new(recipients, files)
                    .map(Sealer::Sops)
                    .map_err(|e| Error::Secrets {
                        what: "reading the age recipients (secrets.age_recipients)".into(),
                        source: Box::new(e),
                    })
            }
            Material::Sealed { key } => Ok(Sealer::Sealed(key)),
        }
    }
}

fn credentials(sealer: &Sealer<'_>, meta: &EnvMeta, now: DateTime<Utc>) -> Result<Vec<u8>> {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": MARIADB_SECRET_NAME, "namespace": meta.namespace},
        "type": "Opaque",
        "stringData": {
            "MARIADB_DATABASE": "app",
            "MARIADB_USER": "app",
            "MARIADB_PASSWORD": password()?,
            "MARIADB_ROOT_PASSWORD": password()?,
        },
    });
    let what = || format!("protecting the credentials of {}", meta.env);
    let protected = match sealer {
        Sealer::Sops(recipients) => sops::encrypt_for(&secret, recipients, now).map_err(|e| Error::Secrets {
            what: what(),
            source: Box::new(e),
        })?,
        Sealer::Sealed(key) => sealed::seal(&secret, key).map_err(|e| Error::Secrets {
            what: what(),
            source: Box::new(e),
        })?,
    };
    Ok(crate::manifests::yaml::to_string(&protected)?.into_bytes())
}

/// A uniformly random alphanumeric password from the operating system's generator.
pub fn password() -> Result<String> {
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LEN {
        getrandom::fill(&mut buf).map_err(|source| Error::Randomness {
            what: "a database password",
            source,
        })?;
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        for b in buf.iter().filter(|b| usize::from(**b) < limit) {
            if out.len() == PASSWORD_LEN {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

/// Reads age identities (`AGE-SECRET-KEY-...` lines; `#` comments) from a file's text.
pub fn parse_identities(text: &str, origin: &str) -> Result<Vec<age::x25519::Identity>> {
    let bad = |message: &str| Error::Identity {
        path: origin.to_string(),
        message: message.into(),
    };
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(age::x25519::Identity::from_str)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("a line starting with AGE-SECRET-KEY- is not a valid age identity"))?;
    if ids.is_empty() {
        return Err(bad(
            "holds no age identity (AGE-SECRET-KEY-... line); create one with age-keygen",
        ));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_different() {
        let a = password().unwrap();
        let b = password().unwrap();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    fn meta(n: u64) -> EnvMeta {
        serde_json::from_value(json!({
            "generator": "prenv", "schema": 1, "env": format!("shop-pr-{n}"), "namespace": format!("shop-pr-{n}"),
            "pr": n, "head_sha": "0000000000000000000000000000000000000007", "head_ref": "f/7",
            "url": format!("https://shop-pr-{n}.p.example.com"), "image": "r/i:pr-7", "databases": ["mariadb"],
            "created_at": "2026-11-24T12:00:00Z", "closed_at": null, "merged": false
        }))
        .unwrap()
    }

    /// Made side by side, each file is its own environment's, in order, with its own passwords,
    /// and opens with the recipients' identity.
    #[test]
    fn many_credentials_are_made_on_every_core_each_for_its_environment() {
        let identity = age::x25519::Identity::generate();
        let mut material = Material::Sops {
            recipients: vec![identity.to_public().to_string()],
        };
        let metas: Vec<EnvMeta> = (1..=(parallel::PARALLEL_FROM as u64 + 9)).map(meta).collect();
        let asked: Vec<&EnvMeta> = metas.iter().collect();
        let now = "2026-11-24T12:00:00Z".parse().unwrap();
        let made = material.mariadb_credentials_of(&asked, now).unwrap();
        assert_eq!(made.len(), metas.len());
        let mut passwords = std::collections::BTreeSet::new();
        for (meta, bytes) in metas.iter().zip(&made) {
            let doc = sops::parse_yaml(std::str::from_utf8(bytes).unwrap()).unwrap();
            let secret = sops::decrypt(&doc, std::slice::from_ref(&identity)).unwrap();
            assert_eq!(secret["metadata"]["namespace"], json!(meta.namespace));
            assert!(passwords.insert(secret["stringData"]["MARIADB_PASSWORD"].as_str().unwrap().to_string()));
        }
    }

    /// A recipient that is no age key fails the run that makes credentials, naming the setting,
    /// and no other run.
    #[test]
    fn a_bad_recipient_fails_only_a_run_that_makes_credentials() {
        let mut material = Material::Sops {
            recipients: vec!["age1notakey".into()],
        };
        let now = "2026-11-24T12:00:00Z".parse().unwrap();
        assert!(material.mariadb_credentials_of(&[], now).unwrap().is_empty());
        let one = meta(1);
        let e = material.mariadb_credentials_of(&[&one], now).unwrap_err();
        assert!(e.to_string().contains("secrets.age_recipients"), "{e}");
        let e = material.mariadb_credentials(&one, now).unwrap_err();
        assert!(e.to_string().contains("secrets.age_recipients"), "{e}");
    }

    #[test]
    fn a_bad_identity_file_is_an_identity_error() {
        let Err(e) = parse_identities("# nothing here\n", "key.txt") else {
            panic!("a file without identities was accepted")
        };
        assert_eq!(e.metric_label(), "identity");
        assert!(e.to_string().contains("key.txt") && e.to_string().contains("age-keygen"));
    }
}
