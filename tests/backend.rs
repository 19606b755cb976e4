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

/// `graygate call` run as a process against an in-process backend.
mod call_cli;
/// Several listeners of one backend sharing one call store, and many calls at once.
mod cluster;
/// Flow files: bad ones rejected with line:column (fixtures beside their `.expected`), good ones used.
mod flow_files;
/// Every documented turn sequence of the protocol against the demo flow, and bad requests.
mod sequences;
/// The token API and `auth_token` checks across backend instances.
mod tokens;

// === harness ===

/// A backend serving on one or more loopback listeners; stops when dropped.
pub(crate) struct Odfs {
    pub(crate) backend: Arc<Backend>,
    pub(crate) addrs: Vec<SocketAddr>,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Odfs {
    pub(crate) async fn start(opts: BackendOptions) -> Odfs {
        Odfs::start_n(opts, 1).await
    }

    pub(crate) async fn start_n(opts: BackendOptions, n: usize) -> Odfs {
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

    pub(crate) async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addrs.push(listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        self._stops.push(tx);
        tokio::spawn(self.backend.clone().serve(listener, async move {
            let _ = rx.await;
        }));
    }

    pub(crate) fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[i])
    }
}

pub(crate) fn demo(label: &str) -> BackendOptions {
    BackendOptions {
        label: label.to_string(),
        ..BackendOptions::default()
    }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) instance: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn outaction(&self) -> i64 {
        self.body["outaction"].as_i64().unwrap_or(-99)
    }
    pub(crate) fn param(&self, k: &str) -> &str {
        self.body["outparams"][k].as_str().unwrap_or("<missing>")
    }
    /// HTTP 200, ret 0, all four envelope fields, every outparam a string.
    pub(crate) fn ok(self) -> Reply {
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

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) async fn post_raw(url: &str, body: Vec<u8>) -> Reply {
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

pub(crate) async fn post(url: &str, body: Value) -> Reply {
    post_raw(url, serde_json::to_vec(&body).unwrap()).await
}

/// One call against one backend: a userid, a V2 URL, an optional token.
pub(crate) struct Caller {
    pub(crate) url: String,
    pub(crate) userid: String,
    pub(crate) token: Option<String>,
}

impl Caller {
    pub(crate) fn new(odfs: &Odfs, listener: usize, userid: &str) -> Caller {
        Caller {
            url: odfs.url(listener, "/oifde/rest/v2/crs/process/101"),
            userid: userid.into(),
            token: None,
        }
    }

    pub(crate) async fn turn(
        &self,
        inaction: i64,
        mut inparams: Value,
        extparams: Option<Value>,
    ) -> Reply {
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

    pub(crate) async fn start(&self) -> Reply {
        self.turn(8, json!({ "call_sor_id": "13500000001" }), None)
            .await
            .ok()
    }

    pub(crate) async fn input(&self, input: &str) -> Reply {
        self.turn(9, json!({ "input": input, "flow_result_type": "2" }), None)
            .await
    }
}

/// A tenants file with tenant001 and tenant002 in `dir`.
pub(crate) fn tenants_file(dir: &Path) -> PathBuf {
    let p = dir.join("tenants.yaml");
    std::fs::write(
        &p,
        "tenants:\n  tenant001:\n    secret: s3cret-one\n  tenant002:\n    secret: s3cret-two\n",
    )
    .unwrap();
    p
}
