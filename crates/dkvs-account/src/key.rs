//! Key pairs, public keys and signatures for both key types.

use std::fmt;

use ed25519_dalek::Signer as _;
use rand::Rng as _;
use zeroize::Zeroizing;

/// Length in bytes of a [`Signature`] of either key type.
pub const SIGNATURE_LEN: usize = 64;

/// The kind of key behind an account.
///
/// The numeric codes ([`KeyType::code`]) are part of the signing and wire formats: they never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    /// Ed25519 (RFC 8032); the default.
    Ed25519,
    /// secp256k1 ECDSA over SHA-256, low-S normalised; for users who hold wallet keys.
    Secp256k1,
}

impl KeyType {
    /// The stable numeric code of this key type: 1 for Ed25519, 2 for secp256k1.
    pub const fn code(self) -> u8 {
        match self {
            KeyType::Ed25519 => 1,
            KeyType::Secp256k1 => 2,
        }
    }

    /// The key type with numeric code `code`.
    pub fn from_code(code: u32) -> Result<KeyType, KeyError> {
        match code {
            1 => Ok(KeyType::Ed25519),
            2 => Ok(KeyType::Secp256k1),
            other => Err(KeyError::UnknownKeyType(other)),
        }
    }

    /// Length in bytes of a public key of this type (Ed25519: 32, secp256k1 compressed: 33).
    pub const fn public_key_len(self) -> usize {
        match self {
            KeyType::Ed25519 => 32,
            KeyType::Secp256k1 => 33,
        }
    }

    /// The lowercase name used on command lines and in files: `ed25519` or `secp256k1`.
    pub const fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Secp256k1 => "secp256k1",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<KeyType, KeyError> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "secp256k1" => Ok(KeyType::Secp256k1),
            other => Err(KeyError::UnknownKeyTypeName(other.to_owned())),
        }
    }
}

/// A domain tag: what a signature is for.
///
/// Every signature in dkvs covers `len(tag) || tag || message`, so a signature made for one purpose
/// (a record, a transfer, a mail) can never be replayed as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain(&'static str);

impl Domain {
    /// A domain tag. Tags are constants; one longer than 255 bytes fails to compile.
    pub const fn new(tag: &'static str) -> Domain {
        assert!(!tag.is_empty() && tag.len() <= 255, "a domain tag is 1 to 255 bytes");
        Domain(tag)
    }

    /// The tag's text.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The exact bytes that a signature for `message` in this domain covers:
    /// one length byte, the tag, then the message.
    pub fn preimage(self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() + message.len());
        self.write_prefix(&mut out);
        out.extend_from_slice(message);
        out
    }

    /// Appends `len(tag) || tag` to `out`, for callers that build the preimage in place.
    pub fn write_prefix(self, out: &mut Vec<u8>) {
        // The constructor bounds the tag to 255 bytes.
        out.push(self.0.len() as u8);
        out.extend_from_slice(self.0.as_bytes());
    }
}

/// Errors from reading keys out of bytes or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The numeric key type is not one this version knows.
    #[error("unknown key type {0} (known: 1 = ed25519, 2 = secp256k1)")]
    UnknownKeyType(u32),
    /// The key type name is not one this version knows.
    #[error("unknown key type {0:?} (known: ed25519, secp256k1)")]
    UnknownKeyTypeName(String),
    /// The key bytes have the wrong length for their type.
    #[error("{key_type} public key is {len} bytes, expected {expected}")]
    PublicKeyLength {
        /// The key type the bytes were read as.
        key_type: KeyType,
        /// The length found.
        len: usize,
        /// The length this key type has.
        expected: usize,
    },
    /// The bytes have the right length but are not a valid point or key of that type.
    #[error("bytes are not a valid {0} public key")]
    InvalidPublicKey(KeyType),
    /// The secret key bytes have the wrong length or are out of range.
    #[error("bytes are not a valid {0} secret key")]
    InvalidSecretKey(KeyType),
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature does not match the message and key.
    #[error("signature does not match the message and the {0} key")]
    Mismatch(KeyType),
    /// A secp256k1 signature whose `s` is in the upper half of the order: valid ECDSA, but
    /// malleable, and dkvs accepts only the low-S form.
    #[error("secp256k1 signature is not low-S normalised")]
    HighS,
    /// The signature bytes do not encode a signature at all (for example r or s is zero).
    #[error("signature bytes are malformed for a {0} key")]
    Malformed(KeyType),
}

