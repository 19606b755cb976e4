//! Faults of the gateway's own making (issue 15): a crash must not lose pins, its own descriptor
//! shortage must never be blamed on an upstream, a stop must always end.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// Write `yaml` with fixed free loopback ports into `dir`; returns (path, dialog, admin).
fn config_in(dir: &tempfile::TempDir, yaml: &str) -> (PathBuf, u16, u16) {
    let (d, a) = (free_port(), free_port());
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:{d}\nadmin: 127.0.0.1:{a}\n{yaml}"),
    )
    .unwrap();
    (path, d, a)
}

fn kill9(p: &mut Process) {
    p.signal("KILL");
    let status = p.child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
}

/// Acceptance 1: pins made at least one second before a `kill -9`, the rules changed just
/// before it, restart: every later turn of those calls reaches its first cluster, and a file
/// from an earlier graceful stop is never restored over the newer pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_survive_kill_9_and_a_stale_file_never_comes_back() {
    const CALLS: usize = 40;
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("pins.snapshot");
    let rules = |to: &str| {
        two_clusters(
            &stable,
            &canary,
            &format!(
                "pins: {{ snapshot: {} }}\nrules:\n  - {{ name: t, vdn: [101], cluster: {to} }}\ndefault: stable\n",
                snap.display()
            ),
        )
    };
    let (path, d, a) = config_in(&dir, &rules("canary"));
    let with_ports = |yaml: String| format!("listen: 127.0.0.1:{d}\nadmin: 127.0.0.1:{a}\n{yaml}");
    let c = Client::new();
    let url = format!("http://127.0.0.1:{d}/oifde/rest/v2/crs/process/101");
    let turn = |userid: &str, inaction: i64, input: Option<&str>| {
        let (c, url, body) = (c.clone(), url.clone(), turn_body(userid, inaction, input));
        async move { c.post(&url, body).await }
    };

    // Run 1: "old-1" starts on canary; a graceful stop saves it.
    let mut p1 = Process::spawn(dir, path.clone(), d, a).await;
    assert_eq!(turn("old-1", 8, None).await.upstream(), Some("canary"));
    assert!(p1.terminate().success(), "{}", p1.logs());
    let dir = std::mem::replace(&mut p1.dir, tempfile::tempdir().unwrap());
    drop(p1);

    // Run 2, with vdn 101 now on stable: old-1 is restored and finishes on canary; it then
    // calls again (a new call, so stable) and CALLS more calls start on stable.
    std::fs::write(&path, with_ports(rules("stable"))).unwrap();
    let mut p2 = Process::spawn(dir, path.clone(), d, a).await;
    assert_eq!(turn("old-1", 9, Some("1")).await.upstream(), Some("canary"));
    let bye = turn("old-1", 9, Some("hangup")).await;
    assert_eq!(bye.upstream(), Some("canary"));
    assert_eq!(turn("old-1", 8, None).await.upstream(), Some("stable"));
    for i in 0..CALLS {
        let a = turn(&format!("crash-{i}"), 8, None).await;
        assert_eq!(a.upstream(), Some("stable"), "{i}");
    }
    let last_pin = Instant::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The rules change just before the crash: vdn 101 back to canary.
    std::fs::write(&path, with_ports(rules("canary"))).unwrap();
    let r = c
        .request(
            "POST",
            &format!("http://127.0.0.1:{a}/admin/reload"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let pin_age = last_pin.elapsed();
    kill9(&mut p2);
    let dir = std::mem::replace(&mut p2.dir, tempfile::tempdir().unwrap());
    drop(p2);

    // Run 3: every later turn reaches the cluster its call started on.
    let p3 = Process::spawn(dir, path.clone(), d, a).await;
    let (mut turns, mut moved) = (0, 0);
    for i in 0..CALLS {
        for input in ["1", "2"] {
            let a = turn(&format!("crash-{i}"), 9, Some(input)).await;
            turns += 1;
            if a.upstream() != Some("stable") {
                moved += 1;
                eprintln!(
                    "crash-{i} moved: {} {:?}",
                    a.status,
                    a.header("x-graygate-route")
                );
            }
            assert_eq!(
                a.header("x-graygate-route").map(|h| h.contains("pin=kept")),
                Some(true)
            );
        }
    }
    // The graceful file of run 1 said old-1 → canary; run 2's newer pin (stable) wins.
    let old = turn("old-1", 9, Some("1")).await;
    // New calls follow the rules of the file.
    let fresh = turn("after-crash", 8, None).await;
    let restored = p3
        .logs()
        .lines()
        .find(|l| l.contains("pins restored"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["restored"].clone());
    println!(
        "kill -9 {:.1}s after the last pin: restored {restored:?} pins; {turns} later turns, {moved} moved",
        pin_age.as_secs_f64()
    );
    assert_eq!(moved, 0, "{}", p3.logs());
    assert_eq!(old.upstream(), Some("stable"), "the stale pin came back");
    assert_eq!(fresh.upstream(), Some("canary"));
    assert_eq!(
        restored,
        Some(serde_json::json!(CALLS + 1)),
        "{}",
        p3.logs()
    );
}

/// One dialog turn on a connection of its own, waiting at most `limit`. `None`: the gateway
/// closed the connection (or never took it) without an answer.
async fn turn_alone(
    addr: std::net::SocketAddr,
    userid: &str,
    limit: Duration,
) -> Option<(u16, serde_json::Value)> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::post("/oifde/rest/v2/crs/process/101")
            .header("host", "gw")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(turn_body(userid, 8, None))))
            .unwrap();
        let resp = tx.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        // Hold the connection a little, as an IVR node does between turns.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

