//! The two engines side by side (`engine: fast` and `engine: hyper`): one corpus of requests,
//! framing and smuggling shapes among them, sent as raw bytes to a gateway of each kind; what
//! the client gets (the status of every answer, in order) and what the upstream receives (every
//! request, normalized: method, target, headers by lower-case name, body) must be the same.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Gateway;

/// One request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    /// (lower-case name, value), sorted by name (values of one name in order).
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An upstream of raw bytes: records every request it parses and answers 200 with a dialog
/// answer.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn recorder() -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((req, used)) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    buf.drain(..used);
                    seen.lock().unwrap().push(req);
                    let body = br#"{"ret":0,"outaction":9}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Recorder { url, seen }
}

/// Read one request (Content-Length or chunked body) from `s`, buffering in `buf`.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Seen, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let mut hs: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let cl = hs
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            let chunked = hs
                .iter()
                .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
            let (method, target) = (req.method?.to_string(), req.path?.to_string());
            let mut at = n;
            let mut body = Vec::new();
            loop {
                if let Some(cl) = cl {
                    if buf.len() >= n + cl {
                        body = buf[n..n + cl].to_vec();
                        at = n + cl;
                        break;
                    }
                } else if chunked {
                    // Decode what is there; read more until the last chunk.
                    let mut p = n;
                    let mut out = Vec::new();
                    let done = loop {
                        match httparse::parse_chunk_size(&buf[p..]) {
                            Ok(httparse::Status::Complete((k, 0))) => {
                                if buf.len() >= p + k + 2 {
                                    break Some(p + k + 2);
                                }
                                break None;
                            }
                            Ok(httparse::Status::Complete((k, size))) => {
                                let size = size as usize;
                                if buf.len() < p + k + size + 2 {
                                    break None;
                                }
                                out.extend_from_slice(&buf[p + k..p + k + size]);
                                p += k + size + 2;
                            }
                            _ => break None,
                        }
                    };
                    if let Some(end) = done {
                        body = out;
                        at = end;
                        break;
                    }
                } else {
                    break;
                }
                let mut chunk = [0u8; 8192];
                let k = s.read(&mut chunk).await.ok()?;
                if k == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            hs.sort_by(|a, b| a.0.cmp(&b.0));
            return Some((
                Seen {
                    method,
                    target,
                    headers: hs,
                    body,
                },
                at,
            ));
        }
        let mut chunk = [0u8; 8192];
        let k = s.read(&mut chunk).await.ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Send `bytes` and read what comes back until the gateway closes, or until it has been quiet
/// for a moment after answering. The client does not half-close: what hyper does with a
/// request whose client shut its sending side (it drops it, racing the answer) is a matter of
/// timing, not of framing.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Before the first byte: the gateway's limits (1s for a head, 2s for a body) end every
    // case by then.
    let first_by = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let r = if out.is_empty() {
            tokio::time::timeout_at(first_by, s.read(&mut buf)).await
        } else {
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        };
        match r {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// The status of every answer in `bytes`, in order.
fn statuses(mut bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = r.parse(bytes) else {
            out.push(0);
            break;
        };
        let code = r.code.unwrap_or(0);
        let cl = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
        out.push(code);
        match cl {
            Some(cl) if bytes.len() >= n + cl => bytes = &bytes[n + cl..],
            _ => break,
        }
    }
    out
}

/// What the upstream saw, with what legitimately differs between two gateways blanked: the
/// `x-request-id` each made up, and the client port in nothing (both are 127.0.0.1).
fn normalized(seen: &[Seen], client_sent_id: bool) -> Vec<Seen> {
    seen.iter()
        .map(|s| {
            let mut s = s.clone();
            for h in &mut s.headers {
                if h.0 == "x-request-id" && !client_sent_id {
                    h.1 = "*".into();
                }
                // The gateway's span id is its own each time; a trace it starts is new.
                if h.0 == "traceparent" {
                    h.1 = match h.1.strip_prefix(TRACE) {
                        Some(rest) => format!("{TRACE}*{}", &rest[rest.len().min(16)..]),
                        None => "*".into(),
                    };
                }
            }
            s
        })
        .collect()
}

