//! The API's HTTP server: the router on hyper's HTTP/1, with bounds that `axum::serve` does
//! not keep, so that clients cannot take the node's file descriptors (which its peers need;
//! the libp2p side bounds its own, `dkvs_net::Config::max_connections` and admission).
//!
//! - A connection must send a request's head within [`Limits::head_timeout`], and an idle
//!   kept-alive connection its next one: a client that sends half a request, or nothing,
//!   is closed then (hyper's header-read timeout, which needs the timer `axum::serve` does
//!   not give it).
//! - At most [`Limits::connections`] are open at once. Past that, new connections wait in the
//!   listen backlog until one closes (a burst of clients is served late, not refused), and the
//!   node's log says so, once a minute at most.
//! - One address (an IPv4 address, an IPv6 /64; on a local network's link-local or unique
//!   local addresses, the address itself) holds at most [`Limits::per_address`] connections
//!   that have not shown the API's token; past that, its new connections are closed at once
//!   (and the log says so). Loopback is not counted, and a connection that shows the token
//!   no longer counts (an application behind a proxy opens as many as it needs).
//! - A connection that has not shown the token ([`Trust`]) may not keep a write waiting
//!   longer than [`Limits::stall`]: a client that asks without the token (the gateway's files
//!   and the metrics on loopback) and stops reading is closed then. One that has shown it
//!   waits as long as its reader pauses (a watch piped into a busy program, a paused
//!   download). A refused request closes its connection, and so does an answer without the
//!   token (`api`): a client without it keeps no connection between requests.
//!
//! A stop ([`serve`]'s `shutdown`) closes the listener, lets the requests under way finish
//! and closes idle connections; [`serve`] returns when all are closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// The bounds [`serve`] keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a connection may take to send a request's head, or stay idle between requests.
    pub(crate) head_timeout: Duration,
    /// How long a write may wait on a client that has not shown the token.
    pub(crate) stall: Duration,
    /// How many connections may be open at once.
    pub(crate) connections: usize,
    /// How many of them one address other than loopback may hold.
    pub(crate) per_address: usize,
}

impl Limits {
    /// The node's: 30 s for a head (hyper's own default, and twice the 15 s that the `dkvs`
    /// client, ureq, keeps an idle connection: it lets go first, so it never sends a request
    /// on a connection the node is closing), 256 connections (a quarter of a common
    /// descriptor limit of 1024; a command takes one, a watch one while it runs), 32 from one
    /// address other than loopback, 30 s for a write to a client without the token.
    pub(crate) const NODE: Limits = Limits {
        head_timeout: Duration::from_secs(30),
        stall: Duration::from_secs(30),
        connections: 256,
        per_address: 32,
    };
}

/// How long the listener rests after an accept failed (out of descriptors, say) before it
/// tries again: trying at once would spin on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often, at most, the log says that connections wait for the limit, or were refused.
const WARNING_GAP: Duration = Duration::from_secs(60);

