//! `Snapshot × Snapshot → SnapshotDiff`: what a new file changes, by name.
//!
//! One pure function feeds the reload log line, the history's `plan` and `graygate diff`. It
//! names every cluster and rule that appears, disappears or changes (a rule's conditions, target
//! or split; a cluster's settings), and the top-level settings that differ; a file compared with
//! itself has no change. The moved share of new calls is measured, not guessed: the same
//! deterministic samples are routed under both snapshots and the clusters they land on are
//! compared, per rule of the old file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use compact_str::CompactString;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::probe::{Dialog, Turn};
use crate::router::{decide, Rule, RuleRef, Target};
use crate::snapshot::Snapshot;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotDiff {
    pub clusters_added: Vec<String>,
    pub clusters_removed: Vec<String>,
    pub clusters_draining: Vec<String>,
    pub clusters_undrained: Vec<String>,
    /// Clusters in both files whose settings differ (endpoints, timeouts, health, tls,
    /// fallback, …; a drain change alone is in `clusters_draining`/`clusters_undrained`).
    pub clusters_changed: Vec<String>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    /// Rules in both files whose conditions, target or split differ.
    pub rules_changed: Vec<String>,
    /// Other keys that differ: `default`, `limits`, `pins`, `rule order`, …
    pub settings_changed: Vec<String>,
}

impl SnapshotDiff {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self == &SnapshotDiff::default()
    }
}

/// Each item's index by its name (a map of the caller's choice: sorted or hashed).
fn by_name<'a, T, M: FromIterator<(&'a str, usize)>>(
    items: &'a [T],
    name: impl Fn(&'a T) -> &'a str,
) -> M {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| (name(t), i))
        .collect()
}

/// What differs between two snapshots, by name. Linear in the number of rules.
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDiff {
    let oc: BTreeMap<&str, usize> = by_name(&old.clusters, |c| &c.name);
    let nc: BTreeMap<&str, usize> = by_name(&new.clusters, |c| &c.name);
    let mut d = SnapshotDiff::default();
    for (name, &j) in &nc {
        let n = &new.clusters[j];
        match oc.get(name) {
            None => {
                d.clusters_added.push(name.to_string());
                if n.spec.drain {
                    d.clusters_draining.push(name.to_string());
                }
            }
            Some(&i) => {
                let o = &old.clusters[i];
                match (o.spec.drain, n.spec.drain) {
                    (false, true) => d.clusters_draining.push(name.to_string()),
                    (true, false) => d.clusters_undrained.push(name.to_string()),
                    _ => {}
                }
                let mut same = o.spec.clone();
                same.drain = n.spec.drain;
                if same != n.spec {
                    d.clusters_changed.push(name.to_string());
                }
            }
        }
    }
    d.clusters_removed = oc
        .keys()
        .filter(|k| !nc.contains_key(*k))
        .map(|s| s.to_string())
        .collect();

    let or: HashMap<&str, usize> = by_name(&old.routing.rules, |r| &r.name);
    let nr: HashMap<&str, usize> = by_name(&new.routing.rules, |r| &r.name);
    // In both files: the order of the old file, to see a reordering.
    let mut common_new_positions = Vec::new();
    for r in &old.routing.rules {
        match nr.get(&*r.name) {
            None => d.rules_removed.push(r.name.to_string()),
            Some(&j) => {
                common_new_positions.push(j);
                if !same_rule(old, r, new, &new.routing.rules[j]) {
                    d.rules_changed.push(r.name.to_string());
                }
            }
        }
    }
    d.rules_added = new
        .routing
        .rules
        .iter()
        .filter(|r| !or.contains_key(&*r.name))
        .map(|r| r.name.to_string())
        .collect();

    let s = &mut d.settings_changed;
    let mut differs = |key: &str, changed: bool| {
        if changed {
            s.push(key.to_string());
        }
    };
    differs(
        "default",
        old.routing.cluster_name(old.routing.default)
            != new.routing.cluster_name(new.routing.default),
    );
    differs(
        "rule order",
        common_new_positions.windows(2).any(|w| w[0] > w[1]),
    );
    differs("listen", old.listen != new.listen);
    differs("admin", old.admin != new.admin);
    differs("tls", old.tls != new.tls);
    differs("admin_token_file", old.admin_token != new.admin_token);
    differs(
        "decision_header",
        old.decision_header != new.decision_header,
    );
    differs(
        "listen_proxy_protocol",
        old.listen_proxy_protocol != new.listen_proxy_protocol,
    );
    differs("tracing.otlp", old.otlp != new.otlp);
    differs("limits", old.limits != new.limits);
    differs("pins", old.pins != new.pins);
    differs("pins.store", old.store != new.store);
    d
}

