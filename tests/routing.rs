use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_rule_and_default() {
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
    let a = c.turn(&gw, Some(101), "u1", 8, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.upstream(), Some("canary"));
    assert_eq!(
        a.header("x-graygate-route"),
        Some("rule=t; cluster=canary; pin=new; generation=1")
    );
    let b = c.turn(&gw, Some(7), "u2", 8, None).await;
    assert_eq!(b.upstream(), Some("stable"));
    assert_eq!(
        b.header("x-graygate-route"),
        Some("rule=default; cluster=stable; pin=new; generation=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_condition_through_the_gateway() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let rules = "rules:
  - name: tenants
    vdn: [101, 200-299]
    cluster: canary
  - name: testers
    userid: { exact: [1528780879-9581], prefix: [test-], suffix: [-qa], regex: '^vip[0-9]+$' }
    cluster: canary
  - name: web
    fields: { inparams.channelType: [WEB] }
    headers: { x-gray: [canary] }
    cluster: canary
default: stable
";
    let gw = Gateway::start(&two_clusters(&stable, &canary, rules)).await;
    let c = Client::new();
    let route = |a: &Answer| {
        a.header("x-graygate-route")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let a = c.turn(&gw, Some(250), "x1", 8, None).await;
    assert_eq!(
        (route(&a).as_str(), a.upstream()),
        ("rule=tenants", Some("canary"))
    );
    for u in ["1528780879-9581", "test-7", "abc-qa", "vip42"] {
        let a = c.turn(&gw, Some(7), u, 8, None).await;
        assert_eq!(
            (route(&a).as_str(), a.upstream()),
            ("rule=testers", Some("canary")),
            "{u}"
        );
    }
    // fields + headers must both hold
    let body = r#"{"userid":"w1","inaction":8,"inparams":{"channelType":"WEB"}}"#;
    let url = gw.url("/oifde/rest/v2/crs/process/7");
    let a = c.request("POST", &url, &[("x-gray", "canary")], body).await;
    assert_eq!(route(&a), "rule=web");
    let body = r#"{"userid":"w2","inaction":8,"inparams":{"channelType":"WEB"}}"#;
    assert_eq!(
        route(&c.request("POST", &url, &[], body).await),
        "rule=default"
    );
    let body = r#"{"userid":"w3","inaction":8,"inparams":{"channelType":"SMS"}}"#;
    assert_eq!(
        route(&c.request("POST", &url, &[("x-gray", "canary")], body).await),
        "rule=default"
    );
    // first match wins: a tester on a tenant vdn is matched by `tenants`
    assert_eq!(
        route(&c.turn(&gw, Some(101), "test-8", 8, None).await),
        "rule=tenants"
    );
    // V1 skips vdn rules but not the others
    assert_eq!(
        route(&c.turn(&gw, None, "x2", 8, None).await),
        "rule=default"
    );
    assert_eq!(
        route(&c.turn(&gw, None, "test-9", 8, None).await),
        "rule=testers"
    );
}

const SPLIT: &str = "rules:\n  - name: ramp\n    split: { canary: 10, stable: 90 }\n    salt: rollout-2026-11\ndefault: stable\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_share_and_the_same_choice_in_another_process() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = two_clusters(&stable, &canary, SPLIT);
    let gw = Gateway::start(&yaml).await;
    // A second gateway, as a separate OS process of the real binary.
    let other = Process::start(&yaml).await;
    let c = Client::new();
    let n = 4000;
    let mut on_canary = 0;
    let mut mismatches = 0;
    for k in 0..n {
        let userid = format!("split-{k}");
        let a = c.turn(&gw, Some(7), &userid, 8, Some("hangup")).await;
        let here = a.upstream().unwrap().to_string();
        if here == "canary" {
            on_canary += 1;
        }
        if k % 4 == 0 {
            let b = c
                .post(
                    &format!("http://{}/oifde/rest/v2/crs/process/7", other.dialog),
                    turn_body(&userid, 8, Some("hangup")),
                )
                .await;
            if b.upstream() != Some(here.as_str()) {
                mismatches += 1;
            }
        }
    }
    let share = on_canary as f64 / n as f64 * 100.0;
    assert!(
        (share - 10.0).abs() <= 2.5,
        "canary share {share:.2}% for weight 10/100"
    );
    assert_eq!(
        mismatches, 0,
        "two processes must choose the same cluster for the same userid"
    );
}
