//! The immutable compiled config of one generation, and `Live`, the one `ArcSwap` holding the
//! running one.
//!
//! Everything that must agree within a turn — rules, cluster specs and pools, limits, pin
//! policy, generation — sits in one `Snapshot` behind one atomic pointer. A turn loads it once
//! at its start and uses that one to its end, so it never mixes two generations, and nothing on
//! the hot path takes a lock on the config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::ids::NameId;
use crate::pins::PinPolicy;
use crate::probe::ProbeSpec;
use crate::rollout::RolloutEntry;
use crate::router::Routing;
use crate::upstream::pool::PoolState;
use crate::upstream::{ClusterPool, ClusterSpec};

/// Limits of the dialog listener and requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    /// `None`: derived at start from the file-descriptor limit ([`crate::fdlimit`]).
    pub max_connections: Option<u32>,
    /// 0 = unbounded; over it a connection is closed at accept (`reason="per_ip"`).
    pub max_connections_per_ip: u32,
    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2).
    pub idle_timeout: Duration,
    /// Zero = none; older connections are closed gracefully (GOAWAY / `Connection: close`).
    pub max_connection_age: Duration,
    /// A response the client does not take for this long: the connection is closed.
    pub send_timeout: Duration,
    /// Bodies of other (non-dialog) requests; larger: 413.
    pub max_other_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: None,
            max_connections_per_ip: 0,
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::ZERO,
            send_timeout: Duration::from_secs(60),
            max_other_body: 1024 * 1024,
        }
    }
}

/// Where pins live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Memory {
        snapshot: Option<PathBuf>,
    },
    Redis {
        url: String,
        key_prefix: String,
        timeout: Duration,
    },
}

/// TLS of the dialog listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// One cluster of the snapshot.
pub struct ClusterEntry {
    pub name: Arc<str>,
    pub id: NameId,
    pub spec: ClusterSpec,
}

/// A compiled, validated config. `pools` is filled when the snapshot is made live (empty for
/// `graygate check` and `explain`).
pub struct Snapshot {
    pub generation: u64,
    pub sha256: String,
    pub loaded_at_ms: u64,
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub admin_token: Option<Arc<str>>,
    pub decision_header: bool,
    /// The engine for plain HTTP/1.1 dialog connections (read per connection, so a reload
    /// switches new connections over).
    pub engine: crate::vocab::Engine,
    /// Dialog connections start with a PROXY protocol header (spec §13).
    pub listen_proxy_protocol: bool,
    /// `tracing.otlp`: the collector's URL (`/v1/traces` is added when it has no path).
    pub otlp: Option<http::Uri>,
    pub limits: Limits,
    pub pins: PinPolicy,
    pub store: StoreSpec,
    pub probe: ProbeSpec,
    pub routing: Routing,
    pub clusters: Vec<ClusterEntry>,
    /// Interned rule names by rule index.
    pub rule_ids: Vec<NameId>,
    pub default_rule_id: NameId,
    /// Pools by cluster index (same order as `clusters`).
    pub pools: Vec<Arc<ClusterPool>>,
    /// Each cluster's settings, endpoints and client as this generation committed them (same
    /// order as `clusters`): a turn that loaded this snapshot uses these to its end, whatever a
    /// later reload stores in the pool. (A retired cluster's pool state no longer changes.)
    pub views: Vec<Arc<PoolState>>,
    /// The rollout rules' specs with their dials (spec §11), in rule order; bound to the
    /// rollouts' live state before the generation is published.
    pub rollouts: Vec<RolloutEntry>,
}

impl Snapshot {
    /// Cluster `c`'s `fallback:` (index and pool), if it has one.
    pub fn fallback_of(&self, c: usize) -> Option<(usize, &Arc<ClusterPool>)> {
        let fb = self.routing.fallback.get(c).copied().flatten()?;
        Some((fb, self.pools.get(fb)?))
    }

    /// Cluster `c`'s view in this generation.
    pub fn view(&self, c: usize) -> Option<&Arc<PoolState>> {
        self.views.get(c)
    }

    pub fn rule_id(&self, r: crate::router::RuleRef) -> NameId {
        match r {
            crate::router::RuleRef::Rule(i) => self
                .rule_ids
                .get(i)
                .copied()
                .unwrap_or(self.default_rule_id),
            crate::router::RuleRef::Default => self.default_rule_id,
        }
    }

    pub fn cluster_ids(&self) -> Vec<NameId> {
        self.clusters.iter().map(|c| c.id).collect()
    }

    /// Index of a cluster in this snapshot by interned id.
    pub fn cluster_index_of(&self, id: NameId) -> Option<usize> {
        self.clusters.iter().position(|c| c.id == id)
    }
}

/// The running snapshot.
pub type Live = Arc<ArcSwap<Snapshot>>;
