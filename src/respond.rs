//! The gateway's own answers (spec §3), the decision header (§4), and reading `outaction` from
//! an upstream answer.
//!
//! Every stage has its own error type; this is the one place they become HTTP. Each
//! [`GatewayError`] has exactly one row of the §3 table: status, `errorCode`, JSON body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::probe::ProbeError;
use crate::protocol::Outaction;
use crate::vocab::ErrorCode;

/// An error the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    BadUrl(String),
    /// Another spelling of a dialog path (the path, cut to 64 characters).
    PathSpelling(String),
    /// CONNECT: the gateway is no tunnel.
    Connect,
    /// An HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2).
    BadHost(&'static str),
    BadJson(String),
    MissingUserid,
    BadUserid,
    MissingInaction,
    BadInaction,
    Method,
    OrphanTurn,
    BodyTooLarge(u64),
    /// The body of an other (non-dialog) request is over `max_other_body`.
    OtherBodyTooLarge(u64),
    /// The client's body could not be read (it went away or broke framing).
    BodyRead(String),
    Upstream(String),
    NoUpstream(String),
    UpstreamTimeout(String),
    /// The gateway itself is short of descriptors, socket buffers or memory.
    LocalResources(String),
}

impl From<ProbeError> for GatewayError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::BadUrl(s) => GatewayError::BadUrl(s),
            ProbeError::BadJson(s) => GatewayError::BadJson(s),
            ProbeError::MissingUserid => GatewayError::MissingUserid,
            ProbeError::BadUserid => GatewayError::BadUserid,
            ProbeError::MissingInaction => GatewayError::MissingInaction,
            ProbeError::BadInaction => GatewayError::BadInaction,
            ProbeError::BodyTooLarge(n) => GatewayError::BodyTooLarge(n),
            ProbeError::BodyRead(s) => GatewayError::BodyRead(s),
        }
    }
}

impl GatewayError {
    /// (status, errorCode) — the §3 table.
    pub fn row(&self) -> (StatusCode, &'static str) {
        let (status, code) = self.status_code();
        (status, code.as_str())
    }

