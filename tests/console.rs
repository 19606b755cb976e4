//! Spec §12: the audit trail, the observed shares of new calls, and the console `/admin/ui`.

use std::time::Duration;

use crate::support::chromium::{self, Chromium};
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
    let history = || async { gw.admin_json("/admin/history").await };
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
    let cfg = gw.admin_json("/admin/config").await;
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

// === The console in a real browser ===

const EMBEDDED: &str = "clusters:
  stable:
    embedded: { label: stable, instances: 2 }
  canary:
    embedded: { label: canary, instances: 2 }
rules:
  - { name: canary-tenant, vdn: [101], cluster: canary }
  - { name: one-in-ten, split: { canary: 10, stable: 90 } }
default: stable
";

const WAIT: Duration = Duration::from_secs(30);

/// Browser calls block: let the gateway run on the other worker meanwhile.
fn b<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// JavaScript: is there a row for cluster `name` in the clusters table?
fn cluster_row(name: &str) -> String {
    format!(
        "!!document.querySelector('#clusters tbody tr[data-cluster={}]')",
        serde_json::to_string(name).unwrap()
    )
}

/// JavaScript: the text of cell `class` in the rules table row of (rule, cluster).
fn rule_cell(rule: &str, cluster: &str, class: &str) -> String {
    format!(
        "(document.querySelector('#rules tr[data-rule={}][data-cluster={}] td.{class}') || {{}}).textContent || ''",
        serde_json::to_string(rule).unwrap(),
        serde_json::to_string(cluster).unwrap()
    )
}

/// A share as the page writes it: two decimals under 10%, else one; no trailing zeros.
fn pct(x: f64) -> String {
    let v = x * 100.0;
    let s = if v != 0.0 && v.abs() < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s}%")
}

