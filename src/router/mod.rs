//! The router decides which cluster a NEW call (or an orphan turn) goes to.
//!
//! Inputs: the probed [`Turn`], the request headers and the compiled [`Routing`] of the request's
//! snapshot. Output: a [`Decision`] — the rule that matched (or the default) and the cluster.
//! It never does I/O, never reads a clock and never touches pins: following a pin is the proxy's
//! job. [`choose`] adds the other half of "where does a new call go": the cluster's `fallback:`
//! while it has no healthy endpoint, with health passed in as a function, so that the hot path
//! (live endpoint health), `GET /admin/explain` (the same) and `graygate explain` (no pools: all
//! taken as healthy) make the same choice with the same code.
//!
//! Rules are evaluated in file order, first match wins. To keep that cheap with thousands of
//! rules, rules with a `vdn` condition are indexed by vdn ([`VdnIndex`]): a turn only evaluates
//! the rules whose vdn set contains its vdn, merged in order with the rules that have no vdn
//! condition.

pub mod rollout;
pub mod rules;
pub mod split;

use std::collections::BTreeSet;
use std::sync::Arc;

use http::HeaderMap;

pub use rollout::{Dial, Pick, RolloutTarget};
pub use rules::{Rule, Target, UseridMatch};

use crate::probe::Turn;

/// The compiled routing table of one snapshot.
#[derive(Debug, Clone)]
pub struct Routing {
    pub rules: Vec<Rule>,
    /// Cluster index for calls no rule matches.
    pub default: usize,
    /// Cluster names by index (the snapshot's cluster order).
    pub clusters: Vec<Arc<str>>,
    /// `drain: true` clusters take no new calls.
    pub draining: Vec<bool>,
    /// `fallback:` per cluster index.
    pub fallback: Vec<Option<usize>>,
    index: VdnIndex,
    /// Rules without a vdn condition, in order.
    unindexed: Vec<u32>,
    /// Some rule has a `headers:` condition (an engine that does not keep a header map builds
    /// one only then).
    needs_headers: bool,
    default_name: Arc<str>,
}

/// Which rule chose the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    Rule(usize),
    Default,
}

/// The router's answer for a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rule: RuleRef,
    pub cluster: usize,
    /// Set when a rollout rule chose: the epoch the call starts in and the share that applied.
    pub step: Option<Pick>,
}

impl Routing {
    pub fn new(
        rules: Vec<Rule>,
        default: usize,
        clusters: Vec<Arc<str>>,
        draining: Vec<bool>,
        fallback: Vec<Option<usize>>,
    ) -> Self {
        let index = VdnIndex::build(&rules);
        let unindexed = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.vdn.is_none())
            .map(|(i, _)| i as u32)
            .collect();
        let needs_headers = rules.iter().any(|r| !r.headers.is_empty());
        Routing {
            needs_headers,
            rules,
            default,
            clusters,
            draining,
            fallback,
            index,
            unindexed,
            default_name: Arc::from("default"),
        }
    }

    /// Some rule looks at request headers.
    pub fn needs_headers(&self) -> bool {
        self.needs_headers
    }

    /// The rule's name as a shared string (no allocation per turn).
    pub fn rule_arc(&self, r: RuleRef) -> Arc<str> {
        match r {
            RuleRef::Rule(i) => self
                .rules
                .get(i)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| self.default_name.clone()),
            RuleRef::Default => self.default_name.clone(),
        }
    }

    pub fn rule_name(&self, r: RuleRef) -> &str {
        match r {
            RuleRef::Rule(i) => self.rules.get(i).map(|r| &*r.name).unwrap_or("-"),
            RuleRef::Default => "default",
        }
    }

    pub fn cluster_name(&self, i: usize) -> &str {
        self.clusters.get(i).map(|s| &**s).unwrap_or("-")
    }

    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| &**c == name)
    }

    /// Try one rule: `Some(cluster)` when its conditions hold and its target has a cluster that
    /// takes new calls.
    fn try_rule(
        &self,
        i: usize,
        turn: &Turn,
        headers: &HeaderMap,
    ) -> Option<(usize, Option<Pick>)> {
        let rule = &self.rules[i];
        if !rule.conditions_hold(turn, headers) {
            return None;
        }
        match &rule.target {
            Target::Cluster(c) => (!self.draining[*c]).then_some((*c, None)),
            Target::Split(s) => s
                .choose(&turn.userid, |c| !self.draining[c])
                .map(|c| (c, None)),
            Target::Rollout(r) => r
                .choose(&turn.userid, |c| !self.draining[c])
                .map(|(c, p)| (c, Some(p))),
        }
    }
}

