//! The backend's HTTP surface: the accept loop (`serve`) and one request → one answer
//! (`handle`). Routes: the token API, V1 and V2 dialog paths; anything else is a JSON 404.
//!
//! Every answer is JSON with `x-odfs-instance`; no input can make a request panic (bodies are
//! bounded, every field is checked before use, the engine returns errors as values).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::answers::{self, error, respond, ErrorCode};
use super::flow::engine::{self, Turn, TurnError};
use super::Backend;
use crate::protocol::{parse_vdn, DialogPath, Masked, MAX_USERID_CHARS, TOKEN_PATH};

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 1024 * 1024;
/// How long `serve` waits for open connections to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept connections until `shutdown` resolves, one task per connection, then let open
/// connections finish their current request (bounded by `DRAIN`).
pub(super) async fn serve(
    backend: Arc<Backend>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: wait a little instead of spinning.
                    tracing::warn!(error = %e, "backend accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            let svc = service_fn(move |req| {
                let backend = backend.clone();
                async move { Ok::<_, Infallible>(backend.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "backend connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Every connection task holds a sender; recv() answers None once all have finished.
    let _ = tokio::time::timeout(DRAIN, done_rx.recv()).await;
    Ok(())
}

impl Backend {
    /// Answer one request. Public so that a caller can drive the backend without a socket.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_string();
        let kind = DialogPath::classify(&path);
        let is_token = path == TOKEN_PATH;
        if matches!(kind, DialogPath::Other | DialogPath::OtherSpelling) && !is_token {
            return error(
                &self.instance,
                "",
                ErrorCode::NotFound,
                &format!("no such path: {path}"),
            );
        }
        if req.method() != Method::POST {
            return error(&self.instance, "", ErrorCode::Method, "use POST");
        }
        if let DialogPath::V2(seg) = kind {
            if parse_vdn(seg).is_none() {
                return error(
                    &self.instance,
                    "",
                    ErrorCode::BadUrl,
                    "vdnId is not a decimal integer (u32)",
                );
            }
        }
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp(&self.instance),
        };
        if is_token {
            return self.token(&body);
        }
        self.dialog(&body)
    }

    fn token(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (Some(key), Some(secret)) = (
            v.get("appKey").and_then(Value::as_str),
            v.get("appSecret").and_then(Value::as_str),
        ) else {
            let b = answers::token_err(2, "the body needs string appKey and appSecret");
            return respond(&self.instance, StatusCode::BAD_REQUEST, &b);
        };
        match self.keys.issue(key, secret) {
            Ok((token, expire)) => respond(
                &self.instance,
                StatusCode::OK,
                &answers::token_ok(&token, expire),
            ),
            Err(e) => respond(
                &self.instance,
                StatusCode::UNAUTHORIZED,
                &answers::token_err(1, &e.to_string()),
            ),
        }
    }

    fn dialog(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let inst = &self.instance;
        let v: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return error(inst, "", ErrorCode::BadJson, "body is not a JSON object"),
            Err(e) => {
                return error(
                    inst,
                    "",
                    ErrorCode::BadJson,
                    &format!("body is not a JSON object: {e}"),
                )
            }
        };
        let userid = match v.get("userid") {
            Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_USERID_CHARS => {
                s.as_str()
            }
            Some(_) => {
                return error(
                    inst,
                    "",
                    ErrorCode::BadUserid,
                    "userid must be a string of 1 to 64 characters",
                )
            }
            None => return error(inst, "", ErrorCode::BadUserid, "userid is missing"),
        };
        let inaction = match v.get("inaction") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        let Some(inaction) = inaction else {
            return error(
                inst,
                userid,
                ErrorCode::BadInaction,
                "inaction must be an integer",
            );
        };
        if !matches!(inaction, 7 | 8 | 9 | 11 | 13) {
            let msg = TurnError::UnknownInaction(inaction).to_string();
            return error(inst, userid, ErrorCode::BadInaction, &msg);
        }
        let empty = Map::new();
        let inparams = match v.get("inparams") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => &empty,
            Some(_) => {
                return error(
                    inst,
                    userid,
                    ErrorCode::BadJson,
                    "inparams must be an object",
                )
            }
        };
        let extparams = match v.get("extparams") {
            Some(Value::Object(m)) => Some(m),
            None | Some(Value::Null) => None,
            Some(_) => {
                return error(
                    inst,
                    userid,
                    ErrorCode::BadJson,
                    "extparams must be an object",
                )
            }
        };
        if let Err(e) = self
            .keys
            .check(inparams.get("auth_token").and_then(Value::as_str))
        {
            return error(inst, userid, ErrorCode::Auth, &e.to_string());
        }
        let wall = answers::wall_time(SystemTime::now());
        let turn = Turn {
            inaction,
            inparams,
            extparams,
            wall: &wall,
            now: Instant::now(),
        };
        let result = self.calls.update(userid, turn.now, |slot| {
            engine::step(&self.flows, self.sys_err_cap, userid, slot, &turn)
        });
        match result {
            Ok(answer) => {
                tracing::debug!(userid = %Masked(userid), inaction, outaction = answer.outaction, "turn");
                respond(inst, StatusCode::OK, &answer.envelope(userid))
            }
            Err(e @ (TurnError::NoCall | TurnError::NotStarted)) => {
                tracing::debug!(userid = %Masked(userid), inaction, "turn on no call");
                error(inst, userid, ErrorCode::NoCall, &e.to_string())
            }
            Err(e @ TurnError::UnknownInaction(_)) => {
                error(inst, userid, ErrorCode::BadInaction, &e.to_string())
            }
        }
    }
}

