//! The in-memory pin table: sharded, with idle and end-grace expiry and a snapshot file.
//!
//! Why sharded and not one lock: every turn of every call reads or writes the table, so one
//! lock would serialize the whole gateway. 64 shards, each a `std::sync::Mutex` around a hash
//! map, keep critical sections tiny (no `.await` while locked, so a blocking mutex is right, as
//! in mini-redis's `db.rs`) and contention negligible on any core count we run on.
//!
//! Memory: a key is a `CompactString` (inline up to 24 bytes, which covers typical call ids) and
//! an entry is 40 bytes, so a million pins stay near 100 MB including the maps' slack.
//!
//! Time: deadlines are milliseconds since the store's creation on tokio's clock, so tests can
//! pause and advance time. The snapshot file stores wall-clock deadlines instead, so a restart
//! accounts for the time the process was down.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use compact_str::CompactString;
use tokio::time::Instant;

use super::lifecycle::{call_outcome, Gone};
use super::{Facts, OnRelease, Pin, PinStore, ReleaseReason};
use crate::ids::NameId;
use crate::metrics::Metrics;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    pin: Pin,
    /// Deadline in ms on the store's clock.
    deadline: u64,
    /// This entry's place in its shard's clock ring (`ShardMap::ring`).
    seq: u64,
    /// Touched by a turn since the clock hand last passed it (second chance).
    referenced: bool,
}

/// Default `pins.max_pins`.
pub const DEFAULT_MAX_PINS: usize = 1_000_000;

/// One shard: the map, and a CLOCK (second-chance) ring over its keys for eviction at
/// `max_pins`. Derefs to the map, so lookups read as before.
///
/// Why CLOCK and not an exact LRU list: a turn only sets `referenced` on its entry (no list
/// splice, no second structure to lock), and eviction is amortized O(1): the hand passes each
/// entry at most twice per full turn. A live call touches its pin on every turn and keeps its
/// second chance; a flood's pins are touched once, at creation, and go first. Ring entries of
/// removed pins are skipped when met (their `seq` no longer matches) and compacted away when
/// they outnumber the live ones.
struct ShardMap {
    map: HashMap<CompactString, Entry, ahash::RandomState>,
    ring: VecDeque<(u64, CompactString)>,
    next_seq: u64,
}