#[derive(Debug, Default)]
struct Flood {
    ok: usize,
    local: usize,
    other: Vec<(u16, String)>,
    unanswered: usize,
    healthz_ok: usize,
    healthz_failed: usize,
}

/// `clients` connections at once, each with one turn; `/healthz` polled all along.
async fn flood(p: &Process, clients: usize) -> Flood {
    let dialog = p.dialog;
    let turns: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(async move {
                turn_alone(dialog, &format!("fd-{i}"), Duration::from_secs(20)).await
            })
        })
        .collect();
    let healthz = format!("http://{}/healthz", p.admin);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // A fresh connection each time: the listener must accept it.
                if Client::new().try_get(&healthz).await == Some(200) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed)
        })
    };
    let mut f = Flood::default();
    for t in turns {
        match t.await.unwrap() {
            Some((200, _)) => f.ok += 1,
            Some((503, v)) if v["errorCode"] == "GW.LOCAL_RESOURCES" => f.local += 1,
            Some((s, v)) => f.other.push((s, v["errorCode"].to_string())),
            None => f.unanswered += 1,
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (f.healthz_ok, f.healthz_failed) = probe.await.unwrap();
    f
}

fn fd_config(up: &Upstream, limits: &str) -> String {
    format!(
        "clusters:\n  stable:\n    endpoints: [{}]\n    health: {{ interval: 100ms, timeout: 1s, unhealthy_after: 2 }}\n    outlier: {{ consecutive_failures: 3, max_ejected: 100% }}\ndefault: stable\nlimits: {{ request_timeout: 5s{limits} }}\n",
        up.url()
    )
}

/// The gateway run with 256 descriptors in front of a 200 ms upstream, `limits` added to its
/// file, after a flood of 500 clients: what the flood saw and `/metrics` right after it.
struct FdRun {
    _up: Upstream,
    p: Process,
    f: Flood,
    metrics: String,
}

impl FdRun {
    /// A metric of the scrape after the flood; 0 when it was not exported.
    fn m(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics, name, labels).unwrap_or(0.0)
    }
}

async fn flood_with_256_descriptors(limits: &str) -> FdRun {
    let up = Upstream::start("stable").await;
    up.set_delay(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let (path, d, a) = config_in(&dir, &fd_config(&up, limits));
    let p = Process::spawn_custom(dir, path, d, a, &["prlimit", "--nofile=256:256"], |_| {}).await;
    let f = flood(&p, 500).await;
    let metrics = Client::new()
        .get_text(&format!("http://{}/metrics", p.admin))
        .await;
    FdRun {
        _up: up,
        p,
        f,
        metrics,
    }
}

/// Acceptance 2: a `max_connections` above what the descriptor limit can carry, and more
/// clients than descriptors. Turns that find no descriptor for their upstream connection get
/// 503 `GW.LOCAL_RESOURCES`, counted as the gateway's own; the endpoint is never ejected nor
/// marked down; `/healthz` answers throughout; afterwards turns are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_descriptor_shortage_is_never_blamed_on_the_endpoint() {
    let run = flood_with_256_descriptors(", max_connections: 10000").await;
    let (p, f, m) = (&run.p, &run.f, |n: &str, l: &[(&str, &str)]| run.m(n, l));
    let c = Client::new();
    println!("fd limit 256, max_connections 10000, 500 clients: {f:?}");
    assert!(f.local > 0, "no local error seen: {f:?}\n{}", p.logs());
    assert!(
        f.other.is_empty(),
        "only 200 or 503 GW.LOCAL_RESOURCES: {f:?}"
    );
    assert_eq!(
        f.healthz_failed, 0,
        "/healthz must answer throughout: {f:?}"
    );
    assert!(f.healthz_ok > 0);
    // Counted as the gateway's own error (at least every one a client saw).
    assert!(
        m(
            "graygate_gateway_errors_total",
            &[("code", "GW.LOCAL_RESOURCES")]
        ) >= f.local as f64
    );
    assert_eq!(
        m("graygate_gateway_errors_total", &[("code", "GW.UPSTREAM")]),
        0.0
    );
    assert_eq!(
        m("graygate_endpoint_ejections_total", &[]),
        0.0,
        "{}",
        p.logs()
    );
    assert_eq!(
        m(
            "graygate_upstream_endpoint_healthy",
            &[("cluster", "stable")]
        ),
        1.0
    );
    assert!(
        p.logs().contains("local resources exhausted"),
        "the reason is logged"
    );
    // The flood is over: served as usual.
    let after = c
        .post(
            &format!("http://{}/oifde/rest/v2/crs/process/101", p.dialog),
            turn_body("fd-after", 8, None),
        )
        .await;
    assert_eq!(after.status, 200);
}

