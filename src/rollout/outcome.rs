//! Counting the outcome of every call (spec §11): `graygate_call_outcomes_total` for every
//! call, and the step counts of the call's rollout when one routed it.
//!
//! What the outcome *is* — failed, transferred, completed, abandoned, from what the call's
//! turns left on its pin and how the pin went — is decided by `pins::lifecycle::call_outcome`;
//! the pin stores call [`Outcomes::released`] exactly once for every pin that goes (release,
//! expiry, eviction), and the proxy calls [`Outcomes::settle`] for a new call that ends without
//! ever being pinned.

use std::sync::Arc;

use crate::ids::NameId;
use crate::metrics::Metrics;
use crate::pins::Pin;
use crate::vocab::CallOutcome;

use super::Rollouts;

/// Settles outcomes: the metric for every call, and the step counts of the call's rollout.
#[derive(Clone)]
pub struct Outcomes {
    metrics: Metrics,
    rollouts: Arc<Rollouts>,
}

impl Outcomes {
    pub fn new(metrics: Metrics, rollouts: Arc<Rollouts>) -> Outcomes {
        Outcomes { metrics, rollouts }
    }

    /// A pin went away with its call's outcome.
    pub fn released(&self, pin: &Pin, outcome: CallOutcome) {
        self.settle(pin.cluster, pin.rule, pin.epoch, outcome);
    }

    /// Count one call's outcome.
    pub fn settle(&self, cluster: NameId, rule: NameId, epoch: u64, outcome: CallOutcome) {
        self.metrics.call_outcome(cluster, rule, outcome);
        if epoch != 0 {
            self.rollouts.settle(rule, cluster, epoch, outcome);
        }
    }

    pub fn rollouts(&self) -> &Arc<Rollouts> {
        &self.rollouts
    }
}