/// The error type a request body may have.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type ErrorResponse = fn(&http::HeaderValue) -> Response<Full<Bytes>>;

/// Read a whole body of at most `MAX_BODY` bytes.
async fn read_body<B>(req: Request<B>) -> Result<Bytes, ErrorResponse>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large: ErrorResponse =
        |i| error(i, "", ErrorCode::BodyTooLarge, "the body is over 1 MiB");
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large);
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large)
        }
        Err(_) => Err(|i| error(i, "", ErrorCode::BadJson, "the body could not be read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendOptions;

    fn request(path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = path.parse().unwrap_or_default();
        req
    }

    async fn answer(b: &Backend, path: &str, body: &[u8]) -> (u16, Value) {
        let resp = b.handle(request(path, body.to_vec())).await;
        assert!(resp
            .headers()
            .get(crate::protocol::INSTANCE_HEADER)
            .is_some());
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn odd_bodies_get_json_errors_never_panics() {
        let b = Backend::new(BackendOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let v1 = crate::protocol::V1_PATH;
        let deep = "[".repeat(10_000);
        let cases: Vec<(&[u8], u16)> =
            vec![
            (b"", 400),
            (b"null", 400),
            (b"\xff\xfe", 400),
            (deep.as_bytes(), 400),
            (br#"{"userid":"u","inaction":9223372036854775808}"#, 400),
            (br#"{"userid":"u","inaction":8.5}"#, 400),
            (br#"{"userid":"u","inaction":-9}"#, 400),
            (br#"{"userid":7,"inaction":8}"#, 400),
            (br#"{"userid":"","inaction":8}"#, 400),
            (br#"{"userid":"u","inaction":8,"extparams":"x"}"#, 400),
            (br#"{"userid":"u","inaction":8,"inparams":{"call_dst_id":{"a":[1]},"input":5}}"#, 200),
            (br#"{"userid":"u","inaction":9,"inparams":{"input":["hangup"]}}"#, 200),
            (br#"{"userid":"u","inaction":13,"inparams":null}"#, 200),
            (br#"{"userid":"u","inaction":11,"inparams":{"trans_result":0}}"#, 200),
        ];
        for (body, status) in cases {
            let (got, v) = answer(&b, v1, body).await;
            assert_eq!(got, status, "{} -> {v}", String::from_utf8_lossy(body));
            assert!(v.is_object());
        }
        // A 64-character userid (counted in characters, not bytes) is fine.
        let long = "é".repeat(64);
        let (got, _) = answer(
            &b,
            v1,
            format!(r#"{{"userid":"{long}","inaction":8}}"#).as_bytes(),
        )
        .await;
        assert_eq!(got, 200);
    }

    #[tokio::test]
    async fn random_bytes_never_panic() {
        let b = Backend::new(BackendOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let pieces: [&[u8]; 12] = [
            b"{",
            b"}",
            b"\"userid\":",
            b"\"inaction\":",
            b"\"inparams\":",
            b"\"u1\"",
            b"9",
            b"8",
            b",",
            b"\"input\":",
            b"\"hangup\"",
            b"[",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut body = Vec::new();
            for _ in 0..(seed % 24) {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                body.extend_from_slice(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let (status, v) = answer(&b, crate::protocol::V1_PATH, &body).await;
            assert!(matches!(status, 200 | 400 | 500), "{status}");
            assert!(v.is_object());
        }
    }
}
