//! Hot reload under traffic (issue 4): file watch by in-place write, rename and ConfigMap-style
//! symlink swap; SIGHUP; retired clusters; pins across a graceful restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use graygate::app::StartOptions;
use graygate::config::sha256_hex;

use crate::support::*;

#[derive(Clone, Copy, Debug)]
enum Mode {
    InPlace,
    Rename,
    ConfigMap,
}

fn write_mode(mode: Mode, dir: &Path, text: &str, k: usize) {
    let path = dir.join("routes.yaml");
    match mode {
        Mode::InPlace => std::fs::write(&path, text).unwrap(),
        Mode::Rename => {
            let tmp = dir.join(".routes.yaml.swp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        Mode::ConfigMap => {
            // Kubernetes: routes.yaml -> ..data/routes.yaml, ..data -> ..<version>; an update
            // writes a new version directory and swaps ..data atomically.
            let version = dir.join(format!("..v{k}"));
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("routes.yaml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("..v{k}"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
        }
    }
}

/// Config number `k` of the rollout: weights move, rules come and go, `old` drains and then
/// leaves. `marker` routes one probe userid to a known cluster so the test can see that this
/// very edit is live.
fn config(up: &[&Upstream; 3], k: usize) -> (String, &'static str) {
    let w = 10 + (k * 7) % 80;
    let marker = if k.is_multiple_of(2) {
        "canary"
    } else {
        "stable"
    };
    let old_cluster = match k {
        0..=5 => format!("  old:\n    endpoints: [{}]\n", up[2].url()),
        6..=11 => format!(
            "  old:\n    endpoints: [{}]\n    drain: true\n",
            up[2].url()
        ),
        _ => String::new(),
    };
    let old_rule = if k <= 5 {
        "  - { name: old-tenant, vdn: [300], cluster: old }\n"
    } else {
        ""
    };
    let tenant = if k.is_multiple_of(3) {
        "  - { name: tenant, vdn: [101], cluster: canary }\n"
    } else {
        ""
    };
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ndecision_header: true\nclusters:\n  stable:\n    endpoints: [{}]\n  canary:\n    endpoints: [{}]\n{old_cluster}rules:\n  - {{ name: marker, userid: {{ exact: [probe-{k}] }}, cluster: {marker} }}\n{old_rule}{tenant}  - {{ name: ramp, split: {{ canary: {w}, stable: {} }} }}\ndefault: stable\n",
        up[0].url(),
        up[1].url(),
        100 - w
    );
    (text, marker)
}

const BROKEN: &[&str] = &[
    "clusters:\n  stable:\n    endpoints: [http://127.0.0.1:1]\nrules:\n  - { name: x, cluster: nowhere }\ndefault: stable\n",
    "clusters:\n  stable: { endpoints: [http://127.0.0.1:1] \n",
    "clusters:\n  stable:\n    endpoints: [http://127.0.0.1:1]\n    wat: 1\ndefault: stable\n",
];

async fn admin_json(c: &Client, gw: &Gateway, path: &str) -> serde_json::Value {
    c.request("GET", &gw.admin_url(path), &[], "").await.json()
}

async fn rollout(mode: Mode) {
    let up = [
        &Upstream::start("stable").await,
        &Upstream::start("canary").await,
        &Upstream::start("old").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = config(&up, 0);
    let path: PathBuf = match mode {
        Mode::ConfigMap => {
            std::fs::create_dir(dir.path().join("..v0")).unwrap();
            std::fs::write(dir.path().join("..v0/routes.yaml"), &first).unwrap();
            std::os::unix::fs::symlink("..v0", dir.path().join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/routes.yaml", dir.path().join("routes.yaml"))
                .unwrap();
            dir.path().join("routes.yaml")
        }
        _ => {
            std::fs::write(dir.path().join("routes.yaml"), &first).unwrap();
            dir.path().join("routes.yaml")
        }
    };
    let opts = StartOptions {
        watch: true,
        sighup: false,
        debounce: Duration::from_millis(100),
        sweep_every: Duration::from_millis(200),
        ..StartOptions::default()
    };
    let gw = Gateway::start_path(dir, path, opts).await;
    let c = Client::new();

    // Steady traffic: 200 concurrent call loops, every turn checked against its call's first cluster.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, moved, turns) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut loops = Vec::new();
    for w in 0..200 {
        let (c, stop, failed, moved, turns) = (
            c.clone(),
            stop.clone(),
            failed.clone(),
            moved.clone(),
            turns.clone(),
        );
        let base = gw.url("");
        loops.push(tokio::spawn(async move {
            let mut call = 0;
            while !stop.load(Ordering::Relaxed) {
                let userid = format!("{mode:?}-{w}-{call}");
                let vdn = [7, 101, 300][call % 3];
                let url = format!("{base}/oifde/rest/v2/crs/process/{vdn}");
                let mut first: Option<String> = None;
                for (i, inaction) in [8, 9, 9, 9].into_iter().enumerate() {
                    let input = if i == 3 { "hangup" } else { "1" };
                    let a = c
                        .post(&url, turn_body(&userid, inaction, Some(input)))
                        .await;
                    turns.fetch_add(1, Ordering::Relaxed);
                    if a.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "{mode:?}: {userid} turn {i} answered {}: {}",
                            a.status,
                            String::from_utf8_lossy(&a.body)
                        );
                        break;
                    }
                    let up = a.upstream().unwrap_or("?").to_string();
                    match &first {
                        None => first = Some(up),
                        Some(f) if *f != up => {
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                call += 1;
            }
        }));
    }

    let mut generation = 1;
    let mut failures = 0.0;
    let mut last_marker = ("probe-0".to_string(), "canary");
    for k in 1..=17usize {
        if k.is_multiple_of(4) {
            // A broken file in between: rejected, the old config keeps serving.
            let bad = BROKEN[k % BROKEN.len()];
            write_mode(mode, gw.path.parent().unwrap(), bad, 1000 + k);
            failures += 1.0;
            // An in-place write may also be seen empty or half-written first (another counted
            // failure, cleared by the next success), so wait for this file's own error too.
            let ok = eventually(Duration::from_secs(10), || async {
                gw.metric("graygate_config_reloads_total", &[("result", "failure")])
                    .await
                    >= failures
                    && !admin_json(&c, &gw, "/admin/config").await["last_reload_error"].is_null()
            })
            .await;
            assert!(ok, "{mode:?}: broken file {k} was not reported");
            let cfg = admin_json(&c, &gw, "/admin/config").await;
            assert_eq!(
                cfg["generation"], generation,
                "a broken file must not replace the running config"
            );
            assert!(!cfg["last_reload_error"].is_null());
            let a = c
                .turn(
                    &gw,
                    Some(9),
                    &format!("{}-again-{k}", last_marker.0),
                    8,
                    None,
                )
                .await;
            assert_eq!(a.status, 200);
            continue;
        }
        let (text, marker) = config(&up, k);
        write_mode(mode, gw.path.parent().unwrap(), &text, k);
        generation += 1;
        let g = generation;
        let applied = eventually(Duration::from_secs(10), || async {
            // An in-place write may be seen half-written first: a truncated file that still
            // parses is applied and then replaced by the whole one (two generations).
            let cfg = admin_json(&c, &gw, "/admin/config").await;
            cfg["generation"].as_u64().unwrap_or(0) >= g
                && cfg["sha256"] == sha256_hex(text.as_bytes())
        })
        .await;
        assert!(applied, "{mode:?}: edit {k} was not applied");
        generation = admin_json(&c, &gw, "/admin/config").await["generation"]
            .as_u64()
            .unwrap();
        let a = c.turn(&gw, Some(9), &format!("probe-{k}"), 8, None).await;
        assert_eq!(
            a.upstream(),
            Some(marker),
            "{mode:?}: edit {k} must apply to new calls"
        );
        last_marker = (format!("probe-{k}"), marker);
        // `old` drains at 6 and leaves at 12: no new calls reach it after the drain.
        if k >= 6 {
            for n in 0..5 {
                let a = c
                    .turn(
                        &gw,
                        Some(300),
                        &format!("drain-check-{k}-{n}"),
                        8,
                        Some("hangup"),
                    )
                    .await;
                assert_ne!(
                    a.upstream(),
                    Some("old"),
                    "{mode:?}: a draining or removed cluster got a new call"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (failed, moved, turns) = (
        failed.load(Ordering::Relaxed),
        moved.load(Ordering::Relaxed),
        turns.load(Ordering::Relaxed),
    );
    eprintln!("{mode:?}: {turns} turns, {failed} failed, {moved} moved");
    assert!(turns > 1000, "{mode:?}: too little traffic ({turns})");
    assert_eq!(failed, 0, "{mode:?}: failed requests during reloads");
    assert_eq!(
        moved, 0,
        "{mode:?}: turns reached another cluster than their call's first"
    );
    // The retired `old` cluster disappears once its last call hung up.
    let gone = eventually(Duration::from_secs(10), || async {
        admin_json(&c, &gw, "/admin/config").await["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["name"] != "old")
    })
    .await;
    assert!(gone, "{mode:?}: retired cluster still listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_by_in_place_writes() {
    rollout(Mode::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_by_rename() {
    rollout(Mode::Rename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_by_configmap_symlink_swap() {
    rollout(Mode::ConfigMap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_cluster_serves_its_calls_to_hangup_then_disappears() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: t, vdn: [101], cluster: canary }\ndefault: stable\n",
    ))
    .await;
    let c = Client::new();
    c.turn(&gw, Some(101), "ret-1", 8, None).await;
    gw.write_config(&format!(
        "clusters:\n  stable: {{ endpoints: [{}] }}\ndefault: stable\n",
        stable.url()
    ));
    assert_eq!(c.post(&gw.admin_url("/admin/reload"), "").await.status, 200);
    let cfg = admin_json(&c, &gw, "/admin/config").await;
    let canary_view = cfg["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "canary")
        .cloned()
        .unwrap();
    assert_eq!(canary_view["state"], "retired");
    assert_eq!(canary_view["pinned_calls"], 1);
    assert_eq!(
        gw.metric("graygate_pins", &[("cluster", "canary")]).await,
        1.0
    );
    // New calls on vdn 101 now go to stable; the pinned call stays on the retired canary.
    assert_eq!(
        c.turn(&gw, Some(101), "ret-2", 8, None).await.upstream(),
        Some("stable")
    );
    let a = c.turn(&gw, Some(101), "ret-1", 9, Some("1")).await;
    assert_eq!(a.upstream(), Some("canary"));
    let a = c.turn(&gw, Some(101), "ret-1", 9, Some("hangup")).await;
    assert_eq!(a.upstream(), Some("canary"));
    let gone = eventually(Duration::from_secs(5), || async {
        admin_json(&c, &gw, "/admin/config").await["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["name"] != "canary")
    })
    .await;
    assert!(gone, "retired cluster must disappear after its last pin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let p = Process::start(&two_clusters(&stable, &canary, "default: stable\n")).await;
    let c = Client::new();
    let url = format!("http://{}/oifde/rest/v2/crs/process/101", p.dialog);
    assert_eq!(
        c.post(&url, turn_body("hup-1", 8, None)).await.upstream(),
        Some("stable")
    );
    let text = std::fs::read_to_string(&p.path).unwrap().replace(
        "default: stable",
        "rules:\n  - { name: t, vdn: [101], cluster: canary }\ndefault: stable",
    );
    // Write elsewhere and rename, so only the signal can make it reload (no watcher race).
    std::fs::write(&p.path, text).unwrap();
    p.signal("HUP");
    let admin = format!("http://{}/admin/config", p.admin);
    let ok = eventually(Duration::from_secs(10), || async {
        c.request("GET", &admin, &[], "").await.json()["generation"] == 2
    })
    .await;
    assert!(ok, "SIGHUP did not reload: {}", p.logs());
    assert_eq!(
        c.post(&url, turn_body("hup-2", 8, None)).await.upstream(),
        Some("canary")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_calls_on_their_cluster() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("pins.jsonl");
    let yaml = two_clusters(&stable, &canary, &format!("pins: {{ snapshot: {} }}\nrules:\n  - {{ name: t, vdn: [101], cluster: canary }}\ndefault: stable\n", snap.display()));
    let mut p = Process::start_in(dir, &yaml).await;
    let c = Client::new();
    let url = |p: &Process| format!("http://{}/oifde/rest/v2/crs/process/101", p.dialog);
    assert_eq!(
        c.post(&url(&p), turn_body("restart-1", 8, None))
            .await
            .upstream(),
        Some("canary")
    );
    // The rules change while the gateway is down: vdn 101 now goes to stable.
    let (d, a) = (p.dialog.port(), p.admin.port());
    let status = p.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{}",
        p.logs()
    );
    assert!(p.logs().contains("pins saved"), "{}", p.logs());
    let text = std::fs::read_to_string(&p.path)
        .unwrap()
        .replace("cluster: canary }", "cluster: stable }");
    std::fs::write(&p.path, text).unwrap();
    let dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
    let path = p.path.clone();
    drop(p);
    let p2 = Process::spawn(dir, path, d, a).await;
    let after = c
        .post(&url(&p2), turn_body("restart-1", 9, Some("1")))
        .await;
    assert_eq!(
        after.upstream(),
        Some("canary"),
        "the call continues where it started"
    );
    assert_eq!(
        after
            .header("x-graygate-route")
            .map(|h| h.contains("pin=kept")),
        Some(true)
    );
    assert_eq!(
        c.post(&url(&p2), turn_body("restart-2", 8, None))
            .await
            .upstream(),
        Some("stable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readyz_503_and_finishes_in_flight() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(600));
    let gw = Gateway::start(&format!(
        "clusters:\n  stable: {{ endpoints: [{}] }}\ndefault: stable\n",
        slow.url()
    ))
    .await;
    let c = Client::new();
    let (c2, url) = (c.clone(), gw.url("/oifde/rest/crs/process"));
    let inflight = tokio::spawn(async move { c2.post(&url, turn_body("slow-1", 8, None)).await });
    assert!(eventually(Duration::from_secs(5), || async { slow.count() == 1 }).await);
    gw.shutdown.trigger();
    let ready = eventually(Duration::from_secs(2), || async {
        c.try_get(&gw.admin_url("/readyz")).await == Some(503)
    })
    .await;
    assert!(
        ready,
        "readyz must answer 503 at once (the admin listener drains last)"
    );
    let a = inflight.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight turn finishes");
}
