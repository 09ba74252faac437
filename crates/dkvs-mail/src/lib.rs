//! dkvs mailboxes (signed, encrypted to the recipient, kept for it while offline) and named
//! public channels, on `dkvs-net`'s swarm and accounts.
//!
//! Built so far: [`letter`], the message format. A [`Letter`] is signed by its sender and
//! sealed to its recipient; the [`Envelope`] around it is all a mailbox replica sees (the
//! recipient's [`Mailbox`] address, the id, the expiry). Mailbox replicas, delivery, receipts
//! and channels are the rest of the mail issue.

pub mod letter;

pub use dkvs_net as net;
pub use letter::{
    Envelope, Letter, MAX_BODY, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE, MailError, Mailbox, MessageId,
};
