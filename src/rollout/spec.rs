//! A compiled, validated `rollout:` block (spec §11). `config::rollout` reads and checks the
//! block as written and builds a [`RolloutSpec`]; everything in this stage works from it.

use std::sync::Arc;
use std::time::Duration;

/// A share in basis points as the percentage people write (`1`, `2.5`, `100`).
pub use crate::router::rollout::percent;

/// How a rollout moves from one step to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    Auto,
    Manual,
}

impl Advance {
    pub fn as_str(self) -> &'static str {
        match self {
            Advance::Auto => "auto",
            Advance::Manual => "manual",
        }
    }
}

/// The abort criteria; `None` = switched off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Criteria {
    pub failed: Option<f64>,
    pub abandoned: Option<f64>,
    pub transferred: Option<f64>,
    pub turn_p99: Option<f64>,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            failed: Some(0.01),
            abandoned: Some(0.02),
            transferred: None,
            turn_p99: Some(1.5),
        }
    }
}

/// A compiled, validated rollout block.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// The rule's name.
    pub name: Arc<str>,
    pub from: Arc<str>,
    pub to: Arc<str>,
    /// Shares of `to` in basis points (1% = 100), strictly increasing, each in 1..=10000.
    pub steps: Vec<u32>,
    pub step_min: Duration,
    pub min_calls: u64,
    pub advance: Advance,
    /// e.g. 0.95.
    pub confidence: f64,
    pub criteria: Criteria,
    /// A hash of the block: state is kept across reloads while it stays the same.
    pub key: u64,
}

pub const DEFAULT_STEP_MIN: Duration = Duration::from_secs(600);
pub const DEFAULT_MIN_CALLS: u64 = 200;
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
