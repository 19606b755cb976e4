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
//! | `note` (a failure or transfer seen) | `EVALSHA` of [`NOTE_LUA`] |
//!
//! The ending flag decides whether a turn may extend a pin, so the refresh is a Lua script: a
//! plain `GETEX … PX` would stretch an ending pin back to `idle_ttl`.
//!
//! # The value
//!
//! `v1|<ending 0/1>|<generation>|<created_at_ms>|<cluster>|<rule>`, names with `%` and `|`
//! escaped as `%25` and `%7C`; a pin that carries outcome facts or a rollout epoch (spec §11)
//! is `v2|<ending>|<flags: 1 failed, 2 transferred>|<epoch>|<generation>|<created_at_ms>|<cluster>|<rule>`
//! ([`NOTE_LUA`] adds flags in place, keeping the TTL). The version comes first and the ending flag second in every
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
//! again the keeper writes the queue, then re-seeds Redis (`SET NX`, so nothing newer is
//! overwritten), and only then turns the store back to `ok`. The re-seed is skipped when
//! Redis's `run_id` is the one seen before the outage (the same process kept its data: a
//! network blip or a slow moment); it covers only the pins created during the outage when the
//! data's epoch ([`EPOCH_KEY`]) is the one seen before (another process with the same data: a
//! failover, a restart from disk), so a pin released in Redis while it was healthy stays
//! released; and it writes every live local pin when the epoch is new (a restart that lost the
//! data: the replicas' tables are all that is left).
//!
//! # Sentinel (`redis+sentinel://`)
//!
//! `redis+sentinel://[password@]host1:port1,host2:port2/MASTER_NAME/DB` names Sentinels instead
//! of a server (spec §13). The store starts degraded; the keeper asks every Sentinel at once
//! (`SENTINEL get-master-addr-by-name`, each bounded by [`SENTINEL_TIMEOUT`]), takes the first
//! answer whose server says `ROLE` master, and connects there; that is the same path as the
//! recovery above, so pins queued meanwhile are written and the local table re-seeded (SET NX)
//! before the store is `ok`. While the store is ok the keeper asks again every
//! [`SENTINEL_EVERY`]; a different master (a failover) degrades the store and the same path
//! moves it to the new master. A `READONLY` answer (the old master came back as a replica) and
//! any connection error degrade it too. While no Sentinel answers, or the one named is not
//! master yet, turns are served from the local table as in any outage. The password is the data
//! servers'; the Sentinels are asked without one.
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use compact_str::CompactString;
use prometheus::{Histogram, IntCounter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, RedisResult, Script, ServerErrorKind,
};
use tokio::time::Instant;

use super::lifecycle::{call_outcome, Gone};
use super::memory::MemoryStore;
use super::{Facts, OnRelease, Pin, PinStore, ReleaseReason};
use crate::clock::wall_ms;
use crate::ids::{self as names, NameId};
use crate::metrics::{store_error, store_timer, Metrics};

/// Pin changes queued while Redis is away, at most. Past it new entries are dropped (and
/// counted): the re-seed after recovery still writes every live local pin.
pub const MAX_PENDING: usize = 100_000;
/// The key (after the prefix) naming the data's epoch: a random value set by the first replica
/// to find it missing, so that a Redis that lost its data (a restart without persistence) is
/// told from one that kept it. No userid is a NUL byte and a word.
const EPOCH_KEY: &str = "\u{0}epoch";
/// Commands per pipeline when the keeper writes the queue or re-seeds.
const BATCH: usize = 500;
/// The keeper's tick; also the first probe delay after a failure.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait between two probes while Redis stays away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Names longer than this in a Redis value are not interned (the value is unreadable).
const MAX_NAME: usize = 256;
/// One Sentinel question (connect and answer), and the master's `ROLE` check.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a healthy store asks the Sentinels whether the master is still the same.
pub const SENTINEL_EVERY: Duration = Duration::from_secs(1);
/// Sentinels in one URL, at most.
const MAX_SENTINELS: usize = 16;

/// What follows the pin prefix in the names of the two keys that let expired pins settle their
/// call's outcome exactly once (module doc, "Outcomes"). Longer than any userid (at most 64
/// characters), so no pin key can ever be one of them.
pub const OUTCOME_KEYS: &str =
    "~graygate~call-outcomes~these-keys-are-longer-than-any-userid-can-be~";

