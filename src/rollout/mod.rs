//! Progressive rollouts judged by calls (spec §11).
//!
//! - [`spec`]: the compiled [`RolloutSpec`] (`config::rollout` reads and checks the block).
//! - [`outcome`]: counting the outcome of every call, settled once when its pin goes away
//!   (the rules of an outcome are `pins::lifecycle`'s).
//! - [`judge`]: the two-proportion test and the p99 ratio over one step's calls.
//! - [`machine`]: the state machine (running, paused, aborted, completed) as pure functions.
//! - this module: [`Handle`], the live state of one rollout, and [`Rollouts`], the registry that
//!   keeps the state across reloads, runs the judge, and answers the admin surface.
//!
//! **The hot path** reads one atomic: the router's [`Dial`] holds `epoch << 16 | share`, and the
//! router hashes the userid as `split: {to: share, from: 100 − share}` would
//! (`router::RolloutTarget::choose`); this stage only turns the dial ([`Handle::publish`]). Outcomes and turn times of the current epoch are added with
//! atomics to the step's counts (swapped whole, lock-free, when a step begins). Only the judge,
//! reloads and operator actions take the registry's lock.

pub mod judge;
pub mod machine;
pub mod outcome;
pub mod shared;
pub mod spec;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use crate::router::rollout::Pick;
use judge::{quantile_ms, Counts, SideView, TurnHistogram, Verdict, BUCKETS};
use machine::{Action, Kind, State, Status, Transition};
pub use spec::RolloutSpec;

use crate::clock::wall_ms;
use crate::ids::{self as names, NameId};
use crate::metrics::Metrics;
use crate::router::Dial;
use crate::vocab::CallOutcome as Outcome;

/// A rollout rule of one generation: its spec and the dial its rule reads (built by
/// `config::compile`, bound to the live state by [`Rollouts::bind`]).
#[derive(Debug, Clone)]
pub struct RolloutEntry {
    pub spec: Arc<RolloutSpec>,
    pub dial: Arc<Dial>,
}

/// Outcome counts and turn times of one side within one step.
#[derive(Default)]
struct SideCounts {
    outcomes: [AtomicU64; 4],
    turns: TurnHistogram,
}

impl SideCounts {
    fn counts(&self) -> Counts {
        let n = |o: Outcome| self.outcomes[o.index()].load(Ordering::Relaxed);
        Counts {
            completed: n(Outcome::Completed),
            transferred: n(Outcome::Transferred),
            failed: n(Outcome::Failed),
            abandoned: n(Outcome::Abandoned),
        }
    }

    fn view(&self) -> SideView {
        SideView {
            counts: self.counts(),
            turn_p99_ms: quantile_ms(&self.turns.snapshot(), 0.99),
        }
    }

    fn saved(&self) -> SavedSide {
        SavedSide {
            counts: self.counts(),
            turns: self.turns.snapshot(),
        }
    }

    fn from_saved(s: &SavedSide) -> SideCounts {
        let c = SideCounts::default();
        for o in Outcome::ALL {
            let n = match o {
                Outcome::Completed => s.counts.completed,
                Outcome::Transferred => s.counts.transferred,
                Outcome::Failed => s.counts.failed,
                Outcome::Abandoned => s.counts.abandoned,
            };
            c.outcomes[o.index()].store(n, Ordering::Relaxed);
        }
        for (i, &n) in s.turns.iter().enumerate().take(BUCKETS) {
            c.turns.add_bucket(i, n);
        }
        c
    }
}

/// The counts of the current step: index 0 is `from`, 1 is `to`.
struct StepCounts {
    epoch: u64,
    sides: [SideCounts; 2],
}

impl StepCounts {
    fn new(epoch: u64) -> StepCounts {
        StepCounts {
            epoch,
            sides: Default::default(),
        }
    }
}

/// One point of the share-over-time series.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Point {
    pub at_ms: u64,
    pub share_bp: u32,
    pub to_failed_ratio: Option<f64>,
}

/// Most points kept per rollout (one every [`POINT_EVERY_MS`] and one per transition).
const MAX_POINTS: usize = 720;
const POINT_EVERY_MS: u64 = 10_000;

