//! One published generation (issue 13): every error of a file in one run, hostile files refused
//! with a clear error, a reload that never half-applies, a turn that keeps its generation.

use std::process::Command;

use crate::support::*;

fn stable_only(up: &Upstream) -> String {
    format!(
        "clusters:\n  stable:\n    endpoints: [{}]\n    timeout: 5s\ndefault: stable\n",
        up.url()
    )
}

async fn generation(gw: &Gateway) -> u64 {
    gw.admin_json("/admin/config").await["generation"]
        .as_u64()
        .unwrap()
}

/// The five stages' errors of one file come back together from a failed reload (422), each at
/// its own line and column, and the running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_reports_every_error_of_the_file() {
    let up = Upstream::start("stable").await;
    let gw = Gateway::start(&stable_only(&up)).await;
    let c = Client::new();
    let bad = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/routes/bad/every-stage.yaml"
    ))
    .unwrap();
    // `with_loopback` adds two lines at the top: positions move by two.
    gw.write_config(&bad);
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    let at: Vec<(u64, u64)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        at,
        [(8, 14), (10, 17), (13, 23), (17, 5), (18, 5)],
        "{errors:?}"
    );
    let text: Vec<&str> = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(text[0].contains("`soon` is not a duration"), "{text:?}");
    assert!(text[1].contains("port `99999` is out of range"), "{text:?}");
    assert!(text[2].contains("does not compile"), "{text:?}");
    assert!(text[3].contains("unknown cluster `nowhere`"), "{text:?}");
    assert!(text[4].contains("unknown key `colour`"), "{text:?}");
    assert_eq!(generation(&gw).await, 1);
    let a = c.turn(&gw, Some(101), "still-1", 8, None).await;
    assert_eq!(a.upstream(), Some("stable"));
}

/// An alias bomb (a small file standing for hundreds of megabytes).
fn alias_bomb(up: &Upstream) -> String {
    let long = format!("\"{}\"", "x".repeat(100));
    let base = vec![long.as_str(); 1500].join(", ");
    let mut y = stable_only(up);
    y.push_str(&format!(
        "rules:\n  - name: r0\n    userid: {{ exact: &a [{base}] }}\n    cluster: stable\n"
    ));
    for i in 1..4000 {
        y.push_str(&format!(
            "  - {{ name: r{i}, userid: {{ exact: *a }}, cluster: stable }}\n"
        ));
    }
    y
}

fn deep_flow(up: &Upstream) -> String {
    format!(
        "{}rules:\n  - name: deep\n    fields: {{ a: {}x{} }}\n    cluster: stable\n",
        stable_only(up),
        "[".repeat(50_000),
        "]".repeat(50_000)
    )
}

fn deep_block(up: &Upstream) -> String {
    let mut y = stable_only(up);
    y.push_str("x:\n");
    for d in 1..2000 {
        y.push_str(&" ".repeat(d));
        y.push_str("k:\n");
    }
    y
}

fn huge(up: &Upstream) -> String {
    let mut y = stable_only(up);
    y.push_str("# ");
    y.push_str(&"x".repeat(9 * 1024 * 1024));
    y.push('\n');
    y
}

/// Point 3: each hostile file is refused by a live reload with a clear error; the running
/// config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_are_refused_and_change_nothing() {
    let up = Upstream::start("stable").await;
    let gw = Gateway::start(&stable_only(&up)).await;
    let c = Client::new();
    let sha = gw.admin_json("/admin/config").await["sha256"].clone();
    let cases: [(&str, String, &str); 6] = [
        ("alias bomb", alias_bomb(&up), "aliases expanded"),
        ("deep flow", deep_flow(&up), "nesting deeper than 32 levels"),
        (
            "deep block",
            deep_block(&up),
            "nesting deeper than 32 levels",
        ),
        ("9 MiB", huge(&up), "larger than 8 MiB"),
        (
            "credentials",
            stable_only(&up).replace("http://", "http://ops:hunter2@"),
            "carries credentials",
        ),
        (
            "port",
            stable_only(&up).replace(&up.url(), "http://127.0.0.1:99999"),
            "out of range",
        ),
    ];
    for (what, yaml, says) in &cases {
        gw.write_config(yaml);
        let r = c.post(&gw.admin_url("/admin/reload"), "").await;
        assert_eq!(r.status, 422, "{what}");
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains(says), "{what}: {body}");
        assert!(
            !body.contains("hunter2"),
            "{what}: the password is repeated"
        );
        let cfg = gw.admin_json("/admin/config").await;
        assert_eq!(cfg["generation"], 1, "{what}");
        assert_eq!(cfg["sha256"], sha, "{what}");
        let a = c.turn(&gw, None, &format!("hostile-{what}"), 8, None).await;
        assert_eq!(a.upstream(), Some("stable"), "{what}");
    }
    let metrics = c.get_text(&gw.admin_url("/metrics")).await;
    assert!(!metrics.contains("hunter2"));
}

