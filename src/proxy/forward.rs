//! The general (hyper) engine's way of sending one request to one endpoint, and the headers
//! every forwarded request gets. Picking the endpoint, retries and health marks are the
//! forward phase's ([`super::turn`]), shared by both engines.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use tokio::time::Instant;

use super::turn::Attempt;
use super::Peer;
use crate::upstream::client::{Capped, ReqBody, UpstreamError};
use crate::upstream::conn::{self, UpstreamBody};
use crate::upstream::pool::PoolState;
use crate::upstream::Endpoint;

pub enum OutBody {
    /// The probed dialog body: can be sent again if the first endpoint was never reached.
    Full(Bytes),
    /// A streamed body: sent once, failing past its cap.
    Stream(Capped),
}

/// Hop-by-hop headers are about one connection and never forwarded (RFC 9110 §7.6.1).
/// `Expect` too: the gateway itself answers `100 Continue` (hyper does, when the body is
/// read), so the upstream gets the whole body at once and must not be asked again.
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::EXPECT,
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
    // Always the gateway's own view: a client's value is never passed on (it would let any
    // client claim https to the upstream).
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if peer.https { "https" } else { "http" }),
    );
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

/// The general engine's [`Attempt`]: a hyper request per endpoint, over the endpoint's own
/// keep-alive connections (`http://`) or the cluster's general client (`https://`).
pub struct HyperAttempt<'a> {
    pub parts: &'a http::request::Parts,
    /// `None` once a streamed body has been sent.
    pub body: Option<OutBody>,
    pub peer: Peer,
    pub request_id: &'a str,
    /// The turn's trace context: the upstream gets its `traceparent` (spec §13).
    pub trace: Option<crate::trace::TraceContext>,
    /// Built once and moved into the first attempt; a retry (rare: the first endpoint was never
    /// reached) builds them again rather than every turn paying for a copy.
    headers: Option<HeaderMap>,
}

impl<'a> HyperAttempt<'a> {
    pub fn new(
        parts: &'a http::request::Parts,
        body: OutBody,
        peer: Peer,
        request_id: &'a str,
    ) -> Self {
        HyperAttempt {
            headers: Some(upstream_headers(&parts.headers, peer, request_id)),
            parts,
            body: Some(body),
            peer,
            request_id,
            trace: None,
        }
    }
}

impl Attempt for HyperAttempt<'_> {
    type Answer = Response<UpstreamBody>;

    fn status(answer: &Self::Answer) -> u16 {
        answer.status().as_u16()
    }

    fn can_resend(&self) -> bool {
        matches!(self.body, Some(OutBody::Full(_)))
    }

    async fn send(
        &mut self,
        endpoint: &Arc<Endpoint>,
        state: &PoolState,
        deadline: Instant,
    ) -> Result<Self::Answer, UpstreamError> {
        let req_body = match self.body.take() {
            Some(OutBody::Full(b)) => {
                self.body = Some(OutBody::Full(b.clone()));
                ReqBody::Full(Full::new(b))
            }
            Some(OutBody::Stream(s)) => ReqBody::Stream(s),
            None => {
                return Err(UpstreamError::NoUpstream {
                    cluster: endpoint.url.clone(),
                    why: "body already sent",
                })
            }
        };
        let mut uri = http::uri::Parts::default();
        if endpoint.https {
            // The general client wants the absolute form; it sends the origin form.
            uri.scheme = Some(http::uri::Scheme::HTTPS);
            uri.authority = endpoint.authority.clone();
        }
        uri.path_and_query = Some(
            self.parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let Ok(uri) = Uri::from_parts(uri) else {
            return Err(UpstreamError::Connect {
                endpoint: endpoint.url.clone(),
                reason: "cannot build a request URI for this endpoint".into(),
            });
        };
        let mut req = Request::new(req_body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = self
            .headers
            .take()
            .unwrap_or_else(|| upstream_headers(&self.parts.headers, self.peer, self.request_id));
        if let Some(t) = &self.trace {
            t.apply(req.headers_mut());
        }
        if !req.headers().contains_key(header::HOST) {
            if let Some(a) = &endpoint.authority {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
        let result = if endpoint.https {
            tokio::time::timeout_at(deadline, async {
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
            tokio::time::timeout_at(deadline, send).await
        };
        match result {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: endpoint.url.clone(),
                timeout: state.spec.timeout,
            }),
        }
    }
}
