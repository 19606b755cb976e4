//! Forwarding one request to a cluster: pick an endpoint, send, classify the outcome, and try
//! another endpoint of the same cluster only when the request never reached the first one.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Peer;
use crate::record::TurnRecord;
use crate::respond::GatewayError;
use crate::upstream::client::{ReqBody, UpstreamError};
use crate::upstream::conn::{self, UpstreamBody};
use crate::upstream::{ClusterPool, PickError};

pub enum OutBody {
    /// The probed dialog body: can be sent again if the first endpoint was never reached.
    Full(Bytes),
    /// A streamed body: sent once.
    Stream(Incoming),
}

pub struct Outgoing<'a> {
    pub parts: &'a http::request::Parts,
    pub body: OutBody,
    pub peer: Peer,
    pub request_id: &'a str,
}

/// Hop-by-hop headers are about one connection and never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

// Header names parsed once: a `&str` key is parsed and validated on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn upstream_headers(src: &HeaderMap, peer: Peer, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(src.len() + 3);
    // Names listed in Connection are hop-by-hop too .
    let listed: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in src.iter() {
        if HOP_BY_HOP.contains(name)
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            continue;
        }
        if !listed.is_empty() && listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    let xff = match src.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok(),
        None => Some(peer_ip_value(peer.addr.ip())),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !src.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if peer.https { "https" } else { "http" }),
        );
    }
    if !src.contains_key(&X_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(X_REQUEST_ID, v);
        }
    }
    h
}

thread_local! {
    /// The last client address seen on this thread and its header value: clients are few
    /// (load balancers, IVR nodes) and keep their connections, so this saves formatting the
    /// address and allocating the value on nearly every turn (a `HeaderValue` clone is a
    /// reference count).
    static PEER_IP: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `x-forwarded-for` for a request without one: the client's address.
fn peer_ip_value(ip: IpAddr) -> HeaderValue {
    PEER_IP.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let Some((last, v)) = cached.as_ref() {
            if *last == ip {
                return v.clone();
            }
        }
        let mut text = compact_str::CompactString::default();
        let _ = write!(text, "{ip}");
        let v = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
        *cached = Some((ip, v.clone()));
        v
    })
}

/// Why a request could not be forwarded, and whether it is certain that no endpoint saw it
/// (then a new call may still go to its cluster's fallback).
pub struct Failed {
    pub error: GatewayError,
    /// Every endpoint tried was unreachable (or none was up): the request left nothing behind.
    pub unreachable: bool,
}

impl From<Failed> for GatewayError {
    fn from(f: Failed) -> Self {
        f.error
    }
}

fn failed(error: GatewayError) -> Failed {
    Failed {
        error,
        unreachable: false,
    }
}