/// Where a new call (or a routed orphan turn) goes, fallback included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The rule that matched, or the default.
    pub rule: RuleRef,
    /// The cluster the rule picked.
    pub picked: usize,
    /// Where the call goes: `picked`, or its `fallback:` when `picked` has no healthy endpoint.
    pub cluster: usize,
    /// `picked`'s `fallback:` cluster, if it has one. When `cluster == picked` it is still the
    /// place the proxy sends the call to if no endpoint of `picked` can be reached in fact
    /// (its health not yet marked down).
    pub fallback: Option<usize>,
    /// A rollout rule chose: the epoch the call starts in and the step's share (for the
    /// decision header's `step=`, the pin and the rollout's counts).
    pub step: Option<Pick>,
}

impl Choice {
    /// The fallback applied: the call leaves `picked` for `cluster`.
    pub fn fell_back(&self) -> bool {
        self.cluster != self.picked
    }
}

/// The whole choice for a new call: [`decide`] on the rules, then the picked cluster's
/// fallback when `healthy(picked)` says it has no healthy endpoint (spec §10: once, never a
/// chain). Pure: health is a function of the cluster index that the caller supplies.
pub fn choose(
    turn: &Turn,
    headers: &HeaderMap,
    routing: &Routing,
    healthy: impl Fn(usize) -> bool,
) -> Choice {
    let d = decide(turn, headers, routing);
    let fallback = routing.fallback.get(d.cluster).copied().flatten();
    let cluster = match fallback {
        Some(fb) if !healthy(d.cluster) => fb,
        _ => d.cluster,
    };
    Choice {
        rule: d.rule,
        picked: d.cluster,
        cluster,
        fallback,
        step: d.step,
    }
}

/// Pick the cluster for a new call: first matching rule in file order, else the default.
/// A rule whose cluster is draining (or a split whose clusters all are) is passed over.
pub fn decide(turn: &Turn, headers: &HeaderMap, routing: &Routing) -> Decision {
    let indexed: &[u32] = match turn.dialog.vdn() {
        Some(v) => routing.index.rules_for(v),
        None => &[],
    };
    // Merge the two ordered lists of rule indices.
    let (mut a, mut b) = (
        indexed.iter().peekable(),
        routing.unindexed.iter().peekable(),
    );
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(&&x), Some(&&y)) => {
                if x < y {
                    a.next();
                    x
                } else {
                    b.next();
                    y
                }
            }
            (Some(&&x), None) => {
                a.next();
                x
            }
            (None, Some(&&y)) => {
                b.next();
                y
            }
            (None, None) => break,
        } as usize;
        if let Some((cluster, step)) = routing.try_rule(next, turn, headers) {
            return Decision {
                rule: RuleRef::Rule(next),
                cluster,
                step,
            };
        }
    }
    Decision {
        rule: RuleRef::Default,
        cluster: routing.default,
        step: None,
    }
}

/// Vdn → ordered indices of the rules whose vdn condition contains it. Elementary segments of
/// the vdn line, each with its list; built with one sweep, looked up by binary search.
#[derive(Debug, Clone, Default)]
struct VdnIndex {
    /// Segment starts, ascending; segment `k` spans `starts[k] ..= starts[k+1]-1`.
    starts: Vec<u64>,
    lists: Vec<Arc<[u32]>>,
}

impl VdnIndex {
    fn build(rules: &[Rule]) -> VdnIndex {
        // Events: at `lo` a rule becomes active, at `hi+1` it stops.
        let mut events: Vec<(u64, bool, u32)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for &(lo, hi) in r.vdn.iter().flatten() {
                events.push((lo as u64, true, i as u32));
                events.push((hi as u64 + 1, false, i as u32));
            }
        }
        events.sort_unstable();
        // A rule may list overlapping ranges: count activations per rule.
        let mut active: std::collections::BTreeMap<u32, u32> = Default::default();
        let mut idx = VdnIndex::default();
        let empty: Arc<[u32]> = Arc::from(Vec::new());
        let mut k = 0;
        while k < events.len() {
            let at = events[k].0;
            while k < events.len() && events[k].0 == at {
                let (_, on, rule) = events[k];
                if on {
                    *active.entry(rule).or_default() += 1;
                } else if let Some(n) = active.get_mut(&rule) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&rule);
                    }
                }
                k += 1;
            }
            let list: Arc<[u32]> = if active.is_empty() {
                empty.clone()
            } else {
                let set: BTreeSet<u32> = active.keys().copied().collect();
                Arc::from(set.into_iter().collect::<Vec<_>>())
            };
            idx.starts.push(at);
            idx.lists.push(list);
        }
        idx
    }

    fn rules_for(&self, vdn: u32) -> &[u32] {
        let v = vdn as u64;
        match self.starts.binary_search(&v) {
            Ok(k) => &self.lists[k],
            Err(0) => &[],
            Err(k) => &self.lists[k - 1],
        }
    }
}

