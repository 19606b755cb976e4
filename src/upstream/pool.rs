//! One cluster's long-lived pool: endpoints with their health and in-flight counts, the
//! balancing counter and the HTTP client. It outlives config generations: a reload that keeps
//! the cluster swaps in new settings and endpoints but keeps each surviving endpoint's health.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::balance::Balance;
use super::client::{self, Client};
pub use super::endpoint::Endpoint;
use super::ClusterSpec;
use crate::ids::NameId;
use crate::metrics::Metrics;

/// A background task of the pool (its health checks); dropping the handle stops the task.
pub struct TaskHandle(pub(super) tokio::task::JoinHandle<()>);

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.0.abort();
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
    /// `graygate_inflight_requests{cluster}`, resolved once for the pool's life.
    inflight_gauge: prometheus::IntGauge,
    epoch: Instant,
    metrics: Metrics,
    /// Ejection decisions are taken one at a time, so that two endpoints failing at once
    /// cannot both pass the `max_ejected` bound.
    eject_lock: std::sync::Mutex<()>,
    /// The embedded backend's servers, if any: dropping the pool stops them.
    pub embedded: std::sync::Mutex<Option<super::embedded::EmbeddedCluster>>,
    /// The active health check task, if the spec has `health`: dropping it stops the task.
    pub(super) health: std::sync::Mutex<Option<TaskHandle>>,
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
        Ok(Self::with_client(
            name, id, spec, endpoints, client, metrics,
        ))
    }

    /// A pool with a client already built (the fallible part, done in `Upstreams::prepare`).
    pub fn with_client(
        name: Arc<str>,
        id: NameId,
        spec: ClusterSpec,
        endpoints: Vec<Arc<Endpoint>>,
        client: Client,
        metrics: Metrics,
    ) -> Self {
        for e in &endpoints {
            metrics
                .endpoint_healthy
                .with_label_values(&[&name, &e.url])
                .set(1);
            metrics.ejections.with_label_values(&[&name, &e.url]);
        }
        let inflight_gauge = metrics.inflight.with_label_values(&[&name]);
        for reason in ["hangup", "idle", "admin", "end_grace"] {
            metrics.pins_released.with_label_values(&[&name, reason]);
        }
        metrics.pins_created.with_label_values(&[&name]);
        metrics.pins.with_label_values(&[&name]);
        if let Some(fb) = &spec.fallback {
            metrics.fallbacks.with_label_values(&[&*name, fb.as_str()]);
        }
        ClusterPool {
            name,
            id,
            state: ArcSwap::from_pointee(PoolState {
                spec,
                endpoints,
                client,
            }),
            counter: AtomicUsize::new(0),
            inflight_gauge,
            epoch: Instant::now(),
            metrics,
            eject_lock: std::sync::Mutex::new(()),
            embedded: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Can the endpoint take new calls (active check and passive ejection both say yes)?
    pub fn is_healthy(&self, e: &Endpoint) -> bool {
        e.checked_healthy() && !e.ejected(self.now_ms())
    }

    /// Set `graygate_upstream_endpoint_healthy` from the endpoint's current state.
    pub fn refresh_gauge(&self, e: &Endpoint) {
        self.metrics
            .endpoint_healthy
            .with_label_values(&[&self.name, &e.url])
            .set(i64::from(self.is_healthy(e)));
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
                    let gauge = self.inflight_gauge.clone();
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
    /// Ejects it after `consecutive_failures` in a row for `eject_for`, doubled with each
    /// ejection in a row (at most 5 minutes), unless that would eject more than `max_ejected`
    /// of the cluster's endpoints (floor: with 50% a two-node cluster may lose one node to
    /// ejection, a one-node cluster none; the active check can still mark any node down).
    pub fn record_failure(&self, state: &PoolState, e: &Arc<Endpoint>, why: &str) {
        let n = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let o = &state.spec.outlier;
        if o.consecutive_failures == 0 || n < o.consecutive_failures {
            return;
        }
        let Ok(_one_at_a_time) = self.eject_lock.lock() else {
            return;
        };
        let now = self.now_ms();
        if e.ejected(now) {
            return;
        }
        let total = state.endpoints.len();
        let ejected = state.endpoints.iter().filter(|x| x.ejected(now)).count();
        let allowed = ((total as f64) * o.max_ejected).floor() as usize;
        if ejected + 1 > allowed {
            return;
        }
        let k = e.ejections_in_a_row.fetch_add(1, Ordering::Relaxed).min(16);
        let dur = eject_ms(o.eject_for, k);
        e.ejected_until.store(now + dur, Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        e.set_eject_reason(Some(format!(
            "ejected for {dur}ms after {n} failures in a row ({why})"
        )));
        self.metrics
            .ejections
            .with_label_values(&[&self.name, &e.url])
            .inc();
        self.refresh_gauge(e);
        tracing::warn!(cluster = %self.name, endpoint = %e.url, eject_ms = dur, ejections_in_a_row = k + 1, reason = why, "endpoint ejected");
        // When the ejection ends, the gauge says what the endpoint is then (the active
        // check may have marked it down meanwhile, or a later ejection may have followed).
        let metrics = self.metrics.clone();
        let (name, e, epoch) = (self.name.clone(), e.clone(), self.epoch);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(dur)).await;
            let now = epoch.elapsed().as_millis() as u64;
            if e.ejected(now) {
                return;
            }
            let healthy = e.checked_healthy();
            metrics
                .endpoint_healthy
                .with_label_values(&[&name, &e.url])
                .set(i64::from(healthy));
            tracing::info!(cluster = %name, endpoint = %e.url, healthy, "endpoint ejection over");
        });
    }

    /// End a passive ejection early: the active check saw the endpoint down and then up
    /// again for `healthy_after` checks, better evidence than a timer. Its doubling count
    /// stays until live traffic succeeds on it.
    pub fn end_ejection(&self, e: &Endpoint) -> bool {
        let now = self.now_ms();
        if !e.ejected(now) {
            return false;
        }
        e.ejected_until.store(0, Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        e.set_eject_reason(None);
        true
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
                    // Kept-alive connections waiting for a turn (plain http:// only).
                    "idle_connections": e.conns.idle_count() + e.raw.idle_count(),
                    "reason": e.reason(now),
                })
            })
            .collect()
    }

    pub fn balance(&self) -> Balance {
        self.state.load().spec.balance
    }
}

