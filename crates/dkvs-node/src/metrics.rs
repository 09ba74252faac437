//! Prometheus metrics of a node, served at `/metrics` in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The outcome label of a put or get.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `not_found`, `conflict`, `stale`, `no_quorum`, `invalid`, `forbidden`, ...
    pub outcome: String,
}

/// A node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Puts by outcome.
    pub puts: Family<Outcome, Counter>,
    /// Gets by outcome.
    pub gets: Family<Outcome, Counter>,
    /// Put latency in seconds.
    pub put_seconds: Histogram,
    /// Get latency in seconds.
    pub get_seconds: Histogram,
    /// Records held.
    pub records: Gauge,
    /// Bytes charged against the store's budget.
    pub bytes: Gauge,
    /// Connected peers.
    pub peers: Gauge,
    /// Bytes received on TCP connections since the node started (QUIC not counted).
    pub bytes_received: Gauge,
    /// Bytes sent on TCP connections since the node started (QUIC not counted).
    pub bytes_sent: Gauge,
    /// Times the node's task woke up for its own timers since it started.
    pub timer_wakeups: Gauge,
    /// This node's requests that waited for their turn (paced to what peers admit).
    pub requests_waited: Gauge,
    /// This node's requests held back (so much waited for the peer, or the operation ended).
    pub requests_held_back: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("dkvs");
        let puts = Family::<Outcome, Counter>::default();
        let gets = Family::<Outcome, Counter>::default();
        let put_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let get_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let records = Gauge::default();
        let bytes = Gauge::default();
        let peers = Gauge::default();
        let (bytes_received, bytes_sent, timer_wakeups) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("puts", "Puts by outcome", puts.clone());
        registry.register("gets", "Gets by outcome", gets.clone());
        registry.register("put_seconds", "Put latency", put_seconds.clone());
        registry.register("get_seconds", "Get latency", get_seconds.clone());
        registry.register("records", "Records held", records.clone());
        registry.register("store_bytes", "Bytes charged against the store budget", bytes.clone());
        registry.register("peers", "Connected peers", peers.clone());
        registry.register(
            "network_received_bytes",
            "Bytes received on TCP connections since start (QUIC not counted)",
            bytes_received.clone(),
        );
        registry.register(
            "network_sent_bytes",
            "Bytes sent on TCP connections since start (QUIC not counted)",
            bytes_sent.clone(),
        );
        registry.register(
            "timer_wakeups",
            "Times the node's task woke for its own timers since start",
            timer_wakeups.clone(),
        );
        let (requests_waited, requests_held_back) = (Gauge::default(), Gauge::default());
        registry.register(
            "requests_waited",
            "This node's requests that waited for their turn (paced to what peers admit)",
            requests_waited.clone(),
        );
        registry.register(
            "requests_held_back",
            "This node's requests held back (too much waited for the peer, or the operation \
             ended first); counted as refused for load",
            requests_held_back.clone(),
        );
        Metrics {
            registry,
            puts,
            gets,
            put_seconds,
            get_seconds,
            records,
            bytes,
            peers,
            bytes_received,
            bytes_sent,
            timer_wakeups,
            requests_waited,
            requests_held_back,
        }
    }
}

impl Metrics {
    /// Counts a put's outcome.
    pub fn put(&self, outcome: &str) {
        self.puts.get_or_create(&Outcome { outcome: outcome.into() }).inc();
    }

    /// Counts a get's outcome.
    pub fn get(&self, outcome: &str) {
        self.gets.get_or_create(&Outcome { outcome: outcome.into() }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
