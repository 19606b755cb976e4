//! The shared pin store for several replicas (spec §9): pins live in Redis, and each replica
//! keeps the pins it has seen in a local [`MemoryStore`] beside it.
//!
//! # One round trip per store call
//!
//! | trait call | Redis command |
//! |---|---|
//! | `get` (read and refresh) | `EVALSHA` of [`GET_LUA`]: `GET`, then `PEXPIRE idle_ttl` unless the pin is ending |
//! | `create` (first writer wins) | `SET key value NX GET PX ttl` (Redis ≥ 7.0): nil = we won, else the winner's value |
//! | `end` (outaction 10) | `EVALSHA` of [`END_LUA`]: rewrite the value with ending = 1 and `PX end_grace` |
//! | `release` | `GETDEL` (the value names the cluster for the metric) |
//! | `peek` (admin) | `GET` |
//!
//! The ending flag decides whether a turn may extend a pin, so the refresh is a Lua script: a
//! plain `GETEX … PX` would stretch an ending pin back to `idle_ttl`.
//!
//! # The value
//!
//! `v1|<ending 0/1>|<generation>|<created_at_ms>|<cluster>|<rule>`, names with `%` and `|`
//! escaped as `%25` and `%7C`. The version comes first and the ending flag second in every
//! version, so the scripts (which only look at those two) keep working across versions, and a
//! reader that meets a version it does not know treats the pin as unreadable instead of guessing.
//! Names, never interned ids: ids differ per process.
//!
//! # When Redis is away
//!
//! A command that fails on the connection or passes `redis.timeout` marks the store
//! `degraded`. From then on turns skip Redis and use the local table (counted as errors of
//! their op), store calls that change a pin are queued in a bounded map ([`MAX_PENDING`]), and
//! the keeper task ([`RedisStore::spawn_keeper`]) probes Redis with backoff. When Redis answers
//! again the keeper writes the queue, then re-seeds Redis with every live local pin (`SET NX`,
//! so nothing newer is overwritten; this refills a Redis that restarted empty and covers
//! anything the bounded queue had to drop), and only then turns the store back to `ok`. The
//! re-seed is skipped when Redis's `run_id` is the one seen before the outage (the same process
//! kept its data: a network blip or a slow moment, not a restart).
//!
//! # Metrics
//!
//! The local table runs with a detached registry; the keeper sets `graygate_pins{cluster}` from
//! it, so that gauge is per replica. `graygate_pins_created_total` counts pins this replica
//! created (won in Redis, or created locally while degraded); `graygate_pins_released_total`
//! counts hangup and admin releases done by this replica. Idle and end-grace expiry happen
//! inside Redis and are not counted.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compact_str::CompactString;
use prometheus::{Histogram, IntCounter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use tokio::time::Instant;

use super::memory::MemoryStore;
use super::{Pin, PinStore, ReleaseReason};
use crate::clock::wall_ms;
use crate::ids::{self as names, NameId};
use crate::metrics::{store_error, store_timer, Metrics};

/// Pin changes queued while Redis is away, at most. Past it new entries are dropped (and
/// counted): the re-seed after recovery still writes every live local pin.
pub const MAX_PENDING: usize = 100_000;
/// Commands per pipeline when the keeper writes the queue or re-seeds.
const BATCH: usize = 500;
/// The keeper's tick; also the first probe delay after a failure.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait between two probes while Redis stays away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Names longer than this in a Redis value are not interned (the value is unreadable).
const MAX_NAME: usize = 256;

/// Read a pin and refresh its lifetime, unless it is ending. Returns `{value, pttl_ms}` or nil.
pub const GET_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.match(v, '^v%d+|1|') then
  return {v, redis.call('PTTL', KEYS[1])}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {v, tonumber(ARGV[1])}
";

/// Mark a pin ending: it lives `ARGV[1]` ms more, whatever later turns do. Returns 1 when a pin
/// was there.
pub const END_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.match(v, '^v%d+|1|') then return 1 end
local nv = string.gsub(v, '^(v%d+|)0|', '%11|', 1)
redis.call('SET', KEYS[1], nv, 'PX', ARGV[1])
return 1
";

// === value format ===

fn escape(name: &str, out: &mut String) {
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3)?;
        out.push(match code {
            "%25" => '%',
            "%7C" | "%7c" => '|',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The Redis value of a pin (format `v1`, see the module doc).
pub fn encode(pin: &Pin) -> String {
    let mut out = String::with_capacity(48);
    out.push_str(if pin.ending { "v1|1|" } else { "v1|0|" });
    out.push_str(itoa::Buffer::new().format(pin.generation));
    out.push('|');
    out.push_str(itoa::Buffer::new().format(pin.created_at_ms));
    out.push('|');
    escape(&names::name(pin.cluster), &mut out);
    out.push('|');
    escape(&names::name(pin.rule), &mut out);
    out
}

/// A name from a Redis value as an id of this process.
fn name_id(escaped: &str) -> Option<NameId> {
    let name = unescape(escaped)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    Some(names::lookup(&name).unwrap_or_else(|| names::intern(&name)))
}

/// Read a value written by [`encode`]; `None` for anything else (another version, garbage).
pub fn decode(v: &str) -> Option<Pin> {
    let mut f = v.splitn(6, '|');
    if f.next()? != "v1" {
        return None;
    }
    let ending = match f.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let generation = f.next()?.parse().ok()?;
    let created_at_ms = f.next()?.parse().ok()?;
    let cluster = name_id(f.next()?)?;
    let rule = name_id(f.next()?)?;
    Some(Pin {
        cluster,
        rule,
        generation,
        created_at_ms,
        ending,
    })
}

/// The URL without its password, for views and logs.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

// === the store ===

/// A pin change that could not reach Redis yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Write the local pin with `SET NX PX ttl_ms`.
    Put { ttl_ms: u64 },
    /// Run [`END_LUA`] with `grace_ms`.
    End { grace_ms: u64 },
    /// `DEL`.
    Release,
}

impl Pending {
    /// The change that stands for `self` followed by `next`.
    fn then(self, next: Pending) -> Pending {
        match (self, next) {
            // Never written yet and now ending: write it ending, with the grace as its TTL.
            (Pending::Put { .. }, Pending::End { grace_ms }) => Pending::Put { ttl_ms: grace_ms },
            (_, n) => n,
        }
    }
}

/// A keeper batch that failed; `connection` when it is worth retrying once Redis answers.
struct PipeError {
    connection: bool,
    message: String,
}

/// The connection failed (as opposed to Redis answering with an error).
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// The kept connection was found dead on use (the server closed it while it sat idle): the
/// command never reached Redis, or reached a server that is gone.
fn is_stale_connection(e: &RedisError) -> bool {
    // Broken pipe, reset, EOF, …: the multiplexed connection is gone and the manager replaces
    // it; `is_unrecoverable_error` is the client's own "reconnect" verdict.
    e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// The four `op` labels of spec §6, with their handles resolved once.
struct Op {
    label: &'static str,
    timer: Histogram,
    errors: IntCounter,
}

impl Op {
    fn new(m: &Metrics, label: &'static str) -> Op {
        Op {
            label,
            timer: store_timer(m, label),
            errors: store_error(m, label),
        }
    }
}

#[derive(Default)]
struct Health {
    last_error: Option<String>,
    last_error_at_ms: u64,
    degraded_since_ms: Option<u64>,
}

/// The Redis store. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    url: String,
    prefix: String,
    timeout: Duration,
    /// The pins this replica has seen; serves turns while Redis is away.
    local: MemoryStore,
    metrics: Metrics,
    get_script: Script,
    end_script: Script,
    op_get: Op,
    op_put: Op,
    op_touch: Op,
    op_release: Op,
    /// False while degraded: turns skip Redis until the keeper has restored it.
    healthy: AtomicBool,
    health: Mutex<Health>,
    pending: Mutex<HashMap<CompactString, Pending, ahash::RandomState>>,
    dropped: AtomicU64,
    /// Clusters the `graygate_pins` gauge was set for, so they can go back to 0.
    gauge_clusters: Mutex<HashSet<NameId>>,
    /// The Redis server's `run_id` when last seen answering: the same one after an outage
    /// means Redis kept its data and the re-seed can be skipped.
    run_id: Mutex<Option<String>>,
}

impl RedisStore {
    /// Set up the client; no connection is made here (it is made on first use and kept), so a
    /// gateway starts even while Redis is away. Fails only on a URL the client cannot use.
    pub fn new(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
        metrics: Metrics,
    ) -> Result<RedisStore, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("pins.store `{}`: {e}", masked_url(url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1).max(timeout)))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("pins.store `{}`: {e}", masked_url(url)))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                url: masked_url(url),
                prefix: key_prefix.to_string(),
                timeout,
                local: MemoryStore::new(Metrics::new()),
                op_get: Op::new(&metrics, "get"),
                op_put: Op::new(&metrics, "put"),
                op_touch: Op::new(&metrics, "touch"),
                op_release: Op::new(&metrics, "release"),
                metrics,
                get_script: Script::new(GET_LUA),
                end_script: Script::new(END_LUA),
                healthy: AtomicBool::new(true),
                health: Mutex::new(Health::default()),
                pending: Mutex::new(HashMap::default()),
                dropped: AtomicU64::new(0),
                gauge_clusters: Mutex::new(HashSet::new()),
                run_id: Mutex::new(None),
            }),
        })
    }

    fn key(&self, userid: &str) -> String {
        let mut k = String::with_capacity(self.inner.prefix.len() + userid.len());
        k.push_str(&self.inner.prefix);
        k.push_str(userid);
        k
    }

    /// The local table (tests and views).
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    pub fn pending_len(&self) -> usize {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// A JSON view of the store's state for `/admin/config`.
    pub fn view(&self) -> serde_json::Value {
        let h = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        let at = |ms: u64| {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        serde_json::json!({
            "kind": "redis",
            "state": if self.is_healthy() { "ok" } else { "degraded" },
            "url": self.inner.url,
            "key_prefix": self.inner.prefix,
            "timeout_ms": self.inner.timeout.as_millis() as u64,
            "local_pins": self.inner.local.len(),
            "pending_writes": self.pending_len(),
            "dropped_writes": self.inner.dropped.load(Ordering::Relaxed),
            "degraded_since": h.degraded_since_ms.map(at),
            "last_error": h.last_error,
            "last_error_at": h.last_error.as_ref().map(|_| at(h.last_error_at_ms)),
        })
    }

    // === the command path ===

    /// Run one Redis command for `op` under `redis.timeout`. `Err(())` means "use the local
    /// table": Redis was skipped (degraded), failed, or was late; the error is counted.
    ///
    /// `send` makes the command's future on a connection handle. A command that fails because
    /// the kept connection turned out dead (Redis restarted while this replica was idle: the
    /// first write gets a broken pipe) is sent once more, on the connection the manager opens
    /// in its place, within the same timeout; every command here is safe to repeat.
    async fn call<T, F, S>(&self, op: &Op, mut send: S) -> Result<T, ()>
    where
        S: FnMut(ConnectionManager) -> F + Send,
        F: Future<Output = RedisResult<T>> + Send,
    {
        if !self.is_healthy() {
            op.errors.inc();
            return Err(());
        }
        let start = Instant::now();
        let conn = self.inner.conn.clone();
        let attempt = async {
            match send(conn.clone()).await {
                Err(e) if is_stale_connection(&e) => {
                    tracing::debug!(op = op.label, error = %e, "redis connection was dead; sending again on a new one");
                    send(conn).await
                }
                r => r,
            }
        };
        let r = tokio::time::timeout(self.inner.timeout, attempt).await;
        op.timer.observe(start.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                op.errors.inc();
                self.failed(op.label, &e);
                Err(())
            }
            Err(_) => {
                op.errors.inc();
                self.degrade(format!(
                    "{}: no answer within {:?}",
                    op.label, self.inner.timeout
                ));
                Err(())
            }
        }
    }

    fn failed(&self, op: &str, e: &RedisError) {
        if is_connection_error(e) {
            self.degrade(format!("{op}: {e}"));
        } else {
            // An answer, but an error one (e.g. a wrong type at the key): this turn uses the
            // local table, the connection stays in use.
            tracing::warn!(op, error = %e, "redis pin store: error answer");
            self.note_error(format!("{op}: {e}"));
        }
    }

    fn note_error(&self, msg: String) {
        let mut h = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        h.last_error = Some(msg);
        h.last_error_at_ms = wall_ms();
    }

    fn degrade(&self, msg: String) {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %msg, "redis pin store degraded: serving pins from the local table");
            let mut h = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
            h.degraded_since_ms = Some(wall_ms());
        }
        self.note_error(msg);
    }

    /// Queue a change for the keeper (bounded).
    fn queue(&self, userid: &str, op: Pending) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cur) = p.get_mut(userid) {
            *cur = cur.then(op);
            return;
        }
        if p.len() >= MAX_PENDING {
            drop(p);
            let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "redis pin store: write queue full; the re-seed after recovery covers new pins"
                );
            }
            return;
        }
        p.insert(CompactString::from(userid), op);
    }

    fn unqueue(&self, userid: &str) -> Option<Pending> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(userid)
    }

    fn queued_put(&self, userid: &str) -> bool {
        matches!(
            self.inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(userid),
            Some(Pending::Put { .. })
        )
    }

    /// Make the local table hold `pin` for `userid` with `ttl` left.
    async fn remember(&self, userid: &str, pin: Pin, ttl: Duration) {
        let local = &self.inner.local;
        match local.peek(userid).await {
            Some(p) if p == pin => {
                if !pin.ending {
                    local.get(userid, ttl).await;
                }
            }
            Some(_) => {
                local.release(userid, ReleaseReason::Admin).await;
                local.create(userid, pin, ttl).await;
            }
            None => {
                local.create(userid, pin, ttl).await;
            }
        }
    }

    fn count_created(&self, pin: &Pin) {
        self.inner
            .metrics
            .pins_created
            .with_label_values(&[&names::name(pin.cluster)])
            .inc();
    }

    fn count_released(&self, pin: &Pin, reason: ReleaseReason) {
        self.inner
            .metrics
            .pins_released
            .with_label_values(&[&names::name(pin.cluster), reason.as_str()])
            .inc();
    }

    // === the keeper ===

    /// Start the background task: local expiry and the `graygate_pins` gauge every
    /// `sweep_every`; while degraded, probe Redis with backoff and restore it. Runs until the
    /// handle is aborted.
    pub fn spawn_keeper(&self, sweep_every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_sweep = Instant::now();
            let mut next_probe = Instant::now();
            let mut backoff = TICK;
            let mut asked_run_id = false;
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= next_sweep {
                    store.inner.local.sweep();
                    store.set_gauge();
                    next_sweep = now + sweep_every;
                }
                if store.is_healthy() {
                    backoff = TICK;
                    if !asked_run_id {
                        asked_run_id = true;
                        let id = store.fetch_run_id().await;
                        *store.inner.run_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
                    }
                    if store.pending_len() > 0 {
                        // Queued in the moment the store came back; write them now.
                        if let Err(e) = store.flush_pending().await {
                            store.degrade(e);
                        }
                    }
                    continue;
                }
                if now < next_probe {
                    continue;
                }
                match store.restore().await {
                    Ok(reseeded) => {
                        let mut h = store.inner.health.lock().unwrap_or_else(|p| p.into_inner());
                        h.degraded_since_ms = None;
                        drop(h);
                        store.inner.healthy.store(true, Ordering::Release);
                        tracing::info!(reseeded, "redis pin store ok again");
                        backoff = TICK;
                    }
                    Err(e) => {
                        store.note_error(e);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        next_probe = Instant::now() + backoff;
                    }
                }
            }
        })
    }

    /// Set `graygate_pins{cluster}` from the local table.
    fn set_gauge(&self) {
        let counts = self.inner.local.counts();
        let mut seen = self
            .inner
            .gauge_clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        seen.extend(counts.keys().copied());
        for id in seen.iter() {
            let n = counts.get(id).copied().unwrap_or(0);
            self.inner
                .metrics
                .pins
                .with_label_values(&[&names::name(*id)])
                .set(n as i64);
        }
    }

    /// A long timeout for the keeper's batches.
    fn batch_timeout(&self) -> Duration {
        (self.inner.timeout * 20).max(Duration::from_secs(2))
    }

    fn known_run_id(&self) -> Option<String> {
        self.inner
            .run_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server's `run_id` from `INFO server` (`None` when INFO is not allowed or late).
    async fn fetch_run_id(&self) -> Option<String> {
        let mut conn = self.inner.conn.clone();
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info = tokio::time::timeout(self.batch_timeout(), cmd.query_async::<String>(&mut conn))
            .await
            .ok()?
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string())
    }

    /// Probe, write the queue, and re-seed every live local pin unless Redis is the same
    /// process as before the outage (it kept its data); the number re-seeded.
    async fn restore(&self) -> Result<usize, String> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.batch_timeout(), ping.query_async::<String>(&mut conn))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("probe: {e}")),
            Err(_) => return Err("probe: no answer".into()),
        }
        let before = self.known_run_id();
        let now = self.fetch_run_id().await;
        self.flush_pending().await?;
        let n = match (&before, &now) {
            (Some(b), Some(n)) if b == n => 0,
            _ => self.reseed().await?,
        };
        *self.inner.run_id.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(n)
    }

    /// Write queued changes in pipelines; on failure the batch goes back to the queue.
    async fn flush_pending(&self) -> Result<(), String> {
        loop {
            let batch: Vec<(CompactString, Pending)> = {
                let mut p = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                let keys: Vec<CompactString> = p.keys().take(BATCH).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| p.remove(&k).map(|v| (k, v)))
                    .collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (userid, op) in &batch {
                let key = self.key(userid);
                match *op {
                    Pending::Put { ttl_ms } => {
                        if let Some(pin) = self.inner.local.peek(userid).await {
                            pipe.cmd("SET")
                                .arg(&key)
                                .arg(encode(&pin))
                                .arg("NX")
                                .arg("PX")
                                .arg(ttl_ms.max(1))
                                .ignore();
                        }
                    }
                    Pending::End { grace_ms } => {
                        pipe.cmd("EVAL")
                            .arg(END_LUA)
                            .arg(1)
                            .arg(&key)
                            .arg(grace_ms.max(1))
                            .ignore();
                    }
                    Pending::Release => {
                        pipe.cmd("DEL").arg(&key).ignore();
                    }
                }
            }
            if let Err(e) = self.run_pipe(&pipe).await {
                if !e.connection {
                    // Redis answered, with an error: retrying would fail the same way.
                    tracing::warn!(error = %e.message, dropped = batch.len(), "redis pin store: write-back refused");
                    self.note_error(e.message);
                    continue;
                }
                for (userid, op) in batch {
                    let mut p = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                    // A change queued meanwhile is newer than the one that failed.
                    if !p.contains_key(&userid) && p.len() < MAX_PENDING {
                        p.insert(userid, op);
                    }
                }
                return Err(e.message);
            }
        }
    }

    /// Write every live local pin with `SET NX`: refills a Redis that lost its data, never
    /// overwrites a pin that is there.
    async fn reseed(&self) -> Result<usize, String> {
        let local = &self.inner.local;
        let mut n = 0;
        for i in 0..local.shard_count() {
            let entries = local.live_in_shard(i);
            for chunk in entries.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for (userid, pin, left) in chunk {
                    pipe.cmd("SET")
                        .arg(self.key(userid))
                        .arg(encode(pin))
                        .arg("NX")
                        .arg("PX")
                        .arg((left.as_millis() as u64).max(1))
                        .ignore();
                }
                if let Err(e) = self.run_pipe(&pipe).await {
                    if e.connection {
                        return Err(e.message);
                    }
                    tracing::warn!(error = %e.message, "redis pin store: re-seed batch refused");
                    self.note_error(e.message);
                    continue;
                }
                n += chunk.len();
            }
        }
        Ok(n)
    }

    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), PipeError> {
        let mut conn = self.inner.conn.clone();
        match tokio::time::timeout(self.batch_timeout(), pipe.exec_async(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PipeError {
                connection: is_connection_error(&e),
                message: format!("write-back: {e}"),
            }),
            Err(_) => Err(PipeError {
                connection: true,
                message: "write-back: no answer".into(),
            }),
        }
    }
}

