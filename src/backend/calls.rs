//! The call store: one [`Call`] instance per userid, shared by every listener of a `Backend`
//! (the nodes of one ODFS cluster), sharded so that concurrent turns on different calls rarely
//! meet on a lock, and forgotten after an idle timeout (A7).
//!
//! Locks are std mutexes held only while a turn's pure engine step runs (never across an await).
//! Idle expiry happens twice: lazily when a turn looks a call up (so the rule holds exactly,
//! whatever the sweeper's pace), and by `spawn_sweeper` so that abandoned calls free memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::flow::NodeId;

/// Number of shards; a power of two.
const SHARDS: usize = 64;

/// Where a call is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Created by inaction 7; waits for inaction 8.
    Created,
    /// The last answer was the outaction of this node; the next turn reports its result.
    At(NodeId),
    /// The backend sent outaction 10 on its own; waits for the client's hangup report.
    Ended,
}

/// One call instance.
#[derive(Debug, Clone)]
pub struct Call {
    /// Index of the flow in the backend's `Flows`.
    pub flow: usize,
    pub state: CallState,
    /// Call variables: string inparams of 7/8, queue results, the last input and intent.
    pub vars: HashMap<String, String>,
    /// Dialog turns answered (8, 9, 11); echoed as `inter_idx`.
    pub inter_idx: u64,
    /// Transfers ordered; sent as `trans_idx`.
    pub trans_idx: u64,
    /// Wall-clock start time in the protocol format.
    pub start_time: String,
    /// Consecutive `sys_err` turns.
    pub sys_errs: u32,
    /// Consecutive misses (timeout, nomatch) on `miss_node`.
    pub misses: u32,
    pub miss_node: Option<NodeId>,
    /// inaction 13 polls since the call reached its current node.
    pub polls: u32,
    /// `release_reason` of the backend's own outaction 10.
    pub release_reason: &'static str,
    pub last_seen: Instant,
}

impl Call {
    pub fn new(flow: usize, start_time: String, now: Instant) -> Self {
        Call {
            flow,
            state: CallState::Created,
            vars: HashMap::new(),
            inter_idx: 0,
            trans_idx: 0,
            start_time,
            sys_errs: 0,
            misses: 0,
            miss_node: None,
            polls: 0,
            release_reason: "0",
            last_seen: now,
        }
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or("")
    }
}

type Shard = HashMap<String, Call, ahash::RandomState>;

/// Every live call of one backend.
#[derive(Debug)]
pub struct CallStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
    idle: Duration,
}

impl CallStore {
    pub fn new(idle: Duration) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        CallStore {
            shards,
            hasher: ahash::RandomState::new(),
            idle,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    fn shard(&self, userid: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(userid) as usize) & (SHARDS - 1);
        // A poisoned shard still holds consistent calls: every update replaces a whole value.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, call: &Call, now: Instant) -> bool {
        now.saturating_duration_since(call.last_seen) >= self.idle
    }

    /// Run `f` on the call slot of `userid` under its shard lock: `None` when there is no call
    /// (or it has been idle too long). Whatever `f` leaves in the slot is stored; `None` deletes.
    pub fn update<R>(
        &self,
        userid: &str,
        now: Instant,
        f: impl FnOnce(&mut Option<Call>) -> R,
    ) -> R {
        let mut shard = self.shard(userid);
        let (key, call) = match shard.remove_entry(userid) {
            Some((k, c)) if !self.expired(&c, now) => (k, Some(c)),
            Some((k, _)) => (k, None),
            None => (userid.to_string(), None),
        };
        let mut slot = call;
        let r = f(&mut slot);
        if let Some(c) = slot {
            shard.insert(key, c);
        }
        r
    }

    /// A copy of a live call, for tests and inspection.
    pub fn get(&self, userid: &str, now: Instant) -> Option<Call> {
        self.shard(userid)
            .get(userid)
            .filter(|c| !self.expired(c, now))
            .cloned()
    }

    /// Live calls (idle ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| m.len())
                    .unwrap_or_else(|p| p.into_inner().len())
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget every call idle for the timeout; returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut gone = 0;
        for s in self.shards.iter() {
            let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = m.len();
            m.retain(|_, c| now.saturating_duration_since(c.last_seen) < self.idle);
            gone += before - m.len();
        }
        gone
    }
}

/// Sweep `store` every quarter idle timeout (between 10 ms and 30 s) until the store is dropped.
pub fn spawn_sweeper(store: Weak<CallStore>) -> tokio::task::JoinHandle<()> {
    let period = store
        .upgrade()
        .map(|s| s.idle / 4)
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(10), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(s) = store.upgrade() else { break };
            let gone = s.sweep(Instant::now());
            if gone > 0 {
                tracing::debug!(gone, "idle calls forgotten");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn put(store: &CallStore, id: &str, now: Instant) {
        store.update(id, now, |slot| {
            *slot = Some(Call::new(0, String::new(), now))
        });
    }

    // Time is handed in, so expiry is tested with made-up instants instead of waiting.
    #[test]
    fn idle_calls_are_forgotten_on_lookup_and_by_sweep() {
        let store = CallStore::new(Duration::from_secs(600));
        let t0 = Instant::now();
        put(&store, "a", t0);
        put(&store, "b", t0);
        let t300 = t0 + Duration::from_secs(300);
        // A turn on `a` keeps it alive.
        store.update("a", t300, |slot| {
            if let Some(c) = slot {
                c.last_seen = t300;
            }
        });
        let t601 = t0 + Duration::from_secs(601);
        assert!(store.get("b", t601).is_none(), "b is idle");
        assert!(store.get("a", t601).is_some(), "a had a turn");
        assert_eq!(store.sweep(t601), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.sweep(t0 + Duration::from_secs(900)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn update_sees_no_call_after_the_idle_timeout() {
        let store = CallStore::new(Duration::from_secs(10));
        let t0 = Instant::now();
        put(&store, "a", t0);
        assert!(store.update("a", t0 + Duration::from_secs(9), |slot| slot.is_some()));
        let seen = store.update("a", t0 + Duration::from_secs(19), |slot| slot.is_some());
        assert!(!seen);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn the_sweeper_forgets_idle_calls_and_ends_with_the_store() {
        let store = Arc::new(CallStore::new(Duration::from_millis(40)));
        put(&store, "a", Instant::now());
        let sweeper = spawn_sweeper(Arc::downgrade(&store));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.is_empty(), "swept");
        drop(store);
        let ended = tokio::time::timeout(Duration::from_secs(10), sweeper).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the sweeper ends when the store is gone"
        );
    }
}