/// The same conditions, target and split (cluster names, weights and salt) in both files.
fn same_rule(os: &Snapshot, a: &Rule, ns: &Snapshot, b: &Rule) -> bool {
    let field_path = |s: &'_ Snapshot, i: u16| s.probe.paths().get(i as usize).cloned();
    let userid_same = match (&a.userid, &b.userid) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.exact == y.exact
                && x.prefix == y.prefix
                && x.suffix == y.suffix
                && x.regex.as_ref().map(|r| r.as_str()) == y.regex.as_ref().map(|r| r.as_str())
        }
        _ => false,
    };
    let fields_same = a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|((i, v), (j, w))| v == w && field_path(os, *i) == field_path(ns, *j));
    let target_same = match (&a.target, &b.target) {
        (Target::Cluster(x), Target::Cluster(y)) => {
            os.routing.cluster_name(*x) == ns.routing.cluster_name(*y)
        }
        (Target::Split(x), Target::Split(y)) => {
            x.candidates.len() == y.candidates.len()
                && x.candidates.iter().zip(&y.candidates).all(|(p, q)| {
                    // The seed is the salt's and the cluster name's hash.
                    p.weight == q.weight
                        && p.seed == q.seed
                        && os.routing.cluster_name(p.cluster) == ns.routing.cluster_name(q.cluster)
                })
        }
        (Target::Rollout(x), Target::Rollout(y)) => {
            let spec = |s: &Snapshot, name: &str| {
                s.rollouts
                    .iter()
                    .find(|e| &*e.spec.name == name)
                    .map(|e| e.spec.clone())
            };
            os.routing.cluster_name(x.from) == ns.routing.cluster_name(y.from)
                && os.routing.cluster_name(x.to) == ns.routing.cluster_name(y.to)
                && x.seeds() == y.seeds()
                && spec(os, &a.name) == spec(ns, &b.name)
        }
        _ => false,
    };
    a.vdn == b.vdn && userid_same && fields_same && a.headers == b.headers && target_same
}

