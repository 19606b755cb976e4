//! `RawFlowsFile` → [`Flows`]: resolve node names to indexes and check every rule that serde
//! cannot (targets exist, one kind per node, enum values, required pairs). All errors of a file
//! are collected, each placed at `file:line:column` through its key path.

use std::collections::HashMap;

use super::raw::{RawCollect, RawFlow, RawFlowsFile, RawNode, RawPlay};
use super::{Branches, Dtmf, Flow, Flows, Node, NodeId, NodeKind, Prompt};
use crate::located::{Located, LocatedErrors};

/// Input tokens a collect node may branch on besides digits and intents.
pub const SPECIAL_KEYS: [&str; 5] = ["timeout", "nomatch", "playover", "sys_err", "default"];
/// `prompt_type` values a play or collect node may use (4 is the record node's).
const PLAY_PROMPT_TYPES: [u8; 9] = [0, 1, 2, 3, 5, 6, 7, 8, 9];
/// `prompt_type` values of a query (outaction 12).
const QUERY_PROMPT_TYPES: [u8; 4] = [1, 2, 3, 5];
/// `trans_type` values: the API's 1–8 and 31–33, plus 9, 10 and 34 of the flow designer.
const TRANS_TYPES: [u32; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 31, 32, 33, 34];
/// Longest flow access code (`call_dst_id` is at most 20 characters).
const MAX_CODE_CHARS: usize = 20;

/// Parse and compile one flow file's text; `file` is the name errors carry.
pub fn compile_text(file: &str, text: &str) -> Result<Flows, LocatedErrors> {
    let raw: RawFlowsFile = serde_yaml::from_str(text)
        .map_err(|e| LocatedErrors(vec![Located::from_yaml(file, &e)]))?;
    let mut cx = Cx {
        file,
        text,
        errors: LocatedErrors::default(),
    };
    let flows = compile(&mut cx, raw);
    if cx.errors.is_empty() {
        if let Some(f) = flows {
            return Ok(f);
        }
    }
    Err(cx.errors.sorted())
}

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    errors: LocatedErrors,
}

impl Cx<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.errors
            .push(Located::at_path(self.file, self.text, path, msg));
    }
}

fn compile(cx: &mut Cx<'_>, raw: RawFlowsFile) -> Option<Flows> {
    if raw.flows.is_empty() {
        cx.err("flows", "the file defines no flow");
        return None;
    }
    let codes: Vec<String> = raw.flows.keys().cloned().collect();
    let default = match &raw.default {
        Some(d) => match codes.iter().position(|c| c == d) {
            Some(i) => i,
            None => {
                cx.err(
                    "default",
                    format!("unknown flow `{d}` (flows: {})", codes.join(", ")),
                );
                0
            }
        },
        None if codes.len() == 1 => 0,
        None => {
            cx.err(
                "flows",
                "`default` is required when the file has more than one flow",
            );
            0
        }
    };
    let mut flows = Vec::with_capacity(raw.flows.len());
    for (code, rf) in raw.flows {
        flows.push(compile_flow(cx, &code, rf));
    }
    Some(Flows::new(flows, default))
}

fn compile_flow(cx: &mut Cx<'_>, code: &str, rf: RawFlow) -> Flow {
    let base = format!("flows.{code}");
    if code.is_empty() || code.chars().count() > MAX_CODE_CHARS {
        cx.err(
            &base,
            format!("a flow access code has 1 to {MAX_CODE_CHARS} characters"),
        );
    }
    let language = match rf.language {
        Some(l) => check_language(cx, &format!("{base}.language"), l),
        None => "0".to_string(),
    };
    let ids: HashMap<String, NodeId> = rf
        .nodes
        .keys()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let start = match ids.get(&rf.start) {
        Some(&i) => i,
        None => {
            cx.err(
                &format!("{base}.start"),
                format!("unknown node `{}`", rf.start),
            );
            0
        }
    };
    if rf.nodes.is_empty() {
        cx.err(&format!("{base}.nodes"), "the flow has no nodes");
    }
    let mut nodes = Vec::with_capacity(rf.nodes.len());
    for (name, rn) in rf.nodes {
        let path = format!("{base}.nodes.{name}");
        let kind = compile_node(
            cx,
            &NodeCx {
                path: &path,
                ids: &ids,
                language: &language,
            },
            rn,
        );
        nodes.push(Node { name, kind });
    }
    Flow {
        code: code.to_string(),
        start,
        nodes,
    }
}

