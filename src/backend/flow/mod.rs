//! Dialog flows: the compiled graph the engine walks, and loading it from a file.
//!
//! A flow file (`docs/flows.md`) is read into `raw::RawFlowsFile`, checked and resolved by
//! `compile` into [`Flows`] (nodes addressed by index, every target known to exist), and walked
//! one turn at a time by `engine`. When no file is given the built-in demo flow (`demo.yaml`,
//! compiled into the binary) is used.

use std::collections::HashMap;
use std::path::Path;

use crate::located::{Located, LocatedErrors};

pub mod compile;
pub mod engine;
pub mod raw;

/// The built-in demo flow, the worked example of `docs/flows.md`.
pub const DEMO_YAML: &str = include_str!("demo.yaml");
/// The name the demo flow's errors would carry (it is checked by a unit test).
pub const DEMO_NAME: &str = "<built-in demo flow>";

/// Index of a node inside its flow.
pub type NodeId = usize;

/// Every flow of one file, by access code, and the fallback flow.
#[derive(Debug)]
pub struct Flows {
    pub flows: Vec<Flow>,
    by_code: HashMap<String, usize>,
    default: usize,
}

impl Flows {
    pub(crate) fn new(flows: Vec<Flow>, default: usize) -> Self {
        let by_code = flows
            .iter()
            .enumerate()
            .map(|(i, f)| (f.code.clone(), i))
            .collect();
        Flows {
            flows,
            by_code,
            default,
        }
    }

    /// The flow for a `call_dst_id`, or the default flow when none has that access code.
    pub fn pick(&self, call_dst_id: Option<&str>) -> usize {
        call_dst_id
            .and_then(|c| self.by_code.get(c).copied())
            .unwrap_or(self.default)
    }

    /// A flow by index; indexes come from [`Flows::pick`], so this always finds one.
    pub fn get(&self, i: usize) -> Option<&Flow> {
        self.flows.get(i)
    }

    /// The built-in demo flow.
    pub fn demo() -> Result<Flows, LocatedErrors> {
        compile::compile_text(DEMO_NAME, DEMO_YAML)
    }

    /// Read and compile a flow file; every error carries `file:line:column`.
    pub fn load(path: &Path) -> Result<Flows, LocatedErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            LocatedErrors(vec![Located::new(
                &name,
                0,
                0,
                "",
                format!("cannot read the flow file: {e}"),
            )])
        })?;
        compile::compile_text(&name, &text)
    }
}

/// One flow: its access code, its nodes and where a call starts.
#[derive(Debug)]
pub struct Flow {
    pub code: String,
    pub start: NodeId,
    pub nodes: Vec<Node>,
}

impl Flow {
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }
}

/// A named node of a flow.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
}

/// What a prompt plays: `prompt_type`, a TTS text and/or a prompt file, and the language.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub prompt_type: u8,
    pub text: Option<String>,
    pub wav: Option<String>,
    pub language: String,
}

/// How a collect node takes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtmf {
    pub max_digits: u8,
    pub confirm: bool,
}

/// The branches of a collect node.
#[derive(Debug, Default)]
pub struct Branches {
    /// Exact input (digits or text) or intent name → target.
    pub exact: HashMap<String, NodeId>,
    pub timeout: Option<NodeId>,
    pub nomatch: Option<NodeId>,
    pub playover: Option<NodeId>,
    pub sys_err: Option<NodeId>,
    pub default: Option<NodeId>,
}

/// The kinds of node; each one answers exactly one outaction when the call reaches it.
#[derive(Debug)]
pub enum NodeKind {
    /// outaction 9, play only; any result goes to `next`.
    Play { prompt: Prompt, next: NodeId },
    /// outaction 9 with input; branches on the result.
    Collect {
        prompt: Prompt,
        dtmf: Option<Dtmf>,
        /// (intent, lower-case keywords), in file order of intent names.
        intents: Vec<(String, Vec<String>)>,
        timeout: u32,
        on: Branches,
        /// (max consecutive misses, target once exceeded).
        retry: Option<(u32, NodeId)>,
        recognition_after: Option<u32>,
    },
    /// outaction 11.
    Transfer {
        trans_type: u32,
        route_value: String,
        success: Option<NodeId>,
        failure: NodeId,
    },
    /// outaction 12.
    Query {
        prompt_type: u8,
        skill_id: Option<String>,
        next: NodeId,
        no_agents: Option<NodeId>,
    },
    /// outaction 9 with `prompt_type` 4.
    Record {
        wav: String,
        text: Option<String>,
        tone: bool,
        timeout: u32,
        language: String,
        next: NodeId,
    },
    /// outaction 10.
    Hangup { release_reason: &'static str },
}
