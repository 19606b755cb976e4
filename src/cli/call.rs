//! `graygate call`: run one call through a gateway or an ODFS and print each turn.
//!
//! The call follows the protocol's turn rules (A3, A4): a token from the token API (when it
//! answers), inaction 8 (V2 with `--vdn`, V1 without), then one turn per collect prompt, each
//! taking the next `--input` (or a line from the terminal when no `--input` is given). Turns that
//! need no caller input are answered on their own: `playover` after a play-only prompt,
//! `recordend` after a recording, made-up queue results after a query (12), `trans_result=0`
//! after a transfer (11). When the inputs run out, or the ODFS sends outaction 10, the client
//! sends its `input=hangup` report, which must be answered with outaction 10.
//!
//! Exit codes: 0 every turn got HTTP 200 with `ret` 0 and the call ended with outaction 10;
//! 1 a turn failed (the reason is printed); 2 a usage error.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use super::Common;
use crate::protocol::{INSTANCE_HEADER, TOKEN_PATH, V1_PATH, V2_PREFIX};

/// The header in which the gateway reports its routing decision.
const ROUTE_HEADER: &str = "x-graygate-route";
/// A call that needs more turns than this is looping: stop it.
const MAX_TURNS: usize = 200;

#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Base URL of the gateway or ODFS: http:// or https:// (verified against the system's
    /// roots, or `--ca`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// VDN id: use the V2 path `/oifde/rest/v2/crs/process/{vdn}`; V1 when left out.
    #[arg(long)]
    pub vdn: Option<u32>,
    /// The call's userid; `call-<unix-ms>-<pid>` when left out.
    #[arg(long)]
    pub userid: Option<String>,
    /// The caller's answer to the next collect prompt (digits or text); repeat for each prompt.
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Token API appKey (tenant id).
    #[arg(long, default_value = "graygate")]
    pub app_key: String,
    /// Token API appSecret.
    #[arg(long, default_value = "")]
    pub app_secret: String,
    /// `channelType` sent in inaction 8 (WEB, WECHAT, ...).
    #[arg(long)]
    pub channel: Option<String>,
    /// `call_sor_id`: the caller's number.
    #[arg(long, default_value = "13500000001")]
    pub caller: String,
    /// `call_dst_id`: the flow access code.
    #[arg(long, default_value = "10086")]
    pub called: String,
    /// Send inaction 7 (packet capture) before inaction 8.
    #[arg(long)]
    pub capture: bool,
    /// A PEM file of CA certificates to verify an https:// server with, instead of the
    /// system's roots.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Time limit of each request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One answer as the client saw it.
struct Answer {
    status: u16,
    instance: Option<String>,
    route: Option<String>,
    body: Value,
}

impl Answer {
    fn outaction(&self) -> Option<i64> {
        number(self.body.get("outaction"))
    }
    fn ret(&self) -> Option<i64> {
        number(self.body.get("ret"))
    }
    fn param(&self, key: &str) -> &str {
        self.body
            .get("outparams")
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// `ret` and `outaction` may be numbers or numeric strings (A2).
fn number(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

struct Session {
    client: Client<Connector, Full<Bytes>>,
    base: String,
    dialog_path: String,
    userid: String,
    token: String,
    args: CallArgs,
    turn: usize,
}

/// http and https (HTTP/1.1), verified with `ca` or the system's roots.
fn connector(ca: Option<&std::path::Path>) -> anyhow::Result<Connector> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(file) => {
            for c in crate::tlsfiles::read_certs(&file.display().to_string())
                .map_err(anyhow::Error::msg)?
            {
                roots
                    .add(c)
                    .with_context(|| format!("--ca {}", file.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

pub fn run(_common: &Common, args: CallArgs) -> anyhow::Result<ExitCode> {
    let base = args.url.trim_end_matches('/').to_string();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("--url must be an http:// or https:// URL (got {base})");
    }
    let connector = connector(args.ca.as_deref())?;
    base.parse::<http::Uri>()
        .with_context(|| format!("--url {base}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let userid = args.userid.clone().unwrap_or_else(|| {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            format!("call-{ms}-{}", std::process::id())
        });
        let dialog_path = match args.vdn {
            Some(v) => format!("{V2_PREFIX}{v}"),
            None => V1_PATH.to_string(),
        };
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let mut s = Session {
            client,
            base,
            dialog_path,
            userid,
            token: String::new(),
            args,
            turn: 0,
        };
        match s.run().await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                println!("call failed: {e:#}");
                Ok(ExitCode::from(1))
            }
        }
    })
}

impl Session {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let uri = format!("{}{path}", self.base);
        let req = http::Request::post(&uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))
            .with_context(|| format!("building a request to {uri}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .with_context(|| format!("POST {uri}"))?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (status, instance, route) = (
                resp.status().as_u16(),
                header(INSTANCE_HEADER),
                header(ROUTE_HEADER),
            );
            let bytes = resp
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            anyhow::Ok(Answer {
                status,
                instance,
                route,
                body,
            })
        };
        tokio::time::timeout(self.args.timeout, exchange)
            .await
            .with_context(|| format!("POST {uri}: no answer within {:?}", self.args.timeout))?
    }

