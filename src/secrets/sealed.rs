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

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::Tag;
    use rsa::RsaPrivateKey;

    /// Opens one value the way the controller does (`crypto.HybridDecrypt`).
    fn open(private: &RsaPrivateKey, b64: &str, label: &str) -> Option<Vec<u8>> {
        let blob = B64.decode(b64).ok()?;
        let len = usize::from(u16::from_be_bytes([blob[0], blob[1]]));
        let (wrapped, rest) = blob[2..].split_at(len);
        let session = private
            .decrypt(Oaep::new_with_label::<sha2_10::Sha256, _>(label), wrapped)
            .ok()?;
        let (body, tag) = rest.split_at(rest.len() - 16);
        let mut body = body.to_vec();
        Aes256Gcm::new_from_slice(&session)
            .ok()?
            .decrypt_inout_detached(
                &Nonce::<Aes256Gcm>::default(),
                &[],
                body.as_mut_slice().into(),
                &Tag::<Aes256Gcm>::try_from(tag).ok()?,
            )
            .ok()?;
        Some(body)
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_the_namespace_as_label() {
        // 1024 bits keeps the debug-build test fast; OAEP-SHA256 still fits the 32-byte session key.
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "shop-pr-3"},
            "type": "Opaque",
            "data": {"BLOB": B64.encode([0u8, 255, 7])},
            "stringData": {"PASSWORD": "hunter2-but-longer"},
        });
        let sealed = seal(&secret, &private.to_public_key()).unwrap();
        assert_eq!(sealed["kind"], "SealedSecret");
        assert_eq!(sealed["metadata"]["annotations"][NAMESPACE_WIDE], "true");
        assert_eq!(sealed["spec"]["template"]["type"], "Opaque");
        let data = &sealed["spec"]["encryptedData"];
        let password = data["PASSWORD"].as_str().unwrap();
        assert_eq!(open(&private, password, "shop-pr-3").unwrap(), b"hunter2-but-longer");
        assert_eq!(
            open(&private, data["BLOB"].as_str().unwrap(), "shop-pr-3").unwrap(),
            [0, 255, 7]
        );
        assert!(open(&private, password, "other-ns").is_none(), "bound to its namespace");
        assert!(
            open(&private, password, "shop-pr-3/creds").is_none(),
            "not strict scope"
        );
        assert!(!sealed.to_string().contains("hunter2"));
    }

    #[test]
    fn a_secret_without_a_namespace_is_refused() {
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let secret = json!({"metadata": {"name": "creds"}, "stringData": {"P": "x"}});
        let err = seal(&secret, &private.to_public_key()).unwrap_err().to_string();
        assert!(err.contains("namespace"), "{err}");
    }
}