/// The bomb is refused without being expanded: `check` of it stays within 256 MiB of address
/// space (expanded, it would need gigabytes) and exits 1 with the error.
#[test]
fn check_of_an_alias_bomb_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let up_url = "http://127.0.0.1:9";
    let yaml = {
        let long = format!("\"{}\"", "x".repeat(100));
        let base = vec![long.as_str(); 1500].join(", ");
        let mut y = format!(
            "clusters:\n  stable:\n    endpoints: [{up_url}]\ndefault: stable\nrules:\n  - name: r0\n    userid: {{ exact: &a [{base}] }}\n    cluster: stable\n"
        );
        for i in 1..4000 {
            y.push_str(&format!(
                "  - {{ name: r{i}, userid: {{ exact: *a }}, cluster: stable }}\n"
            ));
        }
        y
    };
    let path = dir.path().join("bomb.yaml");
    std::fs::write(&path, &yaml).unwrap();
    assert!(yaml.len() < 400 * 1024);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v 262144; exec {} check -c {}",
            env!("CARGO_BIN_EXE_graygate"),
            path.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("aliases expanded"), "{stdout}");
}

/// Point 5: SIGTERM with a slow turn in flight. While the dialog listener drains, the admin
/// listener still answers: `/readyz` 503, `/healthz` and `/metrics` 200; it closes last, after
/// the turn has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_the_admin_listener_answering_while_a_turn_drains() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(std::time::Duration::from_millis(2500));
    let mut p = Process::start(&stable_only(&slow)).await;
    let c = Client::new();
    let url = format!("http://{}/oifde/rest/crs/process", p.dialog);
    let c2 = c.clone();
    let inflight = tokio::spawn(async move { c2.post(&url, turn_body("drain-1", 8, None)).await });
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            slow.count() == 1
        })
        .await
    );
    p.signal("TERM");
    let admin = |path: &str| format!("http://{}{path}", p.admin);
    assert!(
        eventually(std::time::Duration::from_secs(2), || async {
            c.try_get(&admin("/readyz")).await == Some(503)
        })
        .await,
        "/readyz answers 503 once SIGTERM is received"
    );
    // The turn is still in flight: the admin listener answers every probe and scrape.
    let mut answered = 0;
    loop {
        let round = (
            c.try_get(&admin("/readyz")).await,
            c.try_get(&admin("/healthz")).await,
            c.try_get(&admin("/metrics")).await,
        );
        if inflight.is_finished() {
            // This round may straddle the end of the drain.
            break;
        }
        assert_eq!(round, (Some(503), Some(200), Some(200)), "during the drain");
        answered += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        answered >= 3,
        "the drain lasted {answered} rounds of probes"
    );
    let a = inflight.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight turn finishes");
    let status = tokio::task::spawn_blocking(move || {
        let s = p.terminate();
        (s, p.logs())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
}

fn cluster<'a>(cfg: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    cfg["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {cfg}"))
}

