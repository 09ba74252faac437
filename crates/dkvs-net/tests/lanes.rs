//! The record protocol's lanes between real libp2p swarms (memory transport, noise, yamux):
//! bursts are answered in full, unanswered requests fail at their deadline and a dead lane is
//! replaced by a new one, and a peer that breaks the protocol (does not read its answers,
//! repeats an id, opens more lanes than allowed, answers what was never asked or with bytes
//! that are no answer) loses its lane without costing the node more. A lane to a peer that
//! says it serves records is opened before the first request needs it.

use std::time::Duration;

use dkvs_net::codec::{PROTOCOL, pb};
use dkvs_net::lane::{self, Failure};
use dkvs_net::libp2p::core::transport::{MemoryTransport, Transport as _};
use dkvs_net::libp2p::core::upgrade::Version;
use dkvs_net::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use dkvs_net::libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify, identity, noise, yamux,
};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};

/// Every test ends within this.
const TEST: Duration = Duration::from_secs(60);

fn swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&identity::Keypair) -> B) -> Swarm<B> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok(MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .boxed())
        })
        .expect("a memory transport")
        .with_behaviour(|key| behaviour(key))
        .expect("a behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Listens on the memory transport; the address.
async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm.listen_on("/memory/0".parse().expect("an address")).expect("listens");
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

/// Dials `peer` at `addr` and waits until connected.
async fn connect<B: NetworkBehaviour>(swarm: &mut Swarm<B>, peer: PeerId, addr: Multiaddr) {
    swarm.dial(addr).expect("dials");
    loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await
            && peer_id == peer
        {
            return;
        }
    }
}

/// A peer whose lanes answer every get with `len` bytes (echoing the key first), or answer
/// nothing while `silent`; it runs until the test ends. Returns its id and address.
async fn responder(timeout: Duration, len: usize, silent: bool) -> (PeerId, Multiaddr) {
    let mut swarm = swarm(|_| lane::Behaviour::new(timeout));
    let addr = listen(&mut swarm).await;
    let id = *swarm.local_peer_id();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(lane::Event::Request { request, channel, .. }) =
                swarm.select_next_some().await
            {
                if silent {
                    held.push(channel);
                    continue;
                }
                let Some(pb::request::Kind::Get(get)) = request.kind else { continue };
                let mut record = get.key;
                record.resize(len.max(record.len()), 0x5a);
                let answer = pb::GetResponse { record, ..Default::default() };
                let response = pb::Response { kind: Some(pb::response::Kind::Get(answer)) };
                swarm.behaviour_mut().send_response(channel, response).expect("connected");
            }
        }
    });
    (id, addr)
}

fn get(key: &str) -> pb::Request {
    let get = pb::GetRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    pb::Request { kind: Some(pb::request::Kind::Get(get)) }
}

/// An asker connected to `peer` at `addr`.
async fn asker(timeout: Duration, peer: PeerId, addr: Multiaddr) -> Swarm<lane::Behaviour> {
    let mut swarm = swarm(|_| lane::Behaviour::new(timeout).with_max_queued(10_000));
    connect(&mut swarm, peer, addr).await;
    swarm
}

