//! `dkvs node`: starts the network node and the API, and stops both cleanly on a signal.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use dkvs_net::NodeBuilder;
use dkvs_net::libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use dkvs_store::Store;
use rand::RngExt as _;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::api::{self, AppState};
use crate::config::NodeConfig;
use crate::home::{ApiInfo, Home};
use crate::metrics::Metrics;
use crate::serve;

/// How long a stop waits for the API requests under way.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a node from `home` with `config` until SIGINT or SIGTERM.
pub async fn run(
    home: Home,
    config: NodeConfig,
    passphrase: Zeroizing<String>,
) -> anyhow::Result<()> {
    home.ensure()?;
    // Addresses are checked before anything starts: a typo is said before the node listens.
    let crate::config::Addresses { listen, bootstrap, ipfs_bootstrap } = config.addresses()?;
    let keystore = home.keystore()?;
    let unlocked = open_default(&home, &keystore, &passphrase).await?;
    let identity = home.node_identity()?;
    let store = Store::open(home.data_dir(), config.store()).map_err(|e| match e {
        dkvs_store::StoreError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::WouldBlock =>
        {
            anyhow::anyhow!(
                "another node runs on the home {} (its store is locked: {source}): stop it, or \
                 give this one another --home",
                home.root().display()
            )
        }
        e => anyhow::Error::new(e)
            .context(format!("cannot open the store in {}", home.data_dir().display())),
    })?;
    let mail_dir = home.data_dir().join("mail");
    let mail = dkvs_mail::Mail::open(&mail_dir, identity.clone(), config.shelf()?)
        .with_context(|| format!("cannot open the mail kept in {}", mail_dir.display()))?;
    let ipfs_dir = home.data_dir().join("ipfs");
    let ipfs = dkvs_ipfs::Ipfs::open(&ipfs_dir, &identity, config.blocks())
        .with_context(|| format!("cannot open the IPFS blocks kept in {}", ipfs_dir.display()))?;
    let services = crate::services::Services::new(mail, ipfs);
    let node =
        NodeBuilder::new(identity, store, config.net()?).with_extension(|_| services).spawn()?;
    // Mail follows its mailboxes' closest replicas as peers come and go.
    dkvs_mail::spawn_hand_over(&node, config.mail()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "peer id: {}", node.peer_id())?;
    for addr in listen {
        // The error names the address.
        let bound = node.listen_on(addr.clone()).await?;
        writeln!(out, "listening on: {}", bound.with(Protocol::P2p(node.peer_id())))?;
    }
    for addr in bootstrap {
        match node.dial(addr.clone()).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(%addr, error = %e, "bootstrap peer unreachable"),
        }
    }
    for addr in ipfs_bootstrap {
        node.with_extension(move |ipfs: &mut dkvs_ipfs::Ipfs, _| ipfs.connect(addr)).await?;
    }
    let rejoined = if config.rejoin { rejoin(&home, &node).await } else { 0 };
    if (!config.bootstrap.is_empty() || rejoined > 0)
        && let Err(e) = node.bootstrap().await
    {
        tracing::warn!(error = %e, "bootstrap walk failed; the node keeps trying as peers appear");
    }

    let listener = tokio::net::TcpListener::bind(&config.api)
        .await
        .with_context(|| format!("cannot bind the API to {}", config.api))?;
    let api_addr = listener.local_addr()?;
    if !api_addr.ip().is_loopback() {
        tracing::warn!(
            "the API listens on {api_addr}, beyond this machine: every request needs the token \
             (the gateway's and /metrics too), and it travels unencrypted (plain HTTP)"
        );
    }
    let token = hex::encode(rand::rng().random::<[u8; 32]>());
    let url = format!("http://{api_addr}");
    home.write_api(&ApiInfo { url: url.clone(), token: token.clone() })?;
    // Listened for before the node says it is up: a SIGINT right after "api:" (a script's,
    // a test's) found no handler yet while the API was starting, and its default action
    // killed the node instead of stopping it.
    let mut signals = Signals::new();
    writeln!(out, "api: {url}")?;
    out.flush()?;
    drop(out);

    let (stop, stopping) = tokio::sync::watch::channel(false);
    // A damaged keep list is set aside (not overwritten by the next `put --keep`).
    let kept = home.read_kept().unwrap_or_else(|e| {
        let aside = home.set_aside_kept();
        tracing::warn!(error = %e, set_aside = %aside.display(), "cannot read the records to keep alive");
        Vec::new()
    });
    let state = Arc::new(AppState {
        node: node.clone(),
        keystore,
        home: home.clone(),
        unlocked: Mutex::new(unlocked),
        passphrase,
        token,
        config,
        metrics: Metrics::default(),
        stopping,
        check_host: api_addr.ip().is_loopback(),
        kept: Mutex::new(kept.clone()),
        mail: Mutex::new(api::MailState::default()),
        tokenless: Arc::new(tokio::sync::Semaphore::new(api::TOKENLESS_REQUESTS)),
    });
    // What the node kept alive before it stopped, it keeps alive again. The list stays whole:
    // an entry whose account does not unlock in this run stays listed (and in the file) for a
    // run that can unlock it.
    for entry in kept {
        let key = match dkvs_record::Key::new(entry.key.clone()) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "not keeping an invalid key");
                continue;
            }
        };
        match state.account(Some(&entry.account)).await {
            Ok(owner) => {
                node.keep_alive(owner, &key, entry.ttl_secs.saturating_mul(1000)).await;
            }
            Err(e) => {
                tracing::warn!(%key, account = %entry.account, error = %e.message(), "cannot keep alive in this run");
            }
        }
    }
    // The peers to rejoin by are written now and then too, soon after the start first: a
    // node killed keeps them, also one killed in its first minutes.
    let remembering = {
        let (home, node) = (home.clone(), node.downgrade());
        tokio::spawn(async move {
            for pause in doubling(REMEMBER_FIRST, REMEMBER_EVERY) {
                tokio::time::sleep(pause).await;
                let Some(node) = node.upgrade() else { return };
                remember_peers(&home, &node).await;
            }
        })
    };
    let (signalled, on_signal) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        signals.recv().await;
        // Open watch streams end now, so the graceful shutdown does not wait on them.
        let _ = stop.send(true);
        let _ = signalled.send(signals);
    };
    let served = serve::serve(listener, api::router(state), serve::Limits::NODE, shutdown);
    // A stop waits for the requests under way, but not for ever: a client that sent half a
    // request, or a long file transfer, is cut off after SHUTDOWN_GRACE, or at a second signal.
    let cut_off = async {
        let Ok(mut signals) = on_signal.await else {
            return std::future::pending().await;
        };
        tokio::select! {
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
            () = signals.recv() => {}
        }
    };
    tokio::select! {
        () = served => {}
        () = cut_off => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "closing the API connections still open");
        }
    };
    tracing::info!("shutting down");
    remembering.abort();
    let _ = remembering.await;
    remember_peers(&home, &node).await;
    home.remove_api();
    node.shutdown().await;
    Ok(())
}

