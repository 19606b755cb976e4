//! W3C trace context through the gateway and OTLP/HTTP span export (spec §13), against the
//! real binary and a collector of the test's own that decodes the protobuf it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// `(trace id, parent id, flags)` of a traceparent the upstream got.
fn parts(tp: &str) -> (String, String, String) {
    let f: Vec<&str> = tp.split('-').collect();
    assert_eq!(f.len(), 4, "{tp}");
    assert_eq!(f[0], "00", "{tp}");
    assert!(
        f[1].len() == 32 && f[2].len() == 16 && f[3].len() == 2,
        "{tp}"
    );
    assert!(
        tp.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{tp}"
    );
    (f[1].into(), f[2].into(), f[3].into())
}

fn upstream_trace_headers(up: &Upstream) -> Vec<(Option<String>, Option<String>)> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            let h = |n: &str| {
                s.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            (h("traceparent"), h("tracestate"))
        })
        .collect()
}

/// `(trace_id, span_id)` of every access line.
fn logged_ids(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "graygate::access")
        .map(|v| {
            (
                v["trace_id"].as_str().unwrap_or("").to_string(),
                v["span_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_a_new_trace_starts() {
    let up = Upstream::start("stable").await;
    let gw = Process::start(&format!(
        "clusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    ))
    .await;
    let c = Client::new();
    let url = format!("http://{}{}", gw.dialog, dialog_path(Some(101)));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let ct = ("content-type", "application/json");
    // 1: continues the client's trace.
    let a = c
        .request(
            "POST",
            &url,
            &[ct, ("traceparent", &tp), ("tracestate", STATE)],
            turn_body("trace-1", 8, None),
        )
        .await;
    assert_eq!(a.status, 200);
    // 2: no traceparent: a new trace.
    let a = c
        .request("POST", &url, &[ct], turn_body("trace-2", 8, None))
        .await;
    assert_eq!(a.status, 200);
    // 3: an invalid traceparent (all-zero trace id) with a tracestate: a new trace, and the
    // orphaned tracestate is not passed on.
    let zero = format!("00-{}-{PARENT}-01", "0".repeat(32));
    let a = c
        .request(
            "POST",
            &url,
            &[ct, ("traceparent", &zero), ("tracestate", STATE)],
            turn_body("trace-3", 8, None),
        )
        .await;
    assert_eq!(a.status, 200);
    // 4: upper-case hex is invalid too.
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let a = c
        .request(
            "POST",
            &url,
            &[ct, ("traceparent", &upper)],
            turn_body("trace-4", 8, None),
        )
        .await;
    assert_eq!(a.status, 200);

    let seen = upstream_trace_headers(&up);
    assert_eq!(seen.len(), 4);
    let (t1, s1, f1) = parts(seen[0].0.as_deref().expect("traceparent upstream"));
    assert_eq!(t1, TRACE, "same trace id upstream");
    assert_ne!(s1, PARENT, "the gateway's own span id");
    assert_ne!(s1, "0".repeat(16));
    assert_eq!(f1, "01", "flags kept");
    assert_eq!(seen[0].1.as_deref(), Some(STATE), "tracestate unchanged");

    let mut traces = vec![t1.clone()];
    for (i, (tp, ts)) in seen.iter().enumerate().skip(1) {
        let (t, s, f) = parts(tp.as_deref().expect("traceparent upstream"));
        assert_ne!(t, TRACE, "turn {}: a new trace", i + 1);
        assert_ne!(t, "0".repeat(32));
        assert_ne!(s, "0".repeat(16));
        assert_eq!(f, "00", "export is off: the gateway does not record");
        assert_eq!(
            ts,
            &None,
            "turn {}: no tracestate without a valid parent",
            i + 1
        );
        traces.push(t);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 4, "four different traces");

    // The access lines carry the trace id and the gateway's span id.
    let ok = eventually(Duration::from_secs(5), || {
        let log = gw.logs();
        async move { logged_ids(&log).len() == 4 }
    })
    .await;
    assert!(ok, "four access lines: {}", gw.logs());
    let logged = logged_ids(&gw.logs());
    for (line, (tp, _)) in logged.iter().zip(&seen) {
        let (t, s, _) = parts(tp.as_deref().unwrap());
        assert_eq!(line, &(t, s));
    }
}

// === a collector of the test's own ===

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    /// How to answer: 200, or this status.
    status: Arc<Mutex<u16>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let col = Collector {
            status: Arc::new(Mutex::new(200)),
            ..Collector::default()
        };
        let c2 = col.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let col = c2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let col = col.clone();
                            async move {
                                assert_eq!(req.uri().path(), "/v1/traces");
                                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let status = *col.status.lock().unwrap();
                                if status == 200 {
                                    let msg = ExportTraceServiceRequest::decode(body.clone())
                                        .expect("OTLP protobuf");
                                    for rs in msg.resource_spans {
                                        for ss in rs.scope_spans {
                                            col.spans.lock().unwrap().extend(ss.spans);
                                        }
                                    }
                                    col.bodies.lock().unwrap().push(body);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (col, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn str_attr(s: &str) -> Option<Value> {
    Some(Value::StringValue(s.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_turn_is_exported_over_otlp_http() {
    let (col, col_addr) = Collector::start().await;
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&format!(
        "tracing:\n  otlp: http://{col_addr}\n{}",
        two_clusters(
            &stable,
            &canary,
            "rules:\n  - { name: tenant, vdn: [101], cluster: canary }\ndefault: stable\n"
        )
    ))
    .await;
    let c = Client::new();
    let url = gw.url(&dialog_path(Some(101)));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let ct = ("content-type", "application/json");
    let userid = "1732000000-5550001-42";
    let a = c
        .request(
            "POST",
            &url,
            &[ct, ("traceparent", &tp)],
            turn_body(userid, 8, None),
        )
        .await;
    assert_eq!(a.status, 200);
    let a = c.turn(&gw, Some(101), userid, 9, Some("1")).await;
    assert_eq!(a.status, 200);
    let a = c.turn(&gw, None, "v1-call-7", 8, None).await;
    assert_eq!(a.status, 200);

    let got = eventually(Duration::from_secs(10), || {
        let col = col.clone();
        async move { col.spans().len() >= 3 }
    })
    .await;
    assert!(got, "three spans at the collector: {:?}", col.spans());
    let spans = col.spans();
    assert_eq!(spans.len(), 3);
    let seen = upstream_trace_headers(&canary);
    // Span 1 continues the client's trace; its span id is what the upstream got as parent.
    let s1 = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE)
        .expect("the continued trace");
    assert_eq!(hex(&s1.parent_span_id), PARENT);
    let (_, up_parent, _) = parts(seen[0].0.as_deref().unwrap());
    assert_eq!(hex(&s1.span_id), up_parent);
    assert_eq!(s1.kind, 2, "a server span");
    assert!(s1.end_time_unix_nano > s1.start_time_unix_nano);
    assert_eq!(attr(s1, "graygate.rule"), str_attr("tenant"));
    assert_eq!(attr(s1, "graygate.cluster"), str_attr("canary"));
    assert_eq!(attr(s1, "graygate.pin"), str_attr("new"));
    assert_eq!(attr(s1, "graygate.inaction"), Some(Value::IntValue(8)));
    assert_eq!(attr(s1, "graygate.outaction"), Some(Value::IntValue(9)));
    assert_eq!(
        attr(s1, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    // Span 2: a new trace (no traceparent), the call's pin kept, marked sampled.
    let (t2, s2id, f2) = parts(seen[1].0.as_deref().unwrap());
    let s2 = spans.iter().find(|s| hex(&s.trace_id) == t2).unwrap();
    assert_eq!(hex(&s2.span_id), s2id);
    assert!(s2.parent_span_id.is_empty());
    assert_eq!(f2, "01", "export on: a new trace is sampled");
    assert_eq!(attr(s2, "graygate.pin"), str_attr("kept"));
    assert_eq!(attr(s2, "graygate.inaction"), Some(Value::IntValue(9)));
    // Span 3: the V1 turn to the default cluster.
    let s3 = spans
        .iter()
        .find(|s| attr(s, "graygate.rule") == str_attr("default"))
        .unwrap();
    assert_eq!(attr(s3, "graygate.cluster"), str_attr("stable"));
    // Never the userid, in any form the gateway has it.
    for body in col.bodies.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(userid) && !text.contains("5550001"),
            "{text}"
        );
    }
    assert_eq!(
        gw.metric("graygate_trace_spans_exported_total", &[]).await,
        3.0
    );

    // The collector refuses: turns go on, the spans are dropped and counted.
    *col.status.lock().unwrap() = 503;
    for i in 0..5 {
        assert_eq!(
            c.turn(&gw, Some(101), &format!("away-{i}"), 8, None)
                .await
                .status,
            200
        );
    }
    let counted = eventually(Duration::from_secs(10), || {
        let gw = &gw;
        async move {
            gw.metric(
                "graygate_trace_spans_dropped_total",
                &[("reason", "export_failed")],
            )
            .await
                == 5.0
        }
    })
    .await;
    assert!(counted, "5 spans dropped as export_failed");
    assert_eq!(col.spans().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_no_turn() {
    // Accepts connections and never reads or answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h2.lock().unwrap().push(s);
        }
    });
    let up = Upstream::start("stable").await;
    let gw = Gateway::start(&format!(
        "tracing:\n  otlp: http://{addr}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    ))
    .await;
    let c = Client::new();
    for i in 0..20 {
        let a = c.turn(&gw, Some(7), &format!("silent-{i}"), 8, None).await;
        assert_eq!(a.status, 200);
    }
    // The post times out (2 s) and its spans are counted as dropped.
    let counted = eventually(Duration::from_secs(10), || {
        let gw = &gw;
        async move {
            gw.metric(
                "graygate_trace_spans_dropped_total",
                &[("reason", "export_failed")],
            )
            .await
                == 20.0
        }
    })
    .await;
    assert!(counted, "20 spans dropped after the export timeout");
}
