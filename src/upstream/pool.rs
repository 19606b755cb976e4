//! One cluster's long-lived pool: endpoints with their health and in-flight counts, the
//! balancing counter and the HTTP client. It outlives config generations: a reload that keeps
//! the cluster swaps in new settings and endpoints but keeps each surviving endpoint's health.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::balance::Balance;
use super::client::{self, Client};
use super::ClusterSpec;
use crate::metrics::Metrics;
use crate::pins::names::NameId;

/// One ODFS node of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// `http://host:port` as written (or the embedded loopback address).
    pub url: Arc<str>,
    pub https: bool,
    /// Scheme and authority for building request URIs (parsed once).
    pub authority: Option<http::uri::Authority>,
    /// Rendezvous seed for `userid_hash`.
    pub seed: u64,
    inflight: AtomicU32,
    /// The active check's verdict.
    checked_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Ejected until this many ms after the pool's epoch (0 = not ejected).
    ejected_until: AtomicU64,
    ejections_in_a_row: AtomicU32,
    /// Why it is down, for /admin/config.
    pub reason: std::sync::Mutex<Option<String>>,
}

impl Endpoint {
    pub fn new(url: &str, https: bool) -> Self {
        Endpoint {
            url: Arc::from(url),
            https,
            authority: url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.authority().cloned()),
            seed: crate::router::split::seed("endpoint", url),
            inflight: AtomicU32::new(0),
            checked_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            reason: std::sync::Mutex::new(None),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    pub fn set_checked_healthy(&self, healthy: bool) {
        self.checked_healthy.store(healthy, Ordering::Relaxed);
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    fn set_reason(&self, r: Option<String>) {
        if let Ok(mut g) = self.reason.lock() {
            *g = r;
        }
    }
}

/// The settings of a pool that come from the current config.
pub struct PoolState {
    pub spec: ClusterSpec,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub client: Client,
}

/// A cluster's pool.
pub struct ClusterPool {
    pub name: Arc<str>,
    pub id: NameId,
    pub state: ArcSwap<PoolState>,
    counter: AtomicUsize,
    epoch: Instant,
    metrics: Metrics,
    /// The embedded backend's servers, if any: dropping the pool stops them.
    pub embedded: std::sync::Mutex<Option<super::embedded::EmbeddedCluster>>,
}

/// A slot taken on an endpoint; gives it back when dropped.
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
    gauge: prometheus::IntGauge,
}

impl InflightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every endpoint is down (health or ejection) or was already tried.
    NoneHealthy,
    /// Every candidate is at `max_inflight`.
    Full,
}