impl ShardMap {
    fn new() -> Self {
        ShardMap {
            map: HashMap::with_hasher(ahash::RandomState::new()),
            ring: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Put a just-inserted key on the ring.
    fn track(&mut self, key: &str) {
        self.next_seq += 1;
        let seq = self.next_seq;
        if let Some(e) = self.map.get_mut(key) {
            e.seq = seq;
        }
        self.ring.push_back((seq, CompactString::from(key)));
        if self.ring.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ring
                .retain(|(seq, k)| map.get(k.as_str()).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Remove the entry the clock hand stops at: the first one not touched since it last
    /// passed (touched ones lose their mark and go round again).
    fn evict_one(&mut self) -> Option<Entry> {
        while let Some((seq, key)) = self.ring.pop_front() {
            let Some(e) = self.map.get_mut(key.as_str()) else {
                continue;
            };
            if e.seq != seq {
                continue;
            }
            if e.referenced {
                e.referenced = false;
                self.ring.push_back((seq, key));
                continue;
            }
            return self.map.remove(key.as_str());
        }
        None
    }
}

impl std::ops::Deref for ShardMap {
    type Target = HashMap<CompactString, Entry, ahash::RandomState>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for ShardMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

type Shard = Mutex<ShardMap>;

/// The in-memory store. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    hasher: ahash::RandomState,
    epoch: Instant,
    metrics: Metrics,
    /// Changed since the snapshot writer last looked ([`MemoryStore::take_dirty`]).
    dirty: AtomicBool,
    /// `pins.max_pins`, as a per-shard ceiling (rounded up).
    per_shard: AtomicUsize,
    /// Told about every pin that goes away, once (the call's outcome).
    on_release: OnceLock<OnRelease>,
}

impl MemoryStore {
    pub fn new(metrics: Metrics) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(ShardMap::new())).collect();
        MemoryStore {
            inner: Arc::new(Inner {
                shards,
                hasher: ahash::RandomState::new(),
                epoch: Instant::now(),
                metrics,
                dirty: AtomicBool::new(false),
                per_shard: AtomicUsize::new(DEFAULT_MAX_PINS.div_ceil(SHARDS)),
                on_release: OnceLock::new(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Set `pins.max_pins`: each of the shards holds at most `max / shards` (rounded up); a new
    /// pin in a full shard evicts one (CLOCK), counted in `graygate_pins_evicted_total`.
    pub fn set_max_pins(&self, max: usize) {
        self.inner
            .per_shard
            .store(max.div_ceil(SHARDS).max(1), Ordering::Relaxed);
    }

    fn shard(&self, userid: &str) -> std::sync::MutexGuard<'_, ShardMap> {
        let i = (self.inner.hasher.hash_one(userid) as usize) % SHARDS;
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn count_release(&self, pin: &Pin, reason: ReleaseReason) {
        self.inner.metrics.pin_released(pin.cluster, reason);
        self.settle(pin, Gone::Released(reason));
    }

    /// The call's outcome, exactly once per pin that goes: every path that takes a pin out of
    /// the table (release, sweep, replacement of an expired pin, eviction) ends here.
    fn settle(&self, pin: &Pin, gone: Gone) {
        if let Some(f) = self.inner.on_release.get() {
            f(pin, call_outcome(pin, gone));
        }
    }

    /// Be told about every pin that goes away (set once; later calls are ignored).
    pub fn set_on_release(&self, f: OnRelease) {
        let _ = self.inner.on_release.set(f);
    }

    /// Live pins (for the sweeper's bookkeeping and tests).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live pins per cluster.
    pub fn counts(&self) -> HashMap<NameId, u64> {
        let mut out = HashMap::new();
        for s in self.inner.shards.iter() {
            for e in s.lock().unwrap_or_else(|p| p.into_inner()).values() {
                *out.entry(e.pin.cluster).or_default() += 1;
            }
        }
        out
    }

    /// Remove expired pins, one shard at a time; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let mut gone = Vec::new();
        for s in self.inner.shards.iter() {
            let mut map = s.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| {
                let live = e.deadline > now;
                if !live {
                    gone.push(e.pin);
                }
                live
            });
        }
        if !gone.is_empty() {
            self.changed();
        }
        for pin in &gone {
            let reason = if pin.ending {
                ReleaseReason::EndGrace
            } else {
                ReleaseReason::Idle
            };
            self.count_release(pin, reason);
        }
        gone.len()
    }

    /// Run [`sweep`](Self::sweep) every `every` until the returned handle is dropped or aborted.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = store.sweep();
                if n > 0 {
                    tracing::debug!(expired = n, "pin sweep");
                }
            }
        })
    }

    fn insert_new(&self, userid: &str, pin: Pin, ttl: Duration) -> Pin {
        let now = self.now_ms();
        let mut map = self.shard(userid);
        if let Some(e) = map.get(userid) {
            if e.deadline > now {
                return e.pin;
            }
        }
        let old = map.insert(
            CompactString::from(userid),
            Entry {
                pin,
                deadline: now + ttl.as_millis() as u64,
                seq: 0,
                referenced: false,
            },
        );
        map.track(userid);
        let mut evicted = None;
        if old.is_none() && map.len() > self.inner.per_shard.load(Ordering::Relaxed) {
            evicted = map.evict_one();
        }
        drop(map);
        self.changed();
        if let Some(e) = evicted {
            // Like any release of a live call's pin (its later turns become orphan turns); its
            // call is settled now, abandoned unless its turns said otherwise (`Gone::Evicted`).
            self.inner.metrics.pin_evicted(e.pin.cluster);
            self.settle(&e.pin, Gone::Evicted);
        }
        if let Some(old) = old {
            let reason = if old.pin.ending {
                ReleaseReason::EndGrace
            } else {
                ReleaseReason::Idle
            };
            self.count_release(&old.pin, reason);
        }
        self.inner.metrics.pin_created(pin.cluster);
        pin
    }

    /// How many shards [`live_in_shard`](Self::live_in_shard) walks.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The live pins of one shard with their remaining lifetimes, copied out so that the lock
    /// is not held while the caller works (the Redis store re-seeds Redis from this).
    pub fn live_in_shard(&self, i: usize) -> Vec<(CompactString, Pin, Duration)> {
        let now = self.now_ms();
        let Some(shard) = self.inner.shards.get(i) else {
            return Vec::new();
        };
        let map = shard.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, e)| e.deadline > now)
            .map(|(k, e)| (k.clone(), e.pin, Duration::from_millis(e.deadline - now)))
            .collect()
    }

    /// Put a pin read from `pins.snapshot` back (first writer wins, like `create`).
    pub fn restore(&self, userid: &str, pin: Pin, ttl: Duration) {
        self.insert_new(userid, pin, ttl);
    }

    /// True when the table changed since the last call (the snapshot writer's question).
    pub fn take_dirty(&self) -> bool {
        self.inner.dirty.swap(false, Ordering::AcqRel)
    }

    /// Say the table changed (a failed snapshot write tries again).
    pub fn mark_dirty(&self) {
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Every change calls this: a load, and a store only once per snapshot period, so that
    /// turns on several cores do not fight over the cache line.
    #[inline]
    fn changed(&self) {
        if !self.inner.dirty.load(Ordering::Relaxed) {
            self.inner.dirty.store(true, Ordering::Release);
        }
    }
}

