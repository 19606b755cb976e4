//! Every metric of spec §6, registered once, with exactly the contract's names and labels.
//!
//! `Metrics` is a cheap handle (`Arc` inside). Each process (and each gateway a test starts)
//! has its own registry, so tests can run several gateways side by side. A test compares the
//! exposition with the spec's list of names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::ids::NameId;
use crate::record::TurnRecord;
use crate::vocab::{CallOutcome, ErrorCode, ReleaseReason};

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
    "graygate_pins_evicted_total",
    "graygate_call_outcomes_total",
    "graygate_rollout_share_percent",
    "graygate_rollout_state",
    "graygate_rollout_transitions_total",
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
    pub pins_evicted: IntCounterVec,
    /// New calls per rule and cluster over the last minutes, for `/admin/config` and the
    /// console (spec §12); not exported, `graygate_pins_created_total` is the Prometheus side.
    pub shares: crate::shares::ObservedShares,
    pub call_outcomes: IntCounterVec,
    pub rollout_share: prometheus::GaugeVec,
    pub rollout_state: IntGaugeVec,
    pub rollout_transitions: IntCounterVec,
    /// Series handles of finished turns, by owner (cluster, rule); see [`HandleTable`].
    turn_series: HandleTable<TurnSeries>,
    /// Pin series handles by cluster id.
    pin_series: HandleTable<PinSeries>,
    /// `graygate_gateway_errors_total` by errorCode, resolved at start (the codes are fixed).
    gateway_error_series: Vec<(&'static str, IntCounter)>,
    orphan_routed: IntCounter,
    orphan_rejected: IntCounter,
    /// Outcome counters by owner (cluster, rule), in [`CallOutcome::ALL`] order.
    outcome_series: HandleTable<[IntCounter; 4]>,
}

/// The `inaction` label values, in slot order (`Inaction::label`'s range; "other" also stands
/// for a request that is no dialog turn).
const INACTION_LABELS: [&str; 6] = ["7", "8", "9", "11", "13", "other"];
/// Statuses with a slot of their own in [`TurnSeries`]; others go to the vector directly.
const CODE_SLOTS: [u16; 10] = [200, 204, 400, 404, 405, 409, 413, 502, 503, 504];

fn inaction_slot(label: &str) -> usize {
    INACTION_LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or(INACTION_LABELS.len() - 1)
}

/// The series of one owner of turns, a (cluster, rule) pair: resolved the first time that pair
/// finishes a turn, each (inaction, status) counter the first time it is counted, then read
/// without a lock (`OnceLock::get` is an atomic load).
struct TurnSeries {
    cluster: Option<Arc<str>>,
    rule: Arc<str>,
    requests: [[OnceLock<IntCounter>; CODE_SLOTS.len()]; INACTION_LABELS.len()],
    duration: [OnceLock<Histogram>; INACTION_LABELS.len()],
    upstream: Option<Histogram>,
}

/// The series pin creation and release touch for one cluster.
#[derive(Clone)]
struct PinSeries {
    created: IntCounter,
    live: IntGauge,
}

/// Most owners a [`HandleTable`] keeps; beyond that, lookups go to the vectors directly. The
/// owners are bounded by the config (clusters × rules), so this is only reached after many
/// reloads that rename things.
const HANDLE_TABLE_MAX: usize = 4096;

/// Owner key → metric handles, read on every turn without a lock: the map is an immutable
/// `ArcSwap`ed value, replaced (copied with one more entry, under `grow`) only the first time an
/// owner is seen. The handles are the vectors' own children (never removed from these vectors),
/// so what they count is exactly what the exposition shows.
struct HandleTable<T> {
    map: ArcSwap<HashMap<u64, Arc<T>>>,
    /// Serializes the rare copy-and-insert; readers never take it.
    grow: Mutex<()>,
}

impl<T> HandleTable<T> {
    fn new() -> Self {
        HandleTable {
            map: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
        }
    }

    fn get(&self, key: u64, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(t) = self.map.load().get(&key) {
            return t.clone();
        }
        let _g = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.map.load_full();
        if let Some(t) = current.get(&key) {
            return t.clone();
        }
        let t = Arc::new(make());
        if current.len() < HANDLE_TABLE_MAX {
            let mut next = HashMap::clone(&current);
            next.insert(key, t.clone());
            self.map.store(Arc::new(next));
        }
        t
    }
}

