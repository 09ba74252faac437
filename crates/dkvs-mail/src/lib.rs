//! dkvs mailboxes (signed, encrypted to the recipient, kept for it while offline) and named
//! public channels, on `dkvs-net`'s swarm and accounts.
//!
//! - [`letter`]: the message format. A [`Letter`] is signed by its sender and sealed to its
//!   recipient; the [`Envelope`] around it is all a mailbox replica sees (the recipient's
//!   [`Mailbox`] address, the id, the expiry).
//! - [`wire`]: the mailbox protocol, `/dkvs/mail/1` (deposit, fetch, ack; custody receipts).
//! - [`shelf`]: what a replica keeps, on disk, with quotas and expiry.
//! - [`Mail`]: the extension a node hosts (`NodeBuilder::with_extension`): a replica, and the
//!   way out for this node's own requests.
//! - [`client`]: [`send`], [`fetch`], [`ack`], [`read`], [`MailWatch`] through a node that
//!   hosts [`Mail`]. Delivery is at least once; exactly once while the [`Inbox`] is kept.
//!   Acknowledging sends the senders delivery receipts.
//! - [`handover`]: mail follows its mailbox's closest replicas as peers come and go
//!   ([`spawn_hand_over`] once the node runs).
//!
//! ```no_run
//! # async fn run(dir: &std::path::Path, store: dkvs_net::store::Store) -> anyhow::Result<()> {
//! use dkvs_mail::{Inbox, Mail, SendOptions, ShelfConfig};
//! let identity = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
//! let mail = Mail::open(&dir.join("mail"), identity.clone(), ShelfConfig::default())?;
//! let node = dkvs_net::NodeBuilder::new(identity, store, dkvs_net::Config::default())
//!     .with_extension(|_| mail)
//!     .spawn()?;
//! // ... node.listen_on, node.dial, node.bootstrap ...
//! let (alice, bob) = (dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519),
//!                     dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519));
//! let receipt = dkvs_mail::send(&node, &alice, &bob.account_id(), b"hi".to_vec(),
//!                               &SendOptions::default()).await?;
//! println!("kept by {} replicas", receipt.custody.len());
//! let mut inbox = Inbox::new();
//! for letter in dkvs_mail::read(&node, &bob, &mut inbox, &SendOptions::default()).await?.letters {
//!     println!("from {}: {:?}", letter.sender, letter.body);
//! }
//! # Ok(()) }
//! ```
//!
//! - [`channel`]: named public channels: [`channel::publish`], [`channel::subscribe`] (with
//!   the recent history from peers), [`channel::announce`] and [`channel::members`].

mod budget;
pub mod channel;
pub mod client;
pub mod handover;
pub mod letter;
mod service;
pub mod shelf;
pub mod wire;

pub use channel::{ChannelError, Post, PostKind, Published, Subscription};
pub use client::{
    AckReport, DeliveryReceipt, Fetched, Inbox, MailWatch, ReadError, SendError, SendOptions,
    SendReceipt, ack, fetch, read, send,
};
pub use dkvs_net as net;
pub use handover::{HandOverReport, hand_over, spawn_hand_over};
pub use letter::{
    Envelope, Letter, MAX_BODY, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE, MailError, Mailbox, MessageId,
};
pub use service::{Mail, REQUEST_TIMEOUT};
pub use shelf::{Shelf, ShelfConfig};
pub use wire::{Custody, Refusal};