/// With `max_connections` left to its default, it is derived from the descriptor limit with a
/// reserve for upstream and admin sockets: the clients over it are closed at accept (counted),
/// the others are all served, and nothing is short of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_max_connections_follows_the_descriptor_limit() {
    let run = flood_with_256_descriptors("").await;
    let (p, f, m) = (&run.p, &run.f, |n: &str, l: &[(&str, &str)]| run.m(n, l));
    println!("fd limit 256, default max_connections, 500 clients: {f:?}");
    let caps = p
        .logs()
        .lines()
        .find(|l| l.contains("\"connection caps\""))
        .map(String::from)
        .unwrap_or_default();
    assert!(
        caps.contains("\"max_connections\":80"),
        "derived cap: {caps}\n{}",
        p.logs()
    );
    assert_eq!(f.local, 0, "{f:?}");
    assert!(f.other.is_empty(), "{f:?}");
    assert!(f.ok > 0);
    assert_eq!(f.healthz_failed, 0, "{f:?}");
    assert!(
        m(
            "graygate_rejected_connections_total",
            &[("reason", "max_connections")]
        ) > 0.0
    );
    assert_eq!(m("graygate_endpoint_ejections_total", &[]), 0.0);
}

/// Acceptance 3: stdout and stderr into a pipe nobody reads; SIGTERM still ends the process
/// within the grace plus two seconds, with code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_blocked_log_pipe_exits_in_time() {
    let up = Upstream::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    // grace = request_timeout + 1s = 3s
    let (path, d, a) = config_in(
        &dir,
        &format!(
            "clusters:\n  stable: {{ endpoints: [{}] }}\ndefault: stable\nlimits: {{ request_timeout: 2s }}\n",
            up.url()
        ),
    );
    let mut p = Process::spawn_custom(dir, path, d, a, &[], |cmd| {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("RUST_LOG", "debug");
    })
    .await;
    // Far more log than a pipe holds (64 KiB): the writer thread is stuck in write(2).
    let c = Client::new();
    let url = format!("http://{}/oifde/rest/v2/crs/process/101", p.dialog);
    for i in 0..600 {
        let a = c.post(&url, turn_body(&format!("log-{i}"), 8, None)).await;
        assert_eq!(a.status, 200, "turns are served while the log is blocked");
    }
    let started = Instant::now();
    p.signal("TERM");
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = p.child.kill();
            panic!("no exit 15s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    println!("exit {status:?} {took:?} after SIGTERM with a blocked log pipe (grace 3s)");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// A pinned turn whose endpoints are all down gets one answer, 503 `GW.NO_UPSTREAM`, before
/// and after the health check marks them down; the gateway's error answers carry the decision
/// header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_turn_whose_endpoints_are_all_down_is_503() {
    let (stable, mut canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = format!(
        "decision_header: true\nclusters:\n  stable:\n    endpoints: [{}]\n  canary:\n    endpoints: [{}]\n    health: {{ interval: 1s, timeout: 500ms, unhealthy_after: 2 }}\nrules:\n  - {{ name: t, vdn: [101], cluster: canary }}\ndefault: stable\n",
        stable.url(),
        canary.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    assert_eq!(
        c.turn(&gw, Some(101), "down-1", 8, None).await.upstream(),
        Some("canary")
    );
    canary.stop();
    let check = |a: &Answer, status: u16, code: &str, pin: &str| {
        assert_eq!(a.status, status, "{:?}", a.body);
        assert_eq!(a.json()["errorCode"], code);
        let route = a.header("x-graygate-route").unwrap_or_default();
        assert!(
            route.contains("cluster=canary") && route.contains(&format!("pin={pin}")),
            "decision header on the error answer: {route:?}"
        );
    };
    // Not marked down yet: the connect is refused.
    let pinned = c.turn(&gw, Some(101), "down-1", 9, Some("1")).await;
    check(&pinned, 503, "GW.NO_UPSTREAM", "kept");
    // A new call has no pin to keep: it reached nothing either, 502 (no fallback configured).
    let new = c.turn(&gw, Some(101), "down-2", 8, None).await;
    check(&new, 502, "GW.UPSTREAM", "new");
    // Marked down: the same answer for the pinned call.
    let marked = eventually(Duration::from_secs(10), || async {
        gw.metric(
            "graygate_upstream_endpoint_healthy",
            &[("cluster", "canary")],
        )
        .await
            == 0.0
    })
    .await;
    assert!(marked, "the health check did not mark canary down");
    let pinned = c.turn(&gw, Some(101), "down-1", 9, Some("2")).await;
    check(&pinned, 503, "GW.NO_UPSTREAM", "kept");
    // The call never moved to stable.
    assert!(!stable.userids().iter().any(|u| u == "down-1"));
}
