//! Progressive rollouts judged by calls (spec §11), end to end: two embedded reference ODFS
//! clusters, calls driven turn by turn by the test, the rollout's own judge deciding.
//!
//! The flows: the caller presses 1 (four callers in five) or 2 (one in five). On `stable`, and
//! on an identical canary, 2 ends the call like 1; on the bad canary, 2 hands the caller to an
//! agent (outaction 11). The bad canary must be aborted at its first step, with the criterion
//! and p-value in `/admin/rollouts`; the identical one must walk every step to `completed`.
//! In both runs every turn of a call must be answered by one cluster (`x-odfs-instance`).
//!
//! The same again with two replicas on one Redis, the turns of every call alternating between
//! them: one decision (one transition, at one time, in one epoch) that both follow.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{Client, Gateway};

/// The flow of both clusters; `{two}` is where the key 2 leads.
fn flow(two: &str) -> String {
    format!(
        r#"flows:
  "10086":
    start: menu
    nodes:
      menu:
        collect:
          text: Press 1 to end the call, 2 for more.
          dtmf: {{ max_digits: 1 }}
          on:
            "1": end
            "2": {two}
            timeout: end
            nomatch: end
      agent:
        transfer:
          trans_type: 1
          route_value: "20001"
          failure: end
      end:
        hangup: {{ release_reason: "0" }}
"#
    )
}

fn routes(dir: &std::path::Path, canary_two: &str, abort_when: &str) -> String {
    std::fs::write(dir.join("stable.yaml"), flow("end")).unwrap();
    std::fs::write(dir.join("canary.yaml"), flow(canary_two)).unwrap();
    format!(
        r#"decision_header: true
clusters:
  stable: {{ embedded: {{ label: stable, flows: stable.yaml }} }}
  canary: {{ embedded: {{ label: canary, flows: canary.yaml }} }}
rules:
  - name: v2
    vdn: [200-299]
    rollout:
      from: stable
      to: canary
      steps: [20, 50, 100]
      step_min: 300ms
      min_calls: 60
      confidence: 95%
      abort_when: {abort_when}
    salt: v2-test
default: stable
"#
    )
}

fn body(userid: &str, inaction: i64, input: Option<&str>, transfer: bool) -> String {
    let mut p = serde_json::json!({"call_id": userid, "call_dst_id": "10086"});
    if let Some(i) = input {
        p["input"] = i.into();
        p["flow_result_type"] = if i == "hangup" { "-1" } else { "2" }.into();
    }
    if transfer {
        p["trans_result"] = "0".into();
    }
    serde_json::json!({"userid": userid, "inaction": inaction, "inparams": p}).to_string()
}

/// What the test saw of the calls.
#[derive(Default)]
struct Seen {
    /// userid → labels of the instances that answered its turns.
    instances: HashMap<String, HashSet<String>>,
    /// userid → (the cluster of its first turn, the step in its decision header).
    first: HashMap<String, (String, Option<String>)>,
    failures: Vec<String>,
}

/// Drive calls, `concurrency` at a time, until the rollout leaves `running` (or `max` calls).
/// Returns how many calls were made and the last `/admin/rollouts` entry.
async fn drive(
    gw: &Gateway,
    max: usize,
    concurrency: usize,
    seen: &Arc<Mutex<Seen>>,
) -> (usize, serde_json::Value) {
    drive_on(&[gw], max, concurrency, seen).await
}

/// [`drive`] through several replicas: turn `t` of call `i` goes to replica `(i + t) % n`;
/// the first replica's `/admin/rollouts` is watched.
async fn drive_on(
    gws: &[&Gateway],
    max: usize,
    concurrency: usize,
    seen: &Arc<Mutex<Seen>>,
) -> (usize, serde_json::Value) {
    let gw = gws[0];
    let dialogs: Arc<Vec<Dialog>> = Arc::new(gws.iter().map(|g| Dialog(g.dialog)).collect());
    let c = Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (c, next, done, seen) = (c.clone(), next.clone(), done.clone(), seen.clone());
        let gws = dialogs.clone();
        workers.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= max {
                    break;
                }
                call(&c, &gws, i, &seen).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let v: serde_json::Value =
            serde_json::from_str(&c.get_text(&gw.admin_url("/admin/rollouts")).await).unwrap();
        let r = v["rollouts"][0].clone();
        let finished = workers.iter().all(|w| w.is_finished());
        if r["status"] != "running" || finished || Instant::now() > deadline {
            break r;
        }
    };
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    (
        next.load(std::sync::atomic::Ordering::Relaxed).min(max),
        last,
    )
}

