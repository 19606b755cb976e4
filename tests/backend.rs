//! The reference ODFS backend over real loopback HTTP: every documented turn sequence, tokens
//! across instances, bad requests, bad flow files, and listeners sharing one call store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use graygate::backend::{Backend, BackendOptions};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::oneshot;

// === harness ===

/// A backend serving on one or more loopback listeners; stops when dropped.
struct Odfs {
    backend: Arc<Backend>,
    addrs: Vec<SocketAddr>,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Odfs {
    async fn start(opts: BackendOptions) -> Odfs {
        Odfs::start_n(opts, 1).await
    }

    async fn start_n(opts: BackendOptions, n: usize) -> Odfs {
        let backend = Backend::new(opts).unwrap_or_else(|e| panic!("{e}"));
        let mut odfs = Odfs {
            backend,
            addrs: vec![],
            _stops: vec![],
        };
        for _ in 0..n {
            odfs.listen().await;
        }
        odfs
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addrs.push(listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        self._stops.push(tx);
        tokio::spawn(self.backend.clone().serve(listener, async move {
            let _ = rx.await;
        }));
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[i])
    }
}

fn demo(label: &str) -> BackendOptions {
    BackendOptions {
        label: label.to_string(),
        ..BackendOptions::default()
    }
}

struct Reply {
    status: u16,
    instance: String,
    content_type: String,
    body: Value,
}

impl Reply {
    fn outaction(&self) -> i64 {
        self.body["outaction"].as_i64().unwrap_or(-99)
    }
    fn param(&self, k: &str) -> &str {
        self.body["outparams"][k].as_str().unwrap_or("<missing>")
    }
    /// HTTP 200, ret 0, all four envelope fields, every outparam a string.
    fn ok(self) -> Reply {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.body["ret"], 0, "{}", self.body);
        assert!(
            self.body["userid"].is_string() && self.body["outaction"].is_i64(),
            "{}",
            self.body
        );
        let params = self.body["outparams"].as_object().unwrap();
        assert!(params.values().all(Value::is_string), "{}", self.body);
        self
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post_raw(url: &str, body: Vec<u8>) -> Reply {
    let req = http::Request::post(url)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (status, instance, content_type) = (
        resp.status().as_u16(),
        h("x-odfs-instance"),
        h("content-type"),
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        instance,
        content_type,
        body,
    }
}

async fn post(url: &str, body: Value) -> Reply {
    post_raw(url, serde_json::to_vec(&body).unwrap()).await
}

/// One call against one backend: a userid, a V2 URL, an optional token.
struct Caller {
    url: String,
    userid: String,
    token: Option<String>,
}

impl Caller {
    fn new(odfs: &Odfs, listener: usize, userid: &str) -> Caller {
        Caller {
            url: odfs.url(listener, "/oifde/rest/v2/crs/process/101"),
            userid: userid.into(),
            token: None,
        }
    }

    async fn turn(&self, inaction: i64, mut inparams: Value, extparams: Option<Value>) -> Reply {
        inparams["call_id"] = json!(self.userid);
        inparams["call_dst_id"] = json!("10086");
        if let Some(t) = &self.token {
            inparams["auth_token"] = json!(t);
        }
        let mut body = json!({ "userid": self.userid, "inaction": inaction, "inparams": inparams });
        if let Some(e) = extparams {
            body["extparams"] = e;
        }
        post(&self.url, body).await
    }

    async fn start(&self) -> Reply {
        self.turn(8, json!({ "call_sor_id": "13500000001" }), None)
            .await
            .ok()
    }

