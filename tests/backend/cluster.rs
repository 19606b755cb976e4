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

#[tokio::test]
async fn h2c_works_too() {
    let odfs = Odfs::start(demo("h2")).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let body = json!({ "userid": "h2-call", "inaction": 8, "inparams": {} });
    let req = http::Request::post(odfs.url(0, "/oifde/rest/crs/process"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-odfs-instance"], "h2");
}

#[tokio::test]
async fn serve_returns_after_shutdown_with_a_kept_alive_connection() {
    let backend = Backend::new(demo("stop")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/oifde/rest/crs/process",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = oneshot::channel::<()>();
    let served = tokio::spawn(backend.serve(listener, async move {
        let _ = rx.await;
    }));
    // One pooled client keeps its connection open after this turn.
    let c = client();
    let req = http::Request::post(&url)
        .body(Full::new(Bytes::from(r#"{"userid":"s1","inaction":8}"#)))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 200);
    tx.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), served).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "serve ended cleanly: {done:?}"
    );
}
