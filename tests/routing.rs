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
