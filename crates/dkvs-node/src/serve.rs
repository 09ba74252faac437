//! The API's HTTP server: the router on hyper's HTTP/1, with two bounds that `axum::serve`
//! does not keep, so that clients cannot take the node's file descriptors (which its peers
//! need; the libp2p side bounds its own, `dkvs_net::Config::max_connections` and admission).
//!
//! - A connection must send a request's head within [`Limits::head_timeout`], and an idle
//!   kept-alive connection its next one: a client that sends half a request, or nothing,
//!   is closed then (hyper's header-read timeout, which needs the timer `axum::serve` does
//!   not give it). A response takes as long as it takes: a watch's stream is not cut.
//! - At most [`Limits::connections`] are open at once. Past that, new connections wait in the
//!   listen backlog until one closes: a burst of clients is served late, not refused.
//!
//! A stop ([`serve`]'s `shutdown`) closes the listener, lets the requests under way finish
//! and closes idle connections; [`serve`] returns when all are closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The bounds [`serve`] keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a connection may take to send a request's head, or stay idle between requests.
    pub(crate) head_timeout: Duration,
    /// How many connections may be open at once.
    pub(crate) connections: usize,
}

impl Limits {
    /// The node's: 30 s for a head (hyper's own default, and twice the 15 s that the `dkvs`
    /// client, ureq, keeps an idle connection: it lets go first, so it never sends a request
    /// on a connection the node is closing), and 256 connections (a quarter of a common
    /// descriptor limit of 1024; a command takes one, a watch one while it runs).
    pub(crate) const NODE: Limits =
        Limits { head_timeout: Duration::from_secs(30), connections: 256 };
}

/// How long the listener rests after an accept failed (out of descriptors, say) before it
/// tries again: trying at once would spin on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then until the
/// connections open then have closed (see the module's doc).
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.head_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "the API cannot accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// What a test waits at most for something that should happen (a bound, not a target).
    const BOUND: Duration = Duration::from_secs(10);

    /// A server of `limits` on loopback: `/` answers "ok", `/slow` streams two chunks
    /// `gap` apart. Returns its address and the sender that stops it.
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
        let app = axum::Router::new().route("/", get(|| async { "ok" })).route("/slow", get(slow));
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
        let limits = Limits { head_timeout: Duration::from_millis(300), connections: 8 };
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
        let limits = Limits { head_timeout: Duration::from_millis(200), connections: 8 };
        let (addr, _stop, _served) = server(limits, Duration::from_millis(800)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let answer = request(&mut stream, "/slow").await;
        // Chunked: each chunk on its own line, after its size.
        assert!(answer.contains("\r\nfirst \r\n6\r\nsecond\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let limits = Limits { head_timeout: Duration::from_secs(60), connections: 2 };
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
    async fn a_stop_lets_a_request_under_way_finish_and_closes_idle_connections() {
        let limits = Limits { head_timeout: Duration::from_secs(60), connections: 8 };
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
