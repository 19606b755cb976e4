//! The conductor: the one place that knows the order of the stages of a turn.
//!
//! ```text
//! begin (one generation) → probe → locate (pin, or choose) → forward → settle pin → record
//!                  └──────────────── TurnRecord → metrics + access log ─────────────┘
//! ```
//!
//! The phases are methods of [`turn::TurnCtx`], each documented with when it runs and what it
//! leaves in the context. Stages never call each other; each returns a value or a typed error,
//! and the phases turn them into the next step. Every request ends with exactly one
//! `TurnRecord`, success or not. This file is the general engine's side (hyper requests and
//! responses); the dialog fast path calls the same phases with its own bytes.

pub mod body;
pub mod fast;
mod forward;
pub mod turn;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

pub use body::GatewayBody;
pub use turn::TurnCtx;

use crate::ids::NameId;
use crate::metrics::Metrics;
use crate::pins::Store;
use crate::probe::{self, Dialog};
use crate::protocol::{parse_vdn, DialogPath};
use crate::respond::{GatewayError, DECISION_HEADER};
use crate::rollout::outcome::Outcomes;
use crate::snapshot::Live;
use crate::upstream::client::Capped;
use crate::upstream::{ClusterPool, Upstreams};
use forward::{HyperAttempt, OutBody};

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
    /// Counts call outcomes and a rollout's turn times (spec §11).
    pub outcomes: Outcomes,
    request_seq: AtomicU64,
    instance: u32,
    /// `tracing.otlp`: where each turn's span goes.
    pub(crate) spans: Option<crate::trace::otlp::Exporter>,
}

/// Facts about the client connection the service needs.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub https: bool,
}

impl Proxy {
    pub fn new(
        live: Live,
        upstreams: Arc<Upstreams>,
        pins: Store,
        metrics: Metrics,
        spans: Option<crate::trace::otlp::Exporter>,
        outcomes: Outcomes,
    ) -> Arc<Self> {
        let instance = (crate::clock::wall_ms() as u32) ^ std::process::id().rotate_left(16);
        Arc::new(Proxy {
            live,
            upstreams,
            pins,
            metrics,
            outcomes,
            request_seq: AtomicU64::new(0),
            instance,
            spans,
        })
    }