/// The dialog address of the gateway, for the worker tasks.
struct Dialog(std::net::SocketAddr);

impl Dialog {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.0, path)
    }
}

/// One whole call: 8, the menu key, (the transfer result,) and the hangup report.
async fn call(c: &Client, gws: &[Dialog], i: usize, seen: &Mutex<Seen>) {
    let userid = format!("ro-{i}");
    let path = "/oifde/rest/v2/crs/process/250";
    let url = |t: usize| gws[(i + t) % gws.len()].url(path);
    let key = if i.is_multiple_of(5) { "2" } else { "1" };
    let note = |label: Option<&str>| {
        if let Some(l) = label {
            seen.lock()
                .unwrap()
                .instances
                .entry(userid.clone())
                .or_default()
                .insert(l.to_string());
        }
    };
    let a = c.post(&url(0), body(&userid, 8, None, false)).await;
    note(a.header("x-odfs-instance"));
    let route = a.header("x-graygate-route").unwrap_or("").to_string();
    let step = route
        .split("; ")
        .find_map(|kv| kv.strip_prefix("step="))
        .map(str::to_string);
    let cluster = a.header("x-odfs-instance").unwrap_or("?").to_string();
    seen.lock()
        .unwrap()
        .first
        .insert(userid.clone(), (cluster, step));
    if a.status != 200 {
        seen.lock()
            .unwrap()
            .failures
            .push(format!("{userid} 8: {}", a.status));
        return;
    }
    let a = c.post(&url(1), body(&userid, 9, Some(key), false)).await;
    note(a.header("x-odfs-instance"));
    let last = if a.json()["outaction"].as_i64() == Some(11) {
        let a = c.post(&url(2), body(&userid, 11, None, true)).await;
        note(a.header("x-odfs-instance"));
        11
    } else {
        9
    };
    let a = c
        .post(&url(3), body(&userid, last, Some("hangup"), false))
        .await;
    note(a.header("x-odfs-instance"));
    if a.status != 200 || a.json()["outaction"].as_i64() != Some(10) {
        seen.lock()
            .unwrap()
            .failures
            .push(format!("{userid} hangup: {} {:?}", a.status, a.body));
    }
}

/// No call on two clusters, no failed turn; the steps the decision headers showed.
fn check_calls(seen: &Mutex<Seen>) -> HashSet<String> {
    let s = seen.lock().unwrap();
    no_call_on_two_clusters(&s);
    s.first.values().filter_map(|(_, st)| st.clone()).collect()
}

