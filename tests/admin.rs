//! The admin surface (spec §4) and the metrics contract (spec §6).

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_config_and_explain() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "rules:\n  - { name: t, vdn: [101], cluster: canary }\n  - { name: ramp, split: { canary: 10, stable: 90 } }\ndefault: stable\n")).await;
    let c = Client::new();
    assert_eq!(
        c.request("GET", &gw.admin_url("/healthz"), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["sha256"].as_str().unwrap().len(), 64);
    assert!(cfg["last_reload_error"].is_null());
    assert_eq!(cfg["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["clusters"][0]["state"], "active");
    assert_eq!(cfg["clusters"][0]["endpoints"][0]["healthy"], true);
    assert_eq!(cfg["rules"][0]["name"], "t");
    assert_eq!(cfg["rules"][1]["target"]["split"]["canary"], 10.0);

    let e = c
        .request(
            "GET",
            &gw.admin_url("/admin/explain?vdn=101&userid=abc"),
            &[],
            "",
        )
        .await
        .json();
    assert_eq!(
        (e["rule"].as_str(), e["cluster"].as_str()),
        (Some("t"), Some("canary"))
    );
    assert!(e["pin"].is_null());
    // After the call starts, explain shows the pin.
    c.turn(&gw, Some(101), "abc", 8, None).await;
    let e = c
        .request(
            "GET",
            &gw.admin_url("/admin/explain?vdn=7&userid=abc&inaction=9"),
            &[],
            "",
        )
        .await
        .json();
    assert_eq!(e["pin"]["cluster"], "canary");
    assert_eq!(
        c.request(
            "GET",
            &gw.admin_url("/admin/explain?vdn=x&userid=a"),
            &[],
            ""
        )
        .await
        .status,
        400
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/nobody"), &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/nothing"), &[], "")
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_answers_200_or_422_and_keeps_the_running_config() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "default: stable\n")).await;
    let c = Client::new();
    gw.write_config(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: t, vdn: [101], cluster: nowhere }\ndefault: stable\n",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 422);
    let errs = r.json()["errors"].as_array().unwrap().clone();
    assert_eq!(errs.len(), 1);
    assert!(errs[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown cluster `nowhere`"));
    assert!(errs[0]["line"].as_u64().unwrap() > 1 && errs[0]["column"].as_u64().unwrap() > 1);
    let cfg = gw.admin_json("/admin/config").await;
    assert_eq!(cfg["generation"], 1, "the running config stays");
    assert!(cfg["last_reload_error"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nowhere"));
    assert_eq!(
        gw.metric("graygate_config_reloads_total", &[("result", "failure")])
            .await,
        1.0
    );
    assert_eq!(
        c.turn(&gw, Some(101), "r1", 8, None).await.upstream(),
        Some("stable")
    );

    gw.write_config(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: t, vdn: [101], cluster: canary }\ndefault: stable\n",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(gw.metric("graygate_config_generation", &[]).await, 2.0);
    assert_eq!(
        gw.metric("graygate_config_reloads_total", &[("result", "success")])
            .await,
        2.0
    );
    assert!(
        gw.metric("graygate_config_last_reload_success_timestamp_seconds", &[])
            .await
            > 1.7e9
    );
    assert!(gw.admin_json("/admin/config").await["last_reload_error"].is_null());
    assert_eq!(
        c.turn(&gw, Some(101), "r2", 8, None).await.upstream(),
        Some("canary")
    );
    // The same content again changes nothing but is reported.
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(
        gw.metric("graygate_config_reloads_total", &[("result", "success")])
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_admin_paths_only() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").unwrap();
    let gw = Gateway::start_in(
        dir,
        &two_clusters(
            &stable,
            &canary,
            "admin_token_file: admin.token\ndefault: stable\n",
        ),
        graygate::app::StartOptions {
            watch: false,
            sighup: false,
            ..Default::default()
        },
    )
    .await;
    let c = Client::new();
    assert_eq!(
        c.request("GET", &gw.admin_url("/metrics"), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
    for (method, path) in [
        ("GET", "/admin/config"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/pins/x"),
        ("DELETE", "/admin/pins/x"),
        ("GET", "/admin/explain?userid=x"),
        ("GET", "/admin/history"),
    ] {
        let a = c.request(method, &gw.admin_url(path), &[], "").await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        let a = c
            .request(
                method,
                &gw.admin_url(path),
                &[("authorization", "Bearer wrong")],
                "",
            )
            .await;
        assert_eq!(a.status, 401);
        let a = c
            .request(
                method,
                &gw.admin_url(path),
                &[("authorization", "Bearer s3cret-token")],
                "",
            )
            .await;
        assert_ne!(a.status, 401, "{method} {path}");
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        for auth in [
            "bearer s3cret-token",
            "BEARER s3cret-token",
            "Bearer  s3cret-token",
        ] {
            let a = c
                .request(method, &gw.admin_url(path), &[("authorization", auth)], "")
                .await;
            assert_ne!(a.status, 401, "{method} {path} {auth:?}");
        }
        for auth in [
            "bearer S3CRET-TOKEN",
            "bearers3cret-token",
            "Basic s3cret-token",
        ] {
            let a = c
                .request(method, &gw.admin_url(path), &[("authorization", auth)], "")
                .await;
            assert_eq!(a.status, 401, "{method} {path} {auth:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_metrics_and_cpu_seconds_with_a_fraction() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "default: stable\n")).await;
    let c = Client::new();
    let a = c.request("HEAD", &gw.admin_url("/metrics"), &[], "").await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    assert_eq!(a.header("content-type"), Some("text/plain; version=0.0.4"));
    // Some CPU for the process to have used, then the counter has a fractional part (the
    // prometheus crate's own collector exports whole seconds).
    let start = tokio::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(50) {
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    std::hint::black_box(x);
    let text = c.get_text(&gw.admin_url("/metrics")).await;
    let cpu =
        metric_value(&text, "process_cpu_seconds_total", &[]).expect("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu.fract() != 0.0, "{cpu}");
    assert!(metric_value(&text, "process_open_fds", &[]).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_contract_names_and_labels() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "    fallback: stable\nrules:\n  - { name: t, vdn: [101], cluster: canary }\n  - { name: ro, vdn: [300], rollout: { from: stable, to: canary, steps: [1, 100] } }\ndefault: stable\n")).await;
    let c = Client::new();
    c.turn(&gw, Some(101), "m1", 8, None).await;
    c.turn(&gw, Some(101), "m1", 9, Some("hangup")).await;
    c.turn(&gw, Some(101), "m2", 12, None).await;
    c.post(&gw.url("/oifde/rest/v2/crs/process/x"), "{}").await;
    let text = c.get_text(&gw.admin_url("/metrics")).await;
    for name in graygate::metrics::NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "missing {name}");
    }
    let has = |s: &str| {
        assert!(
            text.lines().any(|l| l.starts_with(s)),
            "missing series {s}\n{text}"
        )
    };
    has(r#"graygate_requests_total{cluster="canary",code="200",inaction="8",rule="t"} 1"#);
    has(r#"graygate_requests_total{cluster="canary",code="200",inaction="9",rule="t"} 1"#);
    has(r#"graygate_requests_total{cluster="canary",code="200",inaction="other",rule="t"} 1"#);
    has(r#"graygate_requests_total{cluster="-",code="400",inaction="other",rule="-"} 1"#);
    has(r#"graygate_request_duration_seconds_bucket{cluster="canary",inaction="8","#);
    has(r#"graygate_upstream_duration_seconds_count{cluster="canary"}"#);
    has(r#"graygate_gateway_errors_total{code="GW.BAD_URL"} 1"#);
    has(r#"graygate_pins_created_total{cluster="canary"} 2"#);
    has(r#"graygate_pins_released_total{cluster="canary",reason="hangup"} 1"#);
    has(r#"graygate_pins{cluster="canary"} 1"#);
    has(r#"graygate_orphan_turns_total{action="routed"} 1"#);
    has(r#"graygate_config_generation 1"#);
    has(r#"graygate_upstream_endpoint_healthy{cluster="stable",endpoint="http://"#);
    has(r#"graygate_connections{listener="dialog"}"#);
    has(r#"graygate_rejected_connections_total{reason="max_connections"} 0"#);
    has(r#"graygate_call_outcomes_total{cluster="canary",outcome="completed",rule="t"} 1"#);
    has(r#"graygate_rollout_share_percent{rule="ro"} 1"#);
    has(r#"graygate_rollout_state{rule="ro",state="running"} 1"#);
    has(r#"graygate_rollout_state{rule="ro",state="aborted"} 0"#);
    has(r#"graygate_rollout_transitions_total{rule="ro",to="abort"} 0"#);
    has("process_resident_memory_bytes");
    // Never a vdn or userid label.
    assert!(!text.contains("userid=") && !text.contains("vdn="));
}