/// A signature: 64 bytes for either key type (Ed25519 `R || S`; secp256k1 compact `r || s`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl Signature {
    /// The signature's bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }

    /// A signature from a slice, or `None` when it is not exactly 64 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Signature> {
        bytes.try_into().ok().map(Signature)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

#[derive(Clone)]
enum PublicInner {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256k1 { key: k256::ecdsa::VerifyingKey, compressed: [u8; 33] },
}

/// The public half of an account's key pair. Cloning is cheap: the parsed key is shared.
#[derive(Clone)]
pub struct PublicKey(std::sync::Arc<PublicInner>);

impl PublicKey {
    /// Reads a public key of `key_type` from its bytes (Ed25519: 32 bytes; secp256k1: 33-byte
    /// compressed SEC1). The point is checked, so a returned key is always usable.
    pub fn from_bytes(key_type: KeyType, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let expected = key_type.public_key_len();
        if bytes.len() != expected {
            return Err(KeyError::PublicKeyLength { key_type, len: bytes.len(), expected });
        }
        match key_type {
            KeyType::Ed25519 => {
                let array: &[u8; 32] =
                    bytes.try_into().map_err(|_| KeyError::InvalidPublicKey(key_type))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(array)
                    .map_err(|_| KeyError::InvalidPublicKey(key_type))?;
                // Small-order points make signatures that verify for many messages, and a
                // non-canonical encoding would give one key two account ids.
                if key.is_weak() || !canonical_y(array) {
                    return Err(KeyError::InvalidPublicKey(key_type));
                }
                Ok(PublicKey(std::sync::Arc::new(PublicInner::Ed25519(key))))
            }
            KeyType::Secp256k1 => {
                if bytes[0] != 0x02 && bytes[0] != 0x03 {
                    return Err(KeyError::InvalidPublicKey(key_type));
                }
                let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                    .map_err(|_| KeyError::InvalidPublicKey(key_type))?;
                let compressed =
                    bytes.try_into().map_err(|_| KeyError::InvalidPublicKey(key_type))?;
                Ok(PublicKey(std::sync::Arc::new(PublicInner::Secp256k1 { key, compressed })))
            }
        }
    }

    fn from_secp256k1(key: k256::ecdsa::VerifyingKey) -> PublicKey {
        let point = key.to_sec1_point(true);
        let mut compressed = [0u8; 33];
        compressed.copy_from_slice(point.as_bytes());
        PublicKey(std::sync::Arc::new(PublicInner::Secp256k1 { key, compressed }))
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match *self.0 {
            PublicInner::Ed25519(_) => KeyType::Ed25519,
            PublicInner::Secp256k1 { .. } => KeyType::Secp256k1,
        }
    }

    /// The key's bytes: 32 for Ed25519, 33 (compressed SEC1) for secp256k1.
    pub fn as_bytes(&self) -> &[u8] {
        match &*self.0 {
            PublicInner::Ed25519(key) => key.as_bytes(),
            PublicInner::Secp256k1 { compressed, .. } => compressed,
        }
    }

    /// The account this key identifies.
    pub fn account_id(&self) -> crate::AccountId {
        crate::AccountId::from(self.clone())
    }

    /// Checks `signature` over `message` in `domain`.
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        self.verify_preimage(&domain.preimage(message), signature)
    }

    /// Checks `signature` over bytes that already carry their domain prefix (see
    /// [`Domain::preimage`]); for callers that build signing bytes in place.
    pub fn verify_preimage(
        &self,
        preimage: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        match &*self.0 {
            PublicInner::Ed25519(key) => verify_ed25519(key, preimage, signature),
            PublicInner::Secp256k1 { key, .. } => {
                let sig = k256::ecdsa::Signature::from_slice(&signature.0)
                    .map_err(|_| VerifyError::Malformed(KeyType::Secp256k1))?;
                if sig.normalize_s() != sig {
                    return Err(VerifyError::HighS);
                }
                k256::ecdsa::signature::Verifier::verify(key, preimage, &sig)
                    .map_err(|_| VerifyError::Mismatch(KeyType::Secp256k1))
            }
        }
    }

    /// The Ed25519 verifying key; `None` for secp256k1.
    pub(crate) fn as_ed25519(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &*self.0 {
            PublicInner::Ed25519(key) => Some(key),
            PublicInner::Secp256k1 { .. } => None,
        }
    }

    /// The secp256k1 verifying key; `None` for Ed25519.
    pub(crate) fn as_secp256k1(&self) -> Option<&k256::ecdsa::VerifyingKey> {
        match &*self.0 {
            PublicInner::Ed25519(_) => None,
            PublicInner::Secp256k1 { key, .. } => Some(key),
        }
    }
}