/// Point 1: a reload whose second cluster cannot be prepared (its CA file is not a
/// certificate) changes nothing at all: the first cluster keeps its settings and endpoints,
/// the generation stays, and the answer is 422 with the error at the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_second_cluster_cannot_be_prepared_changes_nothing() {
    let (one, two, three) = (
        Upstream::start("one").await,
        Upstream::start("two").await,
        Upstream::start("three").await,
    );
    let before = format!(
        "clusters:\n  a-first:\n    endpoints: [{}]\n    timeout: 5s\n  b-second:\n    endpoints: [{}]\ndefault: a-first\n",
        one.url(),
        two.url()
    );
    let gw = Gateway::start(&before).await;
    std::fs::write(gw.dir.path().join("bad-ca.pem"), "this is no certificate\n").unwrap();
    let after = format!(
        "clusters:\n  a-first:\n    endpoints: [{}, {}]\n    timeout: 7s\n  b-second:\n    endpoints: [{}]\n    tls: {{ ca: bad-ca.pem }}\ndefault: a-first\n",
        one.url(),
        three.url(),
        two.url()
    );
    // The file itself is valid: `check` accepts it (the CA is read only when prepared).
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(["check", "-c"])
        .arg(&gw.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    gw.write_config(&after);
    let c = Client::new();
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let err = &r.json()["errors"][0];
    assert!(
        err["message"].as_str().unwrap().contains("bad-ca.pem"),
        "{err}"
    );
    assert_eq!(err["path"], "clusters.b-second", "{err}");
    assert_eq!(err["line"], 7, "{err}");
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(cfg["generation"], 1);
    let a = cluster(&cfg, "a-first");
    assert_eq!(a["timeout_ms"], 5000, "{a}");
    let urls: Vec<&str> = a["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [one.url()], "{a}");
    for i in 0..6 {
        let a = c.turn(&gw, None, &format!("unchanged-{i}"), 8, None).await;
        assert_eq!(a.upstream(), Some("one"));
    }
    assert_eq!(three.count(), 0);
}

/// Point 1: a turn whose head arrived before a reload that changes its cluster's timeout and
/// endpoints finishes under its own generation: the old endpoint, the old timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_open_across_a_reload_keeps_its_generation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (old, new) = (Upstream::start("old").await, Upstream::start("new").await);
    old.set_delay(std::time::Duration::from_millis(1200));
    let gw = Gateway::start(&format!(
        "clusters:\n  stable:\n    endpoints: [{}]\n    timeout: 5s\ndefault: stable\n",
        old.url()
    ))
    .await;
    let body = turn_body("held-1", 8, None);
    let (first, rest) = body.split_at(body.len() / 2);
    let mut s = tokio::net::TcpStream::connect(gw.dialog).await.unwrap();
    s.write_all(
        format!(
            "POST /oifde/rest/crs/process HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Let the head arrive (the turn loads its generation then).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gw.write_config(&format!(
        "clusters:\n  stable:\n    endpoints: [{}]\n    timeout: 300ms\ndefault: stable\n",
        new.url()
    ));
    let c = Client::new();
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.json()["generation"], 2);
    s.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-upstream: old"), "{answer}");
    assert_eq!(new.count(), 0);
    // A turn that starts now is generation 2's: the new endpoint.
    let a = c.turn(&gw, None, "after-1", 8, None).await;
    assert_eq!(a.upstream(), Some("new"));
}

fn sha256_hex(data: &[u8]) -> String {
    graygate::config::sha256_hex(data)
}

/// Acceptance: `POST /admin/reload` of the same file twice answers 200 both times and changes
/// nothing; a file that differs only in a comment is a new generation whose plan says "no
/// change"; a changed rule is named in the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_reloaded_twice_is_200_and_changes_nothing() {
    let up = Upstream::start("stable").await;
    let yaml = format!(
        "{}rules:\n  - name: web\n    headers: {{ x-gray: [canary] }}\n    cluster: stable\n",
        stable_only(&up)
    );
    let gw = Gateway::start(&yaml).await;
    let c = Client::new();
    for _ in 0..2 {
        let r = c.post(&gw.admin_url("/admin/reload"), "").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["generation"], 1);
    }
    let history = || async {
        gw.admin_json("/admin/history").await["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(history().await.len(), 1, "only the start event");
    gw.write_config(&format!("# a comment\n{yaml}"));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["generation"], 2);
    let ev = history().await;
    let changes = &ev[0]["plan"]["changes"];
    for (k, list) in changes.as_object().unwrap() {
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{k}: {changes}");
    }
    gw.write_config(&yaml.replace("[canary]", "[beta]"));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200);
    let ev = history().await;
    assert_eq!(
        ev[0]["plan"]["changes"]["rules_changed"],
        serde_json::json!(["web"]),
        "{}",
        ev[0]
    );
}

