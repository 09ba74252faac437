//! A message and its envelope: what the sender signs, what the recipient opens, and what a
//! mailbox replica sees.
//!
//! A [`Letter`] (sender, recipient, time, id, body) is signed by its sender over all of it,
//! the recipient included, so it cannot be re-addressed; then the signed letter is sealed to
//! the recipient's account (`dkvs_account::seal`: Ed25519 and secp256k1 accounts alike). The
//! [`Envelope`] around the sealed bytes carries only what a replica needs to route, store and
//! expire it: the recipient's [`Mailbox`] address, the message id and the expiry. The sender
//! is inside the seal, so a replica cannot tell who wrote.
//!
//! The signed bytes, in order (integers big-endian):
//!
//! | field                     | bytes                    |
//! |---------------------------|--------------------------|
//! | sender key type code      | 1                        |
//! | sender key length, key    | 1 + 32 or 33             |
//! | recipient key type code   | 1                        |
//! | recipient key length, key | 1 + 32 or 33             |
//! | sent at (Unix ms)         | 8                        |
//! | message id                | 16                       |
//! | body length, body         | 4 + at most [`MAX_BODY`] |
//!
//! signed in the domain `dkvs-mail-letter-v1`; the sealed plaintext is these bytes followed by
//! the 64-byte signature.

use std::fmt;

use dkvs_account::{AccountId, Domain, KeyType, Keypair, PublicKey, Signature};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// The longest body a letter may carry: 64 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest encoded envelope: the body, the letter's other fields, the signature, the seal
/// and the envelope's own fields fit well within it. Checked before decoding.
pub const MAX_ENVELOPE: usize = MAX_BODY + 1024;

const LETTER: Domain = Domain::new("dkvs-mail-letter-v1");
const MAILBOX: &[u8] = b"dkvs-mailbox-v1";
const SIGNATURE_LEN: usize = 64;

/// A message's id: 16 random bytes, chosen by the sender. Shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> MessageId {
        MessageId(rand::random())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Where an account's mail is kept: a hash of its public key, so replicas route by it without
/// handling the key itself. (The account id is public anyway; the hash gives every account a
/// 32-byte address to find replicas near.)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox(pub [u8; 32]);

impl Mailbox {
    /// The mailbox of `account`.
    pub fn of(account: &AccountId) -> Mailbox {
        let key = account.public_key();
        let digest = Sha256::new()
            .chain_update(MAILBOX)
            .chain_update([key.key_type().code()])
            .chain_update(key.as_bytes())
            .finalize();
        Mailbox(digest.into())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({self})")
    }
}

/// A message as its recipient reads it, its sender's signature checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Letter {
    /// Who wrote and signed it.
    pub sender: AccountId,
    /// Whom it is for.
    pub recipient: AccountId,
    /// When the sender wrote it, in Unix milliseconds (the sender's clock).
    pub sent_at_ms: u64,
    /// Its id, the same as its envelope's.
    pub id: MessageId,
    /// The body, at most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

/// What a mailbox replica stores: the sealed letter and what routing, storing and expiring it
/// need. Nothing in it names the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The recipient's mailbox.
    pub mailbox: Mailbox,
    /// The message's id.
    pub id: MessageId,
    /// When replicas may drop it, in Unix milliseconds.
    pub expires_at_ms: u64,
    /// The signed letter, sealed to the recipient.
    pub sealed: Vec<u8>,
}