impl PinStore for RedisStore {
    async fn get(&self, userid: &str, idle_ttl: Duration) -> Option<Pin> {
        let idle_ms = (idle_ttl.as_millis() as u64).max(1);
        let mut inv = self.inner.get_script.prepare_invoke();
        inv.key(self.key(userid)).arg(idle_ms);
        let inv = &inv;
        let answer = self
            .call(&self.inner.op_get, |mut conn| async move {
                inv.invoke_async::<Option<(String, i64)>>(&mut conn).await
            })
            .await;
        let local = &self.inner.local;
        match answer {
            Ok(Some((value, pttl))) => match decode(&value) {
                Some(pin) => {
                    let left = if pttl > 0 { pttl as u64 } else { idle_ms };
                    self.remember(userid, pin, Duration::from_millis(left))
                        .await;
                    Some(pin)
                }
                None => {
                    self.inner.op_get.errors.inc();
                    self.note_error("get: a pin value this version cannot read".into());
                    local.get(userid, idle_ttl).await
                }
            },
            Ok(None) => {
                if self.queued_put(userid) {
                    // Created while Redis was away and not written yet: ours is the pin.
                    return local.get(userid, idle_ttl).await;
                }
                // Released or expired in Redis: forget the local copy too.
                local.release(userid, ReleaseReason::Admin).await;
                None
            }
            Err(()) => local.get(userid, idle_ttl).await,
        }
    }

