//! The Sealed Secrets backend (the Argo CD path): credentials sealed for a controller certificate
//! made by openssl, opened again with its private key exactly as the controller does.

mod common;

use std::process::Command;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use base64::Engine as _;
use common::*;
use rsa::pkcs8::DecodePrivateKey;

#[test]
fn mariadb_credentials_are_sealed_for_the_controller_and_open_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=sealed-secret",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = write_config(
        dir.path(),
        &format!(
            "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"argocd\"\ndatabases = [\"mariadb\"]\n[argocd]\nrepo_url = \"https://git.example.com/envs.git\"\n[secrets]\nbackend = \"sealed-secrets\"\nsealed_secrets_cert = \"{}\"\n",
            cert.display()
        ),
    );
    let prs = write_prs(dir.path(), &[gh_pr(7, "a", &"a".repeat(40), &[])]);
    let out_dir = dir.path().join("out");
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&prs),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let objects = kustomize(&out_dir.join("environments/shop-pr-7"));
    let sealed = objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("SealedSecret"))
        .expect("the environment builds with its SealedSecret");
    assert_eq!(str_at(sealed, &["metadata", "namespace"]), Some("shop-pr-7"));
    assert_eq!(
        str_at(
            sealed,
            &["metadata", "annotations", "sealedsecrets.bitnami.com/namespace-wide"]
        ),
        Some("true")
    );
    assert!(
        !objects.iter().any(|o| str_at(o, &["kind"]) == Some("Secret")),
        "no plain Secret"
    );

    let private = rsa::RsaPrivateKey::read_pkcs8_pem_file(&key).unwrap();
    let open = |b64: &str| -> String {
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let len = usize::from(u16::from_be_bytes([blob[0], blob[1]]));
        let (wrapped, rest) = blob[2..].split_at(len);
        let padding = rsa::Oaep::new_with_label::<sha2_10::Sha256, _>("shop-pr-7");
        let session = private
            .decrypt(padding, wrapped)
            .expect("the namespace is the OAEP label");
        let (body, tag) = rest.split_at(rest.len() - 16);
        let mut body = body.to_vec();
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&session).unwrap();
        let tag = Tag::<aes_gcm::Aes256Gcm>::try_from(tag).unwrap();
        cipher
            .decrypt_inout_detached(
                &Nonce::<aes_gcm::Aes256Gcm>::default(),
                &[],
                body.as_mut_slice().into(),
                &tag,
            )
            .unwrap();
        String::from_utf8(body).unwrap()
    };
    let data = &sealed["spec"]["encryptedData"];
    assert_eq!(open(data["MARIADB_USER"].as_str().unwrap()), "app");
    let password = open(data["MARIADB_PASSWORD"].as_str().unwrap());
    assert_eq!(password.len(), 32);
    let file = std::fs::read_to_string(out_dir.join("environments/shop-pr-7/mariadb-credentials.sealed.yaml")).unwrap();
    assert!(!file.contains(&password));

    // A second render keeps the sealed file byte for byte.
    let again = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&prs),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("environments/shop-pr-7/mariadb-credentials.sealed.yaml")).unwrap(),
        file
    );
}

/// The Argo CD example as a user copies it: its environments carry credentials Argo CD can create
/// (a SealedSecret the controller opens; Argo CD cannot decrypt SOPS), sealed for the committed
/// example certificate (public only: its key was thrown away when it was made).
#[test]
fn the_argocd_example_seals_its_database_credentials_and_commits_no_sops_file() {
    let cert = std::fs::read_to_string(repo_root().join("examples/sealed-secrets-cert.pem")).unwrap();
    assert!(
        cert.contains("BEGIN CERTIFICATE") && !cert.contains("PRIVATE KEY"),
        "a public certificate only"
    );
    let dir = render_example("prenv-argocd.toml");
    let envs = dir.path().join("environments");
    let mut checked = 0;
    for env in std::fs::read_dir(&envs).unwrap().map(|e| e.unwrap().path()) {
        let files: Vec<String> = std::fs::read_dir(&env)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !files.iter().any(|f| f.contains(".sops.")),
            "{}: {files:?}",
            env.display()
        );
        let objects = kustomize(&env);
        let sealed = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("SealedSecret"))
            .unwrap_or_else(|| panic!("{}: no SealedSecret", env.display()));
        assert_eq!(str_at(sealed, &["apiVersion"]), Some("bitnami.com/v1alpha1"));
        let data = sealed["spec"]["encryptedData"].as_mapping().unwrap();
        for key in ["MARIADB_USER", "MARIADB_PASSWORD", "MARIADB_ROOT_PASSWORD"] {
            let blob = base64::engine::general_purpose::STANDARD
                .decode(data[key].as_str().unwrap())
                .unwrap();
            // kubeseal's layout: the session key wrapped for the certificate's 4096-bit key.
            assert_eq!(u16::from_be_bytes([blob[0], blob[1]]), 512, "{key}");
        }
        assert!(
            !objects.iter().any(|o| str_at(o, &["kind"]) == Some("Secret")),
            "{}: the controller makes the Secret; none is committed",
            env.display()
        );
        checked += 1;
    }
    assert!(checked > 0, "the example renders environments");
}
