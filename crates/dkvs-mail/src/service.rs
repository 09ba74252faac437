//! The mail extension a node hosts: it serves the mailbox protocol as a replica (its
//! [`Shelf`]) and carries this node's own requests to other replicas. The client side, the
//! part an application calls, is in [`crate::client`].

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dkvs_net::libp2p::core::Endpoint;
use dkvs_net::libp2p::core::transport::PortUse;
use dkvs_net::libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use dkvs_net::libp2p::{Multiaddr, PeerId, identity, request_response};
use dkvs_net::{Extension, Host, Refused};
use tokio::sync::{mpsc, oneshot};

use crate::letter::{MAX_CLOCK_SKEW_MS, Mailbox};
use crate::shelf::{Disk, Job, Shelf, ShelfConfig};
use crate::wire::{Codec, Custody, MAX_REQUEST, PROTOCOL, Refusal, Request, Response};

/// How long a request to another replica may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an answer goes: to a peer over the protocol, or to this node's own client.
pub(crate) enum Reply {
    Remote(request_response::ResponseChannel<Vec<u8>>),
    Local(oneshot::Sender<Response>),
}

impl Reply {
    fn send(self, inner: &mut request_response::Behaviour<Codec>, response: Response) {
        match self {
            Reply::Remote(channel) => {
                // The peer may have gone; nothing to do then.
                let _ = inner.send_response(channel, response.encode());
            }
            Reply::Local(tx) => {
                let _ = tx.send(response);
            }
        }
    }
}

type Answer = oneshot::Sender<Result<Vec<u8>, String>>;

