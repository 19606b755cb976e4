//! Spec §10 under faults: endpoint health (active and passive), fallback, pinned turns that
//! never change cluster, `max_inflight`, `max_connections`, timeouts and retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::support::*;

/// Start a dialog stand-in on `addr` (the port of a stopped one), retrying while the old
/// listener is still closing.
async fn restart_on(label: &str, addr: SocketAddr) -> Upstream {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            let l2 = label.to_string();
            return Upstream::serve_on(label, l, Arc::new(move |s: &Seen| dialog_answer(&l2, s)))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not bind {addr} again");
}

/// What one turn of the traffic saw.
#[derive(Debug, Clone)]
struct Seen2 {
    phase: usize,
    pinned: bool,
    /// The cluster of the call's first turn.
    call_cluster: Option<String>,
    status: u16,
    upstream: Option<String>,
    route: Option<String>,
}

fn cluster_of(upstream: &str) -> &str {
    if upstream.starts_with("canary") {
        "canary"
    } else {
        "stable"
    }
}

/// Acceptance 1 of issue 9: kill one canary endpoint, then the other, then bring both back,
/// under steady dialog traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_endpoints_die_and_return_under_traffic() {
    let stable = Upstream::start("stable").await;
    let mut c1 = Upstream::start("canary-1").await;
    let mut c2 = Upstream::start("canary-2").await;
    let (a1, a2) = (c1.addr, c2.addr);
    let yaml = format!(
        "decision_header: true
clusters:
  stable:
    endpoints: [{}]
  canary:
    endpoints: [{}, {}]
    connect_timeout: 200ms
    health: {{ interval: 100ms, timeout: 100ms, unhealthy_after: 3, healthy_after: 2 }}
    outlier: {{ consecutive_failures: 3, eject_for: 30s, max_ejected: 100% }}
    fallback: stable
rules:
  - {{ name: canary-vdn, vdn: [101], cluster: canary }}
default: stable
",
        stable.url(),
        c1.url(),
        c2.url()
    );
    let gw = Arc::new(Gateway::start(&yaml).await);
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Seen2>>> = Arc::default();

    // Two workers, each running calls of five turns (8, 7, 7, 7, hangup) on vdn 101.
    let mut workers = Vec::new();
    for w in 0..2 {
        let (gw, phase, stop, log) = (gw.clone(), phase.clone(), stop.clone(), log.clone());
        workers.push(tokio::spawn(async move {
            let c = Client::new();
            let mut call = 0;
            while !stop.load(Ordering::Relaxed) {
                call += 1;
                let userid = format!("w{w}-call{call}");
                let mut call_cluster: Option<String> = None;
                for turn in 0..5 {
                    let (inaction, input) = match turn {
                        0 => (8, None),
                        4 => (7, Some("hangup")),
                        _ => (7, Some("1")),
                    };
                    let p = phase.load(Ordering::Relaxed);
                    let a = c.turn(&gw, Some(101), &userid, inaction, input).await;
                    let route = a.header("x-graygate-route").map(String::from);
                    // Every turn after a call's first is pinned (error answers carry no
                    // decision header, so the turn's place says it).
                    let pinned = turn > 0;
                    if a.status == 200 {
                        let kept = route.as_deref().is_some_and(|r| r.contains("pin=kept"));
                        assert_eq!(kept, pinned, "{route:?}");
                    }
                    if turn == 0 && a.status == 200 {
                        call_cluster = a.upstream().map(|u| cluster_of(u).to_string());
                    }
                    log.lock().unwrap().push(Seen2 {
                        phase: p,
                        pinned,
                        call_cluster: call_cluster.clone(),
                        status: a.status.as_u16(),
                        upstream: a.upstream().map(String::from),
                        route,
                    });
                    if turn == 0 && a.status != 200 {
                        break; // no call was created
                    }
                    // Pace the traffic: steady, not a flood.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    let served_in = |p: usize, pred: &dyn Fn(&Seen2) -> bool| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|s| s.phase == p && pred(s))
            .count()
    };
    let wait_for = |p: usize, what: &'static str, pred: fn(&Seen2) -> bool| {
        let log = log.clone();
        async move {
            let ok = eventually(Duration::from_secs(10), || {
                let n = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.phase == p && pred(s))
                    .count();
                async move { n >= 20 }
            })
            .await;
            assert!(ok, "phase {p}: {what} did not happen in time");
        }
    };

    // Phase 0: both canary endpoints serve.
    wait_for(0, "canary-1 and canary-2 serving", |s| {
        s.upstream.as_deref() == Some("canary-2")
    })
    .await;

    // Phase 1: canary-1 dies. New calls move to canary-2.
    c1.stop();
    phase.store(1, Ordering::Relaxed);
    let t1 = Instant::now();
    wait_for(1, "new calls on canary-2", |s| {
        !s.pinned && s.upstream.as_deref() == Some("canary-2")
    })
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric(
                "graygate_upstream_endpoint_healthy",
                &[("cluster", "canary"), ("endpoint", &format!("http://{a1}"))],
            )
            .await
                == 0.0
        })
        .await,
        "canary-1 never marked down"
    );
    let p1_ms = t1.elapsed().as_millis();

    // Phase 2: canary-2 dies too. New calls fall back to stable.
    c2.stop();
    phase.store(2, Ordering::Relaxed);
    wait_for(2, "fallback to stable", |s| {
        !s.pinned
            && s.upstream.as_deref() == Some("stable")
            && s.route
                .as_deref()
                .is_some_and(|r| r.ends_with("; fallback=canary"))
    })
    .await;
    assert!(
        gw.metric(
            "graygate_fallbacks_total",
            &[("from", "canary"), ("to", "stable")]
        )
        .await
            >= 1.0
    );

    // Phase 3: both come back; the checks see them up and new calls reach the canary again.
    let c1b = restart_on("canary-1", a1).await;
    let c2b = restart_on("canary-2", a2).await;
    phase.store(3, Ordering::Relaxed);
    let t3 = Instant::now();
    wait_for(3, "new calls on the canary again", |s| {
        !s.pinned
            && s.upstream
                .as_deref()
                .is_some_and(|u| u.starts_with("canary"))
    })
    .await;
    let back_ms = t3.elapsed().as_millis();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }

    // No pinned turn ever reached another cluster than its call's first turn.
    let all = log.lock().unwrap().clone();
    for s in &all {
        if let (true, Some(cc), Some(u)) = (s.pinned, &s.call_cluster, &s.upstream) {
            assert_eq!(cluster_of(u), cc, "a pinned turn changed cluster: {s:?}");
        }
    }
    // The checks brought the canary back within a few intervals (healthy_after = 2 checks of
    // 100ms each; allow scheduling slack on a busy CI machine).
    assert!(back_ms < 3000, "canary back after {back_ms}ms");
    let mut report = String::new();
    for p in 0..4 {
        let total = served_in(p, &|_| true);
        let failed = served_in(p, &|s| s.status != 200);
        let failed_new = served_in(p, &|s| s.status != 200 && !s.pinned);
        let failed_pinned = failed - failed_new;
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for s in all.iter().filter(|s| s.phase == p && s.status != 200) {
            *by_status.entry(s.status).or_default() += 1;
        }
        report.push_str(&format!(
            "phase {p}: {total} turns, {failed} failed ({failed_new} first turns of new calls, {failed_pinned} pinned turns), by status {by_status:?}\n"
        ));
    }
    println!("{report}canary-1 marked down {p1_ms}ms after the kill; canary back {back_ms}ms after the return");
    // After the first kill, new calls fail at most `consecutive_failures` times (a connect
    // error is retried on the other endpoint; only requests in flight on the dying one break).
    assert!(
        served_in(1, &|s| s.status != 200 && !s.pinned) <= 3,
        "{report}"
    );
    // After the second, new calls fail at most `consecutive_failures` times before the last
    // endpoint is ejected and they fall back (max_ejected: 100%).
    assert!(
        served_in(2, &|s| s.status != 200 && !s.pinned) <= 3,
        "{report}"
    );
    // After the return nothing fails.
    assert_eq!(served_in(3, &|s| s.status != 200), 0, "{report}");
    drop((c1b, c2b));
}

