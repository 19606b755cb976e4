//! Hostile clients: slow and idle connections by the thousand, request-smuggling shapes,
//! oversized headers, short bodies, clients that stop reading. Each gets a clear 4xx or a
//! closed connection, and the dialog traffic around them keeps being served.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// The soft limit on open files of this process (from /proc; 1024 when unknown).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// Send `raw` on a new connection and read what comes back until the gateway closes the
/// connection or `limit` passes. Returns (bytes read, closed by the gateway).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    read_until_closed(&mut s, limit).await
}

async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn gateway(extra: &str) -> (Gateway, Upstream) {
    let up = Upstream::start("stable").await;
    let yaml = format!(
        "{extra}clusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    );
    (Gateway::start(&yaml).await, up)
}

/// Dialog traffic still flows: `n` turns, all 200, within `limit`.
async fn traffic_ok(gw: &Gateway, tag: &str, n: usize, limit: Duration) {
    let c = Client::new();
    let t = Instant::now();
    for i in 0..n {
        let a = tokio::time::timeout(limit, c.turn(gw, Some(1), &format!("{tag}-{i}"), 8, None))
            .await
            .unwrap_or_else(|_| panic!("{tag}: turn {i} not served within {limit:?}"));
        assert_eq!(a.status, 200, "{tag}: turn {i}");
    }
    assert!(
        t.elapsed() < limit,
        "{tag}: {n} turns took {:?}",
        t.elapsed()
    );
}

const V2: &str =
    "POST /oifde/rest/v2/crs/process/1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n";

/// Acceptance 2 of issue 9: 1,000 slow-header and 1,000 idle connections while dialog traffic
/// flows; the slow and the idle are cut at `header_read_timeout`, `max_connections` holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_and_idle_connections() {
    // Each held connection costs two descriptors here (client and gateway side, one process).
    let per_kind = ((fd_limit().saturating_sub(200)) / 5).min(1000);
    let cap = 2 * per_kind + 40;
    println!(
        "fd limit {}: {per_kind} slow + {per_kind} idle connections, max_connections {cap}",
        fd_limit()
    );
    let (gw, _up) = gateway(&format!(
        "limits: {{ max_connections: {cap}, header_read_timeout: 3s, request_timeout: 5s }}\n"
    ))
    .await;
    let gw = Arc::new(gw);
    let closed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..2 * per_kind {
        let slow = i % 2 == 0;
        let s = loop {
            match TcpStream::connect(gw.dialog).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let closed = closed.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = s;
            let head = V2.as_bytes();
            let mut next = 0;
            let mut buf = [0u8; 512];
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        if matches!(r, Ok(0) | Err(_)) { break; }
                    }
                    _ = tick.tick(), if slow => {
                        // One byte at a time, never finishing the headers.
                        let b = head[next % head.len()];
                        next += 1;
                        if s.write_all(&[b]).await.is_err() { break; }
                    }
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let opened_in = started.elapsed();
    // The gateway holds them all, and serves dialog traffic meanwhile.
    traffic_ok(&gw, "during", 50, Duration::from_secs(5)).await;
    let held = gw
        .metric("graygate_connections", &[("listener", "dialog")])
        .await;
    assert!(held <= cap as f64, "max_connections exceeded: {held}");
    // Past the cap, connections are closed at accept and counted.
    let mut over = Vec::new();
    for _ in 0..(cap + 20 - held as usize) {
        if let Ok(s) = TcpStream::connect(gw.dialog).await {
            over.push(s);
        }
    }
    let rejected = || async {
        gw.metric(
            "graygate_rejected_connections_total",
            &[("reason", "max_connections")],
        )
        .await
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            rejected().await >= 10.0
        })
        .await,
        "no connection refused at the cap"
    );
    assert!(
        gw.metric("graygate_connections", &[("listener", "dialog")])
            .await
            <= cap as f64
    );
    drop(over);
    // The slow and the idle are cut at header_read_timeout (3s) and counted.
    let all_closed = eventually(Duration::from_secs(15), || async {
        closed.load(Ordering::SeqCst) == 2 * per_kind
    })
    .await;
    assert!(
        all_closed,
        "only {} of {} held connections were closed",
        closed.load(Ordering::SeqCst),
        2 * per_kind
    );
    let cut = gw
        .metric(
            "graygate_rejected_connections_total",
            &[("reason", "header_timeout")],
        )
        .await;
    assert!(cut >= (2 * per_kind) as f64, "header_timeout counted {cut}");
    println!(
        "opened {} in {opened_in:?}; all cut after {:?}; header_timeout {cut}, max_connections {}",
        2 * per_kind,
        started.elapsed(),
        rejected().await
    );
    traffic_ok(&gw, "after", 20, Duration::from_secs(5)).await;
    for t in tasks {
        let _ = t.await;
    }
}

