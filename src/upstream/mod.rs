//! Upstreams: one long-lived [`ClusterPool`] per cluster name, reconciled on each config load.
//!
//! Rules and weights change with every file; pools, endpoint health and embedded backends must
//! survive reloads. `reconcile` keeps a cluster's pool when it stays in the file (swapping in
//! new settings and endpoints, keeping each surviving endpoint's health), creates pools for new
//! clusters, and keeps a removed cluster as *retired* while pins point at it. Pinned turns find
//! their pool here by cluster id, never in the snapshot, so a retired cluster still serves its
//! calls to their end.

pub mod balance;
pub mod client;
pub mod conn;
pub mod embedded;
pub mod endpoint;
pub mod gate;
pub mod health;
pub mod pool;
pub mod raw;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use balance::Balance;
pub use client::UpstreamError;
pub use endpoint::{Endpoint, EndpointUrl};
pub use pool::{ClusterPool, InflightGuard, PickError};

use crate::ids::{self as names, NameId};
use crate::metrics::Metrics;

/// A cluster as one config generation describes it (compiled, validated).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub endpoints: Vec<EndpointUrl>,
    pub embedded: Option<EmbeddedSpec>,
    pub balance: Balance,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_inflight: u32,
    pub health: Option<HealthSpec>,
    pub outlier: OutlierSpec,
    pub fallback: Option<String>,
    pub tls: TlsSpec,
    pub drain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSpec {
    pub label: String,
    pub flows: Option<String>,
    pub instances: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub path: Option<String>,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSpec {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    pub max_ejected: f64,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSpec {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
}

/// Lifecycle of a cluster, as `/admin/config` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    Active,
    Draining,
    /// Gone from the file, still serving pinned calls; disappears with its last pin.
    Retired,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Active => "active",
            ClusterState::Draining => "draining",
            ClusterState::Retired => "retired",
        }
    }
}

/// All pools by cluster id.
pub struct Upstreams {
    pools: ArcSwap<HashMap<NameId, Arc<ClusterPool>>>,
    metrics: Metrics,
    /// Writers of `pools` (a commit, the sweep of empty retired clusters) one at a time, so
    /// neither loses the other's store. Never taken on the hot path, never held across an await.
    write: std::sync::Mutex<()>,
}

/// Every fallible step of making the pools match a new config, done without touching a live
/// pool: clients built (certificate files read off the async runtime), changed embedded
/// backends started, endpoints carried over by URL. [`Upstreams::commit`] applies it and
/// cannot fail; dropping it instead stops what it started and changes nothing.
pub struct Prepared {
    clusters: Vec<PreparedCluster>,
}

struct PreparedCluster {
    name: Arc<str>,
    id: NameId,
    change: Change,
}

// One per cluster per reload, never on the hot path: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Change {
    /// The pool stays as it is.
    Keep(Arc<ClusterPool>),
    /// The pool stays; its settings, endpoints or client change.
    Update {
        pool: Arc<ClusterPool>,
        state: Arc<pool::PoolState>,
        embedded: Option<embedded::EmbeddedCluster>,
    },
    /// A new cluster.
    Create {
        spec: Box<ClusterSpec>,
        endpoints: Vec<Arc<Endpoint>>,
        client: client::Client,
        embedded: Option<embedded::EmbeddedCluster>,
    },
}

/// Why a cluster could not be prepared.
#[derive(Debug, Clone)]
pub struct PrepareError {
    pub cluster: Arc<str>,
    pub message: String,
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster {}: {}", self.cluster, self.message)
    }
}

/// A cluster's pool and its view in one generation, as a commit leaves them.
pub struct Committed {
    pub pools: Vec<Arc<ClusterPool>>,
    pub views: Vec<Arc<pool::PoolState>>,
}

impl Upstreams {
    pub fn new(metrics: Metrics) -> Self {
        Upstreams {
            pools: ArcSwap::from_pointee(HashMap::new()),
            metrics,
            write: std::sync::Mutex::new(()),
        }
    }

