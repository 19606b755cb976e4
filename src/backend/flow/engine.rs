//! One turn of one call: (flows, call slot, turn) → answer. Pure apart from the clock values it
//! is handed, so the whole dialog logic is unit-tested without a socket.
//!
//! The rules (protocol Part A, `docs/flows.md`): 7 creates the call and answers 7; 8 (re)starts
//! it on the flow of `call_dst_id` and answers the start node; 9 and 11 report the result of the
//! node the call is at and get the next node's outaction; `input=hangup` answers 10 and deletes the
//! call; after the backend's own 10 every turn gets 10 again until the hangup report; 13 answers
//! 13 with `recognize_type`. Consecutive `sys_err` turns are capped.

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{Flow, Flows, NodeId, NodeKind, Prompt};
use crate::backend::answers::Answer;
use crate::backend::calls::{Call, CallState};
use crate::protocol::INPUT_HANGUP;

/// inparams copied into call variables: at most this many, each at most this long.
const MAX_VARS: usize = 64;
const MAX_VAR_CHARS: usize = 1024;
/// The queue results a client reports after outaction 12.
pub const QUEUE_FIELDS: [&str; 4] = ["queueIndex", "agentCount", "estimateTime", "idleAgentCount"];

/// What one request says, already checked for shape.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub inaction: i64,
    pub inparams: &'a Map<String, Value>,
    pub extparams: Option<&'a Map<String, Value>>,
    /// Wall-clock time of the turn in the protocol format.
    pub wall: &'a str,
    pub now: Instant,
}

impl Turn<'_> {
    /// A scalar inparam as text: `"1"` and `1` read the same (clients differ).
    fn param(&self, key: &str) -> Option<String> {
        self.inparams.get(key).and_then(scalar)
    }
}

/// Why a turn has no answer from the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("no call instance for this userid (never started, ended, or idle too long)")]
    NoCall,
    #[error("the call was created by inaction 7 but not started: send inaction 8")]
    NotStarted,
    #[error("unknown inaction {0} (7, 8, 9, 11, 13)")]
    UnknownInaction(i64),
}

/// Run one turn on the call slot of `userid`; the slot is `None` when there is no call and is
/// left `None` when the call ends.
pub fn step(
    flows: &Flows,
    sys_err_cap: u32,
    userid: &str,
    slot: &mut Option<Call>,
    t: &Turn<'_>,
) -> Result<Answer, TurnError> {
    match t.inaction {
        7 => {
            match slot {
                Some(call) => call.last_seen = t.now,
                None => {
                    let mut call = Call::new(
                        flows.pick(t.param("call_dst_id").as_deref()),
                        t.wall.to_string(),
                        t.now,
                    );
                    copy_vars(&mut call, userid, t.inparams);
                    *slot = Some(call);
                }
            }
            Ok(Answer::new(7))
        }
        8 => {
            let flow_ix = flows.pick(t.param("call_dst_id").as_deref());
            let mut call = Call::new(flow_ix, t.wall.to_string(), t.now);
            if let Some(old) = slot.take() {
                // Variables of a preceding inaction 7 stay.
                call.vars = old.vars;
            }
            copy_vars(&mut call, userid, t.inparams);
            if let Some(ext) = t.extparams {
                copy_vars(&mut call, userid, ext);
            }
            call.inter_idx = 1;
            let flow = flows.get(flow_ix).ok_or(TurnError::NoCall)?;
            let answer = enter(flow, &mut call, userid, flow.start, t.wall);
            *slot = Some(call);
            Ok(answer)
        }
        9 | 11 => {
            let input = t.param("input").unwrap_or_default();
            let input = input.as_str();
            if input == INPUT_HANGUP {
                let call = slot.take().ok_or(TurnError::NoCall)?;
                let reason = if call.state == CallState::Ended {
                    call.release_reason
                } else {
                    "0"
                };
                return Ok(hangup_answer(&call, userid, reason, t.wall));
            }
            let call = slot.as_mut().ok_or(TurnError::NoCall)?;
            call.last_seen = t.now;
            let flow = flows.get(call.flow).ok_or(TurnError::NoCall)?;
            let at = match call.state {
                CallState::Created => return Err(TurnError::NotStarted),
                CallState::Ended => {
                    return Ok(hangup_answer(call, userid, call.release_reason, t.wall))
                }
                CallState::At(at) => at,
            };
            call.inter_idx += 1;
            if let Some(ext) = t.extparams {
                for key in QUEUE_FIELDS {
                    if let Some(v) = ext.get(key).and_then(scalar) {
                        call.vars.insert(key.to_string(), v);
                    }
                }
            }
            if !input.is_empty() && input.chars().count() <= MAX_VAR_CHARS {
                call.vars.insert("input".to_string(), input.to_string());
            }
            let next = if input == "sys_err" {
                call.sys_errs += 1;
                if call.sys_errs >= sys_err_cap.max(1) {
                    Next::End("1")
                } else {
                    match flow.node(at).map(|n| &n.kind) {
                        Some(NodeKind::Collect { on, .. }) => {
                            on.sys_err.map(Next::Go).unwrap_or(Next::Go(at))
                        }
                        _ => Next::Go(at),
                    }
                }
            } else {
                call.sys_errs = 0;
                if t.inaction == 11 {
                    after_transfer(flow, at, t.param("trans_result").as_deref())
                } else {
                    after_interaction(flow, call, at, input)
                }
            };
            Ok(match next {
                Next::Go(id) => enter(flow, call, userid, id, t.wall),
                Next::End(reason) => end(call, userid, reason, t.wall),
            })
        }
        13 => {
            let call = slot.as_mut().ok_or(TurnError::NoCall)?;
            call.last_seen = t.now;
            let mut recognized = false;
            if let (CallState::At(at), Some(flow)) = (call.state, flows.get(call.flow)) {
                call.polls = call.polls.saturating_add(1);
                if let Some(NodeKind::Collect {
                    recognition_after: Some(n),
                    ..
                }) = flow.node(at).map(|n| &n.kind)
                {
                    recognized = call.polls >= *n;
                }
            }
            Ok(Answer::new(13)
                .with("call_id", userid)
                .with("recognize_type", if recognized { "1" } else { "0" }))
        }
        other => Err(TurnError::UnknownInaction(other)),
    }
}