/// Acceptance 3 of issue 9: every hostile shape, its answer, and traffic unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_request_shapes() {
    let (gw, up) = gateway("limits: { header_read_timeout: 2s, request_timeout: 1s }\n").await;
    let body = turn_body("h1", 8, None);
    let limit = Duration::from_secs(5);

    // Content-Length and Transfer-Encoding: chunked framing wins, Content-Length is dropped,
    // and the connection is closed after the answer, so what follows the chunked body (a
    // smuggled request) is never read as a request.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let raw = format!(
        "{V2}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
        body.len()
    );
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(200), "{ans}");
    assert!(closed, "CL+TE: the connection must close after the answer");
    assert_eq!(ans.matches("HTTP/1.1").count(), 1, "{ans}");
    assert!(up
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.path != "/smuggled"));

    // Two different Content-Lengths: 400 and closed.
    let raw = format!(
        "{V2}Content-Length: {}\r\nContent-Length: 3\r\n\r\n{body}",
        body.len()
    );
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    assert!(closed);

    // An obsolete line fold: 400 and closed.
    let raw = format!(
        "{V2}X-Folded: one\r\n two\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    assert!(closed);

    // Oversized headers (past the 64 KiB read buffer): 431 and closed.
    let big = "a".repeat(80 * 1024);
    let raw = format!(
        "{V2}X-Big: {big}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(431), "{ans}");
    assert!(closed);

    // Many small headers (hyper's cap on their number): 431 as well.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("{V2}{many}Content-Length: {}\r\n\r\n{body}", body.len());
    let (ans, _) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(431), "{ans}");

    // A body shorter than its Content-Length, the client waiting: 400 GW.BAD_JSON once
    // request_timeout (1s) passes, and the upstream never sees it.
    let before = up.count();
    let raw = format!("{V2}Content-Length: {}\r\n\r\n{}", body.len() + 50, body);
    let t = Instant::now();
    let (ans, _) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    assert!(ans.contains("GW.BAD_JSON"), "{ans}");
    assert!(t.elapsed() < Duration::from_secs(4));
    // The same, the client closing its side: the connection just ends.
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let (_, closed) = read_until_closed(&mut s, limit).await;
    assert!(closed);
    assert_eq!(up.count(), before);

    // A bad chunk size: 400.
    let raw = format!("{V2}Transfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n");
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert!(
        status_of(&ans) == Some(400) || (ans.is_empty() && closed),
        "{ans}"
    );

    // Transfer-Encoding that is not chunked: 400.
    let raw = format!("{V2}Transfer-Encoding: gzip\r\n\r\n{body}");
    let (ans, closed) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    assert!(closed);

    // Garbage instead of a request line: 400 and closed.
    let (ans, closed) = exchange(gw.dialog, b"\x16\x03\x01garbage\r\n\r\n", limit).await;
    assert!(status_of(&ans) == Some(400) || ans.is_empty(), "{ans}");
    assert!(closed);

    traffic_ok(&gw, "after-shapes", 20, limit).await;
}