/// Send to one endpoint of `pool`. `strict`: healthy endpoints only (new calls).
pub async fn send(
    pool: &ClusterPool,
    out: Outgoing<'_>,
    userid: &str,
    strict: bool,
    rec: &mut TurnRecord,
) -> Result<Response<UpstreamBody>, Failed> {
    let state = pool.state.load_full();
    let deadline = Instant::now() + state.spec.timeout;
    // Built once and moved into the first attempt; a retry (rare: the first endpoint was never
    // reached) builds them again rather than every turn paying for a copy.
    let mut headers = Some(upstream_headers(
        &out.parts.headers,
        out.peer,
        out.request_id,
    ));
    let pq = out.parts.uri.path_and_query().cloned();
    let mut body = Some(out.body);
    let mut tried: u64 = 0;
    let mut last_err: Option<UpstreamError> = None;
    let upstream_start = Instant::now();
    // A pinned turn whose cluster is all marked down still tries its endpoints (§10); if none
    // of them can be reached either, the answer is 503 GW.NO_UPSTREAM.
    let all_marked_down = !strict && !pool.any_healthy();
    loop {
        let (i, guard) = match pool.pick(&state, userid, tried, strict) {
            Ok(x) => x,
            Err(why) => {
                // Out of endpoints to try: report the last real error if there was one. Only
                // unreached endpoints are tried again, so `last_err` says for all of them.
                let unreachable = match &last_err {
                    Some(e) => !e.reached_endpoint(),
                    None => why == PickError::NoneHealthy,
                };
                let error = match last_err {
                    Some(e) if all_marked_down && !e.reached_endpoint() => {
                        GatewayError::NoUpstream(format!(
                            "cluster `{}` has no healthy endpoint and none could be reached ({e})",
                            pool.name
                        ))
                    }
                    Some(e) => to_gateway(e),
                    None => GatewayError::NoUpstream(match why {
                        PickError::Full => format!(
                            "every endpoint of cluster `{}` is at max_inflight",
                            pool.name
                        ),
                        PickError::NoneHealthy => {
                            format!("cluster `{}` has no healthy endpoint", pool.name)
                        }
                    }),
                };
                return Err(Failed { error, unreachable });
            }
        };
        if i < 64 {
            tried |= 1 << i;
        }
        let endpoint = guard.endpoint().clone();
        rec.endpoint = Some(endpoint.url.clone());
        let req_body = match body.take() {
            Some(OutBody::Full(b)) => {
                body = Some(OutBody::Full(b.clone()));
                ReqBody::Full(Full::new(b))
            }
            Some(OutBody::Stream(s)) => ReqBody::Stream(s),
            None => {
                return Err(failed(to_gateway(last_err.unwrap_or(
                    UpstreamError::NoUpstream {
                        cluster: pool.name.clone(),
                        why: "body already sent",
                    },
                ))))
            }
        };
        let mut uri = http::uri::Parts::default();
        if endpoint.https {
            // The general client wants the absolute form; it sends the origin form.
            uri.scheme = Some(http::uri::Scheme::HTTPS);
            uri.authority = endpoint.authority.clone();
        }
        uri.path_and_query = Some(pq.clone().unwrap_or_else(|| PathAndQuery::from_static("/")));
        let Ok(uri) = Uri::from_parts(uri) else {
            return Err(failed(GatewayError::Upstream(format!(
                "cannot build a URI for endpoint {}",
                endpoint.url
            ))));
        };
        let mut req = Request::new(req_body);
        *req.method_mut() = out.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers
            .take()
            .unwrap_or_else(|| upstream_headers(&out.parts.headers, out.peer, out.request_id));
        if !req.headers().contains_key(header::HOST) {
            if let Some(a) = &endpoint.authority {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = if endpoint.https {
            tokio::time::timeout(remaining, async {
                match state.client.request(req).await {
                    Ok(resp) => Ok(resp.map(UpstreamBody::from)),
                    Err(e) => Err(UpstreamError::classify(&endpoint.url, e)),
                }
            })
            .await
        } else {
            let send = conn::send(
                &endpoint.conns,
                &endpoint.url,
                &endpoint.connect_to,
                state.spec.connect_timeout,
                req,
            );
            tokio::time::timeout(remaining, send).await
        };
        rec.upstream = Some(upstream_start.elapsed());
        let err = match result {
            Ok(Ok(resp)) => {
                let s = resp.status().as_u16();
                if matches!(s, 502..=504) {
                    pool.record_failure(&state, &endpoint, "answered 502/503/504");
                } else {
                    pool.record_success(&endpoint);
                }
                drop(guard);
                return Ok(resp);
            }
            Ok(Err(e)) => e,
            Err(_) => UpstreamError::Timeout {
                endpoint: endpoint.url.clone(),
                timeout: state.spec.timeout,
            },
        };
        drop(guard);
        if err.is_local() {
            // Our own shortage (EMFILE and friends): not the endpoint's fault, so no health or
            // outlier count, no retry elsewhere (it would fail the same way) and no fallback.
            tracing::warn!(cluster = %pool.name, endpoint = %endpoint.url, error = %err, "local resources exhausted: request not sent");
            return Err(failed(to_gateway(err)));
        }
        pool.record_failure(&state, &endpoint, &err.to_string());
        tracing::warn!(cluster = %pool.name, endpoint = %endpoint.url, error = %err, "upstream request failed");
        let retry = !err.reached_endpoint()
            && matches!(body, Some(OutBody::Full(_)))
            && Instant::now() < deadline;
        if !retry {
            // A streamed body cannot be sent again anywhere: only a probed one counts as
            // left behind intact.
            let unreachable = !err.reached_endpoint() && matches!(body, Some(OutBody::Full(_)));
            return Err(Failed {
                error: to_gateway(err),
                unreachable,
            });
        }
        last_err = Some(err);
    }
}

fn to_gateway(e: UpstreamError) -> GatewayError {
    match e {
        UpstreamError::Timeout { .. } => GatewayError::UpstreamTimeout(e.to_string()),
        UpstreamError::NoUpstream { .. } => GatewayError::NoUpstream(e.to_string()),
        UpstreamError::Connect { .. } | UpstreamError::Broken { .. } => {
            GatewayError::Upstream(e.to_string())
        }
        UpstreamError::Local { .. } => GatewayError::LocalResources(e.to_string()),
    }
}