/// The next lane event of `swarm`.
async fn next(swarm: &mut Swarm<lane::Behaviour>) -> lane::Event {
    loop {
        if let SwarmEvent::Behaviour(event) = swarm.select_next_some().await {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_answered_in_full_each_with_its_own_answer() {
    tokio::time::timeout(TEST, async {
        // 2000 gets of 1 KiB at once, 10 KiB answers: 2 MB and 20 MB through buffers of
        // 128 KiB and yamux's window, so both ends wait on the stream over and over.
        let (peer, addr) = responder(Duration::from_secs(20), 10 * 1024, false).await;
        let mut asker = asker(Duration::from_secs(20), peer, addr).await;
        let mut asked = std::collections::HashMap::new();
        for i in 0..2000 {
            let key = format!("/k/{i}/{}", "x".repeat(1000));
            asked.insert(asker.behaviour_mut().send_request(&peer, get(&key)), key);
        }
        while !asked.is_empty() {
            match next(&mut asker).await {
                lane::Event::Response { request_id, response, .. } => {
                    let key = asked.remove(&request_id).expect("an answer to a request asked");
                    let Some(pb::response::Kind::Get(got)) = response.kind else {
                        panic!("not a get's answer")
                    };
                    assert!(got.record.starts_with(key.as_bytes()), "the answer to {key}");
                    assert_eq!(got.record.len(), 10 * 1024);
                }
                other => panic!("{other:?} with {} unanswered", asked.len()),
            }
        }
    })
    .await
    .expect("within the test's time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_fail_at_their_deadline_and_the_next_goes_on_a_new_lane() {
    tokio::time::timeout(TEST, async {
        let timeout = Duration::from_secs(1);
        // A peer that takes lanes and never answers (nor closes them).
        let (peer, addr, mut lanes) = raw_responder().await;
        let mut asker = asker(timeout, peer, addr).await;
        let started = tokio::time::Instant::now();
        let ids: Vec<_> = (0..3)
            .map(|i| asker.behaviour_mut().send_request(&peer, get(&format!("/k/{i}"))))
            .collect();
        let mut kept = vec![driving(&mut asker, lanes.next()).await.expect("a lane").1];
        for _ in 0..3 {
            match next(&mut asker).await {
                lane::Event::Failure { request_id, error, .. } => {
                    assert!(ids.contains(&request_id));
                    assert_eq!(error, Failure::Timeout(timeout));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(started.elapsed() >= timeout, "not before the deadline");
        // No answer came on the lane since those requests went: it is dead, and the next
        // request opens another, where it too fails at its own deadline, not earlier.
        let sent = tokio::time::Instant::now();
        let id = asker.behaviour_mut().send_request(&peer, get("/k/again"));
        kept.push(driving(&mut asker, lanes.next()).await.expect("a second lane").1);
        // One written after it on the same lane fails with it, for the lane's silence. (Half
        // a timeout later: a busy machine's late wake-up at the first's deadline still finds
        // the second's ahead.)
        driving(&mut asker, tokio::time::sleep(timeout / 2)).await;
        let after = asker.behaviour_mut().send_request(&peer, get("/k/after"));
        match next(&mut asker).await {
            lane::Event::Failure { request_id, error: Failure::Timeout(_), .. } => {
                assert_eq!(request_id, id);
                assert!(sent.elapsed() >= timeout);
            }
            other => panic!("{other:?}"),
        }
        match next(&mut asker).await {
            lane::Event::Failure { request_id, error, .. } => {
                // Before its own deadline (it would have timed out itself).
                assert_eq!((request_id, error), (after, Failure::Unanswered(timeout)));
            }
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("within the test's time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_never_asked_ends_the_lane_and_a_malformed_answer_fails_its_request() {
    tokio::time::timeout(TEST, async {
        let (peer, addr, mut lanes) = raw_responder().await;
        let mut asker = asker(Duration::from_secs(20), peer, addr).await;
        let first = asker.behaviour_mut().send_request(&peer, get("/k/1"));
        let (_, mut stream) = driving(&mut asker, lanes.next()).await.expect("a lane");
        let id = driving(&mut asker, read_id(&mut stream)).await;
        // Bytes that are no `Response` for the request asked: that request fails, the lane stays.
        let mut garbage = Vec::new();
        lane::encode_frame(id, &[0xff; 8], &mut garbage).expect("small");
        stream.write_all(&garbage).await.expect("writes");
        stream.flush().await.expect("flushes");
        match next(&mut asker).await {
            lane::Event::Failure { request_id, error: Failure::Malformed(_), .. } => {
                assert_eq!(request_id, first)
            }
            other => panic!("{other:?}"),
        }
        // An answer to an id larger than any asked: a violation; what is in flight fails.
        let second = asker.behaviour_mut().send_request(&peer, get("/k/2"));
        let id = driving(&mut asker, read_id(&mut stream)).await;
        let mut forged = Vec::new();
        let answer = pb::Response { kind: Some(pb::response::Kind::Get(Default::default())) };
        lane::encode_frame(id + 1000, &prost::Message::encode_to_vec(&answer), &mut forged)
            .expect("small");
        stream.write_all(&forged).await.expect("writes");
        stream.flush().await.expect("flushes");
        match next(&mut asker).await {
            lane::Event::Failure { request_id, error: Failure::Stream(why), .. } => {
                assert_eq!(request_id, second);
                assert!(why.contains("never asked"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("within the test's time");
}

/// Runs `f` while driving `asker` (which must report nothing meanwhile).
async fn driving<T>(
    asker: &mut Swarm<lane::Behaviour>,
    f: impl std::future::Future<Output = T>,
) -> T {
    let mut f = std::pin::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return out,
            event = asker.select_next_some() => {
                if let SwarmEvent::Behaviour(event) = event {
                    panic!("{event:?} while waiting");
                }
            }
        }
    }
}

/// Reads one frame's id from a lane.
async fn read_id(stream: &mut dkvs_net::libp2p::Stream) -> u64 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).await.expect("a frame");
        buf.push(byte[0]);
        if let Some((id, _)) = lane::decode_frame(&buf).expect("well formed") {
            return id;
        }
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Raw {
    stream: libp2p_stream::Behaviour,
}

/// Drives `swarm` in the background until the test ends (its streams are the test's).
fn drive(mut swarm: Swarm<Raw>) {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
}

/// A peer that speaks the lane's bytes by hand, connected to `peer`.
async fn raw(peer: PeerId, addr: Multiaddr) -> libp2p_stream::Control {
    let mut swarm = swarm(|_| Raw { stream: libp2p_stream::Behaviour::new() });
    let control = swarm.behaviour().stream.new_control();
    connect(&mut swarm, peer, addr).await;
    drive(swarm);
    control
}

/// A peer that takes the lanes opened to it and leaves them to the test, which speaks their
/// bytes by hand: its id, its address and the lanes as they come.
async fn raw_responder() -> (PeerId, Multiaddr, libp2p_stream::IncomingStreams) {
    let mut swarm = swarm(|_| Raw { stream: libp2p_stream::Behaviour::new() });
    let lanes = swarm.behaviour().stream.new_control().accept(PROTOCOL).expect("accepts");
    let addr = listen(&mut swarm).await;
    let id = *swarm.local_peer_id();
    drive(swarm);
    (id, addr, lanes)
}

fn frame(id: u64, request: &pb::Request) -> Vec<u8> {
    let mut out = Vec::new();
    lane::encode_frame(id, &prost::Message::encode_to_vec(request), &mut out).expect("small");
    out
}

/// Reads `stream` until it ends; true if it ended (closed or reset) within `within`.
async fn ends_within(stream: &mut dkvs_net::libp2p::Stream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_its_answers_loses_its_lane() {
    tokio::time::timeout(TEST, async {
        let timeout = Duration::from_secs(1);
        let (peer, addr) = responder(timeout, 16 * 1024, false).await;
        let mut control = raw(peer, addr).await;
        let mut stream = control.open_stream(peer, PROTOCOL).await.expect("a lane");
        // 40 gets answered with 16 KiB each: 640 KiB that this peer does not read, more than
        // yamux's window and the node's buffer; the node answers them all (none is let go
        // unanswered), so only the peer's not reading can end the lane.
        for id in 0..40 {
            stream.write_all(&frame(id, &get(&format!("/k/{id}")))).await.expect("writes");
        }
        stream.flush().await.expect("flushes");
        tokio::time::sleep(3 * timeout).await;
        // The node has dropped the lane with what it held: reading now finds its end.
        assert!(ends_within(&mut stream, Duration::from_secs(5)).await, "the lane is still open");
    })
    .await
    .expect("within the test's time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_ends_the_lane_and_lanes_past_the_limit_are_refused() {
    tokio::time::timeout(TEST, async {
        let timeout = Duration::from_secs(5);
        // A silent node: its first request on a lane stays unanswered, so the repeat comes
        // while it is pending.
        let (peer, addr) = responder(timeout, 100, true).await;
        let mut control = raw(peer, addr).await;
        let mut repeated = control.open_stream(peer, PROTOCOL).await.expect("a lane");
        repeated.write_all(&frame(7, &get("/k/a"))).await.expect("writes");
        repeated.write_all(&frame(7, &get("/k/b"))).await.expect("writes");
        repeated.flush().await.expect("flushes");
        assert!(
            ends_within(&mut repeated, Duration::from_secs(3)).await,
            "a repeat is a violation"
        );

        // Two lanes are kept; a third is refused at once.
        let mut lanes = Vec::new();
        for i in 0..2 {
            let mut lane = control.open_stream(peer, PROTOCOL).await.expect("a lane");
            lane.write_all(&frame(i, &get("/k/c"))).await.expect("writes");
            lane.flush().await.expect("flushes");
            lanes.push(lane);
        }
        let mut third = control.open_stream(peer, PROTOCOL).await.expect("negotiated");
        let _ = third.write_all(&frame(9, &get("/k/d"))).await;
        let _ = third.flush().await;
        assert!(ends_within(&mut third, Duration::from_secs(3)).await, "a third lane is refused");
        for lane in &mut lanes {
            assert!(!ends_within(lane, Duration::from_millis(300)).await, "the first two stay");
        }
    })
    .await
    .expect("within the test's time");
}

/// The DHT's protocol in [`lane::Behaviour::opening_early_to`]'s tests.
const SERVES: StreamProtocol = StreamProtocol::new("/test/serves");

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Early {
    records: lane::Behaviour,
    identify: identify::Behaviour,
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Saying {
    stream: libp2p_stream::Behaviour,
    identify: identify::Behaviour,
}

fn identify(key: &identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new("/test/1.0.0".into(), key.public()))
}

/// Whether a node that opens lanes early to peers speaking [`SERVES`] opened one to a peer
/// that takes lanes, and speaks [`SERVES`] too when `serves`, without being asked anything:
/// waits for the lane until the node has heard what the peer speaks, and a second more.
async fn opened_early_to(serves: bool) -> bool {
    let mut peer =
        swarm(|key| Saying { stream: libp2p_stream::Behaviour::new(), identify: identify(key) });
    let mut control = peer.behaviour().stream.new_control();
    let mut lanes = control.accept(PROTOCOL).expect("accepts");
    let _serving = serves.then(|| control.accept(SERVES).expect("accepts"));
    let addr = listen(&mut peer).await;
    let id = *peer.local_peer_id();
    tokio::spawn(async move {
        loop {
            peer.select_next_some().await;
        }
    });
    let mut node = swarm(|key| Early {
        records: lane::Behaviour::new(Duration::from_secs(10)).opening_early_to(SERVES),
        identify: identify(key),
    });
    connect(&mut node, id, addr).await;
    let (heard_tx, heard) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut heard_tx = Some(heard_tx);
        loop {
            let event = node.select_next_some().await;
            if let SwarmEvent::Behaviour(EarlyEvent::Identify(identify::Event::Received { .. })) =
                event
                && let Some(tx) = heard_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    let lane = async {
        let _ = lanes.next().await;
    };
    let heard_and_a_second = async {
        heard.await.expect("the node heard what the peer speaks");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::select! {
        () = lane => true,
        () = heard_and_a_second => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_is_opened_early_to_a_peer_that_serves_records_and_only_to_one() {
    tokio::time::timeout(TEST, async {
        assert!(opened_early_to(true).await, "no lane to a peer that serves records");
        assert!(!opened_early_to(false).await, "a lane to a peer that only takes lanes");
    })
    .await
    .expect("within the test's time");
}