/// A client that sends requests and never reads the answers holds only its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_affects_nobody_else() {
    // The default cluster answers other paths with 1 MiB.
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let up = Upstream::with_handler(
        "stable",
        Arc::new(move |s: &Seen| {
            if s.path == "/big" {
                Response::builder().body(Full::new(big.clone())).unwrap()
            } else {
                dialog_answer("stable", s)
            }
        }),
    )
    .await;
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    // Pipelined requests for the big answer, never read.
    let mut stuck = TcpStream::connect(gw.dialog).await.unwrap();
    let one = "GET /big HTTP/1.1\r\nHost: gw\r\n\r\n";
    let many = one.repeat(50);
    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.write_all(many.as_bytes())).await;
    // A dialog turn of a client that never reads its answer either.
    let body = turn_body("noread", 8, None);
    let mut noread = TcpStream::connect(gw.dialog).await.unwrap();
    let raw = format!("{V2}Content-Length: {}\r\n\r\n{body}", body.len());
    noread.write_all(raw.as_bytes()).await.unwrap();
    // Everyone else is served.
    traffic_ok(&gw, "beside-stuck", 50, Duration::from_secs(5)).await;
    drop(stuck);
    drop(noread);
    traffic_ok(&gw, "after-stuck", 10, Duration::from_secs(5)).await;
}

/// Read one HTTP/1.1 answer with a Content-Length body; None if the connection ended first.
async fn read_answer(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return Some(text);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// After a first request, hyper's header timer bounds the next request head on a kept-alive
/// connection: a slow second request is cut and counted as `header_timeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_second_request_on_a_kept_alive_connection_is_cut() {
    let (gw, up) = gateway("limits: { header_read_timeout: 500ms }\n").await;
    let body = turn_body("ka1", 8, None);
    let raw = format!("{V2}Content-Length: {}\r\n\r\n{body}", body.len());
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let first = read_answer(&mut s).await.expect("first answer");
    assert_eq!(status_of(&first), Some(200), "{first}");
    // Half a head, then nothing.
    s.write_all(V2.as_bytes()).await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the slow second request was not cut");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.metric(
                "graygate_rejected_connections_total",
                &[("reason", "header_timeout")],
            )
            .await
                == 1.0
        })
        .await,
        "header_timeout not counted"
    );
    assert_eq!(up.count(), 1);
}

// === Issue 19: hostile clients ===

