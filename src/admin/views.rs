//! JSON views for the admin surface: the running config, pins, explanations.

use http::{HeaderMap, Response, StatusCode};

use super::{error, json, query_pairs, Admin, AdminBody};
use crate::ids::{self as names, NameId};
use crate::pins::{Pin, PinStore};
use crate::probe::{Dialog, Turn};
use crate::protocol::{parse_vdn, Inaction, MAX_USERID_CHARS};
use crate::router::{explain as explain_rules, Target};
use crate::shares::PairCount;
use crate::upstream::ClusterState;

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The window of the observed shares in `/admin/config`: the whole ring.
pub const SHARE_WINDOW_SECONDS: usize = crate::shares::WINDOW_SECONDS;

/// Configured beside observed shares of one rule's new calls: one entry per cluster that is
/// configured or that received calls (a fallback), `{cluster, configured, observed, calls}`
/// (shares as fractions; `observed` null while the rule had no new call in the window).
fn shares_view(
    configured: &[(String, f64)],
    rule: NameId,
    observed: &[PairCount],
) -> serde_json::Value {
    let mine: Vec<&PairCount> = observed.iter().filter(|p| p.rule == rule).collect();
    let total: u64 = mine.iter().map(|p| p.calls).sum();
    let mut clusters: Vec<(String, f64, u64)> = configured
        .iter()
        .map(|(name, share)| {
            let calls = mine
                .iter()
                .filter(|p| &*names::name(p.cluster) == name.as_str())
                .map(|p| p.calls)
                .sum();
            (name.clone(), *share, calls)
        })
        .collect();
    for p in &mine {
        let name = names::name(p.cluster);
        if !clusters.iter().any(|(n, _, _)| n.as_str() == &*name) {
            clusters.push((name.to_string(), 0.0, p.calls));
        }
    }
    let list: Vec<serde_json::Value> = clusters
        .into_iter()
        .map(|(cluster, configured, calls)| {
            serde_json::json!({
                "cluster": cluster,
                "configured": configured,
                "observed": (total > 0).then(|| calls as f64 / total as f64),
                "calls": calls,
            })
        })
        .collect();
    serde_json::json!({ "calls": total, "clusters": list })
}

pub fn pin(userid: &str, p: &Pin) -> serde_json::Value {
    serde_json::json!({
        "userid": userid,
        "cluster": &*names::name(p.cluster),
        "rule": &*names::name(p.rule),
        "generation": p.generation,
        "created_at": rfc3339(p.created_at_ms),
        "ending": p.ending,
    })
}