/// Why a letter could not be sealed, or an envelope decoded or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The body is over [`MAX_BODY`].
    #[error("the body is {len} bytes, the limit is {limit}")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// [`MAX_BODY`].
        limit: usize,
    },
    /// The envelope is for another account's mailbox.
    #[error("this envelope is for mailbox {mailbox}, not this account's")]
    NotForThisAccount {
        /// The mailbox it is addressed to.
        mailbox: Mailbox,
    },
    /// The seal does not open with this account's key (tampered with, or not for it).
    #[error("the sealed letter does not open: {0}")]
    Unreadable(#[from] dkvs_account::seal::OpenError),
    /// The bytes are not an envelope or a letter of this format.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// An envelope or a letter.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The letter inside names another recipient than the account opening it.
    #[error("the letter inside is addressed to {addressed_to}, not to this account")]
    Readdressed {
        /// The recipient the sender signed.
        addressed_to: AccountId,
    },
    /// The envelope's id is not the one the sender signed (a replica relabelled it).
    #[error("the envelope says message {outside}, the signed letter says {inside}")]
    IdMismatch {
        /// The envelope's id.
        outside: MessageId,
        /// The id the sender signed.
        inside: MessageId,
    },
    /// The sender's signature does not verify.
    #[error("the sender's signature does not verify")]
    BadSignature,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopePb {
    #[prost(bytes = "vec", tag = "1")]
    mailbox: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    id: Vec<u8>,
    #[prost(uint64, tag = "3")]
    expires_at_ms: u64,
    #[prost(bytes = "vec", tag = "4")]
    sealed: Vec<u8>,
}

impl Envelope {
    /// Signs a letter of `body` from `sender` to `recipient`, written at `now_ms`, and seals it;
    /// the envelope expires `ttl_ms` later.
    pub fn seal(
        sender: &Keypair,
        recipient: &AccountId,
        body: Vec<u8>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Envelope, MailError> {
        if body.len() > MAX_BODY {
            return Err(MailError::BodyTooLarge { len: body.len(), limit: MAX_BODY });
        }
        let id = MessageId::random();
        let letter = Letter {
            sender: sender.account_id(),
            recipient: recipient.clone(),
            sent_at_ms: now_ms,
            id,
            body,
        };
        let mut plaintext = letter.signing_bytes();
        let signature = sender.sign(LETTER, &plaintext);
        plaintext.extend_from_slice(signature.as_bytes());
        Ok(Envelope {
            mailbox: Mailbox::of(recipient),
            id,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            sealed: dkvs_account::seal::seal(recipient.public_key(), &plaintext),
        })
    }

    /// Opens the envelope with the recipient's key pair: the seal, the sender's signature, and
    /// that the letter is for this account and carries the envelope's id.
    pub fn open(&self, recipient: &Keypair) -> Result<Letter, MailError> {
        let me = recipient.account_id();
        if self.mailbox != Mailbox::of(&me) {
            return Err(MailError::NotForThisAccount { mailbox: self.mailbox });
        }
        let plaintext = recipient.open(&self.sealed)?;
        let split = plaintext
            .len()
            .checked_sub(SIGNATURE_LEN)
            .ok_or_else(|| malformed("letter", "shorter than a signature"))?;
        let (signed, signature) = plaintext.split_at(split);
        let signature =
            Signature::from_slice(signature).ok_or_else(|| malformed("letter", "no signature"))?;
        let letter = Letter::parse(signed)?;
        if letter.recipient != me {
            return Err(MailError::Readdressed { addressed_to: letter.recipient });
        }
        letter
            .sender
            .public_key()
            .verify(LETTER, signed, &signature)
            .map_err(|_| MailError::BadSignature)?;
        if letter.id != self.id {
            return Err(MailError::IdMismatch { outside: self.id, inside: letter.id });
        }
        Ok(letter)
    }

    /// The envelope's bytes on the wire and on disk (protobuf).
    pub fn encode(&self) -> Vec<u8> {
        EnvelopePb {
            mailbox: self.mailbox.0.to_vec(),
            id: self.id.0.to_vec(),
            expires_at_ms: self.expires_at_ms,
            sealed: self.sealed.clone(),
        }
        .encode_to_vec()
    }

    /// Reads an envelope; its size is checked before anything is decoded.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, MailError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(malformed(
                "envelope",
                format!("{} bytes, the limit is {MAX_ENVELOPE}", bytes.len()),
            ));
        }
        let pb = EnvelopePb::decode(bytes).map_err(|e| malformed("envelope", e.to_string()))?;
        let mailbox = pb
            .mailbox
            .try_into()
            .map_err(|_| malformed("envelope", "the mailbox is not 32 bytes"))?;
        let id = pb.id.try_into().map_err(|_| malformed("envelope", "the id is not 16 bytes"))?;
        Ok(Envelope {
            mailbox: Mailbox(mailbox),
            id: MessageId(id),
            expires_at_ms: pb.expires_at_ms,
            sealed: pb.sealed,
        })
    }
}

impl Letter {
    /// The bytes the sender signs (the table in the module docs).
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(100 + self.body.len());
        for account in [&self.sender, &self.recipient] {
            let key = account.public_key();
            out.push(key.key_type().code());
            out.push(key.as_bytes().len() as u8);
            out.extend_from_slice(key.as_bytes());
        }
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads signed bytes back; every length is checked against what is left.
    fn parse(bytes: &[u8]) -> Result<Letter, MailError> {
        let mut reader = Reader(bytes);
        let sender = reader.account()?;
        let recipient = reader.account()?;
        let sent_at_ms = u64::from_be_bytes(reader.array()?);
        let id = MessageId(reader.array()?);
        let len = u32::from_be_bytes(reader.array()?) as usize;
        if len > MAX_BODY {
            return Err(MailError::BodyTooLarge { len, limit: MAX_BODY });
        }
        let body = reader.take(len)?.to_vec();
        if !reader.0.is_empty() {
            return Err(malformed("letter", "bytes after the body"));
        }
        Ok(Letter { sender, recipient, sent_at_ms, id, body })
    }
}

