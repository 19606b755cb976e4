//! `graygate rollout status|pause|resume|abort|promote [NAME]`: watch and drive the progressive
//! rollouts of a running gateway (spec §11) through its admin surface.
//!
//! Exit codes: 0 done; 1 the gateway refused (unknown rollout 404, action not allowed 409, …,
//! the reason printed); 2 a usage error or no answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Verb {
    Status,
    Pause,
    Resume,
    Abort,
    Promote,
}

#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[arg(value_enum)]
    pub verb: Verb,
    /// The rollout (the rule's name); `status` without it shows every rollout.
    pub name: Option<String>,
    /// The gateway's admin address.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// A file holding the admin bearer token (`admin_token_file` of the gateway).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Why (kept with the transition; `abort` mostly).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the gateway's JSON as it is.
    #[arg(long)]
    pub json: bool,
    /// Time limit of the request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let base = args.admin.trim_end_matches('/').to_string();
    if !base.starts_with("http://") {
        bail!("--admin must be an http:// URL (got {base})");
    }
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let (method, path, body) = match (args.verb, &args.name) {
        (Verb::Status, _) => ("GET", "/admin/rollouts".to_string(), Bytes::new()),
        (_, None) => bail!("{:?} needs the rollout's NAME", args.verb),
        (verb, Some(name)) => {
            let action = match verb {
                Verb::Pause => "pause",
                Verb::Resume => "resume",
                Verb::Abort => "abort",
                _ => "promote",
            };
            let body = serde_json::json!({ "reason": args.reason });
            (
                "POST",
                format!("/admin/rollouts/{}/{action}", encode(name)),
                Bytes::from(serde_json::to_vec(&body)?),
            )
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let uri = format!("{base}{path}");
    let (status, text) = rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = http::Request::builder().method(method).uri(&uri);
        if let Some(t) = &token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if method == "POST" {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("building {method} {uri}"))?;
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .with_context(|| format!("{method} {uri}"))?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(args.timeout, exchange)
            .await
            .with_context(|| format!("{method} {uri}: no answer within {:?}", args.timeout))?
    })?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if status != 200 {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or(text.as_str());
        eprintln!("graygate rollout: HTTP {status}: {msg}");
        return Ok(ExitCode::from(1));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    match args.verb {
        Verb::Status => {
            let list = v["rollouts"].as_array().cloned().unwrap_or_default();
            let shown: Vec<&Value> = list
                .iter()
                .filter(|r| args.name.as_deref().is_none_or(|n| r["name"] == n))
                .collect();
            if shown.is_empty() {
                match &args.name {
                    Some(n) => {
                        eprintln!("graygate rollout: no rollout named `{n}`");
                        return Ok(ExitCode::from(1));
                    }
                    None => println!("no rollouts"),
                }
            }
            for r in shown {
                print!("{}", render(r));
            }
        }
        _ => print!("{}", render(&v)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encode a path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn secs(v: &Value) -> String {
    match v.as_f64() {
        Some(s) => humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string(),
        None => "-".into(),
    }
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// One rollout as text: the state line, both sides, the verdicts, the last transition.
pub fn render(r: &Value) -> String {
    let mut out = String::new();
    let steps = r["steps"].as_array().map(|a| a.len()).unwrap_or(0);
    let idx = r["step_index"].as_u64().unwrap_or(0) + 1;
    out.push_str(&format!(
        "{}  {} -> {}  {}  step {idx}/{steps}  share {}%  at step {}",
        r["name"].as_str().unwrap_or("?"),
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        r["share"],
        secs(&r["at_step_seconds"]),
    ));
    if !r["may_advance_in_seconds"].is_null() {
        out.push_str(&format!(
            ", may advance in {}",
            secs(&r["may_advance_in_seconds"])
        ));
    }
    out.push_str(&format!(
        "  [advance {}, min_calls {}]\n",
        r["advance"].as_str().unwrap_or("?"),
        r["min_calls"]
    ));
    for side in ["from", "to"] {
        let s = &r["sides"][side];
        let n = s["ended"].as_u64().unwrap_or(0);
        let k = |f: &str| s[f].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  {side:<4} {:<12} {n:>6} ended  completed {}  transferred {}  failed {}  abandoned {}  turn p99 {}\n",
            s["cluster"].as_str().unwrap_or("?"),
            pct(k("completed"), n),
            pct(k("transferred"), n),
            pct(k("failed"), n),
            pct(k("abandoned"), n),
            s["turn_p99_ms"]
                .as_f64()
                .map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    for v in r["verdicts"].as_array().into_iter().flatten() {
        let (f, t) = (
            v["from_value"].as_f64().unwrap_or(0.0),
            v["to_value"].as_f64().unwrap_or(0.0),
        );
        let crit = v["criterion"].as_str().unwrap_or("?");
        let figures = if crit == "turn_p99" {
            format!("{f:.1} ms vs {t:.1} ms")
        } else {
            format!("{:.2}% vs {:.2}%", f * 100.0, t * 100.0)
        };
        let p = v["p_value"]
            .as_f64()
            .map(|p| format!("p = {p:.3e}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {crit:<12} {:<6} {figures:<24} {p:<14} {}\n",
            v["threshold"].as_str().unwrap_or(""),
            if v["holds"].as_bool() == Some(true) {
                "HOLDS"
            } else {
                "ok"
            }
        ));
    }
    if let Some(t) = r["last_transition"].as_object() {
        out.push_str(&format!(
            "  last: {} {} ({} -> {}): {}\n",
            t.get("at").and_then(Value::as_str).unwrap_or(""),
            t.get("kind").and_then(Value::as_str).unwrap_or(""),
            t.get("from").and_then(Value::as_str).unwrap_or(""),
            t.get("to").and_then(Value::as_str).unwrap_or(""),
            t.get("reason").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    out
}