/// A raw HTTP/1.1 request with a body.
fn raw_request(method: &str, path: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Point 5: other spellings of a dialog path are refused with 400 GW.BAD_URL and reach no
/// upstream, so a call pinned to the canary never has a turn on stable; the right spelling
/// keeps being served on the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_dialog_paths_are_refused() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = two_clusters(
        &stable,
        &canary,
        "rules:\n  - name: c\n    vdn: [101]\n    cluster: canary\ndefault: stable\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    let first = c.turn(&gw, Some(101), "spell-1", 8, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.upstream(), Some("canary"));
    let limit = Duration::from_secs(5);
    let body = turn_body("spell-1", 9, None);
    for path in [
        "//oifde/rest/v2/crs/process/101",
        "/oifde//rest/v2/crs/process/101",
        "/oifde/./rest/v2/crs/process/101",
        "/oifde/rest/x/../v2/crs/process/101",
        "/oifde/rest/v2/crs/process;a=b/101",
        "/oifde/rest/v2/crs/%70rocess/101",
        "/OIFDE/rest/v2/crs/process/101",
        "/oifde/rest/crs/process/",
        "/oifde/rest/crs/Process",
        "/oifde/rest/crs/process%3bx",
    ] {
        let (ans, _) = exchange(
            gw.dialog,
            raw_request("POST", path, "", &body).as_bytes(),
            limit,
        )
        .await;
        assert_eq!(status_of(&ans), Some(400), "{path}: {ans}");
        assert!(ans.contains("GW.BAD_URL"), "{path}: {ans}");
        // The same for other methods.
        let (ans, _) = exchange(
            gw.dialog,
            format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
            limit,
        )
        .await;
        assert_eq!(status_of(&ans), Some(400), "GET {path}: {ans}");
    }
    assert_eq!(stable.count(), 0, "a spelling reached stable");
    assert_eq!(canary.count(), 1, "a spelling reached the canary");
    assert!(
        gw.metric("graygate_gateway_errors_total", &[("code", "GW.BAD_URL")])
            .await
            >= 20.0
    );
    // Other paths with odd spellings are still forwarded (they are no dialog path).
    let (ans, _) = exchange(
        gw.dialog,
        b"GET /oifde/rest/api//gettoken HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status_of(&ans), Some(200), "{ans}");
    assert_eq!(stable.count(), 1);
    // The call goes on, on its cluster.
    let next = c.turn(&gw, Some(101), "spell-1", 9, None).await;
    assert_eq!(
        (next.status.as_u16(), next.upstream()),
        (200, Some("canary"))
    );
    traffic_ok(&gw, "after-spellings", 10, limit).await;
}

/// Point 7: CONNECT 405, Host missing or doubled 400, max_other_body 413 (declared and
/// streamed), none of them reaching an upstream as a request it would serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hosts_and_other_body_limit() {
    let (gw, up) = gateway("limits: { max_other_body: 1KiB }\n").await;
    let limit = Duration::from_secs(5);
    let (ans, _) = exchange(
        gw.dialog,
        b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status_of(&ans), Some(405), "{ans}");
    assert!(ans.contains("GW.METHOD"), "{ans}");
    assert!(ans.to_ascii_lowercase().contains("\r\nallow: "), "{ans}");

    let body = turn_body("host-1", 8, None);
    let no_host = format!(
        "POST /oifde/rest/v2/crs/process/1 HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (ans, _) = exchange(gw.dialog, no_host.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    assert!(ans.contains("GW.BAD_REQUEST"), "{ans}");
    let two_hosts = raw_request(
        "POST",
        "/oifde/rest/v2/crs/process/1",
        "Host: other\r\n",
        &body,
    );
    let (ans, _) = exchange(gw.dialog, two_hosts.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(400), "{ans}");
    // HTTP/1.0 may leave Host out.
    let old = format!(
        "POST /oifde/rest/v2/crs/process/1 HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (ans, _) = exchange(gw.dialog, old.as_bytes(), limit).await;
    assert!(ans.starts_with("HTTP/1.") && ans.contains(" 200 "), "{ans}");
    assert_eq!(up.count(), 1, "only the HTTP/1.0 turn is forwarded");

    // max_other_body: declared over it — 413 at once, nothing forwarded.
    let big = "x".repeat(2000);
    let raw = raw_request("POST", "/oifde/rest/api/gettoken", "", &big);
    let (ans, _) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(413), "{ans}");
    assert!(ans.contains("max_other_body"), "{ans}");
    assert_eq!(up.count(), 1);
    // Chunked, outgrowing it on the way: 413 (the upstream request is aborted, never complete).
    let chunks: String = (0..8)
        .map(|_| format!("200\r\n{}\r\n", "y".repeat(512)))
        .collect();
    let raw = format!(
        "POST /oifde/rest/api/gettoken HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n"
    );
    let (ans, _) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(413), "{ans}");
    // Under the limit: forwarded.
    let raw = raw_request("POST", "/oifde/rest/api/gettoken", "", &"z".repeat(900));
    let (ans, _) = exchange(gw.dialog, raw.as_bytes(), limit).await;
    assert_eq!(status_of(&ans), Some(200), "{ans}");
    // The upstream got the small body whole, and never more than 1 KiB of the large one (the
    // stand-in records an aborted body as empty).
    let bodies: Vec<usize> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.body.len())
        .collect();
    assert!(bodies.contains(&900), "{bodies:?}");
    assert!(bodies.iter().all(|&n| n <= 1024), "{bodies:?}");
    traffic_ok(&gw, "after-limits", 10, limit).await;
}

/// Point 7: `x-forwarded-proto` is the gateway's own, and `Expect` stops at the gateway (it
/// answered the 100 itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_is_overwritten_and_expect_stops_here() {
    let (gw, up) = gateway("").await;
    let body = turn_body("xfp-1", 8, None);
    let head = format!(
        "{V2}X-Forwarded-Proto: https\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    let cont = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(cont.starts_with("HTTP/1.1 100"), "{cont}");
    s.write_all(body.as_bytes()).await.unwrap();
    let ans = read_answer(&mut s).await.expect("answer");
    assert!(ans.contains(" 200 "), "{ans}");
    let seen = up.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert!(seen.headers.get("expect").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.body, body.as_bytes());
}

