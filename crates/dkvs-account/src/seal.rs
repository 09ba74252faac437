//! Sealed boxes (encryption to an account) and symmetric keys derived from an account.
//!
//! # Sealed boxes
//!
//! [`seal`] encrypts to an account's public key; only [`Keypair::open`] with that account's key
//! pair decrypts. The sender stays anonymous: a box carries no sender key, so a mail layer that
//! wants authenticity signs the plaintext before it seals it.
//!
//! Key agreement uses the account key itself:
//! - **Ed25519** accounts use X25519 on the birationally equivalent curve: the secret is the
//!   account's Ed25519 scalar (`SigningKey::to_scalar_bytes`, clamped by X25519), the public
//!   key is the Montgomery form of the account's public key (`VerifyingKey::to_montgomery`).
//! - **secp256k1** accounts use secp256k1 ECDH; the shared secret is the x-coordinate of the
//!   shared point.
//!
//! Each box uses a fresh ephemeral key of the recipient's curve, so each box has its own
//! ChaCha20-Poly1305 key, derived with HKDF-SHA256:
//!
//! ```text
//! ikm  = shared secret (32 bytes)
//! salt = "dkvs-seal-v1"
//! info = version (1) || key type code || ephemeral public key || recipient public key
//! key  = HKDF-Expand(HKDF-Extract(salt, ikm), info, 32)
//! ```
//!
//! The recipient public key in `info` is the account's own public key (32-byte Ed25519 or
//! 33-byte compressed SEC1), so a box is bound to one account. Since a key encrypts exactly
//! one message, the AEAD nonce is the constant all-zero 12-byte nonce and the AAD is empty
//! (the header is bound through `info`).
//!
//! The sealed format, byte by byte:
//!
//! | offset    | length | field                                                        |
//! |-----------|--------|--------------------------------------------------------------|
//! | 0         | 1      | version, `1`                                                 |
//! | 1         | 1      | recipient key type code ([`KeyType::code`])                  |
//! | 2         | E      | ephemeral public key                                         |
//! | 2 + E     | n      | ChaCha20-Poly1305 ciphertext of the n-byte plaintext         |
//! | 2 + E + n | 16     | Poly1305 tag                                                 |
//!
//! where E is 32 for ed25519 (code 1; an X25519 u-coordinate) and 33 for secp256k1 (code 2; a
//! compressed SEC1 point).
//!
//! A box is therefore [`overhead`] bytes longer than its plaintext: 50 for ed25519, 51 for
//! secp256k1.
//!
//! ```
//! use dkvs_account::{KeyType, Keypair, seal};
//!
//! let bob = Keypair::generate(KeyType::Ed25519);
//! let sealed = seal::seal(bob.public(), b"hi bob");
//! assert_eq!(sealed.len(), b"hi bob".len() + seal::overhead(KeyType::Ed25519));
//! assert_eq!(bob.open(&sealed).unwrap(), b"hi bob");
//! ```
//!
//! # Symmetric keys
//!
//! [`Keypair::derive_symmetric_key`] derives a [`SymmetricKey`] for a named purpose (for example
//! encrypting one's own files before they leave the device). Its format is
//! `nonce (24 random bytes) || XChaCha20-Poly1305 ciphertext || tag (16 bytes)`.
//!
//! ```
//! use dkvs_account::{KeyType, Keypair};
//!
//! let me = Keypair::generate(KeyType::Secp256k1);
//! let key = me.derive_symmetric_key("example-files-v1");
//! let sealed = key.encrypt(b"my file", b"file name");
//! assert_eq!(key.decrypt(&sealed, b"file name").unwrap(), b"my file");
//! assert!(key.decrypt(&sealed, b"another name").is_err());
//! ```

use std::fmt;

use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _, Nonce, XChaCha20Poly1305, XNonce};
use k256::elliptic_curve::Generate as _;
use rand::Rng as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{KeyType, Keypair, PublicKey};