/// Whether a warning last given at `last` may be given again now (and notes it).
fn may_warn(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARNING_GAP) {
        return false;
    }
    *last = Some(now);
    true
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then until the
/// connections open then have closed (see the module's doc).
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let addresses: Arc<Mutex<HashMap<[u8; 16], usize>>> = Arc::default();
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.head_timeout);
    let (mut warned_full, mut warned_share) = (None, None);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if permits.available_permits() == 0 && may_warn(&mut warned_full) {
            tracing::warn!(
                limit = limits.connections,
                "the API holds as many connections as it may; new ones wait until one closes"
            );
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "the API cannot accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(counted) = Counted::take(&addresses, from.ip(), limits.per_address) else {
            if may_warn(&mut warned_share) {
                tracing::warn!(
                    address = %from.ip(),
                    share = limits.per_address,
                    "the API closes new connections from an address that holds its share"
                );
            }
            continue;
        };
        // The connection's trust goes into each of its requests, for the API to grant; the
        // grant lets its address's count go.
        let trust = Trust::new(counted);
        let io =
            Stalling { inner: stream, stall: limits.stall, trust: trust.clone(), deadline: None };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(trust.clone());
            app.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it closes: all of them back means all closed.
    let all = u32::try_from(limits.connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// The address a connection from `ip` counts against: an IPv4 address, an IPv6 /64 (what
/// one host gets; a link-local or unique local address itself, as a /64 there is the whole
/// network); `None` for loopback. (The local network is counted: behind a proxy or a
/// container's bridge, every client is one address, and one that shows no token must not
/// take every connection.)
fn counted_as(ip: IpAddr) -> Option<[u8; 16]> {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_loopback() => None,
        IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) if v6.is_loopback() => None,
        IpAddr::V6(v6) if v6.is_unicast_link_local() || v6.is_unique_local() => Some(v6.octets()),
        IpAddr::V6(v6) => {
            let mut prefix = [0; 16];
            prefix[..8].copy_from_slice(&v6.octets()[..8]);
            Some(prefix)
        }
    }
}

/// Whether a connection has shown the API's token: granted by the API (`api::router`) to the
/// connection a request with the right token came on, for as long as it lives. Until then
/// the connection counts against its address's share.
#[derive(Clone)]
pub(crate) struct Trust(Arc<(AtomicBool, Mutex<Option<Counted>>)>);

impl Trust {
    fn new(counted: Counted) -> Trust {
        Trust(Arc::new((AtomicBool::new(false), Mutex::new(Some(counted)))))
    }

    pub(crate) fn grant(&self) {
        self.0.0.store(true, Ordering::Relaxed);
        let counted = self.0.1.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(counted);
    }

    fn granted(&self) -> bool {
        self.0.0.load(Ordering::Relaxed)
    }
}

