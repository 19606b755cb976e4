//! Call pins: `userid → cluster` for the whole life of a call (spec §5).
//!
//! The pin table is the only shared mutable state a turn touches. It sits behind the small
//! [`PinStore`] trait so that the in-memory store ([`memory::MemoryStore`]) and a shared store
//! for several replicas ([`redis::RedisStore`], spec §9) can take the same place. What to do with a pin after an answer is a pure
//! function in [`lifecycle`]; expiry runs in the store's sweeper.

pub mod lifecycle;
pub mod memory;
pub mod persist;
pub mod redis;

/// Moved to the leaf [`crate::vocab`].
pub use crate::vocab::ReleaseReason;

use std::future::Future;
use std::time::Duration;

use crate::ids::NameId;

/// One call's pin. Small and `Copy`: names are interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub cluster: NameId,
    /// The rule that created the pin (`default` included), for the `rule` metric label.
    pub rule: NameId,
    /// The config generation that created it.
    pub generation: u64,
    /// Wall-clock creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The call got an outaction 10: the pin lives only `end_grace` more.
    pub ending: bool,
    /// The rollout epoch the call started in (0: no rollout routed it), spec §11.
    pub epoch: u64,
    /// A turn of the call got a 5xx or an answer with `ret` other than 0.
    pub failed: bool,
    /// The call got an `outaction` 11.
    pub transferred: bool,
}

/// What to do with later turns that have no pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    Route,
    Reject,
}

/// The pin part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPolicy {
    pub idle_ttl: Duration,
    pub end_grace: Duration,
    pub orphan_turns: OrphanPolicy,
    /// The most pins this replica's table holds; past it the least recently used one is
    /// evicted (`memory::ShardMap`).
    pub max_pins: usize,
}

impl Default for PinPolicy {
    fn default() -> Self {
        PinPolicy {
            idle_ttl: Duration::from_secs(30 * 60),
            end_grace: Duration::from_secs(60),
            orphan_turns: OrphanPolicy::Route,
            max_pins: memory::DEFAULT_MAX_PINS,
        }
    }
}

/// A pin store. Every method is one round trip at most.
pub trait PinStore: Send + Sync + 'static {
    /// The live pin of `userid`, refreshing its idle lifetime to `idle_ttl` (an ending pin keeps
    /// its shorter deadline).
    fn get(&self, userid: &str, idle_ttl: Duration) -> impl Future<Output = Option<Pin>> + Send;
    /// First writer wins: store `pin` unless a live pin exists; return the pin that is stored.
    fn create(&self, userid: &str, pin: Pin, ttl: Duration) -> impl Future<Output = Pin> + Send;
    /// Mark the pin ending: it lives `end_grace` more, whatever later turns do.
    fn end(&self, userid: &str, end_grace: Duration) -> impl Future<Output = ()> + Send;
    /// Remove the pin; true when there was one.
    fn release(&self, userid: &str, reason: ReleaseReason) -> impl Future<Output = bool> + Send;
    /// Read without refreshing (admin).
    fn peek(&self, userid: &str) -> impl Future<Output = Option<Pin>> + Send;
    /// Add what a turn showed (a failure, a transfer) to the call's pin, for its outcome.
    fn note(&self, userid: &str, facts: Facts) -> impl Future<Output = ()> + Send;
}

pub use lifecycle::Facts;

/// Told once about every pin that goes away, with its call's outcome (spec §11;
/// [`lifecycle::call_outcome`]).
pub type OnRelease = std::sync::Arc<dyn Fn(&Pin, crate::vocab::CallOutcome) + Send + Sync>;

/// The store a gateway runs with (static dispatch: no boxed future per turn).
#[derive(Clone)]
pub enum Store {
    Memory(memory::MemoryStore),
    /// Pins in Redis, shared by every replica, with a local table beside it.
    Redis(self::redis::RedisStore),
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// A JSON view of the store's state for `/admin/config`.
    pub fn view(&self) -> serde_json::Value {
        match self {
            Store::Memory(m) => {
                serde_json::json!({"kind": "memory", "state": "ok", "local_pins": m.len()})
            }
            Store::Redis(r) => r.view(),
        }
    }
}

impl PinStore for Store {
    async fn get(&self, userid: &str, idle_ttl: Duration) -> Option<Pin> {
        match self {
            Store::Memory(m) => m.get(userid, idle_ttl).await,
            Store::Redis(r) => r.get(userid, idle_ttl).await,
        }
    }
    async fn create(&self, userid: &str, pin: Pin, ttl: Duration) -> Pin {
        match self {
            Store::Memory(m) => m.create(userid, pin, ttl).await,
            Store::Redis(r) => r.create(userid, pin, ttl).await,
        }
    }
    async fn end(&self, userid: &str, end_grace: Duration) {
        match self {
            Store::Memory(m) => m.end(userid, end_grace).await,
            Store::Redis(r) => r.end(userid, end_grace).await,
        }
    }
    async fn release(&self, userid: &str, reason: ReleaseReason) -> bool {
        match self {
            Store::Memory(m) => m.release(userid, reason).await,
            Store::Redis(r) => r.release(userid, reason).await,
        }
    }
    async fn peek(&self, userid: &str) -> Option<Pin> {
        match self {
            Store::Memory(m) => m.peek(userid).await,
            Store::Redis(r) => r.peek(userid).await,
        }
    }
    async fn note(&self, userid: &str, facts: Facts) {
        match self {
            Store::Memory(m) => m.note(userid, facts).await,
            Store::Redis(r) => r.note(userid, facts).await,
        }
    }
}

impl Store {
    /// Settle the outcome of every call whose pin goes away (spec §11).
    pub fn set_on_release(&self, f: OnRelease) {
        match self {
            Store::Memory(m) => m.set_on_release(f),
            Store::Redis(r) => r.set_on_release(f),
        }
    }
}
