//! age's X25519 recipient stanza for a recipient that many files are encrypted to, with a table of
//! its key's multiples made once.
//!
//! A full sync encrypts one credentials file per new environment, each with its own data key, and
//! so wraps one age file key per environment for the same recipient. age (`native/x25519.rs`,
//! `Recipient::wrap_file_key`) makes an ephemeral secret `e`, the share `[e]B` with the fixed
//! base point's table, and the shared secret `[e]P` with a Montgomery ladder over the recipient's
//! key `P`: 53 µs of the stanza's 84 µs here. The ladder is the general case of a variable point;
//! `P` does not vary within a run. With a table of `P`'s multiples (curve25519-dalek's
//! `EdwardsBasepointTable::create`, 1 ms, as for `B`), `[e]P` is a fixed-base multiplication: 16 µs.
//!
//! The stanza is the one age writes (c2sp.org/age, "X25519 recipient stanza"): the share's
//! u-coordinate as the argument, and the file key sealed under
//! `HKDF-SHA256(salt = share ‖ P, ikm = [e]P, info = "age-encryption.org/v1/X25519")`. The
//! u-coordinate of `[e]P` is the same for either Edwards point over `P`'s u-coordinate, so the
//! result equals X25519's. A key whose u-coordinate has no point on the curve (it lies on the
//! twist, where X25519 still computes) gets no table, and age's own recipient wraps for it.

use std::collections::HashSet;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use age_core::primitives::{aead_encrypt, hkdf};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64_NO_PAD;
use curve25519_dalek::edwards::{EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::traits::BasepointTable;
use zeroize::Zeroize;

/// age's tag and HKDF label for the X25519 stanza (age `native/x25519.rs`).
const TAG: &str = "X25519";
const LABEL: &[u8] = b"age-encryption.org/v1/X25519";

/// Files to encrypt for one recipient from which its table pays: making it (1 ms here) costs what
/// 29 files save (a 53 µs ladder each, against a 16 µs multiplication with the table).
pub const FILES_A_TABLE_PAYS_FOR: usize = 32;

/// A recipient's key with the table of its multiples.
pub struct Tabled {
    /// The key as the recipient string encodes it: the HKDF salt takes these bytes, as age does.
    key: [u8; 32],
    table: Box<EdwardsBasepointTable>,
}

impl Tabled {
    /// The table for the recipient whose key (its 32 bytes) is `key`; `None` when no curve point
    /// has that u-coordinate, or when the point is of small order (every shared secret with it is
    /// zero, which age refuses).
    pub fn new(key: [u8; 32]) -> Option<Tabled> {
        let point = MontgomeryPoint(key).to_edwards(0)?;
        if point.is_small_order() {
            return None;
        }
        Some(Tabled {
            key,
            table: Box::new(EdwardsBasepointTable::create(&point)),
        })
    }

    /// The shared secret of the ephemeral secret `esk` with this key: X25519(esk, key).
    fn shared(&self, esk: [u8; 32]) -> [u8; 32] {
        self.table.mul_base_clamped(esk).to_montgomery().to_bytes()
    }
}

impl age::Recipient for Tabled {
    fn wrap_file_key(&self, file_key: &FileKey) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let mut esk = [0u8; 32];
        getrandom::fill(&mut esk).map_err(|e| age::EncryptError::Io(std::io::Error::other(e)))?;
        // The share, as x25519-dalek's `PublicKey::from(&EphemeralSecret)` makes it.
        let share = EdwardsPoint::mul_base_clamped(esk).to_montgomery().to_bytes();
        let mut shared = self.shared(esk);
        esk.zeroize();
        if shared == [0u8; 32] {
            // Not reachable with a key that is not of small order; age panics here.
            return Err(age::EncryptError::Io(std::io::Error::other(
                "the X25519 shared secret is zero",
            )));
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&share);
        salt[32..].copy_from_slice(&self.key);
        let mut key = hkdf(&salt, LABEL, &shared);
        shared.zeroize();
        let body = aead_encrypt(&key, file_key.expose_secret());
        key.zeroize();
        let stanza = Stanza {
            tag: TAG.to_owned(),
            args: vec![B64_NO_PAD.encode(share)],
            body,
        };
        Ok((vec![stanza], HashSet::new()))
    }
}

/// The 32 bytes of an age recipient string (`age1…`), or `None` when it is not one.
pub fn key_of(recipient: &str) -> Option<[u8; 32]> {
    age_core::primitives::bech32_decode(
        recipient,
        |_| (),
        |hrp| if hrp.to_lowercase() == "age" { Ok(()) } else { Err(()) },
        |_, bytes| <[u8; 32]>::try_from(bytes.collect::<Vec<u8>>()).map_err(|_| ()),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};
    use std::str::FromStr;

    fn encrypt(recipient: &dyn age::Recipient, plaintext: &[u8]) -> Vec<u8> {
        let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient)).unwrap();
        let mut out = Vec::new();
        let mut writer = encryptor.wrap_output(&mut out).unwrap();
        writer.write_all(plaintext).unwrap();
        writer.finish().unwrap();
        out
    }

    fn decrypt(identity: &age::x25519::Identity, file: &[u8]) -> Vec<u8> {
        let decryptor = age::Decryptor::new(file).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(identity as &dyn age::Identity))
            .unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn a_file_wrapped_with_the_table_opens_with_ages_own_identity() {
        for _ in 0..16 {
            let identity = age::x25519::Identity::generate();
            let recipient = identity.to_public().to_string();
            let tabled = Tabled::new(key_of(&recipient).unwrap()).expect("a generated key is on the curve");
            let file = encrypt(&tabled, b"a data key of thirty-two bytes..");
            assert_eq!(decrypt(&identity, &file), b"a data key of thirty-two bytes..");
            // Another identity does not open it.
            let other = age::x25519::Identity::generate();
            let decryptor = age::Decryptor::new(file.as_slice()).unwrap();
            assert!(
                decryptor
                    .decrypt(std::iter::once(&other as &dyn age::Identity))
                    .is_err()
            );
        }
    }

    #[test]
    fn the_key_of_a_recipient_string_is_the_key_age_parses() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let key = key_of(&recipient).unwrap();
        // The same bytes, encoded again, give the same recipient string.
        let again = age::x25519::Recipient::from_str(&recipient).unwrap().to_string();
        assert_eq!(again, recipient);
        assert_eq!(key.len(), 32);
        assert_eq!(key_of("age1notbech32"), None);
        let secret = identity.to_string();
        assert_eq!(key_of(secret.expose_secret()), None, "an identity is not a recipient");
    }

    #[test]
    fn a_key_of_small_order_or_off_the_curve_gets_no_table() {
        // u = 0 is the point of order 2; u = 1 is of order 4.
        assert!(Tabled::new([0u8; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(Tabled::new(one).is_none());
        // u = 2 lies on the twist: no Edwards point has it.
        let mut two = [0u8; 32];
        two[0] = 2;
        assert!(MontgomeryPoint(two).to_edwards(0).is_none());
        assert!(Tabled::new(two).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The table's product is X25519's, for any key on the curve (whatever its torsion part
        /// and its top bit) and any secret.
        #[test]
        fn the_shared_secret_is_the_ladders(key in any::<[u8; 32]>(), esk in any::<[u8; 32]>()) {
            if let Some(tabled) = Tabled::new(key) {
                prop_assert_eq!(tabled.shared(esk), MontgomeryPoint(key).mul_clamped(esk).to_bytes());
            }
        }
    }
}