pub fn config(a: &Admin) -> serde_json::Value {
    let snap = a.live.load();
    let status = a.reloader.status();
    let clusters: Vec<serde_json::Value> = a
        .upstreams
        .all()
        .iter()
        .map(|pool| {
            let in_snap = snap.clusters.iter().find(|c| c.id == pool.id);
            let state = match in_snap {
                Some(c) if c.spec.drain => ClusterState::Draining,
                Some(_) => ClusterState::Active,
                None => ClusterState::Retired,
            };
            let st = pool.state.load();
            let endpoints = pool.endpoint_views();
            let inflight: u64 = endpoints.iter().filter_map(|e| e["inflight"].as_u64()).sum();
            serde_json::json!({
                "name": &*pool.name,
                "state": state.as_str(),
                "pinned_calls": a.upstreams.pin_count(&pool.name),
                "inflight": inflight,
                "balance": st.spec.balance.as_str(),
                "embedded": st.spec.embedded.as_ref().map(|e| serde_json::json!({"label": e.label, "instances": e.instances})),
                "fallback": st.spec.fallback,
                "timeout_ms": st.spec.timeout.as_millis() as u64,
                "max_inflight": st.spec.max_inflight,
                "healthy": pool.any_healthy(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let observed = a.metrics.shares.window(SHARE_WINDOW_SECONDS);
    let rules: Vec<serde_json::Value> = snap
        .routing
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (target, configured) = match &r.target {
                Target::Cluster(c) => {
                    let name = snap.routing.cluster_name(*c);
                    (serde_json::json!({"cluster": name}), vec![(name.to_string(), 1.0)])
                }
                Target::Split(s) => {
                    let m: serde_json::Map<String, serde_json::Value> =
                        s.candidates.iter().map(|c| (snap.routing.cluster_name(c.cluster).to_string(), serde_json::json!(c.weight))).collect();
                    let total: f64 = s.candidates.iter().map(|c| c.weight).sum();
                    let shares = s.candidates.iter().map(|c| (snap.routing.cluster_name(c.cluster).to_string(), c.weight / total.max(f64::MIN_POSITIVE))).collect();
                    (serde_json::json!({ "split": m }), shares)
                }
                Target::Rollout(t) => {
                    let share = f64::from(t.dial.pick().share_bp) / 10_000.0;
                    let (from, to) = (snap.routing.cluster_name(t.from), snap.routing.cluster_name(t.to));
                    (
                        serde_json::json!({"rollout": {"from": from, "to": to, "share": share * 100.0}}),
                        vec![(to.to_string(), share), (from.to_string(), 1.0 - share)],
                    )
                }
            };
            let rule_id = snap.rule_id(crate::router::RuleRef::Rule(i));
            serde_json::json!({
                "name": &*r.name,
                "vdn": r.vdn.as_ref().map(|v| v.iter().map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect::<Vec<_>>()),
                "userid": r.userid.is_some(),
                "fields": r.fields.len(),
                "headers": r.headers.iter().map(|(h, _)| h.as_str().to_string()).collect::<Vec<_>>(),
                "target": target,
                "shares": shares_view(&configured, rule_id, &observed),
            })
        })
        .collect();
    let default_name = snap.routing.cluster_name(snap.routing.default).to_string();
    serde_json::json!({
        "generation": snap.generation,
        "sha256": snap.sha256,
        "loaded_at": rfc3339(snap.loaded_at_ms),
        "path": snap.path.display().to_string(),
        "last_reload_error": status.last_error.as_ref().map(|errs| errs.iter().map(|e| serde_json::json!({"line": e.line, "column": e.column, "path": e.path, "message": e.message, "text": e.to_string()})).collect::<Vec<_>>()),
        "last_reload_error_sha256": status.last_error_sha256,
        "name_table": {"names": names::len(), "max": names::MAX_NAMES},
        "reloads": {"success": status.reloads_ok, "failure": status.reloads_failed},
        "restart_needed": status.restart_needed,
        "default": default_name,
        "default_shares": shares_view(&[(default_name.clone(), 1.0)], snap.default_rule_id, &observed),
        "observed_window_seconds": SHARE_WINDOW_SECONDS,
        "observed_unplaced_calls": a.metrics.shares.unplaced(),
        "decision_header": snap.decision_header,
        "pins": {
            "idle_ttl_ms": snap.pins.idle_ttl.as_millis() as u64,
            "end_grace_ms": snap.pins.end_grace.as_millis() as u64,
            "orphan_turns": format!("{:?}", snap.pins.orphan_turns).to_lowercase(),
            "store": a.pins.view(),
            "snapshot": a.pin_file.as_ref().map(|f| f.view()),
        },
        "clusters": clusters,
        "rules": rules,
    })
}

pub async fn explain(a: &Admin, query: &str) -> Response<AdminBody> {
    let mut vdn = None;
    let mut userid = None;
    let mut inaction = Inaction::INIT;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "vdn" => match parse_vdn(&v) {
                Some(n) => vdn = Some(n),
                None => return error(StatusCode::BAD_REQUEST, "vdn must be a decimal u32"),
            },
            "userid" => userid = Some(v),
            "inaction" => match v.parse::<i64>() {
                Ok(n) => inaction = Inaction(n),
                Err(_) => return error(StatusCode::BAD_REQUEST, "inaction must be an integer"),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter `{k}` (vdn, userid, inaction)"),
                )
            }
        }
    }
    let Some(userid) = userid.filter(|u| (1..=MAX_USERID_CHARS).contains(&u.chars().count()))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "userid (1 to 64 characters) is required",
        );
    };
    if let Some(p) = a.pins.peek(&userid).await {
        return json(
            StatusCode::OK,
            &serde_json::json!({ "pin": pin(&userid, &p), "why": "the call is pinned: every turn goes to its cluster" }),
        );
    }
    let snap = a.live.load();
    let turn = Turn {
        dialog: vdn.map(Dialog::V2).unwrap_or(Dialog::V1),
        userid: userid.as_str().into(),
        inaction,
        hangup: false,
        fields: Vec::new(),
    };
    // Live endpoint health, as the hot path sees it: the same `choose`.
    let e = explain_rules(&turn, &HeaderMap::new(), &snap.routing, |c| {
        snap.pools.get(c).is_none_or(|p| p.any_healthy())
    });
    let orphan = !inaction.starts_call();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "pin": null,
            "rule": e.rule,
            "cluster": e.cluster,
            "why": e.why,
            "fallback": e.fallback,
            "skipped": e.skipped,
            "rollout": e.rollout,
            "orphan": orphan,
            "orphan_turns": format!("{:?}", snap.pins.orphan_turns).to_lowercase(),
            "generation": snap.generation,
        }),
    )
}
