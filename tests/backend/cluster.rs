//! Several listeners of one backend sharing one call store, and many calls at once.

use super::*;

#[tokio::test]
async fn listeners_of_one_backend_share_calls() {
    let odfs = Odfs::start_n(demo("cluster"), 2).await;
    let a = Caller::new(&odfs, 0, "shared-call");
    let b = Caller::new(&odfs, 1, "shared-call");
    a.start().await;
    let r = b.input("playover").await.ok();
    assert_eq!(r.param("inter_idx"), "2");
    assert!(b.input("hangup").await.ok().outaction() == 10);
    assert_eq!(a.input("1").await.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_complete() {
    let odfs = Arc::new(Odfs::start_n(demo("load"), 2).await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let odfs = odfs.clone();
        tasks.push(tokio::spawn(async move {
            let c = Caller::new(&odfs, i % 2, &format!("load-{i}"));
            c.start().await;
            let d = Caller::new(&odfs, (i + 1) % 2, &format!("load-{i}"));
            d.input("playover").await.ok();
            c.input("1").await.ok();
            d.input("hangup").await.ok().outaction()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 10);
    }
    assert_eq!(odfs.backend.active_calls(), 0);
}