fn no_call_on_two_clusters(seen: &Seen) {
    let split: Vec<_> = seen
        .instances
        .iter()
        .filter(|(_, l)| l.len() != 1)
        .collect();
    assert!(
        split.is_empty(),
        "calls whose turns reached two clusters: {split:?}"
    );
    assert!(
        seen.failures.is_empty(),
        "failed turns: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_transfers_more_callers_is_aborted_at_its_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = routes(dir.path(), "agent", "{ transferred: +5%, turn_p99: null }");
    let gw = Gateway::start_in(dir, &yaml, Default::default()).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (calls, r) = drive(&gw, 2000, 16, &seen).await;
    assert_eq!(r["status"], "aborted", "after {calls} calls: {r:#}");
    assert_eq!(r["step_index"], 0, "aborted at the first step: {r:#}");
    assert_eq!(r["share"], 0.0);
    let t = &r["last_transition"];
    assert_eq!(t["kind"], "abort");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .starts_with("transferred holds"),
        "{t:#}"
    );
    let v = t["figures"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["criterion"] == "transferred")
        .unwrap()
        .clone();
    assert_eq!(v["holds"], true);
    assert_eq!(v["threshold"], "+5%");
    assert!(v["p_value"].as_f64().unwrap() < 0.05, "{v}");
    assert!(
        v["to_value"].as_f64().unwrap() > 0.1 && v["from_value"] == 0.0,
        "{v}"
    );
    // Judged at the first step that had min_calls on both sides.
    for side in ["from", "to"] {
        assert!(t["figures"][side]["ended"].as_u64().unwrap() >= 60, "{t:#}");
    }
    assert!(t["figures"]["to"]["transferred"].as_u64().unwrap() > 0);

    // Every routed first turn said the step in the decision header; after the abort the share is
    // 0: every new call goes to stable (calls started before it finish where they are).
    let steps = check_calls(&seen);
    assert!(steps.contains("20"), "{steps:?}");
    let c = Client::new();
    for i in 0..50 {
        let a = c
            .post(
                &gw.url("/oifde/rest/v2/crs/process/250"),
                body(&format!("after-{i}"), 8, None, false),
            )
            .await;
        assert_eq!(a.header("x-odfs-instance"), Some("stable"));
        assert!(
            a.header("x-graygate-route").unwrap().ends_with("; step=0"),
            "{:?}",
            a.header("x-graygate-route")
        );
    }
    // Outcomes are counted for every call, on the cluster it was pinned to.
    assert!(
        gw.metric(
            "graygate_call_outcomes_total",
            &[
                ("cluster", "canary"),
                ("rule", "v2"),
                ("outcome", "transferred")
            ]
        )
        .await
            > 0.0
    );
    assert!(
        gw.metric(
            "graygate_call_outcomes_total",
            &[
                ("cluster", "stable"),
                ("rule", "v2"),
                ("outcome", "completed")
            ]
        )
        .await
            > 0.0
    );
    assert_eq!(
        gw.metric(
            "graygate_call_outcomes_total",
            &[("cluster", "stable"), ("outcome", "transferred")]
        )
        .await,
        0.0
    );
    assert_eq!(
        gw.metric("graygate_rollout_share_percent", &[("rule", "v2")])
            .await,
        0.0
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_state",
            &[("rule", "v2"), ("state", "aborted")]
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_transitions_total",
            &[("rule", "v2"), ("to", "abort")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_canary_walks_every_step_to_completed() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = routes(dir.path(), "end", "{ transferred: +5%, turn_p99: null }");
    let gw = Gateway::start_in(dir, &yaml, Default::default()).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (calls, r) = drive(&gw, 2000, 16, &seen).await;
    assert_eq!(r["status"], "completed", "after {calls} calls: {r:#}");
    assert_eq!(r["share"], 100.0);
    assert_eq!(r["last_transition"]["kind"], "complete");
    let steps = check_calls(&seen);
    assert!(
        steps.contains("20") && steps.contains("50"),
        "every step routed calls: {steps:?}"
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_transitions_total",
            &[("rule", "v2"), ("to", "step")]
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_transitions_total",
            &[("rule", "v2"), ("to", "complete")]
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_transitions_total",
            &[("rule", "v2"), ("to", "abort")]
        )
        .await,
        0.0
    );
    let c = Client::new();
    for i in 0..30 {
        let a = c
            .post(
                &gw.url("/oifde/rest/v2/crs/process/250"),
                body(&format!("done-{i}"), 8, None, false),
            )
            .await;
        assert_eq!(
            a.header("x-odfs-instance"),
            Some("canary"),
            "completed: every new call to `to`"
        );
    }
}

// === two replicas on one Redis ===

/// The file of both replicas: the rollout of [`routes`] over two reference ODFS servers that
/// both replicas reach (a call's state lives on its ODFS, so both replicas must send its turns
/// to the same one), pins and rollout state in `redis`.
fn replica_routes(stable: &str, canary: &str, redis: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let yaml = routes(dir.path(), "end", "{ transferred: +5%, turn_p99: null }");
    let rules = &yaml[yaml.find("rules:").unwrap()..];
    format!(
        "decision_header: true\npins:\n  store: {redis}\n  redis:\n    key_prefix: \"ro-test:\"\n    timeout: 250ms\nclusters:\n  stable: {{ endpoints: [\"{stable}\"] }}\n  canary: {{ endpoints: [\"{canary}\"] }}\n{rules}"
    )
}

/// A reference ODFS of the test's own with the flow of [`flow`].
async fn odfs(label: &str, two: &str) -> (crate::backend::Odfs, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{label}.yaml"));
    std::fs::write(&path, flow(two)).unwrap();
    let o = crate::backend::Odfs::start(graygate::backend::BackendOptions {
        label: label.to_string(),
        flows: Some(path),
        ..Default::default()
    })
    .await;
    (o, dir)
}

async fn rollout_of(c: &Client, gw: &Gateway) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&c.get_text(&gw.admin_url("/admin/rollouts")).await).unwrap();
    v["rollouts"][0].clone()
}