/// The version byte of the sealed-box format this code writes and reads.
const VERSION: u8 = 1;
/// HKDF salt of sealed boxes.
const SEAL_SALT: &[u8] = b"dkvs-seal-v1";
/// HKDF salt of [`Keypair::derive_symmetric_key`].
const SYMMETRIC_SALT: &[u8] = b"dkvs-symmetric-key-v1";
/// Length of a Poly1305 tag.
const TAG_LEN: usize = 16;
/// Length of an XChaCha20-Poly1305 nonce.
const XNONCE_LEN: usize = 24;

/// Length in bytes of the ephemeral public key in a box sealed for `key_type`.
const fn ephemeral_len(key_type: KeyType) -> usize {
    match key_type {
        KeyType::Ed25519 => 32,
        KeyType::Secp256k1 => 33,
    }
}

/// How many bytes longer than its plaintext a box sealed for a `key_type` account is:
/// 50 for Ed25519, 51 for secp256k1.
pub const fn overhead(key_type: KeyType) -> usize {
    2 + ephemeral_len(key_type) + TAG_LEN
}

/// Why a sealed box or symmetric ciphertext could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The input is too short to hold even the header and tag.
    #[error("sealed data is {len} bytes, shorter than the minimum of {min}")]
    TooShort {
        /// The input's length.
        len: usize,
        /// The shortest valid input for this key.
        min: usize,
    },
    /// The version byte is not one this code reads.
    #[error("unknown sealed box version {0} (known: 1)")]
    UnknownVersion(u8),
    /// The key type byte names no key type.
    #[error("unknown key type code {0} in sealed box (known: 1 = ed25519, 2 = secp256k1)")]
    UnknownKeyType(u8),
    /// The box was sealed for another type of key than the one opening it.
    #[error("box is sealed for a {sealed_for} key, but this key is {key}")]
    KeyTypeMismatch {
        /// The key type the box was sealed for.
        sealed_for: KeyType,
        /// The key type of the key pair that tried to open it.
        key: KeyType,
    },
    /// The ephemeral public key is not a valid (or is a small-order) point.
    #[error("sealed box holds an invalid {0} ephemeral public key")]
    InvalidEphemeralKey(KeyType),
    /// Authentication failed: the data was encrypted for another key, or was altered.
    #[error("decryption failed: encrypted for another key, or altered")]
    DecryptionFailed,
    /// A sealed key opened to something that is not a 32-byte key.
    #[error("the sealed box holds {len} bytes, not a 32-byte key")]
    NotAKey {
        /// What it held.
        len: usize,
    },
}

/// Encrypts `plaintext` so that only the holder of `recipient`'s key pair can read it.
///
/// The result is [`overhead`] bytes longer than the plaintext; see the [module docs](self)
/// for the format.
///
/// # Panics
///
/// If `plaintext` is 256 GiB or longer (the ChaCha20 limit of one message).
pub fn seal(recipient: &PublicKey, plaintext: &[u8]) -> Vec<u8> {
    let key_type = recipient.key_type();
    let mut rng = rand::rng();
    let (ephemeral, shared): (Vec<u8>, Zeroizing<[u8; 32]>) =
        match (recipient.as_ed25519(), recipient.as_secp256k1()) {
            (Some(key), None) => {
                let recipient_x = x25519_dalek::PublicKey::from(key.to_montgomery().to_bytes());
                let secret = x25519_dalek::EphemeralSecret::random_from_rng(&mut rng);
                let ephemeral = x25519_dalek::PublicKey::from(&secret);
                let shared = secret.diffie_hellman(&recipient_x);
                (ephemeral.as_bytes().to_vec(), Zeroizing::new(shared.to_bytes()))
            }
            (None, Some(key)) => {
                let secret = k256::ecdh::EphemeralSecret::generate_from_rng(&mut rng);
                let ephemeral = k256::ecdsa::VerifyingKey::from(secret.public_key());
                let shared = secret.diffie_hellman(&k256::PublicKey::from(key));
                let mut bytes = Zeroizing::new([0u8; 32]);
                bytes.copy_from_slice(shared.raw_secret_bytes().as_slice());
                (ephemeral.to_sec1_point(true).as_bytes().to_vec(), bytes)
            }
            _ => unreachable!("a public key is either ed25519 or secp256k1"),
        };
    let key = seal_key(key_type, &shared, &ephemeral, recipient.as_bytes());
    let ciphertext = ChaCha20Poly1305::new((&*key).into())
        .encrypt(&Nonce::default(), plaintext)
        .expect("a plaintext in memory is below the ChaCha20 limit of 256 GiB");

    let mut out = Vec::with_capacity(2 + ephemeral.len() + ciphertext.len());
    out.push(VERSION);
    out.push(key_type.code());
    out.extend_from_slice(&ephemeral);
    out.extend_from_slice(&ciphertext);
    out
}

