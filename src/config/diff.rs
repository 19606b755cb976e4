//! `Snapshot × Snapshot → SnapshotDiff`: what a new file changes, by name.
//!
//! One pure function feeds the reload log line and `graygate diff`. The moved share of new
//! calls is measured, not guessed: the same deterministic userid samples are routed under both
//! snapshots, per rule of the old file, and the clusters they land on are compared.

use std::collections::BTreeMap;
use std::fmt;

use http::HeaderMap;

use crate::probe::{Dialog, Turn};
use crate::router::{decide, RuleRef};
use crate::snapshot::Snapshot;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotDiff {
    pub clusters_added: Vec<String>,
    pub clusters_removed: Vec<String>,
    pub clusters_draining: Vec<String>,
    pub clusters_undrained: Vec<String>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
}

/// Names that appear, disappear or change drain state.
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDiff {
    let oc: BTreeMap<&str, bool> = old
        .clusters
        .iter()
        .map(|c| (&*c.name, c.spec.drain))
        .collect();
    let nc: BTreeMap<&str, bool> = new
        .clusters
        .iter()
        .map(|c| (&*c.name, c.spec.drain))
        .collect();
    let or: Vec<&str> = old.routing.rules.iter().map(|r| &*r.name).collect();
    let nr: Vec<&str> = new.routing.rules.iter().map(|r| &*r.name).collect();
    SnapshotDiff {
        clusters_added: nc
            .keys()
            .filter(|k| !oc.contains_key(*k))
            .map(|s| s.to_string())
            .collect(),
        clusters_removed: oc
            .keys()
            .filter(|k| !nc.contains_key(*k))
            .map(|s| s.to_string())
            .collect(),
        clusters_draining: nc
            .iter()
            .filter(|(k, d)| **d && !oc.get(*k).copied().unwrap_or(false))
            .map(|(k, _)| k.to_string())
            .collect(),
        clusters_undrained: nc
            .iter()
            .filter(|(k, d)| !**d && oc.get(*k).copied().unwrap_or(false))
            .map(|(k, _)| k.to_string())
            .collect(),
        rules_added: nr
            .iter()
            .filter(|r| !or.contains(r))
            .map(|s| s.to_string())
            .collect(),
        rules_removed: or
            .iter()
            .filter(|r| !nr.contains(r))
            .map(|s| s.to_string())
            .collect(),
    }
}

/// One line for the reload log.
pub fn summarize(old: &Snapshot, new: &Snapshot) -> String {
    diff(old, new).to_string()
}

impl fmt::Display for SnapshotDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (label, v) in [
            ("clusters added", &self.clusters_added),
            ("clusters removed", &self.clusters_removed),
            ("draining", &self.clusters_draining),
            ("no longer draining", &self.clusters_undrained),
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
        ] {
            if !v.is_empty() {
                parts.push(format!("{label}: {}", v.join(", ")));
            }
        }
        if parts.is_empty() {
            f.write_str("rules or settings changed")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// How new calls that an old rule matched move under the new file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleMove {
    /// The rule of the OLD file (or `default`).
    pub rule: String,
    pub samples: usize,
    /// Share of that rule's sampled calls landing on a different cluster under NEW.
    pub moved: f64,
    /// (from, to) → share of the rule's samples.
    pub flows: BTreeMap<String, f64>,
}

/// Route `samples` deterministic userids per vdn class under both snapshots and report, per
/// old rule, the share whose cluster changes. The samples cover every vdn the old rules name
/// (first value of each range), an unnamed vdn, and V1; `fields` and `headers` conditions see
/// an empty body and no headers, so rules that need them are reported with no samples.
pub fn moved_shares(old: &Snapshot, new: &Snapshot, samples: usize) -> Vec<RuleMove> {
    let mut dialogs = vec![Dialog::V1];
    let mut vdns: Vec<u32> = old
        .routing
        .rules
        .iter()
        .chain(new.routing.rules.iter())
        .flat_map(|r| r.vdn.iter().flatten().map(|(lo, _)| *lo))
        .collect();
    vdns.sort_unstable();
    vdns.dedup();
    let unnamed = (1..u32::MAX).find(|v| !vdns.contains(v)).unwrap_or(0);
    dialogs.extend(vdns.iter().map(|v| Dialog::V2(*v)));
    dialogs.push(Dialog::V2(unnamed));
    let headers = HeaderMap::new();
    let mut per_rule: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for (k, userid) in sample_userids(samples).iter().enumerate() {
        let dialog = dialogs[k % dialogs.len()];
        let turn = Turn {
            dialog,
            userid: userid.as_str().into(),
            inaction: crate::protocol::Inaction::INIT,
            hangup: false,
            fields: Vec::new(),
        };
        let a = decide(&turn, &headers, &old.routing);
        let b = decide(&turn, &headers, &new.routing);
        let from = old.routing.cluster_name(a.cluster).to_string();
        let to = new.routing.cluster_name(b.cluster).to_string();
        let rule = match a.rule {
            RuleRef::Rule(i) => old.routing.rules[i].name.to_string(),
            RuleRef::Default => "default".to_string(),
        };
        let e = per_rule.entry(rule).or_default();
        e.0 += 1;
        if from != to {
            e.1 += 1;
            *e.2.entry(format!("{from} -> {to}")).or_default() += 1;
        }
    }
    per_rule
        .into_iter()
        .map(|(rule, (n, moved, flows))| RuleMove {
            rule,
            samples: n,
            moved: moved as f64 / n.max(1) as f64,
            flows: flows
                .into_iter()
                .map(|(k, v)| (k, v as f64 / n.max(1) as f64))
                .collect(),
        })
        .collect()
}

/// Deterministic, well-spread userids: `sample-<k>`.
pub fn sample_userids(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("sample-{k:08}")).collect()
}
