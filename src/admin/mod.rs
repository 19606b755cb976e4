//! The admin surface (spec §4), on its own listener: `/metrics`, `/healthz`, `/readyz` stay open
//! for scrapers and probes; `/admin/*` needs the bearer token when `admin_token_file` is set,
//! compared in constant time.

mod ui;
mod views;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::reload::Reloader;
use crate::history::History;
use crate::lifecycle::Readiness;
use crate::metrics::Metrics;
use crate::pins::{PinStore, ReleaseReason, Store};
use crate::snapshot::Live;
use crate::upstream::Upstreams;

pub struct Admin {
    pub live: Live,
    pub upstreams: Arc<Upstreams>,
    pub pins: Store,
    pub metrics: Metrics,
    pub reloader: Arc<Reloader>,
    pub readiness: Arc<Readiness>,
    pub history: Arc<History>,
    /// The continuous `pins.snapshot` writer, for its view.
    pub pin_file: Option<Arc<crate::pins::persist::PinFile>>,
    pub rollouts: Arc<crate::rollout::Rollouts>,
}

pub type AdminBody = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<AdminBody> {
    respond(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, msg: &str) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// Constant-time comparison: the time taken does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1), one or more spaces follow it.
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<AdminBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                return respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.encode(),
                )
            }
            // HEAD: the headers of GET without the body (and without encoding it).
            (&Method::HEAD, "/metrics") => {
                return respond(StatusCode::OK, "text/plain; version=0.0.4", "")
            }
            (&Method::GET, "/healthz") => return respond(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => {
                return if self.readiness.is_ready() {
                    respond(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                };
            }
            _ => {}
        }
        if !path.starts_with("/admin/") {
            return error(StatusCode::NOT_FOUND, "no such admin path");
        }
        if method == Method::GET {
            if let Some(page) = ui::asset(&path) {
                return page;
            }
        }
        if method != Method::GET
            && method != Method::HEAD
            && !same_origin(req.headers(), req.uri().authority().map(|a| a.as_str()))
        {
            return error(
                StatusCode::FORBIDDEN,
                "a request from a page of another origin cannot act on the admin surface",
            );
        }
        if let Some(token) = self.live.load().admin_token.clone() {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            if !presented.is_some_and(|p| ct_eq(p.trim().as_bytes(), token.as_bytes())) {
                let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/admin/config") => json(StatusCode::OK, &views::config(&self)),
            (&Method::POST, "/admin/reload") => match self.reloader.reload("api").await {
                Ok(g) => json(StatusCode::OK, &serde_json::json!({ "generation": g })),
                Err(errs) => {
                    let list: Vec<_> = errs.0.iter().map(|e| serde_json::json!({"line": e.line, "column": e.column, "path": e.path, "message": e.message})).collect();
                    json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &serde_json::json!({ "errors": list }),
                    )
                }
            },
            (&Method::GET, "/admin/history") => json(StatusCode::OK, &self.history.view()),
            (&Method::GET, "/admin/rollouts") => json(StatusCode::OK, &self.rollouts.view()),
            (m, p) if p.starts_with("/admin/rollouts/") => {
                let rest = &p["/admin/rollouts/".len()..];
                if *m != Method::POST {
                    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "POST an action");
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                    return r;
                }
                let Some((name, action)) = rest.rsplit_once('/') else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "POST /admin/rollouts/{name}/{pause|resume|abort|promote}",
                    );
                };
                let name = percent_decode(name);
                let Some(action) = crate::rollout::machine::Action::parse(action) else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "the actions are pause, resume, abort and promote",
                    );
                };
                let reason = match read_reason(req).await {
                    Ok(r) => r,
                    Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
                };
                match self
                    .rollouts
                    .act_any(&name, action, reason.as_deref())
                    .await
                {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(crate::rollout::ActError::Unknown) => {
                        error(StatusCode::NOT_FOUND, "no rollout of that name")
                    }
                    Err(crate::rollout::ActError::Conflict(msg)) => {
                        error(StatusCode::CONFLICT, &msg)
                    }
                    Err(crate::rollout::ActError::Unavailable(msg)) => {
                        error(StatusCode::SERVICE_UNAVAILABLE, &msg)
                    }
                }
            }
            (&Method::GET, "/admin/explain") => {
                views::explain(&self, req.uri().query().unwrap_or("")).await
            }
            (m, p) if p.starts_with("/admin/pins/") => {
                let userid = percent_decode(&p["/admin/pins/".len()..]);
                if userid.is_empty() {
                    return error(StatusCode::BAD_REQUEST, "no userid in the path");
                }
                match *m {
                    Method::GET => match self.pins.peek(&userid).await {
                        Some(pin) => json(StatusCode::OK, &views::pin(&userid, &pin)),
                        None => error(StatusCode::NOT_FOUND, "no pin for that userid"),
                    },
                    Method::DELETE => {
                        if self.pins.release(&userid, ReleaseReason::Admin).await {
                            tracing::info!(userid = %crate::protocol::Masked(&userid), "pin released by admin");
                        }
                        respond(StatusCode::NO_CONTENT, "application/json", Bytes::new())
                    }
                    _ => {
                        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE");
                        r.headers_mut()
                            .insert(header::ALLOW, HeaderValue::from_static("GET, DELETE"));
                        r
                    }
                }
            }
            (
                _,
                "/admin/config" | "/admin/reload" | "/admin/explain" | "/admin/history"
                | "/admin/rollouts",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "wrong method for this path"),
            _ => error(StatusCode::NOT_FOUND, "no such admin path"),
        }
    }
}

/// False when a browser says the request comes from a page of another origin: its `Origin`
/// names a host other than the one the request was sent to. Requests without `Origin` (curl,
/// scripts, same-origin GETs) pass; the token, when set, is checked after this.
/// `authority` is the request's `:authority` (HTTP/2), used when there is no `Host`.
fn same_origin(h: &http::HeaderMap, authority: Option<&str>) -> bool {
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let named = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority);
    matches!((named, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Longest body an action takes (`{"reason": "…"}`).
const MAX_ACTION_BODY: usize = 4096;

/// The optional `{"reason": "..."}` body of a rollout action.
async fn read_reason(req: Request<Incoming>) -> Result<Option<String>, String> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_ACTION_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| format!("the body could not be read (at most {MAX_ACTION_BODY} bytes): {e}"))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    match v.get("reason") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.chars().take(500).collect())),
        Some(_) => Err("`reason` must be a string".into()),
    }
}

/// Decode `%XX` escapes (and `+` as space in queries).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query string pairs, decoded.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
    }

    #[test]
    fn origin_must_match_host_when_present() {
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9091"));
        assert!(same_origin(&h, None));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9091"),
        );
        assert!(same_origin(&h, None));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h, None));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, None));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9092"),
        );
        assert!(!same_origin(&h, None));
        h.remove(header::HOST);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9091"),
        );
        assert!(!same_origin(&h, None));
        assert!(same_origin(&h, Some("127.0.0.1:9091")));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            query_pairs("vdn=101&userid=a%2Bb"),
            vec![
                ("vdn".into(), "101".into()),
                ("userid".into(), "a+b".into())
            ]
        );
    }
}
