//! The gateway's keep-alive connections to plain-http endpoints: reused turn after turn,
//! given back after answers of every shape, never reused half read, and passed over when the
//! server closed them while idle.

#![allow(clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// How the raw upstream answers.
#[derive(Clone, Copy)]
enum Mode {
    /// A dialog answer, connection kept.
    KeepAlive,
    /// A dialog answer, then the connection is closed without `Connection: close` (what a
    /// server does when its keep-alive timeout passes).
    CloseSilently,
    /// An answer of this many bytes (larger than the gateway's answer peek bound).
    Large(usize),
    /// `204 No Content`.
    NoContent,
}

struct Raw {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Raw {
    async fn start(mode: Mode) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (acc, ans) = (accepted.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, mode, ans.clone()));
            }
        });
        Raw {
            addr,
            accepted,
            answered,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Read one request (head and `Content-Length` body); false at end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            buf.drain(..total);
            return true;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

async fn serve(mut s: TcpStream, mode: Mode, answered: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    while read_request(&mut s, &mut buf).await {
        let n = answered.fetch_add(1, Ordering::SeqCst);
        let body = match mode {
            Mode::Large(size) => "x".repeat(size),
            Mode::NoContent => String::new(),
            _ => format!(r#"{{"ret":"0","outaction":9,"outparams":{{"n":{n}}},"retmsg":"ok"}}"#),
        };
        let head = match mode {
            Mode::NoContent => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            _ => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
        };
        if s.write_all(head.as_bytes()).await.is_err()
            || s.write_all(body.as_bytes()).await.is_err()
        {
            return;
        }
        if matches!(mode, Mode::CloseSilently) {
            return;
        }
    }
}

fn one_cluster(url: &str) -> String {
    format!("clusters:\n  stable:\n    endpoints: [{url}]\ndefault: stable\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_turns_share_one_upstream_connection() {
    let up = Raw::start(Mode::KeepAlive).await;
    let gw = Gateway::start(&one_cluster(&up.url())).await;
    let c = Client::new();
    for i in 0..20 {
        let a = c
            .turn(&gw, Some(1), "keep", if i == 0 { 8 } else { 7 }, Some("1"))
            .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.json()["outparams"]["n"],
            i,
            "answers arrive in order, unaltered"
        );
    }
    assert_eq!(
        up.accepted(),
        1,
        "20 turns in a row over one kept connection"
    );
    // The operator sees it waiting in /admin/config.
    let cfg = gw.admin_json("/admin/config").await;
    let ep = &cfg["clusters"][0]["endpoints"][0];
    assert_eq!(ep["idle_connections"], 1, "{ep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_turns_open_what_they_need_and_then_reuse_it() {
    let up = Raw::start(Mode::KeepAlive).await;
    let gw = Gateway::start(&one_cluster(&up.url())).await;
    let c = Arc::new(Client::new());
    for round in 0..5 {
        let mut tasks = Vec::new();
        for k in 0..8 {
            let (c, url) = (c.clone(), gw.url(&dialog_path(Some(1))));
            tasks.push(tokio::spawn(async move {
                c.post(&url, turn_body(&format!("c{round}-{k}"), 8, None))
                    .await
                    .status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    }
    assert_eq!(up.answered.load(Ordering::SeqCst), 40);
    assert!(
        up.accepted() <= 8,
        "5 rounds of 8 concurrent turns need at most 8 connections, opened {}",
        up.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_while_idle_is_passed_over() {
    let up = Raw::start(Mode::CloseSilently).await;
    let gw = Gateway::start(&one_cluster(&up.url())).await;
    let c = Client::new();
    for i in 0..10 {
        // Give the server's close time to arrive, as an idle keep-alive timeout would.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let a = c.turn(&gw, Some(1), &format!("closed{i}"), 8, None).await;
        assert_eq!(
            a.status, 200,
            "turn {i} after the server closed the last connection"
        );
    }
    assert_eq!(up.accepted(), 10, "a fresh connection for every turn");
    assert_eq!(
        gw.metric("graygate_endpoint_ejections_total", &[]).await,
        0.0,
        "a closed idle connection is not a failure of the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_empty_answers_give_their_connection_back() {
    // 100 KiB: over the 64 KiB the gateway reads to find `outaction`, so the rest streams.
    let large = Raw::start(Mode::Large(100 * 1024)).await;
    let gw = Gateway::start(&one_cluster(&large.url())).await;
    let c = Client::new();
    for i in 0..5 {
        let a = c.turn(&gw, Some(1), &format!("big{i}"), 8, None).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 100 * 1024, "the whole answer, streamed");
    }
    assert_eq!(
        large.accepted(),
        1,
        "a streamed answer returns its connection at its end"
    );

    let empty = Raw::start(Mode::NoContent).await;
    let gw = Gateway::start(&one_cluster(&empty.url())).await;
    for _ in 0..5 {
        let a = c.request("GET", &gw.url("/status"), &[], "").await;
        assert_eq!(a.status, 204);
    }
    assert_eq!(
        empty.accepted(),
        1,
        "an answer without a body returns its connection at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_dropped_half_read_does_not_leave_its_connection_in_the_pool() {
    let up = Raw::start(Mode::Large(4 * 1024 * 1024)).await;
    let gw = Gateway::start(&one_cluster(&up.url())).await;
    // A raw client that reads the head of a 4 MiB answer and hangs up.
    let addr = gw.url("/");
    let addr = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let k = s.read(&mut first).await.unwrap();
    assert!(first[..k].starts_with(b"HTTP/1.1 200"));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next request gets a whole answer, on a new connection.
    let a = Client::new().request("GET", &gw.url("/big"), &[], "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 4 * 1024 * 1024);
    assert_eq!(
        up.accepted(),
        2,
        "the half-read connection was closed, not reused"
    );
}

/// An endpoint that swallows SYNs (its accept queue is full) under a burst of new calls: every
/// call is served by the other endpoint, within the cluster's timeout, none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_swallows_connects_does_not_fail_a_burst() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&any.into()).unwrap();
    sock.listen(0).unwrap();
    let hole = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&hole, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&hole, Duration::from_millis(300)).is_err(),
        "the blackhole accepted a connection: this kernel does not drop SYNs at a full queue"
    );
    let live = Raw::start(Mode::KeepAlive).await;
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [http://{hole}, {}]\n    balance: round_robin\n    connect_timeout: 300ms\n    timeout: 5s\n    outlier: {{ consecutive_failures: 100000 }}\ndefault: stable\n",
        live.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Arc::new(Client::new());
    let mut tasks = Vec::new();
    for k in 0..100 {
        let (c, url) = (c.clone(), gw.url(&dialog_path(Some(1))));
        tasks.push(tokio::spawn(async move {
            c.post(&url, turn_body(&format!("hole{k}"), 8, None))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(live.answered.load(Ordering::SeqCst), 100);
    drop(fill);
}