/// The default account, opened with `passphrase`, as the first entry of the accounts the node
/// has unlocked. A passphrase that does not open it stops the start: a node run so would fail
/// every operation as its account, and the records it keeps alive for it would lapse while it
/// runs. (Another account that does not open is said when it is first used; the node's
/// accounts are meant to share its passphrase.)
async fn open_default(
    home: &Home,
    keystore: &dkvs_account::keystore::Keystore,
    passphrase: &Zeroizing<String>,
) -> anyhow::Result<HashMap<String, Arc<dkvs_account::Keypair>>> {
    let Some(name) = home.default_account()? else { return Ok(HashMap::new()) };
    let (keystore, named, passphrase) = (keystore.clone(), name.clone(), passphrase.clone());
    let opened = tokio::task::spawn_blocking(move || keystore.load(&named, &passphrase)).await?;
    match opened {
        Ok(pair) => Ok(HashMap::from([(name, Arc::new(pair))])),
        Err(dkvs_account::keystore::KeystoreError::WrongPassphrase { .. }) => anyhow::bail!(
            "the passphrase does not open the default account {name:?}: the node did not start \
             (the passphrase is DKVS_PASSPHRASE's when it is set, else the one typed at the \
             prompt)"
        ),
        // A default account whose file is gone is said when it is used (unknown_account).
        Err(dkvs_account::keystore::KeystoreError::NotFound(_)) => {
            tracing::warn!(account = %name, "the default account is not in the keystore");
            Ok(HashMap::new())
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot open the default account {name:?}")))
        }
    }
}

/// How many addresses of the last run's peers a node remembers and dials at its start.
const REMEMBERED_PEERS: usize = 32;
/// How long a start waits at most on the dials of the last run's peers (those that answer
/// are connected by then; a dead host's dial would wait for the setup timeout, 10 s).
const REJOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The peers of the last run (`peers.json`), each with its addresses, in the file's order.
fn remembered(home: &Home) -> Vec<(PeerId, Vec<Multiaddr>)> {
    let addrs = home.read_peers().unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot read the peers of the last run");
        Vec::new()
    });
    let mut peers: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
    for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).take(REMEMBERED_PEERS) {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else { continue };
        match peers.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, addrs)) => addrs.push(addr),
            None => peers.push((peer, vec![addr])),
        }
    }
    peers
}