/// Checks many signatures at once, each over bytes that already carry their domain prefix (as
/// [`PublicKey::verify_preimage`]); one verdict per item, in order.
///
/// The Ed25519 signatures are checked together with batch verification, which costs about
/// half as much per signature; if the batch fails, each is checked alone, so one bad signature
/// costs the batch its speed, not the others their verdicts. Secp256k1 signatures are checked
/// one by one.
pub fn verify_batch(items: &[(&PublicKey, &[u8], &Signature)]) -> Vec<Result<(), VerifyError>> {
    let mut verdicts: Vec<Result<(), VerifyError>> = vec![Ok(()); items.len()];
    let mut batch: Vec<(usize, ed25519_dalek::VerifyingKey)> = Vec::new();
    for (i, (key, preimage, signature)) in items.iter().enumerate() {
        match key.as_ed25519() {
            Some(ed) => batch.push((i, *ed)),
            None => verdicts[i] = key.verify_preimage(preimage, signature),
        }
    }
    let one_by_one = |verdicts: &mut [Result<(), VerifyError>], batch: &[(usize, _)]| {
        for (i, _) in batch {
            let (key, preimage, signature) = items[*i];
            verdicts[*i] = key.verify_preimage(preimage, signature);
        }
    };
    match batch.len() {
        0 => {}
        1 => one_by_one(&mut verdicts, &batch),
        _ => {
            let messages: Vec<&[u8]> = batch.iter().map(|(i, _)| items[*i].1).collect();
            let signatures: Vec<ed25519_dalek::Signature> = batch
                .iter()
                .map(|(i, _)| ed25519_dalek::Signature::from_bytes(items[*i].2.as_bytes()))
                .collect();
            let keys: Vec<ed25519_dalek::VerifyingKey> = batch.iter().map(|(_, k)| *k).collect();
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
                one_by_one(&mut verdicts, &batch);
            }
        }
    }
    verdicts
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.key_type() == other.key_type() && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key_type().hash(state);
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &PublicKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &PublicKey) -> std::cmp::Ordering {
        (self.key_type(), self.as_bytes()).cmp(&(other.key_type(), other.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.account_id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.account_id(), f)
    }
}

/// True when the encoded y coordinate is below p = 2^255 - 19. With the small-order points
/// refused separately, that is exactly the set of canonical Ed25519 encodings (the only other
/// non-canonical forms, x = 0 with the sign bit set, are the small-order points (0, ±1)).
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed)
}

/// Ed25519 verification with the cofactored equation `[8][S]B = [8]R + [8][k]A` and a canonical
/// `S`, as ZIP-215 specifies.
///
/// Why not `verify_strict`: a node checks records one by one on `put` and in batches on
/// replication, and both must give the same verdict, or an honest node that forwards a record
/// its peers refuse is punished for it. The cofactored equation accepts a signature whose `R`
/// carries a small-order component, which `verify_strict` refuses; ed25519-dalek's batch check
/// (not cofactored) fails a batch holding one, and a failing batch falls back to this function,
/// record by record, so both paths agree (such a record costs its batch the speed). Only the
/// key's owner can make such a signature: `k` hashes `R`'s bytes, so nobody else can alter `R`.
fn verify_ed25519(
    key: &ed25519_dalek::VerifyingKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), VerifyError> {
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::IsIdentity as _;
    use sha2::{Digest as _, Sha512};

    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature.0[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature.0[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(VerifyError::Malformed(KeyType::Ed25519))?;
    let r =
        CompressedEdwardsY(r_bytes).decompress().ok_or(VerifyError::Malformed(KeyType::Ed25519))?;
    let mut hasher = Sha512::new();
    hasher.update(r_bytes);
    hasher.update(key.as_bytes());
    hasher.update(message);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&hasher.finalize());
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let minus_a = -key.to_edwards();
    let residue = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s) - r;
    if residue.mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(VerifyError::Mismatch(KeyType::Ed25519))
    }
}

enum SecretInner {
    Ed25519(ed25519_dalek::SigningKey),
    Secp256k1(k256::ecdsa::SigningKey),
}

/// An account's key pair. Its `Debug` output shows the public key only.
pub struct Keypair {
    secret: SecretInner,
    public: PublicKey,
}