/// A pinned call whose cluster has no healthy endpoint stays there: it tries the endpoints
/// marked down and then gets 503 GW.NO_UPSTREAM, never the fallback cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_turns_never_fall_back() {
    let stable = Upstream::start("stable").await;
    let mut canary = Upstream::start("canary").await;
    let yaml = format!(
        "decision_header: true
clusters:
  stable:
    endpoints: [{}]
  canary:
    endpoints: [{}]
    health: {{ interval: 50ms, timeout: 50ms, unhealthy_after: 1, healthy_after: 1 }}
    fallback: stable
rules:
  - {{ name: c, vdn: [101], cluster: canary }}
default: stable
",
        stable.url(),
        canary.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    let a = c.turn(&gw, Some(101), "pinned-1", 8, None).await;
    assert_eq!(a.upstream(), Some("canary"));
    let addr = canary.addr;
    canary.stop();
    let healthy = || async {
        gw.metric(
            "graygate_upstream_endpoint_healthy",
            &[("cluster", "canary")],
        )
        .await
    };
    assert!(eventually(Duration::from_secs(5), || async { healthy().await == 0.0 }).await);
    // The pinned call: 503, not the stable cluster.
    let a = c.turn(&gw, Some(101), "pinned-1", 7, Some("1")).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(a.json()["errorCode"], "GW.NO_UPSTREAM");
    assert_eq!(stable.count(), 0);
    // A new call falls back.
    let b = c.turn(&gw, Some(101), "new-1", 8, None).await;
    assert_eq!(b.upstream(), Some("stable"));
    assert_eq!(
        b.header("x-graygate-route"),
        Some("rule=c; cluster=stable; pin=new; generation=1; fallback=canary")
    );
    // /admin/config says why the endpoint is down.
    let cfg = c.get_text(&gw.admin_url("/admin/config")).await;
    assert!(cfg.contains("health check failed"), "{cfg}");
    // The endpoint returns while marked down: the pinned turn tries it anyway (the mark may be
    // stale) and is served there.
    let back = restart_on("canary", addr).await;
    let a = c.turn(&gw, Some(101), "pinned-1", 7, Some("1")).await;
    assert_eq!(a.upstream(), Some("canary"));
    drop(back);
}

