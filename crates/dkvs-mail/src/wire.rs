//! The mailbox protocol, `/dkvs/mail/1`: one request and one response per stream, each a
//! protobuf message read to the end of the stream and bounded in size before it is decoded.
//!
//! - `Deposit(envelope)`: keep this envelope; answered with a [`Custody`] signed by the
//!   replica's node key, or a [`Refusal`] (mailbox full, replica full, expired, malformed).
//! - `Fetch(account, after, limit, time, signature)`: the envelopes of the account's mailbox
//!   kept after the cursor `after`, at most `limit` (and at most [`MAX_BATCH_BYTES`]). The
//!   account signs the request, bound to the replica's peer id and the time, so only the
//!   account reads its mailbox and a request made for one replica is worth nothing at another.
//! - `Ack(account, digests, time, signature)`: delete these envelopes from the account's
//!   mailbox; signed the same way. An ack deletes only from the signer's own mailbox.
//! - `Watch(account, time, signature)`: tell the asking peer of each envelope deposited for
//!   the account in the next [`WATCH_TTL_MS`]; signed the same way (only the account's own
//!   node hears of its mail).
//! - `Offer(mailbox, digests)`: which of these envelopes do you lack? Answered with the
//!   digests the replica neither keeps nor knows were read; a replica hands mail over to the
//!   closest replicas of a mailbox with it, then deposits what they lack.
//! - `History(channel)`: the recent posts of a channel the asked node joined (see
//!   [`crate::channel`]), newest first, at most [`MAX_BATCH_BYTES`] of them.
//! - `Notify(mailbox)`: from a replica to a watching peer: new mail in this mailbox (the
//!   watcher then fetches it; a notification carries no mail, and a watcher heeds one only
//!   from a replica it asked to watch).
//!
//! Signed bytes, integers big-endian, each in its own [`Domain`]:
//! - custody (`dkvs-mail-custody-v1`, by the replica's libp2p key): digest (32), kept until (8);
//! - fetch (`dkvs-mail-fetch-v1`, by the account): replica peer id length (1), peer id, after
//!   (8), limit (4), time (8);
//! - ack (`dkvs-mail-ack-v1`, by the account): replica peer id length (1), peer id, time (8),
//!   count (4), digests (32 each);
//! - watch (`dkvs-mail-watch-v1`, by the account): replica peer id length (1), peer id, time
//!   (8).

use std::io;

use dkvs_account::{AccountId, Domain, KeyType, Keypair, PublicKey, Signature};
use dkvs_net::codec::count_field;
use dkvs_net::libp2p::{PeerId, StreamProtocol, identity, request_response};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use prost::Message as _;

use crate::channel::HISTORY_LEN;
use crate::letter::MAX_ENVELOPE;

/// The protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/dkvs/mail/1");
/// The largest request: a deposit of the largest envelope, or an ack of [`MAX_ACK`] digests.
pub const MAX_REQUEST: usize = MAX_ENVELOPE + 1024;
/// The most digests one ack carries.
pub const MAX_ACK: usize = 1024;
/// A fetch's answer holds at most this many envelope bytes (and always at least one envelope
/// when any is left), so a response is at most this plus one envelope.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The most envelopes a fetch's answer holds: no envelope a replica keeps is shorter than 128
/// bytes. Counted on the wire before a response is decoded, as are the digests of a
/// [`Response::Missing`] ([`MAX_ACK`]) and the posts of a [`Response::Posts`]
/// ([`crate::channel::HISTORY_LEN`]): decoding allocates tens of bytes for an empty entry
/// that is two bytes on the wire.
pub const MAX_BATCH_ITEMS: usize = MAX_BATCH_BYTES / 128;
/// The largest response.
pub const MAX_RESPONSE: usize = MAX_BATCH_BYTES + MAX_ENVELOPE + 4096;

const CUSTODY: &[u8] = b"dkvs-mail-custody-v1";
const FETCH: Domain = Domain::new("dkvs-mail-fetch-v1");
const ACK: Domain = Domain::new("dkvs-mail-ack-v1");
const WATCH: Domain = Domain::new("dkvs-mail-watch-v1");

