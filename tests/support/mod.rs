//! The test harness: a real gateway on loopback port 0, small upstream servers of the test's
//! own, and a client that speaks the dialog protocol.
//!
//! `Gateway::start(yaml)` writes the file into a temp dir (adding `listen`/`admin` on
//! 127.0.0.1:0 when absent), starts the app in-process and serves it on bound listeners.
//! `Upstream::start("stable")` is an ODFS stand-in that records every request and answers
//! with a dialog-shaped body (outaction 9, or 10 to a hangup report) and `x-upstream: <label>`.

#![allow(dead_code, clippy::disallowed_types)]

pub mod chromium;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use graygate::app::{App, StartOptions};
use graygate::lifecycle::Shutdown;
use graygate::metrics::Metrics;
use graygate::pins::Store;
use graygate::snapshot::Live;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = Full<Bytes>;

// === Gateway ===

pub struct Gateway {
    pub dialog: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub shutdown: Shutdown,
    pub live: Live,
    pub pins: Store,
    pub metrics: Metrics,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with(
            yaml,
            StartOptions {
                watch: false,
                sighup: false,
                ..StartOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(yaml: &str, opts: StartOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, yaml, opts).await
    }

    pub async fn start_in(dir: tempfile::TempDir, yaml: &str, opts: StartOptions) -> Gateway {
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, with_loopback(yaml)).unwrap();
        Self::start_path(dir, path, opts).await
    }

    pub async fn start_path(dir: tempfile::TempDir, path: PathBuf, opts: StartOptions) -> Gateway {
        let app = match App::start(&path, opts).await {
            Ok(a) => a,
            Err(e) => panic!("gateway did not start: {e}"),
        };
        let (d, a) = app.bind().await.unwrap();
        let (dialog, admin) = (d.local_addr().unwrap(), a.local_addr().unwrap());
        let shutdown = app.shutdown.clone();
        let (live, pins, metrics) = (app.live.clone(), app.pins.clone(), app.metrics.clone());
        let task = tokio::spawn(app.run(d, a));
        Gateway {
            dialog,
            admin,
            dir,
            path,
            shutdown,
            live,
            pins,
            metrics,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.dialog, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// GET an admin path and read its JSON answer.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        Client::new()
            .request("GET", &self.admin_url(path), &[], "")
            .await
            .json()
    }

    /// Rewrite routes.yaml (loopback listen/admin kept).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.path, with_loopback(yaml)).unwrap();
    }

    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// The value of one metric series from `/metrics`, e.g.
    /// `graygate_pins_created_total{cluster="canary"}` (labels in any order).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = Client::new().get_text(&self.admin_url("/metrics")).await;
        metric_value(&text, name, labels).unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The dialog engine the tests run on: `GRAYGATE_TEST_ENGINE=fast|hyper` (default: the
/// config's default, `fast`). CI runs the integration tests under both.
pub fn test_engine() -> Option<String> {
    std::env::var("GRAYGATE_TEST_ENGINE")
        .ok()
        .filter(|e| e == "fast" || e == "hyper")
}

/// Add loopback `listen` and `admin` lines when the YAML has none, and the test engine.
pub fn with_loopback(yaml: &str) -> String {
    let mut out = String::new();
    if !yaml.lines().any(|l| l.starts_with("listen:")) {
        out.push_str("listen: 127.0.0.1:0\n");
    }
    if !yaml.lines().any(|l| l.starts_with("admin:")) {
        out.push_str("admin: 127.0.0.1:0\n");
    }
    out.push_str(yaml);
    // The engine goes last, so that it moves no line a test counts on.
    if let Some(engine) = test_engine() {
        if !yaml.lines().any(|l| l.starts_with("engine:")) {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("engine: {engine}\n"));
        }
    }
    out
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}

// === Upstream stand-in ===

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Response<Body> + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub label: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Delay before each answer (a slow ODFS).
    pub delay: Arc<Mutex<Duration>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub async fn start(label: &str) -> Upstream {
        let l = label.to_string();
        Self::with_handler(label, Arc::new(move |s: &Seen| dialog_answer(&l, s))).await
    }

    pub async fn with_handler(label: &str, handler: Handler) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(label, listener, handler).await
    }

    pub async fn serve_on(
        label: &str,
        listener: tokio::net::TcpListener,
        handler: Handler,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let delay2 = delay.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => break,
                };
                let seen = seen2.clone();
                let handler = handler.clone();
                let delay = delay2.clone();
                conns.push(tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            let handler = handler.clone();
                            let delay = *delay.lock().unwrap();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let s = Seen {
                                    method: parts.method,
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                let resp = handler(&s);
                                seen.lock().unwrap().push(s);
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }));
            }
            // Stopping closes every connection, as a killed process would.
            for c in conns {
                c.abort();
            }
        });
        Upstream {
            addr,
            label: label.to_string(),
            seen,
            delay,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn userids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| {
                serde_json::from_slice::<serde_json::Value>(&s.body)
                    .ok()?
                    .get("userid")?
                    .as_str()
                    .map(String::from)
            })
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The default stand-in answer: outaction 9, or 10 to `input=hangup`.
pub fn dialog_answer(label: &str, s: &Seen) -> Response<Body> {
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap_or_default();
    let hangup = v.pointer("/inparams/input").and_then(|x| x.as_str()) == Some("hangup");
    let out = if hangup { 10 } else { 9 };
    let body = serde_json::json!({"ret": 0, "userid": v.get("userid"), "outaction": out, "outparams": {"call_id": v.get("userid")}});
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", label)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// === Client ===

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Which stand-in answered (`x-upstream`) or which embedded backend (`x-odfs-instance`).
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream").or(self.header("x-odfs-instance"))
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        // A kept connection is reused only well inside the gateway's own keep-alive cut
        // (header_read_timeout, 10 s by default): past it the server may close the connection
        // just as a request is written on it, and a POST cannot be retried. Real clients keep
        // their idle timeout below the server's for the same reason.
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(2))
            .build(http);
        Client { inner }
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Answer {
        self.request(
            "POST",
            url,
            &[("content-type", "application/json; charset=UTF-8")],
            body,
        )
        .await
    }

    pub async fn get_text(&self, url: &str) -> String {
        String::from_utf8_lossy(&self.request("GET", url, &[], Bytes::new()).await.body)
            .into_owned()
    }

    /// One dialog turn: V2 when `vdn` is given, else V1.
    pub async fn turn(
        &self,
        gw: &Gateway,
        vdn: Option<u32>,
        userid: &str,
        inaction: i64,
        input: Option<&str>,
    ) -> Answer {
        self.post(
            &gw.url(&dialog_path(vdn)),
            turn_body(userid, inaction, input),
        )
        .await
    }
}

