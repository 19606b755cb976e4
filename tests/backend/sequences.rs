//! Every documented turn sequence of the protocol against the demo flow, and bad requests.

use super::*;

#[tokio::test]
async fn seven_then_eight_and_headers() {
    let odfs = Odfs::start(demo("canary")).await;
    let c = Caller::new(&odfs, 0, "seq-7-8");
    let r = c.turn(7, json!({}), None).await.ok();
    assert_eq!(r.outaction(), 7);
    assert_eq!(r.body["outparams"], json!({}));
    assert_eq!(r.instance, "canary");
    assert_eq!(r.content_type, "application/json;charset=UTF-8");
    let r = c.start().await;
    assert_eq!(
        (r.outaction(), r.param("prompt_text")),
        (9, "Welcome to the graygate demo line.")
    );
    assert_eq!(r.param("inter_idx"), "1");
}

#[tokio::test]
async fn a_call_plays_collects_and_hangs_up() {
    let odfs = Odfs::start(demo("stable")).await;
    let c = Caller::new(&odfs, 0, "seq-8-9-hangup");
    c.start().await;
    let r = c.input("playover").await.ok();
    assert_eq!(
        (r.param("model_type"), r.param("inter_idx")),
        ("1010101", "2")
    );
    let r = c.input("1#").await.ok();
    assert_eq!(
        r.param("prompt_text"),
        "The balance of account 13500000001 is 42 euros and 17 cents."
    );
    assert_eq!(r.param("inter_idx"), "3", "inter_idx counts turns");
    let r = c.input("hangup").await.ok();
    assert_eq!(
        (
            r.outaction(),
            r.param("release_reason"),
            r.param("call_sor_id")
        ),
        (10, "0", "13500000001")
    );
    assert_eq!(
        odfs.backend.active_calls(),
        0,
        "the hangup deleted the call"
    );
    let r = c.input("1").await;
    assert_eq!(
        (r.status, r.body["ret"].as_i64(), r.outaction()),
        (500, Some(-1), 10)
    );
}

#[tokio::test]
async fn queue_results_come_back_in_extparams() {
    let odfs = Odfs::start(demo("odfs")).await;
    let c = Caller::new(&odfs, 0, "seq-9-12-9");
    c.start().await;
    c.input("playover").await.ok();
    let r = c.input("2").await.ok();
    assert_eq!(
        (r.outaction(), r.param("prompt_type"), r.param("skill_id")),
        (12, "2", "1")
    );
    let q = json!({ "queueIndex": "4", "agentCount": "6", "estimateTime": "75", "idleAgentCount": "0" });
    let r = c
        .turn(9, json!({ "flow_result_type": "-1" }), Some(q))
        .await
        .ok();
    assert_eq!(
        r.param("prompt_text"),
        "You are number 4 in the queue; the wait is about 75 seconds."
    );
}

async fn at_transfer(odfs: &Odfs, userid: &str) -> Caller {
    let c = Caller::new(odfs, 0, userid);
    c.start().await;
    c.input("playover").await.ok();
    c.input("2").await.ok();
    c.turn(9, json!({}), Some(json!({ "agentCount": "1" })))
        .await
        .ok();
    let r = c.input("playover").await.ok();
    assert_eq!(
        (r.outaction(), r.param("trans_type"), r.param("route_value")),
        (11, "1", "20001")
    );
    c
}

#[tokio::test]
async fn transfer_success_is_answered_with_10_twice() {
    let odfs = Odfs::start(demo("odfs")).await;
    let c = at_transfer(&odfs, "seq-11-ok").await;
    let r = c.turn(11, json!({ "trans_result": "0" }), None).await.ok();
    assert_eq!((r.outaction(), r.param("release_reason")), (10, "0"));
    assert_eq!(
        odfs.backend.active_calls(),
        1,
        "the backend's own 10 keeps the call"
    );
    let r = c
        .turn(11, json!({ "trans_result": "0", "input": "hangup" }), None)
        .await
        .ok();
    assert_eq!(r.outaction(), 10);
    assert_eq!(odfs.backend.active_calls(), 0);
    assert_eq!(
        c.turn(11, json!({ "input": "hangup" }), None).await.status,
        500
    );
}

#[tokio::test]
async fn transfer_failure_takes_the_failure_branch() {
    let odfs = Odfs::start(demo("odfs")).await;
    let c = at_transfer(&odfs, "seq-11-fail").await;
    let r = c.turn(11, json!({ "trans_result": "1" }), None).await.ok();
    assert_eq!(
        (r.outaction(), r.param("prompt_text")),
        (9, "All our agents are busy.")
    );
}

#[tokio::test]
async fn recognition_polls_answer_13() {
    let odfs = Odfs::start(demo("odfs")).await;
    let c = Caller::new(&odfs, 0, "seq-13");
    c.start().await;
    let r = c.turn(13, json!({}), None).await.ok();
    assert_eq!((r.outaction(), r.param("recognize_type")), (13, "0"));
    c.input("playover").await.ok();
    c.input("3").await.ok();
    let r = c.turn(13, json!({}), None).await.ok();
    assert_eq!(
        r.param("recognize_type"),
        "1",
        "the ask node has a result after one poll"
    );
    let r = c
        .turn(
            9,
            json!({ "input": "balance please", "flow_result_type": "1" }),
            None,
        )
        .await
        .ok();
    assert!(r.param("prompt_text").starts_with("The balance of account"));
}