/// How long a replica keeps a watch; the watcher renews it before then.
pub const WATCH_TTL_MS: u64 = 5 * 60 * 1000;

/// A request of the mailbox protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Keep this envelope (its encoded bytes).
    Deposit(Vec<u8>),
    /// Hand over the account's envelopes after a cursor.
    Fetch(Signed<FetchBody>),
    /// Delete these envelopes from the account's mailbox.
    Ack(Signed<AckBody>),
    /// Tell the asking peer of new envelopes for the account.
    Watch(Signed<WatchBody>),
    /// New mail in this mailbox (its address), which the asked peer watches.
    Notify([u8; 32]),
    /// Which of these envelopes of this mailbox does the asked replica lack?
    Offer([u8; 32], Vec<[u8; 32]>),
    /// The recent posts of this channel.
    History(String),
}

/// A request signed by the account whose mailbox it reads or changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Signed<T> {
    /// The account.
    pub account: AccountId,
    /// What it asks.
    pub body: T,
    /// The account's signature over the body, bound to the replica and the time.
    pub signature: Signature,
}

/// What a fetch asks.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchBody {
    /// The replica asked.
    pub replica: PeerId,
    /// Envelopes kept after this cursor (0: from the start).
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// The account's clock, Unix ms.
    pub now_ms: u64,
}

/// What an ack asks.
#[derive(Clone, Debug, PartialEq)]
pub struct AckBody {
    /// The replica asked.
    pub replica: PeerId,
    /// The account's clock, Unix ms.
    pub now_ms: u64,
    /// The envelopes' digests.
    pub digests: Vec<[u8; 32]>,
}

/// What a watch asks.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchBody {
    /// The replica asked.
    pub replica: PeerId,
    /// The account's clock, Unix ms.
    pub now_ms: u64,
}

/// What an account signs to read or change its mailbox on one replica: bound to that
/// replica and to the account's clock, in the body's own domain.
pub trait SignedBody {
    /// The signature's domain.
    const DOMAIN: Domain;
    /// The signed bytes (the module docs list them).
    fn signing_bytes(&self) -> Vec<u8>;
    /// The replica asked.
    fn replica(&self) -> PeerId;
    /// The account's clock, Unix ms.
    fn now_ms(&self) -> u64;
}