/// A table key from two interned ids (`None`: no cluster / no rule).
fn owner_key(cluster: Option<NameId>, rule: Option<NameId>) -> u64 {
    let c = cluster.map_or(u32::MAX, |c| c.0);
    let r = rule.map_or(u32::MAX, |r| r.0);
    (u64::from(c) << 32) | u64::from(r)
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
            let pc = crate::process_metrics::ProcessMetrics::for_self();
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
        let gateway_errors = counter(
            &r,
            "graygate_gateway_errors_total",
            "Errors answered by the gateway itself, by errorCode",
            &["code"],
        );
        let orphan_turns = counter(
            &r,
            "graygate_orphan_turns_total",
            "Later turns with no pin",
            &["action"],
        );
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
            gateway_error_series: ErrorCode::ALL
                .iter()
                .map(|c| (c.as_str(), gateway_errors.with_label_values(&[c.as_str()])))
                .collect(),
            gateway_errors,
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
            orphan_routed: orphan_turns.with_label_values(&["routed"]),
            orphan_rejected: orphan_turns.with_label_values(&["rejected"]),
            orphan_turns,
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
            pins_evicted: counter(
                &r,
                "graygate_pins_evicted_total",
                "Pins evicted because the table was at pins.max_pins",
                &["cluster"],
            ),
            shares: crate::shares::ObservedShares::new(),
            call_outcomes: counter(
                &r,
                "graygate_call_outcomes_total",
                "Ended calls by the cluster they were pinned to, their rule and outcome",
                &["cluster", "rule", "outcome"],
            ),
            rollout_share: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "graygate_rollout_share_percent",
                        "Share of new calls a rollout now gives its `to` cluster",
                    ),
                    &["rule"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            rollout_state: gauge(
                &r,
                "graygate_rollout_state",
                "1 for a rollout's current state, 0 for the others",
                &["rule", "state"],
            ),
            rollout_transitions: counter(
                &r,
                "graygate_rollout_transitions_total",
                "Rollout transitions by kind",
                &["rule", "to"],
            ),
            turn_series: HandleTable::new(),
            pin_series: HandleTable::new(),
            outcome_series: HandleTable::new(),
            registry: r,
        };
        // Make the zero-valued series visible from the start, so alerts and dashboards see them.
        for result in ["success", "failure"] {
            inner.reloads.with_label_values(&[result]);
        }
        for l in ["dialog", "admin"] {
            inner.connections.with_label_values(&[l]);
        }
        for r in [
            "max_connections",
            "per_ip",
            "tls",
            "header_timeout",
            "idle",
            "send_timeout",
        ] {
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

    fn pin_series(&self, cluster: NameId) -> Arc<PinSeries> {
        self.pin_series.get(owner_key(Some(cluster), None), || {
            let name = crate::ids::name(cluster);
            // A zero eviction count per cluster from its first pin, for alerts on the rate.
            self.pins_evicted.with_label_values(&[&name]);
            PinSeries {
                created: self.pins_created.with_label_values(&[&name]),
                live: self.pins.with_label_values(&[&name]),
            }
        })
    }

    /// A pin was created for a call on `cluster`.
    pub fn pin_created(&self, cluster: NameId) {
        let s = self.pin_series(cluster);
        s.created.inc();
        s.live.inc();
    }

    /// A pin pushed out of a full table (`pins.max_pins`).
    pub fn pin_evicted(&self, cluster: NameId) {
        let name = crate::ids::name(cluster);
        self.pins_evicted.with_label_values(&[&name]).inc();
        self.pin_series(cluster).live.dec();
    }

    /// A pin of a call on `cluster` was released.
    pub fn pin_released(&self, cluster: NameId, reason: ReleaseReason) {
        let name = crate::ids::name(cluster);
        self.pins_released
            .with_label_values(&[&name, reason.as_str()])
            .inc();
        self.pin_series(cluster).live.dec();
    }

    /// A call pinned to `cluster`, routed by `rule`, ended with `outcome` (spec §11): counted
    /// through the owner's handles, so a call's end costs no label lookup after the first.
    pub fn call_outcome(&self, cluster: NameId, rule: NameId, outcome: CallOutcome) {
        let s = self
            .outcome_series
            .get(owner_key(Some(cluster), Some(rule)), || {
                let (c, r) = (crate::ids::name(cluster), crate::ids::name(rule));
                CallOutcome::ALL
                    .map(|o| self.call_outcomes.with_label_values(&[&c, &r, o.as_str()]))
            });
        s[outcome.index()].inc();
    }

    /// Record one finished dialog turn (or other request): every turn metric is derived from
    /// the record here, and nowhere else.
    pub fn observe(&self, rec: &TurnRecord) {
        let inaction = rec.inaction.map(|i| i.label()).unwrap_or("other");
        let slot = inaction_slot(inaction);
        let owner = owner_key(rec.cluster_id, rec.rule_id);
        let s = self.turn_series.get(owner, || {
            let cluster = rec.cluster.clone();
            TurnSeries {
                upstream: cluster
                    .as_deref()
                    .map(|c| self.upstream_duration.with_label_values(&[c])),
                cluster,
                rule: rec.rule.clone().unwrap_or_else(|| Arc::from("-")),
                requests: Default::default(),
                duration: Default::default(),
            }
        });
        let cluster_label = s.cluster.as_deref().unwrap_or("-");
        let mut code = itoa::Buffer::new();
        let code = code.format(rec.status);
        let make = || {
            self.requests
                .with_label_values(&[cluster_label, &s.rule, inaction, code])
        };
        match CODE_SLOTS.iter().position(|c| *c == rec.status) {
            Some(k) => s.requests[slot][k].get_or_init(make).inc(),
            None => make().inc(),
        }
        s.duration[slot]
            .get_or_init(|| {
                self.request_duration
                    .with_label_values(&[cluster_label, inaction])
            })
            .observe(rec.total.as_secs_f64());
        if let (Some(h), Some(u)) = (&s.upstream, rec.upstream) {
            h.observe(u.as_secs_f64());
        }
        if let Some(code) = rec.error_code {
            match self.gateway_error_series.iter().find(|(c, _)| *c == code) {
                Some((_, c)) => c.inc(),
                None => self.gateway_errors.with_label_values(&[code]).inc(),
            }
        }
        match (rec.pin, rec.error_code) {
            (Some("orphan"), _) => self.orphan_routed.inc(),
            (_, Some("GW.ORPHAN_TURN")) => self.orphan_rejected.inc(),
            _ => {}
        }
        if let (Some(from), Some(to)) = (&rec.fallback_from, &rec.cluster) {
            self.fallbacks.with_label_values(&[from, to]).inc();
        }
        if let (true, Some(rule), Some(cluster)) = (rec.created_pin, rec.rule_id, rec.cluster_id) {
            self.shares.count(rule, cluster);
        }
    }

    pub fn reload(&self, ok: bool, generation: Option<u64>) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if let Some(g) = generation {
            self.generation.set(g as i64);
            self.last_reload_success
                .set(crate::clock::wall_ms() as f64 / 1000.0);
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