struct NodeCx<'a> {
    path: &'a str,
    ids: &'a HashMap<String, NodeId>,
    language: &'a str,
}

impl NodeCx<'_> {
    fn target(&self, cx: &mut Cx<'_>, key: &str, name: &str) -> NodeId {
        match self.ids.get(name) {
            Some(&i) => i,
            None => {
                cx.err(
                    &format!("{}.{key}", self.path),
                    format!("unknown node `{name}`"),
                );
                0
            }
        }
    }
}

fn compile_node(cx: &mut Cx<'_>, n: &NodeCx<'_>, rn: RawNode) -> NodeKind {
    let set = [
        rn.play.is_some(),
        rn.collect.is_some(),
        rn.transfer.is_some(),
        rn.query.is_some(),
        rn.record.is_some(),
        rn.hangup.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        cx.err(
            n.path,
            "a node has exactly one of play, collect, transfer, query, record, hangup",
        );
    }
    if let Some(p) = rn.play {
        return compile_play(cx, n, p);
    }
    if let Some(c) = rn.collect {
        return compile_collect(cx, n, c);
    }
    if let Some(t) = rn.transfer {
        let path = format!("{}.transfer", n.path);
        if !TRANS_TYPES.contains(&t.trans_type) {
            cx.err(
                &format!("{path}.trans_type"),
                format!("unknown trans_type {} (1-10, 31-34)", t.trans_type),
            );
        }
        if t.route_value.is_empty() {
            cx.err(&format!("{path}.route_value"), "route_value is empty");
        }
        let success = t
            .success
            .as_deref()
            .map(|s| n.target(cx, "transfer.success", s));
        let failure = n.target(cx, "transfer.failure", &t.failure);
        return NodeKind::Transfer {
            trans_type: t.trans_type,
            route_value: t.route_value,
            success,
            failure,
        };
    }
    if let Some(q) = rn.query {
        let path = format!("{}.query", n.path);
        if !QUERY_PROMPT_TYPES.contains(&q.prompt_type) {
            cx.err(
                &format!("{path}.prompt_type"),
                format!("unknown query prompt_type {} (1, 2, 3, 5)", q.prompt_type),
            );
        }
        if q.prompt_type == 2 && q.skill_id.is_none() {
            cx.err(&path, "skill_id is required when prompt_type is 2");
        }
        if q.prompt_type != 2 && q.skill_id.is_some() {
            cx.err(
                &format!("{path}.skill_id"),
                "skill_id is only sent with prompt_type 2",
            );
        }
        let next = n.target(cx, "query.next", &q.next);
        let no_agents = q
            .no_agents
            .as_deref()
            .map(|s| n.target(cx, "query.no_agents", s));
        return NodeKind::Query {
            prompt_type: q.prompt_type,
            skill_id: q.skill_id,
            next,
            no_agents,
        };
    }
    if let Some(r) = rn.record {
        let path = format!("{}.record", n.path);
        if r.wav.is_empty() {
            cx.err(
                &format!("{path}.wav"),
                "wav (the file to record to) is empty",
            );
        }
        let language = match r.language {
            Some(l) => check_language(cx, &format!("{path}.language"), l),
            None => n.language.to_string(),
        };
        let next = n.target(cx, "record.next", &r.next);
        return NodeKind::Record {
            wav: r.wav,
            text: r.text,
            tone: r.tone.unwrap_or(true),
            timeout: r.timeout.unwrap_or(30),
            language,
            next,
        };
    }
    if let Some(h) = rn.hangup {
        let release_reason = match h.release_reason.as_deref() {
            None | Some("0") => "0",
            Some("1") => "1",
            Some(other) => {
                cx.err(
                    &format!("{}.hangup.release_reason", n.path),
                    format!("unknown release_reason `{other}` (0 normal, 1 exception)"),
                );
                "0"
            }
        };
        return NodeKind::Hangup { release_reason };
    }
    NodeKind::Hangup {
        release_reason: "1",
    }
}

