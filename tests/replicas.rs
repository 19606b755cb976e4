//! Several replicas on one Redis (issue 8, spec §9): shared pins, a rollout with two
//! generations at once, first writer wins, Redis going away and coming back, a replica restart.
//!
//! Every test starts its own `redis-server` on a free loopback port, without persistence, and
//! kills it at the end. Without `redis-server` the tests print a SKIP line and pass, unless `CI`
//! is set, where they fail.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

// === a redis-server of the test's own ===

pub(crate) struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// True when the tests can run; prints SKIP (or fails in CI) when `redis-server` is missing.
pub(crate) fn redis_or_skip(test: &str) -> bool {
    have_tool(test, "redis-server", &["--version"])
}

impl RedisServer {
    pub(crate) async fn start() -> RedisServer {
        let mut r = RedisServer::reserve();
        r.spawn().await;
        r
    }

    /// A free port and no server on it yet.
    fn reserve() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(up, "redis-server did not answer on port {}", self.port);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A direct client, to look at what the gateways wrote.
    pub(crate) async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The cluster field of a call's pin in Redis.
    async fn cluster_of(&self, userid: &str) -> Option<String> {
        let mut conn = self.conn().await;
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{PREFIX}{userid}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        v.map(|v| {
            let fields: Vec<&str> = v.splitn(6, '|').collect();
            assert_eq!(fields.len(), 6, "pin value {v:?}");
            assert_eq!(fields[0], "v1", "pin value {v:?}");
            fields[4].to_string()
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const PREFIX: &str = "gg-test:";

/// Two clusters over the stand-ins, pins in `redis`, and `rest` (rules, default).
fn config(stable: &Upstream, canary: &Upstream, redis: &RedisServer, rest: &str) -> String {
    two_clusters(
        stable,
        canary,
        &format!(
            "pins:\n  store: {}\n  redis:\n    key_prefix: \"{PREFIX}\"\n    timeout: 250ms\n{rest}",
            redis.url()
        ),
    )
}

/// The two stand-in clusters (kept alive by the caller) and a file, pins in `redis`, that
/// splits new calls half and half between them.
async fn half_split(redis: &RedisServer) -> ((Upstream, Upstream), String) {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = config(
        &stable,
        &canary,
        redis,
        "rules:\n  - { name: half, split: { stable: 50, canary: 50 } }\ndefault: stable\n",
    );
    ((stable, canary), yaml)
}

/// One turn; returns (upstream label, pin kind from the decision header).
async fn turn(c: &Client, gw: &Gateway, userid: &str, inaction: i64) -> (String, String) {
    let a = c.turn(gw, None, userid, inaction, None).await;
    assert_eq!(a.status, 200, "{userid} inaction {inaction}: {:?}", a.body);
    let upstream = a.upstream().unwrap_or("?").to_string();
    let pin = a
        .header("x-graygate-route")
        .and_then(|h| h.split("; ").find_map(|p| p.strip_prefix("pin=")))
        .unwrap_or("?")
        .to_string();
    (upstream, pin)
}

async fn store_view(c: &Client, gw: &Gateway) -> serde_json::Value {
    let text = c.get_text(&gw.admin_url("/admin/config")).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["pins"]["store"].clone()
}

async fn store_ok(c: &Client, gw: &Gateway) -> bool {
    let v = store_view(c, gw).await;
    v["state"] == "ok" && v["pending_writes"] == 0
}

// === the tests ===

/// Acceptance 1: turns alternate between two replicas and every turn reaches the call's first
/// cluster; then one replica loads a file that sends new calls elsewhere, and calls in progress
/// stay put on both while new calls follow each replica's own rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_pins_through_a_rollout() {
    if !redis_or_skip("replicas_share_pins_through_a_rollout") {
        return;
    }
    let redis = RedisServer::start().await;
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let old = config(&stable, &canary, &redis, "default: stable\n");
    let a = Gateway::start(&old).await;
    let b = Gateway::start(&old).await;
    let gws = [&a, &b];
    let c = Client::new();

    for i in 0..8 {
        let u = format!("call-{i}");
        assert_eq!(
            turn(&c, gws[i % 2], &u, 8).await,
            ("stable".into(), "new".into())
        );
        for t in 1..4 {
            assert_eq!(
                turn(&c, gws[(i + t) % 2], &u, 9).await,
                ("stable".into(), "kept".into()),
                "{u} turn {t}"
            );
        }
        assert_eq!(redis.cluster_of(&u).await.as_deref(), Some("stable"));
    }

    // Roll out a new file on replica A only: every new call to the canary.
    a.write_config(&config(&stable, &canary, &redis, "default: canary\n"));
    let r = c
        .request("POST", &a.admin_url("/admin/reload"), &[], "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["generation"], 2);

    for i in 0..8 {
        let u = format!("call-{i}");
        for t in 0..2 {
            assert_eq!(
                turn(&c, gws[(i + t) % 2], &u, 9).await,
                ("stable".into(), "kept".into()),
                "{u} after the rollout, turn {t}"
            );
        }
    }
    for i in 0..8 {
        let u = format!("new-{i}");
        let first = if i % 2 == 0 { "canary" } else { "stable" };
        assert_eq!(
            turn(&c, gws[i % 2], &u, 8).await,
            (first.into(), "new".into())
        );
        for t in 1..4 {
            assert_eq!(
                turn(&c, gws[(i + t) % 2], &u, 9).await,
                (first.into(), "kept".into()),
                "{u} turn {t}"
            );
        }
    }

    // A hangup on one replica releases the pin for both.
    let end = c.turn(&b, None, "call-0", 9, Some("hangup")).await;
    assert_eq!(end.status, 200);
    assert_eq!(redis.cluster_of("call-0").await, None);
    let peek = c
        .request("GET", &a.admin_url("/admin/pins/call-0"), &[], "")
        .await;
    assert_eq!(peek.status, 404);
    assert!(store_ok(&c, &a).await && store_ok(&c, &b).await);
}

/// Acceptance 2: two replicas with different rules pin the same new call at the same moment;
/// Redis keeps one pin and both follow it for every later turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_turns_agree_on_one_cluster() {
    if !redis_or_skip("simultaneous_first_turns_agree_on_one_cluster") {
        return;
    }
    let redis = RedisServer::start().await;
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let a = Gateway::start(&config(&stable, &canary, &redis, "default: stable\n")).await;
    let b = Gateway::start(&config(&stable, &canary, &redis, "default: canary\n")).await;
    let c = Client::new();
    let mut winners = std::collections::HashSet::new();
    let mut races = 0;
    for i in 0..12 {
        let u = format!("race-{i}");
        let (ra, rb) = tokio::join!(turn(&c, &a, &u, 8), turn(&c, &b, &u, 8));
        // Both new: each replica routed by its own rules, and both tried to pin.
        if ra.1 == "new" && rb.1 == "new" {
            assert_eq!((ra.0.as_str(), rb.0.as_str()), ("stable", "canary"));
            races += 1;
        }
        let winner = redis.cluster_of(&u).await.expect("a pin in Redis");
        winners.insert(winner.clone());
        for t in 0..4 {
            let gw = if t % 2 == 0 { &a } else { &b };
            assert_eq!(
                turn(&c, gw, &u, 9).await,
                (winner.clone(), "kept".into()),
                "{u} turn {t}"
            );
        }
    }
    eprintln!("{races} true races of 12; first writers: {winners:?}");
    assert!(races > 0, "no two first turns overlapped");
}

/// Acceptance 3: Redis killed under steady traffic through two replicas: no request fails and
/// every call stays on its cluster; Redis back: the pins created meanwhile are in Redis again
/// and turns cross replicas again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_no_turn_and_heals() {
    if !redis_or_skip("redis_outage_fails_no_turn_and_heals") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let (_upstreams, yaml) = half_split(&redis).await;
    let a = Arc::new(Gateway::start(&yaml).await);
    let b = Arc::new(Gateway::start(&yaml).await);
    let c = Client::new();

    // Calls that both replicas have served.
    let mut calls = Vec::new();
    for i in 0..16 {
        let u = format!("steady-{i}");
        let (first, _) = turn(&c, if i % 2 == 0 { &a } else { &b }, &u, 8).await;
        let (second, kind) = turn(&c, if i % 2 == 0 { &b } else { &a }, &u, 9).await;
        assert_eq!((second.as_str(), kind.as_str()), (first.as_str(), "kept"));
        calls.push((u, first));
    }

    // Steady traffic, turns alternating between the replicas, while Redis dies.
    let traffic = {
        let (a, b, c, calls) = (a.clone(), b.clone(), c.clone(), calls.clone());
        tokio::spawn(async move {
            let mut turns = 0;
            for round in 0..12 {
                for (i, (u, cluster)) in calls.iter().enumerate() {
                    let gw = if (i + round) % 2 == 0 { &a } else { &b };
                    let (got, _) = turn(&c, gw, u, 9).await;
                    assert_eq!(&got, cluster, "{u} round {round}");
                    turns += 1;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            turns
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.kill();

    // New calls while Redis is away, each served by one replica.
    let mut outage = Vec::new();
    for i in 0..10 {
        let u = format!("outage-{i}");
        let gw = if i % 2 == 0 { &a } else { &b };
        let (first, kind) = turn(&c, gw, &u, 8).await;
        assert_eq!(kind, "new");
        for _ in 0..3 {
            assert_eq!(turn(&c, gw, &u, 9).await.0, first, "{u}");
        }
        outage.push((u, first, i % 2));
    }
    let turns = traffic
        .await
        .expect("steady traffic: a turn failed or moved");
    assert_eq!(turns, 12 * 16);

    let va = store_view(&c, &a).await;
    assert_eq!(va["state"], "degraded", "{va}");
    assert!(va["pending_writes"].as_u64().unwrap_or(0) >= 5, "{va}");
    assert!(va["last_error"].is_string(), "{va}");
    assert_eq!(
        c.request("GET", &a.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
    assert!(a.metric("graygate_pin_store_errors_total", &[]).await > 0.0);

    // Redis back (empty: no persistence). The replicas write back and re-seed.
    redis.spawn().await;
    for gw in [&a, &b] {
        let healed = eventually(Duration::from_secs(15), || store_ok(&c, gw)).await;
        assert!(healed, "store did not heal: {}", store_view(&c, gw).await);
    }
    for (u, cluster, _) in &outage {
        assert_eq!(
            redis.cluster_of(u).await.as_ref(),
            Some(cluster),
            "{u} in Redis"
        );
    }
    for (u, cluster) in &calls {
        assert_eq!(redis.cluster_of(u).await.as_ref(), Some(cluster), "{u}");
    }
    // Cross-replica turns work again, from Redis (pin=kept on the replica that never saw it).
    for (u, cluster, served_by) in &outage {
        let other = if *served_by == 0 { &b } else { &a };
        assert_eq!(
            turn(&c, other, u, 9).await,
            (cluster.clone(), "kept".into()),
            "{u}"
        );
    }
    for (i, (u, cluster)) in calls.iter().enumerate() {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(turn(&c, gw, u, 9).await.0, *cluster, "{u}");
    }
}

/// Acceptance 4: a replica stopped and started again with the Redis store: its calls go on on
/// their clusters through the other replica and through the restarted one, and the admin
/// surface of the restarted one reads the pins from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_keeps_every_call_on_its_cluster() {
    if !redis_or_skip("restarted_replica_keeps_every_call_on_its_cluster") {
        return;
    }
    let redis = RedisServer::start().await;
    let (_upstreams, yaml) = half_split(&redis).await;
    let mut a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let c = Client::new();
    let mut calls = Vec::new();
    for i in 0..12 {
        let u = format!("restart-{i}");
        let (cluster, _) = turn(&c, &a, &u, 8).await;
        calls.push((u, cluster));
    }

    a.stop().await;
    for (u, cluster) in &calls {
        assert_eq!(
            turn(&c, &b, u, 9).await,
            (cluster.clone(), "kept".into()),
            "{u} through the other replica"
        );
    }
    let dir = std::mem::replace(&mut a.dir, tempfile::tempdir().unwrap());
    let opts = graygate::app::StartOptions {
        watch: false,
        sighup: false,
        ..Default::default()
    };
    let a2 = Gateway::start_path(dir, a.path.clone(), opts).await;
    for (u, cluster) in &calls {
        for gw in [&a2, &b] {
            assert_eq!(
                turn(&c, gw, u, 9).await,
                (cluster.clone(), "kept".into()),
                "{u} after the restart"
            );
        }
    }

    // The admin surface reads through to Redis.
    let (u, cluster) = &calls[0];
    let explain = c
        .request(
            "GET",
            &a2.admin_url(&format!("/admin/explain?userid={u}&inaction=9")),
            &[],
            "",
        )
        .await;
    assert_eq!(explain.json()["pin"]["cluster"], cluster.as_str());
    let del = c
        .request(
            "DELETE",
            &a2.admin_url(&format!("/admin/pins/{u}")),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status, 204);
    let gone = c
        .request("GET", &b.admin_url(&format!("/admin/pins/{u}")), &[], "")
        .await;
    assert_eq!(gone.status, 404);
    assert_eq!(redis.cluster_of(u).await, None);
}

/// A gateway whose Redis is not there yet starts, serves every turn from its local table, and
/// writes its pins to Redis once Redis comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_and_serves_before_redis_is_up() {
    if !redis_or_skip("gateway_starts_and_serves_before_redis_is_up") {
        return;
    }
    let mut redis = RedisServer::reserve();
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let a = Gateway::start(&config(&stable, &canary, &redis, "default: canary\n")).await;
    let c = Client::new();
    for i in 0..5 {
        let u = format!("early-{i}");
        assert_eq!(turn(&c, &a, &u, 8).await, ("canary".into(), "new".into()));
        assert_eq!(turn(&c, &a, &u, 9).await, ("canary".into(), "kept".into()));
    }
    assert_eq!(store_view(&c, &a).await["state"], "degraded");
    assert_eq!(
        c.request("GET", &a.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
    redis.spawn().await;
    assert!(eventually(Duration::from_secs(15), || store_ok(&c, &a)).await);
    for i in 0..5 {
        let u = format!("early-{i}");
        assert_eq!(redis.cluster_of(&u).await.as_deref(), Some("canary"));
    }
}

/// Issue 15: Redis restarts (keeping its data) while a replica sits idle. The replica's first
/// command afterwards finds its kept connection dead; it must not fail (no store error, no
/// degraded state) and the turn must follow the call's pin from Redis rather than be served
/// as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replica_survives_a_redis_restart_without_a_store_error() {
    if !redis_or_skip("idle_replica_survives_a_redis_restart_without_a_store_error") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let (_upstreams, yaml) = half_split(&redis).await;
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let c = Client::new();
    // B has a connection to Redis; the calls live in Redis only (B never saw them).
    turn(&c, &b, "warm-b", 8).await;
    let mut calls = Vec::new();
    for i in 0..6 {
        let u = format!("restart-{i}");
        calls.push((u.clone(), turn(&c, &a, &u, 8).await.0));
    }
    // Redis restarts with its data (an RDB written just before), as a managed Redis does.
    let mut direct = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut direct).await.unwrap();
    drop(direct);
    redis.kill();
    redis.spawn().await;
    assert_eq!(
        redis.cluster_of("restart-0").await.as_ref(),
        Some(&calls[0].1)
    );
    let errors_before = b.metric("graygate_pin_store_errors_total", &[]).await;
    for (u, cluster) in &calls {
        assert_eq!(
            turn(&c, &b, u, 9).await,
            (cluster.clone(), "kept".into()),
            "{u}: the first commands after the restart"
        );
    }
    assert_eq!(
        b.metric("graygate_pin_store_errors_total", &[]).await,
        errors_before,
        "no store error on the idle replica"
    );
    assert_eq!(store_view(&c, &b).await["state"], "ok");
    assert_eq!(b.metric("graygate_orphan_turns_total", &[]).await, 0.0);
}

/// Issue 13, point 6: a pin released while Redis was healthy does not come back with the
/// re-seed after an outage in which Redis restarted with its data (docs/replicas.md: only pins
/// of the outage are re-seeded then); a pin created during the outage is written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_released_while_redis_was_healthy_stays_released_after_an_outage() {
    if !redis_or_skip("a_pin_released_while_redis_was_healthy_stays_released_after_an_outage") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let (_upstreams, yaml) = half_split(&redis).await;
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let c = Client::new();
    // Both replicas have seen both calls; B releases one of them while Redis is healthy.
    for u in ["released-1", "kept-1"] {
        let (first, _) = turn(&c, &a, u, 8).await;
        assert_eq!(turn(&c, &b, u, 9).await, (first, "kept".into()));
    }
    // Let A's keeper read the data's epoch; the pins are older than the outage by more than
    // the re-seed's slack (4 x redis.timeout).
    assert!(eventually(Duration::from_secs(5), || store_ok(&c, &a)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c
        .request("DELETE", &b.admin_url("/admin/pins/released-1"), &[], "")
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(redis.cluster_of("released-1").await, None);
    // Redis restarts with its data (as a managed Redis does); A notices while it is away.
    let mut direct = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut direct).await.unwrap();
    drop(direct);
    redis.kill();
    let (outage_cluster, kind) = turn(&c, &a, "outage-1", 8).await;
    assert_eq!(kind, "new");
    assert_eq!(store_view(&c, &a).await["state"], "degraded");
    redis.spawn().await;
    assert!(
        eventually(Duration::from_secs(15), || store_ok(&c, &a)).await,
        "{}",
        store_view(&c, &a).await
    );
    assert_eq!(
        redis.cluster_of("released-1").await,
        None,
        "the released pin came back"
    );
    assert_eq!(redis.cluster_of("outage-1").await, Some(outage_cluster));
    assert!(redis.cluster_of("kept-1").await.is_some());
}