impl SignedBody for WatchBody {
    const DOMAIN: Domain = WATCH;

    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = peer_bytes(&self.replica);
        out.extend_from_slice(&self.now_ms.to_be_bytes());
        out
    }

    fn replica(&self) -> PeerId {
        self.replica
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

impl SignedBody for FetchBody {
    const DOMAIN: Domain = FETCH;

    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = peer_bytes(&self.replica);
        out.extend_from_slice(&self.after.to_be_bytes());
        out.extend_from_slice(&self.limit.to_be_bytes());
        out.extend_from_slice(&self.now_ms.to_be_bytes());
        out
    }

    fn replica(&self) -> PeerId {
        self.replica
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

impl SignedBody for AckBody {
    const DOMAIN: Domain = ACK;

    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = peer_bytes(&self.replica);
        out.extend_from_slice(&self.now_ms.to_be_bytes());
        out.extend_from_slice(&(self.digests.len() as u32).to_be_bytes());
        for digest in &self.digests {
            out.extend_from_slice(digest);
        }
        out
    }

    fn replica(&self) -> PeerId {
        self.replica
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

fn peer_bytes(peer: &PeerId) -> Vec<u8> {
    let bytes = peer.to_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.push(bytes.len() as u8);
    out.extend_from_slice(&bytes);
    out
}

impl<T: SignedBody> Signed<T> {
    /// `body`, signed by `account`.
    pub fn new(account: &Keypair, body: T) -> Signed<T> {
        let signature = account.sign(T::DOMAIN, &body.signing_bytes());
        Signed { account: account.account_id(), body, signature }
    }

    /// Whether the account signed it.
    pub fn verify(&self) -> bool {
        self.account
            .public_key()
            .verify(T::DOMAIN, &self.body.signing_bytes(), &self.signature)
            .is_ok()
    }

    /// Whether a replica `me` whose clock reads `now_ms` takes it: signed by the account,
    /// for this replica, and within the clock skew of now.
    pub fn check(&self, me: PeerId, now_ms: u64) -> Result<(), Refusal> {
        if !self.verify() || self.body.replica() != me {
            return Err(Refusal::BadSignature);
        }
        if self.body.now_ms().abs_diff(now_ms) > crate::letter::MAX_CLOCK_SKEW_MS {
            return Err(Refusal::OutOfTime);
        }
        Ok(())
    }
}

/// A replica's promise to keep an envelope: signed with the replica's libp2p key, so the
/// sender (or anyone it shows the receipt to) can check which node made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Custody {
    /// The replica.
    pub replica: PeerId,
    /// The envelope's digest.
    pub digest: [u8; 32],
    /// Until when the replica keeps it (its TTL cap may have shortened the envelope's).
    pub kept_until_ms: u64,
    /// The replica's libp2p public key (protobuf-encoded, as libp2p writes it).
    pub public_key: Vec<u8>,
    /// The replica's signature.
    pub signature: Vec<u8>,
}

impl Custody {
    fn signing_bytes(digest: &[u8; 32], kept_until_ms: u64) -> Vec<u8> {
        let mut out = CUSTODY.to_vec();
        out.extend_from_slice(digest);
        out.extend_from_slice(&kept_until_ms.to_be_bytes());
        out
    }

    /// A receipt signed by the replica whose key is `key`.
    pub fn sign(key: &identity::Keypair, digest: [u8; 32], kept_until_ms: u64) -> Custody {
        let signature = key
            .sign(&Custody::signing_bytes(&digest, kept_until_ms))
            .expect("signing with an Ed25519, secp256k1 or ECDSA key cannot fail");
        Custody {
            replica: key.public().to_peer_id(),
            digest,
            kept_until_ms,
            public_key: key.public().encode_protobuf(),
            signature,
        }
    }

    /// Whether the receipt is signed by the key of the replica it names.
    pub fn verify(&self) -> bool {
        let Ok(key) = identity::PublicKey::try_decode_protobuf(&self.public_key) else {
            return false;
        };
        key.to_peer_id() == self.replica
            && key
                .verify(&Custody::signing_bytes(&self.digest, self.kept_until_ms), &self.signature)
    }
}

/// Why a replica did not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The recipient's mailbox holds its quota on this replica.
    #[error("mailbox full")]
    MailboxFull,
    /// The replica holds all the mail it keeps.
    #[error("replica full")]
    ReplicaFull,
    /// The envelope has expired.
    #[error("expired")]
    Expired,
    /// The request is not a request of this protocol.
    #[error("malformed request")]
    Malformed,
    /// The account's signature does not verify, or the request was signed for another replica.
    #[error("bad signature")]
    BadSignature,
    /// The request's time is further from the replica's clock than clocks drift.
    #[error("request out of time")]
    OutOfTime,
    /// The replica could not write the envelope to its disk.
    #[error("replica storage failed")]
    StorageFailed,
    /// The asking peer is over its rate at the replica (the node's admission step), or over
    /// what it, or its network, may hold there (watches); try later.
    #[error("busy: over what this replica takes from this peer or its network now; try later")]
    Busy,
    /// The envelope's recipient has read it already.
    #[error("already read")]
    AlreadyRead,
}

impl Refusal {
    fn code(self) -> u32 {
        match self {
            Refusal::MailboxFull => 1,
            Refusal::ReplicaFull => 2,
            Refusal::Expired => 3,
            Refusal::Malformed => 4,
            Refusal::BadSignature => 5,
            Refusal::OutOfTime => 6,
            Refusal::StorageFailed => 7,
            Refusal::Busy => 8,
            Refusal::AlreadyRead => 9,
        }
    }

    fn from_code(code: u32) -> Option<Refusal> {
        Some(match code {
            1 => Refusal::MailboxFull,
            2 => Refusal::ReplicaFull,
            3 => Refusal::Expired,
            4 => Refusal::Malformed,
            5 => Refusal::BadSignature,
            6 => Refusal::OutOfTime,
            7 => Refusal::StorageFailed,
            8 => Refusal::Busy,
            9 => Refusal::AlreadyRead,
            _ => return None,
        })
    }
}

/// An envelope in a fetch's answer, with its cursor on the replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Its position: fetch after it to go on.
    pub cursor: u64,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
}