struct Locked {
    state: State,
    verdicts: Vec<Verdict>,
    series: VecDeque<Point>,
}

/// The live state of one rollout.
pub struct Handle {
    pub spec: Arc<RolloutSpec>,
    pub rule_id: NameId,
    pub from_id: NameId,
    pub to_id: NameId,
    /// The share the rule's new calls get, with the epoch they start in.
    dial: Arc<Dial>,
    counts: ArcSwap<StepCounts>,
    locked: Mutex<Locked>,
    /// With shared state: the step's totals over every replica, as last read from Redis
    /// (the local counts are then only what this replica has not sent yet).
    remote: Mutex<Option<(u64, SideView, SideView)>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("rule", &self.spec.name)
            .field("pick", &self.pick())
            .finish()
    }
}

impl Handle {
    pub fn new(spec: Arc<RolloutSpec>, dial: Arc<Dial>, now_ms: u64, prev_epoch: u64) -> Handle {
        let state = State::fresh(now_ms, prev_epoch);
        let h = Handle {
            rule_id: names::intern(&spec.name),
            from_id: names::intern(&spec.from),
            to_id: names::intern(&spec.to),
            dial,
            counts: ArcSwap::from_pointee(StepCounts::new(state.epoch)),
            locked: Mutex::new(Locked {
                state: state.clone(),
                verdicts: Vec::new(),
                series: VecDeque::new(),
            }),
            remote: Mutex::new(None),
            spec,
        };
        h.publish(&state);
        {
            let mut l = h.lock();
            let st = l.state.clone();
            h.point(&mut l, &st, now_ms, true);
        }
        h
    }

    /// The epoch and share now (one atomic load).
    #[inline]
    pub fn pick(&self) -> Pick {
        self.dial.pick()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Publish `st`: the share for the router, and fresh counts when the epoch changed.
    fn publish(&self, st: &State) {
        if self.counts.load().epoch != st.epoch {
            self.counts.store(Arc::new(StepCounts::new(st.epoch)));
        }
        self.dial
            .set(st.epoch, st.share_bp(&self.spec), st.status, st.step_index);
    }

    /// Take over the state of the same rollout from the previous generation.
    fn adopt(&self, old: &Handle) {
        let o = old.lock();
        let mut l = self.lock();
        l.state = o.state.clone();
        l.verdicts = o.verdicts.clone();
        l.series = o.series.clone();
        self.counts.store(old.counts.load_full());
        self.publish(&o.state);
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) =
            old.remote.lock().unwrap_or_else(|p| p.into_inner()).clone();
    }

    /// What this replica gathered for the current step since the last call (shared state).
    fn take_deltas(&self) -> shared::Deltas {
        let c = self.counts.load();
        let side = |s: &SideCounts| {
            let mut o = [0u64; 4];
            for (i, a) in s.outcomes.iter().enumerate() {
                o[i] = a.swap(0, Ordering::Relaxed);
            }
            o
        };
        shared::Deltas {
            epoch: c.epoch,
            outcomes: [side(&c.sides[0]), side(&c.sides[1])],
            turns: [c.sides[0].turns.take(), c.sides[1].turns.take()],
        }
    }

    /// Counts that could not be sent go back, for the next try.
    fn add_back(&self, d: &shared::Deltas) {
        let c = self.counts.load();
        if c.epoch != d.epoch {
            return;
        }
        for s in 0..2 {
            for (i, &n) in d.outcomes[s].iter().enumerate() {
                c.sides[s].outcomes[i].fetch_add(n, Ordering::Relaxed);
            }
            for (i, &n) in d.turns[s].iter().enumerate() {
                c.sides[s].turns.add_bucket(i, n);
            }
        }
    }

    /// Follow a state decided elsewhere (another replica, or this one through Redis); true
    /// when it brings a transition this replica has not seen.
    fn follow(&self, st: State, now_ms: u64) -> bool {
        let mut l = self.lock();
        if l.state == st {
            return false;
        }
        // A transition is told by when and what it was, not by its figures: those went through
        // JSON (Redis), and a float need not come back bit for bit, so a state read back must
        // not count as news of a transition this replica already told.
        let key = |t: &Option<Transition>| t.as_ref().map(|t| (t.at_ms, t.kind, t.to, t.share_to));
        let news = st.last.is_some() && key(&st.last) != key(&l.state.last);
        l.state = st.clone();
        self.publish(&st);
        self.point(&mut l, &st, now_ms, true);
        news
    }