    /// The pool of a cluster, active or retired.
    pub fn get(&self, id: NameId) -> Option<Arc<ClusterPool>> {
        self.pools.load().get(&id).cloned()
    }

    /// Every pool, for views.
    pub fn all(&self) -> Vec<Arc<ClusterPool>> {
        let mut v: Vec<_> = self.pools.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Live pins of a cluster in this replica's table (the `graygate_pins` gauge).
    pub fn pin_count(&self, name: &str) -> i64 {
        self.metrics.pins.with_label_values(&[name]).get()
    }

    /// Make the pools match `specs`: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    pub async fn reconcile(
        &self,
        specs: &[(Arc<str>, ClusterSpec)],
    ) -> Result<Committed, PrepareError> {
        Ok(self.commit(self.prepare(specs).await?))
    }

    /// Everything that can fail, for every cluster of `specs` (in the snapshot's cluster
    /// order), before anything changes. The caller serializes prepare/commit pairs (the
    /// reloader holds its one-at-a-time lock across both).
    pub async fn prepare(
        &self,
        specs: &[(Arc<str>, ClusterSpec)],
    ) -> Result<Prepared, PrepareError> {
        let current = self.pools.load_full();
        let mut clusters = Vec::with_capacity(specs.len());
        for (name, spec) in specs {
            let id = names::intern(name);
            let fail = |message: String| PrepareError {
                cluster: name.clone(),
                message,
            };
            let change = match current.get(&id) {
                Some(pool) => self.prepare_update(pool, spec).await.map_err(fail)?,
                None => {
                    let (endpoints, embedded) = match &spec.embedded {
                        Some(e) => {
                            let cluster = embedded::start(e).await.map_err(fail)?;
                            (embedded_endpoints(&cluster), Some(cluster))
                        }
                        None => (
                            spec.endpoints
                                .iter()
                                .map(|u| Arc::new(Endpoint::new(&u.text, u.https)))
                                .collect(),
                            None,
                        ),
                    };
                    Change::Create {
                        client: build_client(spec).await.map_err(fail)?,
                        spec: Box::new(spec.clone()),
                        endpoints,
                        embedded,
                    }
                }
            };
            clusters.push(PreparedCluster {
                name: name.clone(),
                id,
                change,
            });
        }
        Ok(Prepared { clusters })
    }