impl ClusterPool {
    pub fn new(
        name: Arc<str>,
        id: NameId,
        spec: ClusterSpec,
        endpoints: Vec<Arc<Endpoint>>,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let client = client::build(&spec)?;
        for e in &endpoints {
            metrics
                .endpoint_healthy
                .with_label_values(&[&name, &e.url])
                .set(1);
            metrics.ejections.with_label_values(&[&name, &e.url]);
        }
        metrics.inflight.with_label_values(&[&name]);
        for reason in ["hangup", "idle", "admin", "end_grace"] {
            metrics.pins_released.with_label_values(&[&name, reason]);
        }
        metrics.pins_created.with_label_values(&[&name]);
        metrics.pins.with_label_values(&[&name]);
        if let Some(fb) = &spec.fallback {
            metrics.fallbacks.with_label_values(&[&*name, fb.as_str()]);
        }
        Ok(ClusterPool {
            name,
            id,
            state: ArcSwap::from_pointee(PoolState {
                spec,
                endpoints,
                client,
            }),
            counter: AtomicUsize::new(0),
            epoch: Instant::now(),
            metrics,
            embedded: std::sync::Mutex::new(None),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Can the endpoint take new calls (active check and passive ejection both say yes)?
    pub fn is_healthy(&self, e: &Endpoint) -> bool {
        e.checked_healthy() && !e.ejected(self.now_ms())
    }

    /// Does the cluster have at least one healthy endpoint?
    pub fn any_healthy(&self) -> bool {
        self.state
            .load()
            .endpoints
            .iter()
            .any(|e| self.is_healthy(e))
    }

    /// Pick an endpoint and take an in-flight slot on it. `tried` is a bitmask of endpoint
    /// indices already tried for this request. `strict`: healthy endpoints only (new calls);
    /// otherwise a pinned turn falls back to endpoints marked down before giving up.
    pub fn pick(
        &self,
        state: &PoolState,
        userid: &str,
        tried: u64,
        strict: bool,
    ) -> Result<(usize, InflightGuard), PickError> {
        let max = state.spec.max_inflight;
        let mut saw_full = false;
        let passes: &[bool] = if strict { &[true] } else { &[true, false] };
        for &healthy_only in passes {
            let accept = |i: usize, e: &Endpoint| {
                if i < 64 && tried & (1 << i) != 0 {
                    return false;
                }
                if healthy_only && !self.is_healthy(e) {
                    return false;
                }
                true
            };
            // Try the strategy's choice; if it is full, skip it and ask again.
            let mut skip: u64 = 0;
            loop {
                let choice =
                    state
                        .spec
                        .balance
                        .pick(&state.endpoints, &self.counter, userid, |i, e| {
                            accept(i, e) && (i >= 64 || skip & (1 << i) == 0)
                        });
                let Some(i) = choice else { break };
                let e = &state.endpoints[i];
                if max == 0 || e.inflight.fetch_add(1, Ordering::Relaxed) < max {
                    if max == 0 {
                        e.inflight.fetch_add(1, Ordering::Relaxed);
                    }
                    let gauge = self.metrics.inflight.with_label_values(&[&self.name]);
                    gauge.inc();
                    return Ok((
                        i,
                        InflightGuard {
                            endpoint: e.clone(),
                            gauge,
                        },
                    ));
                }
                e.inflight.fetch_sub(1, Ordering::Relaxed);
                saw_full = true;
                if i >= 64 {
                    break;
                }
                skip |= 1 << i;
            }
            if saw_full {
                return Err(PickError::Full);
            }
        }
        Err(if saw_full {
            PickError::Full
        } else {
            PickError::NoneHealthy
        })
    }

    /// Live traffic says the endpoint answered.
    pub fn record_success(&self, e: &Endpoint) {
        if e.consecutive_failures.load(Ordering::Relaxed) != 0 {
            e.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if e.ejections_in_a_row.load(Ordering::Relaxed) != 0 && !e.ejected(self.now_ms()) {
            e.ejections_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Live traffic says the endpoint failed (connect error, reset, timeout, 502/503/504).
    /// Ejects it after `consecutive_failures` in a row, unless that would eject more than
    /// `max_ejected` of the cluster.
    pub fn record_failure(&self, state: &PoolState, e: &Endpoint, why: &str) {
        let n = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let o = &state.spec.outlier;
        if n < o.consecutive_failures || o.consecutive_failures == 0 {
            return;
        }
        let now = self.now_ms();
        if e.ejected(now) {
            return;
        }
        // Never eject more than `max_ejected` of the cluster (floor): with 50% a two-node
        // cluster may lose one node to ejection, a one-node cluster none.
        let total = state.endpoints.len();
        let ejected = state.endpoints.iter().filter(|x| x.ejected(now)).count();
        let allowed = ((total as f64) * o.max_ejected).floor() as usize;
        if ejected + 1 > allowed {
            return;
        }
        let k = e.ejections_in_a_row.fetch_add(1, Ordering::Relaxed).min(16);
        let base = o.eject_for.as_millis() as u64;
        let dur = base.saturating_mul(1u64 << k).min(5 * 60 * 1000);
        e.ejected_until.store(now + dur, Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        e.set_reason(Some(format!(
            "ejected for {}ms after {n} failures in a row ({why})",
            dur
        )));
        self.metrics
            .ejections
            .with_label_values(&[&self.name, &e.url])
            .inc();
        self.metrics
            .endpoint_healthy
            .with_label_values(&[&self.name, &e.url])
            .set(0);
        tracing::warn!(cluster = %self.name, endpoint = %e.url, eject_ms = dur, reason = why, "endpoint ejected");
        let metrics = self.metrics.clone();
        let (name, url) = (self.name.clone(), e.url.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(dur)).await;
            metrics
                .endpoint_healthy
                .with_label_values(&[&name, &url])
                .set(1);
        });
    }

    /// A JSON-friendly view of each endpoint's state.
    pub fn endpoint_views(&self) -> Vec<serde_json::Value> {
        let now = self.now_ms();
        self.state
            .load()
            .endpoints
            .iter()
            .map(|e| {
                let ejected_ms = e.ejected_until.load(Ordering::Relaxed).saturating_sub(now);
                serde_json::json!({
                    "url": &*e.url,
                    "healthy": self.is_healthy(e),
                    "checked_healthy": e.checked_healthy(),
                    "ejected_for_ms": ejected_ms,
                    "inflight": e.inflight(),
                    "reason": if self.is_healthy(e) { None } else { e.reason.lock().ok().and_then(|r| r.clone()) },
                })
            })
            .collect()
    }

    pub fn balance(&self) -> Balance {
        self.state.load().spec.balance
    }
}

/// The timeout pieces a forward needs.
pub fn timeouts(spec: &ClusterSpec) -> (Duration, Duration) {
    (spec.timeout, spec.connect_timeout)
}