    /// (status, [`ErrorCode`]) — the §3 table.
    pub fn status_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            GatewayError::BadUrl(_) | GatewayError::PathSpelling(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::BadUrl)
            }
            GatewayError::Connect => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Method),
            GatewayError::BadHost(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            GatewayError::BadJson(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadJson),
            GatewayError::MissingUserid => (StatusCode::BAD_REQUEST, ErrorCode::MissingUserid),
            GatewayError::BadUserid => (StatusCode::BAD_REQUEST, ErrorCode::BadUserid),
            GatewayError::MissingInaction => (StatusCode::BAD_REQUEST, ErrorCode::MissingInaction),
            GatewayError::BadInaction => (StatusCode::BAD_REQUEST, ErrorCode::BadInaction),
            GatewayError::Method => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Method),
            GatewayError::OrphanTurn => (StatusCode::CONFLICT, ErrorCode::OrphanTurn),
            GatewayError::BodyTooLarge(_) | GatewayError::OtherBodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge)
            }
            GatewayError::BodyRead(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadJson),
            GatewayError::Upstream(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Upstream),
            GatewayError::NoUpstream(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoUpstream),
            GatewayError::UpstreamTimeout(_) => {
                (StatusCode::GATEWAY_TIMEOUT, ErrorCode::UpstreamTimeout)
            }
            GatewayError::LocalResources(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::LocalResources)
            }
        }
    }

    pub fn message(&self) -> String {
        match self {
            GatewayError::BadUrl(s) => format!("vdnId `{s}` is not a decimal integer (u32)"),
            GatewayError::PathSpelling(p) => format!(
                "`{p}` is another spelling of a dialog path; send it exactly as /oifde/rest/v2/crs/process/{{vdnId}} or /oifde/rest/crs/process"
            ),
            GatewayError::Connect => "CONNECT is not served: the gateway is no tunnel".into(),
            GatewayError::BadHost(why) => format!("HTTP/1.1 request {why}"),
            GatewayError::BadJson(s) => format!("body is not a JSON object: {s}"),
            GatewayError::MissingUserid => "no userid in the body".into(),
            GatewayError::BadUserid => "userid must be a string of 1 to 64 characters".into(),
            GatewayError::MissingInaction => "no inaction in the body".into(),
            GatewayError::BadInaction => "inaction must be an integer".into(),
            GatewayError::Method => "dialog interfaces accept POST only".into(),
            GatewayError::OrphanTurn => {
                "a later turn of a call this gateway has no pin for (orphan_turns: reject)".into()
            }
            GatewayError::BodyTooLarge(n) => format!("body is larger than max_body ({n} bytes)"),
            GatewayError::OtherBodyTooLarge(n) => {
                format!("body is larger than max_other_body ({n} bytes)")
            }
            GatewayError::BodyRead(s) => format!("could not read the request body: {s}"),
            GatewayError::Upstream(s) => format!("upstream failed: {s}"),
            GatewayError::NoUpstream(s) => format!("no upstream can take the request: {s}"),
            GatewayError::UpstreamTimeout(s) => format!("upstream timed out: {s}"),
            GatewayError::LocalResources(s) => {
                format!("the gateway is out of local resources (not the upstream's fault): {s}")
            }
        }
    }

    /// The JSON body of spec §3; `userid` when it was read.
    pub fn body(&self, userid: Option<&str>) -> Bytes {
        let (_, code) = self.row();
        let v = match userid {
            Some(u) => {
                serde_json::json!({"ret": -1, "userid": u, "errorCode": code, "errorMsg": self.message()})
            }
            None => serde_json::json!({"ret": -1, "errorCode": code, "errorMsg": self.message()}),
        };
        Bytes::from(v.to_string())
    }

    /// The whole response.
    pub fn response<B: From<Bytes>>(&self, userid: Option<&str>) -> Response<B> {
        let (status, _) = self.row();
        let mut r = Response::new(B::from(self.body(userid)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        match self {
            GatewayError::Method => {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            GatewayError::Connect => {
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        r
    }
}

/// `x-graygate-route: rule=<rule>; cluster=<name>; pin=<kind>; generation=<N>[; fallback=<from>]`
pub fn decision_header(
    rule: &str,
    cluster: &str,
    pin: &str,
    generation: u64,
    fallback_from: Option<&str>,
    step: Option<&str>,
) -> Option<HeaderValue> {
    let mut s = format!("rule={rule}; cluster={cluster}; pin={pin}; generation={generation}");
    if let Some(f) = fallback_from {
        s.push_str("; fallback=");
        s.push_str(f);
    }
    if let Some(step) = step {
        s.push_str("; step=");
        s.push_str(step);
    }
    HeaderValue::from_str(&s).ok()
}

pub const DECISION_HEADER: &str = "x-graygate-route";

/// Read `outaction` (a number or a numeric string, A2) from a buffered dialog answer without
/// building a JSON tree. `None` when absent or unreadable.
pub fn peek_outaction(body: &[u8]) -> Option<Outaction> {
    peek_answer(body).outaction
}

/// What the gateway reads from a dialog answer: `ret` and `outaction` at the top level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerPeek {
    /// `ret` as a number or numeric string; `None` when absent or unreadable.
    pub ret: Option<i64>,
    pub outaction: Option<Outaction>,
}

/// Read `ret` and `outaction` from a buffered dialog answer without building a JSON tree,
/// stopping as soon as both are found (the ODFS writes `ret` first).
pub fn peek_answer(body: &[u8]) -> AnswerPeek {
    use serde::de::{self, IgnoredAny, MapAccess, Visitor};
    /// Sets `found` / `ret` at the top-level keys and stops once both are read: the rest of
    /// the answer (usually the larger part, `outparams`) is not parsed. serde_json checks that
    /// a map was read to its `}` once the visitor returns, so the early stop is an error that
    /// carries nothing; `found` and `ret` hold the answer.
    struct V<'a> {
        found: &'a mut Option<Option<i64>>,
        ret: &'a mut Option<Option<i64>>,
    }
    impl<'de> Visitor<'de> for V<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == "outaction" && self.found.is_none() {
                    *self.found = Some(m.next_value::<NumOrStr>()?.0);
                } else if k == "ret" && self.ret.is_none() {
                    *self.ret = Some(m.next_value::<NumOrStr>()?.0);
                } else {
                    m.next_value::<IgnoredAny>()?;
                    continue;
                }
                if self.found.is_some() && self.ret.is_some() {
                    return Err(de::Error::custom("stop: both found"));
                }
            }
            Ok(())
        }
    }
    struct NumOrStr(Option<i64>);
    impl<'de> de::Deserialize<'de> for NumOrStr {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct N;
            impl Visitor<'_> for N {
                type Value = NumOrStr;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number or numeric string")
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(Some(v)))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(i64::try_from(v).ok()))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(None))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(v.trim().parse().ok()))
                }
                fn visit_unit<E: de::Error>(self) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(None))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<NumOrStr, E> {
                    Ok(NumOrStr(None))
                }
            }
            d.deserialize_any(N)
        }
    }
    let (mut found, mut ret) = (None, None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = de::Deserializer::deserialize_map(
        &mut de,
        V {
            found: &mut found,
            ret: &mut ret,
        },
    );
    AnswerPeek {
        ret: ret.flatten(),
        outaction: found.flatten().map(Outaction),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table() {
        let rows: &[(GatewayError, u16, &str)] = &[
            (GatewayError::BadUrl("x".into()), 400, "GW.BAD_URL"),
            (GatewayError::BadJson("x".into()), 400, "GW.BAD_JSON"),
            (GatewayError::MissingUserid, 400, "GW.MISSING_USERID"),
            (GatewayError::BadUserid, 400, "GW.BAD_USERID"),
            (GatewayError::MissingInaction, 400, "GW.MISSING_INACTION"),
            (GatewayError::BadInaction, 400, "GW.BAD_INACTION"),
            (GatewayError::Method, 405, "GW.METHOD"),
            (GatewayError::OrphanTurn, 409, "GW.ORPHAN_TURN"),
            (GatewayError::BodyTooLarge(1), 413, "GW.BODY_TOO_LARGE"),
            (GatewayError::Upstream("x".into()), 502, "GW.UPSTREAM"),
            (GatewayError::NoUpstream("x".into()), 503, "GW.NO_UPSTREAM"),
            (
                GatewayError::UpstreamTimeout("x".into()),
                504,
                "GW.UPSTREAM_TIMEOUT",
            ),
            (
                GatewayError::LocalResources("x".into()),
                503,
                "GW.LOCAL_RESOURCES",
            ),
        ];
        for (e, status, code) in rows {
            let (s, c) = e.row();
            assert_eq!((s.as_u16(), c), (*status, *code));
            let v: serde_json::Value = serde_json::from_slice(&e.body(Some("u1"))).unwrap();
            assert_eq!(v["ret"], -1);
            assert_eq!(v["errorCode"], *code);
            assert_eq!(v["userid"], "u1");
            assert!(!v["errorMsg"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn outaction_as_number_or_string() {
        assert_eq!(
            peek_outaction(br#"{"ret":0,"outaction":10,"outparams":{"a":[1]}}"#),
            Some(Outaction(10))
        );
        assert_eq!(
            peek_outaction(br#"{"ret":"0","outaction":"13"}"#),
            Some(Outaction(13))
        );
        assert_eq!(peek_outaction(br#"{"ret":0}"#), None);
        assert_eq!(peek_outaction(b"not json"), None);
        // Only the top level counts; a nested `outaction` is part of the answer's data.
        assert_eq!(
            peek_outaction(br#"{"outparams":{"outaction":10},"outaction":9}"#),
            Some(Outaction(9))
        );
        assert_eq!(peek_outaction(br#"{"outparams":{"outaction":10}}"#), None);
        // A key inside a string is not a key.
        assert_eq!(
            peek_outaction(br#"{"retmsg":"\"outaction\":10","outaction":9}"#),
            Some(Outaction(9))
        );
        // Found before the answer breaks off: the ODFS said it; the rest is not the gateway's
        // to judge (the client gets the answer as it is).
        assert_eq!(
            peek_outaction(br#"{"ret":0,"outaction":10,"outparams":{"#),
            Some(Outaction(10))
        );
    }

    #[test]
    fn ret_and_outaction_in_any_order() {
        let p = |b: &[u8]| peek_answer(b);
        assert_eq!(
            p(br#"{"ret":0,"outaction":11}"#),
            AnswerPeek {
                ret: Some(0),
                outaction: Some(Outaction(11))
            }
        );
        assert_eq!(
            p(br#"{"outaction":9,"outparams":{"ret":5},"ret":"-1"}"#),
            AnswerPeek {
                ret: Some(-1),
                outaction: Some(Outaction(9))
            }
        );
        assert_eq!(p(br#"{"outaction":9}"#).ret, None);
        assert_eq!(p(br#"{"ret":-3,"outparams":{"#).ret, Some(-3));
    }
}
