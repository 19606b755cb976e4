//! Rollout state shared by every replica through Redis (spec §11 with `pins.store: redis://`).
//!
//! Keys, under `<key_prefix><OUTCOME_KEYS>rollout:<rule>:<block hash>`:
//!
//! | key | what |
//! |---|---|
//! | `:state` | the state ([`State`] as JSON): status, step, epoch, last transition. Written only by compare-and-set ([`CAS_LUA`]), so a judge's decision and an operator's action never overwrite each other |
//! | `:counts:<epoch>` | a hash of the step's outcome counts and turn-time buckets per side, added to by every replica with `HINCRBY` (kept 7 days) |
//! | `:lease` | the judging lease (`SET NX PX`, renewed by its holder every tick, [`LEASE_LUA`]) |
//!
//! Every judge tick each replica, in one pipeline: adds the counts it gathered since the last
//! tick, reads the state, takes or renews the lease, and reads the step's totals. A replica that
//! finds a newer state follows it at once (share, epoch, and the transition logged, counted and
//! put in its history): every replica follows the one decision within a tick. Only the lease
//! holder judges. A replica that cannot reach Redis keeps the share it last knew, keeps its
//! counts for later, and judges nothing; operator actions on it answer 503.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::pins::redis::RedisStore;

use super::judge::{Counts, SideView, BUCKETS};
use super::machine::{Action, State, Transition};
use super::Handle;
use crate::vocab::CallOutcome;

/// Compare-and-set: `SET KEYS[1] ARGV[2]` when its value is `ARGV[1]` ("" = absent).
pub const CAS_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Take or renew the lease `KEYS[1]` for replica `ARGV[1]` for `ARGV[2]` ms; 1 when held.
pub const LEASE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// How long a lease lives without renewal.
pub const LEASE_MS: u64 = 2_000;
/// How long a step's counts are kept.
const COUNTS_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The Redis side of shared rollouts.
pub struct Shared {
    /// The pin store, whose connection (the master's, with Sentinel) is used for every call.
    store: RedisStore,
    base: String,
    /// This replica, as the lease holder's name.
    pub replica: String,
    timeout: Duration,
    cas: redis::Script,
}

const SIDES: [&str; 2] = ["f", "t"];
/// The outcome field names, in the order of the counters ([`CallOutcome::ALL`]).
const OUTCOMES: [&str; 4] = [
    CallOutcome::ALL[0].as_str(),
    CallOutcome::ALL[1].as_str(),
    CallOutcome::ALL[2].as_str(),
    CallOutcome::ALL[3].as_str(),
];

/// What a handle gathered since the last tick: outcome counts and turn buckets per side.
pub struct Deltas {
    pub epoch: u64,
    pub outcomes: [[u64; 4]; 2],
    pub turns: [Vec<u64>; 2],
}

impl Deltas {
    fn is_empty(&self) -> bool {
        self.outcomes.iter().flatten().all(|&n| n == 0)
            && self.turns.iter().flatten().all(|&n| n == 0)
    }
}

/// What one tick read for a rollout.
pub struct Read {
    pub state: Option<String>,
    pub holder: bool,
    pub totals: (SideView, SideView),
}

impl Shared {
    pub fn new(store: RedisStore) -> Shared {
        let (key_prefix, timeout) = store.prefix_and_timeout();
        let (key_prefix, timeout) = (key_prefix.to_string(), timeout);
        let replica = format!(
            "{:08x}-{}",
            crate::clock::wall_ms() as u32 ^ std::process::id().rotate_left(13),
            std::process::id()
        );
        Shared {
            store,
            base: format!("{key_prefix}{}rollout:", crate::pins::redis::OUTCOME_KEYS),
            replica,
            // The judge's round trips are not on the turn path: give them room.
            timeout: timeout.max(Duration::from_millis(500)),
            cas: redis::Script::new(CAS_LUA),
        }
    }

    /// The store's connection now, or why there is none.
    fn conn(&self) -> Result<ConnectionManager, String> {
        self.store
            .current_conn()
            .ok_or_else(|| "no Redis connection yet (no master known)".to_string())
    }

    fn key(&self, h: &Handle, what: &str) -> String {
        format!("{}{}:{:016x}:{what}", self.base, h.spec.name, h.spec.key)
    }

