//! `pins.store: redis+sentinel://` (spec §13) against real Redis Sentinel on loopback: one
//! master, one replica, three Sentinels; the master is killed under load and two gateway
//! replicas follow the promoted replica with no failed turn and no moved call.
//!
//! Ports come from `free_port` (Redis cannot bind port 0 and report it). Failure detection is
//! kept short (`down-after-milliseconds 400`), so the failover takes a second or two.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

const MASTER_NAME: &str = "ggmaster";
const PREFIX: &str = "gg-sentinel:";

fn sentinel_or_skip(test: &str) -> bool {
    let found = ["redis-server", "redis-sentinel"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: redis-server / redis-sentinel are not installed (CI must install them)");
    }
    eprintln!("SKIP {test}: redis-server / redis-sentinel are not installed");
    false
}

struct Node {
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server(dir: &std::path::Path, port: u16, replica_of: Option<u16>) -> Node {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .arg("--dir")
        .arg(dir);
    if let Some(m) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    Node { child: Some(child) }
}

fn sentinel(dir: &std::path::Path, port: u16, master: u16) -> Node {
    // Sentinel rewrites its file, so each has its own.
    let file = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &file,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\nloglevel warning\ndir {}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 400\n\
             sentinel failover-timeout {MASTER_NAME} 4000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-sentinel")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-sentinel");
    Node { child: Some(child) }
}

async fn conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).ok()?;
    tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

async fn info(port: u16, section: &str) -> String {
    let Some(mut c) = conn(port).await else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg(section)
        .query_async::<String>(&mut c)
        .await
        .unwrap_or_default()
}

async fn sentinel_sees(port: u16, what: &str) -> usize {
    let Some(mut c) = conn(port).await else {
        return 0;
    };
    redis::cmd("SENTINEL")
        .arg(what)
        .arg(MASTER_NAME)
        .query_async::<Vec<redis::Value>>(&mut c)
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}

async fn cluster_of(port: u16, userid: &str) -> Option<String> {
    let mut c = conn(port).await?;
    let v: Option<String> = redis::cmd("GET")
        .arg(format!("{PREFIX}{userid}"))
        .query_async(&mut c)
        .await
        .ok()?;
    v.map(|v| v.split('|').nth(4).unwrap_or("").to_string())
}

/// One turn; (upstream label, pin kind).
async fn turn(c: &Client, gw: &Gateway, userid: &str, inaction: i64) -> (String, String) {
    let a = c.turn(gw, None, userid, inaction, None).await;
    assert_eq!(a.status, 200, "{userid} inaction {inaction}: {:?}", a.body);
    let pin = a
        .header("x-graygate-route")
        .and_then(|h| h.split("; ").find_map(|p| p.strip_prefix("pin=")))
        .unwrap_or("?")
        .to_string();
    (a.upstream().unwrap_or("?").to_string(), pin)
}

