//! The node's TOML configuration. Every field has a default; `dkvs node --print-config` prints
//! them all, and a file may set any subset.

use std::time::Duration;

use anyhow::Context as _;
use dkvs_net::libp2p::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// Node configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The profile whose defaults the other keys start from: "default" (a computer), "phone"
    /// (less memory, fewer connections, quieter when idle) or "light" (a client that keeps
    /// nothing for others). Keys set in the file override the profile's.
    pub profile: String,
    /// Addresses to listen on for peers.
    pub listen: Vec<String>,
    /// Peers to join through (`/ip4/.../tcp/.../p2p/<peer id>`). None: the node runs alone
    /// until peers find it.
    pub bootstrap: Vec<String>,
    /// Dial the peers of the last run at the start (`peers.json` in the home, written every
    /// 5 minutes and at a clean stop), so that a node started again rejoins its network
    /// without a bootstrap address. While none of them is reachable and no other DHT server
    /// is connected, the node runs alone and dials them again 30 s later, then twice as long
    /// each time, 10 min at most.
    pub rejoin: bool,
    /// Address of the HTTP API; loopback only unless you mean otherwise.
    pub api: String,
    /// Kademlia mode: "auto" (a server while every peer is on this machine or the LAN, or
    /// once AutoNAT confirms a public address; a client otherwise, as behind NAT), "server"
    /// or "client".
    pub kad_mode: String,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Relay connections for peers behind NAT (declares this node publicly reachable).
    pub relay_server: bool,
    /// When AutoNAT finds this node unreachable (behind NAT), hold a reservation on a
    /// connected relay so that others can dial it through the relay, and directly where DCUtR
    /// punches through the NAT.
    pub auto_relay: bool,
    /// With `kad_mode` "auto": serve the DHT while every peer is on this machine or the LAN.
    pub lan_server: bool,
    /// AutoNAT: ask for (and answer) dial-backs on public IP addresses only. Turn it off only
    /// for a network on private or reserved addresses, where no address is public: on the
    /// internet it lets any peer make this node dial addresses on its LAN.
    pub autonat_only_global_ips: bool,
    /// Peers kept connected at most; over it the least recently used are closed (to three
    /// quarters of it), relays and peers with a request in flight spared; first, a network
    /// (an IPv4 /24, an IPv6 /48, a relay's; this machine and the LAN are none) with more
    /// than a quarter of it (at least 1) connected loses its newest peers, down to a quarter.
    pub max_connections: usize,
    /// Inbound TCP connections from one address (an IPv4 address, an IPv6 /64) that may be
    /// in their handshake at once; more are refused before any handshake work. A quarter of
    /// `max_pending_inbound` is one network's (/24, /48). Loopback, QUIC and relayed
    /// connections are not bounded.
    pub max_pending_per_address: usize,
    /// The same for all addresses together.
    pub max_pending_inbound: usize,
    /// A connection nothing uses is closed after this many seconds (libp2p's idle timeout;
    /// what keeps a connection open regardless: dkvs-net's `Config::idle_connection_timeout`).
    pub idle_connection_timeout_secs: u64,
    /// How often this node re-sends the records it holds to each key's current replicas, in
    /// seconds.
    pub replication_interval_secs: u64,
    /// How often the routing table is refreshed (about a dozen lookups, each dialing peers
    /// not connected), in seconds. The node's own lookups keep it fresh meanwhile. A watched
    /// key is read again about every third of it, at least 5 min and at most an hour apart,
    /// give or take a fifth by the key (its replicas change as nodes come and go; a key whose
    /// replicas went away is read sooner).
    pub table_refresh_interval_secs: u64,
    /// Store budget in bytes.
    pub max_bytes: u64,
    /// Per-owner budget in bytes.
    pub max_bytes_per_owner: u64,
    /// The part of `max_bytes` kept for this node's own writes; records from peers stop short
    /// of it. Default (unset): an eighth of `max_bytes`. At most `max_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_for_own_bytes: Option<u64>,
    /// Bytes one peer may send per second, sustained. This node paces what it sends each
    /// peer to nine tenths of it (standing in for the peer's limit): lowering it slows this
    /// node's own writes too.
    pub peer_bytes_per_second: u32,
    /// Bytes one peer may send at once (a new peer starts with an eighth).
    pub peer_byte_burst: u32,
    /// Bytes all peers from one network (IPv4 /24, IPv6 /48; relayed peers in their relay's)
    /// may send per second, sustained; peers on this machine or the LAN are not grouped.
    pub subnet_bytes_per_second: u32,
    /// Bytes all peers from one network may send at once.
    pub subnet_byte_burst: u32,
    /// Longest record life this node keeps, in seconds.
    pub max_ttl_secs: u64,
    /// Record life when a put gives none, in seconds.
    pub default_ttl_secs: u64,
    /// Replication factor k.
    pub replication: usize,
    /// Write quorum: 0 for a majority of the replicas, else a count.
    pub write_quorum: usize,
    /// Read quorum: 0 for a majority of the replicas (with `write_quorum` 0 too, a plain get
    /// may then answer from a sample of 12 of 20 that agrees), else a count (every replica is
    /// asked).
    pub read_quorum: usize,
    /// Timeout of one request to one peer, in milliseconds.
    pub request_timeout_ms: u64,
    /// Timeout of a whole put or get, in milliseconds.
    pub operation_timeout_ms: u64,
    /// Sync every put to disk before acknowledging it (survives power loss, slower). Puts that
    /// arrive together share one flush, and reads are answered while a flush is under way.
    /// Off (the default), a put is in the log file when acknowledged (it survives the node
    /// being killed), and the log is flushed in the background at most every 5 s while puts
    /// come.
    pub fsync: bool,
    /// Mail: on how many replicas a letter sent from this node is kept (a read asks twice as
    /// many).
    pub mail_replicas: usize,
    /// Mail: how long a letter sent from this node is kept unread, in seconds (and the most a
    /// `--ttl` may ask).
    pub mail_ttl_secs: u64,
    /// Mail, as a replica: the longest this node keeps a letter, whatever its sender asked.
    pub mail_max_ttl_secs: u64,
    /// Mail, as a replica: letters one mailbox holds here at most.
    pub mail_mailbox_messages: usize,
    /// Mail, as a replica: bytes one mailbox holds here at most.
    pub mail_mailbox_bytes: u64,
    /// Mail, as a replica: bytes of letters this node keeps at most.
    pub mail_total_bytes: u64,
    /// Mail: tell senders when their letters are read (a receipt signed by the reader).
    pub mail_read_receipts: bool,
    /// IPFS: peers dialed at start (multiaddrs with `/p2p/`), as Kubo's `Bootstrap`. Empty by
    /// default: add the public IPFS bootstrap peers to reach the public IPFS network.
    pub ipfs_bootstrap: Vec<String>,
    /// IPFS: bytes of blocks kept on disk at most (pinned or cached).
    pub ipfs_max_bytes: u64,
    /// IPFS: bytes of blocks kept in memory as the hot tier.
    pub ipfs_hot_bytes: u64,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        let net = dkvs_net::Config::default();
        let store = dkvs_store::Config::default();
        let (mail, shelf) = (dkvs_mail::SendOptions::default(), dkvs_mail::ShelfConfig::default());
        let blocks = dkvs_ipfs::BlockStoreConfig::default();
        NodeConfig {
            profile: "default".into(),
            listen: vec!["/ip4/0.0.0.0/tcp/4040".into(), "/ip4/0.0.0.0/udp/4040/quic-v1".into()],
            bootstrap: Vec::new(),
            rejoin: true,
            api: "127.0.0.1:4041".into(),
            kad_mode: "auto".into(),
            mdns: false,
            relay_server: false,
            auto_relay: net.auto_relay,
            lan_server: net.lan_server,
            autonat_only_global_ips: net.autonat_only_global_ips,
            max_connections: net.max_connections,
            max_pending_per_address: net.max_pending_per_address,
            max_pending_inbound: net.max_pending_inbound,
            idle_connection_timeout_secs: net.idle_connection_timeout.as_secs(),
            replication_interval_secs: net.replication_interval.as_secs(),
            table_refresh_interval_secs: net.table_refresh_interval.as_secs(),
            max_bytes: store.max_bytes,
            max_bytes_per_owner: store.max_bytes_per_owner,
            reserved_for_own_bytes: None,
            peer_bytes_per_second: net.peer_bytes_per_second,
            peer_byte_burst: net.peer_byte_burst,
            subnet_bytes_per_second: net.subnet_bytes_per_second,
            subnet_byte_burst: net.subnet_byte_burst,
            max_ttl_secs: store.max_ttl_ms / 1000,
            default_ttl_secs: 24 * 3600,
            replication: net.replication,
            write_quorum: 0,
            read_quorum: 0,
            request_timeout_ms: net.request_timeout.as_millis() as u64,
            operation_timeout_ms: net.operation_timeout.as_millis() as u64,
            fsync: false,
            mail_replicas: mail.replicas,
            mail_ttl_secs: mail.ttl_ms / 1000,
            mail_max_ttl_secs: shelf.max_ttl_ms / 1000,
            mail_mailbox_messages: shelf.mailbox_messages,
            mail_mailbox_bytes: shelf.mailbox_bytes,
            mail_total_bytes: shelf.total_bytes,
            mail_read_receipts: mail.read_receipts,
            ipfs_bootstrap: Vec::new(),
            ipfs_max_bytes: blocks.max_bytes,
            ipfs_hot_bytes: blocks.hot_bytes,
        }
    }
}