/// Signed letter bytes being read, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MailError> {
        if self.0.len() < n {
            return Err(malformed("letter", "it ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MailError> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| malformed("letter", "it ends early"))
    }

    fn account(&mut self) -> Result<AccountId, MailError> {
        let [code] = self.array::<1>()?;
        let key_type =
            KeyType::from_code(code.into()).map_err(|e| malformed("letter", e.to_string()))?;
        let [len] = self.array::<1>()?;
        let key = PublicKey::from_bytes(key_type, self.take(usize::from(len))?)
            .map_err(|e| malformed("letter", e.to_string()))?;
        Ok(key.account_id())
    }
}

fn malformed(what: &'static str, why: impl Into<String>) -> MailError {
    MailError::Malformed { what, why: why.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const WEEK: u64 = 7 * 24 * 3_600_000;

    #[test]
    fn a_letter_opens_for_its_recipient_only_on_both_curves() {
        for (from, to) in [
            (KeyType::Ed25519, KeyType::Ed25519),
            (KeyType::Ed25519, KeyType::Secp256k1),
            (KeyType::Secp256k1, KeyType::Ed25519),
            (KeyType::Secp256k1, KeyType::Secp256k1),
        ] {
            let (alice, bob, carol) =
                (Keypair::generate(from), Keypair::generate(to), Keypair::generate(to));
            let envelope = Envelope::seal(&alice, &bob.account_id(), b"hi bob".to_vec(), NOW, WEEK)
                .expect("sealed");
            assert_eq!(envelope.mailbox, Mailbox::of(&bob.account_id()));
            assert_eq!(envelope.expires_at_ms, NOW + WEEK);
            let again = Envelope::decode(&envelope.encode()).expect("decodes");
            assert_eq!(again, envelope);
            let letter = again.open(&bob).expect("bob opens it");
            assert_eq!(
                (letter.sender, letter.recipient, letter.sent_at_ms, letter.id, letter.body),
                (alice.account_id(), bob.account_id(), NOW, envelope.id, b"hi bob".to_vec())
            );
            assert!(matches!(envelope.open(&carol), Err(MailError::NotForThisAccount { .. })));
        }
    }

    #[test]
    fn a_replica_sees_no_sender_and_cannot_change_a_letter_unnoticed() {
        let (alice, bob) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let envelope =
            Envelope::seal(&alice, &bob.account_id(), vec![7; 1000], NOW, WEEK).expect("sealed");
        let bytes = envelope.encode();
        let sender_key = alice.public().as_bytes();
        assert!(!bytes.windows(sender_key.len()).any(|w| w == sender_key), "no sender in sight");
        // A flipped byte anywhere in the seal: the seal does not open.
        for at in [0, 40, envelope.sealed.len() / 2, envelope.sealed.len() - 1] {
            let mut tampered = envelope.clone();
            tampered.sealed[at] ^= 1;
            assert!(tampered.open(&bob).is_err(), "byte {at}");
        }
        // A replica relabels the message with another id: refused.
        let mut relabelled = envelope.clone();
        relabelled.id = MessageId([9; 16]);
        assert!(matches!(relabelled.open(&bob), Err(MailError::IdMismatch { .. })));
        // Someone seals a letter signed for Carol into Bob's box: it says so.
        let carol = Keypair::generate(KeyType::Ed25519);
        let for_carol =
            Envelope::seal(&alice, &carol.account_id(), b"x".to_vec(), NOW, WEEK).expect("sealed");
        let plaintext = carol.open(&for_carol.sealed).expect("carol opens hers");
        let forwarded = Envelope {
            mailbox: Mailbox::of(&bob.account_id()),
            id: for_carol.id,
            expires_at_ms: NOW + WEEK,
            sealed: dkvs_account::seal::seal(bob.public(), &plaintext),
        };
        assert!(matches!(forwarded.open(&bob), Err(MailError::Readdressed { .. })));
        // A letter whose signature is not the sender's.
        let mut unsigned = plaintext.clone();
        let last = unsigned.len() - 1;
        unsigned[last] ^= 1;
        let forged = Envelope {
            mailbox: Mailbox::of(&carol.account_id()),
            id: for_carol.id,
            expires_at_ms: NOW + WEEK,
            sealed: dkvs_account::seal::seal(carol.public(), &unsigned),
        };
        assert!(matches!(forged.open(&carol), Err(MailError::BadSignature)));
    }

    #[test]
    fn sizes_are_bounded_before_any_work() {
        let (alice, bob) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let full =
            Envelope::seal(&alice, &bob.account_id(), vec![1; MAX_BODY], NOW, WEEK).expect("fits");
        assert!(full.encode().len() <= MAX_ENVELOPE);
        assert_eq!(full.open(&bob).expect("opens").body.len(), MAX_BODY);
        let over = Envelope::seal(&alice, &bob.account_id(), vec![1; MAX_BODY + 1], NOW, WEEK);
        assert!(matches!(over, Err(MailError::BodyTooLarge { len, .. }) if len == MAX_BODY + 1));
        let huge = vec![0; MAX_ENVELOPE + 1];
        assert!(matches!(Envelope::decode(&huge), Err(MailError::Malformed { .. })));
        assert!(matches!(Envelope::decode(b"\xff\xff"), Err(MailError::Malformed { .. })));
    }
}
