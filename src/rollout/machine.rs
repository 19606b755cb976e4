//! The state machine of one rollout: a pure function of its spec, the clock and the step's
//! figures. [`super::Handle`] runs it under its lock and publishes the share it implies.
//!
//! ```text
//!            step (figures pass, step_min over, min_calls on both sides[, resumed if manual])
//!          ┌──────┐
//!          ▼      │        pause             resume
//!  start ─► running ───────────────► paused ───────► running
//!          │  │  └─ last step passed / step 100 reached ─► completed ◄── promote (any but completed)
//!          │  └──── a criterion holds (also while paused) ─► aborted ──resume──► running, step 1
//!          └─────── abort (operator) ─────────────────────► aborted
//! ```
//!
//! Every transition but pause and resume-from-paused starts a new **epoch** (a number that only
//! grows: the wall-clock ms it began, or one more than the last): calls carry the epoch in which
//! they started, and only calls of the current epoch count for the current step.

use serde::{Deserialize, Serialize};

use super::judge::{judge, SideView, Verdict};
use super::spec::{percent, Advance, RolloutSpec};

/// The status of a rollout (a vocabulary enum: the metric label and the JSON value).
pub use crate::vocab::RolloutStatus as Status;

/// What happened; `as_str` is the `to` label of `graygate_rollout_transitions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Step,
    Pause,
    Resume,
    Abort,
    Promote,
    Complete,
    Restart,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Step,
        Kind::Pause,
        Kind::Resume,
        Kind::Abort,
        Kind::Promote,
        Kind::Complete,
        Kind::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Step => "step",
            Kind::Pause => "pause",
            Kind::Resume => "resume",
            Kind::Abort => "abort",
            Kind::Promote => "promote",
            Kind::Complete => "complete",
            Kind::Restart => "restart",
        }
    }
}

/// One transition, as shown by `status`, logged and kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub kind: Kind,
    pub from: Status,
    pub to: Status,
    /// Share (basis points) before and after.
    pub share_from: u32,
    pub share_to: u32,
    pub reason: String,
    /// The figures the decision was made on (both sides' counts, verdicts).
    pub figures: serde_json::Value,
}

/// An operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "abort" => Action::Abort,
            "promote" => Action::Promote,
            _ => return None,
        })
    }
}

/// The state of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub step_index: usize,
    pub step_started_ms: u64,
    pub epoch: u64,
    /// `advance: manual`: the operator resumed this step, it advances once it passes.
    pub approved: bool,
    pub last: Option<Transition>,
}

fn next_epoch(prev: u64, now_ms: u64) -> u64 {
    now_ms.max(prev + 1)
}

impl State {
    /// A rollout that starts now at its first step.
    pub fn fresh(now_ms: u64, prev_epoch: u64) -> State {
        State {
            status: Status::Running,
            step_index: 0,
            step_started_ms: now_ms,
            epoch: next_epoch(prev_epoch, now_ms),
            approved: false,
            last: None,
        }
    }

    /// The share of new calls `to` gets now, in basis points.
    pub fn share_bp(&self, spec: &RolloutSpec) -> u32 {
        match self.status {
            Status::Aborted => 0,
            Status::Completed => 10_000,
            Status::Running | Status::Paused => {
                spec.steps.get(self.step_index).copied().unwrap_or(10_000)
            }
        }
    }

    /// How long until the step may advance (`None` unless running).
    pub fn may_advance_in_ms(&self, spec: &RolloutSpec, now_ms: u64) -> Option<u64> {
        (self.status == Status::Running).then(|| {
            let at = now_ms.saturating_sub(self.step_started_ms);
            (spec.step_min.as_millis() as u64).saturating_sub(at)
        })
    }

    fn go(
        &mut self,
        spec: &RolloutSpec,
        now_ms: u64,
        (kind, to, new_step): (Kind, Status, Option<usize>),
        reason: String,
        figures: serde_json::Value,
    ) -> Transition {
        let (from, share_from) = (self.status, self.share_bp(spec));
        // Pausing, resuming a paused step and approving a manual step keep counting the step.
        let keeps_epoch =
            matches!(kind, Kind::Pause) || (kind == Kind::Resume && new_step.is_none());
        self.status = to;
        if let Some(i) = new_step {
            self.step_index = i;
            self.step_started_ms = now_ms;
            self.approved = false;
        }
        if !keeps_epoch {
            self.epoch = next_epoch(self.epoch, now_ms);
        }
        let t = Transition {
            at_ms: now_ms,
            kind,
            from,
            to,
            share_from,
            share_to: self.share_bp(spec),
            reason,
            figures,
        };
        self.last = Some(t.clone());
        t
    }

