//! Spec §12: the audit trail, the observed shares of new calls, and the console `/admin/ui`.

use crate::support::*;

const RULES: &str = "rules:\n  - { name: t, vdn: [101], cluster: canary }\n  - { name: ramp, split: { canary: 10, stable: 90 } }\ndefault: stable\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_holds_start_good_reload_and_bad_reload_newest_first() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, RULES)).await;
    let c = Client::new();
    let history = || async {
        c.request("GET", &gw.admin_url("/admin/history"), &[], "")
            .await
            .json()
    };
    let h = history().await;
    let ev = h["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1, "{h}");
    assert_eq!(ev[0]["kind"], "applied");
    assert_eq!(ev[0]["trigger"], "start");
    assert_eq!(ev[0]["generation"], 1);
    assert_eq!(ev[0]["seq"], 1);
    assert_eq!(ev[0]["sha256"].as_str().unwrap().len(), 64);
    assert!(humantime::parse_rfc3339(ev[0]["at"].as_str().unwrap()).is_ok());
    assert_eq!(
        ev[0]["plan"]["changes"]["clusters_added"],
        serde_json::json!(["canary", "stable"])
    );

    // A good reload: the split moves from 10% to 50% canary, a rule goes away.
    gw.write_config(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: ramp, split: { canary: 50, stable: 50 } }\ndefault: stable\n",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A bad one: the running config stays, the errors are kept.
    gw.write_config(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: ramp, split: { nowhere: 50, stable: 50 } }\ndefault: stable\n",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);

    let h = history().await;
    let ev = h["events"].as_array().unwrap();
    let kinds: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reload_failed", "applied", "applied"], "{h}");
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 2, 1]);

    let failed = &ev[0];
    assert_eq!(failed["trigger"], "api");
    assert_eq!(failed["running_generation"], 2);
    let errs = failed["errors"].as_array().unwrap();
    assert!(!errs.is_empty());
    assert!(errs[0]["line"].as_u64().unwrap() > 0, "{failed}");
    assert!(
        errs.iter()
            .any(|e| e["message"].as_str().unwrap().contains("nowhere")),
        "{failed}"
    );

    let applied = &ev[1];
    assert_eq!(applied["trigger"], "api");
    assert_eq!(applied["generation"], 2);
    assert_eq!(
        applied["plan"]["changes"]["rules_removed"],
        serde_json::json!(["t"])
    );
    let moves = applied["plan"]["rules"].as_array().unwrap();
    let ramp = moves.iter().find(|m| m["rule"] == "ramp").unwrap();
    // 40% of ramp's new calls move from stable to canary (10% → 50%), within sampling error.
    let moved = ramp["moved"].as_f64().unwrap();
    assert!((0.3..0.5).contains(&moved), "{ramp}");
    // t's calls (all canary) now fall to ramp: about half of them move to stable.
    let t = moves.iter().find(|m| m["rule"] == "t").unwrap();
    assert!((0.35..0.65).contains(&t["moved"].as_f64().unwrap()), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_configured_and_observed_shares_of_new_calls() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, RULES)).await;
    let c = Client::new();
    for k in 0..400 {
        let a = c.turn(&gw, Some(7), &format!("share-{k}"), 8, None).await;
        assert_eq!(a.status, 200);
    }
    for k in 0..5 {
        c.turn(&gw, Some(101), &format!("t-{k}"), 8, None).await;
        // Later turns of a call are not new calls.
        c.turn(&gw, Some(101), &format!("t-{k}"), 9, Some("1"))
            .await;
    }
    let cfg = c
        .request("GET", &gw.admin_url("/admin/config"), &[], "")
        .await
        .json();
    assert_eq!(cfg["observed_window_seconds"], 300);
    let rule = |name: &str| {
        cfg["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let share = |r: &serde_json::Value, cluster: &str| {
        r["shares"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster"] == cluster)
            .unwrap_or_else(|| panic!("no {cluster} in {r}"))
            .clone()
    };
    let ramp = rule("ramp");
    assert_eq!(ramp["shares"]["calls"], 400, "{ramp}");
    let (sc, cc) = (share(&ramp, "stable"), share(&ramp, "canary"));
    assert_eq!(cc["configured"], 0.1);
    assert_eq!(sc["configured"], 0.9);
    assert_eq!(
        sc["calls"].as_u64().unwrap() + cc["calls"].as_u64().unwrap(),
        400
    );
    // The calls that went to canary are exactly those the upstream saw first turns of.
    let canary_new = canary
        .userids()
        .iter()
        .filter(|u| u.starts_with("share-"))
        .count() as u64;
    assert_eq!(cc["calls"].as_u64().unwrap(), canary_new);
    let observed = cc["observed"].as_f64().unwrap();
    assert!((0.05..0.16).contains(&observed), "{ramp}");
    let t = rule("t");
    assert_eq!(t["shares"]["calls"], 5, "{t}");
    assert_eq!(share(&t, "canary")["observed"], 1.0);
    assert_eq!(share(&t, "canary")["configured"], 1.0);
    // No call took the default: observed is null, not 0.
    assert_eq!(cfg["default_shares"]["calls"], 0);
    assert!(cfg["default_shares"]["clusters"][0]["observed"].is_null());
    // In-flight per cluster is there (nothing in flight now).
    assert_eq!(cfg["clusters"][0]["inflight"], 0);
}