/// How long the `k`-th ejection in a row lasts (k = 0 for the first): `eject_for` doubled
/// `k` times, at most 5 minutes.
pub fn eject_ms(eject_for: Duration, k: u32) -> u64 {
    let base = eject_for.as_millis().min(u128::from(u64::MAX)) as u64;
    base.saturating_mul(1u64 << k.min(16)).min(MAX_EJECTION_MS)
}

/// The longest one ejection lasts (spec §10).
pub const MAX_EJECTION_MS: u64 = 5 * 60 * 1000;

/// The timeout pieces a forward needs.
pub fn timeouts(spec: &ClusterSpec) -> (Duration, Duration) {
    (spec.timeout, spec.connect_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::EndpointUrl;
    use crate::upstream::{health, HealthSpec, OutlierSpec, TlsSpec};

    fn spec(n: usize, outlier: OutlierSpec) -> ClusterSpec {
        ClusterSpec {
            endpoints: (0..n)
                .map(|i| EndpointUrl::parse(&format!("http://127.0.0.1:{}", 1000 + i)).unwrap())
                .collect(),
            embedded: None,
            balance: Balance::RoundRobin,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_inflight: 0,
            health: None,
            outlier,
            fallback: None,
            tls: TlsSpec::default(),
            drain: false,
        }
    }

    fn pool(n: usize, outlier: OutlierSpec) -> (ClusterPool, Metrics) {
        let s = spec(n, outlier);
        let eps = s
            .endpoints
            .iter()
            .map(|u| Arc::new(Endpoint::new(&u.text, false)))
            .collect();
        let m = Metrics::new();
        let p =
            ClusterPool::new(Arc::from("c"), crate::ids::intern("c"), s, eps, m.clone()).unwrap();
        (p, m)
    }

    fn healthy_gauge(m: &Metrics, url: &str) -> i64 {
        m.endpoint_healthy.with_label_values(&["c", url]).get()
    }

    #[test]
    fn ejection_time_doubles_up_to_five_minutes() {
        let d = Duration::from_secs(30);
        assert_eq!(eject_ms(d, 0), 30_000);
        assert_eq!(eject_ms(d, 1), 60_000);
        assert_eq!(eject_ms(d, 3), 240_000);
        assert_eq!(eject_ms(d, 4), MAX_EJECTION_MS);
        assert_eq!(eject_ms(d, 40), MAX_EJECTION_MS);
        assert_eq!(eject_ms(Duration::from_secs(3600), 0), MAX_EJECTION_MS);
        assert_eq!(eject_ms(Duration::MAX, 16), MAX_EJECTION_MS);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_is_bounded_doubles_and_ends() {
        let o = OutlierSpec {
            consecutive_failures: 2,
            eject_for: Duration::from_secs(10),
            max_ejected: 0.5,
        };
        let (p, m) = pool(2, o);
        let state = p.state.load_full();
        let (a, b) = (state.endpoints[0].clone(), state.endpoints[1].clone());
        p.record_failure(&state, &a, "x");
        assert!(p.is_healthy(&a), "one failure is not enough");
        p.record_failure(&state, &a, "x");
        assert!(!p.is_healthy(&a));
        assert_eq!(healthy_gauge(&m, &a.url), 0);
        assert_eq!(m.ejections.with_label_values(&["c", &a.url]).get(), 1);
        // The other may not follow: 50% of two is one.
        for _ in 0..5 {
            p.record_failure(&state, &b, "x");
        }
        assert!(p.is_healthy(&b));
        assert_eq!(m.ejections.with_label_values(&["c", &b.url]).get(), 0);
        // The ejection ends after 10s and the gauge follows.
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        tokio::task::yield_now().await;
        assert!(p.is_healthy(&a));
        assert_eq!(healthy_gauge(&m, &a.url), 1);
        // Failing again right away: ejected for twice as long.
        p.record_failure(&state, &a, "x");
        p.record_failure(&state, &a, "x");
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        assert!(!p.is_healthy(&a), "the second ejection in a row lasts 20s");
        tokio::time::sleep(Duration::from_millis(10_000)).await;
        tokio::task::yield_now().await;
        assert!(p.is_healthy(&a));
        // A success resets the doubling.
        p.record_success(&a);
        p.record_failure(&state, &a, "x");
        p.record_failure(&state, &a, "x");
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        assert!(p.is_healthy(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_end_does_not_hide_a_failed_check() {
        let o = OutlierSpec {
            consecutive_failures: 1,
            eject_for: Duration::from_secs(1),
            max_ejected: 1.0,
        };
        let (p, m) = pool(1, o);
        let state = p.state.load_full();
        let a = state.endpoints[0].clone();
        p.record_failure(&state, &a, "x");
        assert!(!p.is_healthy(&a));
        let hs = HealthSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            path: None,
            unhealthy_after: 2,
            healthy_after: 2,
        };
        health::apply(&p, &a, &hs, Err("refused".into()));
        health::apply(&p, &a, &hs, Err("refused".into()));
        assert!(!a.checked_healthy());
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        tokio::task::yield_now().await;
        assert_eq!(healthy_gauge(&m, &a.url), 0, "still down by the check");
        let view = p.endpoint_views();
        assert!(view[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed 2 times in a row: refused")));
        // Two passes: up again, and a running ejection would end with it.
        p.record_failure(&state, &a, "x");
        assert!(!p.is_healthy(&a));
        health::apply(&p, &a, &hs, Ok(()));
        assert!(!p.is_healthy(&a));
        health::apply(&p, &a, &hs, Ok(()));
        assert!(p.is_healthy(&a));
        assert_eq!(healthy_gauge(&m, &a.url), 1);
        assert!(p.endpoint_views()[0]["reason"].is_null());
    }

    #[test]
    fn thresholds_need_streaks() {
        let (p, _m) = pool(1, OutlierSpec::default());
        let a = p.state.load().endpoints[0].clone();
        let hs = HealthSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            path: None,
            unhealthy_after: 3,
            healthy_after: 2,
        };
        for outcome in [Err("e"), Err("e"), Ok(()), Err("e"), Err("e")] {
            health::apply(&p, &a, &hs, outcome.map_err(String::from));
        }
        assert!(a.checked_healthy(), "a pass breaks the streak of failures");
        health::apply(&p, &a, &hs, Err("e".into()));
        assert!(!a.checked_healthy());
        health::apply(&p, &a, &hs, Ok(()));
        health::apply(&p, &a, &hs, Err("e".into()));
        health::apply(&p, &a, &hs, Ok(()));
        assert!(
            !a.checked_healthy(),
            "a failure breaks the streak of passes"
        );
        health::apply(&p, &a, &hs, Ok(()));
        assert!(a.checked_healthy());
    }
}
