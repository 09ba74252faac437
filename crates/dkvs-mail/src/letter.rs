//! A message and its envelope: what the sender signs, what the recipient opens, and what a
//! mailbox replica sees.
//!
//! A [`Letter`] (sender, recipient, time written, expiry, id, body) is signed by its sender
//! over all of it, the recipient included, so it cannot be re-addressed; then the signed letter
//! is sealed to the recipient's account (`dkvs_account::seal`: Ed25519 and secp256k1 accounts
//! alike). The [`Envelope`] around the sealed bytes carries only what a replica needs to route,
//! store and expire it: the recipient's [`Mailbox`] address, the message id and the expiry
//! (rounded up to the minute, so it does not show the sender's clock to the millisecond). The
//! sender is inside the seal, so a replica cannot tell who wrote.
//!
//! What the envelope says outside the seal is not signed and not trusted:
//! - a replica may lower the expiry (its own cap); the recipient goes by the signed one, and
//!   refuses a letter that has expired or was written in the future (beyond a clock skew);
//! - anyone may store other bytes under a message id they have seen, so replicas keep
//!   envelopes by [`Envelope::digest`], not by id, and the recipient drops copies of a
//!   letter it has read by (sender, id) after opening.
//!
//! A signed letter proves to anyone its recipient shows it to that the sender wrote it (no
//! deniability): the signature is what lets the recipient trust the sender's name.
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
//! | expires at (Unix ms)      | 8                        |
//! | message id                | 16                       |
//! | body length, body         | 4 + at most [`MAX_BODY`] |
//!
//! signed in the domain `dkvs-mail-letter-v1`; the sealed plaintext is these bytes followed by
//! the 64-byte signature.

use std::fmt;

use dkvs_account::{AccountId, Domain, KeyType, Keypair, PublicKey, SIGNATURE_LEN, Signature};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// The longest body a letter may carry: 64 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest encoded envelope: the body, the letter's other fields, the signature, the seal
/// and the envelope's own fields fit well within it. Checked before decoding.
pub const MAX_ENVELOPE: usize = MAX_BODY + 1024;

/// How far ahead of the recipient's clock a letter's time may be.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

const LETTER: Domain = Domain::new("dkvs-mail-letter-v1");
const MAILBOX: &[u8] = b"dkvs-mailbox-v1";
const MINUTE_MS: u64 = 60_000;

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