/// An answer of the mailbox protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// The envelope is kept.
    Custody(Custody),
    /// Envelopes of the mailbox, in cursor order; `more` when the batch stopped at its bound.
    Batch {
        /// The envelopes.
        items: Vec<Item>,
        /// Whether more are kept after the last.
        more: bool,
    },
    /// How many of the acknowledged envelopes were deleted.
    Acked(u32),
    /// The watch holds until then (Unix ms, the replica's clock).
    Watching(u64),
    /// A notification taken: whether this node watches that mailbox.
    Noted(bool),
    /// The digests of an offer that the replica lacks.
    Missing(Vec<[u8; 32]>),
    /// A channel's recent posts, encoded, newest first.
    Posts(Vec<Vec<u8>>),
    /// Refused.
    Refused(Refusal),
}

// The protobuf messages.

#[derive(Clone, PartialEq, prost::Message)]
struct AccountPb {
    #[prost(uint32, tag = "1")]
    key_type: u32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestPb {
    #[prost(oneof = "request_pb::Kind", tags = "1, 2, 3, 4, 5, 6, 7")]
    kind: Option<request_pb::Kind>,
}

mod request_pb {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(bytes = "vec", tag = "1")]
        Deposit(Vec<u8>),
        #[prost(message, tag = "2")]
        Fetch(super::FetchPb),
        #[prost(message, tag = "3")]
        Ack(super::AckPb),
        #[prost(message, tag = "4")]
        Watch(super::WatchPb),
        #[prost(bytes = "vec", tag = "5")]
        Notify(Vec<u8>),
        #[prost(message, tag = "6")]
        Offer(super::OfferPb),
        #[prost(string, tag = "7")]
        History(String),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct FetchPb {
    #[prost(message, optional, tag = "1")]
    account: Option<AccountPb>,
    #[prost(bytes = "vec", tag = "2")]
    replica: Vec<u8>,
    #[prost(uint64, tag = "3")]
    after: u64,
    #[prost(uint32, tag = "4")]
    limit: u32,
    #[prost(uint64, tag = "5")]
    now_ms: u64,
    #[prost(bytes = "vec", tag = "6")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AckPb {
    #[prost(message, optional, tag = "1")]
    account: Option<AccountPb>,
    #[prost(bytes = "vec", tag = "2")]
    replica: Vec<u8>,
    #[prost(uint64, tag = "3")]
    now_ms: u64,
    #[prost(bytes = "vec", repeated, tag = "4")]
    digests: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "5")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OfferPb {
    #[prost(bytes = "vec", tag = "1")]
    mailbox: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    digests: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DigestsPb {
    #[prost(bytes = "vec", repeated, tag = "1")]
    digests: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WatchPb {
    #[prost(message, optional, tag = "1")]
    account: Option<AccountPb>,
    #[prost(bytes = "vec", tag = "2")]
    replica: Vec<u8>,
    #[prost(uint64, tag = "3")]
    now_ms: u64,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponsePb {
    #[prost(oneof = "response_pb::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    kind: Option<response_pb::Kind>,
}

mod response_pb {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Custody(super::CustodyPb),
        #[prost(message, tag = "2")]
        Batch(super::BatchPb),
        #[prost(uint32, tag = "3")]
        Acked(u32),
        #[prost(uint32, tag = "4")]
        Refused(u32),
        #[prost(uint64, tag = "5")]
        Watching(u64),
        #[prost(bool, tag = "6")]
        Noted(bool),
        #[prost(message, tag = "7")]
        Missing(super::DigestsPb),
        #[prost(message, tag = "8")]
        Posts(super::DigestsPb),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct CustodyPb {
    #[prost(bytes = "vec", tag = "1")]
    replica: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    digest: Vec<u8>,
    #[prost(uint64, tag = "3")]
    kept_until_ms: u64,
    #[prost(bytes = "vec", tag = "4")]
    public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BatchPb {
    #[prost(message, repeated, tag = "1")]
    items: Vec<ItemPb>,
    #[prost(bool, tag = "2")]
    more: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ItemPb {
    #[prost(uint64, tag = "1")]
    cursor: u64,
    #[prost(bytes = "vec", tag = "2")]
    envelope: Vec<u8>,
}

/// Why bytes are not a message of this protocol.
#[derive(Debug, thiserror::Error)]
#[error("malformed mail {what}: {why}")]
pub struct Malformed {
    what: &'static str,
    why: String,
}

impl Malformed {
    /// Whether the bytes are a message of this protocol, of a kind this version does not know
    /// (a newer peer's), rather than bytes no peer of this protocol sends.
    pub fn is_unknown_kind(&self) -> bool {
        self.why == EMPTY
    }
}

const EMPTY: &str = "empty, or of a kind this version does not know";

fn malformed(what: &'static str, why: impl ToString) -> Malformed {
    Malformed { what, why: why.to_string() }
}

fn account_pb(account: &AccountId) -> AccountPb {
    let key = account.public_key();
    AccountPb { key_type: key.key_type().code().into(), key: key.as_bytes().to_vec() }
}

fn account_from(pb: Option<AccountPb>) -> Result<AccountId, Malformed> {
    let pb = pb.ok_or_else(|| malformed("request", "no account"))?;
    let key_type = KeyType::from_code(pb.key_type).map_err(|e| malformed("request", e))?;
    let key = PublicKey::from_bytes(key_type, &pb.key).map_err(|e| malformed("request", e))?;
    Ok(key.account_id())
}

fn peer_from(bytes: &[u8], what: &'static str) -> Result<PeerId, Malformed> {
    PeerId::from_bytes(bytes).map_err(|e| malformed(what, e))
}

fn signature_from(bytes: &[u8]) -> Result<Signature, Malformed> {
    Signature::from_slice(bytes)
        .ok_or_else(|| malformed("request", "the signature is not 64 bytes"))
}

fn digest_from(bytes: &[u8], what: &'static str) -> Result<[u8; 32], Malformed> {
    bytes.try_into().map_err(|_| malformed(what, "a digest is not 32 bytes"))
}

impl Request {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use request_pb::Kind;
        let kind = match self {
            Request::Deposit(envelope) => Kind::Deposit(envelope.clone()),
            Request::Fetch(signed) => Kind::Fetch(FetchPb {
                account: Some(account_pb(&signed.account)),
                replica: signed.body.replica.to_bytes(),
                after: signed.body.after,
                limit: signed.body.limit,
                now_ms: signed.body.now_ms,
                signature: signed.signature.as_bytes().to_vec(),
            }),
            Request::Ack(signed) => Kind::Ack(AckPb {
                account: Some(account_pb(&signed.account)),
                replica: signed.body.replica.to_bytes(),
                now_ms: signed.body.now_ms,
                digests: signed.body.digests.iter().map(|d| d.to_vec()).collect(),
                signature: signed.signature.as_bytes().to_vec(),
            }),
            Request::Watch(signed) => Kind::Watch(WatchPb {
                account: Some(account_pb(&signed.account)),
                replica: signed.body.replica.to_bytes(),
                now_ms: signed.body.now_ms,
                signature: signed.signature.as_bytes().to_vec(),
            }),
            Request::Notify(mailbox) => Kind::Notify(mailbox.to_vec()),
            Request::History(channel) => Kind::History(channel.clone()),
            Request::Offer(mailbox, digests) => Kind::Offer(OfferPb {
                mailbox: mailbox.to_vec(),
                digests: digests.iter().map(|d| d.to_vec()).collect(),
            }),
        };
        RequestPb { kind: Some(kind) }.encode_to_vec()
    }

    /// Reads a request; its size is checked before anything is decoded. Signatures are not
    /// checked here.
    pub fn decode(bytes: &[u8]) -> Result<Request, Malformed> {
        use request_pb::Kind;
        if bytes.len() > MAX_REQUEST {
            return Err(malformed("request", format!("{} bytes, over {MAX_REQUEST}", bytes.len())));
        }
        // Counted on the wire before decoding, as a response's entries are.
        for (what, path) in [("an ack", [3, 4]), ("an offer", [6, 2])] {
            let count =
                count_field(bytes, &path).ok_or_else(|| malformed("request", "not protobuf"))?;
            if count > MAX_ACK {
                return Err(malformed("request", format!("{what} of over {MAX_ACK} digests")));
            }
        }
        let pb = RequestPb::decode(bytes).map_err(|e| malformed("request", e))?;
        Ok(match pb.kind.ok_or_else(|| malformed("request", EMPTY))? {
            Kind::Deposit(envelope) => Request::Deposit(envelope),
            Kind::Fetch(f) => Request::Fetch(Signed {
                account: account_from(f.account)?,
                body: FetchBody {
                    replica: peer_from(&f.replica, "request")?,
                    after: f.after,
                    limit: f.limit,
                    now_ms: f.now_ms,
                },
                signature: signature_from(&f.signature)?,
            }),
            Kind::Ack(a) => Request::Ack(Signed {
                account: account_from(a.account)?,
                body: AckBody {
                    replica: peer_from(&a.replica, "request")?,
                    now_ms: a.now_ms,
                    digests: a
                        .digests
                        .iter()
                        .map(|d| digest_from(d, "request"))
                        .collect::<Result<_, _>>()?,
                },
                signature: signature_from(&a.signature)?,
            }),
            Kind::Watch(w) => Request::Watch(Signed {
                account: account_from(w.account)?,
                body: WatchBody { replica: peer_from(&w.replica, "request")?, now_ms: w.now_ms },
                signature: signature_from(&w.signature)?,
            }),
            Kind::Notify(mailbox) => Request::Notify(digest_from(&mailbox, "request")?),
            Kind::History(channel) => Request::History(channel),
            Kind::Offer(offer) => Request::Offer(
                digest_from(&offer.mailbox, "request")?,
                offer
                    .digests
                    .iter()
                    .map(|d| digest_from(d, "request"))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl Response {
    /// The response's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use response_pb::Kind;
        let kind = match self {
            Response::Custody(c) => Kind::Custody(CustodyPb {
                replica: c.replica.to_bytes(),
                digest: c.digest.to_vec(),
                kept_until_ms: c.kept_until_ms,
                public_key: c.public_key.clone(),
                signature: c.signature.clone(),
            }),
            Response::Batch { items, more } => Kind::Batch(BatchPb {
                items: items
                    .iter()
                    .map(|i| ItemPb { cursor: i.cursor, envelope: i.envelope.clone() })
                    .collect(),
                more: *more,
            }),
            Response::Acked(n) => Kind::Acked(*n),
            Response::Refused(r) => Kind::Refused(r.code()),
            Response::Watching(until) => Kind::Watching(*until),
            Response::Noted(watched) => Kind::Noted(*watched),
            Response::Posts(posts) => Kind::Posts(DigestsPb { digests: posts.clone() }),
            Response::Missing(digests) => {
                Kind::Missing(DigestsPb { digests: digests.iter().map(|d| d.to_vec()).collect() })
            }
        };
        ResponsePb { kind: Some(kind) }.encode_to_vec()
    }

    /// Reads a response; its size is checked before anything is decoded. A custody
    /// receipt's signature is not checked here ([`Custody::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Response, Malformed> {
        use response_pb::Kind;
        if bytes.len() > MAX_RESPONSE {
            return Err(malformed("response", format!("{} bytes", bytes.len())));
        }
        for (what, path, most) in [
            ("envelopes", [2, 1], MAX_BATCH_ITEMS),
            ("digests", [7, 1], MAX_ACK),
            ("posts", [8, 1], HISTORY_LEN),
        ] {
            let count =
                count_field(bytes, &path).ok_or_else(|| malformed("response", "not protobuf"))?;
            if count > most {
                return Err(malformed("response", format!("{count} {what}, over {most}")));
            }
        }
        let pb = ResponsePb::decode(bytes).map_err(|e| malformed("response", e))?;
        Ok(match pb.kind.ok_or_else(|| malformed("response", EMPTY))? {
            Kind::Custody(c) => Response::Custody(Custody {
                replica: peer_from(&c.replica, "response")?,
                digest: digest_from(&c.digest, "response")?,
                kept_until_ms: c.kept_until_ms,
                public_key: c.public_key,
                signature: c.signature,
            }),
            Kind::Batch(b) => Response::Batch {
                items: b
                    .items
                    .into_iter()
                    .map(|i| Item { cursor: i.cursor, envelope: i.envelope })
                    .collect(),
                more: b.more,
            },
            Kind::Acked(n) => Response::Acked(n),
            Kind::Refused(code) => Response::Refused(
                Refusal::from_code(code)
                    .ok_or_else(|| malformed("response", format!("refusal code {code}")))?,
            ),
            Kind::Watching(until) => Response::Watching(until),
            Kind::Noted(watched) => Response::Noted(watched),
            Kind::Posts(p) => Response::Posts(p.digests),
            Kind::Missing(m) => Response::Missing(
                m.digests.iter().map(|d| digest_from(d, "response")).collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// The codec: whole messages as bytes, read to the end of the stream and at most one byte
/// over the limit, so that the node's admission step sees an oversized message as such.
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

async fn read_at_most<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_at_most(io, MAX_REQUEST).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_at_most(io, MAX_RESPONSE).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&response).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let alice = Keypair::generate(KeyType::Secp256k1);
        let replica = identity::Keypair::generate_ed25519();
        let peer = replica.public().to_peer_id();
        let fetch = FetchBody { replica: peer, after: 7, limit: 64, now_ms: 1_800_000_000_000 };
        let ack = AckBody { replica: peer, now_ms: 1_800_000_000_000, digests: vec![[3; 32]; 3] };
        for request in [
            Request::Deposit(vec![1, 2, 3]),
            Request::Fetch(Signed::new(&alice, fetch)),
            Request::Ack(Signed::new(&alice, ack)),
            Request::Watch(Signed::new(&alice, WatchBody { replica: peer, now_ms: 9 })),
            Request::Notify([4; 32]),
            Request::Offer([5; 32], vec![[6; 32]; 2]),
            Request::History("builders".into()),
        ] {
            assert_eq!(Request::decode(&request.encode()).expect("test setup"), request);
        }
        let custody = Custody::sign(&replica, [9; 32], 42);
        for response in [
            Response::Custody(custody),
            Response::Batch { items: vec![Item { cursor: 5, envelope: vec![1] }], more: true },
            Response::Acked(3),
            Response::Refused(Refusal::MailboxFull),
            Response::Watching(77),
            Response::Noted(true),
            Response::Missing(vec![[7; 32]]),
            Response::Posts(vec![vec![1, 2], vec![3]]),
            Response::Refused(Refusal::AlreadyRead),
        ] {
            assert_eq!(Response::decode(&response.encode()).expect("test setup"), response);
        }
        assert!(Request::decode(&[0xff; 8]).is_err());
        assert!(Request::decode(&vec![0; MAX_REQUEST + 1]).is_err());
        // As many entries as an honest replica sends decode; one more is refused, counted on
        // the wire before decoding (where an empty entry is two bytes).
        type Make = fn(usize) -> Response;
        let batch: Make = |n| Response::Batch {
            items: vec![Item { cursor: 1, envelope: vec![] }; n],
            more: false,
        };
        let missing: Make = |n| Response::Missing(vec![[7; 32]; n]);
        let posts: Make = |n| Response::Posts(vec![vec![]; n]);
        let kinds = [
            (batch, MAX_BATCH_ITEMS, "envelopes"),
            (missing, MAX_ACK, "digests"),
            (posts, HISTORY_LEN, "posts"),
        ];
        for (make, most, what) in kinds {
            let full = make(most);
            assert_eq!(Response::decode(&full.encode()).expect("as many as honest"), full);
            let err = Response::decode(&make(most + 1).encode()).expect_err("one more");
            assert!(
                err.to_string().contains(&format!("{} {what}, over {most}", most + 1)),
                "{err}"
            );
        }
        // An ack or an offer of more digests than an ack may carry: refused by name, counted
        // on the wire.
        let mut ack = vec![0x1a];
        let digests = [0x22, 0x00].repeat(MAX_ACK + 1);
        prost::encode_length_delimiter(digests.len(), &mut ack).expect("room");
        ack.extend_from_slice(&digests);
        let err = Request::decode(&ack).expect_err("too many");
        assert!(err.to_string().contains(&format!("an ack of over {MAX_ACK} digests")), "{err}");
        let mut offer = vec![0x32];
        let digests = [0x12, 0x00].repeat(MAX_ACK + 1);
        prost::encode_length_delimiter(digests.len(), &mut offer).expect("room");
        offer.extend_from_slice(&digests);
        let err = Request::decode(&offer).expect_err("too many");
        assert!(err.to_string().contains(&format!("an offer of over {MAX_ACK} digests")), "{err}");
        // Bytes the count cannot read (an empty group, which decoding would skip) are refused.
        let mut grouped = vec![0x7b, 0x7c];
        grouped.extend_from_slice(&missing(MAX_ACK + 1).encode());
        assert!(Response::decode(&grouped).is_err());
        assert!(
            Response::decode(
                &ResponsePb { kind: Some(response_pb::Kind::Refused(99)) }.encode_to_vec()
            )
            .is_err()
        );
    }

    #[test]
    fn signatures_bind_the_account_the_replica_and_the_request() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let mallory = Keypair::generate(KeyType::Ed25519);
        let here = PeerId::random();
        let there = PeerId::random();
        let body = FetchBody { replica: here, after: 0, limit: 10, now_ms: 5 };
        let signed = Signed::new(&alice, body.clone());
        assert!(signed.verify());
        // Another replica, another cursor, another account: no longer valid.
        let moved = Signed { body: FetchBody { replica: there, ..body.clone() }, ..signed.clone() };
        assert!(!moved.verify());
        let later = Signed { body: FetchBody { after: 1, ..body.clone() }, ..signed.clone() };
        assert!(!later.verify());
        let claimed = Signed { account: mallory.account_id(), ..signed.clone() };
        assert!(!claimed.verify());

        let ack = Signed::new(&alice, AckBody { replica: here, now_ms: 5, digests: vec![[1; 32]] });
        assert!(ack.verify());
        let widened = Signed {
            body: AckBody { digests: vec![[1; 32], [2; 32]], ..ack.body.clone() },
            ..ack.clone()
        };
        assert!(!widened.verify());
        // A fetch signature is not an ack signature (separate domains).
        let ack_bytes = AckBody { replica: here, now_ms: 5, digests: vec![] };
        let as_ack =
            Signed { account: alice.account_id(), body: ack_bytes, signature: signed.signature };
        assert!(!as_ack.verify());
    }

    #[test]
    fn custody_receipts_name_their_signer() {
        let replica = identity::Keypair::generate_ed25519();
        let other = identity::Keypair::generate_ed25519();
        let custody = Custody::sign(&replica, [7; 32], 1000);
        assert!(custody.verify());
        assert!(!Custody { kept_until_ms: 2000, ..custody.clone() }.verify());
        assert!(!Custody { digest: [8; 32], ..custody.clone() }.verify());
        // Someone else's key under this replica's name, or this signature under another's.
        assert!(
            !Custody { public_key: other.public().encode_protobuf(), ..custody.clone() }.verify()
        );
        assert!(!Custody { replica: other.public().to_peer_id(), ..custody.clone() }.verify());
        assert!(!Custody { public_key: vec![1, 2, 3], ..custody }.verify());
    }
}