    /// One tick's round trip: add `deltas`, read the state, take or renew the lease, read the
    /// totals of `deltas.epoch`.
    pub async fn exchange(&self, h: &Handle, deltas: &Deltas) -> Result<Read, String> {
        let counts = self.key(h, &format!("counts:{}", deltas.epoch));
        let mut pipe = redis::pipe();
        if !deltas.is_empty() {
            for (s, side) in SIDES.iter().enumerate() {
                for (o, name) in OUTCOMES.iter().enumerate() {
                    let n = deltas.outcomes[s][o];
                    if n > 0 {
                        pipe.cmd("HINCRBY")
                            .arg(&counts)
                            .arg(format!("{side}.{name}"))
                            .arg(n)
                            .ignore();
                    }
                }
                for (i, &n) in deltas.turns[s].iter().enumerate() {
                    if n > 0 {
                        pipe.cmd("HINCRBY")
                            .arg(&counts)
                            .arg(format!("{side}.h{i}"))
                            .arg(n)
                            .ignore();
                    }
                }
            }
            pipe.cmd("PEXPIRE").arg(&counts).arg(COUNTS_TTL_MS).ignore();
        }
        pipe.cmd("GET").arg(self.key(h, "state"));
        pipe.cmd("EVAL")
            .arg(LEASE_LUA)
            .arg(1)
            .arg(self.key(h, "lease"))
            .arg(&self.replica)
            .arg(LEASE_MS);
        pipe.cmd("HGETALL").arg(&counts);
        let mut conn = self.conn()?;
        let (state, holder, fields): (Option<String>, i64, Vec<(String, u64)>) =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| format!("no answer within {:?}", self.timeout))?
                .map_err(|e| e.to_string())?;
        Ok(Read {
            state,
            holder: holder == 1,
            totals: totals(&fields),
        })
    }

    /// Write `new` over `old` (`None`: the key must be absent); false when someone else wrote
    /// first.
    pub async fn cas(&self, h: &Handle, old: Option<&str>, new: &str) -> Result<bool, String> {
        let mut conn = self.conn()?;
        let mut inv = self.cas.prepare_invoke();
        inv.key(self.key(h, "state"))
            .arg(old.unwrap_or(""))
            .arg(new);
        let r: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        Ok(r == 1)
    }

    /// The state as stored now.
    pub async fn get_state(&self, h: &Handle) -> Result<Option<String>, String> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(h, "state"));
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }

    /// An operator's action, decided on the shared state and written by compare-and-set.
    pub async fn act(
        &self,
        h: &Handle,
        now_ms: u64,
        action: Action,
        reason: Option<&str>,
    ) -> Result<Result<(State, Transition), String>, String> {
        for _ in 0..5 {
            let raw = self.get_state(h).await?;
            let mut st = match raw.as_deref().map(serde_json::from_str::<State>) {
                Some(Ok(s)) => s,
                _ => h.state(),
            };
            let t = match st.act(&h.spec, now_ms, action, reason) {
                Ok(t) => t,
                Err(msg) => return Ok(Err(msg)),
            };
            let new = serde_json::to_string(&st).map_err(|e| e.to_string())?;
            if self.cas(h, raw.as_deref(), &new).await? {
                return Ok(Ok((st, t)));
            }
        }
        Err("the rollout state kept changing under this action; try again".into())
    }
}

/// The step's totals from its counts hash.
fn totals(fields: &[(String, u64)]) -> (SideView, SideView) {
    let mut counts = [Counts::default(); 2];
    let mut turns = [vec![0u64; BUCKETS], vec![0u64; BUCKETS]];
    for (k, n) in fields {
        let Some((side, what)) = k.split_once('.') else {
            continue;
        };
        let Some(s) = SIDES.iter().position(|x| *x == side) else {
            continue;
        };
        match what {
            "completed" => counts[s].completed = *n,
            "transferred" => counts[s].transferred = *n,
            "failed" => counts[s].failed = *n,
            "abandoned" => counts[s].abandoned = *n,
            h => {
                if let Some(i) = h.strip_prefix('h').and_then(|i| i.parse::<usize>().ok()) {
                    if i < BUCKETS {
                        turns[s][i] = *n;
                    }
                }
            }
        }
    }
    let view = |s: usize| SideView {
        counts: counts[s],
        turn_p99_ms: super::judge::quantile_ms(&turns[s], 0.99),
    };
    (view(0), view(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_read_back_what_the_fields_say() {
        let f = |k: &str, n| (k.to_string(), n);
        let (from, to) = totals(&[
            f("f.completed", 90),
            f("f.failed", 10),
            f("t.transferred", 4),
            f("t.h20", 4),
            f("t.h999", 1),
            f("x.completed", 7),
            f("garbage", 1),
        ]);
        assert_eq!(from.counts.ended(), 100);
        assert_eq!(from.counts.failed, 10);
        assert_eq!(to.counts.transferred, 4);
        assert!(to.turn_p99_ms.is_some() && from.turn_p99_ms.is_none());
    }
}
