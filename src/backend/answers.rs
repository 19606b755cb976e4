//! What the backend sends back: the dialog envelope (`ret`, `userid`, `outaction`, `outparams`),
//! error bodies, token API bodies, and the headers every answer carries (`x-odfs-instance`,
//! `content-type: application/json;charset=UTF-8`). Also the protocol's wall-clock format.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use crate::protocol::INSTANCE_HEADER;

/// The content type of every answer.
pub const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// One dialog answer: the outaction and its outparams (every value a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outaction: i64,
    pub outparams: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn new(outaction: i64) -> Self {
        Answer {
            outaction,
            outparams: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.outparams.push((key, value.into()));
        self
    }

    /// The value of one outparam, if present.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.outparams
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The whole envelope with `ret` 0.
    pub fn envelope(&self, userid: &str) -> Value {
        let params: Map<String, Value> = self
            .outparams
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
        json!({ "ret": 0, "userid": userid, "outaction": self.outaction, "outparams": params })
    }
}

/// Error codes of the backend's own error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadUrl,
    BadJson,
    BadUserid,
    BadInaction,
    Auth,
    NoCall,
    BodyTooLarge,
    Method,
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUrl => "ODFS.BAD_URL",
            ErrorCode::BadJson => "ODFS.BAD_JSON",
            ErrorCode::BadUserid => "ODFS.BAD_USERID",
            ErrorCode::BadInaction => "ODFS.BAD_INACTION",
            ErrorCode::Auth => "ODFS.AUTH",
            ErrorCode::NoCall => "ODFS.NO_CALL",
            ErrorCode::BodyTooLarge => "ODFS.BODY_TOO_LARGE",
            ErrorCode::Method => "ODFS.METHOD",
            ErrorCode::NotFound => "ODFS.NOT_FOUND",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadUrl
            | ErrorCode::BadJson
            | ErrorCode::BadUserid
            | ErrorCode::BadInaction => StatusCode::BAD_REQUEST,
            ErrorCode::Auth => StatusCode::UNAUTHORIZED,
            ErrorCode::NoCall => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Method => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// A dialog error body: all four envelope fields (`ret` -1, `outaction` 10 so that a client that
/// only reads the envelope hangs up) plus `errorCode` and `errorMsg`.
pub fn error_body(userid: &str, code: ErrorCode, msg: &str) -> Value {
    json!({
        "ret": -1,
        "userid": userid,
        "outaction": 10,
        "outparams": {},
        "errorCode": code.as_str(),
        "errorMsg": msg,
    })
}

/// A JSON response with the instance header.
pub fn respond(instance: &HeaderValue, status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    h.insert(INSTANCE_HEADER, instance.clone());
    resp
}

/// A dialog error response.
pub fn error(
    instance: &HeaderValue,
    userid: &str,
    code: ErrorCode,
    msg: &str,
) -> Response<Full<Bytes>> {
    let mut resp = respond(instance, code.status(), &error_body(userid, code, msg));
    if code == ErrorCode::Method {
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

/// The token API's answer on success.
pub fn token_ok(token: &str, expire_secs: u64) -> Value {
    json!({ "errorCode": 0, "errorMsg": "", "authToken": token, "expireTime": expire_secs })
}

/// The token API's answer on failure (no token fields).
pub fn token_err(code: i64, msg: &str) -> Value {
    json!({ "errorCode": code, "errorMsg": msg })
}

/// Wall-clock time in the protocol examples' format `yyyyMMddHH:mm:ss` (UTC).
pub fn wall_time(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn wall_time_matches_the_protocol_format() {
        // 2018-09-04 07:16:24 UTC, the time of the protocol's examples.
        let t = UNIX_EPOCH + Duration::from_secs(1_536_045_384);
        assert_eq!(wall_time(t), "2018090407:16:24");
        assert_eq!(wall_time(UNIX_EPOCH), "1970010100:00:00");
        // A leap day.
        assert_eq!(
            wall_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000022900:00:00"
        );
    }

    #[test]
    fn envelope_has_all_four_fields_with_string_params() {
        let a = Answer::new(9).with("prompt_type", "2");
        let v = a.envelope("u1");
        assert_eq!(v["ret"], 0);
        assert_eq!(v["userid"], "u1");
        assert_eq!(v["outaction"], 9);
        assert_eq!(v["outparams"]["prompt_type"], "2");
    }

    #[test]
    fn error_statuses() {
        assert_eq!(
            ErrorCode::NoCall.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(ErrorCode::Auth.status(), StatusCode::UNAUTHORIZED);
        let v = error_body("u", ErrorCode::BadJson, "x");
        assert_eq!(v["ret"], -1);
        assert_eq!(v["errorCode"], "ODFS.BAD_JSON");
    }
}