fn body(userid: &str) -> String {
    format!(r#"{{"userid":"{userid}","inaction":8,"inparams":{{"x":1}}}}"#)
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const V2: &str = "/oifde/rest/v2/crs/process/101";
/// The version and trace id of the clients' `traceparent` in the corpus.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-";
const V1: &str = "/oifde/rest/crs/process";

/// The corpus: (name, bytes, whether the client sent an x-request-id).
fn corpus() -> Vec<(&'static str, Vec<u8>, bool)> {
    let b = body("u1");
    let n = b.len();
    let mut v: Vec<(&'static str, Vec<u8>, bool)> = vec![
        ("plain V2", post(V2, "", &b), false),
        ("plain V1", post(V1, "", &b), false),
        ("connection close", post(V2, "Connection: close\r\n", &b), false),
        ("connection keep-alive", post(V2, "Connection: keep-alive\r\n", &b), false),
        ("x-forwarded-for kept and extended", post(V2, "X-Forwarded-For: 10.1.2.3\r\n", &b), false),
        ("x-forwarded-proto kept", post(V2, "X-Forwarded-Proto: https\r\n", &b), false),
        ("x-request-id kept", post(V2, "X-Request-Id: abc-123\r\n", &b), true),
        ("bad json", post(V2, "", "{nope"), false),
        ("no userid", post(V2, "", r#"{"inaction":8}"#), false),
        ("body over max_body", post(V2, "", &format!(r#"{{"userid":"u","inaction":8,"pad":"{}"}}"#, "x".repeat(70_000))), false),
        (
            "CL and TE both",
            format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n", n).into_bytes(),
            false,
        ),
        (
            "chunked request",
            format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n", n).into_bytes(),
            false,
        ),
        (
            "duplicate CL, same",
            format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{b}").into_bytes(),
            false,
        ),
        (
            "duplicate CL, different",
            format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\nContent-Length: {}\r\n\r\n{b}", n + 1).into_bytes(),
            false,
        ),
        ("CL with a plus", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: +{n}\r\n\r\n{b}").into_bytes(), false),
        ("CL list", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}, {n}\r\n\r\n{b}").into_bytes(), false),
        ("CL hex", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0x{n:x}\r\n\r\n{b}").into_bytes(), false),
        ("CL negative", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n{b}").into_bytes(), false),
        ("CL padded", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length:  {n} \r\n\r\n{b}").into_bytes(), false),
        ("obs-fold", post(V2, "X-Folded: a\r\n b\r\n", &b), false),
        ("bare LF", format!("POST {V2} HTTP/1.1\nHost: gw\nContent-Length: {n}\n\n{b}").into_bytes(), false),
        ("bare CR in a value", post(V2, "X-Cr: a\rb\r\n", &b), false),
        ("space before colon", post(V2, "X-Space : a\r\n", &b), false),
        ("NUL in a value", post(V2, "X-Nul: a\0b\r\n", &b), false),
        ("huge head", post(V2, &format!("X-Big: {}\r\n", "a".repeat(70_000)), &b), false),
        ("Expect 100-continue", post(V2, "Expect: 100-continue\r\n", &b), false),
        ("Upgrade h2c", post(V2, "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n", &b), false),
        ("Connection names a header", post(V2, "Connection: x-hop\r\nX-Hop: 1\r\n", &b), false),
        ("TE header", post(V2, "TE: trailers\r\n", &b), false),
        ("Keep-Alive header", post(V2, "Keep-Alive: timeout=5\r\n", &b), false),
        ("HTTP/1.0", format!("POST {V2} HTTP/1.0\r\nHost: gw\r\nContent-Length: {n}\r\n\r\n{b}").into_bytes(), false),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), false),
        ("GET on a dialog path", format!("GET {V2} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes(), false),
        ("lower-case method", format!("post {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\n\r\n{b}").into_bytes(), false),
        ("absolute form", format!("POST http://gw{V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\n\r\n{b}").into_bytes(), false),
        ("query string", post(&format!("{V2}?a=1"), "", &b), false),
        ("bad vdn", post("/oifde/rest/v2/crs/process/1x", "", &b), false),
        ("other path", post("/oifde/rest/api/other", "", &b), false),
        ("no Host", format!("POST {V2} HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{b}").into_bytes(), false),
        ("two Hosts", post(V2, "Host: other\r\n", &b), false),
        ("body shorter than CL", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{b}", n + 10).into_bytes(), false),
        ("TE chunked, identity", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n", n).into_bytes(), false),
        ("other spelling, doubled slash", post("//oifde/rest/v2/crs/process/101", "", &b), false),
        ("other spelling, percent", post("/oifde/rest/v2/crs/%70rocess/101", "", &b), false),
        ("other spelling, case", post("/OIFDE/rest/crs/process", "", &b), false),
        ("trailing slash", post("/oifde/rest/crs/process/", "", &b), false),
        ("two x-forwarded-proto", post(V2, "X-Forwarded-Proto: https\r\nX-Forwarded-Proto: http\r\n", &b), false),
        ("x-request-id too long", post(V2, &format!("X-Request-Id: {}\r\n", "r".repeat(200)), &b), true),
        ("x-request-id with a tab", post(V2, "X-Request-Id: a\tb\r\n", &b), true),
        ("empty body", post(V2, "", ""), false),
        ("CL leading zeros", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: 00{n}\r\n\r\n{b}").into_bytes(), false),
        ("Connection close, keep-alive", post(V2, "Connection: keep-alive, close\r\n", &b), false),
        ("Proxy-Connection", post(V2, "Proxy-Connection: keep-alive\r\n", &b), false),
        ("Trailer header", post(V2, "Trailer: x-t\r\n", &b), false),
        ("traceparent continued", post(V2, &format!("traceparent: {TRACE}00f067aa0ba902b7-01\r\ntracestate: a=1\r\ntracestate: b=2\r\n"), &b), false),
        ("traceparent invalid, tracestate dropped", post(V2, "traceparent: 00-zz-00f067aa0ba902b7-01\r\ntracestate: a=1\r\n", &b), false),
        ("two traceparents", post(V2, &format!("traceparent: {TRACE}00f067aa0ba902b7-01\r\ntraceparent: {TRACE}00f067aa0ba902b7-01\r\n"), &b), false),
        ("TE xchunked", format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: {n}\r\nTransfer-Encoding: xchunked\r\n\r\n{b}").into_bytes(), false),
    ];
    // Pipelining: two turns in one write, and a turn followed by a smuggling attempt.
    let mut two = post(V2, "", &body("p1"));
    two.extend_from_slice(&post(V1, "", &body("p2")));
    v.push(("pipelined pair", two, false));
    let mut smuggle = post(V2, "", &body("s1"));
    smuggle.extend_from_slice(
        format!("POST {V2} HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n").as_bytes(),
    );
    v.push(("pipelined smuggling", smuggle, false));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_accept_refuse_and_forward_the_same() {
    let yaml = |engine: &str, up: &str| {
        format!("engine: {engine}\nlimits: {{ header_read_timeout: 1s, request_timeout: 2s }}\nclusters:\n  only:\n    endpoints: [{up}]\ndefault: only\n")
    };
    let (up_fast, up_hyper) = (recorder().await, recorder().await);
    let fast = Gateway::start(&yaml("fast", &up_fast.url)).await;
    let hyper = Gateway::start(&yaml("hyper", &up_hyper.url)).await;
    let mut differences = Vec::new();
    for (name, bytes, sent_id) in corpus() {
        up_fast.seen.lock().unwrap().clear();
        up_hyper.seen.lock().unwrap().clear();
        let (a, b) = tokio::join!(
            exchange(fast.dialog, &bytes),
            exchange(hyper.dialog, &bytes)
        );
        let (a, b) = (statuses(&a), statuses(&b));
        // Let the upstream finish recording what it read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sa = normalized(&up_fast.seen.lock().unwrap(), sent_id);
        let sb = normalized(&up_hyper.seen.lock().unwrap(), sent_id);
        if a != b {
            differences.push(format!("{name}: answers fast {a:?} hyper {b:?}"));
        }
        if sa != sb {
            differences.push(format!("{name}: forwarded\n  fast  {sa:?}\n  hyper {sb:?}"));
        }
        // The plain shapes really were served, so the comparison is not of two refusals.
        if name.starts_with("plain") {
            assert_eq!(a, vec![200], "{name}");
            assert_eq!(sa.len(), 1, "{name}");
        }
    }
    assert!(
        differences.is_empty(),
        "the engines differ:\n{}",
        differences.join("\n")
    );
}

/// An upstream's own `x-graygate-route` never stands beside the gateway's: with
/// `decision_header: true` the client gets exactly the gateway's one, with `false` the upstream's
/// as it came; the same on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_header_replaces_an_upstreams_own() {
    use crate::support::{dialog_answer, Client, Upstream};
    let forger = Upstream::with_handler(
        "forger",
        Arc::new(|s: &crate::support::Seen| {
            let mut r = dialog_answer("forger", s);
            r.headers_mut()
                .insert("x-graygate-route", "rule=forged".parse().unwrap());
            r
        }),
    )
    .await;
    let c = Client::new();
    for engine in ["fast", "hyper"] {
        for on in [true, false] {
            let gw = Gateway::start(&format!(
                "engine: {engine}\ndecision_header: {on}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
                forger.url()
            ))
            .await;
            let a = c
                .turn(&gw, Some(7), &format!("route-{engine}-{on}"), 8, None)
                .await;
            assert_eq!(a.status, 200, "{engine}");
            let values: Vec<&str> = a
                .headers
                .get_all("x-graygate-route")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            if on {
                assert_eq!(values.len(), 1, "{engine}: {values:?}");
                assert!(values[0].contains("cluster=stable"), "{engine}: {values:?}");
            } else {
                assert_eq!(values, vec!["rule=forged"], "{engine}");
            }
        }
    }
}