#[tokio::test]
async fn sys_err_turns_are_capped() {
    let odfs = Odfs::start(BackendOptions {
        sys_err_cap: 2,
        ..demo("odfs")
    })
    .await;
    let c = Caller::new(&odfs, 0, "seq-sys-err");
    c.start().await;
    let r = c.input("sys_err").await.ok();
    assert_eq!(
        (r.outaction(), r.param("prompt_text")),
        (9, "Welcome to the graygate demo line.")
    );
    let r = c.input("sys_err").await.ok();
    assert_eq!((r.outaction(), r.param("release_reason")), (10, "1"));
    let r = c.input("sys_err").await.ok();
    assert_eq!(r.outaction(), 10, "still 10 until the hangup report");
    assert_eq!(c.input("hangup").await.ok().param("release_reason"), "1");
}

#[tokio::test]
async fn idle_calls_are_forgotten() {
    let odfs = Odfs::start(BackendOptions {
        idle_timeout: Duration::from_millis(50),
        ..demo("odfs")
    })
    .await;
    let c = Caller::new(&odfs, 0, "seq-idle");
    c.start().await;
    // Well past the timeout: the call is gone whether or not the sweeper has run yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c.input("playover").await;
    assert_eq!(
        (r.status, r.body["ret"].as_i64()),
        (500, Some(-1)),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_turn_on_an_unknown_call_gets_500() {
    let odfs = Odfs::start(demo("lost")).await;
    for inaction in [9, 11, 13] {
        let r = Caller::new(&odfs, 0, "never-started")
            .turn(inaction, json!({ "input": "1" }), None)
            .await;
        assert_eq!(r.status, 500, "inaction {inaction}");
        assert_eq!((r.body["ret"].as_i64(), r.outaction()), (Some(-1), 10));
        assert_eq!(r.body["userid"], "never-started");
        assert!(r.body["errorMsg"]
            .as_str()
            .unwrap()
            .starts_with("no call instance"));
        assert_eq!(r.instance, "lost");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_json() {
    let odfs = Odfs::start(demo("strict")).await;
    let v1 = odfs.url(0, "/oifde/rest/crs/process");
    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (v1.clone(), b"{not json".to_vec(), 400, "ODFS.BAD_JSON"),
        (v1.clone(), b"[1,2]".to_vec(), 400, "ODFS.BAD_JSON"),
        (
            v1.clone(),
            br#"{"inaction":8}"#.to_vec(),
            400,
            "ODFS.BAD_USERID",
        ),
        (
            v1.clone(),
            format!(r#"{{"userid":"{}","inaction":8}}"#, "x".repeat(65)).into_bytes(),
            400,
            "ODFS.BAD_USERID",
        ),
        (
            v1.clone(),
            br#"{"userid":"u","inaction":12}"#.to_vec(),
            400,
            "ODFS.BAD_INACTION",
        ),
        (
            v1.clone(),
            br#"{"userid":"u","inaction":"eight"}"#.to_vec(),
            400,
            "ODFS.BAD_INACTION",
        ),
        (
            v1.clone(),
            br#"{"userid":"u","inaction":8,"inparams":[]}"#.to_vec(),
            400,
            "ODFS.BAD_JSON",
        ),
        (
            odfs.url(0, "/oifde/rest/v2/crs/process/x1"),
            b"{}".to_vec(),
            400,
            "ODFS.BAD_URL",
        ),
        (
            odfs.url(0, "/oifde/rest/v2/crs/process/4294967296"),
            b"{}".to_vec(),
            400,
            "ODFS.BAD_URL",
        ),
        (odfs.url(0, "/nope"), b"{}".to_vec(), 404, "ODFS.NOT_FOUND"),
        (
            v1.clone(),
            vec![b' '; 1024 * 1024 + 1],
            413,
            "ODFS.BODY_TOO_LARGE",
        ),
    ];
    for (url, body, status, code) in cases {
        let r = post_raw(&url, body).await;
        assert_eq!(
            (r.status, r.body["errorCode"].as_str()),
            (status, Some(code)),
            "{url} {}",
            r.body
        );
        assert_eq!(r.body["ret"], -1);
        assert_eq!(r.instance, "strict");
    }
    // A numeric-string inaction is tolerated.
    let r = post(
        &v1,
        json!({ "userid": "u-str", "inaction": "8", "inparams": {} }),
    )
    .await
    .ok();
    assert_eq!(r.outaction(), 9);
}

#[tokio::test]
async fn inaction_8_restarts_a_call() {
    let odfs = Odfs::start(demo("odfs")).await;
    let c = Caller::new(&odfs, 0, "seq-restart");
    c.start().await;
    c.input("playover").await.ok();
    let r = c.input("1").await.ok();
    assert_eq!(r.param("inter_idx"), "3");
    let r = c.start().await;
    assert_eq!(
        (r.param("inter_idx"), r.param("prompt_text")),
        ("1", "Welcome to the graygate demo line.")
    );
    assert_eq!(odfs.backend.active_calls(), 1);
}