fn quorum(n: usize) -> dkvs_net::Quorum {
    if n == 0 { dkvs_net::Quorum::Majority } else { dkvs_net::Quorum::N(n) }
}

/// A node's addresses ([`NodeConfig::addresses`]).
pub struct Addresses {
    /// Where it listens.
    pub listen: Vec<Multiaddr>,
    /// The peers it joins by (each ends in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// The IPFS peers it dials at start.
    pub ipfs_bootstrap: Vec<Multiaddr>,
}

/// The addresses of the setting `what`, parsed; the error names the one that is no multiaddr.
fn multiaddrs(what: &str, addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| a.parse().with_context(|| format!("{what} address {a:?} is not a multiaddr")))
        .collect()
}

/// The profiles, each a set of defaults ([`NodeConfig::profile`]).
pub const PROFILES: [&str; 3] = ["default", "phone", "light"];

impl NodeConfig {
    /// The defaults of profile `name` (one of [`PROFILES`]).
    ///
    /// - "phone": a phone or another small device that may sleep or sit behind NAT. Memory:
    ///   a 16 MiB store, 4 MiB of IPFS blocks in memory, 4 MiB of others' mail; at most 32
    ///   peers, an idle timeout of 30 s (see `idle_connection_timeout_secs`); replication
    ///   every 30 min, the routing table refreshed every hour (and watched keys read again
    ///   every 20 min). It still serves the DHT when
    ///   reachable (kad_mode "auto"), so phones on Wi-Fi add to the network.
    /// - "light": an application's embedded client that keeps nothing for others: a
    ///   Kademlia client always (never a replica), a 2 MiB store (its own writes), 1 MiB of
    ///   IPFS blocks in memory, no mail for others, at most 16 peers, the routing table
    ///   refreshed every hour (and watched keys read again every 20 min).
    pub fn profile(name: &str) -> anyhow::Result<NodeConfig> {
        let base = NodeConfig::default();
        const MIB: u64 = 1 << 20;
        match name {
            "default" => Ok(base),
            "phone" => Ok(NodeConfig {
                profile: name.into(),
                max_connections: 32,
                idle_connection_timeout_secs: 30,
                replication_interval_secs: 1800,
                table_refresh_interval_secs: 3600,
                max_bytes: 16 * MIB,
                max_bytes_per_owner: 4 * MIB,
                ipfs_hot_bytes: 4 * MIB,
                ipfs_max_bytes: 256 * MIB,
                mail_total_bytes: 4 * MIB,
                ..base
            }),
            "light" => Ok(NodeConfig {
                profile: name.into(),
                kad_mode: "client".into(),
                max_connections: 16,
                idle_connection_timeout_secs: 30,
                replication_interval_secs: 1800,
                table_refresh_interval_secs: 3600,
                max_bytes: 2 * MIB,
                max_bytes_per_owner: 2 * MIB,
                reserved_for_own_bytes: Some(2 * MIB),
                ipfs_hot_bytes: MIB,
                ipfs_max_bytes: 64 * MIB,
                mail_total_bytes: 0,
                ..base
            }),
            other => anyhow::bail!(
                "profile {other:?} is not one of {}",
                PROFILES.map(|p| format!("{p:?}")).join(", ")
            ),
        }
    }

