//! The API's HTTP server: the router on hyper's HTTP/1, with two bounds that `axum::serve`
//! does not keep, so that clients cannot take the node's file descriptors (which its peers
//! need; the libp2p side bounds its own, `dkvs_net::Config::max_connections` and admission).
//!
//! - A connection must send a request's head within [`Limits::head_timeout`], and an idle
//!   kept-alive connection its next one: a client that sends half a request, or nothing,
//!   is closed then (hyper's header-read timeout, which needs the timer `axum::serve` does
//!   not give it). A response takes as long as it takes: a watch's stream is not cut.
//! - A response's write that makes no progress for [`Limits::stall`] (a client that stopped
//!   reading), and a request body that sends nothing for as long while the node reads it,
//!   end their connection.
//! - At most [`Limits::connections`] are open at once. Past that, new connections wait in the
//!   listen backlog until one closes (a burst of clients is served late, not refused), and the
//!   node's log says so, once a minute at most. One address beyond this machine holds at
//!   most [`Limits::per_address`] of them; past that, its new connections are closed at once.
//!
//! A stop ([`serve`]'s `shutdown`) closes the listener, lets the requests under way finish
//! and closes idle connections; [`serve`] returns when all are closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};

use axum::http::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
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
    /// How long a response's write, or a request body's read, may make no progress.
    pub(crate) stall: Duration,
    /// How many connections may be open at once.
    pub(crate) connections: usize,
    /// How many of them one address beyond this machine may hold.
    pub(crate) per_address: usize,
}

impl Limits {
    /// The node's: 30 s for a head (hyper's own default, and twice the 15 s that the `dkvs`
    /// client, ureq, keeps an idle connection: it lets go first, so it never sends a request
    /// on a connection the node is closing) and for a stall, 256 connections (a quarter of a
    /// common descriptor limit of 1024; a command takes one, a watch one while it runs), 32
    /// from one address beyond loopback.
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
/// How often, at most, the log says that connections wait for the limit.
const FULL_WARNING: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then until the
/// connections open then have closed (see the module's doc).
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let addresses: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.head_timeout);
    let stall = limits.stall;
    let service = app.map_request(move |request: Request<Incoming>| {
        request.map(|body| axum::body::Body::new(Stalling::new(body, stall)))
    });
    let mut warned: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if permits.available_permits() == 0 && warned.is_none_or(|at| at.elapsed() >= FULL_WARNING)
        {
            tracing::warn!(
                limit = limits.connections,
                "the API holds as many connections as it may; new ones wait until one closes"
            );
            warned = Some(Instant::now());
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
            // Closed at once: one address beyond this machine holds its share.
            continue;
        };
        let io = TokioIo::new(Stalling::new(stream, stall));
        let connection = builder.serve_connection(io, TowerToHyperService::new(service.clone()));
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _counted = counted;
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

/// A connection counted against its address's share ([`Limits::per_address`]) while it lives;
/// loopback is not counted.
struct Counted {
    addresses: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: Option<IpAddr>,
}

impl Counted {
    /// Counts a connection from `ip`; `None` when its address holds `most` already.
    fn take(
        addresses: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        most: usize,
    ) -> Option<Counted> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return Some(Counted { addresses: addresses.clone(), ip: None });
        }
        let mut counts = addresses.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(Counted { addresses: addresses.clone(), ip: Some(ip) })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut counts = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// A connection's writes, or a request body's frames, that may not wait longer than `stall`
/// without progress: past it, an error ends them (and hyper the connection).
struct Stalling<T> {
    inner: T,
    stall: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Stalling<T> {
    fn new(inner: T, stall: Duration) -> Stalling<T> {
        Stalling { inner, stall, deadline: None }
    }

    /// `polled` as is, unless it has been pending for `stall`.
    fn watch<R>(&mut self, polled: Poll<R>, cx: &mut Context<'_>, stalled: R) -> Poll<R> {
        if polled.is_ready() {
            self.deadline = None;
            return polled;
        }
        let stall = self.stall;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(deadline.as_mut().poll(cx));
        self.deadline = None;
        Poll::Ready(stalled)
    }
}

fn stalled(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the client {what}"))
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Reads are not timed here: an idle connection waits for its next head (hyper's
        // timeout), a body for its frames (below), a watch's stream for ever.
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
        self.watch(polled, cx, Err(stalled("stopped reading the answer")))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(polled, cx, Err(stalled("stopped reading the answer")))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Body for Stalling<Incoming> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        let stalled = Some(Err(stalled("stopped sending the request body").into()));
        self.watch(polled, cx, stalled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    /// `gap` apart, `/big` 64 MiB, `/echo` the length of the body it read. Returns its
    /// address and the sender that stops it.
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
                "/echo",
                axum::routing::post(
                    |body: axum::body::Bytes| async move { body.len().to_string() },
                ),
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
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("send");
        let started = tokio::time::Instant::now();
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

    #[tokio::test]
    async fn a_client_that_stops_reading_or_sending_a_body_is_closed_after_the_stall() {
        let (addr, _stop, _served) =
            server(limits(Duration::from_secs(60), 1), Duration::ZERO).await;
        // 64 MiB asked for and never read: the writes stall once the socket buffers are full.
        let mut reader = TcpStream::connect(addr).await.expect("connect");
        reader.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        // Meanwhile the one connection allowed is taken; once the stall ends it, another is
        // served.
        let mut next = TcpStream::connect(addr).await.expect("connect");
        assert!(request(&mut next, "/").await.ends_with("ok"), "served after the stall");
        drop(reader);
        // A body promised and not sent (the handler reads it).
        let mut sender = TcpStream::connect(addr).await.expect("connect");
        let head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        sender.write_all(head.as_bytes()).await.expect("send");
        let started = tokio::time::Instant::now();
        assert!(closed_within(&mut sender, BOUND).await, "closed once the body stalled");
        assert!(started.elapsed() >= Duration::from_millis(250), "not before its time");
        let mut next = TcpStream::connect(addr).await.expect("connect");
        assert!(request(&mut next, "/").await.ends_with("ok"));
        // A body that comes whole is read whole.
        let mut whole = TcpStream::connect(addr).await.expect("connect");
        let post =
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nabcd";
        whole.write_all(post.as_bytes()).await.expect("send");
        let mut answer = String::new();
        whole.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n4"), "{answer}");
    }

    #[test]
    fn one_address_beyond_this_machine_holds_its_share_of_the_connections() {
        let addresses = Arc::default();
        let far: IpAddr = "203.0.113.7".parse().expect("ip");
        let held: Vec<Counted> =
            (0..3).map(|_| Counted::take(&addresses, far, 3).expect("within its share")).collect();
        assert!(Counted::take(&addresses, far, 3).is_none(), "past its share");
        assert!(Counted::take(&addresses, "203.0.113.8".parse().expect("ip"), 3).is_some());
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert!(Counted::take(&addresses, mapped, 3).is_none(), "one address, however written");
        // This machine is not counted.
        let here: Vec<Counted> = (0..10)
            .map(|_| {
                Counted::take(&addresses, "127.0.0.1".parse().expect("ip"), 3).expect("loopback")
            })
            .collect();
        drop(here);
        drop(held);
        assert!(Counted::take(&addresses, far, 3).is_some(), "its connections closed");
        assert!(addresses.lock().expect("lock").len() <= 1);
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