    /// Fetch a token; a token API that does not answer 200 leaves the call without one.
    async fn fetch_token(&mut self) -> anyhow::Result<()> {
        let body = json!({ "appKey": self.args.app_key, "appSecret": self.args.app_secret });
        let a = self.post(TOKEN_PATH, &body).await?;
        match a.body.get("authToken").and_then(Value::as_str) {
            Some(t) if a.status == 200 && number(a.body.get("errorCode")) == Some(0) => {
                self.token = t.to_string()
            }
            _ => eprintln!(
                "token: HTTP {} {}; going on without a token",
                a.status, a.body
            ),
        }
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.fetch_token().await?;
        println!("call {} on {}{}", self.userid, self.base, self.dialog_path);
        let mut inputs = std::mem::take(&mut self.args.inputs).into_iter();
        let interactive = inputs.len() == 0 && std::io::stdin().is_terminal();
        if self.args.capture {
            let a = self.send(7, Map::new(), None, None).await?;
            if a.outaction() != Some(7) {
                bail!(
                    "inaction 7 was answered with outaction {:?}, not 7",
                    a.outaction()
                );
            }
        }
        let mut last = self.send(8, Map::new(), None, None).await?;
        let mut last_inaction = 8;
        loop {
            if self.turn >= MAX_TURNS {
                bail!("the call did not end within {MAX_TURNS} turns");
            }
            let outaction = last.outaction().unwrap_or(-1);
            let mut p = Map::new();
            let (inaction, ext, shown) = match outaction {
                10 => {
                    // The ODFS ended the call: report the hangup, which must get 10 again.
                    let inaction = if last_inaction == 11 { 11 } else { 9 };
                    return self.hang_up(inaction).await;
                }
                9 if last.param("prompt_type") == "4" => {
                    p.insert("flow_result_type".into(), "4".into());
                    p.insert("input".into(), "recordend".into());
                    (9, None, None)
                }
                9 if last.param("model_type").is_empty()
                    || last.param("model_type").starts_with("100") =>
                {
                    p.insert("flow_result_type".into(), "3".into());
                    p.insert("input".into(), "playover".into());
                    (9, None, None)
                }
                9 | 13 => {
                    let next = if interactive {
                        ask(last.param("prompt_text"))?
                    } else {
                        inputs.next()
                    };
                    let Some(input) = next else {
                        return self.hang_up(9).await;
                    };
                    if input == "hangup" {
                        return self.hang_up(9).await;
                    }
                    let dtmf = !input.is_empty()
                        && input
                            .bytes()
                            .all(|b| b.is_ascii_digit() || b == b'#' || b == b'*');
                    p.insert(
                        "flow_result_type".into(),
                        if dtmf { "2" } else { "1" }.into(),
                    );
                    p.insert("input".into(), input.clone().into());
                    (9, None, Some(input))
                }
                11 => {
                    let now = crate::backend::answers::wall_time(SystemTime::now());
                    p.insert("begin_trans".into(), now.clone().into());
                    p.insert("end_trans".into(), now.into());
                    p.insert("trans_result".into(), "0".into());
                    (11, None, None)
                }
                12 => {
                    let ext = json!({ "queueIndex": "2", "agentCount": "5", "estimateTime": "30", "idleAgentCount": "1" });
                    p.insert("flow_result_type".into(), "-1".into());
                    p.insert("input".into(), "".into());
                    (9, ext.as_object().cloned(), None)
                }
                other => bail!("unexpected outaction {other}"),
            };
            last = self.send(inaction, p, ext, shown.as_deref()).await?;
            last_inaction = inaction;
        }
    }