impl fmt::Display for SnapshotDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (label, v) in [
            ("clusters added", &self.clusters_added),
            ("clusters removed", &self.clusters_removed),
            ("draining", &self.clusters_draining),
            ("no longer draining", &self.clusters_undrained),
            ("clusters changed", &self.clusters_changed),
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
            ("rules changed", &self.rules_changed),
            ("settings changed", &self.settings_changed),
        ] {
            if v.is_empty() {
                continue;
            }
            // The log line stays readable when a file renames thousands of rules; the JSON
            // (`graygate diff --json`, the history) has every name.
            const SHOWN: usize = 20;
            let mut s = format!("{label}: {}", v[..v.len().min(SHOWN)].join(", "));
            if v.len() > SHOWN {
                s.push_str(&format!(" and {} more", v.len() - SHOWN));
            }
            parts.push(s);
        }
        if parts.is_empty() {
            f.write_str("no change")
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

/// How the userids of a class of samples are made.
enum Userids {
    /// `sample-<k>`.
    Sample,
    Prefix(String),
    Suffix(String),
    /// A rule's `exact` values (at most [`EXACT_TAKEN`], in sorted order), in turn.
    Exact(Vec<String>),
}

const EXACT_TAKEN: usize = 64;

/// A kind of new call the samples are drawn from: its dialog (V1 or a vdn), the body fields and
/// headers it carries (by path, so that each snapshot numbers them its own way) and its userids.
struct Class {
    dialog: Dialog,
    fields: Vec<(String, CompactString)>,
    headers: HeaderMap,
    userids: Userids,
}

/// The classes: V1, every vdn a rule of either file names (first value of each range), a vdn
/// no rule names, and for every rule of either file with `fields`, `headers` or a userid
/// condition, a call that meets them (its first vdn, the first accepted value of each field
/// and header, userids with its prefix, suffix or exact values). A `regex` alone gets sample
/// userids, which may or may not match.
fn classes(old: &Snapshot, new: &Snapshot) -> Vec<Class> {
    let all = || {
        old.routing
            .rules
            .iter()
            .map(move |r| (old, r))
            .chain(new.routing.rules.iter().map(move |r| (new, r)))
    };
    let mut vdns: Vec<u32> = all()
        .flat_map(|(_, r)| r.vdn.iter().flatten().map(|(lo, _)| *lo))
        .collect();
    vdns.sort_unstable();
    vdns.dedup();
    let unnamed = (1..u32::MAX)
        .find(|v| vdns.binary_search(v).is_err())
        .unwrap_or(0);
    let plain = |dialog| Class {
        dialog,
        fields: Vec::new(),
        headers: HeaderMap::new(),
        userids: Userids::Sample,
    };
    let mut out = vec![plain(Dialog::V1)];
    out.extend(vdns.iter().map(|v| plain(Dialog::V2(*v))));
    out.push(plain(Dialog::V2(unnamed)));
    for (s, r) in all() {
        let userids = match &r.userid {
            Some(u) if !u.prefix.is_empty() => Userids::Prefix(u.prefix[0].clone()),
            Some(u) if !u.suffix.is_empty() => Userids::Suffix(u.suffix[0].clone()),
            Some(u) if !u.exact.is_empty() => {
                let mut v: Vec<String> = u.exact.iter().map(|e| e.to_string()).collect();
                v.sort_unstable();
                v.truncate(EXACT_TAKEN);
                Userids::Exact(v)
            }
            _ => Userids::Sample,
        };
        if r.fields.is_empty() && r.headers.is_empty() && matches!(userids, Userids::Sample) {
            continue;
        }
        let fields = r
            .fields
            .iter()
            .filter_map(|(i, values)| {
                let path = s.probe.paths().get(*i as usize)?;
                Some((path.clone(), CompactString::from(values.first()?.as_str())))
            })
            .collect();
        let mut headers = HeaderMap::new();
        for (name, values) in &r.headers {
            if let Some(v) = values.first().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.append(HeaderName::clone(name), v);
            }
        }
        let dialog = match r.vdn.as_ref().and_then(|v| v.first()) {
            Some((lo, _)) => Dialog::V2(*lo),
            None => Dialog::V2(unnamed),
        };
        out.push(Class {
            dialog,
            fields,
            headers,
            userids,
        });
    }
    out
}

/// The fields of a class as one snapshot's probe numbers them (paths it does not read are left
/// out: none of its rules looks at them).
fn fields_for(index: &HashMap<&str, u16>, c: &Class) -> Vec<(u16, CompactString)> {
    c.fields
        .iter()
        .filter_map(|(p, v)| index.get(p.as_str()).map(|i| (*i, v.clone())))
        .collect()
}

/// Route `samples` deterministic calls under both snapshots and report, per old rule, the share
/// whose cluster changes. The samples are spread over the [`classes`], so that rules with vdn,
/// field, header and userid conditions are sampled too.
pub fn moved_shares(old: &Snapshot, new: &Snapshot, samples: usize) -> Vec<RuleMove> {
    let classes = classes(old, new);
    fn index(s: &Snapshot) -> HashMap<&str, u16> {
        s.probe
            .paths()
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i as u16))
            .collect()
    }
    let (oi, ni) = (index(old), index(new));
    let mut per_rule: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for k in 0..samples {
        let c = &classes[k % classes.len()];
        let sample = format!("sample-{k:08}");
        let userid = match &c.userids {
            Userids::Sample => sample,
            Userids::Prefix(p) => format!("{p}{sample}"),
            Userids::Suffix(s) => format!("{sample}{s}"),
            Userids::Exact(v) => v[(k / classes.len()) % v.len()].clone(),
        };
        let turn = |fields| Turn {
            dialog: c.dialog,
            userid: userid.as_str().into(),
            inaction: crate::protocol::Inaction::INIT,
            hangup: false,
            fields,
        };
        let a = decide(&turn(fields_for(&oi, c)), &c.headers, &old.routing);
        let b = decide(&turn(fields_for(&ni, c)), &c.headers, &new.routing);
        let from = old.routing.cluster_name(a.cluster);
        let to = new.routing.cluster_name(b.cluster);
        let rule = match a.rule {
            RuleRef::Rule(i) => &*old.routing.rules[i].name,
            RuleRef::Default => "default",
        };
        let e = match per_rule.get_mut(rule) {
            Some(e) => e,
            None => per_rule.entry(rule.to_string()).or_default(),
        };
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