/// Point 6: the hash a failed reload records is that of the bytes it compiled (the file is
/// read once), shown in `/admin/config` and the history; a fix then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_records_the_hash_of_the_bytes_it_compiled() {
    let up = Upstream::start("stable").await;
    let gw = Gateway::start(&stable_only(&up)).await;
    let c = Client::new();
    let bad = stable_only(&up).replace("5s", "soon");
    gw.write_config(&bad);
    let bytes = std::fs::read(&gw.path).unwrap();
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422);
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(cfg["last_reload_error_sha256"], sha256_hex(&bytes), "{cfg}");
    let ev = gw.admin_json("/admin/history").await;
    assert_eq!(ev["events"][0]["kind"], "reload_failed", "{ev}");
    assert_eq!(ev["events"][0]["sha256"], sha256_hex(&bytes), "{ev}");
    gw.write_config(&stable_only(&up).replace("5s", "6s"));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["generation"], 2);
    let cfg = gw.admin_json("/admin/config").await;
    assert!(cfg["last_reload_error_sha256"].is_null(), "{cfg}");
}

/// Point 4: the name table grows only by the names of files that compiled. A failed reload
/// with thousands of made-up rule names and the hostile files add nothing; renaming three rules
/// adds three; reloading the same names adds none. (The real binary: the table is per process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_file_that_compiles_adds_names() {
    let up = Upstream::start("stable").await;
    let rules = |prefix: &str, n: usize| {
        let mut y = stable_only(&up);
        y.push_str("rules:\n");
        for i in 0..n {
            y.push_str(&format!(
                "  - {{ name: {prefix}{i}, vdn: [{}], cluster: stable }}\n",
                1000 + i
            ));
        }
        y
    };
    let p = Process::start(&rules("r", 10)).await;
    let c = Client::new();
    let names = || async {
        let cfg = c
            .request("GET", &format!("http://{}/admin/config", p.admin), &[], "")
            .await
            .json();
        cfg["name_table"]["names"].as_u64().unwrap()
    };
    let start = names().await;
    let write = |y: &str| {
        let text = std::fs::read_to_string(&p.path).unwrap();
        let head: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&p.path, format!("{head}{y}")).unwrap();
    };
    let reload = || async {
        c.post(&format!("http://{}/admin/reload", p.admin), "")
            .await
            .status
    };
    // Made-up cluster and rule names, and one error: nothing is interned.
    let made_up_clusters: String = (0..200)
        .map(|i| format!("  made-up-c{i}: {{ endpoints: [{}] }}\n", up.url()))
        .collect();
    write(&format!(
        "{}  - {{ name: broken, cluster: nowhere }}\n",
        rules("made-up-", 3000).replacen(
            "clusters:\n",
            &format!("clusters:\n{made_up_clusters}"),
            1
        )
    ));
    assert_eq!(reload().await, 422);
    assert_eq!(names().await, start);
    for bad in [
        alias_bomb(&up),
        deep_block(&up),
        stable_only(&up).replace("5s", "soon"),
    ] {
        write(&bad);
        assert_eq!(reload().await, 422);
    }
    assert_eq!(names().await, start, "hostile files add no names");
    // Three new names.
    write(
        &rules("r", 10)
            .replace("name: r7,", "name: s7,")
            .replace("name: r8,", "name: s8,")
            .replace("name: r9,", "name: s9,"),
    );
    assert_eq!(reload().await, 200);
    assert_eq!(names().await, start + 3);
    write(&rules("r", 10));
    assert_eq!(reload().await, 200);
    assert_eq!(
        names().await,
        start + 3,
        "names come back with their old ids"
    );
    drop(p);
}

/// Point 6: a key read only at start (a connection-level limit) changed in the file is named
/// in `restart_needed`; the plan shows what the reload did change (the cluster) and not the
/// limit, which keeps its running value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_key_is_named_and_the_plan_shows_what_changed() {
    let up = Upstream::start("stable").await;
    let before = format!("{}limits:\n  idle_timeout: 60s\n", stable_only(&up));
    let gw = Gateway::start(&before).await;
    let c = Client::new();
    gw.write_config(
        &before
            .replace("60s", "5s")
            .replace("timeout: 5s\n", "timeout: 6s\n"),
    );
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(
        cfg["restart_needed"],
        serde_json::json!(["limits (connection-level)"]),
        "{cfg}"
    );
    let ev = gw.admin_json("/admin/history").await;
    let changes = &ev["events"][0]["plan"]["changes"];
    assert_eq!(
        changes["clusters_changed"],
        serde_json::json!(["stable"]),
        "{changes}"
    );
    assert_eq!(
        changes["settings_changed"],
        serde_json::json!([]),
        "{changes}"
    );
}