    /// Report the hangup and check the answer is outaction 10.
    async fn hang_up(&mut self, inaction: i64) -> anyhow::Result<()> {
        let mut p = Map::new();
        p.insert("input".into(), "hangup".into());
        if inaction == 11 {
            p.insert("trans_result".into(), "0".into());
        } else {
            p.insert("flow_result_type".into(), "-1".into());
        }
        let a = self.send(inaction, p, None, Some("hangup")).await?;
        match a.outaction() {
            Some(10) => Ok(()),
            other => bail!("the hangup report was answered with outaction {other:?}, not 10"),
        }
    }

    /// Send one turn, print it, and fail unless it got HTTP 200 with `ret` 0.
    async fn send(
        &mut self,
        inaction: i64,
        mut inparams: Map<String, Value>,
        extparams: Option<Map<String, Value>>,
        shown_input: Option<&str>,
    ) -> anyhow::Result<Answer> {
        self.turn += 1;
        inparams.insert("call_id".into(), self.userid.clone().into());
        inparams.insert("call_sor_id".into(), self.args.caller.clone().into());
        inparams.insert("call_dst_id".into(), self.args.called.clone().into());
        if !self.token.is_empty() {
            inparams.insert("auth_token".into(), self.token.clone().into());
        }
        if inaction == 8 {
            if let Some(c) = &self.args.channel {
                inparams.insert("channelType".into(), c.clone().into());
            }
        }
        let mut body = json!({ "userid": self.userid, "inaction": inaction, "seat": "vir", "inparams": inparams });
        if let (Some(ext), Some(obj)) = (extparams, body.as_object_mut()) {
            obj.insert("extparams".into(), Value::Object(ext));
        }
        let path = self.dialog_path.clone();
        let a = self.post(&path, &body).await?;
        let mut line = format!(
            "turn {}  inaction {inaction} -> outaction {}  [instance {}]",
            self.turn,
            a.outaction()
                .map(|o| o.to_string())
                .unwrap_or_else(|| "?".into()),
            a.instance.as_deref().unwrap_or("-"),
        );
        if let Some(r) = &a.route {
            line.push_str(&format!("  [route {r}]"));
        }
        let what = describe(&a);
        if !what.is_empty() {
            line.push_str("  ");
            line.push_str(&what);
        }
        if let Some(i) = shown_input {
            line.push_str(&format!("  (input: {i})"));
        }
        println!("{line}");
        if a.status != 200 {
            bail!("turn {}: HTTP {} {}", self.turn, a.status, a.body);
        }
        if a.ret() != Some(0) {
            bail!("turn {}: ret is not 0: {}", self.turn, a.body);
        }
        Ok(a)
    }
}

/// A short description of what the answer asks for.
fn describe(a: &Answer) -> String {
    match a.outaction() {
        Some(9) if a.param("prompt_type") == "4" => format!("record to {}", a.param("prompt_wav")),
        Some(9) => {
            let text = a.param("prompt_text");
            if text.is_empty() {
                a.param("prompt_wav").to_string()
            } else {
                text.to_string()
            }
        }
        Some(10) => format!("hang up (release_reason {})", a.param("release_reason")),
        Some(11) => format!(
            "transfer (trans_type {}, route_value {})",
            a.param("trans_type"),
            a.param("route_value")
        ),
        Some(12) => format!(
            "query (prompt_type {}, skill_id {})",
            a.param("prompt_type"),
            a.param("skill_id")
        ),
        Some(13) => format!("recognize_type {}", a.param("recognize_type")),
        Some(7) => "capture on".to_string(),
        _ => a
            .body
            .get("errorMsg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

/// Ask the terminal for the caller's answer; `None` on end of input.
fn ask(prompt: &str) -> anyhow::Result<Option<String>> {
    eprint!("{prompt}\n> ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the terminal")?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}