/// Dials the peers of the last run together (one dial a peer, trying its addresses in turn),
/// and waits until identify told of each that connected whether it serves the DHT, or `wait`
/// is over; returns how many serve it. The dials go on past the wait.
async fn dial_remembered(
    node: &dkvs_net::Node,
    peers: &[(PeerId, Vec<Multiaddr>)],
    wait: std::time::Duration,
) -> usize {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + wait;
    let mut dials: futures::stream::FuturesUnordered<_> =
        peers.iter().map(|(peer, addrs)| node.rejoin(*peer, addrs.clone())).collect();
    let mut serving = 0;
    while let Ok(Some(dialed)) = tokio::time::timeout_at(deadline, dials.next()).await {
        serving += usize::from(matches!(dialed, Ok(true)));
    }
    serving
}

/// Whether a DHT server is connected now (a remembered peer, a bootstrap peer, one that
/// found this node): this node is part of a network.
async fn in_a_network(node: &dkvs_net::Node) -> bool {
    let table = node.routing_table().await;
    node.connected_peers().await.iter().any(|peer| table.contains(peer))
}

/// Rejoins the network of the last run: dials its peers, and when none of them serves the
/// DHT now (this node's network is not up yet, they are stopped), tries again in the
/// background, 30 s later and twice as long after each try (10 min at most), until one does
/// or the node has other peers. Returns how many serve the DHT now.
async fn rejoin(home: &Home, node: &dkvs_net::Node) -> usize {
    let peers = remembered(home);
    if peers.is_empty() {
        return 0;
    }
    let rejoined = dial_remembered(node, &peers, REJOIN_WAIT).await;
    if rejoined > 0 {
        tracing::info!(remembered = peers.len(), rejoined, "rejoined the peers of the last run");
        return rejoined;
    }
    if in_a_network(node).await {
        tracing::info!(
            remembered = peers.len(),
            "the peers of the last run are unreachable; joined through others"
        );
        return 0;
    }
    tracing::warn!(
        remembered = peers.len(),
        "none of the peers of the last run (peers.json in the home) is reachable; the node runs \
         alone, and tries them again now and then"
    );
    let node = node.downgrade();
    let retries = async move {
        let (first, most) =
            (std::time::Duration::from_secs(30), std::time::Duration::from_secs(600));
        for pause in doubling(first, most) {
            tokio::time::sleep(pause).await;
            let Some(node) = node.upgrade() else { return };
            // A table entry may be a peer that left (a bootstrap peer that is down): only a
            // server connected now ends the retries.
            if in_a_network(&node).await {
                return;
            }
            if dial_remembered(&node, &peers, REJOIN_WAIT).await > 0 {
                tracing::info!("rejoined the peers of the last run");
                if let Err(e) = node.bootstrap().await {
                    tracing::warn!(error = %e, "bootstrap walk failed; the node keeps trying as peers appear");
                }
                return;
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(retries, tracing::info_span!("rejoin")));
    0
}

/// `first`, then twice as long each time, `most` at most: the pauses of a backoff, for ever.
fn doubling(
    first: std::time::Duration,
    most: std::time::Duration,
) -> impl Iterator<Item = std::time::Duration> {
    std::iter::successors(Some(first), move |pause| Some((*pause * 2).min(most)))
}

/// How often a running node writes the peers it would rejoin by: first this long after its
/// start, then twice as long after each time, up to every [`REMEMBER_EVERY`].
const REMEMBER_FIRST: std::time::Duration = std::time::Duration::from_secs(10);
const REMEMBER_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Writes the peers the node is connected to (`<home>/peers.json`), unless it has none: a
/// node that lost its network keeps the list of the last time it had one.
async fn remember_peers(home: &Home, node: &dkvs_net::Node) {
    let peers = node.servers_to_remember(REMEMBERED_PEERS).await;
    if peers.is_empty() {
        return;
    }
    let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    let home = home.clone();
    let written = tokio::task::spawn_blocking(move || home.write_peers(&peers)).await;
    if let Ok(Err(e)) = written {
        tracing::warn!(error = %format!("{e:#}"), "cannot remember the peers");
    }
}

/// SIGTERM and SIGINT, listened for from when they are made: one that comes before
/// [`Signals::recv`] is asked is not lost.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            // Without signal handlers the node runs until killed.
            _ => Signals(None),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        let Some((term, int)) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