// Every script below takes KEYS = [pin key, deadline index (ZSET), last values (HASH)] and has
// the userid as its last ARGV.

/// Read a pin and refresh its lifetime, unless it is ending. Returns `{value, pttl_ms}` or nil.
pub const GET_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.match(v, '^v%d+|1|') then
  return {v, redis.call('PTTL', KEYS[1])}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]), ARGV[2])
return {v, tonumber(ARGV[1])}
";

/// First writer wins: `SET NX GET PX`, and on a win the pin's deadline and value for the
/// outcome. Returns nil when this value was stored, else the value that is there.
pub const CREATE_LUA: &str = r"
local old = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if old then return old end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
return false
";

/// Mark a pin ending: it lives `ARGV[1]` ms more, whatever later turns do. Returns 1 when a pin
/// was there.
pub const END_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.match(v, '^v%d+|1|') then return 1 end
local nv = string.gsub(v, '^(v%d+|)0|', '%11|', 1)
redis.call('SET', KEYS[1], nv, 'PX', ARGV[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]), ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], nv)
return 1
";

/// Release a pin: `GETDEL`, and its outcome entries go with it. Returns the value, or nil when
/// there was no pin. Only one replica can get a live pin's value: that one settles the outcome.
pub const RELEASE_LUA: &str = r"
local v = redis.call('GETDEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return v
";

/// Take up to `ARGV[2]` pins whose deadline has passed and whose key is gone (expired in
/// Redis): removed from the index, returned as `{userid, value, ...}` for their outcome. The
/// script runs atomically, so each expired pin is returned to exactly one replica. A pin whose
/// key still lives (re-seeded after an outage) gets its deadline back from its TTL.
/// KEYS = [index, values], ARGV = [pin key prefix, limit].
pub const SWEEP_LUA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, u in ipairs(due) do
  local left = redis.call('PTTL', ARGV[1] .. u)
  if left > 0 then
    redis.call('ZADD', KEYS[1], now + left, u)
  else
    redis.call('ZREM', KEYS[1], u)
    local v = redis.call('HGET', KEYS[2], u)
    redis.call('HDEL', KEYS[2], u)
    if v and left == -2 then
      table.insert(out, u)
      table.insert(out, v)
    end
  end
end
return out
";

/// Expired pins taken per sweep script run, and runs per keeper tick at most.
const SWEEP_BATCH: usize = 500;
const SWEEP_RUNS: usize = 20;

/// Add outcome facts (`ARGV[1]`: 1 failed, 2 transferred) to a pin, keeping its TTL; a `v1`
/// value becomes `v2` (epoch 0). Returns 1 when a pin was there.
pub const NOTE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local add = tonumber(ARGV[1])
local e, rest = string.match(v, '^v1|([01])|(.*)$')
if e then
  v = 'v2|' .. e .. '|0|0|' .. rest
end
local e2, f, tail = string.match(v, '^v2|([01])|(%d)|(.*)$')
if not e2 then return 0 end
local nf = bit.bor(tonumber(f), add)
if nf == tonumber(f) and not e then return 1 end
local nv = 'v2|' .. e2 .. '|' .. nf .. '|' .. tail
redis.call('SET', KEYS[1], nv, 'KEEPTTL')
redis.call('HSET', KEYS[3], ARGV[2], nv)
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

/// The Redis value of a pin (see the module doc): `v1` for a pin with no outcome facts and no
/// rollout epoch (what every version reads), else `v2`.
pub fn encode(pin: &Pin) -> String {
    let mut out = String::with_capacity(56);
    let plain = pin.epoch == 0 && !pin.failed && !pin.transferred;
    out.push_str(if plain { "v1|" } else { "v2|" });
    out.push_str(if pin.ending { "1|" } else { "0|" });
    if !plain {
        out.push(char::from(b'0' + flags_of(pin)));
        out.push('|');
        out.push_str(itoa::Buffer::new().format(pin.epoch));
        out.push('|');
    }
    out.push_str(itoa::Buffer::new().format(pin.generation));
    out.push('|');
    out.push_str(itoa::Buffer::new().format(pin.created_at_ms));
    out.push('|');
    escape(&names::name(pin.cluster), &mut out);
    out.push('|');
    escape(&names::name(pin.rule), &mut out);
    out
}

/// The outcome facts as the `v2` flags digit: 1 failed, 2 transferred.
fn flags_of(pin: &Pin) -> u8 {
    u8::from(pin.failed) | (u8::from(pin.transferred) << 1)
}

/// A name from a Redis value as an id of this process.
fn name_id(escaped: &str) -> Option<NameId> {
    let name = unescape(escaped)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    // A name some replica runs; past the table's ceiling the value is unreadable (ids.rs).
    names::try_intern(&name)
}

/// Read a value written by [`encode`]; `None` for anything else (another version, garbage).
pub fn decode(v: &str) -> Option<Pin> {
    let (version, rest) = v.split_once('|')?;
    let v2 = match version {
        "v1" => false,
        "v2" => true,
        _ => return None,
    };
    let mut f = rest.splitn(if v2 { 7 } else { 5 }, '|');
    let ending = match f.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let (flags, epoch) = if v2 {
        let flags: u8 = f.next()?.parse().ok().filter(|&x: &u8| x <= 3)?;
        (flags, f.next()?.parse().ok()?)
    } else {
        (0, 0)
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
        epoch,
        failed: flags & 1 != 0,
        transferred: flags & 2 != 0,
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

// === Sentinel ===

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSpec {
    pub password: Option<String>,
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub db: i64,
}

pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Parse `redis+sentinel://[password@]host1:port1,host2:port2/MASTER_NAME/DB` (`/DB` optional,
/// default 0; a port may be left out for 26379).
pub fn parse_sentinel_url(url: &str) -> Result<SentinelSpec, String> {
    let rest = url
        .strip_prefix(SENTINEL_SCHEME)
        .ok_or_else(|| format!("not a {SENTINEL_SCHEME} URL"))?;
    let (hosts_part, path) = rest
        .split_once('/')
        .ok_or("no master name: write redis+sentinel://host:port,host:port/MASTER_NAME/DB")?;
    let (password, hosts) = match hosts_part.rsplit_once('@') {
        Some((pw, hosts)) => {
            // `:password@` and `user:password@` are read as the password alone.
            let pw = pw.rsplit_once(':').map_or(pw, |(_, p)| p);
            let pw = percent_decode(pw).ok_or("the password has a bad %-escape")?;
            (Some(pw).filter(|p| !p.is_empty()), hosts)
        }
        None => (None, hosts_part),
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let h = h.trim();
        if h.is_empty() {
            return Err("an empty Sentinel address".into());
        }
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{h}`: the port must be 1-65535"))?;
                (host, port)
            }
            _ => (h, 26379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{h}`: no host"));
        }
        sentinels.push((host.to_string(), port));
    }
    if sentinels.len() > MAX_SENTINELS {
        return Err(format!("at most {MAX_SENTINELS} Sentinels"));
    }
    let mut segs = path.split('/');
    let master = segs.next().unwrap_or_default();
    if master.is_empty() {
        return Err(
            "no master name: write redis+sentinel://host:port,host:port/MASTER_NAME/DB".into(),
        );
    }
    let db = match segs.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("`{d}`: the database must be a number"))?,
    };
    if segs.next().is_some_and(|s| !s.is_empty()) {
        return Err("more path than /MASTER_NAME/DB".into());
    }
    Ok(SentinelSpec {
        password,
        sentinels,
        master: master.to_string(),
        db,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Ask one Sentinel where the master is.
async fn ask_sentinel(host: &str, port: u16, master: &str) -> Result<(String, u16), String> {
    let info = ConnectionAddr::Tcp(host.to_string(), port)
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let ask = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| e.to_string())?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        addr.ok_or_else(|| format!("does not know a master `{master}`"))
    };
    tokio::time::timeout(SENTINEL_TIMEOUT * 2, ask)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
        .map_err(|e| format!("sentinel {host}:{port}: {e}"))
}

/// The connection info of a data server.
fn server_info(
    host: &str,
    port: u16,
    spec: &SentinelSpec,
    password: Option<&str>,
) -> Result<ConnectionInfo, String> {
    let mut redis = RedisConnectionInfo::default().set_db(spec.db);
    if let Some(pw) = spec.password.as_deref().or(password) {
        redis = redis.set_password(pw);
    }
    ConnectionAddr::Tcp(host.to_string(), port)
        .into_connection_info()
        .map(|info| info.set_redis_settings(redis))
        .map_err(|e| e.to_string())
}

/// Does the server at `info` say it is the master?
async fn is_master(info: ConnectionInfo) -> Result<bool, String> {
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let check = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| e.to_string())?;
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match role {
            redis::Value::Array(v) => matches!(
                v.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ),
            _ => false,
        })
    };
    tokio::time::timeout(SENTINEL_TIMEOUT * 2, check)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

