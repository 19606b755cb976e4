//! Every row of the spec §3 error table, with its JSON body, against a real gateway.

use std::time::Duration;

use crate::support::*;

async fn setup(rest: &str) -> (Upstream, Upstream, Gateway) {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let gw = Gateway::start(&two_clusters(&stable, &canary, rest)).await;
    (stable, canary, gw)
}

fn check(a: &Answer, status: u16, code: &str, userid: Option<&str>) {
    assert_eq!(a.status.as_u16(), status, "{:?}", a.body);
    assert!(a
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    let v = a.json();
    assert_eq!(v["ret"], -1);
    assert_eq!(v["errorCode"], code);
    assert!(v["errorMsg"].as_str().is_some_and(|m| !m.is_empty()));
    match userid {
        Some(u) => assert_eq!(v["userid"], u),
        None => assert!(v.get("userid").is_none()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_are_400s_with_json_bodies() {
    let (stable, _canary, gw) = setup("default: stable\n").await;
    let c = Client::new();
    let v2 = gw.url("/oifde/rest/v2/crs/process/101");
    check(
        &c.post(
            &gw.url("/oifde/rest/v2/crs/process/abc"),
            r#"{"userid":"u","inaction":8}"#,
        )
        .await,
        400,
        "GW.BAD_URL",
        None,
    );
    check(
        &c.post(&gw.url("/oifde/rest/v2/crs/process/4294967296"), "{}")
            .await,
        400,
        "GW.BAD_URL",
        None,
    );
    check(&c.post(&v2, "[1,2]").await, 400, "GW.BAD_JSON", None);
    check(&c.post(&v2, "").await, 400, "GW.BAD_JSON", None);
    check(
        &c.post(&v2, r#"{"userid":"u1","inaction":8"#).await,
        400,
        "GW.BAD_JSON",
        Some("u1"),
    );
    check(
        &c.post(&v2, r#"{"inaction":8}"#).await,
        400,
        "GW.MISSING_USERID",
        None,
    );
    check(
        &c.post(&v2, r#"{"userid":17,"inaction":8}"#).await,
        400,
        "GW.BAD_USERID",
        None,
    );
    check(
        &c.post(&v2, r#"{"userid":"","inaction":8}"#).await,
        400,
        "GW.BAD_USERID",
        None,
    );
    let long = format!(r#"{{"userid":"{}","inaction":8}}"#, "x".repeat(65));
    check(&c.post(&v2, long).await, 400, "GW.BAD_USERID", None);
    check(
        &c.post(&v2, r#"{"userid":"u2"}"#).await,
        400,
        "GW.MISSING_INACTION",
        Some("u2"),
    );
    check(
        &c.post(&v2, r#"{"userid":"u3","inaction":"nine"}"#).await,
        400,
        "GW.BAD_INACTION",
        Some("u3"),
    );
    check(
        &c.post(&v2, r#"{"userid":"u3","inaction":9.5}"#).await,
        400,
        "GW.BAD_INACTION",
        Some("u3"),
    );
    // None of these reached an upstream.
    assert_eq!(stable.count(), 0);
    assert_eq!(
        gw.metric("graygate_gateway_errors_total", &[("code", "GW.BAD_URL")])
            .await,
        2.0
    );
    assert_eq!(
        gw.metric("graygate_gateway_errors_total", &[("code", "GW.BAD_JSON")])
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_with_allow() {
    let (_s, _c, gw) = setup("default: stable\n").await;
    let c = Client::new();
    for path in ["/oifde/rest/v2/crs/process/101", "/oifde/rest/crs/process"] {
        let a = c.request("GET", &gw.url(path), &[], "").await;
        check(&a, 405, "GW.METHOD", None);
        assert_eq!(a.header("allow"), Some("POST"));
        let a = c
            .request("PUT", &gw.url(path), &[], r#"{"userid":"u","inaction":8}"#)
            .await;
        assert_eq!(a.status, 405);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_413() {
    let (stable, _c, gw) = setup("limits: { max_body: 1KiB }\ndefault: stable\n").await;
    let c = Client::new();
    let big = format!(
        r#"{{"userid":"u","inaction":8,"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    check(
        &c.post(&gw.url("/oifde/rest/crs/process"), big).await,
        413,
        "GW.BODY_TOO_LARGE",
        None,
    );
    let ok = format!(
        r#"{{"userid":"u","inaction":8,"pad":"{}"}}"#,
        "x".repeat(900)
    );
    assert_eq!(
        c.post(&gw.url("/oifde/rest/crs/process"), ok).await.status,
        200
    );
    assert_eq!(stable.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_turn_rejected_is_409() {
    let (stable, _c, gw) = setup("pins: { orphan_turns: reject }\ndefault: stable\n").await;
    let c = Client::new();
    check(
        &c.turn(&gw, Some(101), "lost", 9, Some("1")).await,
        409,
        "GW.ORPHAN_TURN",
        Some("lost"),
    );
    assert_eq!(stable.count(), 0);
    assert_eq!(
        gw.metric("graygate_orphan_turns_total", &[("action", "rejected")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502() {
    // A port nobody listens on: bind, note the port, close.
    let addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        "clusters:\n  stable: {{ endpoints: [http://{addr}] }}\ndefault: stable\n"
    ))
    .await;
    let c = Client::new();
    check(
        &c.turn(&gw, Some(1), "u502", 8, None).await,
        502,
        "GW.UPSTREAM",
        Some("u502"),
    );
    assert!(
        gw.pins.view()["local_pins"] == 0,
        "a failed new call is not pinned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let gw = Gateway::start(&format!(
        "clusters:\n  stable: {{ endpoints: [{}], timeout: 200ms }}\ndefault: stable\n",
        slow.url()
    ))
    .await;
    let c = Client::new();
    check(
        &c.turn(&gw, Some(1), "u504", 8, None).await,
        504,
        "GW.UPSTREAM_TIMEOUT",
        Some("u504"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_is_503_at_once() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let gw = Gateway::start(&format!(
        "clusters:\n  stable: {{ endpoints: [{}], max_inflight: 1 }}\ndefault: stable\n",
        slow.url()
    ))
    .await;
    let c = Client::new();
    let c2 = c.clone();
    let url = gw.url("/oifde/rest/crs/process");
    let first = tokio::spawn(async move { c2.post(&url, turn_body("a", 8, None)).await });
    assert!(eventually(Duration::from_secs(5), || async { slow.count() == 1 }).await);
    let start = tokio::time::Instant::now();
    check(
        &c.turn(&gw, None, "b", 8, None).await,
        503,
        "GW.NO_UPSTREAM",
        Some("b"),
    );
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "503 comes at once, not after a queue"
    );
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_pass_through_untouched() {
    let weird = Upstream::with_handler(
        "weird",
        std::sync::Arc::new(|_s: &Seen| {
            http::Response::builder()
                .status(500)
                .header("content-type", "application/json;charset=UTF-8")
                .header("x-odfs-thing", "kept")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"{ \"ret\" :-1 ,\"zeta\":1,  \"alpha\":[ ], \"outaction\":\"10\"}",
                )))
                .unwrap()
        }),
    )
    .await;
    let gw = Gateway::start(&format!(
        "clusters:\n  stable: {{ endpoints: [{}] }}\ndefault: stable\n",
        weird.url()
    ))
    .await;
    let c = Client::new();
    let body = "{ \"inaction\" : \"8\",\n \"unknown\": {\"deep\": [1, 2.50, null]},\"userid\":\"odd-1\" , \"seat\":\"vir\"}  ";
    let a = c
        .request(
            "POST",
            &gw.url("/oifde/rest/v2/crs/process/42?x=1"),
            &[("content-type", "text/plain"), ("x-custom", "v")],
            body,
        )
        .await;
    assert_eq!(a.status, 500);
    assert_eq!(
        &a.body[..],
        b"{ \"ret\" :-1 ,\"zeta\":1,  \"alpha\":[ ], \"outaction\":\"10\"}"
    );
    assert_eq!(a.header("x-odfs-thing"), Some("kept"));
    let seen = weird.seen.lock().unwrap()[0].clone();
    assert_eq!(
        &seen.body[..],
        body.as_bytes(),
        "request bytes forwarded exactly"
    );
    assert_eq!(seen.path, "/oifde/rest/v2/crs/process/42");
    assert_eq!(seen.headers.get("x-custom").unwrap(), "v");
    assert_eq!(seen.headers.get("content-type").unwrap(), "text/plain");
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert!(seen.headers.get("x-request-id").is_some());
    // A 500 answer does not pin the call.
    assert!(gw.pins.view()["local_pins"] == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_go_to_default_unchanged() {
    let (stable, canary, gw) =
        setup("rules:\n  - { name: all, vdn: [0-4294967295], cluster: canary }\ndefault: stable\n")
            .await;
    let c = Client::new();
    let a = c
        .request(
            "POST",
            &gw.url("/oifde/rest/api/gettoken?a=b"),
            &[("content-type", "application/json")],
            r#"{"appKey":"t","appSecret":"s"}"#,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.upstream(), Some("stable"));
    let a = c.request("GET", &gw.url("/some/other"), &[], "").await;
    assert_eq!(a.upstream(), Some("stable"));
    assert_eq!(canary.count(), 0);
    let seen = stable.seen.lock().unwrap().clone();
    assert_eq!(&seen[0].body[..], br#"{"appKey":"t","appSecret":"s"}"#);
    assert_eq!(seen[1].method, "GET");
}