/// A message as its recipient reads it, its sender's signature checked. Only
/// [`Envelope::open`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Letter {
    /// Who wrote and signed it.
    pub sender: AccountId,
    /// Whom it is for.
    pub recipient: AccountId,
    /// When the sender wrote it, in Unix milliseconds (the sender's clock).
    pub sent_at_ms: u64,
    /// Until when the sender asked for it to be kept, in Unix milliseconds.
    pub expires_at_ms: u64,
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
    /// The letter's signed expiry has passed (a replica handed back an old letter), or it was
    /// written further in the future than clocks drift.
    #[error(
        "the letter is out of its time: written at {sent_at_ms}, expires at {expires_at_ms}, now is {now_ms}"
    )]
    OutOfTime {
        /// When the sender says it wrote the letter.
        sent_at_ms: u64,
        /// When the sender's letter expires.
        expires_at_ms: u64,
        /// The recipient's clock.
        now_ms: u64,
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
        // Rounded up to the minute: the expiry is visible, the sender's clock need not be.
        let expires_at_ms =
            now_ms.saturating_add(ttl_ms).div_ceil(MINUTE_MS).saturating_mul(MINUTE_MS);
        let letter = Letter {
            sender: sender.account_id(),
            recipient: recipient.clone(),
            sent_at_ms: now_ms,
            expires_at_ms,
            id,
            body,
        };
        let mut plaintext = letter.signing_bytes();
        let signature = sender.sign(LETTER, &plaintext);
        plaintext.extend_from_slice(signature.as_bytes());
        Ok(Envelope {
            mailbox: Mailbox::of(recipient),
            id,
            expires_at_ms,
            sealed: dkvs_account::seal::seal(recipient.public_key(), &plaintext),
        })
    }

    /// A digest of the whole envelope, to keep it by: ids are chosen by senders and not
    /// checked by replicas, so two envelopes may share one.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Opens the envelope with the recipient's key pair at `now_ms`: the seal, the sender's
    /// signature, that the letter is for this account and carries the envelope's id, and
    /// that it is within its time (not expired by its signed expiry, not from the future).
    pub fn open(&self, recipient: &Keypair, now_ms: u64) -> Result<Letter, MailError> {
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
        // The signature first: nothing unverified is reported.
        letter
            .sender
            .public_key()
            .verify(LETTER, signed, &signature)
            .map_err(|_| MailError::BadSignature)?;
        if letter.recipient != me {
            return Err(MailError::Readdressed { addressed_to: letter.recipient });
        }
        if letter.id != self.id {
            return Err(MailError::IdMismatch { outside: self.id, inside: letter.id });
        }
        if letter.expires_at_ms <= now_ms || letter.sent_at_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(MailError::OutOfTime {
                sent_at_ms: letter.sent_at_ms,
                expires_at_ms: letter.expires_at_ms,
                now_ms,
            });
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
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
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
        let expires_at_ms = u64::from_be_bytes(reader.array()?);
        let id = MessageId(reader.array()?);
        let len = u32::from_be_bytes(reader.array()?) as usize;
        if len > MAX_BODY {
            return Err(malformed("letter", format!("a body of {len} bytes, over {MAX_BODY}")));
        }
        let body = reader.take(len)?.to_vec();
        if !reader.0.is_empty() {
            return Err(malformed("letter", "bytes after the body"));
        }
        Ok(Letter { sender, recipient, sent_at_ms, expires_at_ms, id, body })
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
            assert_eq!(envelope.expires_at_ms, NOW + WEEK, "a whole minute already");
            let again = Envelope::decode(&envelope.encode()).expect("decodes");
            assert_eq!(again, envelope);
            let letter = again.open(&bob, NOW).expect("bob opens it");
            assert_eq!(letter.expires_at_ms, NOW + WEEK);
            assert_eq!(
                (letter.sender, letter.recipient, letter.sent_at_ms, letter.id, letter.body),
                (alice.account_id(), bob.account_id(), NOW, envelope.id, b"hi bob".to_vec())
            );
            assert!(matches!(envelope.open(&carol, NOW), Err(MailError::NotForThisAccount { .. })));
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
            assert!(tampered.open(&bob, NOW).is_err(), "byte {at}");
        }
        // A replica relabels the message with another id: refused.
        let mut relabelled = envelope.clone();
        relabelled.id = MessageId([9; 16]);
        assert!(matches!(relabelled.open(&bob, NOW), Err(MailError::IdMismatch { .. })));
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
        assert!(matches!(forwarded.open(&bob, NOW), Err(MailError::Readdressed { .. })));
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
        assert!(matches!(forged.open(&carol, NOW), Err(MailError::BadSignature)));
    }

    #[test]
    fn sizes_are_bounded_before_any_work() {
        for key_type in [KeyType::Ed25519, KeyType::Secp256k1] {
            let (alice, bob) = (Keypair::generate(key_type), Keypair::generate(key_type));
            let full = Envelope::seal(&alice, &bob.account_id(), vec![1; MAX_BODY], NOW, WEEK)
                .expect("fits");
            let len = full.encode().len();
            assert!(len <= MAX_ENVELOPE, "{key_type}: {len}");
            assert_eq!(full.open(&bob, NOW).expect("opens").body.len(), MAX_BODY);
            let over = Envelope::seal(&alice, &bob.account_id(), vec![1; MAX_BODY + 1], NOW, WEEK);
            assert!(
                matches!(over, Err(MailError::BodyTooLarge { len, .. }) if len == MAX_BODY + 1)
            );
        }
        let huge = vec![0; MAX_ENVELOPE + 1];
        assert!(matches!(Envelope::decode(&huge), Err(MailError::Malformed { .. })));
        assert!(matches!(Envelope::decode(b"\xff\xff"), Err(MailError::Malformed { .. })));
    }

    #[test]
    fn a_letter_out_of_its_time_is_refused_and_the_expiry_hides_the_clock() {
        let (alice, bob) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let written = NOW + 1_234;
        let envelope = Envelope::seal(&alice, &bob.account_id(), b"x".to_vec(), written, 90_000)
            .expect("sealed");
        assert_eq!(envelope.expires_at_ms % MINUTE_MS, 0, "rounded to the minute");
        assert!(envelope.expires_at_ms >= written + 90_000);
        assert!(envelope.open(&bob, written + 60_000).is_ok());
        // Handed back after its signed expiry, whatever the envelope says outside.
        let mut extended = envelope.clone();
        extended.expires_at_ms = u64::MAX;
        let late = extended.open(&bob, envelope.expires_at_ms);
        assert!(matches!(late, Err(MailError::OutOfTime { .. })), "{late:?}");
        // Written further ahead than clocks drift.
        let early = envelope.open(&bob, NOW - MAX_CLOCK_SKEW_MS - 10_000);
        assert!(matches!(early, Err(MailError::OutOfTime { .. })), "{early:?}");
        // Two envelopes with one id are two things to keep.
        let mut squatter = envelope.clone();
        squatter.sealed[5] ^= 1;
        assert_ne!(squatter.digest(), envelope.digest());
    }

    /// An envelope for `bob` around `plaintext`, as a hostile sender could make one.
    fn hand_made(bob: &Keypair, plaintext: &[u8]) -> Envelope {
        Envelope {
            mailbox: Mailbox::of(&bob.account_id()),
            id: MessageId([1; 16]),
            expires_at_ms: NOW + WEEK,
            sealed: dkvs_account::seal::seal(bob.public(), plaintext),
        }
    }

    #[test]
    fn malformed_letters_inside_a_good_seal_are_refused_without_a_panic() {
        let (alice, bob) =
            (Keypair::generate(KeyType::Secp256k1), Keypair::generate(KeyType::Ed25519));
        let good =
            Envelope::seal(&alice, &bob.account_id(), b"body".to_vec(), NOW, WEEK).expect("sealed");
        let plaintext = bob.open(&good.sealed).expect("opens");
        let (signed, signature) = plaintext.split_at(plaintext.len() - SIGNATURE_LEN);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("shorter than a signature", vec![0; 10]),
            ("truncated", [&signed[..signed.len() - 2], signature].concat()),
            ("bytes after the body", [signed, &[0], signature].concat()),
            ("an unknown key type", [&[9], &signed[1..], signature].concat()),
            (
                "a key length unlike the type's",
                [&signed[..1], &[31], &signed[2..], signature].concat(),
            ),
        ];
        for (what, plaintext) in cases {
            let opened = hand_made(&bob, &plaintext).open(&bob, NOW);
            assert!(matches!(opened, Err(MailError::Malformed { .. })), "{what}: {opened:?}");
        }
        // A body length over the limit: refused as malformed before anything is copied.
        let len_at = signed.len() - 4 - 4;
        let mut long = signed.to_vec();
        long[len_at..len_at + 4].copy_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        let opened = hand_made(&bob, &[&long[..], signature].concat()).open(&bob, NOW);
        assert!(matches!(opened, Err(MailError::Malformed { .. })), "{opened:?}");
        // Noise never panics.
        for n in [0, 1, 63, 64, 65, 200, 1000] {
            let noise: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            assert!(hand_made(&bob, &noise).open(&bob, NOW).is_err());
        }
    }
}