/// Point 6: in text logs, a userid with a newline and an escape sequence, and a request id
/// with spaces, stay inside one access line as escaped, quoted values; no colour codes are
/// written to a log that is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_cannot_be_split_or_forged() {
    let up = Upstream::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let (d, a) = (free_port(), free_port());
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{d}\nadmin: 127.0.0.1:{a}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
            up.url()
        ),
    )
    .unwrap();
    let p = Process::spawn_logging(dir, path, d, a, "text").await;
    let userid = "a\nb\u{1b}[2Jforged status=200 x";
    let body = turn_body(userid, 8, None);
    let raw = format!(
        "{V2}X-Request-Id: rid-1 status=999 cluster=evil\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (ans, _) = exchange(p.dialog, raw.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&ans), Some(200), "{ans}");
    let ok = eventually(Duration::from_secs(5), || async {
        p.logs().contains("rid-1")
    })
    .await;
    let logs = p.logs();
    assert!(ok, "no access line: {logs}");
    assert!(!logs.contains('\u{1b}'), "raw ESC in the log: {logs:?}");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("rid-1")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let line = lines[0];
    assert!(
        line.contains("request_id=\"rid-1 status=999 cluster=evil\""),
        "{line}"
    );
    assert!(line.contains("userid=\"a\\nb\\u{1b}*** x\""), "{line}");
    assert!(line.contains(" status=200"), "{line}");
    // No line of the log starts with what followed the newline.
    assert!(!logs.lines().any(|l| l.starts_with('b')), "{logs}");
}

/// An h2c (prior knowledge) connection to `addr` that answers PINGs and pings every 100ms
/// itself: the shape of point 1. Returns the request sender and the connection task (which
/// ends when the gateway closes the connection).
async fn h2c(
    addr: std::net::SocketAddr,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .keep_alive_timeout(Duration::from_secs(5));
    if let Some(w) = window {
        b.initial_stream_window_size(w)
            .initial_connection_window_size(w.max(65_535));
    }
    let (tx, conn) = b.handshake(hyper_util::rt::TokioIo::new(s)).await.unwrap();
    (tx, tokio::spawn(conn))
}