    /// Judge the step; returns the verdicts and the transition they caused, if any.
    pub fn tick(
        &mut self,
        spec: &RolloutSpec,
        now_ms: u64,
        from: &SideView,
        to: &SideView,
    ) -> (Vec<Verdict>, Option<Transition>) {
        let verdicts = judge(spec, from, to);
        if !matches!(self.status, Status::Running | Status::Paused) {
            return (verdicts, None);
        }
        let figures = figures(from, to, &verdicts);
        if let Some(v) = verdicts.iter().find(|v| v.holds) {
            let reason = match v.p_value {
                Some(p) => format!(
                    "{} holds: {} {:.2}% against {} {:.2}% (threshold {}, p = {:.3e} < {:.3})",
                    v.criterion,
                    spec.to,
                    v.to_value * 100.0,
                    spec.from,
                    v.from_value * 100.0,
                    v.threshold,
                    p,
                    1.0 - spec.confidence
                ),
                None => format!(
                    "{} holds: {} {:.1} ms against {} {:.1} ms (threshold {})",
                    v.criterion, spec.to, v.to_value, spec.from, v.from_value, v.threshold
                ),
            };
            let t = self.go(
                spec,
                now_ms,
                (Kind::Abort, Status::Aborted, None),
                reason,
                figures,
            );
            return (verdicts, Some(t));
        }
        let ready = self.status == Status::Running
            && self.may_advance_in_ms(spec, now_ms) == Some(0)
            && from.counts.ended() >= spec.min_calls
            && to.counts.ended() >= spec.min_calls
            && (spec.advance == Advance::Auto || self.approved);
        if !ready {
            return (verdicts, None);
        }
        let next = self.step_index + 1;
        let reason = format!(
            "step {} ({}%) passed: {} and {} ended calls, no criterion holds",
            self.step_index + 1,
            percent(self.share_bp(spec)),
            to.counts.ended(),
            from.counts.ended()
        );
        let t = match spec.steps.get(next) {
            Some(&bp) if bp < 10_000 => self.go(
                spec,
                now_ms,
                (Kind::Step, Status::Running, Some(next)),
                reason,
                figures,
            ),
            _ => self.go(
                spec,
                now_ms,
                (
                    Kind::Complete,
                    Status::Completed,
                    Some(next.min(spec.steps.len() - 1)),
                ),
                reason,
                figures,
            ),
        };
        (verdicts, Some(t))
    }

    /// An operator's action; `Err` with the reason when the current state does not allow it.
    pub fn act(
        &mut self,
        spec: &RolloutSpec,
        now_ms: u64,
        action: Action,
        reason: Option<&str>,
    ) -> Result<Transition, String> {
        let by = |what: &str| match reason {
            Some(r) if !r.trim().is_empty() => format!("{what} by the operator: {}", r.trim()),
            _ => format!("{what} by the operator"),
        };
        let null = serde_json::Value::Null;
        match (action, self.status) {
            (Action::Pause, Status::Running) => Ok(self.go(
                spec,
                now_ms,
                (Kind::Pause, Status::Paused, None),
                by("paused"),
                null,
            )),
            (Action::Resume, Status::Paused) => Ok(self.go(
                spec,
                now_ms,
                (Kind::Resume, Status::Running, None),
                by("resumed"),
                null,
            )),
            (Action::Resume, Status::Running) if spec.advance == Advance::Manual => {
                if self.approved {
                    return Err("this step is already approved; it advances once it passes".into());
                }
                self.approved = true;
                let mut t = self.go(
                    spec,
                    now_ms,
                    (Kind::Resume, Status::Running, None),
                    by("step approved to advance"),
                    null,
                );
                // Approving does not change which calls count for the step.
                t.share_to = t.share_from;
                Ok(t)
            }
            (Action::Resume, Status::Aborted) => Ok(self.go(
                spec,
                now_ms,
                (Kind::Resume, Status::Running, Some(0)),
                by("restarted at step 1"),
                null,
            )),
            (Action::Abort, Status::Running | Status::Paused) => Ok(self.go(
                spec,
                now_ms,
                (Kind::Abort, Status::Aborted, None),
                by("aborted"),
                null,
            )),
            (Action::Promote, Status::Running | Status::Paused | Status::Aborted) => {
                let last = spec.steps.len() - 1;
                Ok(self.go(
                    spec,
                    now_ms,
                    (Kind::Promote, Status::Completed, Some(last)),
                    by("promoted to 100%"),
                    null,
                ))
            }
            (a, s) => Err(format!(
                "cannot {} a rollout that is {}",
                match a {
                    Action::Pause => "pause",
                    Action::Resume => "resume",
                    Action::Abort => "abort",
                    Action::Promote => "promote",
                },
                s.as_str()
            )),
        }
    }
}