impl Keypair {
    /// A fresh key pair of `key_type` from the thread's cryptographic random number generator.
    pub fn generate(key_type: KeyType) -> Keypair {
        let mut rng = rand::rng();
        loop {
            let mut seed = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(seed.as_mut());
            // Only secp256k1 can refuse a seed (zero or above the group order: odds 2^-128).
            if let Ok(pair) = Keypair::from_secret_bytes(key_type, seed.as_ref()) {
                return pair;
            }
        }
    }

    /// A key pair from its 32 secret bytes (Ed25519 seed, or secp256k1 scalar big-endian).
    pub fn from_secret_bytes(key_type: KeyType, secret: &[u8]) -> Result<Keypair, KeyError> {
        let array: &[u8; 32] =
            secret.try_into().map_err(|_| KeyError::InvalidSecretKey(key_type))?;
        match key_type {
            KeyType::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_bytes(array);
                let public =
                    PublicKey(std::sync::Arc::new(PublicInner::Ed25519(key.verifying_key())));
                Ok(Keypair { secret: SecretInner::Ed25519(key), public })
            }
            KeyType::Secp256k1 => {
                let key = k256::ecdsa::SigningKey::from_slice(array)
                    .map_err(|_| KeyError::InvalidSecretKey(key_type))?;
                let public = PublicKey::from_secp256k1(*key.verifying_key());
                Ok(Keypair { secret: SecretInner::Secp256k1(key), public })
            }
        }
    }

    /// The 32 secret bytes, for the keystore. Handle with care: they are the account.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        match &self.secret {
            SecretInner::Ed25519(key) => Zeroizing::new(key.to_bytes()),
            SecretInner::Secp256k1(key) => {
                let mut out = Zeroizing::new([0u8; 32]);
                out.copy_from_slice(&key.to_bytes());
                out
            }
        }
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.public.key_type()
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The account id of this key pair.
    pub fn account_id(&self) -> crate::AccountId {
        self.public.account_id()
    }

    /// Signs `message` in `domain`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        self.sign_preimage(&domain.preimage(message))
    }

    /// Signs bytes that already carry their domain prefix (see [`Domain::preimage`]).
    pub fn sign_preimage(&self, preimage: &[u8]) -> Signature {
        match &self.secret {
            SecretInner::Ed25519(key) => Signature(key.sign(preimage).to_bytes()),
            SecretInner::Secp256k1(key) => {
                let sig: k256::ecdsa::Signature =
                    k256::ecdsa::signature::Signer::sign(key, preimage);
                let mut out = [0u8; SIGNATURE_LEN];
                out.copy_from_slice(&sig.normalize_s().to_bytes());
                Signature(out)
            }
        }
    }

    pub(crate) fn ed25519(&self) -> Option<&ed25519_dalek::SigningKey> {
        match &self.secret {
            SecretInner::Ed25519(key) => Some(key),
            SecretInner::Secp256k1(_) => None,
        }
    }

    pub(crate) fn secp256k1(&self) -> Option<&k256::ecdsa::SigningKey> {
        match &self.secret {
            SecretInner::Ed25519(_) => None,
            SecretInner::Secp256k1(key) => Some(key),
        }
    }
}

