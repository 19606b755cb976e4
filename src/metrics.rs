//! Every metric of spec §6, registered once, with exactly the contract's names and labels.
//!
//! `Metrics` is a cheap handle (`Arc` inside). Each process (and each gateway a test starts)
//! has its own registry, so tests can run several gateways side by side. A test compares the
//! exposition with the spec's list of names.

use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pins::ReleaseReason;
use crate::record::TurnRecord;

/// The names of spec §6, in order (a test holds the exposition to this list).
pub const NAMES: &[&str] = &[
    "graygate_requests_total",
    "graygate_request_duration_seconds",
    "graygate_upstream_duration_seconds",
    "graygate_gateway_errors_total",
    "graygate_pins",
    "graygate_pins_created_total",
    "graygate_pins_released_total",
    "graygate_orphan_turns_total",
    "graygate_config_reloads_total",
    "graygate_config_generation",
    "graygate_config_last_reload_success_timestamp_seconds",
    "graygate_upstream_endpoint_healthy",
    "graygate_inflight_requests",
    "graygate_endpoint_ejections_total",
    "graygate_fallbacks_total",
    "graygate_pin_store_errors_total",
    "graygate_pin_store_duration_seconds",
    "graygate_connections",
    "graygate_rejected_connections_total",
];

/// Latency buckets from 100 µs to 10 s: a gateway hop is sub-millisecond, an ODFS turn is tens
/// of milliseconds to seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub gateway_errors: IntCounterVec,
    pub pins: IntGaugeVec,
    pub pins_created: IntCounterVec,
    pub pins_released: IntCounterVec,
    pub orphan_turns: IntCounterVec,
    pub reloads: IntCounterVec,
    pub generation: IntGauge,
    pub last_reload_success: prometheus::Gauge,
    pub endpoint_healthy: IntGaugeVec,
    pub inflight: IntGaugeVec,
    pub ejections: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub pin_store_errors: IntCounterVec,
    pub pin_store_duration: HistogramVec,
    pub connections: IntGaugeVec,
    pub rejected_connections: IntCounterVec,
    /// New calls per rule and cluster over the last minutes, for `/admin/config` and the
    /// console (spec §12); not exported, `graygate_pins_created_total` is the Prometheus side.
    pub shares: crate::shares::ObservedShares,
    /// Series handles of finished turns, by label values (see [`SeriesCache`]).
    turn_series: SeriesCache<TurnSeries>,
    /// Pin series handles by cluster.
    pin_series: SeriesCache<PinSeries>,
}

/// The series one finished turn touches.
#[derive(Clone)]
struct TurnSeries {
    requests: IntCounter,
    duration: Histogram,
    upstream: Option<Histogram>,
}

/// The series pin creation touches for one cluster.
#[derive(Clone)]
struct PinSeries {
    created: IntCounter,
    live: IntGauge,
}

/// Most entries a [`SeriesCache`] keeps; beyond that, lookups go to the vectors directly. The
/// label sets are bounded by the config (clusters × rules × inaction × status), so this is only
/// reached after many reloads that rename things.
const SERIES_CACHE_MAX: usize = 4096;

/// Label values → metric handles, so a turn does not pay for `with_label_values` (an FNV hash of
/// every label byte, a read lock and an `Arc` clone per metric) on every observation. Entries
/// are found by a 64-bit hash of the label values and confirmed by comparing them, so a lookup
/// allocates nothing. The handles are the vectors' own children (never removed from these
/// vectors), so what they count is exactly what the exposition shows.
struct SeriesCache<T> {
    hasher: ahash::RandomState,
    map: Mutex<std::collections::HashMap<u64, Vec<Cached<T>>, NoHash>>,
}

/// Stored label values and their handles.
type Cached<T> = (Box<[Box<str>]>, T);

/// The keys are already hashes.
#[derive(Default, Clone, Copy)]
struct NoHash;

struct NoHasher(u64);

impl std::hash::BuildHasher for NoHash {
    type Hasher = NoHasher;
    fn build_hasher(&self) -> NoHasher {
        NoHasher(0)
    }
}