    async fn input(&self, input: &str) -> Reply {
        self.turn(9, json!({ "input": input, "flow_result_type": "2" }), None)
            .await
    }
}

// === turn sequences ===

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

// === tokens ===

fn tenants_file(dir: &Path) -> PathBuf {
    let p = dir.join("tenants.yaml");
    std::fs::write(
        &p,
        "tenants:\n  tenant001:\n    secret: s3cret-one\n  tenant002:\n    secret: s3cret-two\n",
    )
    .unwrap();
    p
}

async fn get_token(odfs: &Odfs, key: &str, secret: &str) -> Reply {
    post(
        &odfs.url(0, "/oifde/rest/api/gettoken"),
        json!({ "appKey": key, "appSecret": secret }),
    )
    .await
}

#[tokio::test]
async fn a_token_from_one_backend_is_accepted_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = Some(tenants_file(dir.path()));
    let a = Odfs::start(BackendOptions {
        tenants: tenants.clone(),
        ..demo("a")
    })
    .await;
    let b = Odfs::start(BackendOptions {
        tenants,
        ..demo("b")
    })
    .await;
    let r = get_token(&a, "tenant001", "s3cret-one").await;
    assert_eq!(
        (
            r.status,
            r.body["errorCode"].as_i64(),
            r.body["expireTime"].as_i64()
        ),
        (200, Some(0), Some(3600))
    );
    assert_eq!(r.instance, "a");
    let mut c = Caller::new(&b, 0, "token-across");
    c.token = Some(r.body["authToken"].as_str().unwrap().to_string());
    let r = c.start().await;
    assert_eq!(r.instance, "b");
}

#[tokio::test]
async fn wrong_secrets_get_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    for (key, secret) in [("tenant001", "s3cret-two"), ("tenant009", "s3cret-one")] {
        let r = get_token(&odfs, key, secret).await;
        assert_eq!(r.status, 401);
        assert_ne!(r.body["errorCode"].as_i64(), Some(0));
        assert!(r.body.get("authToken").is_none());
    }
    let r = post(
        &odfs.url(0, "/oifde/rest/api/gettoken"),
        json!({ "appKey": 1 }),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn missing_expired_or_forged_tokens_get_401() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let make = |secret: &[u8], exp: u64| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("tenant001".into());
        let claims =
            json!({ "iss": "graygate-odfs", "sub": "tenant001", "iat": now - 7200, "exp": exp });
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let cases = [
        None,
        Some(make(b"s3cret-one", now - 3600)),
        Some(make(b"not-the-secret", now + 3600)),
        Some("eyJhbGciOiJIUzI1NiJ9.e30.AAAA".to_string()),
    ];
    for token in cases {
        let mut c = Caller::new(&odfs, 0, "auth-bad");
        c.token = token.clone();
        let r = c.turn(8, json!({}), None).await;
        assert_eq!(
            (r.status, r.body["errorCode"].as_str()),
            (401, Some("ODFS.AUTH")),
            "{token:?}"
        );
        assert_eq!(
            (r.body["ret"].as_i64(), r.body["userid"].as_str()),
            (Some(-1), Some("auth-bad"))
        );
    }
    let mut c = Caller::new(&odfs, 0, "auth-good");
    c.token = Some(make(b"s3cret-one", now + 60));
    c.start().await;
}

// === flow files ===

#[test]
fn bad_flow_files_are_rejected_with_line_and_column() {
    let dir = Path::new("tests/fixtures/flows/bad");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let err = Backend::new(BackendOptions {
            flows: Some(path.clone()),
            ..BackendOptions::default()
        })
        .err()
        .unwrap_or_else(|| panic!("{name} was accepted"));
        let got = err
            .to_string()
            .replace(&format!("{}:", path.display()), &format!("{name}:"));
        assert_eq!(got.trim(), expected.trim(), "{name}");
        seen += 1;
    }
    assert!(seen >= 5, "fixtures found: {seen}");
}

#[tokio::test]
async fn flows_are_chosen_by_access_code() {
    let flows = Some(PathBuf::from("tests/fixtures/flows/good/two_flows.yaml"));
    let odfs = Odfs::start(BackendOptions { flows, ..demo("f") }).await;
    let url = odfs.url(0, "/oifde/rest/crs/process");
    let start = |userid: &str, dst: &str| json!({ "userid": userid, "inaction": 8, "inparams": { "call_dst_id": dst, "call_sor_id": "555" } });
    let r = post(&url, start("sales-1", "200")).await.ok();
    assert_eq!(
        r.param("prompt_text"),
        "Hello 555, connecting you to sales."
    );
    let r = post(&url, start("other-1", "12345")).await.ok();
    assert_eq!(
        (r.param("prompt_type"), r.param("prompt_wav")),
        ("0", "/prompts/closed.wav")
    );
}

// === listeners and load ===

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

// === graygate call ===

async fn run_call(args: Vec<String>) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn graygate_call_completes_a_call() {
    let odfs = Odfs::start(demo("canary")).await;
    let url = odfs.url(0, "");
    let args = [
        "call", "--url", &url, "--vdn", "101", "--input", "1", "--input", "2",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("turn 1  inaction 8 -> outaction 9  [instance canary]  Welcome"),
        "{out}"
    );
    assert!(out.contains("inaction 9 -> outaction 12"), "{out}");
    assert!(out.contains("inaction 11 -> outaction 10"), "{out}");
    assert_eq!(odfs.backend.active_calls(), 0, "{out}");
}

#[tokio::test]
async fn graygate_call_fails_on_a_refused_turn() {
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    let url = odfs.url(0, "");
    let args = [
        "call",
        "--url",
        &url,
        "--app-key",
        "tenant001",
        "--app-secret",
        "wrong",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");
    let args = [
        "call",
        "--url",
        &url,
        "--app-key",
        "tenant001",
        "--app-secret",
        "s3cret-one",
        "--input",
        "9",
    ];
    let (code, out) = run_call(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{out}");
}