#[cfg(test)]
mod tests;

/// A decision with its reasons, for `graygate explain` and `GET /admin/explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    pub rule: String,
    /// Where the call goes (after the fallback, when it applies).
    pub cluster: String,
    pub why: String,
    /// The picked cluster's `fallback:`: `{from, to, applied}`, or `None` when it has none.
    pub fallback: Option<ExplainedFallback>,
    /// Rules passed over on the way, with the reason.
    pub skipped: Vec<String>,
    /// When a rollout rule chose: its step (1-based) and the share of `to` now (percent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutExplain>,
}

/// The rollout part of an [`Explanation`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutExplain {
    pub status: &'static str,
    pub step: usize,
    pub steps: usize,
    pub share: f64,
}

/// The fallback half of an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExplainedFallback {
    pub from: String,
    pub to: String,
    /// True when `from` has no healthy endpoint now, so the call goes to `to`.
    pub applied: bool,
}

/// [`choose`] and say why, rule by rule.
pub fn explain(
    turn: &Turn,
    headers: &HeaderMap,
    routing: &Routing,
    healthy: impl Fn(usize) -> bool,
) -> Explanation {
    let choice = choose(turn, headers, routing, healthy);
    let d = Decision {
        rule: choice.rule,
        cluster: choice.picked,
        step: choice.step,
    };
    let mut skipped = Vec::new();
    let last = match d.rule {
        RuleRef::Rule(i) => i,
        RuleRef::Default => routing.rules.len(),
    };
    for (i, r) in routing.rules.iter().enumerate().take(last) {
        if r.vdn.is_some() && turn.dialog.vdn().is_none() {
            skipped.push(format!(
                "{}: has a vdn condition and this is a V1 request",
                r.name
            ));
        } else if !r.conditions_hold(turn, headers) {
            skipped.push(format!("{}: conditions do not hold", r.name));
        } else {
            skipped.push(format!("{}: its cluster is draining", r.name));
        }
        let _ = i;
    }
    let why = match d.rule {
        RuleRef::Rule(i) => match &routing.rules[i].target {
            Target::Cluster(_) => format!(
                "rule `{}` matched (first match wins)",
                routing.rules[i].name
            ),
            Target::Split(s) => {
                let total: f64 = s
                    .candidates
                    .iter()
                    .filter(|c| !routing.draining[c.cluster])
                    .map(|c| c.weight)
                    .sum();
                let w = s
                    .candidates
                    .iter()
                    .find(|c| c.cluster == d.cluster)
                    .map(|c| c.weight)
                    .unwrap_or(0.0);
                format!(
                    "rule `{}` matched; its split chose `{}` by rendezvous hash of the userid (weight {w} of {total})",
                    routing.rules[i].name,
                    routing.cluster_name(d.cluster)
                )
            }
            Target::Rollout(r) => {
                let (status, step) = r.dial.status();
                let share = d.step.map(|p| p.share_text()).unwrap_or_default();
                format!(
                    "rule `{}` matched; its rollout ({}, step {} of {}, {share}% of new calls to `{}`) chose `{}` by rendezvous hash of the userid",
                    routing.rules[i].name,
                    status.as_str(),
                    step + 1,
                    r.dial.steps,
                    routing.cluster_name(r.to),
                    routing.cluster_name(d.cluster)
                )
            }
        },
        RuleRef::Default => "no rule matched: the default cluster".to_string(),
    };
    let rollout = match d.rule {
        RuleRef::Rule(i) => match &routing.rules[i].target {
            Target::Rollout(r) => {
                let (status, step) = r.dial.status();
                Some(RolloutExplain {
                    status: status.as_str(),
                    step: step + 1,
                    steps: r.dial.steps,
                    share: rollout::percent(d.step.map(|p| p.share_bp).unwrap_or(0)),
                })
            }
            _ => None,
        },
        RuleRef::Default => None,
    };
    let fallback = choice.fallback.map(|fb| ExplainedFallback {
        from: routing.cluster_name(choice.picked).to_string(),
        to: routing.cluster_name(fb).to_string(),
        applied: choice.fell_back(),
    });
    let why = if choice.fell_back() {
        format!(
            "{why}; `{}` has no healthy endpoint, so its fallback `{}` takes the call",
            routing.cluster_name(choice.picked),
            routing.cluster_name(choice.cluster)
        )
    } else {
        why
    };
    Explanation {
        rule: routing.rule_name(d.rule).to_string(),
        cluster: routing.cluster_name(choice.cluster).to_string(),
        why,
        fallback,
        skipped,
        rollout,
    }
}
