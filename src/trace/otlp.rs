//! OTLP/HTTP export of one span per turn (`tracing.otlp`, spec §13), off the hot path and
//! bounded.
//!
//! A turn hands a small [`SpanRecord`] to a bounded queue ([`QUEUE`] spans) with `try_send`:
//! no wait, no lock held across anything, and when the queue is full the span is dropped and
//! counted (`graygate_trace_spans_dropped_total{reason="queue_full"}`). One task drains the queue
//! in batches of at most [`MAX_BATCH`], gathered for up to [`BATCH_DELAY`], encodes them as an
//! OTLP `ExportTraceServiceRequest` (protobuf, the `opentelemetry-proto` types and `prost`) and
//! posts them to `<collector>/v1/traces` with one request in flight, bounded by
//! [`EXPORT_TIMEOUT`]. A batch the collector refuses, or does not accept in time, is dropped and
//! counted (`reason="export_failed"`); there is no retry queue, so a collector that is away
//! costs the gateway at most the queue's memory and one failed post per batch.
//!
//! Why not the `opentelemetry` SDK with `opentelemetry-otlp`: its HTTP exporter brings its own
//! HTTP client stack (reqwest) or a blocking one, its batch processor its own thread and
//! channel, and a span built through the SDK costs several allocations per attribute on the
//! turn's thread. What a turn needs to say is fixed (about ten fields), so it is copied into a
//! plain struct and everything else happens on the exporter task, over the hyper client the
//! gateway already has.
//!
//! Span attributes: `graygate.rule`, `graygate.cluster`, `graygate.pin`, `graygate.inaction`,
//! `graygate.outaction`, `graygate.vdn`, `graygate.error_code`, `graygate.endpoint`,
//! `http.request.method`, `url.path`, `http.response.status_code`. Never the userid.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::{IntCounter, IntCounterVec, Opts};
use prost::Message;
use tokio::sync::mpsc;

use super::TraceContext;

/// Spans waiting for the exporter, at most.
pub const QUEUE: usize = 8192;
/// Spans per export request, at most.
pub const MAX_BATCH: usize = 512;
/// How long the exporter lets spans gather after the first one of a batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// One export request, connect to answer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the span of one turn says (no userid: it is never exported).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub ctx: TraceContext,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: http::Method,
    pub path: compact_str::CompactString,
    pub vdn: Option<u32>,
    pub rule: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub pin: Option<&'static str>,
    pub inaction: Option<i64>,
    pub outaction: Option<i64>,
    pub status: u16,
    pub error_code: Option<&'static str>,
}

/// `(start, end)` in Unix nanoseconds of a span that lasted `took` and ends now.
pub fn ending_now(took: Duration) -> (u64, u64) {
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let start = end.saturating_sub(took);
    (start.as_nanos() as u64, end.as_nanos() as u64)
}

/// The turn side of the exporter: cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    queue_full: IntCounter,
}

struct Counters {
    exported: IntCounter,
    failed: IntCounter,
}

