//! `RawFlowsFile` and the other `Raw*` serde mirrors of a flow file, exactly as written.
//!
//! Every struct refuses unknown keys, so a typo is an error with a line and column (serde_yaml
//! places it) rather than a silently ignored setting. Nothing here checks cross references or
//! value ranges: that is `compile.rs`, which turns these into a `Flows`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file: `default` (optional) and `flows` keyed by the flow access code
/// (`call_dst_id`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlowsFile {
    /// The access code of the flow that answers calls whose `call_dst_id` names no flow.
    /// May be left out when the file holds exactly one flow.
    #[serde(default)]
    pub default: Option<String>,
    pub flows: BTreeMap<String, RawFlow>,
}

/// One flow: a start node and a graph of named nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    #[serde(default)]
    pub description: Option<String>,
    /// Default `language` of the flow's prompts: `0` Chinese, `1` English.
    #[serde(default)]
    pub language: Option<String>,
    pub start: String,
    pub nodes: BTreeMap<String, RawNode>,
}

/// A node: exactly one of the kind keys is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    #[serde(default)]
    pub play: Option<RawPlay>,
    #[serde(default)]
    pub collect: Option<RawCollect>,
    #[serde(default)]
    pub transfer: Option<RawTransfer>,
    #[serde(default)]
    pub query: Option<RawQuery>,
    #[serde(default)]
    pub record: Option<RawRecord>,
    #[serde(default)]
    pub hangup: Option<RawHangup>,
}

/// Play a prompt (outaction 9, play only), then go to `next` whatever the caller did.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlay {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub wav: Option<String>,
    #[serde(default)]
    pub prompt_type: Option<u8>,
    #[serde(default)]
    pub language: Option<String>,
    pub next: String,
}

/// Play a prompt and collect DTMF digits and/or text (outaction 9), then branch on the input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollect {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub wav: Option<String>,
    #[serde(default)]
    pub prompt_type: Option<u8>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub dtmf: Option<RawDtmf>,
    /// Keyword intents for text or ASR input: intent name → keywords.
    #[serde(default)]
    pub intents: BTreeMap<String, Vec<String>>,
    /// Seconds to wait for input after the prompt.
    #[serde(default)]
    pub timeout: Option<u32>,
    /// Branches: digits, intent names, `timeout`, `nomatch`, `playover`, `sys_err`, `default`.
    #[serde(default)]
    pub on: BTreeMap<String, String>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Answer `recognize_type: "1"` to the n-th and later inaction 13 polls on this node.
    #[serde(default)]
    pub recognition_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDtmf {
    pub max_digits: u8,
    /// `#` confirms the digits (and is stripped from the input).
    #[serde(default)]
    pub confirm: bool,
}

/// After `max` consecutive misses (timeout or nomatch) the call goes to `then`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max: u32,
    pub then: String,
}

/// Transfer the call (outaction 11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransfer {
    pub trans_type: u32,
    pub route_value: String,
    /// Where to go when the client reports `trans_result=0`; left out: hang up (outaction 10).
    #[serde(default)]
    pub success: Option<String>,
    pub failure: String,
}

/// Ask the client to query a skill queue (outaction 12); results come back in `extparams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    pub prompt_type: u8,
    #[serde(default)]
    pub skill_id: Option<String>,
    pub next: String,
    /// Taken instead of `next` when the query reports `agentCount` 0.
    #[serde(default)]
    pub no_agents: Option<String>,
}

/// Record the caller (outaction 9 with `prompt_type` 4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    pub wav: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub tone: Option<bool>,
    #[serde(default)]
    pub timeout: Option<u32>,
    #[serde(default)]
    pub language: Option<String>,
    pub next: String,
}

/// Release the call (outaction 10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHangup {
    /// `0` normal (default), `1` exception or timeout.
    #[serde(default)]
    pub release_reason: Option<String>,
}
