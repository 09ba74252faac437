//! Account ids: the text form of a public key, and Ethereum-style addresses for secp256k1.

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use sha3::{Digest as _, Keccak256};

use crate::{KeyError, KeyType, PublicKey};

const ED25519_HRP: Hrp = Hrp::parse_unchecked("ed");
const SECP256K1_HRP: Hrp = Hrp::parse_unchecked("secp");

/// An account id: the account's public key as lowercase bech32m text.
///
/// The human-readable part names the key type (`ed1...` for Ed25519, `secp1...` for secp256k1), the
/// data part is the public key bytes, and the checksum catches typing errors. Ids contain no `/`,
/// so one is always a single segment of a record key. Only the lowercase form is accepted: an
/// account has exactly one id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(PublicKey);

impl AccountId {
    /// The public key this id stands for.
    pub fn public_key(&self) -> &PublicKey {
        &self.0
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.0.key_type()
    }

    /// The Ethereum-style address of a secp256k1 account (the last 20 bytes of the Keccak-256 hash
    /// of the uncompressed public key); `None` for an Ed25519 account.
    pub fn eth_address(&self) -> Option<EthAddress> {
        let key = self.0.as_secp256k1()?;
        let uncompressed = key.to_sec1_point(false);
        let hash = Keccak256::digest(&uncompressed.as_bytes()[1..]);
        let mut address = [0u8; 20];
        address.copy_from_slice(&hash[12..]);
        Some(EthAddress(address))
    }
}

impl From<PublicKey> for AccountId {
    fn from(key: PublicKey) -> AccountId {
        AccountId(key)
    }
}

fn hrp_of(key_type: KeyType) -> Hrp {
    match key_type {
        KeyType::Ed25519 => ED25519_HRP,
        KeyType::Secp256k1 => SECP256K1_HRP,
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, hrp_of(self.key_type()), self.0.as_bytes())
            .map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

/// Why a text is not an account id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseAccountIdError {
    /// Account ids are lowercase; the same id in capitals is refused so that each account has one id.
    #[error("account id {0:?} has uppercase letters; account ids are lowercase")]
    NotLowercase(String),
    /// Not bech32m text, or a checksum that does not match (a typo).
    #[error("account id {text:?} is not valid bech32m: {reason}")]
    Encoding {
        /// The text that was parsed.
        text: String,
        /// What the bech32 decoder said.
        reason: String,
    },
    /// The prefix names no key type.
    #[error(
        "account id prefix {0:?} is unknown (known: \"ed\" for ed25519, \"secp\" for secp256k1)"
    )]
    UnknownPrefix(String),
    /// The key bytes inside are not a valid key of the type the prefix names.
    #[error("account id holds an invalid key: {0}")]
    Key(#[from] KeyError),
    /// Valid bech32m for a key, but not that key's id: bits past the key's last byte are set,
    /// or there are more characters than the key needs. Each account has one id.
    #[error("account id {text:?} is not the account's id, which is {canonical:?}")]
    NotCanonical {
        /// The text that was parsed.
        text: String,
        /// The account's one id.
        canonical: String,
    },
}

impl FromStr for AccountId {
    type Err = ParseAccountIdError;

    fn from_str(text: &str) -> Result<AccountId, ParseAccountIdError> {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseAccountIdError::NotLowercase(text.to_owned()));
        }
        let checked = CheckedHrpstring::new::<Bech32m>(text).map_err(|e| {
            ParseAccountIdError::Encoding { text: text.to_owned(), reason: e.to_string() }
        })?;
        let key_type = if checked.hrp() == ED25519_HRP {
            KeyType::Ed25519
        } else if checked.hrp() == SECP256K1_HRP {
            KeyType::Secp256k1
        } else {
            return Err(ParseAccountIdError::UnknownPrefix(checked.hrp().to_string()));
        };
        // The decoder drops the bits past the last whole byte without looking at them: one key
        // would have several ids (and several scopes) if they were not checked.
        let bytes: Vec<u8> = checked.byte_iter().collect();
        let id = AccountId(PublicKey::from_bytes(key_type, &bytes)?);
        let canonical = id.to_string();
        if canonical != text {
            return Err(ParseAccountIdError::NotCanonical { text: text.to_owned(), canonical });
        }
        Ok(id)
    }
}

/// An Ethereum-style address; `Display` writes the EIP-55 mixed-case checksum form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthAddress(pub [u8; 20]);