    /// The client's `x-request-id` when it sent a usable one, else one of ours.
    fn request_id(&self, theirs: Option<&str>) -> CompactString {
        if let Some(v) = theirs {
            if !v.is_empty() && v.len() <= 128 {
                return CompactString::from(v);
            }
        }
        request_id_of(
            self.instance,
            self.request_seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Serve one request (the general engine). Never fails: every error becomes an answer.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<GatewayBody> {
        let theirs = req
            .headers()
            .get(&forward::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        let mut t = TurnCtx::begin(self, peer, req.method().clone(), req.uri().path(), theirs);
        t.trace_from(req.headers());
        let answer = match crate::admission::check(req.method(), req.version(), req.headers()) {
            Err(e) => Err(e),
            Ok(()) => route(&mut t, req).await,
        };
        let mut resp = match answer {
            Ok(r) => r,
            Err(e) => {
                let e = t.fail(e);
                t.settle_failure().await;
                let mut r = e.response(t.rec.userid.as_deref());
                if let Some(v) = t.decision_header() {
                    r.headers_mut().insert(DECISION_HEADER, v);
                }
                r
            }
        };
        if !resp.headers().contains_key(&forward::X_REQUEST_ID) {
            if let Ok(v) = HeaderValue::from_str(&t.rec.request_id) {
                resp.headers_mut().insert(forward::X_REQUEST_ID, v);
            }
        }
        t.record(resp.status().as_u16());
        resp
    }

    /// The pool a pin points at, for views.
    pub fn pool_of(&self, id: NameId) -> Option<Arc<ClusterPool>> {
        self.upstreams.get(id)
    }
}

/// Send an admitted request the way its path says.
async fn route(
    t: &mut TurnCtx<'_>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, GatewayError> {
    match DialogPath::classify(req.uri().path()) {
        DialogPath::Other => other(t, req).await,
        DialogPath::OtherSpelling => Err(GatewayError::PathSpelling(
            req.uri().path().chars().take(64).collect(),
        )),
        DialogPath::V2(seg) => match parse_vdn(seg) {
            _ if req.method() != Method::POST => Err(GatewayError::Method),
            Some(vdn) => dialog(t, req, Dialog::V2(vdn)).await,
            None => Err(GatewayError::BadUrl(seg.chars().take(64).collect())),
        },
        DialogPath::V1 if req.method() != Method::POST => Err(GatewayError::Method),
        DialogPath::V1 => dialog(t, req, Dialog::V1).await,
    }
}

/// Any request that is not a dialog turn: forwarded unchanged to the default cluster, its body
/// within `max_other_body` (a declared larger one refused before anything is sent, a streamed
/// one cut off as it passes the cap).
async fn other(
    t: &mut TurnCtx<'_>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, GatewayError> {
    t.locate_other()?;
    let (parts, body) = req.into_parts();
    let cap = t.gen.limits.max_other_body;
    if content_length(&parts.headers).is_some_and(|n| n > cap) {
        return Err(GatewayError::OtherBodyTooLarge(cap));
    }
    let (body, over) = Capped::new(body, cap);
    let request_id = t.rec.request_id.clone();
    let mut attempt = HyperAttempt::new(&parts, OutBody::Stream(body), t.peer, &request_id);
    attempt.trace = t.rec.trace;
    match t.forward(&mut attempt).await {
        Ok(answer) => Ok(answer.map(GatewayBody::Stream)),
        // The body outgrew the cap on its way: the upstream request was aborted.
        Err(_) if over.load(Ordering::Relaxed) => Err(GatewayError::OtherBodyTooLarge(cap)),
        Err(e) => Err(e),
    }
}

/// A dialog turn through the general engine: the body read within `request_timeout`, then the
/// phases, the answer read (bounded) to see the end of a call.
async fn dialog(
    t: &mut TurnCtx<'_>,
    req: Request<Incoming>,
    dialog: Dialog,
) -> Result<Response<GatewayBody>, GatewayError> {
    t.rec.vdn = dialog.vdn();
    let (parts, body) = req.into_parts();
    let declared = content_length(&parts.headers);
    let bytes: Bytes = match tokio::time::timeout_at(
        t.deadline,
        probe::read_body(body, declared, t.gen.limits.max_body),
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
    t.probe(dialog, &bytes)?;
    t.locate(&parts.headers).await?;
    let request_id = t.rec.request_id.clone();
    let mut attempt = HyperAttempt::new(&parts, OutBody::Full(bytes), t.peer, &request_id);
    attempt.trace = t.rec.trace;
    let answer = t.forward(&mut attempt).await?;
    drop(attempt);
    let status = answer.status().as_u16();
    let (head, incoming) = answer.into_parts();
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());
    let (body, answer) = if (200..300).contains(&status) {
        // Under the cluster's timeout started by `forward`: one deadline to the last byte.
        match tokio::time::timeout_at(t.deadline, body::peek(incoming, declared, ANSWER_PEEK_MAX))
            .await
        {
            Ok(Ok(body::Peeked::Whole(b))) => {
                let a = crate::respond::peek_answer(&b);
                (GatewayBody::from(b), a)
            }
            Ok(Ok(body::Peeked::Partial(prefix, rest))) => (
                GatewayBody::Prefixed(Some(prefix), rest),
                Default::default(),
            ),
            Ok(Err(e)) => return Err(GatewayError::Upstream(format!("the answer broke off: {e}"))),
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout(
                    "the answer body did not arrive within the cluster's timeout".into(),
                ))
            }
        }
    } else {
        (GatewayBody::Stream(incoming), Default::default())
    };
    t.settle_pin(status, answer).await;
    let mut resp = Response::from_parts(head, body);
    if let Some(v) = t.decision_header() {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    Ok(resp)
}

/// A request's declared `Content-Length`, when it has one that parses.
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
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
