//! The conductor: the one place that knows the order of the stages of a turn.
//!
//! ```text
//! snapshot (load once) → probe → pins.get → router::decide → forward → pins commit → respond
//!                  └──────────────── TurnRecord → metrics + access log ───────────────┘
//! ```
//!
//! Stages never call each other; each returns a value or a typed error, and this module turns
//! them into the next step. Every request ends with exactly one `TurnRecord`, success or not.

pub mod body;
mod forward;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::GatewayBody;

use crate::metrics::Metrics;
use crate::pins::lifecycle::{on_answer, PinAction, PinKind};
use crate::pins::names::{self, NameId};
use crate::pins::{OrphanPolicy, Pin, PinStore, ReleaseReason, Store};
use crate::probe::{self, Dialog};
use crate::protocol::{parse_vdn, DialogPath};
use crate::record::TurnRecord;
use crate::respond::{decision_header, GatewayError, DECISION_HEADER};
use crate::router::decide;
use crate::snapshot::{Live, Snapshot};
use crate::upstream::{ClusterPool, Upstreams};

/// Answers larger than this are streamed through without looking for `outaction`.
pub const ANSWER_PEEK_MAX: usize = 64 * 1024;

/// `<instance as 8 hex digits>-<sequence in hex>`, formatted on the stack (every turn without
/// an `x-request-id` of its own gets one; `format!` machinery cost more than the rest of it).
fn request_id_of(instance: u32, seq: u64) -> CompactString {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 8 + 1 + 16];
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[((instance >> (28 - 4 * i)) & 0xf) as usize];
    }
    buf[8] = b'-';
    let digits = (16 - seq.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        buf[9 + i] = HEX[((seq >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    // Only ASCII hex digits and '-' were written.
    CompactString::from_utf8(&buf[..9 + digits]).unwrap_or_default()
}

/// Shared state of the dialog service.
pub struct Proxy {
    pub live: Live,
    pub upstreams: Arc<Upstreams>,
    pub pins: Store,
    pub metrics: Metrics,
    request_seq: AtomicU64,
    instance: u32,
}

/// Facts about the client connection the service needs.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub https: bool,
}

impl Proxy {
    pub fn new(live: Live, upstreams: Arc<Upstreams>, pins: Store, metrics: Metrics) -> Arc<Self> {
        let instance = (crate::pins::memory::wall_ms() as u32) ^ std::process::id().rotate_left(16);
        Arc::new(Proxy {
            live,
            upstreams,
            pins,
            metrics,
            request_seq: AtomicU64::new(0),
            instance,
        })
    }

    fn request_id(&self, req: &Request<Incoming>) -> CompactString {
        if let Some(v) = req
            .headers()
            .get(&forward::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            if !v.is_empty() && v.len() <= 128 {
                return CompactString::from(v);
            }
        }
        request_id_of(
            self.instance,
            self.request_seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Serve one request. Never fails: every error becomes an answer.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<GatewayBody> {
        let start = Instant::now();
        let snap = self.live.load_full();
        let mut rec = TurnRecord {
            request_id: self.request_id(&req),
            method: req.method().clone(),
            path: CompactString::from(req.uri().path()),
            client: Some(peer.addr.ip()),
            ..TurnRecord::default()
        };
        let mut resp = match DialogPath::classify(req.uri().path()) {
            DialogPath::Other => self.other(req, peer, &snap, &mut rec).await,
            DialogPath::V2(seg) => match parse_vdn(seg) {
                _ if req.method() != Method::POST => Err(GatewayError::Method),
                Some(vdn) => {
                    self.dialog(req, peer, Dialog::V2(vdn), &snap, &mut rec, start)
                        .await
                }
                None => Err(GatewayError::BadUrl(seg.chars().take(64).collect())),
            },
            DialogPath::V1 if req.method() != Method::POST => Err(GatewayError::Method),
            DialogPath::V1 => {
                self.dialog(req, peer, Dialog::V1, &snap, &mut rec, start)
                    .await
            }
        }
        .unwrap_or_else(|e| {
            rec.error_code = Some(e.row().1);
            let mut r = e.response(rec.userid.as_deref());
            // The gateway's own answer to a turn that was routed still says where it went.
            if snap.decision_header {
                if let (Some(pin), Some(cluster)) = (rec.pin, rec.cluster.as_deref()) {
                    let rule = rec.rule.as_deref().unwrap_or("-");
                    let fallback = rec.fallback_from.as_deref();
                    if let Some(v) = decision_header(rule, cluster, pin, snap.generation, fallback)
                    {
                        r.headers_mut().insert(DECISION_HEADER, v);
                    }
                }
            }
            r
        });
        rec.status = resp.status().as_u16();
        if !resp.headers().contains_key(&forward::X_REQUEST_ID) {
            if let Ok(v) = HeaderValue::from_str(&rec.request_id) {
                resp.headers_mut().insert(forward::X_REQUEST_ID, v);
            }
        }
        rec.total = start.elapsed();
        self.metrics.observe(&rec);
        crate::telemetry::access_log(&rec);
        resp
    }

    /// Any request that is not a dialog turn: forwarded unchanged to the default cluster.
    async fn other(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        snap: &Snapshot,
        rec: &mut TurnRecord,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let cluster = snap.routing.default;
        let pool =
            snap.pools.get(cluster).cloned().ok_or_else(|| {
                GatewayError::NoUpstream("no pool for the default cluster".into())
            })?;
        rec.cluster = Some(pool.name.clone());
        let (parts, body) = req.into_parts();
        let request_id = rec.request_id.clone();
        let out = forward::Outgoing {
            parts: &parts,
            body: forward::OutBody::Stream(body),
            peer,
            request_id: &request_id,
        };
        let answer = forward::send(&pool, out, "", false, rec).await?;
        Ok(answer.map(GatewayBody::Stream))
    }

    async fn dialog(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        dialog: Dialog,
        snap: &Snapshot,
        rec: &mut TurnRecord,
        start: Instant,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        rec.vdn = dialog.vdn();
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        let remaining = snap.limits.request_timeout.saturating_sub(start.elapsed());
        let bytes: Bytes = match tokio::time::timeout(
            remaining,
            probe::read_body(body, declared, snap.limits.max_body),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(GatewayError::BodyRead(
                    "the client did not send the body within request_timeout".into(),
                ))
            }
        };
        let turn = match probe::scan(&bytes, dialog, &snap.probe) {
            Ok(t) => t,
            Err(e) => {
                rec.userid = probe::scan::userid_hint(&bytes);
                return Err(e.into());
            }
        };
        rec.userid = Some(turn.userid.clone());
        rec.inaction = Some(turn.inaction);

        // Pinned? Follow the pin, whatever the rules say now.
        let pin = self.pins.get(&turn.userid, snap.pins.idle_ttl).await;
        // `picked`: the cluster index the rules chose for a new call (for its fallback).
        let (mut pool, kind, rule_id, strict, picked) = match pin {
            Some(p) => {
                rec.rule = Some(names::name(p.rule));
                let pool = self.upstreams.get(p.cluster);
                rec.cluster = Some(names::name(p.cluster));
                let Some(pool) = pool else {
                    return Err(GatewayError::NoUpstream(format!(
                        "the call is pinned to cluster `{}`, which this gateway does not know",
                        names::name(p.cluster)
                    )));
                };
                (pool, PinKind::Kept, p.rule, false, None)
            }
            None => {
                let kind = if turn.inaction.starts_call() {
                    PinKind::New
                } else {
                    match snap.pins.orphan_turns {
                        OrphanPolicy::Reject => {
                            self.metrics
                                .orphan_turns
                                .with_label_values(&["rejected"])
                                .inc();
                            return Err(GatewayError::OrphanTurn);
                        }
                        OrphanPolicy::Route => {
                            self.metrics
                                .orphan_turns
                                .with_label_values(&["routed"])
                                .inc();
                            PinKind::Orphan
                        }
                    }
                };
                let d = decide(&turn, &parts.headers, &snap.routing);
                let mut cluster = d.cluster;
                // Fallback: a new call whose cluster has no healthy endpoint.
                if let (Some(pool), Some((fb, fb_pool))) =
                    (snap.pools.get(cluster), snap.fallback_of(cluster))
                {
                    if !pool.any_healthy() {
                        self.note_fallback(rec, pool, fb_pool);
                        cluster = fb;
                    }
                }
                let pool = snap
                    .pools
                    .get(cluster)
                    .cloned()
                    .ok_or_else(|| GatewayError::NoUpstream("cluster has no pool".into()))?;
                rec.rule = Some(snap.routing.rule_arc(d.rule));
                rec.cluster = Some(pool.name.clone());
                let rule_id = snap.rule_id(d.rule);
                (pool, kind, rule_id, true, Some(cluster))
            }
        };
        rec.pin = Some(kind.as_str());

        let request_id = rec.request_id.clone();
        let out = forward::Outgoing {
            parts: &parts,
            body: forward::OutBody::Full(bytes.clone()),
            peer,
            request_id: &request_id,
        };
        let answer = match forward::send(&pool, out, &turn.userid, strict, rec).await {
            Ok(a) => a,
            // A new call (or a routed orphan turn) that no endpoint of its cluster could take,
            // the request untouched: its cluster is down in fact if not yet in the books, so
            // the fallback applies as it would to a marked-down cluster (once; the fallback's
            // own failure is the answer). A pinned turn never gets here.
            Err(f) if f.unreachable && kind != PinKind::Kept && rec.fallback_from.is_none() => {
                let Some((_, fb_pool)) = picked.and_then(|c| snap.fallback_of(c)) else {
                    return Err(f.error);
                };
                let fb_pool = fb_pool.clone();
                self.note_fallback(rec, &pool, &fb_pool);
                tracing::warn!(from = %pool.name, to = %fb_pool.name, "no endpoint could be reached for a new call; sending it to the fallback cluster");
                rec.cluster = Some(fb_pool.name.clone());
                pool = fb_pool;
                let out = forward::Outgoing {
                    parts: &parts,
                    body: forward::OutBody::Full(bytes),
                    peer,
                    request_id: &request_id,
                };
                forward::send(&pool, out, &turn.userid, strict, rec).await?
            }
            // A pinned turn that reached no endpoint of its cluster: one answer, 503, whether
            // the endpoints are already marked down or not yet (spec §10).
            Err(f) if f.unreachable && kind == PinKind::Kept => {
                return Err(match f.error {
                    GatewayError::NoUpstream(m) => GatewayError::NoUpstream(m),
                    other => GatewayError::NoUpstream(format!(
                        "no endpoint of cluster `{}` could be reached for this pinned call ({})",
                        pool.name,
                        other.message()
                    )),
                })
            }
            Err(f) => return Err(f.error),
        };
        let status = answer.status().as_u16();
        let (head, incoming) = answer.into_parts();
        // Read the answer (bounded) to see the end of a call.
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok());
        let (body, outaction) = if (200..300).contains(&status) {
            let timeout = pool.state.load().spec.timeout;
            match tokio::time::timeout(timeout, body::peek(incoming, declared, ANSWER_PEEK_MAX))
                .await
            {
                Ok(Ok(body::Peeked::Whole(b))) => {
                    let o = crate::respond::peek_outaction(&b);
                    (GatewayBody::from(b), o)
                }
                Ok(Ok(body::Peeked::Partial(prefix, rest))) => {
                    (GatewayBody::Prefixed(Some(prefix), rest), None)
                }
                Ok(Err(e)) => {
                    return Err(GatewayError::Upstream(format!("the answer broke off: {e}")))
                }
                Err(_) => {
                    return Err(GatewayError::UpstreamTimeout(format!(
                        "the answer body did not arrive within {timeout:?}"
                    )))
                }
            }
        } else {
            (GatewayBody::Stream(incoming), None)
        };
        rec.outaction = outaction;

        // Commit the pin.
        match on_answer(kind, status, turn.hangup, outaction) {
            PinAction::Nothing => {}
            PinAction::Create { ending } => {
                let new = Pin {
                    cluster: pool.id,
                    rule: rule_id,
                    generation: snap.generation,
                    created_at_ms: crate::pins::memory::wall_ms(),
                    ending,
                };
                let ttl = if ending {
                    snap.pins.end_grace
                } else {
                    snap.pins.idle_ttl
                };
                let kept = self.pins.create(&turn.userid, new, ttl).await;
                if kept == new {
                    self.metrics.shares.count(rule_id, pool.id);
                }
                if kept.cluster != pool.id {
                    tracing::warn!(userid = %crate::protocol::Masked(&turn.userid), first = %names::name(kept.cluster), "another turn pinned this call first; later turns follow that pin");
                }
            }
            PinAction::End => self.pins.end(&turn.userid, snap.pins.end_grace).await,
            PinAction::ReleaseHangup => {
                self.pins.release(&turn.userid, ReleaseReason::Hangup).await;
            }
        }

        let mut resp = Response::from_parts(head, body);
        if snap.decision_header {
            let rule = rec.rule.as_deref().unwrap_or("-");
            if let Some(v) = decision_header(
                rule,
                &pool.name,
                kind.as_str(),
                snap.generation,
                rec.fallback_from.as_deref(),
            ) {
                resp.headers_mut().insert(DECISION_HEADER, v);
            }
        }
        Ok(resp)
    }

    /// A new call leaves `from` for its fallback `to`: counted, and said in the decision header.
    fn note_fallback(&self, rec: &mut TurnRecord, from: &ClusterPool, to: &ClusterPool) {
        self.metrics
            .fallbacks
            .with_label_values(&[&from.name, &to.name])
            .inc();
        rec.fallback_from = Some(from.name.clone());
    }

    /// The pool a pin points at, for views.
    pub fn pool_of(&self, id: NameId) -> Option<Arc<ClusterPool>> {
        self.upstreams.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::request_id_of;

    #[test]
    fn request_ids_are_the_instance_and_the_sequence_in_hex() {
        for (inst, seq) in [
            (0u32, 0u64),
            (0xdeadbeef, 1),
            (0x1f, 0xabc),
            (u32::MAX, u64::MAX),
            (0x0102_0304, 0x10),
            (7, 1 << 60),
        ] {
            assert_eq!(
                request_id_of(inst, seq).as_str(),
                format!("{inst:08x}-{seq:x}"),
                "{inst} {seq}"
            );
        }
    }
}