impl PinStore for MemoryStore {
    async fn get(&self, userid: &str, idle_ttl: Duration) -> Option<Pin> {
        let now = self.now_ms();
        let mut map = self.shard(userid);
        let e = map.get_mut(userid)?;
        if e.deadline <= now {
            let old = e.pin;
            map.remove(userid);
            drop(map);
            self.changed();
            let reason = if old.ending {
                ReleaseReason::EndGrace
            } else {
                ReleaseReason::Idle
            };
            self.count_release(&old, reason);
            return None;
        }
        if !e.pin.ending {
            e.deadline = now + idle_ttl.as_millis() as u64;
        }
        e.referenced = true;
        let pin = e.pin;
        drop(map);
        self.changed();
        Some(pin)
    }

    async fn create(&self, userid: &str, pin: Pin, ttl: Duration) -> Pin {
        self.insert_new(userid, pin, ttl)
    }

    async fn end(&self, userid: &str, end_grace: Duration) {
        let now = self.now_ms();
        let mut map = self.shard(userid);
        if let Some(e) = map.get_mut(userid) {
            if !e.pin.ending {
                e.pin.ending = true;
                e.deadline = now + end_grace.as_millis() as u64;
                drop(map);
                self.changed();
            }
        }
    }

    async fn release(&self, userid: &str, reason: ReleaseReason) -> bool {
        let old = self.shard(userid).remove(userid);
        match old {
            Some(e) => {
                self.changed();
                self.count_release(&e.pin, reason);
                true
            }
            None => false,
        }
    }

    async fn peek(&self, userid: &str) -> Option<Pin> {
        let now = self.now_ms();
        self.shard(userid)
            .get(userid)
            .filter(|e| e.deadline > now)
            .map(|e| e.pin)
    }