/// A connection whose writes may not wait longer than `stall` for a client that has not shown
/// the token: past it, an error ends them (and hyper the connection).
struct Stalling<T> {
    inner: T,
    stall: Duration,
    trust: Trust,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Stalling<T> {
    /// `polled` as is, unless it has been pending for `stall` on an untrusted connection.
    fn watch<R>(
        &mut self,
        polled: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() || self.trust.granted() {
            self.deadline = None;
            return polled;
        }
        let stall = self.stall;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(deadline.as_mut().poll(cx));
        self.deadline = None;
        let stalled = "a client without the token stopped reading the answer";
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, stalled)))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(polled, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection counted against its address's share ([`Limits::per_address`]) while it lives.
struct Counted {
    addresses: Arc<Mutex<HashMap<[u8; 16], usize>>>,
    address: Option<[u8; 16]>,
}

impl Counted {
    /// Counts a connection from `ip`; `None` when its address holds `most` already.
    fn take(
        addresses: &Arc<Mutex<HashMap<[u8; 16], usize>>>,
        ip: IpAddr,
        most: usize,
    ) -> Option<Counted> {
        let address = counted_as(ip);
        if let Some(address) = address {
            let mut counts = addresses.lock().unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(address).or_default();
            if *count >= most {
                return None;
            }
            *count += 1;
        }
        Some(Counted { addresses: addresses.clone(), address })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(address) = self.address else { return };
        let mut counts = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// What a test waits at most for something that should happen (a bound, not a target).
    const BOUND: Duration = Duration::from_secs(10);

    /// Limits of `head_timeout` and `connections`, with the node's others but a stall of 300 ms.
    fn limits(head_timeout: Duration, connections: usize) -> Limits {
        Limits { head_timeout, connections, stall: Duration::from_millis(300), ..Limits::NODE }
    }

    /// A server of `limits` on loopback: `/` answers "ok", `/slow` streams two chunks
    /// `gap` apart, `/big` 64 MiB, `/trusted/big` the same to a connection it trusts (as the
    /// API trusts one that showed its token). Returns its address and the sender that stops
    /// it.
    async fn server(
        limits: Limits,
        gap: Duration,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let slow = move || async move {
            let chunks = futures::stream::unfold(0, move |n| async move {
                match n {
                    0 => Some((Ok::<_, std::io::Error>("first ".to_owned()), 1)),
                    1 => {
                        tokio::time::sleep(gap).await;
                        Some((Ok("second".to_owned()), 2))
                    }
                    _ => None,
                }
            });
            axum::body::Body::from_stream(chunks)
        };
        let app = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/slow", get(slow))
            .route("/big", get(|| async { vec![0u8; 64 << 20] }))
            .route(
                "/trusted/big",
                get(|axum::Extension(trust): axum::Extension<Trust>| async move {
                    trust.grant();
                    vec![0u8; 64 << 20]
                }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop, served)
    }

    /// Sends a whole request for `path` on `stream` (closing the connection after it) and
    /// reads the whole answer.
    async fn request(stream: &mut TcpStream, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut answer = String::new();
        tokio::time::timeout(BOUND, stream.read_to_string(&mut answer))
            .await
            .expect("answered within the bound")
            .expect("read");
        answer
    }

    /// Whether the server closed `stream` (end of stream or reset) within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut rest)).await.is_ok()
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_whole_head_is_closed_and_others_are_served() {
        let limits = limits(Duration::from_millis(300), 8);
        let (addr, _stop, _served) = server(limits, Duration::ZERO).await;
        // Before the connections: their timers start when they are accepted, after this.
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("send");
        assert!(closed_within(&mut silent, BOUND).await, "a silent connection is closed");
        assert!(closed_within(&mut half, BOUND).await, "a half-sent head is closed");
        assert!(started.elapsed() >= Duration::from_millis(250), "not before its time");
        // An idle kept-alive connection too, after it was answered.
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        let mut answer = [0u8; 15];
        kept.read_exact(&mut answer).await.expect("answered");
        assert_eq!(&answer, b"HTTP/1.1 200 OK");
        assert!(closed_within(&mut kept, BOUND).await, "an idle connection is closed");
        let mut next = TcpStream::connect(addr).await.expect("connect");
        assert!(request(&mut next, "/").await.ends_with("ok"));
    }

    #[tokio::test]
    async fn a_client_without_the_token_that_stops_reading_is_closed_after_the_stall() {
        let (addr, _stop, _served) =
            server(limits(Duration::from_secs(60), 1), Duration::ZERO).await;
        // 64 MiB asked for and never read: the writes stall once the socket buffers are full.
        let mut reader = TcpStream::connect(addr).await.expect("connect");
        reader.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        // The one connection allowed is taken; once the stall ends it, another is served.
        let mut next = TcpStream::connect(addr).await.expect("connect");
        assert!(request(&mut next, "/").await.ends_with("ok"), "served after the stall");
    }

    #[tokio::test]
    async fn a_trusted_reader_that_pauses_gets_the_whole_answer() {
        let limits = limits(Duration::from_millis(200), 8);
        let (addr, _stop, _served) = server(limits, Duration::ZERO).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = "GET /trusted/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut first = [0u8; 15];
        stream.read_exact(&mut first).await.expect("the answer began");
        // Paused (a download, a watch piped into a busy program) past the head timeout and the
        // stall.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut rest = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut rest))
            .await
            .expect("ends")
            .expect("read");
        assert!(rest.len() > 64 << 20, "the whole answer: {} bytes", rest.len());
    }

    #[tokio::test]
    async fn a_response_takes_longer_than_the_head_timeout() {
        let limits = limits(Duration::from_millis(200), 8);
        let (addr, _stop, _served) = server(limits, Duration::from_millis(800)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let answer = request(&mut stream, "/slow").await;
        // Chunked: each chunk on its own line, after its size.
        assert!(answer.contains("\r\nfirst \r\n6\r\nsecond\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let limits = limits(Duration::from_secs(60), 2);
        let (addr, _stop, _served) = server(limits, Duration::ZERO).await;
        let first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        // The third connects (the backlog) but is not served while two are open.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let head = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        third.write_all(head.as_bytes()).await.expect("send");
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
        assert!(early.is_err(), "served past the limit: {early:?}");
        drop(first);
        let mut answer = String::new();
        tokio::time::timeout(BOUND, third.read_to_string(&mut answer))
            .await
            .expect("served once a connection closed")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"), "{answer}");
    }

    #[test]
    fn one_address_holds_its_share_of_the_connections() {
        let addresses = Arc::default();
        let ip = |text: &str| text.parse::<IpAddr>().expect("an address");
        let far = ip("203.0.113.7");
        let held: Vec<Counted> =
            (0..3).map(|_| Counted::take(&addresses, far, 3).expect("within its share")).collect();
        assert!(Counted::take(&addresses, far, 3).is_none(), "past its share");
        assert!(Counted::take(&addresses, ip("203.0.113.8"), 3).is_some(), "another address");
        assert!(
            Counted::take(&addresses, ip("::ffff:203.0.113.7"), 3).is_none(),
            "however written"
        );
        // An IPv6 host is its /64.
        let v6: Vec<Counted> = (1..=3)
            .map(|i| {
                Counted::take(&addresses, ip(&format!("2001:db8:1:2::{i}")), 3).expect("share")
            })
            .collect();
        assert!(Counted::take(&addresses, ip("2001:db8:1:2:ffff::9"), 3).is_none(), "one /64");
        assert!(Counted::take(&addresses, ip("2001:db8:1:3::1"), 3).is_some(), "another /64");
        // Loopback is not counted; the local network is (a proxy's clients are one address).
        for here in ["127.0.0.1", "::1"] {
            let held: Vec<Counted> =
                (0..10).map(|_| Counted::take(&addresses, ip(here), 3).expect(here)).collect();
            drop(held);
        }
        let bridge: Vec<Counted> = (0..3)
            .map(|_| Counted::take(&addresses, ip("172.17.0.1"), 3).expect("share"))
            .collect();
        assert!(Counted::take(&addresses, ip("172.17.0.1"), 3).is_none(), "a bridge's share");
        // A connection that shows the token no longer counts.
        let trusted: Vec<Trust> = bridge.into_iter().map(Trust::new).collect();
        trusted[0].grant();
        let next = Counted::take(&addresses, ip("172.17.0.1"), 3).expect("one connection trusted");
        assert!(Counted::take(&addresses, ip("172.17.0.1"), 3).is_none());
        drop((next, trusted));
        // On a local link, each address is its own.
        let link: Vec<Counted> =
            (0..3).map(|_| Counted::take(&addresses, ip("fe80::1"), 3).expect("share")).collect();
        assert!(Counted::take(&addresses, ip("fe80::2"), 3).is_some(), "another host on the link");
        drop(link);
        drop(held);
        drop(v6);
        assert!(Counted::take(&addresses, far, 3).is_some(), "its connections closed");
        assert!(addresses.lock().expect("lock").len() <= 1, "counts go with their connections");
    }

    #[tokio::test]
    async fn a_stop_lets_a_request_under_way_finish_and_closes_idle_connections() {
        let limits = limits(Duration::from_secs(60), 8);
        let (addr, stop, served) = server(limits, Duration::from_millis(500)).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        let head = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
        busy.write_all(head.as_bytes()).await.expect("send");
        let mut first = [0u8; 15];
        busy.read_exact(&mut first).await.expect("the answer began");
        stop.send(()).expect("the server runs");
        assert!(closed_within(&mut idle, BOUND).await, "the idle connection is closed");
        let mut rest = String::new();
        tokio::time::timeout(BOUND, busy.read_to_string(&mut rest))
            .await
            .expect("the answer ended")
            .expect("read");
        assert!(rest.contains("second"), "the request under way finished: {rest}");
        tokio::time::timeout(BOUND, served).await.expect("serve returned").expect("no panic");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }
}