impl Clone for Keypair {
    fn clone(&self) -> Keypair {
        let secret = match &self.secret {
            SecretInner::Ed25519(key) => SecretInner::Ed25519(key.clone()),
            SecretInner::Secp256k1(key) => SecretInner::Secp256k1(key.clone()),
        };
        Keypair { secret, public: self.public.clone() }
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair").field("public", &self.public).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_each_signature_its_own_verdict() {
        const DOMAIN: Domain = Domain::new("dkvs-test-batch");
        let eds: Vec<Keypair> = (0..5).map(|_| Keypair::generate(KeyType::Ed25519)).collect();
        let secp = Keypair::generate(KeyType::Secp256k1);
        let messages: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 20]).collect();
        let preimages: Vec<Vec<u8>> = messages.iter().map(|m| DOMAIN.preimage(m)).collect();
        let mut signatures: Vec<Signature> = eds
            .iter()
            .chain([&secp, &secp])
            .zip(&messages)
            .map(|(pair, m)| pair.sign(DOMAIN, m))
            .collect();
        // The third Ed25519 signature and the second secp256k1 one are forged.
        signatures[2] = eds[2].sign(DOMAIN, b"something else");
        signatures[6] = secp.sign(DOMAIN, b"something else");
        let publics: Vec<&PublicKey> =
            eds.iter().chain([&secp, &secp]).map(|pair| pair.public()).collect();
        let items: Vec<(&PublicKey, &[u8], &Signature)> = publics
            .iter()
            .zip(&preimages)
            .zip(&signatures)
            .map(|((key, preimage), signature)| (*key, preimage.as_slice(), signature))
            .collect();
        let verdicts = verify_batch(&items);
        let ok: Vec<bool> = verdicts.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, false, true, true, true, false]);
        assert_eq!(verdicts[2], Err(VerifyError::Mismatch(KeyType::Ed25519)));
        // All good: the batch passes as a whole; none: empty.
        let good: Vec<_> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| ![2, 6].contains(i))
            .map(|(_, x)| *x)
            .collect();
        assert!(verify_batch(&good).iter().all(Result::is_ok));
        assert!(verify_batch(&[]).is_empty());
    }

    const D: Domain = Domain::new("test-v1");
    const OTHER: Domain = Domain::new("test-v2");

    #[test]
    fn sign_verify_both_types() {
        for ty in [KeyType::Ed25519, KeyType::Secp256k1] {
            let pair = Keypair::generate(ty);
            let sig = pair.sign(D, b"message");
            assert_eq!(pair.public().verify(D, b"message", &sig), Ok(()));
            assert!(pair.public().verify(D, b"messagf", &sig).is_err(), "{ty}");
            assert!(pair.public().verify(OTHER, b"message", &sig).is_err(), "{ty}: domain");
            let other = Keypair::generate(ty);
            assert!(other.public().verify(D, b"message", &sig).is_err(), "{ty}: other key");
        }
    }

    #[test]
    fn secret_bytes_round_trip() {
        for ty in [KeyType::Ed25519, KeyType::Secp256k1] {
            let pair = Keypair::generate(ty);
            let again = Keypair::from_secret_bytes(ty, pair.secret_bytes().as_ref())
                .expect("own secret bytes are valid");
            assert_eq!(again.public(), pair.public());
        }
    }

    #[test]
    fn secp256k1_high_s_is_refused() {
        let pair = Keypair::generate(KeyType::Secp256k1);
        let sig = pair.sign(D, b"m");
        let low = k256::ecdsa::Signature::from_slice(&sig.0).expect("own signature parses");
        let (r, s) = low.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).expect("negated s is nonzero");
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&high.to_bytes());
        assert_eq!(pair.public().verify(D, b"m", &Signature(bytes)), Err(VerifyError::HighS));
    }

    #[test]
    fn public_key_bytes_are_checked() {
        assert_eq!(
            PublicKey::from_bytes(KeyType::Ed25519, &[1u8; 31]),
            Err(KeyError::PublicKeyLength { key_type: KeyType::Ed25519, len: 31, expected: 32 })
        );
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey::from_bytes(KeyType::Ed25519, &identity),
            Err(KeyError::InvalidPublicKey(KeyType::Ed25519))
        );
        let mut not_on_curve = [0u8; 33];
        not_on_curve[0] = 0x02;
        not_on_curve[1..].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            PublicKey::from_bytes(KeyType::Secp256k1, &not_on_curve),
            Err(KeyError::InvalidPublicKey(KeyType::Secp256k1))
        );
        assert_eq!(KeyType::from_code(7), Err(KeyError::UnknownKeyType(7)));
    }

    #[test]
    fn non_canonical_ed25519_encodings_are_refused() {
        // y = p + 2 encodes the same value as y = 2, non-canonically.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xef;
        non_canonical[31] = 0x7f;
        assert!(!canonical_y(&non_canonical));
        let mut below_p = non_canonical;
        below_p[0] = 0xec;
        assert!(canonical_y(&below_p));
        assert!(canonical_y(&[0u8; 32]));
        // Whatever decompression makes of them, such bytes are never an account's key.
        assert!(PublicKey::from_bytes(KeyType::Ed25519, &non_canonical).is_err());
        let pair = Keypair::generate(KeyType::Ed25519);
        let bytes: [u8; 32] = pair.public().as_bytes().try_into().expect("32 bytes");
        assert!(canonical_y(&bytes));
    }

    #[test]
    fn debug_shows_no_secret() {
        let pair = Keypair::generate(KeyType::Ed25519);
        let text = format!("{pair:?}");
        assert!(!text.contains(&hex::encode(pair.secret_bytes().as_ref())));
        assert!(text.contains(&pair.account_id().to_string()));
    }
}
