//! The pooled HTTP client of a cluster and the forwarding of one request.
//!
//! One hyper-util client per cluster for its `https://` endpoints and its HTTP health checks
//! (keep-alive pools per endpoint inside it), HTTP/1.1, or HTTP/2 when an endpoint offers it by
//! ALPN. Dialog turns to plain `http://` endpoints use the endpoint's own pool (`conn.rs`). TLS is rustls with the system roots or
//! the cluster's `tls.ca`, SNI from the URL or `server_name`, an optional client certificate.
//! Errors say whether the request reached the endpoint: only a request that never did may be
//! tried again (spec §10).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::ClusterSpec;

/// The body of a request to an upstream: the probed dialog body, or a streamed other request.
pub enum ReqBody {
    Full(Full<Bytes>),
    Stream(Capped),
}

/// A streamed client body with a size cap (`limits.max_other_body`): past the cap it fails,
/// so the upstream request is aborted instead of being cut short as if complete, and `over`
/// tells the gateway to answer 413 rather than blame the upstream.
pub struct Capped {
    body: Incoming,
    left: u64,
    over: Arc<AtomicBool>,
}

impl Capped {
    pub fn new(body: Incoming, cap: u64) -> (Self, Arc<AtomicBool>) {
        let over = Arc::new(AtomicBool::new(false));
        (
            Capped {
                body,
                left: cap,
                over: over.clone(),
            },
            over,
        )
    }
}

/// The error a [`Capped`] body fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body is over max_other_body")]
pub struct OverCap;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ReqBody::Stream(c) => match Pin::new(&mut c.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    if n > c.left {
                        c.over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(OverCap))));
                    }
                    c.left -= n;
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_end_stream(),
            ReqBody::Stream(c) => c.body.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => b.size_hint(),
            ReqBody::Stream(c) => c.body.size_hint(),
        }
    }
}

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type Client = hyper_util::client::legacy::Client<Connector, ReqBody>;

/// Build a cluster's client from its spec.
pub fn build(spec: &ClusterSpec) -> Result<Client, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls = tls_config(spec)?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &spec.tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerName(name.clone())),
        None => builder,
    };
    let connector = builder.enable_http1().enable_http2().wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector);
    Ok(client)
}

#[derive(Debug, Clone)]
struct FixedServerName(String);

impl hyper_rustls::ResolveServerName for FixedServerName {
    fn resolve(
        &self,
        _uri: &http::Uri,
    ) -> Result<rustls::pki_types::ServerName<'static>, Box<dyn std::error::Error + Sync + Send>>
    {
        rustls::pki_types::ServerName::try_from(self.0.clone()).map_err(|e| e.into())
    }
}

fn tls_config(spec: &ClusterSpec) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let any_https = spec.endpoints.iter().any(|e| e.https);
    if let Some(ca) = &spec.tls.ca {
        for cert in crate::tlsfiles::read_certs(ca)? {
            roots.add(cert).map_err(|e| format!("{ca}: {e}"))?;
        }
    } else if any_https {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    // ALPN (h2, http/1.1) is set by the connector builder from enable_http1/enable_http2.
    let cfg = match (&spec.tls.cert, &spec.tls.key) {
        (Some(c), Some(k)) => {
            let certs = crate::tlsfiles::read_certs(c)?;
            let key = crate::tlsfiles::read_key(k)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request never reached the endpoint (connect refused / timed out, TLS handshake).
    #[error("could not connect to {endpoint}: {reason}")]
    Connect { endpoint: Arc<str>, reason: String },
    /// The request may have reached the endpoint; the connection broke.
    #[error("upstream {endpoint} broke the connection: {reason}")]
    Broken { endpoint: Arc<str>, reason: String },
    #[error("upstream {endpoint} did not answer within {timeout:?}")]
    Timeout {
        endpoint: Arc<str>,
        timeout: Duration,
    },
    #[error("no endpoint of cluster {cluster} can take the request ({why})")]
    NoUpstream {
        cluster: Arc<str>,
        why: &'static str,
    },
    /// This process is short of a resource (descriptors, socket buffers, memory) and could not
    /// even try the endpoint: never the endpoint's fault (see [`crate::fdlimit`]).
    #[error("gateway out of local resources while connecting to {endpoint}: {reason}")]
    Local { endpoint: Arc<str>, reason: String },
}

impl UpstreamError {
    /// Safe to try another endpoint: the request never left the gateway.
    pub fn reached_endpoint(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::NoUpstream { .. }
                | UpstreamError::Local { .. }
        )
    }

    /// The error is the gateway's own shortage: it says nothing about the endpoint.
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::Local { .. })
    }

    pub fn classify(endpoint: &Arc<str>, e: hyper_util::client::legacy::Error) -> UpstreamError {
        let reason = error_chain(&e);
        if crate::fdlimit::is_local_in_chain(&e) {
            UpstreamError::Local {
                endpoint: endpoint.clone(),
                reason,
            }
        } else if e.is_connect() {
            UpstreamError::Connect {
                endpoint: endpoint.clone(),
                reason,
            }
        } else {
            UpstreamError::Broken {
                endpoint: endpoint.clone(),
                reason,
            }
        }
    }
}

/// An error and its sources, joined: TLS verification failures hide three levels down.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