enum Next {
    Go(NodeId),
    End(&'static str),
}

/// inaction 11 at a transfer node: success → `success` or hang up, failure → `failure`.
/// Anywhere else the node is asked again.
fn after_transfer(flow: &Flow, at: NodeId, trans_result: Option<&str>) -> Next {
    match flow.node(at).map(|n| &n.kind) {
        Some(NodeKind::Transfer {
            success, failure, ..
        }) => {
            if trans_result == Some("0") {
                success.map(Next::Go).unwrap_or(Next::End("0"))
            } else {
                Next::Go(*failure)
            }
        }
        _ => Next::Go(at),
    }
}

/// inaction 9: the result of a play, collect, query or record (or a transfer the client did not
/// attempt, which counts as failed).
fn after_interaction(flow: &Flow, call: &mut Call, at: NodeId, input: &str) -> Next {
    let Some(node) = flow.node(at) else {
        return Next::End("1");
    };
    match &node.kind {
        NodeKind::Play { next, .. } | NodeKind::Record { next, .. } => Next::Go(*next),
        NodeKind::Query {
            next, no_agents, ..
        } => match no_agents {
            Some(n) if call.var("agentCount") == "0" => Next::Go(*n),
            _ => Next::Go(*next),
        },
        NodeKind::Transfer { failure, .. } => Next::Go(*failure),
        NodeKind::Hangup { release_reason } => Next::End(release_reason),
        NodeKind::Collect {
            dtmf,
            intents,
            on,
            retry,
            ..
        } => {
            let miss = |call: &mut Call, branch: Option<NodeId>| {
                if call.miss_node != Some(at) {
                    call.miss_node = Some(at);
                    call.misses = 0;
                }
                call.misses += 1;
                match retry {
                    Some((max, then)) if call.misses > *max => {
                        call.misses = 0;
                        call.miss_node = None;
                        Next::Go(*then)
                    }
                    _ => Next::Go(branch.unwrap_or(at)),
                }
            };
            match input {
                "timeout" | "recordend" | "" => return miss(call, on.timeout),
                "nomatch" => return miss(call, on.nomatch),
                "playover" => {
                    if let Some(p) = on.playover {
                        return Next::Go(p);
                    }
                    return miss(call, on.timeout);
                }
                _ => {}
            }
            let mut key = input.trim();
            if dtmf.is_some_and(|d| d.confirm) {
                key = key.trim_end_matches('#');
            }
            let mut hit = on.exact.get(key).copied();
            if hit.is_none() {
                let lower = key.to_lowercase();
                if let Some((name, _)) = intents
                    .iter()
                    .find(|(_, words)| words.iter().any(|w| lower.contains(w)))
                {
                    call.vars.insert("intent".to_string(), name.clone());
                    hit = on.exact.get(name).copied();
                }
            }
            match hit.or(on.default) {
                Some(id) => {
                    call.misses = 0;
                    call.miss_node = None;
                    Next::Go(id)
                }
                None => miss(call, on.nomatch),
            }
        }
    }
}

/// Move the call to a node and answer that node's outaction.
fn enter(flow: &Flow, call: &mut Call, userid: &str, id: NodeId, wall: &str) -> Answer {
    let Some(node) = flow.node(id) else {
        return end(call, userid, "1", wall);
    };
    call.state = CallState::At(id);
    call.polls = 0;
    let idx = call.inter_idx.to_string();
    match &node.kind {
        NodeKind::Play { prompt, .. } => play(call, userid, prompt, "1000000", 0, &idx),
        NodeKind::Collect {
            prompt,
            dtmf,
            intents,
            timeout,
            ..
        } => {
            let media = match (dtmf.is_some(), !intents.is_empty()) {
                (true, true) => "111",
                (true, false) => "101",
                _ => "110",
            };
            let (digits, confirm) = dtmf
                .map(|d| (d.max_digits, d.confirm))
                .unwrap_or((0, false));
            let model = format!("{media}{digits:02}0{}", u8::from(confirm));
            play(call, userid, prompt, &model, *timeout, &idx)
        }
        NodeKind::Record {
            wav,
            text,
            tone,
            timeout,
            language,
            ..
        } => Answer::new(9)
            .with("call_id", userid)
            .with("prompt_type", "4")
            .with("prompt_wav", render(wav, call))
            .with(
                "prompt_text",
                text.as_deref().map(|t| render(t, call)).unwrap_or_default(),
            )
            .with("language", language.as_str())
            .with("inter_idx", idx)
            .with("model_type", "1000000")
            .with("timeout", timeout.to_string())
            .with("tone", if *tone { "true" } else { "false" }),
        NodeKind::Transfer {
            trans_type,
            route_value,
            ..
        } => {
            call.trans_idx += 1;
            Answer::new(11)
                .with("call_id", userid)
                .with("call_sor_id", call.var("call_sor_id"))
                .with("trans_type", trans_type.to_string())
                .with("route_value", render(route_value, call))
                .with("inter_idx", idx)
                .with("trans_idx", call.trans_idx.to_string())
        }
        NodeKind::Query {
            prompt_type,
            skill_id,
            ..
        } => {
            let mut a = Answer::new(12)
                .with("call_id", userid)
                .with("prompt_type", prompt_type.to_string());
            if let Some(s) = skill_id {
                a = a.with("skill_id", s.as_str());
            }
            a.with("moduleName", node.name.as_str())
                .with("inter_idx", idx)
        }
        NodeKind::Hangup { release_reason } => end(call, userid, release_reason, wall),
    }
}

fn play(call: &Call, userid: &str, p: &Prompt, model: &str, timeout: u32, idx: &str) -> Answer {
    Answer::new(9)
        .with("call_id", userid)
        .with("prompt_type", p.prompt_type.to_string())
        .with(
            "prompt_wav",
            p.wav
                .as_deref()
                .map(|w| render(w, call))
                .unwrap_or_default(),
        )
        .with(
            "prompt_text",
            p.text
                .as_deref()
                .map(|t| render(t, call))
                .unwrap_or_default(),
        )
        .with("language", p.language.as_str())
        .with("inter_idx", idx)
        .with("model_type", model)
        .with("timeout", timeout.to_string())
        .with("tone", "")
}

/// The backend ends the call on its own: outaction 10, the call waits for the hangup report.
fn end(call: &mut Call, userid: &str, reason: &'static str, wall: &str) -> Answer {
    call.state = CallState::Ended;
    call.release_reason = reason;
    hangup_answer(call, userid, reason, wall)
}

fn hangup_answer(call: &Call, userid: &str, reason: &str, wall: &str) -> Answer {
    Answer::new(10)
        .with("call_id", userid)
        .with("call_sor_id", call.var("call_sor_id"))
        .with("call_dst_id", call.var("call_dst_id"))
        .with("start_time", call.start_time.as_str())
        .with("end_time", wall)
        .with("release_reason", reason)
}

/// Copy the scalar members of a request object into call variables (never `auth_token`).
fn copy_vars(call: &mut Call, userid: &str, from: &Map<String, Value>) {
    call.vars.insert("userid".to_string(), userid.to_string());
    for (k, v) in from {
        if k == "auth_token" || k.len() > 64 || call.vars.len() >= MAX_VARS {
            continue;
        }
        if let Some(s) = scalar(v) {
            if s.chars().count() <= MAX_VAR_CHARS {
                call.vars.insert(k.clone(), s);
            }
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Replace `{name}` with the call variable `name` (empty when unset); other braces stay.
pub fn render(template: &str, call: &Call) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if close > 0
                    && after[..close]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                out.push_str(call.var(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