/// The mail extension.
pub struct Mail {
    inner: request_response::Behaviour<Codec>,
    key: identity::Keypair,
    shelf: Shelf,
    disk: Disk,
    written: mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
    /// Deposits waiting for their file to be on disk: ticket -> (reply, the custody to give).
    writing: HashMap<u64, (Reply, Custody)>,
    asks: HashMap<request_response::OutboundRequestId, Answer>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mail {
    /// The extension for a node whose libp2p key is `key` (it signs custody receipts),
    /// keeping mail in `dir` (made if missing; what an earlier run kept there is read back).
    /// Must be called within a tokio runtime.
    pub fn open(dir: &Path, key: identity::Keypair, config: ShelfConfig) -> std::io::Result<Mail> {
        let shelf = Shelf::open(dir, config, now_ms())?;
        let (done, written) = mpsc::unbounded_channel();
        let disk = Disk::start(dir.to_owned(), done)?;
        let inner = request_response::Behaviour::new(
            [(PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
        );
        let mut mail = Mail {
            inner,
            key,
            shelf,
            disk,
            written,
            writing: HashMap::new(),
            asks: HashMap::new(),
            expiry: None,
        };
        mail.arm_expiry();
        Ok(mail)
    }

    /// What this replica keeps.
    pub fn shelf(&self) -> &Shelf {
        &self.shelf
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Sends a request to `peer`; the answer's bytes (or why there is none) come to the
    /// receiver.
    pub(crate) fn ask(
        &mut self,
        peer: PeerId,
        request: &Request,
    ) -> oneshot::Receiver<Result<Vec<u8>, String>> {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.send_request(&peer, request.encode());
        self.asks.insert(id, tx);
        rx
    }

    /// Serves a request of this node's own client, as if a peer had sent it.
    pub(crate) fn ask_self(&mut self, request: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        let me = self.peer_id();
        self.serve(me, request, Reply::Local(tx));
        rx
    }

    /// Answers a request from `peer` (signatures and time checked here).
    fn serve(&mut self, peer: PeerId, request: Request, reply: Reply) {
        let now = now_ms();
        let in_time = |t: u64| t.abs_diff(now) <= MAX_CLOCK_SKEW_MS;
        let me = self.peer_id();
        let response = match request {
            Request::Deposit(bytes) => match self.shelf.deposit(bytes, peer, now) {
                Err(refusal) => Response::Refused(refusal),
                Ok(taken) => {
                    let custody = Custody::sign(&self.key, taken.digest, taken.kept_until_ms);
                    match taken.write {
                        None => Response::Custody(custody),
                        Some(job) => {
                            let Job::Write { ticket, .. } = &job else { unreachable!() };
                            self.writing.insert(*ticket, (reply, custody));
                            self.disk.queue(job);
                            self.arm_expiry();
                            return;
                        }
                    }
                }
            },
            Request::Fetch(signed) => {
                if !signed.verify() || signed.body.replica != me {
                    Response::Refused(Refusal::BadSignature)
                } else if !in_time(signed.body.now_ms) {
                    Response::Refused(Refusal::OutOfTime)
                } else {
                    let mailbox = Mailbox::of(&signed.account);
                    let (items, more) =
                        self.shelf.fetch(&mailbox, signed.body.after, signed.body.limit, now);
                    Response::Batch { items, more }
                }
            }
            Request::Ack(signed) => {
                if !signed.verify() || signed.body.replica != me {
                    Response::Refused(Refusal::BadSignature)
                } else if !in_time(signed.body.now_ms) {
                    Response::Refused(Refusal::OutOfTime)
                } else {
                    let mailbox = Mailbox::of(&signed.account);
                    let jobs = self.shelf.ack(&mailbox, &signed.body.digests);
                    let deleted = jobs.len() as u32;
                    jobs.into_iter().for_each(|job| self.disk.queue(job));
                    Response::Acked(deleted)
                }
            }
        };
        reply.send(&mut self.inner, response);
    }

    /// Sets the timer for the next expiry.
    fn arm_expiry(&mut self) {
        self.expiry = self.shelf.next_expiry().map(|at| {
            let wait = Duration::from_millis(at.saturating_sub(now_ms()));
            Box::pin(tokio::time::sleep(wait))
        });
    }

    /// Files written: give their custody, or take back the deposit whose write failed.
    fn on_written(&mut self, ticket: u64, result: std::io::Result<()>) {
        let Some((reply, custody)) = self.writing.remove(&ticket) else { return };
        match result {
            Ok(()) => reply.send(&mut self.inner, Response::Custody(custody)),
            Err(e) => {
                tracing::error!(error = %e, "cannot write a mail file; the deposit is refused");
                if let Some(job) = self.shelf.remove(&custody.digest) {
                    self.disk.queue(job);
                }
                reply.send(&mut self.inner, Response::Refused(Refusal::StorageFailed));
            }
        }
    }
}

impl Extension for Mail {
    fn on_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>, host: &mut Host<'_>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                // The node's one admission step. A peer over its rate is told so (a sender
                // then knows why); an oversized request or a banned peer gets no answer.
                match host.admit(peer, request.len(), MAX_REQUEST) {
                    Ok(()) => {}
                    Err(Refused::RateLimited) if !host.is_banned(&peer) => {
                        return Reply::Remote(channel)
                            .send(&mut self.inner, Response::Refused(Refusal::Busy));
                    }
                    Err(_) => return,
                }
                match Request::decode(&request) {
                    Ok(request) => self.serve(peer, request, Reply::Remote(channel)),
                    Err(e) => {
                        host.report(peer, &e.to_string());
                        Reply::Remote(channel)
                            .send(&mut self.inner, Response::Refused(Refusal::Malformed));
                    }
                }
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(answer) = self.asks.remove(&request_id) {
                    let _ = answer.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some(answer) = self.asks.remove(&request_id) {
                    let _ = answer.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}

// A hand-written delegation: the behaviour keeps the shelf and the waiting requests beside the
// request-response behaviour, and its poll also serves the disk thread's reports and expiry.
impl NetworkBehaviour for Mail {
    type ConnectionHandler =
        <request_response::Behaviour<Codec> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = request_response::Event<Vec<u8>, Vec<u8>>;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, connection, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((ticket, result))) = self.written.poll_recv(cx) {
            self.on_written(ticket, result);
        }
        if let Some(timer) = self.expiry.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            for job in self.shelf.expire(now_ms()) {
                self.disk.queue(job);
            }
            self.arm_expiry();
            if let Some(timer) = self.expiry.as_mut() {
                // Registers the waker for the next one.
                let _ = timer.as_mut().poll(cx);
            }
        }
        self.inner.poll(cx)
    }
}
