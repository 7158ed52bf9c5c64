//! Per-environment database credentials: strong random values generated once per environment,
//! committed only SOPS/age-encrypted, and never regenerated while the environment lives (the
//! encrypted file is kept byte for byte, so syncs do not churn and the database keeps its password).

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::{Config, Database, SecretsBackend};
use crate::error::{Error, Result};
use crate::plan::{EnvMeta, Plan};
use crate::render::env_dir;
use crate::sops;

/// The Secret `overlays/mariadb` reads its credentials from.
pub const MARIADB_SECRET_NAME: &str = "mariadb-credentials";
/// Its file in each environment directory, SOPS-encrypted or sealed.
pub fn secret_file(config: &Config) -> &'static str {
    match config.secrets.backend {
        SecretsBackend::Sops => "mariadb-credentials.sops.yaml",
        SecretsBackend::SealedSecrets => "mariadb-credentials.sealed.yaml",
    }
}
/// Length of generated passwords: 32 alphanumerics carry about 190 bits.
const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The environments of a plan that need a credentials file, with its path.
pub fn wanted<'a>(config: &Config, plan: &'a Plan) -> impl Iterator<Item = (String, &'a EnvMeta)> {
    let file = secret_file(config);
    plan.desired()
        .filter(|m| m.databases.contains(&Database::Mariadb))
        .map(move |m| (format!("{}/{file}", env_dir(m.env.as_str())), m))
}

/// A fresh, encrypted credentials Secret for one environment.
pub fn new_mariadb_secret(config: &Config, meta: &EnvMeta, now: DateTime<Utc>) -> Result<String> {
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
    let protected = match config.secrets.backend {
        SecretsBackend::Sops => {
            sops::encrypt(&secret, &config.secrets.age_recipients, now).map_err(|e| Error::Secrets {
                what: what(),
                source: Box::new(e),
            })?
        }
        SecretsBackend::SealedSecrets => {
            let key = sealing_key(config)?;
            crate::sealed::seal(&secret, &key).map_err(|e| Error::Secrets {
                what: what(),
                source: Box::new(e),
            })?
        }
    };
    crate::yaml::to_string(&protected)
}

/// The Sealed Secrets controller's public key, from `secrets.sealed_secrets_cert`.
pub fn sealing_key(config: &Config) -> Result<rsa::RsaPublicKey> {
    let path = Path::new(config.secrets.sealed_secrets_cert.as_deref().unwrap_or_default());
    let pem =
        std::fs::read_to_string(path).map_err(|e| Error::io("reading the sealed-secrets certificate", path, e))?;
    crate::sealed::public_key_from_pem(&pem).map_err(|e| Error::Secrets {
        what: format!("reading {}", path.display()),
        source: Box::new(e),
    })
}

/// A uniformly random alphanumeric password from the operating system's generator.
pub fn password() -> Result<String> {
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LEN {
        getrandom::fill(&mut buf).map_err(|e| Error::Render(format!("no randomness for a password: {e}")))?;
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

/// Reads age identities (`AGE-SECRET-KEY-...` lines; `#` comments) from a file.
pub fn load_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading age identity file", path, e))?;
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(age::x25519::Identity::from_str)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Config {
            path: path.display().to_string(),
            message: "a line starting with AGE-SECRET-KEY- is not a valid age identity".into(),
        })?;
    if ids.is_empty() {
        return Err(Error::Config {
            path: path.display().to_string(),
            message: "holds no age identity (AGE-SECRET-KEY-... line); create one with age-keygen".into(),
        });
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
}
