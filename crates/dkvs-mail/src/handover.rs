//! Hand-over: mail follows its mailbox's closest replicas as peers come and go.
//!
//! Every [`HAND_OVER_EVERY`] a replica goes through the mailboxes it keeps (at most
//! [`MAILBOXES_PER_ROUND`] a round, in turn): it looks up the peers closest to the mailbox
//! address, asks the `replicas` closest which envelopes they lack (`Offer`) and deposits
//! those, replacing each that fails by the next closest. Replicas
//! refuse a copy of mail that was read, so an old copy does not come back.
//!
//! A replica keeps its own copies until they are read or expire, also once it is no longer
//! among the closest: a peer's word that it keeps a letter proves nothing (peers near a
//! mailbox address can be made at will), and dropping on that word would let a few such
//! peers make every honest replica forget. Copies cost quota, not correctness.
//!
//! The replica handing over is the depositor at the new replica, so one survivor moves at most
//! its depositor's share of a mailbox (a quarter by default), and of the new replica (an
//! eighth, all mailboxes together: past it, the next closest is asked); several survivors
//! move more.

use std::time::Duration;

use dkvs_net::libp2p::PeerId;
use dkvs_net::{NetError, Node};

use crate::client::{SendOptions, nearest_that_answer, replicas_of, request};
use crate::letter::Mailbox;
use crate::service::Mail;
use crate::wire::{MAX_ACK, Refusal, Request, Response};

/// How often a node hands mail over (with up to a tenth more, at random, so nodes do not
/// move in step).
pub const HAND_OVER_EVERY: Duration = Duration::from_secs(600);
/// The most mailboxes one round hands over; the others wait for the next rounds.
pub const MAILBOXES_PER_ROUND: usize = 256;
/// The longest one replica may take to be brought up to date in a round.
const PEER_TIME: Duration = Duration::from_secs(60);

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandOverReport {
    /// Mailboxes looked at.
    pub mailboxes: usize,
    /// Envelopes deposited on replicas that lacked them (a custody receipt signed by each).
    pub deposited: usize,
    /// Peers that could not be brought up to date this round (a stalled peer, one that runs no
    /// mail): each was replaced by the next closest, while one was left.
    pub failed: Vec<(PeerId, String)>,
}

/// One round of hand-over on `node` (see the module docs), starting at the `skip`th mailbox.
pub async fn hand_over(
    node: &Node,
    options: &SendOptions,
    skip: usize,
) -> Result<HandOverReport, NetError> {
    let held = node.with_extension::<Mail, _>(|mail, _| mail.shelf().held()).await?;
    let mut report = HandOverReport::default();
    let count = held.len();
    for (mailbox, digests) in
        held.into_iter().cycle().skip(skip % count.max(1)).take(count.min(MAILBOXES_PER_ROUND))
    {
        report.mailboxes += 1;
        // The closest that take the mail, this node counting where it is one of them (it
        // holds every envelope it offers): one that fails, a stalled peer a lookup that timed
        // out gave, or a peer that does not speak the protocol, is replaced by the next
        // closest. (Left out, it left the mailbox a replica short until the next round, which
        // asked it again.)
        // (Not a node that is no DHT server: others' lookups do not find what it keeps.)
        let (candidates, _) = replicas_of(node, &mailbox).await;
        let digests = &digests;
        let ask = |peer| async move {
            match tokio::time::timeout(PEER_TIME, bring_up_to_date(node, peer, mailbox, digests))
                .await
            {
                Ok(brought) => brought,
                Err(_) => Err(format!("took over {PEER_TIME:?}")),
            }
        };
        let (took, failed) = nearest_that_answer(candidates, options.replicas.max(1), ask).await;
        report.deposited += took.iter().map(|(_, deposited)| deposited).sum::<usize>();
        report.failed.extend(failed);
    }
    Ok(report)
}

/// Deposits on `peer` the envelopes of `digests` it lacks; how many.
async fn bring_up_to_date(
    node: &Node,
    peer: PeerId,
    mailbox: Mailbox,
    digests: &[[u8; 32]],
) -> Result<usize, String> {
    let mut deposited = 0;
    for chunk in digests.chunks(MAX_ACK) {
        let missing = match request(node, peer, Request::Offer(mailbox.0, chunk.to_vec())).await? {
            Response::Missing(missing) => missing,
            other => return Err(format!("not an answer to an offer: {other:?}")),
        };
        for digest in missing.into_iter().filter(|d| chunk.contains(d)) {
            let Some(bytes) = node
                .with_extension::<Mail, _>(move |mail, _| mail.shelf().envelope(&digest))
                .await
                .map_err(|e| e.to_string())?
            else {
                continue; // read or expired meanwhile
            };
            match request(node, peer, Request::Deposit(bytes)).await? {
                Response::Custody(c) if c.replica == peer && c.digest == digest && c.verify() => {
                    deposited += 1
                }
                Response::Refused(Refusal::AlreadyRead | Refusal::Expired) => {}
                other => return Err(format!("did not take an envelope: {other:?}")),
            }
        }
    }
    Ok(deposited)
}

/// Hands mail over every [`HAND_OVER_EVERY`] for as long as `node` runs (the task holds no
/// handle that keeps the node alive). Must be called within a tokio runtime.
pub fn spawn_hand_over(node: &Node, options: SendOptions) -> tokio::task::JoinHandle<()> {
    let weak = node.downgrade();
    tokio::spawn(async move {
        let mut skip = 0;
        loop {
            let jitter = rand::random::<u64>() % (HAND_OVER_EVERY.as_millis() as u64 / 10);
            tokio::time::sleep(HAND_OVER_EVERY + Duration::from_millis(jitter)).await;
            let Some(node) = weak.upgrade() else { return };
            match hand_over(&node, &options, skip).await {
                Ok(report) => {
                    skip += report.mailboxes;
                    if report.deposited > 0 || !report.failed.is_empty() {
                        tracing::debug!(?report, "mail hand-over");
                    }
                }
                Err(_) => return, // the node stopped
            }
        }
    })
}
