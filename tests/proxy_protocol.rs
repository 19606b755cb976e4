//! The client address (spec §13): in the access line, and with `listen_proxy_protocol: true`
//! taken from the PROXY v1/v2 header, behind a real HAProxy and against hand-made bytes.
//!
//! The client side binds 127.0.0.2 (all of 127/8 is loopback on Linux), so the address the
//! gateway reports can be told apart from the socket's peer (HAProxy's 127.0.0.1).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const CLIENT_IP: &str = "127.0.0.2";

fn haproxy_or_skip(test: &str) -> bool {
    have_tool(test, "haproxy", &["-v"])
}

/// A layer-4 HAProxy on a free loopback port in front of `backend`, sending `send_proxy`
/// (`send-proxy` or `send-proxy-v2`).
struct Haproxy {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(backend: std::net::SocketAddr, send_proxy: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server gw {backend} {send_proxy}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let up = eventually(Duration::from_secs(10), || async move {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "haproxy did not listen on {port}");
        Haproxy {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 dialog turn over a connection from 127.0.0.2 to `port`.
async fn turn_from_client_ip(port: u16, userid: &str) -> (u16, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{CLIENT_IP}:0").parse().unwrap())
        .unwrap();
    let stream = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(dialog_path(Some(101)))
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(turn_body(userid, 7, None))))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("turn timed out")
        .expect("turn failed");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn xff_seen(up: &Upstream) -> Vec<String> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            s.headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// The `client` of every access line in a JSON log.
fn logged_clients(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "graygate::access")
        .map(|v| v["client"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn behind_haproxy(send_proxy: &str, test: &str) {
    if !haproxy_or_skip(test) {
        return;
    }
    let up = Upstream::start("stable").await;
    let gw = Process::start(&format!(
        "listen_proxy_protocol: true\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    ))
    .await;
    let ha = Haproxy::start(gw.dialog, send_proxy).await;
    for i in 0..3 {
        let (status, body) = turn_from_client_ip(ha.port, &format!("ha-{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        xff_seen(&up),
        vec![CLIENT_IP; 3],
        "x-forwarded-for upstream"
    );
    let ok = eventually(Duration::from_secs(5), || {
        let log = gw.logs();
        async move { logged_clients(&log).len() == 3 }
    })
    .await;
    assert!(ok, "three access lines: {}", gw.logs());
    assert_eq!(logged_clients(&gw.logs()), vec![CLIENT_IP; 3]);

    // A client that reaches the gateway directly, without the header, is refused and counted.
    let (status, _) = raw_exchange(gw.dialog, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(
        status, None,
        "a connection without a PROXY header is closed"
    );
    let c = Client::new();
    let text = c.get_text(&format!("http://{}/metrics", gw.admin)).await;
    assert_eq!(
        metric_value(
            &text,
            "graygate_rejected_connections_total",
            &[("reason", "proxy_protocol")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_gives_the_client_address() {
    behind_haproxy(
        "send-proxy-v2",
        "haproxy_send_proxy_v2_gives_the_client_address",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_gives_the_client_address() {
    behind_haproxy(
        "send-proxy",
        "haproxy_send_proxy_v1_gives_the_client_address",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxy_protocol_the_socket_peer_is_logged_and_forwarded() {
    let up = Upstream::start("stable").await;
    let gw = Process::start(&format!(
        "clusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    ))
    .await;
    let (status, body) = turn_from_client_ip(gw.dialog.port(), "direct-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(xff_seen(&up), vec![CLIENT_IP]);
    let ok = eventually(Duration::from_secs(5), || {
        let log = gw.logs();
        async move { logged_clients(&log) == vec![CLIENT_IP] }
    })
    .await;
    assert!(ok, "access line with the client: {}", gw.logs());
}

/// Write `bytes` on a fresh connection and read until the server closes it (or 5 s pass).
/// The answer's status, or `None` when the server closed without answering.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Option<u16>, String) {
    raw_exchange_parts(addr, &[bytes], Duration::ZERO).await
}

async fn raw_exchange_parts(
    addr: std::net::SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (status, text)
}

fn v2_header(command: u8, family: u8, addr: &[u8]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.push(0x20 | command);
    b.push(family);
    b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    b.extend_from_slice(addr);
    b
}

fn turn_request(userid: &str) -> Vec<u8> {
    let body = turn_body(userid, 7, None);
    format!(
        "POST {} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        dialog_path(Some(101)),
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_headers_valid_and_malformed() {
    let up = Upstream::start("stable").await;
    let gw = Gateway::start(&format!(
        "listen_proxy_protocol: true\nlimits:\n  header_read_timeout: 500ms\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    ))
    .await;
    let rejected = |gw: &Gateway, reason: &'static str| {
        gw.metrics
            .rejected_connections
            .with_label_values(&[reason])
            .get()
    };

    // v1 with the request in the same segment: the header is consumed, the request is not.
    let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 8080\r\n".to_vec();
    bytes.extend(turn_request("pp-v1"));
    let (status, text) = raw_exchange(gw.dialog, &bytes).await;
    assert_eq!(status, Some(200), "{text}");

    // v1 arriving in pieces, then the request.
    let (status, text) = raw_exchange_parts(
        gw.dialog,
        &[
            b"PROXY TCP6 2001:db8::9 ",
            b"2001:db8::1 4000 8080\r",
            b"\n",
            &turn_request("pp-v1-split"),
        ],
        Duration::from_millis(30),
    )
    .await;
    assert_eq!(status, Some(200), "{text}");

    // v2 PROXY over IPv4, and v2 LOCAL (a balancer's own check): the socket's peer stands.
    let mut addr = vec![198, 51, 100, 9, 10, 0, 0, 1];
    addr.extend_from_slice(&40000u16.to_be_bytes());
    addr.extend_from_slice(&8080u16.to_be_bytes());
    let mut bytes = v2_header(1, 0x11, &addr);
    bytes.extend(turn_request("pp-v2"));
    let (status, text) = raw_exchange(gw.dialog, &bytes).await;
    assert_eq!(status, Some(200), "{text}");
    let mut bytes = v2_header(0, 0x00, &[]);
    bytes.extend(turn_request("pp-v2-local"));
    let (status, text) = raw_exchange(gw.dialog, &bytes).await;
    assert_eq!(status, Some(200), "{text}");
    // v1 UNKNOWN keeps the peer too.
    let mut bytes = b"PROXY UNKNOWN\r\n".to_vec();
    bytes.extend(turn_request("pp-v1-unknown"));
    let (status, text) = raw_exchange(gw.dialog, &bytes).await;
    assert_eq!(status, Some(200), "{text}");

    assert_eq!(
        xff_seen(&up),
        vec![
            "192.0.2.7",
            "2001:db8::9",
            "198.51.100.9",
            "127.0.0.1",
            "127.0.0.1"
        ]
    );
    assert_eq!(rejected(&gw, "proxy_protocol"), 0);

    // Malformed: each closed without an answer and counted.
    let mut too_long_v2 = v2_header(1, 0x11, &addr);
    too_long_v2[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut short_v2 = v2_header(1, 0x11, &[1, 2, 3, 4]);
    short_v2.extend(turn_request("x"));
    let mut bad_version = v2_header(1, 0x11, &addr);
    bad_version[12] = 0x11;
    let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    let malformed: Vec<Vec<u8>> = vec![
        turn_request("no-header"),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n".to_vec(),
        b"PROXY TCP4 300.1.1.1 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        long_v1.into_bytes(),
        too_long_v2,
        short_v2,
        bad_version,
        b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00".to_vec(),
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    ];
    for (i, bytes) in malformed.iter().enumerate() {
        let (status, text) = raw_exchange(gw.dialog, bytes).await;
        assert_eq!(status, None, "case {i} answered: {text}");
        assert!(text.is_empty(), "case {i}: {text}");
    }
    assert_eq!(rejected(&gw, "proxy_protocol"), malformed.len() as u64);
    assert_eq!(
        up.count(),
        5,
        "no malformed connection reached the upstream"
    );

    // A header that never completes: cut at header_read_timeout, counted as such.
    let (status, _) = raw_exchange(gw.dialog, b"PROXY TCP4 192.0.2.7").await;
    assert_eq!(status, None);
    assert_eq!(rejected(&gw, "header_timeout"), 1);
    assert_eq!(rejected(&gw, "proxy_protocol"), malformed.len() as u64);
}