/// Where the master is now: every Sentinel is asked at once, the first answer that names a
/// server saying `ROLE` master wins.
pub async fn find_master(
    spec: &SentinelSpec,
    password: Option<&str>,
) -> Result<(String, u16), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut asks: FuturesUnordered<_> = spec
        .sentinels
        .iter()
        .map(|(h, p)| ask_sentinel(h, *p, &spec.master))
        .collect();
    let mut errors = Vec::new();
    let mut tried = HashSet::new();
    while let Some(answer) = asks.next().await {
        match answer {
            Ok(addr) => {
                if !tried.insert(addr.clone()) {
                    continue;
                }
                match is_master(server_info(&addr.0, addr.1, spec, password)?).await {
                    Ok(true) => return Ok(addr),
                    Ok(false) => errors.push(format!("{}:{} is not master (yet)", addr.0, addr.1)),
                    Err(e) => errors.push(format!("master {}:{}: {e}", addr.0, addr.1)),
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
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

/// A `READONLY` answer: the server is a replica now.
fn is_read_only(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A connection manager that connects on first use and reconnects by itself.
fn connect_lazy(info: ConnectionInfo, timeout: Duration) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1).max(timeout)))
        .set_response_timeout(None)
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

/// The Redis password from the environment, for a `pins.store` URL without one (so that it
/// can come from a Kubernetes Secret and never sit in the ConfigMap): the file named by
/// `GRAYGATE_REDIS_PASSWORD_FILE` (trailing newline dropped), else `GRAYGATE_REDIS_PASSWORD`.
pub fn password_from_env() -> Result<Option<String>, String> {
    if let Some(file) = std::env::var_os("GRAYGATE_REDIS_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "GRAYGATE_REDIS_PASSWORD_FILE `{}`: {e}",
                std::path::Path::new(&file).display()
            )
        })?;
        let pw = text.trim_end_matches(['\r', '\n']);
        return Ok(Some(pw.to_string()).filter(|p| !p.is_empty()));
    }
    Ok(std::env::var("GRAYGATE_REDIS_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty()))
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
    /// The connection to the Redis server (with Sentinel: the master's). `None` only before
    /// the Sentinels first named a master, while the store is degraded.
    conn: ArcSwapOption<ConnectionManager>,
    /// `redis+sentinel://`: where to ask for the master, and the master in use.
    sentinel: Option<SentinelSpec>,
    master: Mutex<Option<(String, u16)>>,
    /// A password from the environment, for URLs without one.
    password: Option<String>,
    url: String,
    prefix: String,
    timeout: Duration,
    /// The pins this replica has seen; serves turns while Redis is away.
    local: MemoryStore,
    metrics: Metrics,
    get_script: Script,
    create_script: Script,
    end_script: Script,
    note_script: Script,
    release_script: Script,
    sweep_script: Script,
    /// The deadline index and the last values of pins (see [`OUTCOME_KEYS`]).
    index_key: String,
    values_key: String,
    /// Told about every pin this replica releases (the call's outcome, spec §11).
    on_release: OnceLock<OnRelease>,
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
    /// The value of the data's epoch key ([`EPOCH_KEY`]) when last seen: the same one after an
    /// outage means this Redis holds the data the replicas wrote before it (a failover to a
    /// replica, a restart from RDB/AOF), so only pins created during the outage are re-seeded.
    epoch: Mutex<Option<String>>,
}

impl RedisStore {
    /// Set up the client; no connection is made here (it is made on first use and kept), so a
    /// gateway starts even while Redis is away. Fails only on a URL the client cannot use.
    ///
    /// `password`: used when the URL has none (the gateway reads it from the environment, see
    /// [`password_from_env`]).
    pub fn new(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
        metrics: Metrics,
        password: Option<String>,
    ) -> Result<RedisStore, String> {
        let bad = |e: String| format!("pins.store `{}`: {e}", masked_url(url));
        let (conn, sentinel) = if url.starts_with(SENTINEL_SCHEME) {
            (None, Some(parse_sentinel_url(url).map_err(bad)?))
        } else {
            let mut info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
            if let (None, Some(pw)) = (info.redis_settings().password(), password.as_deref()) {
                let settings = info.redis_settings().clone().set_password(pw);
                info = info.set_redis_settings(settings);
            }
            (Some(connect_lazy(info, timeout).map_err(bad)?), None)
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                healthy: AtomicBool::new(sentinel.is_none()),
                conn: ArcSwapOption::from_pointee(conn),
                sentinel,
                master: Mutex::new(None),
                password,
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
                create_script: Script::new(CREATE_LUA),
                release_script: Script::new(RELEASE_LUA),
                sweep_script: Script::new(SWEEP_LUA),
                index_key: format!("{key_prefix}{OUTCOME_KEYS}deadlines"),
                values_key: format!("{key_prefix}{OUTCOME_KEYS}values"),
                end_script: Script::new(END_LUA),
                note_script: Script::new(NOTE_LUA),
                on_release: OnceLock::new(),
                health: Mutex::new(Health::default()),
                pending: Mutex::new(HashMap::default()),
                dropped: AtomicU64::new(0),
                gauge_clusters: Mutex::new(HashSet::new()),
                run_id: Mutex::new(None),
                epoch: Mutex::new(None),
            }),
        })
    }

    /// The connection in use (a cheap clone), if there is one yet.
    fn conn(&self) -> Option<ConnectionManager> {
        self.inner.conn.load().as_deref().cloned()
    }

    fn key(&self, userid: &str) -> String {
        let mut k = String::with_capacity(self.inner.prefix.len() + userid.len());
        k.push_str(&self.inner.prefix);
        k.push_str(userid);
        k
    }

    /// Be told about every pin this replica releases (set once).
    pub fn set_on_release(&self, f: OnRelease) {
        let _ = self.inner.on_release.set(f);
    }

    /// The three keys every pin script takes.
    fn keys(&self, inv: &mut redis::ScriptInvocation<'_>, userid: &str) {
        inv.key(self.key(userid))
            .key(&self.inner.index_key)
            .key(&self.inner.values_key);
    }

    /// The three keys, for `EVAL` in a pipeline.
    fn pipe_keys(&self, cmd: &mut redis::Cmd, userid: &str) {
        cmd.arg(3)
            .arg(self.key(userid))
            .arg(&self.inner.index_key)
            .arg(&self.inner.values_key);
    }

    /// Settle the outcome of pins that expired in Redis (any replica may take them; each is
    /// taken once). Returns how many.
    async fn sweep_expired(&self) -> usize {
        let mut total = 0;
        for _ in 0..SWEEP_RUNS {
            let Some(mut conn) = self.conn() else {
                return total;
            };
            let mut inv = self.inner.sweep_script.prepare_invoke();
            inv.key(&self.inner.index_key)
                .key(&self.inner.values_key)
                .arg(&self.inner.prefix)
                .arg(SWEEP_BATCH);
            let got = match tokio::time::timeout(
                self.batch_timeout(),
                inv.invoke_async::<Vec<String>>(&mut conn),
            )
            .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    self.note_error(format!("outcome sweep: {e}"));
                    return total;
                }
                Err(_) => return total,
            };
            let n = got.len() / 2;
            for pair in got.chunks_exact(2) {
                if let Some(pin) = decode(&pair[1]) {
                    let reason = if pin.ending {
                        ReleaseReason::EndGrace
                    } else {
                        ReleaseReason::Idle
                    };
                    self.settle(&pin, reason);
                }
            }
            total += n;
            if n < SWEEP_BATCH {
                break;
            }
        }
        total
    }

    fn settle(&self, pin: &Pin, reason: ReleaseReason) {
        if let Some(f) = self.inner.on_release.get() {
            f(pin, call_outcome(pin, Gone::Released(reason)));
        }
    }

    /// The connection in use now (it changes when Sentinel names a new master), for the
    /// rollouts' shared state; `None` until there is one.
    pub fn current_conn(&self) -> Option<ConnectionManager> {
        self.conn()
    }

    /// The key prefix and the command timeout, for the rollouts' shared state.
    pub fn prefix_and_timeout(&self) -> (&str, Duration) {
        (&self.inner.prefix, self.inner.timeout)
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
            "master": self.inner.sentinel.as_ref().map(|_| {
                self.master_addr().map(|(h, p)| format!("{h}:{p}"))
            }),
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
        let conn = match self.conn() {
            Some(c) if self.is_healthy() => c,
            _ => {
                op.errors.inc();
                return Err(());
            }
        };
        let start = Instant::now();
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
        if is_connection_error(e) || (self.inner.sentinel.is_some() && is_read_only(e)) {
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

    // === Sentinel ===

    /// The master in use (Sentinel mode).
    fn master_addr(&self) -> Option<(String, u16)> {
        self.inner
            .master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ask the Sentinels for the master and connect there if it is not the one in use.
    async fn follow_master(&self) -> Result<(), String> {
        let Some(spec) = &self.inner.sentinel else {
            return Ok(());
        };
        let addr = find_master(spec, self.inner.password.as_deref()).await?;
        if self.master_addr().as_ref() == Some(&addr) && self.conn().is_some() {
            return Ok(());
        }
        let info = server_info(&addr.0, addr.1, spec, self.inner.password.as_deref())?;
        let conn = connect_lazy(info, self.inner.timeout)?;
        tracing::info!(master = %format!("{}:{}", addr.0, addr.1), name = %spec.master, "redis pin store: following the master the Sentinels name");
        self.inner.conn.store(Some(Arc::new(conn)));
        *self.inner.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        Ok(())
    }

    /// While healthy: a Sentinel naming another master means a failover; degrade, and the
    /// keeper's recovery moves to it. Sentinels that do not answer change nothing.
    async fn check_master(&self) {
        let Some(spec) = &self.inner.sentinel else {
            return;
        };
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut asks: FuturesUnordered<_> = spec
            .sentinels
            .iter()
            .map(|(h, p)| ask_sentinel(h, *p, &spec.master))
            .collect();
        let current = self.master_addr();
        while let Some(answer) = asks.next().await {
            if let Ok(addr) = answer {
                if current.as_ref() != Some(&addr) {
                    self.degrade(format!(
                        "the Sentinels name a new master {}:{}",
                        addr.0, addr.1
                    ));
                }
                return;
            }
        }
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
            let mut next_sentinel_check = Instant::now() + SENTINEL_EVERY;
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= next_sweep {
                    store.inner.local.sweep();
                    store.set_gauge();
                    if store.is_healthy() {
                        let n = store.sweep_expired().await;
                        if n > 0 {
                            tracing::debug!(expired = n, "redis pins expired: outcomes settled");
                        }
                    }
                    next_sweep = now + sweep_every;
                }
                if store.is_healthy()
                    && store.inner.sentinel.is_some()
                    && now >= next_sentinel_check
                {
                    next_sentinel_check = now + SENTINEL_EVERY;
                    store.check_master().await;
                }
                if store.is_healthy() {
                    backoff = TICK;
                    if !asked_run_id {
                        asked_run_id = true;
                        let id = store.fetch_run_id().await;
                        *store.inner.run_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
                        let epoch = store.epoch().await.ok().flatten();
                        *store.inner.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
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
        let mut conn = self.conn()?;
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

    /// The data's epoch: the value of [`EPOCH_KEY`], set to a new random value when missing
    /// (`SET NX GET`: the first replica to find it missing sets it, the others read it).
    async fn epoch(&self) -> Result<Option<String>, String> {
        let mut conn = self.conn().ok_or("no server to connect to yet")?;
        let fresh = format!(
            "{:016x}{:016x}",
            wall_ms(),
            xxhash_rust::xxh3::xxh3_64(
                format!("{:p}{}", Arc::as_ptr(&self.inner), wall_ms()).as_bytes()
            )
        );
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(EPOCH_KEY))
            .arg(&fresh)
            .arg("NX")
            .arg("GET");
        match tokio::time::timeout(
            self.batch_timeout(),
            cmd.query_async::<Option<String>>(&mut conn),
        )
        .await
        {
            Ok(Ok(Some(there))) => Ok(Some(there)),
            Ok(Ok(None)) => Ok(Some(fresh)),
            Ok(Err(e)) if is_connection_error(&e) => Err(format!("epoch: {e}")),
            // Refused (an ACL without SET on it): unknown, as if the data were lost.
            Ok(Err(_)) => Ok(None),
            Err(_) => Err("epoch: no answer".into()),
        }
    }

    /// Probe, write the queue, and re-seed. Nothing when Redis is the same process as before
    /// the outage; only the pins created during the outage when it is another process with the
    /// same data (same epoch: a failover, a restart from disk), so that a pin released or
    /// expired in Redis before the outage does not come back; every live local pin when the
    /// data is new (a restart that lost it). The number re-seeded.
    async fn restore(&self) -> Result<usize, String> {
        if self.inner.sentinel.is_some() {
            self.follow_master().await?;
        }
        let mut conn = self.conn().ok_or("no server to connect to yet")?;
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
            _ => {
                let known = self
                    .inner
                    .epoch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let epoch = self.epoch().await?;
                let since = match (&known, &epoch) {
                    (Some(k), Some(e)) if k == e => {
                        let h = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
                        // A pin created by the turn that found Redis away is a little older
                        // than the outage: that turn waited for a few commands to time out.
                        let slack = (self.inner.timeout * 4).as_millis() as u64;
                        h.degraded_since_ms.map(|t| t.saturating_sub(slack))
                    }
                    _ => None,
                };
                let n = self.reseed(since).await?;
                *self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
                n
            }
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
                match *op {
                    Pending::Put { ttl_ms } => {
                        if let Some(pin) = self.inner.local.peek(userid).await {
                            let mut cmd = redis::cmd("EVAL");
                            cmd.arg(CREATE_LUA);
                            self.pipe_keys(&mut cmd, userid);
                            cmd.arg(encode(&pin))
                                .arg(ttl_ms.max(1))
                                .arg(userid.as_str());
                            pipe.add_command(cmd).ignore();
                        }
                    }
                    Pending::End { grace_ms } => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(END_LUA);
                        self.pipe_keys(&mut cmd, userid);
                        cmd.arg(grace_ms.max(1)).arg(userid.as_str());
                        pipe.add_command(cmd).ignore();
                    }
                    Pending::Release => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(RELEASE_LUA);
                        self.pipe_keys(&mut cmd, userid);
                        cmd.arg(userid.as_str());
                        pipe.add_command(cmd).ignore();
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

    /// Write every live local pin (created at or after `since`, when given) with `SET NX`:
    /// refills a Redis that lost its data, never overwrites a pin that is there.
    async fn reseed(&self, since: Option<u64>) -> Result<usize, String> {
        let local = &self.inner.local;
        let mut n = 0;
        for i in 0..local.shard_count() {
            let mut entries = local.live_in_shard(i);
            if let Some(t) = since {
                entries.retain(|(_, pin, _)| pin.created_at_ms >= t);
            }
            for chunk in entries.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for (userid, pin, left) in chunk {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(CREATE_LUA);
                    self.pipe_keys(&mut cmd, userid);
                    cmd.arg(encode(pin))
                        .arg((left.as_millis() as u64).max(1))
                        .arg(userid.as_str());
                    pipe.add_command(cmd).ignore();
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
        let Some(mut conn) = self.conn() else {
            return Err(PipeError {
                connection: true,
                message: "write-back: no server to connect to yet".into(),
            });
        };
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
        self.keys(&mut inv, userid);
        inv.arg(idle_ms).arg(userid);
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
        let mut inv = self.inner.create_script.prepare_invoke();
        self.keys(&mut inv, userid);
        inv.arg(encode(&pin)).arg(ttl_ms).arg(userid);
        let inv = &inv;
        let answer = self
            .call(&self.inner.op_put, |mut conn| async move {
                inv.invoke_async::<Option<String>>(&mut conn).await
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
        self.keys(&mut inv, userid);
        inv.arg(grace_ms).arg(userid);
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
        let mut inv = self.inner.release_script.prepare_invoke();
        self.keys(&mut inv, userid);
        inv.arg(userid);
        let inv = &inv;
        let answer = self
            .call(&self.inner.op_release, |mut conn| async move {
                inv.invoke_async::<Option<String>>(&mut conn).await
            })
            .await;
        let local_pin = self.inner.local.peek(userid).await;
        self.inner.local.release(userid, reason).await;
        // Exactly one replica gets the value back from GETDEL: that one settles the outcome.
        // While Redis is away the local pin settles it (the queued release removes the index
        // entry, so the sweep does not settle it again).
        let (pin, settle) = match answer {
            Ok(value) => {
                self.unqueue(userid);
                let p = value.as_deref().and_then(decode);
                (p.or(local_pin), p.is_some())
            }
            Err(()) => {
                self.queue(userid, Pending::Release);
                (local_pin, local_pin.is_some())
            }
        };
        match pin {
            Some(p) => {
                self.count_released(&p, reason);
                if settle {
                    self.settle(&p, reason);
                }
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

    async fn note(&self, userid: &str, facts: Facts) {
        let add = u8::from(facts.failed) | (u8::from(facts.transferred) << 1);
        if add == 0 {
            return;
        }
        self.inner.local.note(userid, facts).await;
        let mut inv = self.inner.note_script.prepare_invoke();
        self.keys(&mut inv, userid);
        inv.arg(add).arg(userid);
        let inv = &inv;
        // While Redis is away the local table keeps the facts; a pin created meanwhile is
        // written with them when Redis answers again.
        let _ = self
            .call(&self.inner.op_touch, |mut conn| async move {
                inv.invoke_async::<i64>(&mut conn).await
            })
            .await;
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
            epoch: 0,
            failed: false,
            transferred: false,
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
    fn v2_carries_the_outcome_facts_and_the_epoch() {
        let mut p = pin("canary", "v2-rollout", false);
        p.epoch = 1_764_000_000_000;
        p.transferred = true;
        let v = encode(&p);
        assert_eq!(v, "v2|0|2|1764000000000|7|1700000000123|canary|v2-rollout");
        assert_eq!(decode(&v), Some(p));
        p.failed = true;
        p.ending = true;
        assert_eq!(decode(&encode(&p)), Some(p));
        for bad in ["v2|0|4|1|7|1|c|r", "v2|0|x|1|7|1|c|r", "v2|0|1|7|1|c|r"] {
            assert_eq!(decode(bad), None, "{bad}");
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
    fn outcome_keys_are_no_userid() {
        assert!(OUTCOME_KEYS.chars().count() > crate::protocol::MAX_USERID_CHARS);
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
    fn sentinel_urls_parse() {
        let s = parse_sentinel_url("redis+sentinel://pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2")
            .unwrap();
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(
            s.sentinels,
            vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)]
        );
        assert_eq!((s.master.as_str(), s.db), ("mymaster", 2));
        let s = parse_sentinel_url("redis+sentinel://:p%40ss@sentinel-a,[::1]:5000/m").unwrap();
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!(
            s.sentinels,
            vec![("sentinel-a".into(), 26379), ("::1".into(), 5000)]
        );
        assert_eq!(s.db, 0);
        for bad in [
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel://10.0.0.1:26379/",
            "redis+sentinel://10.0.0.1:0/m",
            "redis+sentinel://10.0.0.1:x/m",
            "redis+sentinel://10.0.0.1,,10.0.0.2/m",
            "redis+sentinel://10.0.0.1/m/x",
            "redis+sentinel://10.0.0.1/m/0/extra",
            "redis+sentinel://p%zz@10.0.0.1/m",
        ] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            masked_url("redis+sentinel://pw@h1:1,h2:2/m/0"),
            "redis+sentinel://***@h1:1,h2:2/m/0"
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