    /// The counts side of a cluster: 0 for `from`, 1 for `to`.
    fn side_of(&self, cluster: NameId) -> Option<usize> {
        if cluster == self.from_id {
            Some(0)
        } else if cluster == self.to_id {
            Some(1)
        } else {
            None
        }
    }

    fn settle(&self, cluster: NameId, epoch: u64, outcome: Outcome) {
        let counts = self.counts.load();
        if counts.epoch != epoch {
            return;
        }
        if let Some(side) = self.side_of(cluster) {
            counts.sides[side].outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn observe_turn(&self, cluster: NameId, epoch: u64, took: Duration) {
        let counts = self.counts.load();
        if counts.epoch != epoch {
            return;
        }
        if let Some(side) = self.side_of(cluster) {
            counts.sides[side].turns.observe(took);
        }
    }

    fn views(&self) -> (SideView, SideView) {
        let c = self.counts.load();
        if let Some((epoch, from, to)) = &*self.remote.lock().unwrap_or_else(|p| p.into_inner()) {
            if *epoch == c.epoch {
                return (from.clone(), to.clone());
            }
        }
        (c.sides[0].view(), c.sides[1].view())
    }

    fn point(&self, l: &mut Locked, st: &State, now_ms: u64, force: bool) {
        if !force
            && l.series
                .back()
                .is_some_and(|p| now_ms < p.at_ms + POINT_EVERY_MS)
        {
            return;
        }
        let c = self.counts.load();
        let to = c.sides[1].counts();
        let ratio = (to.ended() > 0).then(|| to.failed as f64 / to.ended() as f64);
        l.series.push_back(Point {
            at_ms: now_ms,
            share_bp: st.share_bp(&self.spec),
            to_failed_ratio: ratio,
        });
        while l.series.len() > MAX_POINTS {
            l.series.pop_front();
        }
    }

    /// Judge the step now.
    fn tick(&self, now_ms: u64) -> Option<Transition> {
        let (from, to) = self.views();
        let mut l = self.lock();
        let (verdicts, t) = l.state.tick(&self.spec, now_ms, &from, &to);
        l.verdicts = verdicts;
        let st = l.state.clone();
        if t.is_some() {
            self.publish(&st);
        }
        self.point(&mut l, &st, now_ms, t.is_some());
        t
    }

    fn act(&self, now_ms: u64, action: Action, reason: Option<&str>) -> Result<Transition, String> {
        let mut l = self.lock();
        let mut t = l.state.act(&self.spec, now_ms, action, reason)?;
        if t.figures.is_null() {
            let (from, to) = self.views();
            t.figures = machine::figures(&from, &to, &l.verdicts);
            l.state.last = Some(t.clone());
        }
        let st = l.state.clone();
        self.publish(&st);
        self.point(&mut l, &st, now_ms, true);
        Ok(t)
    }

    /// The JSON of `GET /admin/rollouts` for this rollout (shared interface 2).
    pub fn view(&self, now_ms: u64) -> serde_json::Value {
        let (from, to) = self.views();
        let l = self.lock();
        let st = &l.state;
        let spec = &self.spec;
        let side = |name: &str, v: &SideView| {
            serde_json::json!({
                "cluster": name,
                "ended": v.counts.ended(),
                "completed": v.counts.completed,
                "transferred": v.counts.transferred,
                "failed": v.counts.failed,
                "abandoned": v.counts.abandoned,
                "turn_p99_ms": v.turn_p99_ms,
            })
        };
        let verdicts = if l.verdicts.is_empty() {
            judge::judge(spec, &from, &to)
        } else {
            l.verdicts.clone()
        };
        serde_json::json!({
            "name": &*spec.name,
            "from": &*spec.from,
            "to": &*spec.to,
            "status": st.status.as_str(),
            "advance": spec.advance.as_str(),
            "approved": st.approved,
            "steps": spec.steps.iter().map(|&b| spec::percent(b)).collect::<Vec<_>>(),
            "step_index": st.step_index,
            "share": spec::percent(st.share_bp(spec)),
            "step_started_at": rfc3339(st.step_started_ms),
            "at_step_seconds": now_ms.saturating_sub(st.step_started_ms) as f64 / 1000.0,
            "may_advance_in_seconds": st.may_advance_in_ms(spec, now_ms).map(|ms| ms as f64 / 1000.0),
            "step_min_seconds": spec.step_min.as_secs_f64(),
            "min_calls": spec.min_calls,
            "confidence": spec.confidence,
            "epoch": st.epoch,
            "sides": {"from": side(&spec.from, &from), "to": side(&spec.to, &to)},
            "verdicts": verdicts,
            "last_transition": st.last.as_ref().map(|t| serde_json::json!({
                "at": rfc3339(t.at_ms),
                "kind": t.kind.as_str(),
                "from": t.from.as_str(),
                "to": t.to.as_str(),
                "share_from": spec::percent(t.share_from),
                "share_to": spec::percent(t.share_to),
                "reason": t.reason,
                "figures": t.figures,
            })),
            "series": l.series.iter().map(|p| serde_json::json!({
                "at": p.at_ms as f64 / 1000.0,
                "share": spec::percent(p.share_bp),
                "to_failed_ratio": p.to_failed_ratio,
            })).collect::<Vec<_>>(),
        })
    }

    fn saved(&self) -> SavedRollout {
        let c = self.counts.load();
        let l = self.lock();
        SavedRollout {
            name: self.spec.name.to_string(),
            key: self.spec.key,
            state: l.state.clone(),
            counts_epoch: c.epoch,
            from: c.sides[0].saved(),
            to: c.sides[1].saved(),
            series: l.series.iter().copied().collect(),
        }
    }

    fn restore(&self, s: &SavedRollout) {
        let mut l = self.lock();
        l.state = s.state.clone();
        l.series = s.series.iter().copied().collect();
        let counts = StepCounts {
            epoch: s.counts_epoch,
            sides: [
                SideCounts::from_saved(&s.from),
                SideCounts::from_saved(&s.to),
            ],
        };
        self.counts.store(Arc::new(counts));
        let st = l.state.clone();
        drop(l);
        self.publish(&st);
    }
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One rollout in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSide {
    pub counts: Counts,
    pub turns: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRollout {
    pub name: String,
    pub key: u64,
    pub state: State,
    pub counts_epoch: u64,
    pub from: SavedSide,
    pub to: SavedSide,
    #[serde(default)]
    pub series: Vec<Point>,
}

/// Why an operator's action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActError {
    /// No rollout of that name (404).
    Unknown,
    /// Not allowed in the current state (409), with the reason.
    Conflict(String),
    /// A replica that cannot reach the shared state does not act (503).
    Unavailable(String),
}

/// A function told about every transition (the history of §12, shared state).
pub type TransitionHook = Box<dyn Fn(&serde_json::Value) + Send + Sync>;

/// Every rollout of the running config.
pub struct Rollouts {
    list: ArcSwap<Vec<Arc<Handle>>>,
    metrics: Metrics,
    /// Bind, judge and act one at a time.
    ops: Mutex<()>,
    /// State read from the state file at start, adopted by the rollout of the same block.
    restored: Mutex<HashMap<String, SavedRollout>>,
    hooks: Mutex<Vec<TransitionHook>>,
    /// Changed since the `pins.snapshot` writer last looked.
    dirty: std::sync::atomic::AtomicBool,
    /// Set with the Redis pin store: the state lives in Redis.
    shared: OnceLock<shared::Shared>,
    /// The shared state could not be reached at the last tick.
    shared_down: std::sync::atomic::AtomicBool,
}

impl Rollouts {
    pub fn new(metrics: Metrics) -> Arc<Rollouts> {
        Arc::new(Rollouts {
            list: ArcSwap::from_pointee(Vec::new()),
            metrics,
            ops: Mutex::new(()),
            restored: Mutex::new(HashMap::new()),
            hooks: Mutex::new(Vec::new()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            shared: OnceLock::new(),
            shared_down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keep the state in Redis, shared with every replica (set once, at start).
    pub fn share_via(&self, s: shared::Shared) {
        let _ = self.shared.set(s);
    }

    /// One judge tick with shared state (see [`shared`]): send this replica's counts, follow
    /// the stored state, and judge when holding the lease.
    pub async fn sync_shared(&self, now_ms: u64) {
        let Some(sh) = self.shared.get() else {
            return self.tick(now_ms);
        };
        for h in self.list.load_full().iter() {
            let deltas = h.take_deltas();
            let read = match sh.exchange(h, &deltas).await {
                Ok(r) => r,
                Err(e) => {
                    h.add_back(&deltas);
                    if !self.shared_down.swap(true, Ordering::AcqRel) {
                        tracing::warn!(rule = %h.spec.name, error = %e, "rollout state in Redis cannot be reached: keeping the last share, judging nothing");
                    }
                    return;
                }
            };
            if self.shared_down.swap(false, Ordering::AcqRel) {
                tracing::info!("rollout state in Redis reachable again");
            }
            let raw = match read.state.as_deref().map(serde_json::from_str::<State>) {
                Some(Ok(remote)) => {
                    if h.follow(remote.clone(), now_ms) {
                        if let Some(t) = &remote.last {
                            self.emit(h, t);
                        }
                    }
                    read.state.clone()
                }
                Some(Err(e)) => {
                    tracing::error!(rule = %h.spec.name, error = %e, "the rollout state in Redis is unreadable; not judging it");
                    continue;
                }
                None => {
                    // The first replica to see this rollout writes its state.
                    let json = serde_json::to_string(&h.state()).unwrap_or_default();
                    match sh.cas(h, None, &json).await {
                        Ok(true) => Some(json),
                        _ => continue,
                    }
                }
            };
            if h.pick().epoch != deltas.epoch {
                // A new step began: its totals are read at the next tick.
                continue;
            }
            *h.remote.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((deltas.epoch, read.totals.0.clone(), read.totals.1.clone()));
            let mut st = h.state();
            let (verdicts, t) = st.tick(&h.spec, now_ms, &read.totals.0, &read.totals.1);
            h.lock().verdicts = verdicts;
            let (Some(t), true) = (t, read.holder) else {
                continue;
            };
            let json = serde_json::to_string(&st).unwrap_or_default();
            match sh.cas(h, raw.as_deref(), &json).await {
                Ok(true) => {
                    // Follow what was written, as every other replica reads it.
                    let written = serde_json::from_str::<State>(&json).unwrap_or(st);
                    h.follow(written, now_ms);
                    self.emit(h, &t);
                }
                Ok(false) => {} // someone acted meanwhile: follow it next tick
                Err(e) => {
                    tracing::warn!(rule = %h.spec.name, error = %e, "could not write the rollout decision to Redis")
                }
            }
        }
    }

    /// An operator's action, on the shared state when there is one.
    pub async fn act_any(
        &self,
        name: &str,
        action: Action,
        reason: Option<&str>,
    ) -> Result<serde_json::Value, ActError> {
        let Some(sh) = self.shared.get() else {
            return self.act(name, action, reason);
        };
        let h = self.find(name).ok_or(ActError::Unknown)?;
        let now = wall_ms();
        match sh.act(&h, now, action, reason).await {
            Ok(Ok((st, t))) => {
                h.follow(st, now);
                self.emit(&h, &t);
                Ok(h.view(now))
            }
            Ok(Err(msg)) => Err(ActError::Conflict(msg)),
            Err(e) => Err(ActError::Unavailable(format!(
                "the shared rollout state cannot be reached: {e}"
            ))),
        }
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Be told about every transition (a JSON object: rule, transition, from, to, share_from,
    /// share_to, reason, figures).
    pub fn on_transition(&self, f: TransitionHook) {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// The rollouts now.
    pub fn handles(&self) -> Arc<Vec<Arc<Handle>>> {
        self.list.load_full()
    }

    fn find_rule(&self, rule: NameId) -> Option<Arc<Handle>> {
        self.list.load().iter().find(|h| h.rule_id == rule).cloned()
    }

    pub fn find(&self, name: &str) -> Option<Arc<Handle>> {
        self.list
            .load()
            .iter()
            .find(|h| &*h.spec.name == name)
            .cloned()
    }

    /// Make the rollouts of a snapshot about to be published the live ones: a rollout whose
    /// block is unchanged takes over its state; a changed block restarts at step 1 (counted
    /// as `restart`); rollouts no longer in the file are dropped.
    pub fn bind(&self, entries: &[RolloutEntry]) {
        let _one = self.ops();
        let now = wall_ms();
        let old = self.list.load_full();
        let mut next: Vec<Arc<Handle>> = Vec::new();
        for e in entries {
            let prev = old.iter().find(|o| o.spec.name == e.spec.name);
            if let Some(o) = prev {
                if Arc::ptr_eq(&o.dial, &e.dial) {
                    // The same generation bound again.
                    next.push(o.clone());
                    continue;
                }
            }
            let h = Arc::new(Handle::new(e.spec.clone(), e.dial.clone(), now, 0));
            match prev {
                Some(o) if o.spec.key == h.spec.key => h.adopt(o),
                Some(o) => {
                    // Start after the old epoch so none of its calls count for the new step.
                    let fresh = State::fresh(now, o.state().epoch);
                    {
                        let mut l = h.lock();
                        l.state = fresh.clone();
                    }
                    h.publish(&fresh);
                    let t = {
                        let mut l = h.lock();
                        let t = Transition {
                            at_ms: now,
                            kind: Kind::Restart,
                            from: o.state().status,
                            to: Status::Running,
                            share_from: o.pick().share_bp,
                            share_to: fresh.share_bp(&h.spec),
                            reason: "the rollout block changed: restarted at step 1".into(),
                            figures: serde_json::Value::Null,
                        };
                        l.state.last = Some(t.clone());
                        t
                    };
                    self.emit(&h, &t);
                }
                None => {
                    let saved = self
                        .restored
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&*h.spec.name);
                    match saved {
                        Some(s) if s.key == h.spec.key => {
                            h.restore(&s);
                            tracing::info!(rule = %h.spec.name, status = s.state.status.as_str(), step = s.state.step_index + 1, "rollout state restored");
                        }
                        _ => {
                            tracing::info!(rule = %h.spec.name, from = %h.spec.from, to = %h.spec.to, share = spec::percent(h.pick().share_bp), "rollout started at step 1");
                        }
                    }
                }
            }
            self.gauges(&h);
            next.push(h);
        }
        for o in old.iter() {
            if !next.iter().any(|n| n.spec.name == o.spec.name) {
                let rule = &*o.spec.name;
                let _ = self.metrics.rollout_share.remove_label_values(&[rule]);
                for s in Status::ALL {
                    let _ = self
                        .metrics
                        .rollout_state
                        .remove_label_values(&[rule, s.as_str()]);
                }
                tracing::info!(rule, "rollout removed from the config");
            }
        }
        self.list.store(Arc::new(next));
        self.changed();
    }

    fn gauges(&self, h: &Handle) {
        let rule = &*h.spec.name;
        let st = h.state();
        self.metrics
            .rollout_share
            .with_label_values(&[rule])
            .set(spec::percent(st.share_bp(&h.spec)));
        for s in Status::ALL {
            self.metrics
                .rollout_state
                .with_label_values(&[rule, s.as_str()])
                .set(i64::from(s == st.status));
        }
        for k in Kind::ALL {
            self.metrics
                .rollout_transitions
                .with_label_values(&[rule, k.as_str()]);
        }
    }

    /// Count, log and tell the hooks about a transition.
    fn emit(&self, h: &Handle, t: &Transition) {
        self.changed();
        let rule = &*h.spec.name;
        self.metrics
            .rollout_transitions
            .with_label_values(&[rule, t.kind.as_str()])
            .inc();
        self.gauges(h);
        let share_from = spec::percent(t.share_from);
        let share_to = spec::percent(t.share_to);
        if t.kind == Kind::Abort {
            tracing::warn!(rule, kind = t.kind.as_str(), from = t.from.as_str(), to = t.to.as_str(), share_from, share_to, reason = %t.reason, figures = %t.figures, "rollout transition");
        } else {
            tracing::info!(rule, kind = t.kind.as_str(), from = t.from.as_str(), to = t.to.as_str(), share_from, share_to, reason = %t.reason, figures = %t.figures, "rollout transition");
        }
        // `transition`, not `kind`: the history's own `kind` ("rollout") goes beside it.
        let detail = serde_json::json!({
            "rule": rule,
            "transition": t.kind.as_str(),
            "from": t.from.as_str(),
            "to": t.to.as_str(),
            "share_from": share_from,
            "share_to": share_to,
            "reason": t.reason,
            "figures": t.figures,
        });
        for f in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f(&detail);
        }
    }

    /// A call of `rule` that started in `epoch` ended on `cluster`.
    pub fn settle(&self, rule: NameId, cluster: NameId, epoch: u64, outcome: Outcome) {
        if let Some(h) = self.find_rule(rule) {
            h.settle(cluster, epoch, outcome);
            self.changed();
        }
    }

    /// A turn of a call of `rule` that started in `epoch` took `took` on `cluster`.
    pub fn observe_turn(&self, rule: NameId, cluster: NameId, epoch: u64, took: Duration) {
        if let Some(h) = self.find_rule(rule) {
            h.observe_turn(cluster, epoch, took);
            self.changed();
        }
    }

    /// Judge every rollout now.
    pub fn tick(&self, now_ms: u64) {
        let _one = self.ops();
        for h in self.list.load().iter() {
            if let Some(t) = h.tick(now_ms) {
                self.emit(h, &t);
            }
        }
    }

    /// An operator's action; the rollout's new JSON.
    pub fn act(
        &self,
        name: &str,
        action: Action,
        reason: Option<&str>,
    ) -> Result<serde_json::Value, ActError> {
        let _one = self.ops();
        let h = self.find(name).ok_or(ActError::Unknown)?;
        let now = wall_ms();
        let t = h.act(now, action, reason).map_err(ActError::Conflict)?;
        self.emit(&h, &t);
        Ok(h.view(now))
    }

    /// `GET /admin/rollouts`.
    pub fn view(&self) -> serde_json::Value {
        let now = wall_ms();
        let list: Vec<_> = self.list.load().iter().map(|h| h.view(now)).collect();
        serde_json::json!({ "rollouts": list })
    }

    /// Judge every `every` until the handle is aborted.
    pub fn spawn_judge(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.shared.get().is_some() {
                    me.sync_shared(wall_ms()).await;
                } else {
                    me.tick(wall_ms());
                }
            }
        })
    }

    /// The state of every rollout, one JSON line each (the `rollouts` section of
    /// `pins.snapshot`).
    pub fn saved_lines(&self) -> Vec<String> {
        self.list
            .load()
            .iter()
            .filter_map(|h| serde_json::to_string(&h.saved()).ok())
            .collect()
    }

    /// Take state lines read at start; each is adopted by the next [`bind`](Self::bind) of a
    /// rollout with the same name and block. Returns (read, unreadable).
    pub fn restore_lines(&self, lines: &[String]) -> (usize, usize) {
        let mut r = self.restored.lock().unwrap_or_else(|p| p.into_inner());
        let (mut n, mut bad) = (0, 0);
        for l in lines {
            match serde_json::from_str::<SavedRollout>(l) {
                Ok(s) => {
                    r.insert(s.name.clone(), s);
                    n += 1;
                }
                Err(_) => bad += 1,
            }
        }
        (n, bad)
    }

    fn changed(&self) {
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

/// The name of the rollouts' section in `pins.snapshot`.
pub const SECTION: &str = "rollouts";

/// The rollouts' state as a section of `pins.snapshot` (memory store).
pub struct StateSection(pub Arc<Rollouts>);

impl crate::pins::persist::Section for StateSection {
    fn name(&self) -> &'static str {
        SECTION
    }
    fn take_dirty(&self) -> bool {
        self.0.dirty.swap(false, Ordering::AcqRel)
    }
    fn save(&self, out: &mut Vec<String>) {
        out.extend(self.0.saved_lines());
    }
}

#[cfg(test)]
mod tests;