/// A stand-in that holds each request until the test lets it go.
struct Gated {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    arrived: Arc<AtomicUsize>,
}

async fn gated(label: &'static str) -> Gated {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (g, n) = (gate.clone(), arrived.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (g, n) = (g.clone(), n.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (g, n) = (g.clone(), n.clone());
                    async move {
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        n.fetch_add(1, Ordering::SeqCst);
                        if let Ok(p) = g.acquire().await {
                            p.forget();
                        }
                        let body = r#"{"ret":0,"outaction":9}"#;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-upstream", label)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Gated {
        addr,
        gate,
        arrived,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_skips_full_endpoints_then_answers_503_at_once() {
    let (a, b) = (gated("a").await, gated("b").await);
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [http://{}, http://{}]\n    max_inflight: 1\n    balance: least_request\ndefault: stable\n",
        a.addr, b.addr
    );
    let gw = Arc::new(Gateway::start(&yaml).await);
    let spawn_turn = |u: &'static str| {
        let gw = gw.clone();
        tokio::spawn(async move { Client::new().turn(&gw, Some(1), u, 8, None).await })
    };
    let first = spawn_turn("u1");
    let second = spawn_turn("u2");
    let both =
        || async { a.arrived.load(Ordering::SeqCst) == 1 && b.arrived.load(Ordering::SeqCst) == 1 };
    assert!(
        eventually(Duration::from_secs(5), both).await,
        "the second request skipped the full endpoint"
    );
    // Every endpoint full: 503 at once, not a queue.
    let t = Instant::now();
    let third = Client::new().turn(&gw, Some(1), "u3", 8, None).await;
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["errorCode"], "GW.NO_UPSTREAM");
    assert!(t.elapsed() < Duration::from_secs(1));
    a.gate.add_permits(10);
    b.gate.add_permits(10);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    // Slots are given back.
    assert_eq!(
        Client::new().turn(&gw, Some(1), "u4", 8, None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_timeout_is_504_and_never_retried() {
    let (a, b) = (gated("a").await, gated("b").await);
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [http://{}, http://{}]\n    timeout: 300ms\ndefault: stable\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&yaml).await;
    let t = Instant::now();
    let ans = Client::new().turn(&gw, Some(1), "u1", 8, None).await;
    assert_eq!(ans.status, 504);
    assert_eq!(ans.json()["errorCode"], "GW.UPSTREAM_TIMEOUT");
    assert!(t.elapsed() < Duration::from_secs(3));
    // The turn reached one endpoint and was not sent again.
    let n = a.arrived.load(Ordering::SeqCst) + b.arrived.load(Ordering::SeqCst);
    assert_eq!(n, 1);
}

/// An endpoint that reads a request and drops the connection without answering.
async fn dropper() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = n2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(k) = s.read(&mut buf).await {
                    if k > 0 {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_requests_that_never_reached_an_endpoint() {
    // A port with nothing listening: connect refused.
    let dead_addr = format!("127.0.0.1:{}", free_port());
    let live = Upstream::start("live").await;
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [http://{dead_addr}, {}]\n    outlier: {{ consecutive_failures: 100 }}\ndefault: stable\n",
        live.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    for i in 0..6 {
        let a = c.turn(&gw, Some(1), &format!("r{i}"), 8, None).await;
        assert_eq!(
            a.status, 200,
            "connect refused is tried on the other endpoint"
        );
    }
    assert_eq!(live.count(), 6);

    // A request that reached an endpoint which broke the connection: 502, sent once.
    let (drop_addr, seen) = dropper().await;
    let live2 = Upstream::start("live2").await;
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [http://{drop_addr}, {}]\n    balance: round_robin\n    outlier: {{ consecutive_failures: 100 }}\ndefault: stable\n",
        live2.url()
    );
    let gw2 = Gateway::start(&yaml).await;
    let mut broke = 0;
    for i in 0..4 {
        let a = c.turn(&gw2, Some(1), &format!("b{i}"), 8, None).await;
        if a.status == 502 {
            assert_eq!(a.json()["errorCode"], "GW.UPSTREAM");
            broke += 1;
        } else {
            assert_eq!(a.status, 200);
        }
    }
    assert_eq!(
        broke, 2,
        "round robin: every other turn reached the dropper"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(
        live2.count(),
        2,
        "no turn that reached the dropper was sent again"
    );
}

/// Passive ejection: after `consecutive_failures` 502s the endpoint is ejected (counted),
/// never more than `max_ejected` of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_is_counted_and_bounded() {
    let bad = |label: &'static str| {
        Upstream::with_handler(
            label,
            Arc::new(|_s: &Seen| {
                Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::from_static(b"busy")))
                    .unwrap()
            }),
        )
    };
    let (b1, b2) = (bad("b1").await, bad("b2").await);
    let yaml = format!(
        "clusters:\n  stable:\n    endpoints: [{}, {}]\n    outlier: {{ consecutive_failures: 2, eject_for: 10s, max_ejected: 50% }}\ndefault: stable\n",
        b1.url(),
        b2.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    for i in 0..10 {
        let a = c.turn(&gw, Some(1), &format!("e{i}"), 8, None).await;
        assert_eq!(a.status, 503);
    }
    // Only one of the two may be ejected (50% of 2), once.
    let ej = gw.metric("graygate_endpoint_ejections_total", &[]).await;
    assert_eq!(ej, 1.0);
    let healthy = gw
        .metric(
            "graygate_upstream_endpoint_healthy",
            &[("cluster", "stable")],
        )
        .await;
    assert_eq!(healthy, 1.0);
    let cfg = c.get_text(&gw.admin_url("/admin/config")).await;
    assert!(cfg.contains("ejected for 10000ms"), "{cfg}");
}

/// Health over HTTP GET: a non-2xx answer marks the endpoint down, its recovery marks it up;
/// a reload that keeps the endpoint keeps its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_and_reload_keeps_verdict() {
    let ok = Arc::new(AtomicBool::new(false));
    let ok2 = ok.clone();
    let up = Upstream::with_handler(
        "h",
        Arc::new(move |s: &Seen| {
            if s.path == "/health" && !ok2.load(Ordering::SeqCst) {
                return Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            dialog_answer("h", s)
        }),
    )
    .await;
    let other = Upstream::start("other").await;
    let cfg = |extra: &str| {
        format!(
            "clusters:\n  stable:\n    endpoints: [{}]\n  canary:\n    endpoints: [{}]\n    health: {{ interval: 50ms, timeout: 200ms, path: /health, unhealthy_after: 2, healthy_after: 2 }}\n    fallback: stable\n{extra}rules:\n  - {{ name: c, vdn: [101], cluster: canary }}\ndefault: stable\n",
            other.url(),
            up.url()
        )
    };
    let gw = Gateway::start(&cfg("")).await;
    let down = || async {
        gw.metric(
            "graygate_upstream_endpoint_healthy",
            &[("cluster", "canary")],
        )
        .await
            == 0.0
    };
    assert!(eventually(Duration::from_secs(5), down).await);
    let c = Client::new();
    let cfgtext = c.get_text(&gw.admin_url("/admin/config")).await;
    assert!(cfgtext.contains("answered 500"), "{cfgtext}");
    // A reload that keeps the endpoint (and changes another key of the cluster) keeps it down.
    gw.write_config(&cfg("    timeout: 5s\n"));
    let r = c
        .request("POST", &gw.admin_url("/admin/reload"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(down().await, "the reload forgot the endpoint's verdict");
    assert_eq!(
        c.turn(&gw, Some(101), "x1", 8, None).await.upstream(),
        Some("other")
    );
    ok.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async { !down().await }).await,
        "the endpoint never came back"
    );
    assert_eq!(
        c.turn(&gw, Some(101), "x2", 8, None).await.upstream(),
        Some("h")
    );
}

/// `limits.max_connections`: the next connection is closed at accept and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_next_at_accept() {
    let up = Upstream::start("stable").await;
    let yaml = format!(
        "limits: {{ max_connections: 3, header_read_timeout: 5s }}\nclusters:\n  stable:\n    endpoints: [{}]\ndefault: stable\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(gw.dialog).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("graygate_connections", &[("listener", "dialog")])
                .await
                == 3.0
        })
        .await
    );
    let mut extra = TcpStream::connect(gw.dialog).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the extra connection was not closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(
        gw.metric(
            "graygate_rejected_connections_total",
            &[("reason", "max_connections")]
        )
        .await,
        1.0
    );
    // A slot comes back when a connection ends.
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("graygate_connections", &[("listener", "dialog")])
                .await
                == 2.0
        })
        .await
    );
    let mut s = TcpStream::connect(gw.dialog).await.unwrap();
    let body = turn_body("mc1", 8, None);
    let req = format!(
        "POST /oifde/rest/v2/crs/process/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// The check task of a pool stops when the pool's spec changes (a new task takes over) and
/// when the pool is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_task_follows_the_pool() {
    use graygate::config::value::EndpointUrl;
    use graygate::upstream::{Balance, ClusterSpec, HealthSpec, OutlierSpec, TlsSpec, Upstreams};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let n = accepts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let spec = |interval: Duration| ClusterSpec {
        endpoints: vec![EndpointUrl::parse(&format!("http://{addr}")).unwrap()],
        embedded: None,
        balance: Balance::RoundRobin,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        max_inflight: 0,
        health: Some(HealthSpec {
            interval,
            timeout: Duration::from_secs(1),
            path: None,
            unhealthy_after: 1,
            healthy_after: 1,
        }),
        outlier: OutlierSpec::default(),
        fallback: None,
        tls: TlsSpec::default(),
        drain: false,
    };
    let ups = Upstreams::new(graygate::metrics::Metrics::new());
    let name: Arc<str> = Arc::from("hc-follow");
    ups.reconcile(&[(name.clone(), spec(Duration::from_millis(20)))])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            accepts.load(Ordering::SeqCst) >= 3
        })
        .await
    );
    // A new spec (one check an hour): the fast task stops, the new one checks once at start.
    ups.reconcile(&[(name.clone(), spec(Duration::from_secs(3600)))])
        .await
        .unwrap();
    let settle = || async {
        let mut last = accepts.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = accepts.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let quiet = tokio::time::timeout(Duration::from_secs(5), settle())
        .await
        .expect("the old check task kept running after the spec changed");
    // The pool leaves the file (no pins): dropped, and no check runs again.
    ups.reconcile(&[(name.clone(), spec(Duration::from_millis(20)))])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            accepts.load(Ordering::SeqCst) > quiet
        })
        .await
    );
    ups.reconcile(&[]).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), settle())
        .await
        .expect("the check task outlived its pool");
    assert!(ups.all().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepts.load(Ordering::SeqCst), stopped);
}