    async fn create(&self, userid: &str, pin: Pin, ttl: Duration) -> Pin {
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(userid))
            .arg(encode(&pin))
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl_ms);
        let cmd = &cmd;
        let answer = self
            .call(&self.inner.op_put, |mut conn| async move {
                cmd.query_async::<Option<String>>(&mut conn).await
            })
            .await;
        match answer {
            Ok(None) => {
                self.count_created(&pin);
                self.remember(userid, pin, ttl).await;
                pin
            }
            Ok(Some(winner)) => match decode(&winner) {
                Some(w) => {
                    self.remember(userid, w, ttl).await;
                    w
                }
                None => {
                    self.inner.op_put.errors.inc();
                    self.note_error("put: a pin value this version cannot read".into());
                    pin
                }
            },
            Err(()) => {
                let kept = self.inner.local.create(userid, pin, ttl).await;
                if kept == pin {
                    self.count_created(&pin);
                    self.queue(userid, Pending::Put { ttl_ms });
                }
                kept
            }
        }
    }

    async fn end(&self, userid: &str, end_grace: Duration) {
        let grace_ms = (end_grace.as_millis() as u64).max(1);
        let mut inv = self.inner.end_script.prepare_invoke();
        inv.key(self.key(userid)).arg(grace_ms);
        let inv = &inv;
        let answer = self
            .call(&self.inner.op_touch, |mut conn| async move {
                inv.invoke_async::<i64>(&mut conn).await
            })
            .await;
        self.inner.local.end(userid, end_grace).await;
        if answer.is_err() {
            self.queue(userid, Pending::End { grace_ms });
        }
    }

    async fn release(&self, userid: &str, reason: ReleaseReason) -> bool {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.key(userid));
        let cmd = &cmd;
        let answer = self
            .call(&self.inner.op_release, |mut conn| async move {
                cmd.query_async::<Option<String>>(&mut conn).await
            })
            .await;
        let local_pin = self.inner.local.peek(userid).await;
        self.inner.local.release(userid, reason).await;
        let pin = match answer {
            Ok(value) => {
                self.unqueue(userid);
                value.as_deref().and_then(decode).or(local_pin)
            }
            Err(()) => {
                self.queue(userid, Pending::Release);
                local_pin
            }
        };
        match pin {
            Some(p) => {
                self.count_released(&p, reason);
                true
            }
            None => false,
        }
    }

    async fn peek(&self, userid: &str) -> Option<Pin> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(userid));
        let cmd = &cmd;
        let answer = self
            .call(&self.inner.op_get, |mut conn| async move {
                cmd.query_async::<Option<String>>(&mut conn).await
            })
            .await;
        match answer {
            Ok(Some(v)) => match decode(&v) {
                Some(p) => Some(p),
                None => self.inner.local.peek(userid).await,
            },
            Ok(None) if self.queued_put(userid) => self.inner.local.peek(userid).await,
            Ok(None) => None,
            Err(()) => self.inner.local.peek(userid).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(cluster: &str, rule: &str, ending: bool) -> Pin {
        Pin {
            cluster: names::intern(cluster),
            rule: names::intern(rule),
            generation: 7,
            created_at_ms: 1_700_000_000_123,
            ending,
        }
    }

    #[test]
    fn value_round_trip() {
        for p in [
            pin("canary", "one-in-ten", false),
            pin("stable", "default", true),
            pin("we|ird%name", "r|%7C", false),
        ] {
            let v = encode(&p);
            assert!(v.starts_with("v1|"), "{v}");
            assert_eq!(decode(&v), Some(p), "{v}");
        }
    }

    #[test]
    fn value_format_is_the_documented_one() {
        assert_eq!(
            encode(&pin("canary", "one-in-ten", false)),
            "v1|0|7|1700000000123|canary|one-in-ten"
        );
        assert_eq!(
            encode(&pin("stable", "default", true)),
            "v1|1|7|1700000000123|stable|default"
        );
    }

    #[test]
    fn unreadable_values_are_refused() {
        for v in [
            "",
            "v2|0|7|1|canary|r",
            "v1|2|7|1|canary|r",
            "v1|0|x|1|canary|r",
            "v1|0|7|1|canary",
            "v1|0|7|1||r",
            "v1|0|7|1|bad%zzescape|r",
            "v1|0|7|1|trailing%2|r",
        ] {
            assert_eq!(decode(v), None, "{v:?}");
        }
    }

    #[test]
    fn pending_changes_merge() {
        let put = Pending::Put { ttl_ms: 1000 };
        assert_eq!(
            put.then(Pending::End { grace_ms: 5 }),
            Pending::Put { ttl_ms: 5 }
        );
        assert_eq!(put.then(Pending::Release), Pending::Release);
        assert_eq!(Pending::Release.then(put), put);
        assert_eq!(
            Pending::End { grace_ms: 5 }.then(Pending::Release),
            Pending::Release
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            masked_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            masked_url("rediss://app:pw@redis:6380"),
            "rediss://app:***@redis:6380"
        );
        assert_eq!(masked_url("redis://pw@redis"), "redis://***@redis");
        assert_eq!(masked_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
