//! The call-pin lifecycle of spec §5 against real upstreams.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_stay_on_their_first_upstream() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: half, split: { canary: 1, stable: 1 } }\ndefault: stable\n",
    ))
    .await;
    let c = Client::new();
    let mut tasks = Vec::new();
    for k in 0..200 {
        let c = c.clone();
        let url = gw.url("/oifde/rest/v2/crs/process/7");
        tasks.push(tokio::spawn(async move {
            let userid = format!("conc-{k}");
            let mut first = None;
            for (i, inaction) in [8, 9, 9, 9, 9].into_iter().enumerate() {
                let input = if i == 4 { Some("hangup") } else { Some("1") };
                let a = c.post(&url, turn_body(&userid, inaction, input)).await;
                assert_eq!(a.status, 200);
                let up = a.upstream().unwrap().to_string();
                match &first {
                    None => first = Some(up),
                    Some(f) => assert_eq!(f, &up, "{userid} moved"),
                }
            }
            first.unwrap()
        }));
    }
    let mut on_canary = 0;
    for t in tasks {
        if t.await.unwrap() == "canary" {
            on_canary += 1;
        }
    }
    assert!(
        on_canary > 50 && on_canary < 150,
        "split 50/50 gave {on_canary}/200"
    );
    assert_eq!(stable.count() + canary.count(), 1000);
    assert_eq!(gw.pins.view()["local_pins"], 0, "every call hung up");
    assert_eq!(
        gw.metric("graygate_pins_released_total", &[("reason", "hangup")])
            .await,
        200.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_hold_when_rules_change() {
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
    assert_eq!(
        c.turn(&gw, Some(101), "keep-1", 8, None).await.upstream(),
        Some("canary")
    );
    assert_eq!(
        c.turn(&gw, Some(5), "keep-2", 8, None).await.upstream(),
        Some("stable")
    );
    // Flip everything: vdn 101 to stable, everything else to canary.
    gw.write_config(&two_clusters(
        &stable,
        &canary,
        "rules:\n  - { name: t, vdn: [101], cluster: stable }\ndefault: canary\n",
    ));
    let r = c.post(&gw.admin_url("/admin/reload"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["generation"], 2);
    let a = c.turn(&gw, Some(101), "keep-1", 9, Some("1")).await;
    assert_eq!(a.upstream(), Some("canary"));
    assert_eq!(
        a.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=kept; generation=2")
    );
    assert_eq!(
        c.turn(&gw, Some(5), "keep-2", 9, Some("1"))
            .await
            .upstream(),
        Some("stable")
    );
    // New calls follow the new rules.
    assert_eq!(
        c.turn(&gw, Some(101), "new-1", 8, None).await.upstream(),
        Some("stable")
    );
    assert_eq!(
        c.turn(&gw, Some(5), "new-2", 8, None).await.upstream(),
        Some("canary")
    );
    // A pin records the generation that created it.
    let p = gw.admin_json("/admin/pins/new-1").await;
    assert_eq!(p["generation"], 2);
    assert_eq!(p["cluster"], "stable");
    let p = gw.admin_json("/admin/pins/keep-1").await;
    assert_eq!(p["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_releases_at_once_and_admin_delete_releases() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "default: stable\n")).await;
    let c = Client::new();
    c.turn(&gw, Some(1), "h1", 8, None).await;
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/h1"), &[], "")
            .await
            .status,
        200
    );
    c.turn(&gw, Some(1), "h1", 9, Some("hangup")).await;
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/h1"), &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        gw.metric(
            "graygate_pins_released_total",
            &[("cluster", "stable"), ("reason", "hangup")]
        )
        .await,
        1.0
    );

    c.turn(&gw, Some(1), "a1", 8, None).await;
    let d = c
        .request("DELETE", &gw.admin_url("/admin/pins/a1"), &[], "")
        .await;
    assert_eq!(d.status, 204);
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/a1"), &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        gw.metric("graygate_pins_released_total", &[("reason", "admin")])
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("graygate_pins", &[("cluster", "stable")]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pins_expire() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let opts = graygate::app::StartOptions {
        watch: false,
        sighup: false,
        sweep_every: Duration::from_millis(50),
        ..Default::default()
    };
    let gw = Gateway::start_with(
        &two_clusters(
            &stable,
            &canary,
            "pins: { idle_ttl: 300ms }\ndefault: stable\n",
        ),
        opts,
    )
    .await;
    let c = Client::new();
    c.turn(&gw, Some(1), "idle-1", 8, None).await;
    assert_eq!(
        gw.metric("graygate_pins", &[("cluster", "stable")]).await,
        1.0
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("graygate_pins_released_total", &[("reason", "idle")])
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/idle-1"), &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        gw.metric("graygate_pins", &[("cluster", "stable")]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outaction_10_without_hangup_keeps_the_pin_for_end_grace() {
    // The ODFS orders a hang-up on its own (input "bye"); the caller's hangup report must still
    // reach the same cluster within end_grace.
    let ender = Upstream::with_handler(
        "ender",
        std::sync::Arc::new(|s: &Seen| {
            let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            let out = if v.pointer("/inparams/input").and_then(|x| x.as_str()) == Some("bye")
                || v.pointer("/inparams/input").and_then(|x| x.as_str()) == Some("hangup")
            {
                10
            } else {
                9
            };
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::json!({"ret":0,"userid":v["userid"],"outaction":out,"outparams":{}})
                    .to_string(),
            )))
        }),
    )
    .await;
    let other = Upstream::start("other").await;
    let opts = graygate::app::StartOptions {
        watch: false,
        sighup: false,
        sweep_every: Duration::from_millis(50),
        ..Default::default()
    };
    let yaml = format!("clusters:\n  a: {{ endpoints: [{}] }}\n  b: {{ endpoints: [{}] }}\npins: {{ end_grace: 400ms, idle_ttl: 1h }}\ndefault: a\n", ender.url(), other.url());
    let gw = Gateway::start_with(&yaml, opts).await;
    let c = Client::new();
    c.turn(&gw, Some(1), "g1", 8, None).await;
    let a = c.turn(&gw, Some(1), "g1", 9, Some("bye")).await;
    assert_eq!(a.json()["outaction"], 10);
    let p = gw.admin_json("/admin/pins/g1").await;
    assert_eq!(p["ending"], true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metric("graygate_pins_released_total", &[("reason", "end_grace")])
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        c.request("GET", &gw.admin_url("/admin/pins/g1"), &[], "")
            .await
            .status,
        404
    );

    // Within the grace, the hangup report releases it for good.
    c.turn(&gw, Some(1), "g2", 8, None).await;
    c.turn(&gw, Some(1), "g2", 9, Some("bye")).await;
    c.turn(&gw, Some(1), "g2", 9, Some("hangup")).await;
    assert_eq!(
        gw.metric("graygate_pins_released_total", &[("reason", "hangup")])
            .await,
        1.0
    );
    assert_eq!(other.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_turns_are_routed_and_pinned() {
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
    let a = c.turn(&gw, Some(101), "orphan-1", 9, Some("1")).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=orphan; generation=1")
    );
    assert_eq!(
        gw.metric("graygate_orphan_turns_total", &[("action", "routed")])
            .await,
        1.0
    );
    let b = c.turn(&gw, Some(101), "orphan-1", 9, Some("2")).await;
    assert_eq!(
        b.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=kept; generation=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inaction_7_starts_a_call_before_8() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, "rules:\n  - { name: t, vdn: [101], cluster: canary }\ndefault: stable\npins: { orphan_turns: reject }\n")).await;
    let c = Client::new();
    let a = c.turn(&gw, Some(101), "rec-1", 7, None).await;
    assert_eq!(
        a.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=new; generation=1")
    );
    let b = c.turn(&gw, Some(101), "rec-1", 8, None).await;
    assert_eq!(
        b.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=kept; generation=1")
    );
    assert_eq!(
        c.turn(&gw, Some(101), "rec-1", 9, Some("1")).await.status,
        200
    );
}