impl Keypair {
    /// Decrypts a box made by [`seal`] for this key pair's public key.
    ///
    /// Any input, however malformed, gives an error and never a panic.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let key_type = self.key_type();
        let min = overhead(key_type);
        let too_short = OpenError::TooShort { len: sealed.len(), min };
        let (&version, rest) = sealed.split_first().ok_or(too_short)?;
        if version != VERSION {
            return Err(OpenError::UnknownVersion(version));
        }
        let (&code, rest) = rest.split_first().ok_or(too_short)?;
        let sealed_for =
            KeyType::from_code(code.into()).map_err(|_| OpenError::UnknownKeyType(code))?;
        if sealed_for != key_type {
            return Err(OpenError::KeyTypeMismatch { sealed_for, key: key_type });
        }
        if sealed.len() < min {
            return Err(too_short);
        }
        let (ephemeral, ciphertext) = rest.split_at(ephemeral_len(key_type));

        let invalid = OpenError::InvalidEphemeralKey(key_type);
        let shared: Zeroizing<[u8; 32]> = match (self.ed25519(), self.secp256k1()) {
            (Some(secret), None) => {
                let ephemeral: [u8; 32] = ephemeral.try_into().map_err(|_| invalid)?;
                // StaticSecret wipes the scalar when it is dropped.
                let secret = x25519_dalek::StaticSecret::from(secret.to_scalar_bytes());
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
                // A small-order ephemeral key gives a shared secret that anyone knows.
                if !shared.was_contributory() {
                    return Err(invalid);
                }
                Zeroizing::new(shared.to_bytes())
            }
            (None, Some(secret)) => {
                let point = PublicKey::from_bytes(KeyType::Secp256k1, ephemeral)
                    .map_err(|_| invalid)?
                    .as_secp256k1()
                    .copied()
                    .ok_or(invalid)?;
                let shared =
                    k256::ecdh::diffie_hellman(secret.as_nonzero_scalar(), point.as_affine());
                let mut bytes = Zeroizing::new([0u8; 32]);
                bytes.copy_from_slice(shared.raw_secret_bytes().as_slice());
                bytes
            }
            _ => unreachable!("a key pair is either ed25519 or secp256k1"),
        };
        let key = seal_key(key_type, &shared, ephemeral, self.public().as_bytes());
        ChaCha20Poly1305::new((&*key).into())
            .decrypt(&Nonce::default(), ciphertext)
            .map_err(|_| OpenError::DecryptionFailed)
    }

    /// Derives a symmetric key for one purpose, named by `context` (for example
    /// `"dkvs-ipfs-files-v1"`). The same key pair and context always give the same key;
    /// different contexts give independent keys.
    ///
    /// The key is HKDF-SHA256 of the 32 secret bytes, with the salt `"dkvs-symmetric-key-v1"`
    /// and the info `key type code || context`.
    pub fn derive_symmetric_key(&self, context: &str) -> SymmetricKey {
        let mut info = Vec::with_capacity(1 + context.len());
        info.push(self.key_type().code());
        info.extend_from_slice(context.as_bytes());
        SymmetricKey(hkdf_32(SYMMETRIC_SALT, self.secret_bytes().as_ref(), &info))
    }
}

impl Keypair {
    /// Opens a key sealed to this account with [`SymmetricKey::seal_to`].
    pub fn open_symmetric_key(&self, sealed: &[u8]) -> Result<SymmetricKey, OpenError> {
        let bytes = Zeroizing::new(self.open(sealed)?);
        let key: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| OpenError::NotAKey { len: bytes.len() })?;
        Ok(SymmetricKey(Zeroizing::new(key)))
    }
}

/// A 32-byte XChaCha20-Poly1305 key. Its bytes are wiped on drop and never printed.
#[derive(Clone)]
pub struct SymmetricKey(Zeroizing<[u8; 32]>);