pub fn dialog_path(vdn: Option<u32>) -> String {
    match vdn {
        Some(v) => format!("/oifde/rest/v2/crs/process/{v}"),
        None => "/oifde/rest/crs/process".to_string(),
    }
}

pub fn turn_body(userid: &str, inaction: i64, input: Option<&str>) -> String {
    let mut inparams = serde_json::json!({"call_id": userid, "call_dst_id": "10086"});
    if let Some(i) = input {
        inparams["input"] = i.into();
    }
    serde_json::json!({"userid": userid, "inaction": inaction, "inparams": inparams}).to_string()
}

/// A two-cluster config over two stand-ins, with extra YAML for rules etc.
pub fn two_clusters(stable: &Upstream, canary: &Upstream, rest: &str) -> String {
    format!(
        "decision_header: true\nclusters:\n  stable:\n    endpoints: [{}]\n  canary:\n    endpoints: [{}]\n{rest}",
        stable.url(),
        canary.url()
    )
}

/// Poll `f` until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === The real binary ===

/// A gateway run as a separate OS process of the `graygate` binary.
pub struct Process {
    pub child: std::process::Child,
    pub dialog: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub log: PathBuf,
}

impl Process {
    /// Start `graygate serve` on a config (listen/admin on fixed free loopback ports).
    pub async fn start(yaml: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, yaml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Process {
        let (d, a) = (free_port(), free_port());
        let mut body = String::new();
        for line in yaml.lines() {
            if !line.starts_with("listen:") && !line.starts_with("admin:") {
                body.push_str(line);
                body.push('\n');
            }
        }
        let engine = match test_engine() {
            Some(e) if !body.lines().any(|l| l.starts_with("engine:")) => format!("engine: {e}\n"),
            _ => String::new(),
        };
        let text = format!("listen: 127.0.0.1:{d}\nadmin: 127.0.0.1:{a}\n{body}{engine}");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, text).unwrap();
        Self::spawn(dir, path, d, a).await
    }

    pub async fn spawn(dir: tempfile::TempDir, path: PathBuf, d: u16, a: u16) -> Process {
        Self::spawn_custom(dir, path, d, a, &[], |_| {}).await
    }

    /// `spawn` with `--log-format <format>` (`json` or `text`).
    pub async fn spawn_logging(
        dir: tempfile::TempDir,
        path: PathBuf,
        d: u16,
        a: u16,
        format: &str,
    ) -> Process {
        Self::spawn_full(dir, path, d, a, &[], format, |_| {}).await
    }

    /// [`spawn`](Self::spawn) under a wrapper command (e.g. `["prlimit", "--nofile=256:256"]`),
    /// with a last say on the command (stdio, environment) before it runs.
    pub async fn spawn_custom(
        dir: tempfile::TempDir,
        path: PathBuf,
        d: u16,
        a: u16,
        wrapper: &[&str],
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Process {
        Self::spawn_full(dir, path, d, a, wrapper, "json", configure).await
    }

    async fn spawn_full(
        dir: tempfile::TempDir,
        path: PathBuf,
        d: u16,
        a: u16,
        wrapper: &[&str],
        format: &str,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Process {
        let log = dir.path().join(format!("gateway-{d}.log"));
        let bin = env!("CARGO_BIN_EXE_graygate");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        cmd.args(["serve", "-c"])
            .arg(&path)
            .args(["--log-format", format])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let p = Process {
            child,
            dialog: ([127, 0, 0, 1], d).into(),
            admin: ([127, 0, 0, 1], a).into(),
            dir,
            path,
            log,
        };
        let c = Client::new();
        let url = format!("http://{}/readyz", p.admin);
        let ready = eventually(Duration::from_secs(20), || {
            let (c, url) = (c.clone(), url.clone());
            async move { c.try_get(&url).await == Some(200) }
        })
        .await;
        assert!(
            ready,
            "gateway process did not become ready: {}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        p
    }

    pub fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is `program args…` runnable? If not: panic under CI, otherwise print a SKIP line.
pub fn have_tool(test: &str, program: &str, args: &[&str]) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let what = format!("`{program} {}` is not available", args.join(" "));
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {what}; CI must run scripts/install-test-deps.sh first");
        }
        eprintln!("SKIP {test}: {what} (install it with scripts/install-test-deps.sh)");
    }
    ok
}

/// A free loopback port (bound and released; a tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Client {
    /// GET returning the status, or None when the connection failed.
    pub async fn try_get(&self, url: &str) -> Option<u16> {
        let req = Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .ok()?;
        let r = tokio::time::timeout(Duration::from_secs(5), self.inner.request(req))
            .await
            .ok()?
            .ok()?;
        Some(r.status().as_u16())
    }
}