impl std::hash::Hasher for NoHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<T: Clone> SeriesCache<T> {
    fn new() -> Self {
        SeriesCache {
            // Fixed keys: the hash only has to spread label sets this process builds itself.
            hasher: ahash::RandomState::with_seeds(
                0x6772_6179_6761_7465,
                0x7365_7269_6573_0001,
                0x0bad_cafe_f00d_d00d,
                0x1234_5678_9abc_def0,
            ),
            map: Mutex::new(Default::default()),
        }
    }

    /// The handles for `labels`, built by `make` on first use.
    fn get(&self, labels: &[&str], make: impl FnOnce() -> T) -> T {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        for l in labels {
            h.write(l.as_bytes());
            h.write_u8(0xff);
        }
        let key = h.finish();
        let same = |stored: &[Box<str>]| {
            stored.len() == labels.len() && stored.iter().zip(labels).all(|(a, b)| **a == **b)
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get(&key) {
            if let Some((_, t)) = list.iter().find(|(k, _)| same(k)) {
                return t.clone();
            }
        }
        let t = make();
        if map.len() < SERIES_CACHE_MAX {
            let stored: Box<[Box<str>]> = labels.iter().map(|l| Box::from(*l)).collect();
            map.entry(key).or_default().push((stored, t.clone()));
        }
        t
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric. The definitions are static, so the `expect`s cannot fire on
    /// any input; a test builds one registry per run.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let generation = IntGauge::new(
            "graygate_config_generation",
            "Generation of the running config",
        )
        .expect("static");
        r.register(Box::new(generation.clone())).expect("once");
        let last_reload_success = prometheus::Gauge::new(
            "graygate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load",
        )
        .expect("static");
        r.register(Box::new(last_reload_success.clone()))
            .expect("once");
        let inner = Inner {
            requests: counter(
                &r,
                "graygate_requests_total",
                "Requests by cluster, rule, inaction and HTTP status",
                &["cluster", "rule", "inaction", "code"],
            ),
            request_duration: histogram(
                &r,
                "graygate_request_duration_seconds",
                "Whole time of a request in the gateway",
                &["cluster", "inaction"],
            ),
            upstream_duration: histogram(
                &r,
                "graygate_upstream_duration_seconds",
                "Time waiting for the upstream",
                &["cluster"],
            ),
            gateway_errors: counter(
                &r,
                "graygate_gateway_errors_total",
                "Errors answered by the gateway itself, by errorCode",
                &["code"],
            ),
            pins: gauge(
                &r,
                "graygate_pins",
                "Live call pins in this replica's table",
                &["cluster"],
            ),
            pins_created: counter(
                &r,
                "graygate_pins_created_total",
                "Pins created (new calls)",
                &["cluster"],
            ),
            pins_released: counter(
                &r,
                "graygate_pins_released_total",
                "Pins released, by reason",
                &["cluster", "reason"],
            ),
            orphan_turns: counter(
                &r,
                "graygate_orphan_turns_total",
                "Later turns with no pin",
                &["action"],
            ),
            reloads: counter(
                &r,
                "graygate_config_reloads_total",
                "Config loads by result",
                &["result"],
            ),
            generation,
            last_reload_success,
            endpoint_healthy: gauge(
                &r,
                "graygate_upstream_endpoint_healthy",
                "1 when the endpoint takes new calls",
                &["cluster", "endpoint"],
            ),
            inflight: gauge(
                &r,
                "graygate_inflight_requests",
                "Requests in flight to a cluster",
                &["cluster"],
            ),
            ejections: counter(
                &r,
                "graygate_endpoint_ejections_total",
                "Endpoints ejected by outlier detection",
                &["cluster", "endpoint"],
            ),
            fallbacks: counter(
                &r,
                "graygate_fallbacks_total",
                "New calls sent to a fallback cluster",
                &["from", "to"],
            ),
            pin_store_errors: counter(
                &r,
                "graygate_pin_store_errors_total",
                "Pin store operations that failed or timed out",
                &["op"],
            ),
            pin_store_duration: histogram(
                &r,
                "graygate_pin_store_duration_seconds",
                "Pin store operation time",
                &["op"],
            ),
            connections: gauge(
                &r,
                "graygate_connections",
                "Open client connections",
                &["listener"],
            ),
            rejected_connections: counter(
                &r,
                "graygate_rejected_connections_total",
                "Connections refused or cut",
                &["reason"],
            ),
            shares: crate::shares::ObservedShares::new(),
            turn_series: SeriesCache::new(),
            pin_series: SeriesCache::new(),
            registry: r,
        };
        // Make the zero-valued series visible from the start, so alerts and dashboards see them.
        for result in ["success", "failure"] {
            inner.reloads.with_label_values(&[result]);
        }
        for action in ["routed", "rejected"] {
            inner.orphan_turns.with_label_values(&[action]);
        }
        for l in ["dialog", "admin"] {
            inner.connections.with_label_values(&[l]);
        }
        for code in [
            "GW.BAD_URL",
            "GW.BAD_JSON",
            "GW.MISSING_USERID",
            "GW.BAD_USERID",
            "GW.MISSING_INACTION",
            "GW.BAD_INACTION",
            "GW.METHOD",
            "GW.ORPHAN_TURN",
            "GW.BODY_TOO_LARGE",
            "GW.UPSTREAM",
            "GW.NO_UPSTREAM",
            "GW.UPSTREAM_TIMEOUT",
        ] {
            inner.gateway_errors.with_label_values(&[code]);
        }
        for r in ["max_connections", "tls", "header_timeout"] {
            inner.rejected_connections.with_label_values(&[r]);
        }
        for op in ["get", "put", "touch", "release"] {
            inner.pin_store_errors.with_label_values(&[op]);
            inner.pin_store_duration.with_label_values(&[op]);
        }
        Metrics {
            inner: Arc::new(inner),
        }
    }