impl SymmetricKey {
    /// How many bytes longer than its plaintext a ciphertext of [`SymmetricKey::encrypt`] is:
    /// a 24-byte nonce and a 16-byte tag.
    pub const OVERHEAD: usize = XNONCE_LEN + TAG_LEN;

    /// A key from its bytes, for the keystore.
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> SymmetricKey {
        SymmetricKey(bytes)
    }

    /// Encrypts `plaintext` and authenticates it together with `aad` (associated data that is
    /// not encrypted, such as a file name, and that decryption must be given again).
    ///
    /// Returns `nonce (24 random bytes) || ciphertext || tag (16 bytes)`.
    ///
    /// # Panics
    ///
    /// If `plaintext` is 256 GiB or longer (the ChaCha20 limit of one message).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; XNONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = XChaCha20Poly1305::new((&*self.0).into())
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
            .expect("a plaintext in memory is below the ChaCha20 limit of 256 GiB");
        let mut out = Vec::with_capacity(XNONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// A key derived from this one for one item, named by `salt` (random, stored beside what
    /// it encrypts) and `context`: HKDF-SHA256 with this key as input, `salt` as salt and
    /// `context` as info. The IPFS module derives a key per file this way.
    pub fn derive(&self, salt: &[u8], context: &str) -> SymmetricKey {
        SymmetricKey(hkdf_32(salt, self.0.as_ref(), context.as_bytes()))
    }

    /// This key sealed to `recipient` ([`seal`]): how a key is shared with another account,
    /// which opens it with [`Keypair::open_symmetric_key`].
    pub fn seal_to(&self, recipient: &PublicKey) -> Vec<u8> {
        seal(recipient, self.0.as_ref())
    }

    /// Decrypts the output of [`SymmetricKey::encrypt`], given the same `aad`.
    pub fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < Self::OVERHEAD {
            return Err(OpenError::TooShort { len: sealed.len(), min: Self::OVERHEAD });
        }
        let (nonce, ciphertext) = sealed.split_at(XNONCE_LEN);
        let nonce: &XNonce = nonce
            .try_into()
            .map_err(|_| OpenError::TooShort { len: sealed.len(), min: Self::OVERHEAD })?;
        XChaCha20Poly1305::new((&*self.0).into())
            .decrypt(nonce, Payload { msg: ciphertext, aad })
            .map_err(|_| OpenError::DecryptionFailed)
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

/// The ChaCha20-Poly1305 key of one sealed box.
fn seal_key(
    key_type: KeyType,
    shared: &[u8; 32],
    ephemeral: &[u8],
    recipient: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut info = Vec::with_capacity(2 + ephemeral.len() + recipient.len());
    info.push(VERSION);
    info.push(key_type.code());
    info.extend_from_slice(ephemeral);
    info.extend_from_slice(recipient);
    hkdf_32(SEAL_SALT, shared, &info)
}

/// HKDF-SHA256 with a 32-byte output.
fn hkdf_32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: [KeyType; 2] = [KeyType::Ed25519, KeyType::Secp256k1];

    #[test]
    fn round_trip_both_types() {
        for ty in TYPES {
            let pair = Keypair::generate(ty);
            for message in [&b""[..], b"x", &[7u8; 1000]] {
                let sealed = seal(pair.public(), message);
                assert_eq!(sealed.len(), message.len() + overhead(ty));
                assert_eq!(sealed[0], VERSION);
                assert_eq!(sealed[1], ty.code());
                assert_eq!(pair.open(&sealed).as_deref(), Ok(message), "{ty}");
            }
        }
    }

    #[test]
    fn boxes_are_randomised() {
        let pair = Keypair::generate(KeyType::Ed25519);
        assert_ne!(seal(pair.public(), b"same"), seal(pair.public(), b"same"));
    }

    #[test]
    fn header_errors_are_precise() {
        let ed = Keypair::generate(KeyType::Ed25519);
        let secp = Keypair::generate(KeyType::Secp256k1);
        assert_eq!(ed.open(&[]), Err(OpenError::TooShort { len: 0, min: 50 }));
        assert_eq!(ed.open(&[1]), Err(OpenError::TooShort { len: 1, min: 50 }));
        assert_eq!(ed.open(&[9, 1, 2]), Err(OpenError::UnknownVersion(9)));
        assert_eq!(ed.open(&[1, 3]), Err(OpenError::UnknownKeyType(3)));
        let sealed = seal(secp.public(), b"m");
        assert_eq!(
            ed.open(&sealed),
            Err(OpenError::KeyTypeMismatch {
                sealed_for: KeyType::Secp256k1,
                key: KeyType::Ed25519
            })
        );
        assert_eq!(secp.open(&sealed[..50]), Err(OpenError::TooShort { len: 50, min: 51 }));
    }

    #[test]
    fn small_order_ephemeral_is_refused() {
        let pair = Keypair::generate(KeyType::Ed25519);
        // u = 0 is a point of order 2 on Curve25519.
        let mut sealed = vec![VERSION, KeyType::Ed25519.code()];
        sealed.extend_from_slice(&[0u8; 32 + TAG_LEN]);
        assert_eq!(pair.open(&sealed), Err(OpenError::InvalidEphemeralKey(KeyType::Ed25519)));
    }

    #[test]
    fn invalid_secp256k1_ephemeral_is_refused() {
        let pair = Keypair::generate(KeyType::Secp256k1);
        let mut sealed = vec![VERSION, KeyType::Secp256k1.code(), 0x04];
        sealed.extend_from_slice(&[0u8; 32 + TAG_LEN]);
        assert_eq!(pair.open(&sealed), Err(OpenError::InvalidEphemeralKey(KeyType::Secp256k1)));
    }

    #[test]
    fn symmetric_key_is_deterministic_per_context() {
        let pair = Keypair::generate(KeyType::Ed25519);
        let a = pair.derive_symmetric_key("a");
        let again = pair.derive_symmetric_key("a");
        let b = pair.derive_symmetric_key("b");
        let sealed = a.encrypt(b"data", b"");
        assert_eq!(sealed.len(), 4 + SymmetricKey::OVERHEAD);
        assert_eq!(again.decrypt(&sealed, b"").as_deref(), Ok(&b"data"[..]));
        assert_eq!(b.decrypt(&sealed, b""), Err(OpenError::DecryptionFailed));
        assert_eq!(format!("{a:?}"), "SymmetricKey(..)");
    }

    #[test]
    fn a_derived_key_shared_by_sealing_opens_only_for_its_recipient() {
        let owner = Keypair::generate(KeyType::Ed25519);
        let files = owner.derive_symmetric_key("files");
        let file = files.derive(b"salt one", "file");
        assert_eq!(
            files.derive(b"salt one", "file").decrypt(&file.encrypt(b"x", b"i"), b"i").as_deref(),
            Ok(&b"x"[..])
        );
        let other = files.derive(b"salt two", "file");
        assert!(other.decrypt(&file.encrypt(b"x", b""), b"").is_err());
        for ty in TYPES {
            let friend = Keypair::generate(ty);
            let sealed = file.seal_to(friend.public());
            let opened = friend.open_symmetric_key(&sealed).expect("opens");
            assert_eq!(opened.decrypt(&file.encrypt(b"y", b""), b"").as_deref(), Ok(&b"y"[..]));
            let stranger = Keypair::generate(ty);
            assert_eq!(
                stranger.open_symmetric_key(&sealed).err(),
                Some(OpenError::DecryptionFailed)
            );
        }
        let not_a_key = seal(owner.public(), b"short");
        assert_eq!(owner.open_symmetric_key(&not_a_key).err(), Some(OpenError::NotAKey { len: 5 }));
    }

    #[test]
    fn same_secret_bytes_of_other_type_give_other_symmetric_key() {
        let ed = Keypair::generate(KeyType::Ed25519);
        let secp = Keypair::from_secret_bytes(KeyType::Secp256k1, ed.secret_bytes().as_ref());
        // A random 32-byte string is almost surely a valid secp256k1 scalar.
        let secp = secp.expect("valid scalar");
        let sealed = ed.derive_symmetric_key("c").encrypt(b"x", b"");
        assert!(secp.derive_symmetric_key("c").decrypt(&sealed, b"").is_err());
    }
}