fn h2_get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("http://gw{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Point 1: one idle timeout for HTTP/1 keep-alive and HTTP/2 (an h2c connection that only
/// exchanges PINGs after its request is closed), counted as `idle`; a normal client is served
/// alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_and_http2_connections_are_closed() {
    let (gw, _up) = gateway("limits: { idle_timeout: 600ms, header_read_timeout: 5s }\n").await;
    // HTTP/1.1 keep-alive: one turn, then nothing.
    let body = turn_body("idle-1", 8, None);
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(format!("{V2}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    assert!(read_answer(&mut s).await.unwrap().contains(" 200 "));
    // Several h2c connections: one request each, then only PINGs.
    let mut conns = Vec::new();
    for _ in 0..5 {
        let (mut tx, conn) = h2c(gw.dialog, None).await;
        let a = tx.send_request(h2_get("/other")).await.unwrap();
        assert_eq!(a.status(), 200);
        conns.push((tx, conn));
    }
    let t = Instant::now();
    // A normal client meanwhile.
    traffic_ok(&gw, "beside-idle", 10, Duration::from_secs(5)).await;
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the idle HTTP/1 connection was not closed");
    for (_tx, conn) in conns {
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(
            ended.is_ok(),
            "an idle h2c connection answering PINGs was not closed"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    let idle = gw
        .metric("graygate_rejected_connections_total", &[("reason", "idle")])
        .await;
    assert!(idle >= 6.0, "idle counted {idle}");
    traffic_ok(&gw, "after-idle", 5, Duration::from_secs(5)).await;
}

/// Point 1: `max_connection_age` closes a busy connection gracefully: HTTP/1 answers end with
/// `Connection: close`, an h2 connection gets GOAWAY; no request is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_are_closed_gracefully() {
    let (gw, _up) = gateway("limits: { max_connection_age: 700ms }\n").await;
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    let t = Instant::now();
    let mut answered = 0;
    let mut told_close = false;
    while t.elapsed() < Duration::from_secs(5) {
        let body = turn_body(&format!("age-{answered}"), 8, None);
        if s.write_all(format!("{V2}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        match read_answer(&mut s).await {
            Some(a) => {
                assert!(a.contains(" 200 "), "{a}");
                answered += 1;
                if a.to_ascii_lowercase().contains("connection: close") {
                    told_close = true;
                    break;
                }
            }
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // hyper closes a connection that is between requests at once, and tells one with a
    // request in flight `Connection: close` on its answer: either way every answer is whole.
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "the old connection was not closed");
    assert!(rest.is_empty() || told_close, "{rest}");
    assert!(answered >= 3, "{answered}");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "closed before max_connection_age"
    );
    // h2c: requests keep working until GOAWAY, then the connection ends without error.
    let (mut tx, conn) = h2c(gw.dialog, None).await;
    let t = Instant::now();
    let mut ok = 0;
    while t.elapsed() < Duration::from_secs(5) {
        if tx.ready().await.is_err() {
            break;
        }
        match tx.send_request(h2_get("/other")).await {
            Ok(a) => {
                assert_eq!(a.status(), 200);
                ok += 1;
            }
            Err(e) => {
                // A request racing the GOAWAY is refused, never half-served. hyper says only
                // "http2 error"; h2's words are in the source chain (a graceful GOAWAY is
                // "not a result of an error").
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    source = s.source();
                }
                assert!(
                    e.is_canceled()
                        || e.is_closed()
                        || ["refused", "GOAWAY", "go away", "not a result of an error"]
                            .iter()
                            .any(|w| chain.contains(w)),
                    "{chain}"
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok >= 3, "{ok}");
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the old h2c connection was not closed");
    traffic_ok(&gw, "after-age", 5, Duration::from_secs(5)).await;
}

/// Point 2: clients that stop reading. A pipelining HTTP/1 client and h2 clients whose
/// stream windows are never reopened are cut at `send_timeout` (counted), which drops their
/// answers and so the upstream connections behind them; others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_cut_at_send_timeout() {
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let up = Upstream::with_handler(
        "stable",
        Arc::new(move |s: &Seen| {
            if s.path == "/big" {
                Response::builder().body(Full::new(big.clone())).unwrap()
            } else {
                dialog_answer("stable", s)
            }
        }),
    )
    .await;
    let yaml = format!(
        "limits: {{ send_timeout: 800ms, idle_timeout: 60s }}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    let mut stuck = TcpStream::connect(gw.dialog).await.unwrap();
    let many = "GET /big HTTP/1.1\r\nHost: gw\r\n\r\n".repeat(50);
    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.write_all(many.as_bytes())).await;
    // Two h2c connections with small windows, many streams each, bodies never read.
    let mut h2s = Vec::new();
    for _ in 0..2 {
        let (mut tx, conn) = h2c(gw.dialog, Some(1024)).await;
        let mut heads = Vec::new();
        for _ in 0..20 {
            tx.ready().await.unwrap();
            heads.push(tx.send_request(h2_get("/big")));
        }
        let mut answers = Vec::new();
        for h in heads {
            if let Ok(a) = h.await {
                answers.push(a);
            }
        }
        h2s.push((tx, conn, answers));
    }
    traffic_ok(&gw, "beside-non-readers", 20, Duration::from_secs(5)).await;
    // All three are cut (before anyone reads: reading would be taking the answers).
    let cut = || async {
        gw.metric(
            "graygate_rejected_connections_total",
            &[("reason", "send_timeout")],
        )
        .await
    };
    assert!(
        eventually(Duration::from_secs(5), || async { cut().await >= 3.0 }).await,
        "send_timeout counted {}",
        cut().await
    );
    for (_tx, conn, _answers) in h2s {
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(
            ended.is_ok(),
            "an h2 connection with shut windows was not cut"
        );
    }
    // The HTTP/1 non-reader finds the end after what was already in its socket buffer.
    let mut sink = vec![0u8; 1 << 16];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stuck.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    assert!(closed, "the pipelining non-reader was not cut");
    // Nothing is left open: the upstream answers were dropped with their connections.
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("graygate_connections", &[("listener", "dialog")])
                .await
                == 0.0
        })
        .await
    );
    traffic_ok(&gw, "after-non-readers", 10, Duration::from_secs(5)).await;
}

/// A TCP connection from another loopback address (the whole 127/8 is local on Linux).
async fn connect_from(src: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind((std::net::Ipv4Addr::from(src), 0).into())?;
    sock.connect(to).await
}

/// Point 8: one source address that reconnects as soon as it is cut gets at most
/// `max_connections_per_ip`, the rest are closed at accept (`per_ip`), and a client from
/// another address is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_its_share_of_connections() {
    let (gw, _up) =
        gateway("limits: { max_connections_per_ip: 4, header_read_timeout: 3s }\n").await;
    let src = [127, 0, 0, 2];
    if connect_from(src, gw.dialog).await.is_err() {
        println!("SKIP: cannot bind 127.0.0.2 here");
        return;
    }
    // Hold connections from 127.0.0.2, reconnecting at once whenever one is closed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (stop, addr) = (stop.clone(), gw.dialog);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = connect_from(src, addr).await {
                    let mut b = [0u8; 64];
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic_ok(&gw, "beside-one-address", 30, Duration::from_secs(5)).await;
    let held = gw
        .metric("graygate_connections", &[("listener", "dialog")])
        .await;
    assert!(held <= 4.0 + 1.0, "one address holds {held} connections");
    let refused = gw
        .metric(
            "graygate_rejected_connections_total",
            &[("reason", "per_ip")],
        )
        .await;
    assert!(refused >= 10.0, "per_ip counted {refused}");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

/// Point 7: an early error answer survives a client that is still sending its body: the
/// gateway answers, half-closes and drains (bounded) before closing, so the client reads the
/// 413 instead of a connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_a_client_that_is_still_sending() {
    let (gw, up) = gateway("limits: { max_body: 1KiB }\n").await;
    for round in 0..5 {
        let mut s = TcpStream::connect(gw.dialog).await.unwrap();
        s.write_all(format!("{V2}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // 2 KiB in 256-byte chunks, a little at a time, write errors ignored.
        for _ in 0..8 {
            let chunk = format!("100\r\n{}\r\n", "a".repeat(256));
            let _ = s.write_all(chunk.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        let (ans, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&ans), Some(413), "round {round}: {ans:?}");
        assert!(ans.contains("GW.BODY_TOO_LARGE"), "{ans}");
    }
    assert_eq!(up.count(), 0);
    traffic_ok(&gw, "after-early", 5, Duration::from_secs(5)).await;
}

/// Point 3: the admin listener cannot be starved. More idle h2 connections than its cap, each
/// having sent one `GET /healthz` and then only PINGs, and probes on fresh connections still
/// get their 200 at once: at the cap the longest-idle connection is closed to let one in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_crowds_cannot_starve_admin_probes() {
    let (gw, _up) = gateway("").await;
    let n = ((fd_limit().saturating_sub(200)) / 2).min(300);
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(s) = TcpStream::connect(gw.admin).await else {
            continue;
        };
        let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(200))
            .keep_alive_while_idle(true);
        let Ok((mut tx, conn)) = b.handshake(hyper_util::rt::TokioIo::new(s)).await else {
            continue;
        };
        let conn = tokio::spawn(conn);
        if let Ok(a) = tx.send_request(h2_get("/healthz")).await {
            assert_eq!(a.status(), 200);
        }
        held.push((tx, conn));
    }
    let open = gw
        .metric("graygate_connections", &[("listener", "admin")])
        .await;
    println!("{n} idle h2 connections opened, {open} admin connections open");
    // Probes as the kubelet makes them: a new connection, one request, 1 s timeout.
    let mut failed = 0;
    for i in 0..20 {
        let path = if i % 2 == 0 { "/healthz" } else { "/readyz" };
        let raw = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let (ans, _) = exchange(gw.admin, raw.as_bytes(), Duration::from_secs(1)).await;
        if status_of(&ans) != Some(200) {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "{failed} of 20 probes failed beside {n} idle connections"
    );
    let evicted = gw
        .metric("graygate_rejected_connections_total", &[("reason", "idle")])
        .await;
    if n > 256 {
        assert!(evicted >= 20.0, "idle counted {evicted}");
    }
    traffic_ok(&gw, "beside-admin-crowd", 5, Duration::from_secs(5)).await;
    drop(held);
}

/// Point 4: a flood of new calls cannot grow the pin table past `pins.max_pins`; the least
/// recently used pins go first (counted), so a live call that turns meanwhile keeps its pin
/// and its cluster (with `orphan_turns: reject` a lost pin would answer 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_calls_cannot_grow_the_pin_table() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = two_clusters(
        &stable,
        &canary,
        "pins: { max_pins: 640, orphan_turns: reject }\nrules:\n  - name: c\n    vdn: [101]\n    cluster: canary\ndefault: stable\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    let live = c.turn(&gw, Some(101), "live-call-1", 8, None).await;
    assert_eq!(
        (live.status.as_u16(), live.upstream()),
        (200, Some("canary"))
    );
    let flood = 3000;
    for i in 0..flood {
        let a = c
            .turn(&gw, Some(1), &format!("flood-{i:05}"), 8, None)
            .await;
        assert_eq!(a.status, 200);
        if i % 50 == 0 {
            let t = c.turn(&gw, Some(101), "live-call-1", 9, None).await;
            assert_eq!(
                (t.status.as_u16(), t.upstream()),
                (200, Some("canary")),
                "the live call lost its pin after {i} flood calls"
            );
        }
    }
    let pins = gw.metric("graygate_pins", &[("cluster", "stable")]).await
        + gw.metric("graygate_pins", &[("cluster", "canary")]).await;
    assert!(pins <= 640.0, "{pins} pins with max_pins 640");
    let evicted = gw
        .metric("graygate_pins_evicted_total", &[("cluster", "stable")])
        .await;
    assert!(evicted >= (flood - 640) as f64, "evicted {evicted}");
    assert_eq!(
        gw.metric("graygate_pins_evicted_total", &[("cluster", "canary")])
            .await,
        0.0
    );
    let end = c
        .turn(&gw, Some(101), "live-call-1", 9, Some("hangup"))
        .await;
    assert_eq!((end.status.as_u16(), end.upstream()), (200, Some("canary")));
}

/// Point 7: a chunked dialog body declared larger than `max_body` is refused with 413 as soon
/// as the chunk size that passes the limit has arrived, not after `request_timeout` (the fast
/// engine reads the chunk sizes; `engine: hyper` only counts the bytes that came). A chunked
/// body within the limit, dripping in, is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_declared_past_max_body_is_refused_at_once() {
    let (gw, up) =
        gateway("engine: fast\nlimits: { max_body: 1KiB, request_timeout: 60s }\n").await;
    let data = "a".repeat(100);
    let past = [
        // One chunk of 1 MiB, 100 bytes of it sent.
        format!("100000\r\n{data}"),
        // Two chunks of 384 bytes, then the size line of a third: 1,152 declared.
        format!("180\r\n{x}\r\n180\r\n{x}\r\n180\r\n", x = "b".repeat(0x180)),
    ];
    for (i, body) in past.iter().enumerate() {
        let mut s = TcpStream::connect(gw.dialog).await.unwrap();
        s.write_all(format!("{V2}Transfer-Encoding: chunked\r\n\r\n{body}").as_bytes())
            .await
            .unwrap();
        // The client sends nothing more: only the declared size can bring the answer.
        let (ans, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert_eq!(status_of(&ans), Some(413), "case {i}: {ans:?}");
        assert!(ans.contains("GW.BODY_TOO_LARGE"), "case {i}: {ans}");
        assert!(
            ans.to_ascii_lowercase().contains("connection: close"),
            "{ans}"
        );
        assert!(closed, "case {i}: the connection stays open after a 413");
    }
    assert_eq!(
        gw.metric(
            "graygate_gateway_errors_total",
            &[("code", "GW.BODY_TOO_LARGE")]
        )
        .await,
        2.0
    );
    // Within the limit: three chunks a little apart, then the end. Served, decoded for the
    // upstream as hyper forwards any chunked body.
    let json = turn_body("chunked-ok", 8, None);
    let (a, b) = json.split_at(json.len() / 2);
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(format!("{V2}Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for piece in [
        format!("{:x}\r\n{a}\r\n", a.len()),
        format!("{:x}\r\n{b}\r\n", b.len()),
    ] {
        s.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (ans, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "no answer within 10 s: {ans:?}");
    assert_eq!(status_of(&ans), Some(200), "{ans}");
    assert_eq!(up.userids(), vec!["chunked-ok".to_string()]);
    assert_eq!(up.seen.lock().unwrap()[0].body, json.as_bytes());
    traffic_ok(&gw, "after-chunks", 5, Duration::from_secs(5)).await;
}
