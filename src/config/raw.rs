//! `RoutesFile` and the `Raw*` serde mirrors of `routes.yaml` (spec §2).
//!
//! These mirror the file exactly: every key, `Option` where the file may omit it. Unknown keys
//! are not refused by serde (that would stop the read at the first one): `config::parse`
//! collects them with `serde_ignored`, each with its key path, and reports them all. Values are
//! `Checked` (see `value.rs`): a bad one is kept as its message and reported by `compile`, so
//! the read goes on to the end of the file. Nothing here is used on the hot path:
//! `compile.rs` turns a `RoutesFile` into a `Snapshot`. The JSON Schema printed by
//! `graygate schema` is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::value::{
    ByteSize, Checked, EndpointUrl, HumanDuration, Percent, RegexSource, VdnSpec, Weight,
};

/// The whole `routes.yaml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RoutesFile {
    /// Dialog listener address (HTTP/1.1 and h2c, or HTTPS with `tls`). Default 0.0.0.0:8080.
    pub listen: Option<String>,
    /// TLS for the dialog listener.
    pub tls: Option<RawListenerTls>,
    /// Admin listener address (/metrics /healthz /readyz /admin/*). Default 127.0.0.1:9090.
    pub admin: Option<String>,
    /// A file with a bearer token that /admin/* requests must present.
    pub admin_token_file: Option<String>,
    /// When true, dialog responses carry `x-graygate-route`.
    pub decision_header: Option<Checked<bool>>,
    /// True: every dialog connection starts with a PROXY protocol v1/v2 header (spec §13).
    pub listen_proxy_protocol: Option<Checked<bool>>,
    /// Trace export (spec §13).
    pub tracing: Option<RawTracing>,
    /// The HTTP/1.1 engine for plain dialog turns: `fast` (default) or `hyper` (hyper serves
    /// everything else either way).
    pub engine: Option<Checked<RawEngine>>,
    pub limits: Option<RawLimits>,
    pub pins: Option<RawPins>,
    /// Named ODFS clusters.
    #[schemars(required)]
    pub clusters: Option<BTreeMap<String, RawCluster>>,
    /// Routing rules for new calls, first match wins.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// The cluster for new calls that no rule matches.
    #[schemars(required)]
    pub default: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawListenerTls {
    #[schemars(required)]
    pub cert: Option<String>,
    #[schemars(required)]
    pub key: Option<String>,
    /// A CA file: clients must present a certificate it signed (mTLS).
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTracing {
    /// An OTLP/HTTP collector, e.g. `http://collector:4318`: one span per turn is exported.
    pub otlp: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawLimits {
    /// Larger dialog bodies get 413. Default 64KiB.
    #[schemars(with = "Option<SizeSchema>")]
    pub max_body: Option<Checked<ByteSize>>,
    #[schemars(with = "Option<String>")]
    pub header_read_timeout: Option<Checked<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub request_timeout: Option<Checked<HumanDuration>>,
    pub max_connections: Option<Checked<u32>>,
    /// 0 = unbounded; over it a connection is closed at accept. Default 0.
    pub max_connections_per_ip: Option<Checked<u32>>,
    /// An HTTP/1 keep-alive or HTTP/2 connection with no request in flight is closed. Default 60s.
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Checked<HumanDuration>>,
    /// 0s = none; older connections are closed gracefully. Default 0s.
    #[schemars(with = "Option<String>")]
    pub max_connection_age: Option<Checked<HumanDuration>>,
    /// A response the client does not read for this long: connection closed. Default 60s.
    #[schemars(with = "Option<String>")]
    pub send_timeout: Option<Checked<HumanDuration>>,
    /// Bodies of non-dialog requests; larger: 413. Default 1MiB.
    #[schemars(with = "Option<SizeSchema>")]
    pub max_other_body: Option<Checked<ByteSize>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawPins {
    /// `memory`, `redis://host:port/db` (also `rediss://`), or
    /// `redis+sentinel://[password@]host:port,host:port/MASTER_NAME/DB`.
    pub store: Option<String>,
    #[schemars(with = "Option<String>")]
    pub idle_ttl: Option<Checked<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub end_grace: Option<Checked<HumanDuration>>,
    pub orphan_turns: Option<Checked<RawOrphanTurns>>,
    /// Per replica table; when full the least recently used pin is evicted. Default 1000000.
    pub max_pins: Option<Checked<u64>>,
    /// Memory store only: the table is written here on shutdown and read at start.
    pub snapshot: Option<String>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawOrphanTurns {
    Route,
    Reject,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawRedis {
    pub key_prefix: Option<String>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Checked<HumanDuration>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawCluster {
    /// `http://` or `https://` base URLs of the cluster's ODFS nodes.
    #[schemars(with = "Option<Vec<String>>")]
    pub endpoints: Option<Vec<Checked<EndpointUrl>>>,
    /// Run the reference backend in-process for this cluster.
    pub embedded: Option<RawEmbedded>,
    pub balance: Option<Checked<RawBalance>>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Checked<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<Checked<HumanDuration>>,
    /// Concurrent requests per endpoint; 0 = unbounded.
    pub max_inflight: Option<Checked<u32>>,
    pub health: Option<RawHealth>,
    pub outlier: Option<RawOutlier>,
    /// A cluster for new calls while this one has no healthy endpoint.
    pub fallback: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    /// true: no new calls; calls pinned here finish here.
    pub drain: Option<Checked<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawEmbedded {
    pub label: Option<String>,
    pub flows: Option<String>,
    pub instances: Option<Checked<u16>>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawEngine {
    Fast,
    Hyper,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    LeastRequest,
    UseridHash,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawHealth {
    #[schemars(with = "Option<String>")]
    pub interval: Option<Checked<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Checked<HumanDuration>>,
    /// null: a TCP connect; else an HTTP GET that must answer 2xx.
    pub path: Option<String>,
    pub unhealthy_after: Option<Checked<u32>>,
    pub healthy_after: Option<Checked<u32>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<Checked<u32>>,
    #[schemars(with = "Option<String>")]
    pub eject_for: Option<Checked<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub max_ejected: Option<Checked<Percent>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawRule {
    #[schemars(required)]
    pub name: Option<String>,
    /// vdn ids and inclusive ranges: `[101, 200-299]`.
    #[schemars(with = "Option<Vec<SizeSchema>>")]
    pub vdn: Option<Vec<Checked<VdnSpec>>>,
    pub userid: Option<RawUseridMatch>,
    /// Dotted paths into the JSON body → accepted string values.
    pub fields: Option<BTreeMap<String, Vec<String>>>,
    /// Header names → accepted values.
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    pub cluster: Option<String>,
    /// Cluster → positive weight; deterministic per userid.
    #[schemars(with = "Option<BTreeMap<String, f64>>")]
    pub split: Option<BTreeMap<String, Checked<Weight>>>,
    /// A progressive rollout judged by calls (spec §11).
    pub rollout: Option<super::rollout::RawRollout>,
    /// Split (or rollout) salt; default: the rule's name.
    pub salt: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawUseridMatch {
    #[serde(default)]
    pub exact: Vec<String>,
    #[serde(default)]
    pub prefix: Vec<String>,
    #[serde(default)]
    pub suffix: Vec<String>,
    #[schemars(with = "Option<String>")]
    pub regex: Option<Checked<RegexSource>>,
}

/// Schema of a value written either as a number or as a string (sizes, vdn ranges).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SizeSchema {
    Number(u64),
    Text(String),
}