    async fn prepare_update(
        &self,
        pool: &Arc<ClusterPool>,
        spec: &ClusterSpec,
    ) -> Result<Change, String> {
        let old = pool.state.load_full();
        if old.spec == *spec {
            return Ok(Change::Keep(pool.clone()));
        }
        let mut started = None;
        // Embedded clusters keep their running backend unless its definition changed.
        let endpoints: Vec<Arc<Endpoint>> = match &spec.embedded {
            Some(e) if old.spec.embedded.as_ref() == Some(e) => old.endpoints.clone(),
            Some(e) => {
                let cluster = embedded::start(e).await?;
                let eps = embedded_endpoints(&cluster);
                started = Some(cluster);
                eps
            }
            // Long-lived per-endpoint state (health streaks, ejection, in-flight count, idle
            // connections) carries over by URL.
            None => spec
                .endpoints
                .iter()
                .map(|u| {
                    old.endpoints
                        .iter()
                        .find(|e| *e.url == *u.text)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(&u.text, u.https)))
                })
                .collect(),
        };
        let client = if client_settings_equal(&old.spec, spec) {
            old.client.clone()
        } else {
            build_client(spec).await?
        };
        Ok(Change::Update {
            pool: pool.clone(),
            state: Arc::new(pool::PoolState {
                spec: spec.clone(),
                endpoints,
                client,
            }),
            embedded: started,
        })
    }

    /// Apply a prepared change: one store per pool and one for the table; cannot fail. Pools of
    /// clusters that left the file stay (retired, their state frozen) while they have pins.
    pub fn commit(&self, prepared: Prepared) -> Committed {
        let _one_writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.pools.load_full();
        let mut next: HashMap<NameId, Arc<ClusterPool>> = HashMap::new();
        let mut pools = Vec::with_capacity(prepared.clusters.len());
        let mut views = Vec::with_capacity(prepared.clusters.len());
        for c in prepared.clusters {
            let pool = match c.change {
                Change::Keep(pool) => pool,
                Change::Update {
                    pool,
                    state,
                    embedded,
                } => {
                    let old = pool.state.load_full();
                    for e in old.endpoints.iter() {
                        if !state.endpoints.iter().any(|n| n.url == e.url) {
                            let _ = self
                                .metrics
                                .endpoint_healthy
                                .remove_label_values(&[&pool.name, &e.url]);
                        }
                    }
                    pool.state.store(state);
                    if let Some(started) = embedded {
                        if let Ok(mut g) = pool.embedded.lock() {
                            // The old instances stop when dropped; their calls' state goes
                            // with them, as it would on a real ODFS redeploy.
                            *g = Some(started);
                        }
                    }
                    for e in pool.state.load().endpoints.iter() {
                        pool.refresh_gauge(e);
                    }
                    // New endpoints, client or check settings: the old check task stops, a
                    // new one starts (endpoints that stayed keep their verdict and streaks).
                    health::restart(&pool);
                    pool
                }
                Change::Create {
                    spec,
                    endpoints,
                    client,
                    embedded,
                } => {
                    let pool = ClusterPool::with_client(
                        c.name.clone(),
                        c.id,
                        *spec,
                        endpoints,
                        client,
                        self.metrics.clone(),
                    );
                    if let Ok(mut g) = pool.embedded.lock() {
                        *g = embedded;
                    }
                    let pool = Arc::new(pool);
                    health::restart(&pool);
                    pool
                }
            };
            views.push(pool.state.load_full());
            next.insert(c.id, pool.clone());
            pools.push(pool);
        }
        for (id, pool) in current.iter() {
            if next.contains_key(id) {
                continue;
            }
            if self.pin_count(&pool.name) > 0 {
                tracing::info!(cluster = %pool.name, pins = self.pin_count(&pool.name), "cluster retired: serving its pinned calls until they end");
                next.insert(*id, pool.clone());
            } else {
                tracing::info!(cluster = %pool.name, "cluster removed");
                self.forget_endpoints(pool);
            }
        }
        self.pools.store(Arc::new(next));
        Committed { pools, views }
    }

    /// Drop retired pools whose last pin is gone. `active`: ids in the running snapshot.
    pub fn drop_empty_retired(&self, active: &[NameId]) -> usize {
        let _one_writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.pools.load_full();
        let gone: Vec<NameId> = current
            .iter()
            .filter(|(id, pool)| !active.contains(id) && self.pin_count(&pool.name) <= 0)
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let mut next = HashMap::clone(&current);
        for id in &gone {
            if let Some(pool) = next.remove(id) {
                tracing::info!(cluster = %pool.name, "retired cluster has no pins left: removed");
                self.forget_endpoints(&pool);
            }
        }
        self.pools.store(Arc::new(next));
        gone.len()
    }

    fn forget_endpoints(&self, pool: &ClusterPool) {
        for e in pool.state.load().endpoints.iter() {
            let _ = self
                .metrics
                .endpoint_healthy
                .remove_label_values(&[&pool.name, &e.url]);
        }
    }
}

fn embedded_endpoints(cluster: &embedded::EmbeddedCluster) -> Vec<Arc<Endpoint>> {
    cluster
        .addrs
        .iter()
        .map(|a| Arc::new(Endpoint::new(&format!("http://{a}"), false)))
        .collect()
}

/// Build a cluster's client off the async runtime: it reads certificate files.
async fn build_client(spec: &ClusterSpec) -> Result<client::Client, String> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || client::build(&spec))
        .await
        .map_err(|e| e.to_string())?
}

fn client_settings_equal(a: &ClusterSpec, b: &ClusterSpec) -> bool {
    a.tls == b.tls
        && a.connect_timeout == b.connect_timeout
        && a.endpoints.iter().any(|e| e.https) == b.endpoints.iter().any(|e| e.https)
}