impl Exporter {
    /// Start the exporter task posting to `collector` (a base URL: `/v1/traces` is added when
    /// it has no path). The task ends when the last `Exporter` clone is dropped.
    pub fn start(collector: &Uri, registry: &prometheus::Registry) -> Exporter {
        let exported = IntCounter::new(
            "graygate_trace_spans_exported_total",
            "Turn spans the OTLP collector accepted",
        )
        .expect("static metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "graygate_trace_spans_dropped_total",
                "Turn spans dropped: the export queue was full, or the collector refused or did not answer",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(exported.clone()));
        let _ = registry.register(Box::new(dropped.clone()));
        let counters = Counters {
            exported,
            failed: dropped.with_label_values(&["export_failed"]),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = traces_url(collector);
        tokio::spawn(run(rx, url, counters));
        Exporter {
            tx,
            queue_full: dropped.with_label_values(&["queue_full"]),
        }
    }

    /// Hand one span to the exporter; never waits.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

/// `<base>/v1/traces`, or the URL as written when it names a path of its own.
pub fn traces_url(base: &Uri) -> Uri {
    if !matches!(base.path(), "" | "/") {
        return base.clone();
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

async fn run(mut rx: mpsc::Receiver<SpanRecord>, url: Uri, counters: Counters) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(EXPORT_TIMEOUT));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(http);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        if batch.len() < MAX_BATCH {
            let _ = tokio::time::timeout(BATCH_DELAY, async {
                while batch.len() < MAX_BATCH {
                    let room = MAX_BATCH - batch.len();
                    if rx.recv_many(&mut batch, room).await == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        let n = batch.len() as u64;
        let body = encode(&batch);
        batch.clear();
        match post(&client, &url, body).await {
            Ok(()) => {
                counters.exported.inc_by(n);
                if failing {
                    failing = false;
                    tracing::info!(collector = %url, "trace export works again");
                }
            }
            Err(e) => {
                counters.failed.inc_by(n);
                if !failing {
                    failing = true;
                    tracing::warn!(collector = %url, error = %e, "trace export failed; spans are dropped (counted) until it works again");
                }
            }
        }
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &Uri,
    body: Vec<u8>,
) -> Result<(), String> {
    let req = Request::post(url.clone())
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the (small) answer so the connection can be used again.
        let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

/// The protobuf body of one export request.
pub fn encode(batch: &[SpanRecord]) -> Vec<u8> {
    let spans = batch.iter().map(span_of).collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("graygate")),
                    kv("service.version", s(env!("CARGO_PKG_VERSION"))),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "graygate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    req.encode_to_vec()
}

fn span_of(r: &SpanRecord) -> Span {
    use any_value::Value::IntValue;
    let mut attributes = Vec::with_capacity(11);
    attributes.push(kv("http.request.method", s(r.method.as_str())));
    attributes.push(kv("url.path", s(&r.path)));
    attributes.push(kv(
        "http.response.status_code",
        IntValue(i64::from(r.status)),
    ));
    if let Some(v) = r.vdn {
        attributes.push(kv("graygate.vdn", IntValue(i64::from(v))));
    }
    if let Some(v) = &r.rule {
        attributes.push(kv("graygate.rule", s(v)));
    }
    if let Some(v) = &r.cluster {
        attributes.push(kv("graygate.cluster", s(v)));
    }
    if let Some(v) = &r.endpoint {
        attributes.push(kv("graygate.endpoint", s(v)));
    }
    if let Some(v) = r.pin {
        attributes.push(kv("graygate.pin", s(v)));
    }
    if let Some(v) = r.inaction {
        attributes.push(kv("graygate.inaction", IntValue(v)));
    }
    if let Some(v) = r.outaction {
        attributes.push(kv("graygate.outaction", IntValue(v)));
    }
    if let Some(v) = r.error_code {
        attributes.push(kv("graygate.error_code", s(v)));
    }
    let error = r.status >= 500;
    Span {
        trace_id: r.ctx.trace_id.to_vec(),
        span_id: r.ctx.span_id.to_vec(),
        parent_span_id: r.ctx.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(r.ctx.flags),
        name: if r.inaction.is_some() {
            "dialog turn".into()
        } else {
            format!("{} other", r.method)
        },
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: r.start_unix_ns,
        end_time_unix_nano: r.end_unix_ns,
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: r.error_code.unwrap_or_default().to_string(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_collector_url() {
        let u: Uri = "http://collector:4318".parse().unwrap();
        assert_eq!(
            traces_url(&u).to_string(),
            "http://collector:4318/v1/traces"
        );
        let u: Uri = "http://collector:4318/".parse().unwrap();
        assert_eq!(
            traces_url(&u).to_string(),
            "http://collector:4318/v1/traces"
        );
        let u: Uri = "http://collector:4318/otlp/v1/traces".parse().unwrap();
        assert_eq!(
            traces_url(&u).to_string(),
            "http://collector:4318/otlp/v1/traces"
        );
    }

    #[test]
    fn spans_decode_back_with_their_ids_and_attributes() {
        let ctx = TraceContext {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_span_id: Some([9; 8]),
            flags: 1,
        };
        let (start_unix_ns, end_unix_ns) = ending_now(Duration::from_micros(1500));
        assert_eq!(end_unix_ns - start_unix_ns, 1_500_000);
        let span = SpanRecord {
            ctx,
            start_unix_ns,
            end_unix_ns,
            method: http::Method::POST,
            path: "/oifde/rest/v2/crs/process/101".into(),
            vdn: Some(101),
            rule: Some(Arc::from("one-in-ten")),
            cluster: Some(Arc::from("canary")),
            endpoint: None,
            pin: Some("new"),
            inaction: Some(7),
            outaction: Some(9),
            status: 200,
            error_code: None,
        };
        let bytes = encode(&[span]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let got = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(got.trace_id, vec![7; 16]);
        assert_eq!(got.parent_span_id, vec![9; 8]);
        let attr = |k: &str| {
            got.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(attr("graygate.rule"), Some(s("one-in-ten")));
        assert_eq!(
            attr("graygate.outaction"),
            Some(any_value::Value::IntValue(9))
        );
    }
}
