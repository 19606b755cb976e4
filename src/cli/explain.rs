//! `graygate explain`: which rule and cluster a new call gets, and why. No network, no pins.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::probe::{scan, Dialog};
use crate::protocol::Inaction;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[arg(short = 'c', long = "config", default_value = "routes.yaml")]
    pub config: PathBuf,
    /// The vdnId of a V2 request; omit for a V1 request.
    #[arg(long)]
    pub vdn: Option<u32>,
    #[arg(long)]
    pub userid: String,
    #[arg(long, default_value_t = 8)]
    pub inaction: i64,
    /// A request header, `name=value` (repeatable).
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// A body field, `dotted.path=value` (repeatable).
    #[arg(long = "field", value_name = "PATH=VALUE")]
    pub fields: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let snap = match crate::config::load_offline(&args.config) {
        Ok((s, _)) => s,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    // Build the body the way a client would, so fields go through the real probe.
    let mut body = serde_json::Map::new();
    body.insert("userid".into(), args.userid.clone().into());
    body.insert("inaction".into(), args.inaction.into());
    for f in &args.fields {
        let (path, value) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--field takes path=value, got `{f}`"))?;
        let mut node = &mut body;
        let segs: Vec<&str> = path.split('.').collect();
        for (k, seg) in segs.iter().enumerate() {
            if k + 1 == segs.len() {
                node.insert(seg.to_string(), value.into());
            } else {
                let entry = node
                    .entry(seg.to_string())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                node = entry.as_object_mut().ok_or_else(|| {
                    anyhow::anyhow!("--field `{path}` conflicts with another field")
                })?;
            }
        }
    }
    let bytes = serde_json::to_vec(&body)?;
    let dialog = args.vdn.map(Dialog::V2).unwrap_or(Dialog::V1);
    let turn = scan(&bytes, dialog, &snap.probe).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--header takes name=value, got `{h}`"))?;
        headers.append(
            HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())?,
            HeaderValue::from_str(v.trim())?,
        );
    }
    // No pools here: every cluster is taken as healthy, and the fallback shown as what would
    // apply if the picked cluster had no healthy endpoint.
    let e = crate::router::explain(&turn, &headers, &snap.routing, |_| true);
    let new_call = Inaction(args.inaction).starts_call();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rule": e.rule, "cluster": e.cluster, "why": e.why, "fallback": e.fallback, "skipped": e.skipped, "rollout": e.rollout, "new_call": new_call})
        );
    } else {
        println!("rule:    {}", e.rule);
        println!("cluster: {}", e.cluster);
        println!("why:     {}", e.why);
        if let Some(f) = &e.fallback {
            println!(
                "fallback: `{}` while `{}` has no healthy endpoint",
                f.to, f.from
            );
        }
        if let Some(r) = &e.rollout {
            println!(
                "rollout: step {} of {}, {}% of new calls (a fresh rollout; a running gateway's step is in `graygate rollout status`)",
                r.step, r.steps, r.share
            );
        }
        for s in &e.skipped {
            println!("skipped: {s}");
        }
        if !new_call {
            println!("note:    inaction {} is a later turn: with a pin it follows the pin; without one it is an orphan ({:?})", args.inaction, snap.pins.orphan_turns);
        }
    }
    Ok(ExitCode::SUCCESS)
}