impl fmt::Display for EthAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lower = hex::encode(self.0);
        let hash = Keccak256::digest(lower.as_bytes());
        f.write_str("0x")?;
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                write!(f, "{}", c.to_ascii_uppercase())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for EthAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EthAddress({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn round_trip_both_types() {
        for ty in [KeyType::Ed25519, KeyType::Secp256k1] {
            let id = Keypair::generate(ty).account_id();
            let text = id.to_string();
            assert!(text.starts_with(if ty == KeyType::Ed25519 { "ed1" } else { "secp1" }));
            assert!(!text.contains('/'));
            assert_eq!(text.parse::<AccountId>(), Ok(id));
        }
    }

    #[test]
    fn malformed_ids_name_the_problem() {
        let id = Keypair::generate(KeyType::Ed25519).account_id().to_string();
        assert!(matches!(
            id.to_uppercase().parse::<AccountId>(),
            Err(ParseAccountIdError::NotLowercase(_))
        ));
        // One changed character breaks the checksum.
        let mut typo: Vec<char> = id.chars().collect();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == 'q' { 'p' } else { 'q' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(typo.parse::<AccountId>(), Err(ParseAccountIdError::Encoding { .. })));
        assert!(matches!("".parse::<AccountId>(), Err(ParseAccountIdError::Encoding { .. })));
        // A valid bech32m string with an unknown prefix.
        let other = bech32::encode_lower::<Bech32m>(Hrp::parse_unchecked("rsa"), &[7u8; 32])
            .expect("short data encodes");
        assert_eq!(
            other.parse::<AccountId>(),
            Err(ParseAccountIdError::UnknownPrefix("rsa".into()))
        );
        // The right prefix with the wrong number of key bytes.
        let short = bech32::encode_lower::<Bech32m>(ED25519_HRP, &[7u8; 31]).expect("encodes");
        assert!(matches!(
            short.parse::<AccountId>(),
            Err(ParseAccountIdError::Key(KeyError::PublicKeyLength { len: 31, .. }))
        ));
        // Plain bech32 (not bech32m) is refused.
        let bech32_classic =
            bech32::encode_lower::<bech32::Bech32>(ED25519_HRP, &[7u8; 32]).expect("encodes");
        assert!(matches!(
            bech32_classic.parse::<AccountId>(),
            Err(ParseAccountIdError::Encoding { .. })
        ));
    }

    #[test]
    fn each_account_has_one_id() {
        use bech32::Fe32;
        use bech32::primitives::iter::{ByteIterExt as _, Fe32IterExt as _};
        for ty in [KeyType::Ed25519, KeyType::Secp256k1] {
            let id = Keypair::generate(ty).account_id();
            let hrp = hrp_of(ty);
            // The key's bytes as 5-bit characters, checksummed: its id, as `Display` writes it.
            let encode = |fes: Vec<Fe32>| -> String {
                fes.into_iter().with_checksum::<Bech32m>(&hrp).chars().collect()
            };
            let fes: Vec<Fe32> = id.0.as_bytes().iter().copied().bytes_to_fes().collect();
            assert_eq!(encode(fes.clone()), id.to_string());
            // The last character's bits past the key's last byte set (4 of them for Ed25519's
            // 32 bytes, 1 for secp256k1's 33), with a checksum of their own.
            let padding = (fes.len() * 5 - id.0.as_bytes().len() * 8) as u8;
            assert!(padding > 0, "{ty:?}");
            let mut set = fes.clone();
            let last = set.len() - 1;
            set[last] = Fe32::try_from(set[last].to_u8() | ((1 << padding) - 1)).expect("5 bits");
            let set = encode(set);
            assert_ne!(set, id.to_string());
            let canonical = id.to_string();
            let not_canonical = ParseAccountIdError::NotCanonical { text: set.clone(), canonical };
            assert_eq!(set.parse::<AccountId>(), Err(not_canonical), "{ty:?}");
            // A character more, all zeros: secp256k1's 33 bytes take 53 characters with 1 bit
            // to spare, and 54 with 6, which the decoder drops too (Ed25519's 32 bytes in 53
            // characters are 33 bytes, refused for their length).
            let mut longer = fes;
            longer.push(Fe32::Q);
            let longer = encode(longer);
            match (ty, longer.parse::<AccountId>()) {
                (KeyType::Secp256k1, Err(ParseAccountIdError::NotCanonical { .. })) => {}
                (KeyType::Ed25519, Err(ParseAccountIdError::Key(_))) => {}
                (ty, other) => panic!("{ty:?}: {longer} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn eth_address_matches_known_vector() {
        // Secret key 1: the generator point, whose address is well known.
        let mut secret = [0u8; 32];
        secret[31] = 1;
        let pair = Keypair::from_secret_bytes(KeyType::Secp256k1, &secret).expect("valid scalar");
        let address = pair.account_id().eth_address().expect("secp256k1 has an address");
        assert_eq!(address.to_string(), "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
        assert!(Keypair::generate(KeyType::Ed25519).account_id().eth_address().is_none());
    }
}
