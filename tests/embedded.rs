//! The self-contained deployment: the gateway in front of embedded reference ODFS clusters.

use crate::support::*;

// connect_timeout and timeout: the test is about stickiness, not speed; on a loaded machine
// (CI shares its cores) the embedded instances can take more than the defaults to accept and
// answer a burst of concurrent calls.
const EMBEDDED: &str = "decision_header: true
clusters:
  stable:
    embedded: { label: stable, instances: 2 }
    connect_timeout: 10s
    timeout: 30s
  canary:
    embedded: { label: canary, instances: 2 }
    connect_timeout: 10s
    timeout: 30s
rules:
  - { name: canary-tenant, vdn: [101], cluster: canary }
  - { name: one-in-ten, split: { canary: 10, stable: 90 } }
default: stable
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_250_at_a_time_stay_with_their_cluster() {
    let gw = Gateway::start(EMBEDDED).await;
    let c = Client::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(250));
    let mut tasks = Vec::new();
    for k in 0..1000 {
        let (c, url, sem) = (
            c.clone(),
            gw.url(&dialog_path(Some(if k % 2 == 0 { 101 } else { 7 }))),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let userid = format!("emb-{k}");
            let mut first: Option<String> = None;
            let mut last_out = 0;
            for input in [None, Some("1"), Some("hangup")] {
                let inaction = if input.is_none() { 8 } else { 9 };
                let a = c.post(&url, turn_body(&userid, inaction, input)).await;
                assert_eq!(a.status, 200, "{userid}: {:?}", a.body);
                assert_eq!(a.json()["ret"], 0, "{userid}: {:?}", a.body);
                last_out = a.json()["outaction"].as_i64().unwrap();
                let inst = a.header("x-odfs-instance").unwrap().to_string();
                match &first {
                    None => first = Some(inst),
                    Some(f) => assert_eq!(f, &inst, "{userid} changed cluster"),
                }
            }
            assert_eq!(
                last_out, 10,
                "{userid}: the hangup report is answered with outaction 10"
            );
            (k, first.unwrap())
        }));
    }
    let mut canary_on_101 = 0;
    let mut canary_other = 0;
    for t in tasks {
        let (k, cluster) = t.await.unwrap();
        if cluster == "canary" {
            if k % 2 == 0 {
                canary_on_101 += 1;
            } else {
                canary_other += 1;
            }
        }
    }
    assert_eq!(
        canary_on_101, 500,
        "every vdn-101 call is answered by the canary"
    );
    assert!(
        canary_other > 20 && canary_other < 90,
        "about 10% of the other calls: {canary_other}/500"
    );
    assert_eq!(gw.pins.view()["local_pins"], 0);
}
