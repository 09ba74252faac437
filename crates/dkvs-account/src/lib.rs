//! Accounts for dkvs: the key pairs that own, address and sign everything in the network.
//!
//! An account is an asymmetric key pair, Ed25519 by default and secp256k1 for wallet users. Its
//! public key *is* its identity: an [`AccountId`] is the public key in a self-describing,
//! checksummed text form (`ed1...` or `secp1...`), so a record key that starts with an account id
//! names its only possible writer without any lookup.
//!
//! ```
//! use dkvs_account::{AccountId, Domain, KeyType, Keypair};
//!
//! const GREETING: Domain = Domain::new("example-greeting-v1");
//!
//! let alice = Keypair::generate(KeyType::Ed25519);
//! let signature = alice.sign(GREETING, b"hello");
//! assert!(alice.public().verify(GREETING, b"hello", &signature).is_ok());
//!
//! // The account id is the public key, with its type, as text.
//! let id: AccountId = alice.public().account_id();
//! let parsed: AccountId = id.to_string().parse().unwrap();
//! assert_eq!(parsed, id);
//! assert_eq!(parsed.public_key(), alice.public());
//! ```
//!
//! This crate does no networking; the only IO it does is the [`keystore`]'s files.

mod id;
mod key;
pub mod keystore;
pub mod seal;

pub use id::{AccountId, EthAddress, ParseAccountIdError};
pub use key::{
    Domain, KeyError, KeyType, Keypair, PublicKey, SIGNATURE_LEN, Signature, VerifyError,
    verify_batch,
};

// The README's example is compiled and run with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