    fn pin_series(&self, cluster: &str) -> PinSeries {
        self.pin_series.get(&[cluster], || PinSeries {
            created: self.pins_created.with_label_values(&[cluster]),
            live: self.pins.with_label_values(&[cluster]),
        })
    }

    pub fn pin_created(&self, cluster: &str) {
        let s = self.pin_series(cluster);
        s.created.inc();
        s.live.inc();
    }

    pub fn pin_released(&self, cluster: &str, reason: ReleaseReason) {
        self.pins_released
            .with_label_values(&[cluster, reason.as_str()])
            .inc();
        self.pin_series(cluster).live.dec();
    }

    /// Record one finished dialog turn (or other request).
    pub fn observe(&self, rec: &TurnRecord) {
        let inaction = rec.inaction.map(|i| i.label()).unwrap_or("other");
        let mut code = itoa::Buffer::new();
        let code = code.format(rec.status);
        let cluster = rec.cluster.as_deref();
        let cluster_label = cluster.unwrap_or("-");
        let rule = rec.rule.as_deref().unwrap_or("-");
        // "" as the first label keeps a turn without a cluster apart from a cluster named "-".
        let present = if cluster.is_some() { "c" } else { "" };
        let s = self
            .turn_series
            .get(&[present, cluster_label, rule, inaction, code], || {
                TurnSeries {
                    requests: self.requests.with_label_values(&[
                        cluster_label,
                        rule,
                        inaction,
                        code,
                    ]),
                    duration: self
                        .request_duration
                        .with_label_values(&[cluster_label, inaction]),
                    upstream: cluster.map(|c| self.upstream_duration.with_label_values(&[c])),
                }
            });
        s.requests.inc();
        s.duration.observe(rec.total.as_secs_f64());
        if let (Some(h), Some(u)) = (&s.upstream, rec.upstream) {
            h.observe(u.as_secs_f64());
        }
        if let Some(code) = rec.error_code {
            self.gateway_errors.with_label_values(&[code]).inc();
        }
    }

    pub fn reload(&self, ok: bool, generation: Option<u64>) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if let Some(g) = generation {
            self.generation.set(g as i64);
            self.last_reload_success
                .set(crate::pins::memory::wall_ms() as f64 / 1000.0);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// A histogram handle for the pin store (`op` label), used by shared stores.
pub fn store_timer(m: &Metrics, op: &str) -> Histogram {
    m.pin_store_duration.with_label_values(&[op])
}

/// A counter handle (`op` label) for pin store errors.
pub fn store_error(m: &Metrics, op: &str) -> IntCounter {
    m.pin_store_errors.with_label_values(&[op])
}
