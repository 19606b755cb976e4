//! Headless Chromium driven through the DevTools protocol, for the console tests.
//!
//! `Chromium::launch()` starts Debian's `chromium` (or `$CHROMIUM`) with a fresh profile, no
//! network of its own (no sync, no component updates, no QUIC), and connects to its first page
//! over the DevTools websocket. The calls block: use them from `block_in_place` in a
//! multi-threaded test so the gateway keeps running on the other workers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Result<T> = std::result::Result<T, String>;

pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// The browser binary: `$CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser, or `None` after printing SKIP; under CI a missing browser fails the test.
pub fn or_skip(test: &str) -> Option<PathBuf> {
    match find() {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "{test}: chromium is required under CI (scripts/install-test-deps.sh installs it)"
            )
        }
        None => {
            eprintln!(
                "SKIP {test}: no chromium on this machine (set CHROMIUM or install chromium)"
            );
            None
        }
    }
}

/// One plain HTTP GET on loopback (the DevTools discovery endpoint, which keeps the
/// connection open: the body is read by its Content-Length).
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                }
            }
        }
        let n = s.read(&mut chunk).map_err(|e| format!("GET {path}: {e}"))?;
        if n == 0 {
            return Err(format!("GET {path}: closed early"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Chromium {
    pub fn launch(bin: &Path) -> Result<Chromium> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut child = child;
        let ws = match Self::connect_page(profile.path(), &mut child) {
            Ok(ws) => ws,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut me = Chromium {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        };
        me.call("Page.enable", json!({}))?;
        me.call("Runtime.enable", json!({}))?;
        Ok(me)
    }

    /// Wait for the profile's DevToolsActivePort, then connect to the first page target.
    fn connect_page(
        profile: &Path,
        child: &mut Child,
    ) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
        let file = profile.join("DevToolsActivePort");
        let end = std::time::Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("chromium exited at start: {status}"));
            }
            if std::time::Instant::now() > end {
                return Err("chromium did not open its DevTools port within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let end = std::time::Instant::now() + Duration::from_secs(30);
        let url = loop {
            let list: Value = serde_json::from_str(&http_get(port, "/json/list")?)
                .map_err(|e| format!("/json/list: {e}"))?;
            let page = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
            });
            if let Some(u) = page {
                break u;
            }
            if std::time::Instant::now() > end {
                return Err(format!("no page target: {list}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(url.as_str()).map_err(|e| format!("{url}: {e}"))?;
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            // A browser that stops answering fails the test instead of hanging it.
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
        }
        Ok(ws)
    }

    /// Send one command and wait for its answer (events in between are dropped).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let m = self.ws.read().map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluate a JavaScript expression in the page (promises awaited) and return its value.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    pub fn navigate(&mut self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({ "url": url }))?;
        Ok(())
    }

    /// Poll `expr` until it is truthy (returns its value) or `limit` passes (returns the last
    /// value as the error, for the assertion message).
    pub fn wait_for(&mut self, expr: &str, limit: Duration) -> Result<Value> {
        let end = std::time::Instant::now() + limit;
        loop {
            let v = self.eval(expr).unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if std::time::Instant::now() > end {
                return Err(format!("timed out waiting for {expr} (last: {v})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Click the middle of the first element matching `selector`, with real mouse events.
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2, e.disabled === true]; }})()"
        ))?;
        let (Some(x), Some(y)) = (r[0].as_f64(), r[1].as_f64()) else {
            return Err(format!("no element {selector}"));
        };
        if r[2] == true {
            return Err(format!("{selector} is disabled"));
        }
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// Type into the focused element, as a keyboard would.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Set the viewport (CSS pixels); `mobile` emulates a phone's viewport.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )?;
        Ok(())
    }

    /// A PNG of the whole page at `width` CSS pixels (`mobile`: as a phone lays it out).
    pub fn screenshot(&mut self, width: u32, mobile: bool) -> Result<Vec<u8>> {
        self.viewport(width, 800, mobile)?;
        let h = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")?
            .as_u64()
            .unwrap_or(800)
            .clamp(200, 6000) as u32;
        self.viewport(width, h, mobile)?;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let b64 = r["data"].as_str().ok_or("no screenshot data")?;
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| e.to_string())
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
