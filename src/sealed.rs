//! Sealed Secrets, the Argo CD path: a Secret sealed for the controller's public certificate in the
//! format `kubeseal` writes (namespace-wide scope), so only the controller in the cluster can open it.
//! Each value: a fresh 32-byte AES-256-GCM session key (zero nonce, used once), the session key
//! RSA-OAEP-SHA256-encrypted with the namespace as label, laid out as a 2-byte big-endian length,
//! the RSA ciphertext, then the AES ciphertext.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use serde_json::{Map, Value, json};

/// The annotation that makes a SealedSecret usable under any name within its namespace.
pub const NAMESPACE_WIDE: &str = "sealedsecrets.bitnami.com/namespace-wide";
const SESSION_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Format(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// Reads the controller's public key from `kubeseal --fetch-cert` output (a PEM certificate) or a
/// PEM public key.
pub fn public_key_from_pem(pem: &str) -> Result<RsaPublicKey, SealError> {
    let bad = |m: String| SealError::Format(format!("sealed-secrets certificate: {m}"));
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(format!("not PEM: {e}")))?;
    let spki = match block.label.as_str() {
        "CERTIFICATE" => {
            let cert = block
                .parse_x509()
                .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
            cert.public_key().raw.to_vec()
        }
        "PUBLIC KEY" => block.contents.clone(),
        other => {
            return Err(bad(format!(
                "a PEM {other:?} block; expected CERTIFICATE (kubeseal --fetch-cert)"
            )));
        }
    };
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(format!("not an RSA public key: {e}")))
}

/// Seals one value for a namespace (`label` = the namespace, kubeseal's namespace-wide scope).
pub fn hybrid_encrypt(key: &RsaPublicKey, plaintext: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
    let mut session = [0u8; SESSION_KEY_LEN];
    getrandom::fill(&mut session).map_err(|e| SealError::Crypto(e.to_string()))?;
    let padding = Oaep::new_with_label::<sha2_10::Sha256, _>(label);
    let wrapped = key
        .encrypt(&mut rand_core::OsRng, padding, &session)
        .map_err(|e| SealError::Crypto(e.to_string()))?;
    let len = u16::try_from(wrapped.len()).map_err(|_| SealError::Crypto("RSA key too large".into()))?;
    let cipher = Aes256Gcm::new_from_slice(&session).map_err(|e| SealError::Crypto(e.to_string()))?;
    let mut body = plaintext.to_vec();
    // The session key is used for this one value only, so a zero nonce is safe (as kubeseal does).
    let nonce = Nonce::<Aes256Gcm>::default();
    let tag = cipher
        .encrypt_inout_detached(&nonce, &[], body.as_mut_slice().into())
        .map_err(|e| SealError::Crypto(e.to_string()))?;
    let mut out = Vec::with_capacity(2 + wrapped.len() + body.len() + tag.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

/// Turns a Secret (`stringData` and/or base64 `data`) into a namespace-wide SealedSecret.
pub fn seal(secret: &Value, key: &RsaPublicKey) -> Result<Value, SealError> {
    let meta = &secret["metadata"];
    let name = meta["name"]
        .as_str()
        .ok_or_else(|| SealError::Format("the Secret has no metadata.name".into()))?;
    let namespace = meta["namespace"].as_str().ok_or_else(|| {
        SealError::Format(format!(
            "Secret {name} has no metadata.namespace; sealing is per namespace"
        ))
    })?;
    let mut encrypted = Map::new();
    for (field, decode) in [("data", true), ("stringData", false)] {
        let Some(map) = secret.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in map {
            let text = v
                .as_str()
                .ok_or_else(|| SealError::Format(format!("{field}.{k} is not a string")))?;
            let bytes = if decode {
                B64.decode(text)
                    .map_err(|_| SealError::Format(format!("data.{k} is not base64")))?
            } else {
                text.as_bytes().to_vec()
            };
            encrypted.insert(
                k.clone(),
                Value::String(B64.encode(hybrid_encrypt(key, &bytes, namespace)?)),
            );
        }
    }
    let annotations = json!({ NAMESPACE_WIDE: "true" });
    Ok(json!({
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "encryptedData": encrypted,
            "template": {
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                "type": secret.get("type").cloned().unwrap_or_else(|| json!("Opaque")),
            },
        },
    }))
}