fn check_language(cx: &mut Cx<'_>, path: &str, l: String) -> String {
    if l != "0" && l != "1" {
        cx.err(
            path,
            format!("unknown language `{l}` (0 Chinese, 1 English)"),
        );
    }
    l
}

/// The prompt of a play or collect node: default `prompt_type` 2 (TTS) with a text, 1 (file
/// name) with only a file; the type must come with what it plays.
fn prompt(
    cx: &mut Cx<'_>,
    path: &str,
    text: Option<String>,
    wav: Option<String>,
    prompt_type: Option<u8>,
    language: Option<String>,
    default_language: &str,
) -> Prompt {
    let pt = match (prompt_type, &text, &wav) {
        (Some(pt), _, _) => pt,
        (None, Some(_), _) => 2,
        (None, None, Some(_)) => 1,
        (None, None, None) => {
            cx.err(path, "a prompt needs `text` or `wav`");
            2
        }
    };
    if !PLAY_PROMPT_TYPES.contains(&pt) {
        cx.err(
            &format!("{path}.prompt_type"),
            format!("unknown prompt_type {pt} (0-3, 5-9; 4 is a record node)"),
        );
    } else if matches!(pt, 2 | 3 | 6 | 7) && text.is_none() {
        cx.err(path, format!("prompt_type {pt} needs `text`"));
    } else if matches!(pt, 0 | 1 | 5) && wav.is_none() {
        cx.err(path, format!("prompt_type {pt} needs `wav`"));
    }
    let language = match language {
        Some(l) => check_language(cx, &format!("{path}.language"), l),
        None => default_language.to_string(),
    };
    Prompt {
        prompt_type: pt,
        text,
        wav,
        language,
    }
}

fn compile_play(cx: &mut Cx<'_>, n: &NodeCx<'_>, p: RawPlay) -> NodeKind {
    let path = format!("{}.play", n.path);
    let prompt = prompt(
        cx,
        &path,
        p.text,
        p.wav,
        p.prompt_type,
        p.language,
        n.language,
    );
    let next = n.target(cx, "play.next", &p.next);
    NodeKind::Play { prompt, next }
}