    /// Reads a configuration file; keys it leaves out keep the defaults of its profile.
    pub fn load(path: &std::path::Path) -> anyhow::Result<NodeConfig> {
        NodeConfig::load_with(Some(path), None)
    }

    /// The configuration from `path` (if any) over the defaults of `profile` (if given, it
    /// wins over the file's own `profile` key; else the file's, else "default").
    pub fn load_with(
        path: Option<&std::path::Path>,
        profile: Option<&str>,
    ) -> anyhow::Result<NodeConfig> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the configuration {}", path.display()))?;
                let invalid = || format!("{} is not a valid configuration", path.display());
                text.parse::<toml::Table>().with_context(invalid)?
            }
            None => toml::Table::new(),
        };
        let name = match (profile, table.get("profile")) {
            (Some(name), _) => name.to_owned(),
            (None, Some(toml::Value::String(name))) => name.clone(),
            (None, Some(other)) => anyhow::bail!("profile: a name, not {other}"),
            (None, None) => "default".to_owned(),
        };
        table.insert("profile".into(), toml::Value::String(name.clone()));
        let mut merged = toml::Table::try_from(NodeConfig::profile(&name)?)?;
        merged.extend(table);
        let at = path.map_or("the configuration".to_owned(), |p| p.display().to_string());
        merged.try_into().with_context(|| format!("{at} is not a valid configuration"))
    }

    /// The configuration as TOML; a setting left unset is shown as a comment with what it
    /// then is.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut text = toml::to_string_pretty(self)?;
        if self.reserved_for_own_bytes.is_none() {
            let reserved = self.store().reserved_for_own_bytes;
            text.push_str(&format!(
                "# reserved_for_own_bytes = {reserved} (unset: an eighth of max_bytes)\n"
            ));
        }
        Ok(text)
    }

    /// Checks every setting as the node does at its start.
    pub fn check(&self) -> anyhow::Result<()> {
        self.addresses()?;
        self.net()?;
        self.mail()?;
        self.shelf()?;
        Ok(())
    }

    /// The addresses to listen on and to join by, parsed; the API's address checked.
    pub fn addresses(&self) -> anyhow::Result<Addresses> {
        let bootstrap = multiaddrs("bootstrap", &self.bootstrap)?;
        if let Some(addr) =
            bootstrap.iter().find(|addr| !matches!(addr.iter().last(), Some(Protocol::P2p(_))))
        {
            anyhow::bail!("bootstrap address \"{addr}\" does not end in /p2p/<peer id>");
        }
        std::net::ToSocketAddrs::to_socket_addrs(&self.api).with_context(|| {
            format!(
                "api address {:?} is not an address to listen on (e.g. 127.0.0.1:4041)",
                self.api
            )
        })?;
        Ok(Addresses {
            listen: multiaddrs("listen", &self.listen)?,
            bootstrap,
            ipfs_bootstrap: multiaddrs("ipfs_bootstrap", &self.ipfs_bootstrap)?,
        })
    }

    /// The network layer's configuration.
    pub fn net(&self) -> anyhow::Result<dkvs_net::Config> {
        let kad_mode: dkvs_net::KadMode =
            self.kad_mode.parse().map_err(|e| anyhow::anyhow!("kad_mode: {e}"))?;
        anyhow::ensure!(self.max_ttl_secs >= 1, "max_ttl_secs: at least 1");
        anyhow::ensure!(
            (1..=self.max_ttl_secs).contains(&self.default_ttl_secs),
            "default_ttl_secs ({}): at least 1, at most max_ttl_secs ({}), else a put that \
             gives no life would be refused",
            self.default_ttl_secs,
            self.max_ttl_secs
        );
        anyhow::ensure!(self.replication >= 1, "replication: at least 1");
        for (name, quorum) in
            [("write_quorum", self.write_quorum), ("read_quorum", self.read_quorum)]
        {
            anyhow::ensure!(
                quorum <= self.replication,
                "{name} ({quorum}): at most replication ({}), or 0 for a majority of the replicas",
                self.replication
            );
        }
        anyhow::ensure!(self.request_timeout_ms >= 1, "request_timeout_ms: at least 1");
        anyhow::ensure!(self.operation_timeout_ms >= 1, "operation_timeout_ms: at least 1");
        anyhow::ensure!(self.max_connections >= 1, "max_connections: at least 1");
        anyhow::ensure!(self.max_pending_per_address >= 1, "max_pending_per_address: at least 1");
        anyhow::ensure!(self.max_pending_inbound >= 1, "max_pending_inbound: at least 1");
        // At most what the network layer runs with (a timer further out overflows the clock).
        let longest = dkvs_net::Config::LONGEST.as_secs();
        anyhow::ensure!(
            (1..=longest).contains(&self.replication_interval_secs),
            "replication_interval_secs: at least 1, at most {longest} (a year)"
        );
        anyhow::ensure!(
            (1..=longest).contains(&self.table_refresh_interval_secs),
            "table_refresh_interval_secs: at least 1, at most {longest} (a year)"
        );
        let net = dkvs_net::Config {
            idle_connection_timeout: Duration::from_secs(self.idle_connection_timeout_secs),
            max_pending_per_address: self.max_pending_per_address,
            max_pending_inbound: self.max_pending_inbound,
            ..dkvs_net::Config::default()
        };
        Ok(net
            .with_replication_interval(Duration::from_secs(self.replication_interval_secs))
            .with_table_refresh_interval(Duration::from_secs(self.table_refresh_interval_secs))
            .with_max_connections(self.max_connections)
            .with_replication(self.replication)
            .with_write_quorum(quorum(self.write_quorum))
            .with_read_quorum(quorum(self.read_quorum))
            .with_request_timeout(Duration::from_millis(self.request_timeout_ms))
            .with_operation_timeout(Duration::from_millis(self.operation_timeout_ms))
            .with_kad_mode(kad_mode)
            .with_mdns(self.mdns)
            .with_relay_server(self.relay_server)
            .with_auto_relay(self.auto_relay)
            .with_lan_server(self.lan_server)
            .with_autonat_only_global_ips(self.autonat_only_global_ips)
            .with_peer_bytes(self.peer_bytes_per_second, self.peer_byte_burst)
            .with_subnet_bytes(self.subnet_bytes_per_second, self.subnet_byte_burst))
    }

    /// How this node sends and reads mail.
    pub fn mail(&self) -> anyhow::Result<dkvs_mail::SendOptions> {
        anyhow::ensure!(self.mail_replicas >= 1, "mail_replicas: at least 1");
        anyhow::ensure!(self.mail_ttl_secs >= 1, "mail_ttl_secs: at least 1");
        Ok(dkvs_mail::SendOptions::default()
            .with_replicas(self.mail_replicas)
            .with_ttl_ms(self.mail_ttl_secs.saturating_mul(1000))
            .with_read_receipts(self.mail_read_receipts))
    }

    /// What this node keeps as a mail replica.
    pub fn shelf(&self) -> anyhow::Result<dkvs_mail::ShelfConfig> {
        anyhow::ensure!(self.mail_max_ttl_secs >= 1, "mail_max_ttl_secs: at least 1");
        anyhow::ensure!(self.mail_mailbox_messages >= 1, "mail_mailbox_messages: at least 1");
        let mut shelf = dkvs_mail::ShelfConfig::default();
        shelf.max_ttl_ms = self.mail_max_ttl_secs.saturating_mul(1000);
        shelf.mailbox_messages = self.mail_mailbox_messages;
        shelf.mailbox_bytes = self.mail_mailbox_bytes;
        shelf.total_bytes = self.mail_total_bytes;
        Ok(shelf)
    }

    /// The IPFS block store's limits.
    pub fn blocks(&self) -> dkvs_ipfs::BlockStoreConfig {
        let mut blocks = dkvs_ipfs::BlockStoreConfig::default();
        blocks.max_bytes = self.ipfs_max_bytes;
        blocks.hot_bytes = self.ipfs_hot_bytes;
        blocks
    }

    /// The store's configuration.
    pub fn store(&self) -> dkvs_store::Config {
        let store = dkvs_store::Config::default().with_max_bytes(self.max_bytes);
        let reserved = self.reserved_for_own_bytes.unwrap_or(store.reserved_for_own_bytes);
        store
            .with_reserved_for_own_bytes(reserved.min(self.max_bytes))
            .with_max_bytes_per_owner(self.max_bytes_per_owner)
            .with_max_ttl_ms(self.max_ttl_secs.saturating_mul(1000))
            .with_durability(if self.fsync {
                dkvs_store::Durability::Fsync
            } else {
                dkvs_store::Durability::WriteThrough
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_make_no_sense_are_refused_naming_them() {
        for (text, named) in [
            ("replication = 0\n", "replication: at least 1"),
            ("write_quorum = 21\n", "write_quorum (21): at most replication (20)"),
            ("replication = 3\nread_quorum = 4\n", "read_quorum (4): at most replication (3)"),
            ("request_timeout_ms = 0\n", "request_timeout_ms"),
            ("operation_timeout_ms = 0\n", "operation_timeout_ms"),
            ("mail_replicas = 0\n", "mail_replicas"),
            ("mail_mailbox_messages = 0\n", "mail_mailbox_messages"),
        ] {
            let config: NodeConfig = toml::from_str(text).expect("parses");
            let error = config.check().expect_err(text).to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
        let fine: NodeConfig =
            toml::from_str("replication = 3\nwrite_quorum = 3\nread_quorum = 0\n").expect("parses");
        fine.check().expect("valid");
        NodeConfig::default().check().expect("the defaults are valid");
        for profile in PROFILES {
            NodeConfig::profile(profile).expect("a profile").check().expect(profile);
        }
        // What an unset setting is, shown beside the others.
        let text = NodeConfig::default().to_toml().expect("serializes");
        let eighth = NodeConfig::default().max_bytes / 8;
        let shown = format!("# reserved_for_own_bytes = {eighth} (unset: an eighth of max_bytes)");
        assert!(text.contains(&shown), "{text}");
    }

    #[test]
    fn printed_defaults_read_back() {
        let text = NodeConfig::default().to_toml().expect("serializes");
        let back: NodeConfig = toml::from_str(&text).expect("parses");
        assert_eq!(back, NodeConfig::default());
        let partial: NodeConfig = toml::from_str("replication = 5\n").expect("parses");
        assert_eq!(partial.replication, 5);
        assert_eq!(partial.api, NodeConfig::default().api);
        assert!(toml::from_str::<NodeConfig>("replicaton = 5\n").is_err(), "typos are errors");
        let bad = NodeConfig { kad_mode: "sometimes".into(), ..NodeConfig::default() };
        assert!(bad.net().is_err());
        let few: NodeConfig = toml::from_str("max_connections = 8\n").expect("parses");
        assert_eq!(few.net().expect("valid").max_connections, 8);
        assert_eq!(few.net().expect("valid").subnet_share, 2);
        let net = NodeConfig::default().net().expect("valid");
        assert_eq!(net.subnet_share, dkvs_net::Config::default().subnet_share);
        let none = NodeConfig { max_connections: 0, ..NodeConfig::default() };
        let error = none.net().expect_err("no connection at all is refused").to_string();
        assert!(error.contains("max_connections"), "{error}");
        let pending: NodeConfig =
            toml::from_str("max_pending_per_address = 2\nmax_pending_inbound = 40\n")
                .expect("parses");
        let net = pending.net().expect("valid");
        assert_eq!((net.max_pending_per_address, net.max_pending_inbound), (2, 40));
        let refresh: NodeConfig =
            toml::from_str("table_refresh_interval_secs = 120\n").expect("parses");
        let net = refresh.net().expect("valid");
        assert_eq!(net.table_refresh_interval, Duration::from_secs(120));
        let phone = NodeConfig::profile("phone").expect("a profile").net().expect("valid");
        assert_eq!(phone.table_refresh_interval, Duration::from_secs(3600));
        for never in [0, u64::MAX] {
            let never = NodeConfig { table_refresh_interval_secs: never, ..NodeConfig::default() };
            let error = never.net().expect_err("no refresh at all is refused").to_string();
            assert!(error.contains("table_refresh_interval_secs"), "{error}");
        }
        let never = NodeConfig { replication_interval_secs: u64::MAX, ..NodeConfig::default() };
        let error = never.net().expect_err("a timer past the clock is refused").to_string();
        assert!(error.contains("replication_interval_secs"), "{error}");
        let none = NodeConfig { max_pending_inbound: 0, ..NodeConfig::default() };
        let error = none.net().expect_err("no handshake at all is refused").to_string();
        assert!(error.contains("max_pending_inbound"), "{error}");
        // A default life longer than the longest kept, or none at all, is refused at start,
        // naming the keys, not at the first put.
        let longer: NodeConfig = toml::from_str(
            "max_ttl_secs = 3600
default_ttl_secs = 7200
",
        )
        .expect("parses");
        let error = longer.net().expect_err("default over max").to_string();
        assert!(error.contains("default_ttl_secs (7200)") && error.contains("max_ttl_secs (3600)"));
        for (max, default) in [(0, 0), (3600, 0)] {
            let bad =
                NodeConfig { max_ttl_secs: max, default_ttl_secs: default, ..Default::default() };
            assert!(bad.net().expect_err("no life").to_string().contains("ttl_secs"));
        }
        let equal: NodeConfig = toml::from_str(
            "max_ttl_secs = 3600
default_ttl_secs = 3600
",
        )
        .expect("parses");
        assert!(equal.net().is_ok());
        for name in ["default", "phone", "light"] {
            let profile = NodeConfig::profile(name).expect("a profile");
            assert!(profile.net().is_ok(), "the {name} profile is valid");
        }
        let mail: NodeConfig = toml::from_str(
            "mail_replicas = 3\nmail_mailbox_messages = 10\nmail_read_receipts = false\n",
        )
        .expect("parses");
        let (options, shelf) = (mail.mail().expect("valid"), mail.shelf().expect("valid"));
        assert_eq!((options.replicas, options.read_receipts), (3, false));
        assert_eq!(shelf.mailbox_messages, 10);
        assert_eq!(shelf.total_bytes, dkvs_mail::ShelfConfig::default().total_bytes);
        let none = NodeConfig { mail_replicas: 0, ..NodeConfig::default() };
        assert!(none.mail().is_err());
        let nat: NodeConfig = toml::from_str(
            "auto_relay = false\nlan_server = false\nautonat_only_global_ips = false\n",
        )
        .expect("parses");
        let net = nat.net().expect("valid");
        assert!(!net.auto_relay && !net.lan_server && !net.autonat_only_global_ips);
        let net = NodeConfig::default().net().expect("valid");
        assert!(net.auto_relay && net.lan_server && net.autonat_only_global_ips);
    }

    #[test]
    fn a_profile_sets_defaults_and_the_file_overrides_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "profile = \"phone\"\nmax_connections = 20\n").expect("written");
        let phone = NodeConfig::load(&file).expect("loads");
        assert_eq!(phone.profile, "phone");
        assert_eq!(phone.max_connections, 20, "the file's key wins");
        assert_eq!(phone.max_bytes, NodeConfig::profile("phone").expect("known").max_bytes);
        assert!(phone.max_bytes < NodeConfig::default().max_bytes);
        let net = phone.net().expect("valid");
        assert_eq!(net.idle_connection_timeout, Duration::from_secs(30));
        assert_eq!(net.replication_interval, Duration::from_secs(1800));

        let light = NodeConfig::load_with(Some(&file), Some("light")).expect("loads");
        assert_eq!((light.profile.as_str(), light.kad_mode.as_str()), ("light", "client"));
        assert_eq!(light.max_connections, 20, "the file's keys still win");
        assert_eq!(light.store().reserved_for_own_bytes, light.max_bytes, "all for its own");
        assert_eq!(NodeConfig::load_with(None, None).expect("defaults"), NodeConfig::default());

        std::fs::write(&file, "profile = \"tablet\"\n").expect("written");
        let error = format!("{:#}", NodeConfig::load(&file).expect_err("unknown profile"));
        assert!(error.contains("\"tablet\"") && error.contains("\"phone\""), "{error}");
        std::fs::write(&file, "profile = \"phone\"\nmax_conections = 3\n").expect("written");
        assert!(NodeConfig::load(&file).is_err(), "typos are still errors under a profile");
        // Printed, a profile's configuration reads back the same.
        let text = light.to_toml().expect("serializes");
        std::fs::write(&file, text).expect("written");
        assert_eq!(NodeConfig::load(&file).expect("loads"), light);
    }
}