/// Two replicas, one Redis, calls whose turns alternate between them: the rollout reaches
/// `want` through one decision, and the replica that did not see it first follows within a
/// second (same status, same transition, same epoch, one transition counted on each).
async fn two_replicas_follow_one_decision(canary_two: &str, want: &str, kind: &str) {
    let redis = crate::replicas::RedisServer::start().await;
    let (stable, _ds) = odfs("stable", "end").await;
    let (canary, _dc) = odfs("canary", canary_two).await;
    let yaml = replica_routes(&stable.url(0, ""), &canary.url(0, ""), &redis.url());
    let a = Gateway::start_with(&yaml, Default::default()).await;
    let b = Gateway::start_with(&yaml, Default::default()).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (calls, ra) = drive_on(&[&a, &b], 2000, 16, &seen).await;
    assert_eq!(ra["status"], want, "replica A after {calls} calls: {ra:#}");
    let c = Client::new();
    let seen_at = Instant::now();
    let rb = loop {
        let rb = rollout_of(&c, &b).await;
        if rb["status"] == want || seen_at.elapsed() > Duration::from_secs(1) {
            break rb;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rb["status"], want, "replica B within a second: {rb:#}");
    let ra = rollout_of(&c, &a).await;
    for k in ["epoch", "step_index", "share"] {
        assert_eq!(ra[k], rb[k], "{k}: {ra:#} / {rb:#}");
    }
    assert_eq!(ra["last_transition"], rb["last_transition"], "one decision");
    assert_eq!(ra["last_transition"]["kind"], kind);
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric(
                "graygate_rollout_transitions_total",
                &[("rule", "v2"), ("to", kind)]
            )
            .await,
            1.0,
            "one {kind} transition on each replica"
        );
        // Spec §12: the transition is in every replica's history, once, with its reason.
        let h: serde_json::Value =
            serde_json::from_str(&c.get_text(&gw.admin_url("/admin/history")).await).unwrap();
        let ours: Vec<&serde_json::Value> = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "rollout" && e["transition"] == kind)
            .collect();
        assert_eq!(ours.len(), 1, "one {kind} in the history: {h:#}");
        assert!(
            ours[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{:#}",
            ours[0]
        );
    }
    let s = seen.lock().unwrap();
    no_call_on_two_clusters(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_abort_once() {
    if !crate::replicas::redis_or_skip("two_replicas_on_one_redis_abort_once") {
        return;
    }
    two_replicas_follow_one_decision("agent", "aborted", "abort").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_complete_once() {
    if !crate::replicas::redis_or_skip("two_replicas_on_one_redis_complete_once") {
        return;
    }
    two_replicas_follow_one_decision("end", "completed", "complete").await;
}

// === operating a rollout: the admin surface, the command line, explain, history ===

/// `POST /admin/rollouts/{name}/{action}` behind the token, with its 404, 405 and 409;
/// `graygate rollout` through the same surface; `GET /admin/explain` and `graygate explain` with
/// the step and share; a history entry per transition with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drive_a_rollout_through_admin_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = routes(dir.path(), "end", "{ transferred: +5%, turn_p99: null }")
        .replacen(
            "decision_header: true\n",
            "decision_header: true\nadmin_token_file: admin.token\n",
            1,
        )
        .replace("step_min: 300ms", "step_min: 10m");
    std::fs::write(dir.path().join("admin.token"), "op-token\n").unwrap();
    let token_file = dir.path().join("admin.token");
    let routes_file = dir.path().join("routes.yaml");
    let gw = Gateway::start_in(dir, &yaml, Default::default()).await;
    let c = Client::new();
    let auth = [("authorization", "Bearer op-token")];
    let act = |name: &str, action: &str| gw.admin_url(&format!("/admin/rollouts/{name}/{action}"));

    // Behind the token.
    assert_eq!(
        c.request("POST", &act("v2", "pause"), &[], "").await.status,
        401
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/rollouts"), &[], "")
            .await
            .status,
        401
    );
    // Unknown rollout, unknown action, wrong method.
    assert_eq!(
        c.request("POST", &act("nope", "pause"), &auth, "")
            .await
            .status,
        404
    );
    assert_eq!(
        c.request("POST", &act("v2", "jump"), &auth, "")
            .await
            .status,
        404
    );
    let a = c.request("GET", &act("v2", "pause"), &auth, "").await;
    assert_eq!((a.status.as_u16(), a.header("allow")), (405, Some("POST")));

    // The step and share, offline and online.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(["explain", "-c"])
        .arg(&routes_file)
        .args(["--vdn", "250", "--userid", "who", "--json"])
        .output()
        .unwrap();
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["rule"], "v2", "{e}");
    assert_eq!(
        (
            e["rollout"]["step"].as_u64(),
            e["rollout"]["steps"].as_u64(),
            e["rollout"]["share"].as_f64()
        ),
        (Some(1), Some(3), Some(20.0)),
        "{e}"
    );
    let e: serde_json::Value = c
        .request(
            "GET",
            &gw.admin_url("/admin/explain?vdn=250&userid=who"),
            &auth,
            "",
        )
        .await
        .json();
    assert_eq!(e["rollout"]["status"], "running", "{e}");

    // pause, pause again (409), resume; abort with a reason, abort again (409); the CLI resumes.
    let a = c.request("POST", &act("v2", "pause"), &auth, "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "paused");
    assert_eq!(
        c.request("POST", &act("v2", "pause"), &auth, "")
            .await
            .status,
        409
    );
    let a = c.request("POST", &act("v2", "resume"), &auth, "").await;
    assert_eq!(a.json()["status"], "running");
    let a = c
        .request("POST", &act("v2", "abort"), &auth, r#"{"reason":"lunch"}"#)
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(
        (v["status"].as_str(), v["share"].as_f64()),
        (Some("aborted"), Some(0.0))
    );
    assert!(
        v["last_transition"]["reason"]
            .as_str()
            .unwrap()
            .contains("lunch"),
        "{v}"
    );
    assert_eq!(
        c.request("POST", &act("v2", "abort"), &auth, "")
            .await
            .status,
        409
    );
    let admin = gw.admin_url("");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
            .arg("rollout")
            .args(args)
            .args(["--admin", &admin, "--token-file"])
            .arg(&token_file)
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| cli(&["resume", "v2"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| cli(&["status", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = v["rollouts"].get(0).unwrap_or(&v);
    assert_eq!(r["status"], "running", "resumed from step 1: {v}");
    assert_eq!(r["step_index"], 0);
    let out = tokio::task::block_in_place(|| cli(&["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("v2") && text.contains("running"), "{text}");
    let out = tokio::task::block_in_place(|| cli(&["promote", "nope"]));
    assert!(!out.status.success(), "an unknown rollout fails");

    // Every transition is in the history, newest first, with its reason.
    let h: serde_json::Value = c
        .request("GET", &gw.admin_url("/admin/history"), &auth, "")
        .await
        .json();
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| e["transition"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        ["resume", "abort", "resume", "pause"],
        "newest first: {h:#}"
    );
    let abort = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["transition"] == "abort")
        .unwrap();
    assert!(
        abort["reason"].as_str().unwrap().contains("lunch"),
        "{abort}"
    );
    assert_eq!(
        (abort["rule"].as_str(), abort["to"].as_str()),
        (Some("v2"), Some("aborted"))
    );
    for (to, n) in [("pause", 1.0), ("resume", 2.0), ("abort", 1.0)] {
        assert_eq!(
            gw.metric(
                "graygate_rollout_transitions_total",
                &[("rule", "v2"), ("to", to)]
            )
            .await,
            n,
            "{to}"
        );
    }
}

/// A replica that loses Redis keeps the share it last knew and judges nothing; an operator's
/// action on it answers 503 rather than decide alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_redis_keeps_its_share_and_judges_nothing() {
    if !crate::replicas::redis_or_skip("a_replica_without_redis_keeps_its_share_and_judges_nothing")
    {
        return;
    }
    let mut redis = crate::replicas::RedisServer::start().await;
    let (stable, _ds) = odfs("stable", "end").await;
    let (canary, _dc) = odfs("canary", "agent").await;
    // Half the new calls to the canary and 20 ended calls per side: the 200 calls below would
    // abort it (one in five of its callers transferred) if it were judged.
    let yaml = replica_routes(&stable.url(0, ""), &canary.url(0, ""), &redis.url())
        .replace("steps: [20, 50, 100]", "steps: [50, 100]")
        .replace("min_calls: 60", "min_calls: 20");
    let gw = Gateway::start_with(&yaml, Default::default()).await;
    let c = Client::new();
    // The state is in Redis once a judge tick wrote it.
    let conn = redis.conn().await;
    let stored = crate::support::eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("ro-test:*rollout:v2:*:state")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            !keys.is_empty()
        }
    })
    .await;
    assert!(stored, "the rollout state was written to Redis");
    redis.kill();
    // Calls that would abort the canary: 200 of them, the canary's share of them transferring.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dialogs = [Dialog(gw.dialog)];
    for i in 0..200 {
        call(&c, &dialogs, i, &seen).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = rollout_of(&c, &gw).await;
    assert_eq!(
        (r["status"].as_str(), r["share"].as_f64()),
        (Some("running"), Some(50.0)),
        "no judging without Redis: {r:#}"
    );
    let a = c
        .request("POST", &gw.admin_url("/admin/rollouts/v2/abort"), &[], "")
        .await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    let a = c
        .post(
            &gw.url("/oifde/rest/v2/crs/process/250"),
            body("after-redis", 8, None, false),
        )
        .await;
    assert!(
        a.header("x-graygate-route").unwrap().ends_with("; step=50"),
        "{:?}",
        a.header("x-graygate-route")
    );
    assert_eq!(
        gw.metric(
            "graygate_rollout_transitions_total",
            &[("rule", "v2"), ("to", "abort")]
        )
        .await,
        0.0
    );
}

/// With the memory store the rollout's state is a section of `pins.snapshot`: a restart of the
/// gateway finds it paused at the same step, in the same epoch, with its step's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_state_survives_a_restart_in_pins_snapshot() {
    let files = tempfile::tempdir().unwrap();
    let snapshot = files.path().join("pins.snapshot");
    let (stable, _ds) = odfs("stable", "end").await;
    let (canary, _dc) = odfs("canary", "end").await;
    let yaml = replica_routes(&stable.url(0, ""), &canary.url(0, ""), "memory").replacen(
        "pins:\n  store: memory\n  redis:\n    key_prefix: \"ro-test:\"\n    timeout: 250ms\n",
        &format!("pins:\n  snapshot: {}\n", snapshot.display()),
        1,
    );
    assert!(yaml.contains("snapshot:"), "{yaml}");
    let mut gw = Gateway::start_with(&yaml, Default::default()).await;
    let c = Client::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dialogs = [Dialog(gw.dialog)];
    for i in 0..30 {
        call(&c, &dialogs, i, &seen).await;
    }
    let a = c
        .request("POST", &gw.admin_url("/admin/rollouts/v2/pause"), &[], "")
        .await;
    assert_eq!(a.status, 200);
    let before = rollout_of(&c, &gw).await;
    assert_eq!(before["status"], "paused");
    let ended = before["sides"]["from"]["ended"].as_u64().unwrap()
        + before["sides"]["to"]["ended"].as_u64().unwrap();
    assert!(ended > 0, "{before:#}");
    gw.stop().await;
    drop(gw);

    let gw = Gateway::start_with(&yaml, Default::default()).await;
    let after = rollout_of(&c, &gw).await;
    for k in [
        "status",
        "epoch",
        "step_index",
        "share",
        "step_started_at",
        "sides",
    ] {
        assert_eq!(after[k], before[k], "{k}: {after:#}");
    }
    assert_eq!(after["last_transition"]["kind"], "pause");
}