async fn store_view(c: &Client, gw: &Gateway) -> serde_json::Value {
    let text = c.get_text(&gw.admin_url("/admin/config")).await;
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["pins"]["store"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_moves_no_call() {
    if !sentinel_or_skip("sentinel_failover_under_load_moves_no_call") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (m_port, r_port) = (free_port(), free_port());
    let mut master = redis_server(dir.path(), m_port, None);
    let _replica = redis_server(dir.path(), r_port, Some(m_port));
    let s_ports = [free_port(), free_port(), free_port()];
    let sentinels: Vec<Node> = s_ports
        .iter()
        .map(|p| sentinel(dir.path(), *p, m_port))
        .collect();
    // Replication up, and every Sentinel knows the replica and the two other Sentinels.
    let ready = eventually(Duration::from_secs(30), || async move {
        if !info(r_port, "replication")
            .await
            .contains("master_link_status:up")
        {
            return false;
        }
        for p in s_ports {
            if sentinel_sees(p, "replicas").await != 1 || sentinel_sees(p, "sentinels").await != 2 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(ready, "Sentinel setup did not settle");

    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let url = format!(
        "redis+sentinel://{}/{MASTER_NAME}/0",
        s_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let yaml = two_clusters(
        &stable,
        &canary,
        &format!(
            "pins:\n  store: {url}\n  redis:\n    key_prefix: \"{PREFIX}\"\n    timeout: 100ms\nrules:\n  - {{ name: half, split: {{ stable: 50, canary: 50 }} }}\ndefault: stable\n"
        ),
    );
    let a = Arc::new(Gateway::start(&yaml).await);
    let b = Arc::new(Gateway::start(&yaml).await);
    let c = Client::new();
    let master_addr = format!("127.0.0.1:{m_port}");
    for gw in [&a, &b] {
        let found = eventually(Duration::from_secs(10), || async {
            let v = store_view(&c, gw).await;
            v["state"] == "ok" && v["master"] == master_addr.as_str()
        })
        .await;
        assert!(
            found,
            "gateway did not find the master: {}",
            store_view(&c, gw).await
        );
    }

    // Calls both replicas have served, pinned in the master (and so in the replica).
    let mut calls = Vec::new();
    for i in 0..24 {
        let u = format!("call-{i}");
        let (first, kind) = turn(&c, if i % 2 == 0 { &a } else { &b }, &u, 8).await;
        assert_eq!(kind, "new");
        let (second, kind) = turn(&c, if i % 2 == 0 { &b } else { &a }, &u, 9).await;
        assert_eq!(
            (second.as_str(), kind.as_str()),
            (first.as_str(), "kept"),
            "{u}"
        );
        calls.push((u, first));
    }
    let synced = eventually(Duration::from_secs(5), || async {
        let mut n = 0;
        for (u, _) in &calls {
            n += usize::from(cluster_of(r_port, u).await.is_some());
        }
        n == calls.len()
    })
    .await;
    assert!(synced, "pins replicated");

    // Load: every call's turns alternate between the replicas, until told to stop; new calls
    // start meanwhile too.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (a, b, c, calls, stop) = (a.clone(), b.clone(), c.clone(), calls.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut turns, mut new_calls) = (0usize, Vec::new());
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (u, cluster)) in calls.iter().enumerate() {
                    let gw = if (i + round) % 2 == 0 { &a } else { &b };
                    let (got, _) = turn(&c, gw, u, 9).await;
                    assert_eq!(&got, cluster, "{u} round {round}: the call moved");
                    turns += 1;
                }
                let u = format!("new-{round}");
                let gw = if round % 2 == 0 { &a } else { &b };
                let (first, kind) = turn(&c, gw, &u, 8).await;
                assert_eq!(kind, "new");
                assert_eq!(turn(&c, gw, &u, 9).await.0, first, "{u}");
                turns += 2;
                new_calls.push((u, first, round % 2));
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (turns, round, new_calls)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    master.kill();

    // Both gateways follow the promoted replica.
    let replica_addr = format!("127.0.0.1:{r_port}");
    let mut followed = Vec::new();
    for gw in [&a, &b] {
        let ok = eventually(Duration::from_secs(30), || async {
            let v = store_view(&c, gw).await;
            v["state"] == "ok" && v["master"] == replica_addr.as_str() && v["pending_writes"] == 0
        })
        .await;
        assert!(
            ok,
            "gateway did not follow the failover: {}",
            store_view(&c, gw).await
        );
        followed.push(killed_at.elapsed());
    }
    assert!(info(r_port, "replication").await.contains("role:master"));
    // A little more load on the new master, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (turns, rounds, new_calls) = traffic.await.expect("a turn failed or a call moved");
    let errors = a.metric("graygate_pin_store_errors_total", &[]).await
        + b.metric("graygate_pin_store_errors_total", &[]).await;
    eprintln!(
        "sentinel failover: {turns} turns in {rounds} rounds, none failed, none moved; \
         gateways on the new master {:?} and {:?} after the kill; {errors} pin store errors \
         (turns served from the local table)",
        followed[0], followed[1]
    );

    // Every call, old and new, is pinned in the new master to the cluster it started on, and
    // a turn through the replica that did not start it still finds it there.
    for (u, cluster) in &calls {
        assert_eq!(cluster_of(r_port, u).await.as_ref(), Some(cluster), "{u}");
    }
    for (u, cluster, served_by) in &new_calls {
        assert_eq!(cluster_of(r_port, u).await.as_ref(), Some(cluster), "{u}");
        let other = if *served_by == 0 { &b } else { &a };
        assert_eq!(turn(&c, other, u, 9).await.0, *cluster, "{u}");
    }
    drop(sentinels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sentinel_answering_serves_from_the_local_table() {
    // Sentinel addresses where nothing listens: the gateway starts, serves, and keeps calls.
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let url = format!(
        "redis+sentinel://secret@127.0.0.1:{},127.0.0.1:{}/{MASTER_NAME}/0",
        free_port(),
        free_port()
    );
    let yaml = two_clusters(
        &stable,
        &canary,
        &format!(
            "pins:\n  store: {url}\nrules:\n  - {{ name: half, split: {{ stable: 50, canary: 50 }} }}\ndefault: stable\n"
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    for i in 0..6 {
        let u = format!("local-{i}");
        let (first, kind) = turn(&c, &gw, &u, 8).await;
        assert_eq!(kind, "new");
        assert_eq!(turn(&c, &gw, &u, 9).await, (first, "kept".to_string()));
    }
    let v = store_view(&c, &gw).await;
    assert_eq!(v["state"], "degraded", "{v}");
    assert!(
        v["url"].as_str().unwrap().contains("***@"),
        "password masked: {v}"
    );
    assert!(!v.to_string().contains("secret"), "{v}");
    assert_eq!(
        c.request("GET", &gw.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
}