/// The figures behind a decision: both sides' counts and p99s, and every verdict.
pub fn figures(from: &SideView, to: &SideView, verdicts: &[Verdict]) -> serde_json::Value {
    let side = |s: &SideView| {
        serde_json::json!({
            "ended": s.counts.ended(),
            "completed": s.counts.completed,
            "transferred": s.counts.transferred,
            "failed": s.counts.failed,
            "abandoned": s.counts.abandoned,
            "turn_p99_ms": s.turn_p99_ms,
        })
    };
    serde_json::json!({"from": side(from), "to": side(to), "verdicts": verdicts})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::judge::Counts;
    use crate::rollout::spec::Criteria;
    use std::sync::Arc;
    use std::time::Duration;

    fn spec(advance: Advance) -> RolloutSpec {
        RolloutSpec {
            name: Arc::from("r"),
            from: Arc::from("stable"),
            to: Arc::from("canary"),
            steps: vec![100, 2500, 10000],
            step_min: Duration::from_secs(60),
            min_calls: 100,
            advance,
            confidence: 0.95,
            criteria: Criteria::default(),
            key: 1,
        }
    }

    fn side(completed: u64, failed: u64) -> SideView {
        SideView {
            counts: Counts {
                completed,
                failed,
                ..Counts::default()
            },
            turn_p99_ms: Some(10.0),
        }
    }

    const T0: u64 = 1_000_000;

    #[test]
    fn walks_every_step_to_completed() {
        let s = spec(Advance::Auto);
        let mut st = State::fresh(T0, 0);
        assert_eq!(
            (st.status, st.share_bp(&s), st.epoch),
            (Status::Running, 100, T0)
        );
        let good = side(200, 0);
        // Not before step_min, not before min_calls.
        assert!(st.tick(&s, T0 + 59_999, &good, &good).1.is_none());
        assert!(st.tick(&s, T0 + 60_000, &good, &side(99, 0)).1.is_none());
        let t = st.tick(&s, T0 + 60_000, &good, &good).1.unwrap();
        assert_eq!((t.kind, t.share_from, t.share_to), (Kind::Step, 100, 2500));
        assert_eq!(
            (st.step_index, st.epoch, st.step_started_ms),
            (1, T0 + 60_000, T0 + 60_000)
        );
        assert_eq!(st.may_advance_in_ms(&s, T0 + 90_000), Some(30_000));
        // The last step is 100%: reaching it completes the rollout.
        let t = st.tick(&s, T0 + 120_000, &good, &good).1.unwrap();
        assert_eq!(
            (t.kind, t.to, t.share_to),
            (Kind::Complete, Status::Completed, 10_000)
        );
        assert_eq!(st.step_index, 2);
        assert!(st.tick(&s, T0 + 999_000, &good, &good).1.is_none());
        assert_eq!(st.may_advance_in_ms(&s, T0), None);
    }

    #[test]
    fn a_last_step_below_100_completes_after_passing() {
        let mut s = spec(Advance::Auto);
        s.steps = vec![100, 5000];
        let mut st = State::fresh(T0, 0);
        let good = side(200, 0);
        assert_eq!(
            st.tick(&s, T0 + 60_000, &good, &good).1.unwrap().kind,
            Kind::Step
        );
        let t = st.tick(&s, T0 + 120_000, &good, &good).1.unwrap();
        assert_eq!(
            (t.kind, t.share_from, t.share_to),
            (Kind::Complete, 5000, 10_000)
        );
    }

    #[test]
    fn a_holding_criterion_aborts_at_once_even_while_paused() {
        let s = spec(Advance::Auto);
        for paused in [false, true] {
            let mut st = State::fresh(T0, 0);
            if paused {
                st.act(&s, T0 + 1, Action::Pause, None).unwrap();
            }
            // Before step_min: an abort does not wait for it.
            let (v, t) = st.tick(&s, T0 + 10, &side(1000, 10), &side(150, 50));
            let t = t.unwrap();
            assert_eq!(
                (t.kind, t.to, t.share_to),
                (Kind::Abort, Status::Aborted, 0)
            );
            assert!(
                t.reason
                    .starts_with("failed holds: canary 25.00% against stable 0.99%"),
                "{}",
                t.reason
            );
            assert!(v.iter().any(|v| v.criterion == "failed" && v.holds));
            assert_eq!(t.figures["to"]["failed"], 50);
            assert_eq!(st.share_bp(&s), 0);
            // Aborted stays aborted, whatever the figures.
            assert!(st
                .tick(&s, T0 + 999_000, &side(200, 0), &side(200, 0))
                .1
                .is_none());
        }
    }

    #[test]
    fn pause_and_resume_keep_the_step_and_its_epoch() {
        let s = spec(Advance::Auto);
        let mut st = State::fresh(T0, 0);
        let t = st.act(&s, T0 + 5, Action::Pause, None).unwrap();
        assert_eq!(
            (t.kind, t.to, st.epoch, st.share_bp(&s)),
            (Kind::Pause, Status::Paused, T0, 100)
        );
        let good = side(200, 0);
        assert!(
            st.tick(&s, T0 + 100_000, &good, &good).1.is_none(),
            "paused: no advance"
        );
        assert!(st.act(&s, T0 + 6, Action::Pause, None).is_err());
        let t = st
            .act(&s, T0 + 7, Action::Resume, Some("looks fine"))
            .unwrap();
        assert_eq!(
            (t.kind, t.to, st.epoch),
            (Kind::Resume, Status::Running, T0)
        );
        assert_eq!(t.reason, "resumed by the operator: looks fine");
        assert!(
            st.act(&s, T0 + 8, Action::Resume, None).is_err(),
            "auto + running: nothing to resume"
        );
    }

    #[test]
    fn abort_resume_restarts_at_step_one_in_a_new_epoch() {
        let s = spec(Advance::Auto);
        let mut st = State::fresh(T0, 0);
        let good = side(200, 0);
        st.tick(&s, T0 + 60_000, &good, &good);
        assert_eq!(st.step_index, 1);
        let t = st
            .act(&s, T0 + 60_000, Action::Abort, Some("bad reviews"))
            .unwrap();
        assert_eq!((t.share_from, t.share_to), (2500, 0));
        assert_eq!(t.reason, "aborted by the operator: bad reviews");
        let e = st.epoch;
        assert!(e > T0 + 60_000 - 1);
        assert!(st.act(&s, T0, Action::Abort, None).is_err());
        assert!(st.act(&s, T0, Action::Pause, None).is_err());
        let t = st.act(&s, T0 + 70_000, Action::Resume, None).unwrap();
        assert_eq!((t.to, t.share_to, st.step_index), (Status::Running, 100, 0));
        assert_eq!((st.step_started_ms, st.epoch), (T0 + 70_000, T0 + 70_000));
    }

    #[test]
    fn promote_goes_to_100_from_anywhere_but_completed() {
        let s = spec(Advance::Auto);
        for prep in [None, Some(Action::Pause), Some(Action::Abort)] {
            let mut st = State::fresh(T0, 0);
            if let Some(a) = prep {
                st.act(&s, T0, a, None).unwrap();
            }
            let t = st.act(&s, T0 + 1, Action::Promote, None).unwrap();
            assert_eq!(
                (t.kind, t.to, t.share_to),
                (Kind::Promote, Status::Completed, 10_000)
            );
            for a in [
                Action::Pause,
                Action::Resume,
                Action::Abort,
                Action::Promote,
            ] {
                assert!(
                    st.act(&s, T0 + 2, a, None).is_err(),
                    "{a:?} after completed"
                );
            }
        }
    }

    #[test]
    fn manual_advance_waits_for_the_operator() {
        let s = spec(Advance::Manual);
        let mut st = State::fresh(T0, 0);
        let good = side(200, 0);
        assert!(
            st.tick(&s, T0 + 120_000, &good, &good).1.is_none(),
            "waits for resume"
        );
        let t = st.act(&s, T0 + 120_000, Action::Resume, None).unwrap();
        assert_eq!(
            (t.kind, st.approved, st.epoch),
            (Kind::Resume, true, T0),
            "approval keeps the epoch"
        );
        assert!(st.act(&s, T0 + 120_001, Action::Resume, None).is_err());
        let t = st.tick(&s, T0 + 120_002, &good, &good).1.unwrap();
        assert_eq!((t.kind, st.step_index, st.approved), (Kind::Step, 1, false));
        // The next step waits again.
        assert!(st.tick(&s, T0 + 999_000, &good, &good).1.is_none());
    }

    #[test]
    fn epochs_only_grow() {
        let s = spec(Advance::Auto);
        let mut st = State::fresh(T0, 0);
        let mut last = st.epoch;
        // Actions in the same millisecond still get a new epoch each.
        for a in [Action::Abort, Action::Resume, Action::Promote] {
            st.act(&s, T0, a, None).unwrap();
            assert!(st.epoch > last);
            last = st.epoch;
        }
        assert!(State::fresh(T0, last).epoch > last);
    }
}