async fn some_calls(gw: &Gateway, n: usize, vdn: u32, prefix: &str) {
    let c = Client::new();
    for k in 0..n {
        let a = c
            .turn(gw, Some(vdn), &format!("{prefix}-{k}"), 8, None)
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_shows_clusters_rules_shares_and_history_live() {
    let Some(bin) = chromium::or_skip("console_in_chromium") else {
        return;
    };
    let gw = Gateway::start(EMBEDDED).await;
    some_calls(&gw, 200, 7, "ui").await;
    some_calls(&gw, 3, 101, "tenant").await;
    let cfg = Client::new()
        .request("GET", &gw.admin_url("/admin/config"), &[], "")
        .await
        .json();
    let mut br = b(|| Chromium::launch(&bin)).expect("chromium starts");
    let url = gw.admin_url("/admin/ui");
    b(|| br.navigate(&url)).unwrap();

    // The clusters a person would look for, each with its state and endpoints.
    for name in ["stable", "canary"] {
        b(|| br.wait_for(&cluster_row(name), WAIT))
            .unwrap_or_else(|e| panic!("{e}\n{}", br.text()));
    }
    // The check is not vacuous: a cluster that is not configured is not shown.
    assert_eq!(b(|| br.eval(&cluster_row("nowhere"))).unwrap(), false);
    let stable_row =
        b(|| br.eval("document.querySelector('#clusters tr[data-cluster=\"stable\"]').innerText"))
            .unwrap();
    let stable_row = stable_row.as_str().unwrap();
    assert!(stable_row.contains("active"), "{stable_row}");
    assert!(stable_row.contains("embedded stable ×2"), "{stable_row}");
    assert_eq!(
        b(|| br.eval(
            "document.querySelectorAll('#clusters tr[data-cluster=\"canary\"] .eps li').length"
        ))
        .unwrap(),
        2
    );
    // Pinned calls as the gateway counts them.
    let pinned = |name: &str| {
        cfg["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["pinned_calls"]
            .as_u64()
            .unwrap()
    };
    let shown = b(|| {
        br.eval(
            "document.querySelector('#clusters tr[data-cluster=\"canary\"] td.pinned').textContent",
        )
    })
    .unwrap();
    assert_eq!(shown.as_str().unwrap(), pinned("canary").to_string());

    // Rules with configured and observed shares, as /admin/config computes them.
    assert_eq!(
        b(|| br.eval(&rule_cell("one-in-ten", "canary", "configured"))).unwrap(),
        "10%"
    );
    assert_eq!(
        b(|| br.eval(&rule_cell("one-in-ten", "stable", "configured"))).unwrap(),
        "90%"
    );
    let ten = cfg["rules"][1]["shares"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "canary")
        .unwrap()
        .clone();
    let observed = b(|| br.eval(&rule_cell("one-in-ten", "canary", "observed"))).unwrap();
    let observed = observed.as_str().unwrap();
    assert!(
        observed.starts_with(&pct(ten["observed"].as_f64().unwrap())),
        "page {observed:?}, api {ten}"
    );
    assert_eq!(
        b(|| br.eval(&rule_cell("one-in-ten", "canary", "calls"))).unwrap(),
        ten["calls"].as_u64().unwrap().to_string()
    );
    assert_eq!(
        b(|| br.eval(&rule_cell("canary-tenant", "canary", "observed"))).unwrap(),
        "100%"
    );

    // The history, then a reload seen live without reloading the page.
    b(|| {
        br.wait_for(
            "document.querySelectorAll('#history li[data-kind=\"applied\"]').length === 1",
            WAIT,
        )
    })
    .unwrap();
    assert!(b(|| br.text()).contains("generation 1 applied (start)"));
    gw.write_config(&EMBEDDED.replace("canary: 10, stable: 90", "canary: 25, stable: 75"));
    let r = Client::new().post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200);
    b(|| {
        br.wait_for(
            "document.getElementById('generation').textContent === '2'",
            WAIT,
        )
    })
    .unwrap();
    b(|| {
        br.wait_for(
            &format!(
                "{} === '25%'",
                rule_cell("one-in-ten", "canary", "configured")
            ),
            WAIT,
        )
    })
    .unwrap();
    let first = b(|| br.eval("document.querySelector('#history li').innerText")).unwrap();
    assert!(
        first
            .as_str()
            .unwrap()
            .contains("generation 2 applied (api)"),
        "{first}"
    );
    // A bad reload: the error is shown, the running generation stays.
    gw.write_config(&EMBEDDED.replace("canary: 10", "nowhere: 10"));
    let r = Client::new().post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422);
    b(|| br.wait_for("!document.getElementById('reload-error').hidden", WAIT)).unwrap();
    let errs = b(|| br.eval("document.getElementById('reload-errors').innerText")).unwrap();
    assert!(errs.as_str().unwrap().contains("nowhere"), "{errs}");
    assert_eq!(
        b(|| br.eval("document.getElementById('generation').textContent")).unwrap(),
        "2"
    );

    // Readable on a phone: nothing wider than the screen but the tables' own scroll boxes.
    b(|| br.viewport(390, 844, true)).unwrap();
    let overflow =
        b(|| br.eval("document.documentElement.scrollWidth - window.innerWidth")).unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than a phone by {overflow}px"
    );
    if let Some(path) = std::env::var_os("GRAYGATE_CONSOLE_PHONE_PNG") {
        std::fs::write(path, b(|| br.screenshot(390, true)).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_with_a_token_shows_only_the_prompt_until_the_token_works() {
    let Some(bin) = chromium::or_skip("console_with_a_token") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").unwrap();
    let gw = Gateway::start_in(
        dir,
        &format!("admin_token_file: admin.token\n{EMBEDDED}"),
        graygate::app::StartOptions {
            watch: false,
            sighup: false,
            ..Default::default()
        },
    )
    .await;
    let mut br = b(|| Chromium::launch(&bin)).expect("chromium starts");
    let url = gw.admin_url("/admin/ui");
    b(|| br.navigate(&url)).unwrap();
    b(|| br.wait_for("!document.getElementById('login').hidden", WAIT)).unwrap();
    // Only the prompt: no cluster, rule or generation anywhere on the page.
    let visible_only_prompt = || {
        format!(
            "document.getElementById('console').hidden && document.getElementById('summary').hidden \
             && !{} && document.querySelectorAll('#clusters tbody tr').length === 0",
            cluster_row("stable").trim_start_matches('!')
        )
    };
    assert_eq!(b(|| br.eval(&visible_only_prompt())).unwrap(), true);
    let text = b(|| br.text());
    assert!(text.contains("Admin token"), "{text}");
    assert!(
        !text.contains("stable") && !text.contains("canary"),
        "{text}"
    );

    // A wrong token: still only the prompt, with a word about it.
    b(|| br.click("#token")).unwrap();
    b(|| br.type_text("not-the-token")).unwrap();
    b(|| br.click("#login-submit")).unwrap();
    b(|| {
        br.wait_for(
            "document.getElementById('login-error').textContent.includes('refused')",
            WAIT,
        )
    })
    .unwrap();
    assert_eq!(b(|| br.eval(&visible_only_prompt())).unwrap(), true);

    // The right one: everything.
    b(|| br.click("#token")).unwrap();
    b(|| br.type_text("s3cret-token")).unwrap();
    b(|| br.click("#login-submit")).unwrap();
    for name in ["stable", "canary"] {
        b(|| br.wait_for(&cluster_row(name), WAIT))
            .unwrap_or_else(|e| panic!("{e}\n{}", br.text()));
    }
    b(|| {
        br.wait_for(
            "document.querySelectorAll('#history li').length === 1",
            WAIT,
        )
    })
    .unwrap();
    assert_eq!(
        b(|| br.eval(&rule_cell("one-in-ten", "canary", "configured"))).unwrap(),
        "10%"
    );
    assert_eq!(
        b(|| br.eval("document.getElementById('login').hidden")).unwrap(),
        true
    );
    // Kept in the tab's session storage, never in a cookie.
    assert_eq!(
        b(|| br.eval("sessionStorage.getItem('graygate.admin-token')")).unwrap(),
        "s3cret-token"
    );
    assert_eq!(b(|| br.eval("document.cookie")).unwrap(), "");
    let cookies = b(|| br.call("Network.getAllCookies", serde_json::json!({}))).unwrap();
    assert_eq!(cookies["cookies"], serde_json::json!([]), "{cookies}");
    // A reload of the page keeps the token for the tab: no second prompt.
    b(|| br.navigate(&url)).unwrap();
    b(|| br.wait_for(&cluster_row("canary"), WAIT)).unwrap();

    // Another origin cannot act: the page's token does not travel with its requests, and a
    // browser's cross-origin POST is refused before the token is even looked at.
    let c = Client::new();
    let r = c
        .request(
            "POST",
            &gw.admin_url("/admin/reload"),
            &[("origin", "http://evil.example")],
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .request(
            "POST",
            &gw.admin_url("/admin/reload"),
            &[
                ("origin", "http://evil.example"),
                ("authorization", "Bearer s3cret-token"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .request(
            "OPTIONS",
            &gw.admin_url("/admin/reload"),
            &[
                ("origin", "http://evil.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            "",
        )
        .await;
    assert!(r.status.is_client_error());
    assert!(r.header("access-control-allow-origin").is_none());
    // The page's own assets carry the strict policy and no CORS grant.
    let page = c.request("GET", &url, &[], "").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.header("access-control-allow-origin").is_none());
    assert!(page.header("set-cookie").is_none());
    // Nothing happened: still one event, generation 1.
    let h = c
        .request(
            "GET",
            &gw.admin_url("/admin/history"),
            &[("authorization", "Bearer s3cret-token")],
            "",
        )
        .await
        .json();
    assert_eq!(h["events"].as_array().unwrap().len(), 1, "{h}");
}

// === Rollouts: the console's ladder and buttons, and the history of an abort ===

/// Two embedded clusters and a rollout between them that advances every second once each side
/// has 20 ended calls (turn_p99 off: a loaded test machine's latency is not the canary's).
const ROLLOUT: &str = "clusters:
  stable:
    embedded: { label: stable }
  canary:
    embedded: { label: canary }
rules:
  - name: v2
    vdn: [200-299]
    rollout:
      from: stable
      to: canary
      steps: [5, 25, 50, 100]
      step_min: 1s
      min_calls: 20
      abort_when: { failed: +1%, abandoned: +2%, turn_p99: null }
    salt: console-test
default: stable
";

/// One whole call on vdn 250 (the rollout's), ending with the hangup report.
async fn whole_call(c: &Client, gw: &Gateway, userid: &str) {
    for (inaction, input) in [(8, None), (9, Some("1")), (9, Some("hangup"))] {
        let a = c.turn(gw, Some(250), userid, inaction, input).await;
        assert_eq!(a.status, 200, "{userid}: {:?}", a.body);
    }
}

async fn rollout(gw: &Gateway, token: Option<&str>) -> serde_json::Value {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let v = Client::new()
        .request("GET", &gw.admin_url("/admin/rollouts"), &headers, "")
        .await;
    assert_eq!(v.status, 200, "{:?}", v.body);
    v.json()["rollouts"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_runs_a_rollout() {
    let Some(bin) = chromium::or_skip("console_in_chromium_runs_a_rollout") else {
        return;
    };
    let gw = Gateway::start(ROLLOUT).await;
    // Calls until the rollout has climbed a step or two (or 40 s went by: the checks below
    // compare the page with the gateway's own answer, whatever step it reached).
    let c = Client::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut k = 0;
    while tokio::time::Instant::now() < until {
        for _ in 0..10 {
            whole_call(&c, &gw, &format!("ro-{k}")).await;
            k += 1;
        }
        let r = rollout(&gw, None).await;
        assert_eq!(r["status"], "running", "{r}");
        if r["step_index"].as_u64().unwrap() >= 2 {
            break;
        }
    }
    let mut br = b(|| Chromium::launch(&bin)).expect("chromium starts");
    let url = gw.admin_url("/admin/ui");
    b(|| br.navigate(&url)).unwrap();
    b(|| {
        br.wait_for(
            "!!document.querySelector('[data-rollout=\"v2\"] .ladder li.current')",
            WAIT,
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", br.text()));
    // Both clusters and the rollout rule with its configured split.
    for name in ["stable", "canary"] {
        b(|| br.wait_for(&cluster_row(name), WAIT)).unwrap();
    }
    let r = rollout(&gw, None).await;
    let share = r["share"].as_f64().unwrap();
    b(|| {
        br.wait_for(
            &format!(
                "{} === '{}'",
                rule_cell("v2", "canary", "configured"),
                pct(share / 100.0)
            ),
            WAIT,
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{r}"));
    if let Some(path) = std::env::var_os("GRAYGATE_CONSOLE_PNG") {
        b(|| {
            br.wait_for(
                "!!document.querySelector('[data-rollout=\"v2\"] svg.chart')",
                WAIT,
            )
        })
        .unwrap();
        std::fs::write(path, b(|| br.screenshot(1280, false)).unwrap()).unwrap();
        b(|| br.viewport(1280, 1600, false)).unwrap();
    }

    // Pause, clicked: the rollout stops where it is.
    b(|| br.click("button[data-action=pause][data-rollout=v2]")).unwrap();
    let paused = {
        let mut last = serde_json::Value::Null;
        for _ in 0..100 {
            last = rollout(&gw, None).await;
            if last["status"] == "paused" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    };
    assert_eq!(paused["status"], "paused", "{paused}");
    b(|| {
        br.wait_for(
            "!!document.querySelector('[data-rollout=\"v2\"] .badge.s-paused')",
            WAIT,
        )
    })
    .unwrap();
    // The ladder and the sides as the gateway has them (paused: nothing moves now).
    let step = paused["step_index"].as_u64().unwrap();
    let steps = paused["steps"].as_array().unwrap().len();
    let ladder = b(|| {
        br.eval(
            "[...document.querySelectorAll('[data-rollout=\"v2\"] .ladder li')].map(li => li.className + ':' + li.dataset.step)",
        )
    })
    .unwrap();
    let ladder: Vec<&str> = ladder
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ladder.len(), steps, "{ladder:?}");
    for (i, li) in ladder.iter().enumerate() {
        let want = match (i as u64).cmp(&step) {
            std::cmp::Ordering::Less => "done:",
            std::cmp::Ordering::Equal => "current paused:",
            std::cmp::Ordering::Greater => "todo:",
        };
        assert!(li.starts_with(want), "step {i}: {li} (at step {step})");
        // Steps are percentages (5.0); the page writes them as JavaScript prints numbers (5).
        let pct = paused["steps"][i].as_f64().unwrap();
        assert!(li.ends_with(&format!(":{pct}")), "{li}");
    }
    for side in ["from", "to"] {
        let shown = b(|| {
            br.eval(&format!(
                "document.querySelector('[data-rollout=\"v2\"] tr[data-side={side}] td.ended').textContent"
            ))
        })
        .unwrap();
        let ended = paused["sides"][side]["ended"].as_u64().unwrap();
        assert_eq!(shown.as_str().unwrap(), format!("{ended} / 20"), "{side}");
    }
    let verdicts = b(|| {
        br.eval("document.querySelectorAll('[data-rollout=\"v2\"] tr[data-criterion]').length")
    })
    .unwrap();
    assert_eq!(
        verdicts.as_u64().unwrap() as usize,
        paused["verdicts"].as_array().unwrap().len()
    );

    // Abort asks for a reason; the typed reason reaches the rollout and the history.
    b(|| br.click("button[data-action=abort][data-rollout=v2]")).unwrap();
    b(|| {
        br.wait_for(
            "!document.querySelector('[data-abort-form=\"v2\"]').hidden",
            WAIT,
        )
    })
    .unwrap();
    b(|| br.click("input[data-reason=v2]")).unwrap();
    b(|| br.type_text("callers hear the old menu")).unwrap();
    b(|| br.click("button[data-action=abort-confirm][data-rollout=v2]")).unwrap();
    b(|| {
        br.wait_for(
            "!!document.querySelector('[data-rollout=\"v2\"] .ladder li.current.aborted')",
            WAIT,
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", br.text()));
    let aborted = rollout(&gw, None).await;
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert!(
        aborted["last_transition"]["reason"]
            .as_str()
            .unwrap()
            .contains("callers hear the old menu"),
        "{aborted}"
    );
    b(|| {
        br.wait_for(
            "[...document.querySelectorAll('#history li[data-kind=rollout]')].some(li => li.innerText.includes('callers hear the old menu'))",
            WAIT,
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", br.text()));
    // Only resume is offered now.
    let enabled = b(|| {
        br.eval("[...document.querySelectorAll('[data-rollout=\"v2\"] .actions button')].filter(b => !b.disabled).map(b => b.dataset.action)")
    })
    .unwrap();
    assert_eq!(enabled, serde_json::json!(["resume"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_holds_start_good_reload_bad_reload_and_rollout_abort_in_order() {
    let gw = Gateway::start(ROLLOUT).await;
    let c = Client::new();
    // A good reload that leaves the rollout block alone (its state is kept).
    gw.write_config(&ROLLOUT.replace(
        "default: stable",
        "  - { name: tenant, vdn: [101], cluster: canary }\ndefault: stable",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A bad one.
    gw.write_config(&ROLLOUT.replace("to: canary", "to: nowhere"));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    // An operator's abort with a reason.
    let r = c
        .post(
            &gw.admin_url("/admin/rollouts/v2/abort"),
            r#"{"reason":"night shift says no"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let h = gw.admin_json("/admin/history").await;
    let ev = h["events"].as_array().unwrap();
    let kinds: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["rollout", "reload_failed", "applied", "applied"],
        "{h:#}"
    );
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 3, 2, 1]);
    let ats: Vec<std::time::SystemTime> = ev
        .iter()
        .map(|e| humantime::parse_rfc3339(e["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "{ats:?}");

    let abort = &ev[0];
    assert_eq!(abort["rule"], "v2", "{abort}");
    assert_eq!(abort["from"], "running", "{abort}");
    assert_eq!(abort["to"], "aborted", "{abort}");
    assert!(
        abort["reason"]
            .as_str()
            .unwrap()
            .contains("night shift says no"),
        "{abort}"
    );
    let failed = &ev[1];
    assert!(
        failed["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("nowhere")),
        "{failed}"
    );
    assert_eq!(failed["running_generation"], 2);
    let good = &ev[2];
    assert_eq!(
        (good["generation"].as_u64(), good["trigger"].as_str()),
        (Some(2), Some("api"))
    );
    assert_eq!(
        good["plan"]["changes"]["rules_added"],
        serde_json::json!(["tenant"])
    );
    let start = &ev[3];
    assert_eq!(
        (start["generation"].as_u64(), start["trigger"].as_str()),
        (Some(1), Some("start"))
    );
    assert_eq!(
        start["plan"]["changes"]["rules_added"],
        serde_json::json!(["v2"])
    );
}