fn compile_collect(cx: &mut Cx<'_>, n: &NodeCx<'_>, c: RawCollect) -> NodeKind {
    let path = format!("{}.collect", n.path);
    let prompt = prompt(
        cx,
        &path,
        c.text,
        c.wav,
        c.prompt_type,
        c.language,
        n.language,
    );
    let dtmf = c.dtmf.map(|d| {
        if d.max_digits == 0 || d.max_digits > 99 {
            cx.err(&format!("{path}.dtmf.max_digits"), "max_digits is 1 to 99");
        }
        Dtmf {
            max_digits: d.max_digits,
            confirm: d.confirm,
        }
    });
    if dtmf.is_none() && c.intents.is_empty() {
        cx.err(&path, "a collect node needs `dtmf`, `intents` or both");
    }
    let mut intents = Vec::with_capacity(c.intents.len());
    for (name, words) in c.intents {
        let ipath = format!("{path}.intents.{name}");
        if SPECIAL_KEYS.contains(&name.as_str()) {
            cx.err(
                &ipath,
                format!("`{name}` is an input token and cannot name an intent"),
            );
        }
        if words.is_empty() || words.iter().any(|w| w.trim().is_empty()) {
            cx.err(&ipath, "an intent needs at least one non-empty keyword");
        }
        intents.push((
            name,
            words.iter().map(|w| w.trim().to_lowercase()).collect(),
        ));
    }
    let mut on = Branches::default();
    for (key, target) in c.on {
        let kpath = format!("on.{key}");
        let id = n.target(cx, &format!("collect.{kpath}"), &target);
        match key.as_str() {
            "timeout" => on.timeout = Some(id),
            "nomatch" => on.nomatch = Some(id),
            "playover" => on.playover = Some(id),
            "sys_err" => on.sys_err = Some(id),
            "default" => on.default = Some(id),
            k if intents.iter().any(|(name, _)| name == k) => {
                on.exact.insert(key, id);
            }
            k if dtmf.is_some() && is_digits(k) => {
                if let Some(d) = dtmf {
                    if k.len() > usize::from(d.max_digits) {
                        cx.err(
                            &format!("{path}.{kpath}"),
                            format!("`{k}` has more digits than max_digits {}", d.max_digits),
                        );
                    }
                }
                on.exact.insert(key, id);
            }
            k => cx.err(
                &format!("{path}.{kpath}"),
                format!(
                    "unknown branch `{k}`: not {}an intent of this node, nor one of {}",
                    if dtmf.is_some() { "DTMF digits, " } else { "" },
                    SPECIAL_KEYS.join(", ")
                ),
            ),
        }
    }
    let retry = c
        .retry
        .map(|r| (r.max, n.target(cx, "collect.retry.then", &r.then)));
    NodeKind::Collect {
        prompt,
        dtmf,
        intents,
        timeout: c.timeout.unwrap_or(5),
        on,
        retry,
        recognition_after: c.recognition_after,
    }
}

/// DTMF keys: digits and `*` (`#` is the confirm key and never part of a branch).
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match compile_text("f.yaml", text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn demo_flow_compiles() {
        let flows = Flows::demo().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(flows.flows.len(), 1);
        assert_eq!(flows.pick(Some("nope")), 0);
    }

    #[test]
    fn unknown_target_is_placed() {
        let text = "flows:\n  \"100\":\n    start: a\n    nodes:\n      a:\n        play:\n          text: hi\n          next: b\n";
        assert_eq!(
            errors(text),
            vec!["f.yaml:8:11: flows.100.nodes.a.play.next: unknown node `b`"]
        );
    }

    #[test]
    fn unknown_key_is_placed_by_serde() {
        let text = "flows:\n  \"100\":\n    start: a\n    nodes:\n      a:\n        hangup: {}\n        colour: red\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("f.yaml:7:9: "), "{e:?}");
        assert!(e[0].contains("unknown field `colour`"), "{e:?}");
    }

    #[test]
    fn collects_every_error() {
        let text = "\
flows:
  \"100\":
    start: nowhere
    language: \"7\"
    nodes:
      a:
        collect:
          text: pick
          dtmf: { max_digits: 1 }
          on:
            \"12\": a
            banana: a
      b: {}
";
        let e = errors(text);
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].starts_with("f.yaml:3:5: flows.100.start: unknown node `nowhere`"));
        assert!(e[1].starts_with("f.yaml:4:5: flows.100.language"));
        assert!(
            e[2].starts_with("f.yaml:11:13: flows.100.nodes.a.collect.on.12: `12` has more digits")
        );
        assert!(
            e[3].starts_with("f.yaml:12:13: flows.100.nodes.a.collect.on.banana: unknown branch")
        );
        assert!(e[4].starts_with("f.yaml:13:7: flows.100.nodes.b: a node has exactly one"));
    }

    #[test]
    fn default_must_name_a_flow() {
        let text =
            "default: \"9\"\nflows:\n  \"1\":\n    start: a\n    nodes: { a: { hangup: {} } }\n";
        assert_eq!(
            errors(text),
            vec!["f.yaml:1:1: default: unknown flow `9` (flows: 1)"]
        );
        let text = "flows:\n  \"1\":\n    start: a\n    nodes: { a: { hangup: {} } }\n  \"2\":\n    start: a\n    nodes: { a: { hangup: {} } }\n";
        assert_eq!(errors(text).len(), 1);
    }
}