/// Fallback chains are followed once; a circle is a validation error with its position.
#[test]
fn fallback_cycles_are_refused() {
    let yaml = "clusters:
  a: { endpoints: [http://127.0.0.1:1], fallback: b }
  b: { endpoints: [http://127.0.0.1:2], fallback: c }
  c: { endpoints: [http://127.0.0.1:3], fallback: a }
default: a
";
    let path = std::path::Path::new("routes.yaml");
    let err = match graygate::config::load_str(yaml, "routes.yaml", path) {
        Ok(_) => panic!("a fallback cycle was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fallback cycle"), "{err}");
    assert!(err.contains("routes.yaml:"), "{err}");
    // A chain without a circle is fine.
    let chain = yaml.replace("fallback: a }", "fallback: null }");
    assert!(graygate::config::load_str(&chain, "routes.yaml", path).is_ok());
}

/// A new call whose cluster's endpoints all refuse the connection before any of them is marked
/// down goes to the fallback (the request reached nothing, the call has no pin yet); a pinned
/// call never does, and a cluster without a fallback answers 502 as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_new_calls_use_the_fallback_before_the_endpoints_are_marked_down() {
    // Two ports nobody listens on: connect refused.
    let (d1, d2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let stable = Upstream::start("stable").await;
    // consecutive_failures high and no health check: the dead endpoints stay "healthy".
    let yaml = format!(
        "clusters:\n  canary:\n    endpoints: [http://{d1}, http://{d2}]\n    outlier: {{ consecutive_failures: 1000 }}\n    fallback: stable\n  stable:\n    endpoints: [{}]\nrules:\n  - name: all-canary\n    vdn: [1]\n    cluster: canary\ndefault: stable\ndecision_header: true\npins:\n  orphan_turns: route\n",
        stable.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    for i in 0..3 {
        let a = c.turn(&gw, Some(1), &format!("fb{i}"), 8, None).await;
        assert_eq!(a.status, 200, "new call {i} reached its fallback");
        assert_eq!(a.upstream(), Some("stable"));
        let route = a.header("x-graygate-route").unwrap_or_default().to_string();
        assert!(route.contains("fallback=canary"), "{route}");
        // Its later turns stay where it started: on the fallback.
        let b = c.turn(&gw, Some(1), &format!("fb{i}"), 9, Some("1")).await;
        assert_eq!(b.status, 200);
        assert_eq!(b.upstream(), Some("stable"));
    }
    // A routed orphan turn (no pin, not a call start) is routed like a new call: fallback too.
    let o = c.turn(&gw, Some(1), "orphan-1", 9, Some("1")).await;
    assert_eq!(o.status, 200);
    assert_eq!(o.upstream(), Some("stable"));
    assert!(o
        .header("x-graygate-route")
        .is_some_and(|r| r.contains("pin=orphan") && r.contains("fallback=canary")));
    assert_eq!(stable.count(), 7);
    assert_eq!(
        gw.metric(
            "graygate_fallbacks_total",
            &[("from", "canary"), ("to", "stable")]
        )
        .await,
        4.0
    );

    // No fallback configured: the same failure is a 502.
    let yaml = format!(
        "clusters:\n  canary:\n    endpoints: [http://{d1}, http://{d2}]\n    outlier: {{ consecutive_failures: 1000 }}\n  stable:\n    endpoints: [{}]\nrules:\n  - name: all-canary\n    vdn: [1]\n    cluster: canary\ndefault: stable\n",
        stable.url()
    );
    let gw2 = Gateway::start(&yaml).await;
    let a = c.turn(&gw2, Some(1), "nofb", 8, None).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["errorCode"], "GW.UPSTREAM");
    assert_eq!(stable.count(), 7, "nothing went elsewhere");
}
