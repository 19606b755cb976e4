//! `TurnRecord`: what one request taught the gateway, filled by the proxy on the way and read
//! once at the end by the metrics and the access log line.

use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;

use crate::ids::NameId;
use crate::protocol::{Inaction, Outaction, Vdn};
use crate::vocab::CallOutcome;

#[derive(Debug, Default, Clone)]
pub struct TurnRecord {
    pub request_id: CompactString,
    pub method: http::Method,
    pub path: CompactString,
    /// The client's address: the socket's peer, or the PROXY header's source (spec §13).
    pub client: Option<std::net::IpAddr>,
    /// The turn's trace context (spec §13).
    pub trace: Option<crate::trace::TraceContext>,
    pub vdn: Option<Vdn>,
    /// The full userid; only ever printed masked.
    pub userid: Option<CompactString>,
    pub inaction: Option<Inaction>,
    pub rule: Option<Arc<str>>,
    /// `rule` interned: with `cluster_id`, the owner whose metric handles the turn counts on.
    pub rule_id: Option<NameId>,
    pub cluster: Option<Arc<str>>,
    /// `cluster` interned.
    pub cluster_id: Option<NameId>,
    pub endpoint: Option<Arc<str>>,
    /// new / kept / orphan
    pub pin: Option<&'static str>,
    pub status: u16,
    pub outaction: Option<Outaction>,
    /// The answer's `ret`, when it was read.
    pub ret: Option<i64>,
    /// The rollout epoch the turn's call started in (0: no rollout routed it), spec §11: a
    /// turn of a rollout's call counts its time for the rollout's judge.
    pub epoch: u64,
    /// A new call a rollout routed: the share (basis points) that applied.
    pub step_bp: Option<u32>,
    /// This turn ended its call without a pin ever being kept (a new call that failed, or
    /// whose one turn already ended it): the outcome to count (spec §11).
    pub ended_unpinned: Option<CallOutcome>,
    /// The gateway's own errorCode when it answered itself.
    pub error_code: Option<&'static str>,
    pub fallback_from: Option<Arc<str>>,
    /// This turn created its call's pin (the call began here, on `cluster_id` by `rule_id`).
    pub created_pin: bool,
    pub total: Duration,
    pub upstream: Option<Duration>,
}
