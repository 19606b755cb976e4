//! The body probe: turn one dialog request body into a [`Turn`] without building a JSON tree.
//!
//! The body is read once, bounded by `max_body`, into one buffer (`read_body`); `scan` then
//! walks it with serde_json's streaming deserializer, keeping only `userid`, `inaction`,
//! `inparams.input` and the dotted `fields` paths that some rule needs ([`ProbeSpec`]), and
//! skipping everything else with `IgnoredAny`. The same bytes are forwarded unchanged.
//!
//! The probe never allocates for a userid of up to 24 bytes (`CompactString` keeps it inline).

pub mod scan;

use bytes::Bytes;
use compact_str::CompactString;
use http_body_util::BodyExt;

use crate::protocol::{Inaction, Vdn};

pub use scan::scan;

/// Which dialog interface a turn came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialog {
    V1,
    V2(Vdn),
}

impl Dialog {
    pub fn vdn(self) -> Option<Vdn> {
        match self {
            Dialog::V1 => None,
            Dialog::V2(v) => Some(v),
        }
    }
}

/// What the gateway learned from one dialog request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub dialog: Dialog,
    pub userid: CompactString,
    pub inaction: Inaction,
    /// `inparams.input == "hangup"`: this turn reports the end of the call.
    pub hangup: bool,
    /// Values of the `fields` paths rules need, by the path's index in the [`ProbeSpec`].
    pub fields: Vec<(u16, CompactString)>,
}

impl Turn {
    pub fn field(&self, index: u16) -> Option<&str> {
        self.fields
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, v)| v.as_str())
    }
}

/// Which dotted body paths the compiled rules look at, as a small trie. Built once per snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSpec {
    pub(crate) root: PathNode,
    paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathNode {
    pub(crate) children: Vec<(String, PathNode)>,
    pub(crate) leaf: Option<u16>,
}

/// Leaf marker for `inparams.input`, which the gateway always reads (end of call).
pub(crate) const INPUT_LEAF: u16 = u16::MAX;

impl ProbeSpec {
    /// Register a dotted path (`inparams.channelType`) and return its index.
    pub fn add_path(&mut self, path: &str) -> u16 {
        if let Some(i) = self.paths.iter().position(|p| p == path) {
            return i as u16;
        }
        let index = self.paths.len() as u16;
        self.paths.push(path.to_string());
        self.root.insert(path, index);
        index
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn new() -> Self {
        let mut s = ProbeSpec::default();
        s.root.insert("inparams.input", INPUT_LEAF);
        s
    }
}

impl PathNode {
    fn insert(&mut self, path: &str, index: u16) {
        let mut node = self;
        for seg in path.split('.') {
            let pos = match node.children.iter().position(|(k, _)| k == seg) {
                Some(p) => p,
                None => {
                    node.children.push((seg.to_string(), PathNode::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos].1;
        }
        node.leaf = Some(index);
    }

    pub(crate) fn child(&self, key: &str) -> Option<&PathNode> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
}

/// Why a dialog request could not become a [`Turn`] (spec §3). Allocation-free except for the
/// JSON parser's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("vdnId `{0}` is not a decimal integer (u32)")]
    BadUrl(String),
    #[error("body is not a JSON object: {0}")]
    BadJson(String),
    #[error("no userid in the body")]
    MissingUserid,
    #[error("userid must be a string of 1 to 64 characters")]
    BadUserid,
    #[error("no inaction in the body")]
    MissingInaction,
    #[error("inaction must be an integer")]
    BadInaction,
    #[error("body is larger than max_body ({0} bytes)")]
    BodyTooLarge(u64),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
}

/// Read a request body into one buffer, refusing more than `max` bytes. A declared
/// `Content-Length` over the limit is refused before anything is read.
pub async fn read_body<B>(body: B, declared: Option<u64>, max: u64) -> Result<Bytes, ProbeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if declared.is_some_and(|n| n > max) {
        return Err(ProbeError::BodyTooLarge(max));
    }
    let limited = http_body_util::Limited::new(body, max as usize);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ProbeError::BodyTooLarge(max))
            } else {
                Err(ProbeError::BodyRead(e.to_string()))
            }
        }
    }
}