    async fn note(&self, userid: &str, facts: Facts) {
        if let Some(e) = self.shard(userid).get_mut(userid) {
            e.pin.failed |= facts.failed;
            e.pin.transferred |= facts.transferred;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids as names;

    fn pin(cluster: &str) -> Pin {
        Pin {
            cluster: names::intern(cluster),
            rule: names::intern("r"),
            generation: 1,
            created_at_ms: 0,
            ending: false,
            epoch: 0,
            failed: false,
            transferred: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_expiry_and_touch() {
        let s = MemoryStore::new(Metrics::new());
        let ttl = Duration::from_secs(60);
        s.create("u1", pin("stable"), ttl).await;
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(s.get("u1", ttl).await.is_some(), "a turn refreshes the pin");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(s.peek("u1").await.is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(s.sweep(), 1);
        assert!(s.get("u1", ttl).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn end_grace_is_not_extended_by_turns() {
        let s = MemoryStore::new(Metrics::new());
        s.create("u1", pin("stable"), Duration::from_secs(600))
            .await;
        s.end("u1", Duration::from_secs(5)).await;
        tokio::time::advance(Duration::from_secs(4)).await;
        let p = s.get("u1", Duration::from_secs(600)).await.unwrap();
        assert!(p.ending);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.get("u1", Duration::from_secs(600)).await.is_none());
    }

    #[tokio::test]
    async fn a_full_table_evicts_untouched_pins_first() {
        let metrics = Metrics::new();
        let s = MemoryStore::new(metrics.clone());
        // 4 per shard.
        s.set_max_pins(4 * SHARDS);
        let ttl = Duration::from_secs(600);
        s.create("live", pin("stable"), ttl).await;
        for i in 0..20_000 {
            s.create(&format!("flood-{i}"), pin("stable"), ttl).await;
            if i % 16 == 0 {
                assert!(
                    s.get("live", ttl).await.is_some(),
                    "live call evicted at {i}"
                );
            }
        }
        assert!(s.len() <= 4 * SHARDS, "{}", s.len());
        let evicted = metrics.pins_evicted.with_label_values(&["stable"]).get();
        assert_eq!(evicted as usize, 20_001 - s.len());
        // The rings stay bounded too.
        for sh in s.inner.shards.iter() {
            let m = sh.lock().unwrap();
            assert!(m.ring.len() <= 2 * m.len() + 65, "{}", m.ring.len());
        }
    }

    #[tokio::test]
    async fn first_writer_wins() {
        let s = MemoryStore::new(Metrics::new());
        let a = s.create("u", pin("stable"), Duration::from_secs(60)).await;
        let b = s.create("u", pin("canary"), Duration::from_secs(60)).await;
        assert_eq!(a.cluster, b.cluster);
        assert!(s.release("u", ReleaseReason::Admin).await);
        assert!(!s.release("u", ReleaseReason::Admin).await);
    }

    /// Every way a pin goes, and the outcome its call gets: settled once, by the store.
    #[tokio::test(start_paused = true)]
    async fn every_release_settles_the_outcome_once() {
        use crate::vocab::CallOutcome as Outcome;
        let s = MemoryStore::new(Metrics::new());
        let seen: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::default();
        {
            let seen = seen.clone();
            s.set_on_release(Arc::new(move |p, o| {
                let who = names::name(p.rule).to_string();
                seen.lock().unwrap().push((who, o));
            }));
        }
        let ttl = Duration::from_secs(60);
        let grace = Duration::from_secs(5);
        let named = |rule: &str| Pin {
            rule: names::intern(rule),
            ..pin("stable")
        };
        // hangup: released at once by the hangup answer.
        s.create("hangup", named("hangup"), ttl).await;
        assert!(s.release("hangup", ReleaseReason::Hangup).await);
        assert!(
            !s.release("hangup", ReleaseReason::Hangup).await,
            "gone: not twice"
        );
        // end_grace: outaction 10 from the ODFS, then the grace passes.
        s.create("grace", named("grace"), ttl).await;
        s.end("grace", grace).await;
        // transferred, then ended: transferred wins.
        s.create("transfer", named("transfer"), ttl).await;
        s.note(
            "transfer",
            Facts {
                failed: false,
                transferred: true,
            },
        )
        .await;
        s.end("transfer", grace).await;
        // failed on some turn, then idle: failed wins.
        s.create("failed", named("failed"), ttl).await;
        s.note(
            "failed",
            Facts {
                failed: true,
                transferred: false,
            },
        )
        .await;
        // idle, found by the sweeper; idle, found by a late turn; admin.
        s.create("idle", named("idle"), ttl).await;
        s.create("late", named("late"), ttl).await;
        s.create("admin", named("admin"), ttl).await;
        assert!(s.release("admin", ReleaseReason::Admin).await);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(s.sweep(), 2, "grace and transfer");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.get("late", ttl).await.is_none());
        // An expired pin replaced by a new call of the same userid settles the old call.
        s.create("reused", named("reused"), ttl).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        s.create("reused", named("reused-2"), ttl).await;
        assert_eq!(s.sweep(), 2, "failed and idle");
        let mut got = seen.lock().unwrap().clone();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, Outcome)> = [
            ("admin", Outcome::Abandoned),
            ("failed", Outcome::Failed),
            ("grace", Outcome::Completed),
            ("hangup", Outcome::Completed),
            ("idle", Outcome::Abandoned),
            ("late", Outcome::Abandoned),
            ("reused", Outcome::Abandoned),
            ("transfer", Outcome::Transferred),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect();
        assert_eq!(got, want);
    }

    /// An evicted pin settles its call like any release: once, abandoned unless its turns
    /// said otherwise.
    #[tokio::test]
    async fn an_evicted_pin_settles_its_call_once() {
        use crate::vocab::CallOutcome;
        let metrics = Metrics::new();
        let s = MemoryStore::new(metrics.clone());
        s.set_max_pins(SHARDS); // one per shard
        let seen: Arc<Mutex<Vec<CallOutcome>>> = Arc::default();
        {
            let seen = seen.clone();
            s.set_on_release(Arc::new(move |_, o| seen.lock().unwrap().push(o)));
        }
        let ttl = Duration::from_secs(600);
        s.create("t", pin("stable"), ttl).await;
        s.note(
            "t",
            Facts {
                failed: false,
                transferred: true,
            },
        )
        .await;
        for i in 0..500 {
            s.create(&format!("u{i}"), pin("stable"), ttl).await;
        }
        let evicted = metrics.pins_evicted.with_label_values(&["stable"]).get() as usize;
        assert_eq!(evicted, 501 - s.len());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), evicted, "one outcome per evicted pin");
        let transferred = seen
            .iter()
            .filter(|o| **o == CallOutcome::Transferred)
            .count();
        let gone_t = usize::from(s.peek("t").await.is_none());
        assert_eq!(transferred, gone_t, "the transferred call, if evicted");
        assert!(seen
            .iter()
            .all(|o| matches!(o, CallOutcome::Abandoned | CallOutcome::Transferred)));
    }
}
