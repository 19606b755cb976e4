//! The routing half of a progressive rollout (spec §11): at share `s` the rule behaves as
//! `split: {to: s, from: 100 − s}` with its salt.
//!
//! The share lives in a [`Dial`]: one atomic the hot path loads per new call of the rule. The
//! rollout stage (`crate::rollout`) owns the state machine and turns the dial; the router
//! only reads it, so routing stays a pure function of the turn, the rules and what the dials
//! say at that moment.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::split::{score, seed};
use crate::vocab::RolloutStatus;

/// What the router tells about a call a rollout routed: the epoch it starts in and the share
/// (basis points of `to`) that applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub epoch: u64,
    pub share_bp: u32,
}

/// A share in basis points as a percentage.
pub fn percent(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

impl Pick {
    /// `1`, `2.5`, `100`: the share as the decision header shows it.
    pub fn share_text(&self) -> String {
        let p = percent(self.share_bp);
        if p.fract() == 0.0 {
            format!("{}", p as u64)
        } else {
            format!("{p}")
        }
    }
}

/// The live share of one rollout: written by the rollout stage, read by every new call.
#[derive(Debug)]
pub struct Dial {
    /// `epoch << 16 | share_bp`.
    cur: AtomicU64,
    /// `status index << 16 | step index`, for `explain` (read apart from `cur`: a view).
    info: AtomicU32,
    /// How many steps the rollout has.
    pub steps: usize,
}

fn pack(epoch: u64, share_bp: u32) -> u64 {
    (epoch << 16) | u64::from(share_bp.min(10_000))
}

impl Dial {
    /// A rollout at its first step, epoch 0, running.
    pub fn new(steps: usize, first_share_bp: u32) -> Dial {
        Dial {
            cur: AtomicU64::new(pack(0, first_share_bp)),
            info: AtomicU32::new(0),
            steps,
        }
    }

    /// The epoch and share now (one atomic load).
    #[inline]
    pub fn pick(&self) -> Pick {
        let v = self.cur.load(Ordering::Acquire);
        Pick {
            epoch: v >> 16,
            share_bp: (v & 0xffff) as u32,
        }
    }

    /// Turn the dial: the rollout stage's only way to change what new calls get.
    pub fn set(&self, epoch: u64, share_bp: u32, status: RolloutStatus, step_index: usize) {
        self.info.store(
            ((status.index() as u32) << 16) | (step_index.min(0xffff) as u32),
            Ordering::Relaxed,
        );
        self.cur.store(pack(epoch, share_bp), Ordering::Release);
    }

    /// The status and the step index (0-based) last set.
    pub fn status(&self) -> (RolloutStatus, usize) {
        let v = self.info.load(Ordering::Relaxed);
        (
            RolloutStatus::from_index((v >> 16) as usize),
            (v & 0xffff) as usize,
        )
    }
}

/// The compiled target of a rule with a `rollout:` block.
#[derive(Debug)]
pub struct RolloutTarget {
    pub dial: Arc<Dial>,
    /// Cluster indices of this generation.
    pub from: usize,
    pub to: usize,
    seed_from: u64,
    seed_to: u64,
}

impl RolloutTarget {
    /// The hash seeds of `from` and `to` (the salt's and the cluster names'), to compare two
    /// generations' targets.
    pub fn seeds(&self) -> (u64, u64) {
        (self.seed_from, self.seed_to)
    }

    /// `from` and `to` are cluster indices with their names (the names seed the hash, as a
    /// split's do).
    pub fn new(
        dial: Arc<Dial>,
        salt: &str,
        (from, from_name): (usize, &str),
        (to, to_name): (usize, &str),
    ) -> RolloutTarget {
        RolloutTarget {
            dial,
            from,
            to,
            seed_from: seed(salt, from_name),
            seed_to: seed(salt, to_name),
        }
    }

    /// The cluster for a new call: weighted rendezvous hashing exactly as
    /// `split: {to: s, from: 100 − s}` with the rule's salt, among clusters `eligible` accepts.
    pub fn choose(&self, userid: &str, eligible: impl Fn(usize) -> bool) -> Option<(usize, Pick)> {
        let pick = self.dial.pick();
        let s = pick.share_bp;
        let cluster = match (eligible(self.from), eligible(self.to)) {
            (false, false) => return None,
            (true, false) => self.from,
            (false, true) => self.to,
            (true, true) if s == 0 => self.from,
            (true, true) if s >= 10_000 => self.to,
            (true, true) => {
                let key = userid.as_bytes();
                let to = score(key, self.seed_to, f64::from(s));
                let from = score(key, self.seed_from, f64::from(10_000 - s));
                if to > from {
                    self.to
                } else {
                    self.from
                }
            }
        };
        Some((cluster, pick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_share_only_adds_calls_to_to() {
        let dial = Arc::new(Dial::new(5, 100));
        let t = RolloutTarget::new(dial.clone(), "salt", (0, "stable"), (1, "canary"));
        let users: Vec<String> = (0..20_000).map(|i| format!("call-{i}")).collect();
        let mut before: Vec<usize> = users
            .iter()
            .map(|u| t.choose(u, |_| true).unwrap().0)
            .collect();
        for share in [500, 2_500, 5_000, 10_000] {
            dial.set(1, share, RolloutStatus::Running, 1);
            let now: Vec<usize> = users
                .iter()
                .map(|u| t.choose(u, |_| true).unwrap().0)
                .collect();
            for (b, n) in before.iter().zip(&now) {
                assert!(!(*b == 1 && *n == 0), "a call left `to` as the share rose");
            }
            let got = now.iter().filter(|c| **c == 1).count() as f64 / users.len() as f64;
            let want = f64::from(share) / 10_000.0;
            assert!((got - want).abs() < 0.015, "share {share}: {got}");
            before = now;
        }
        dial.set(2, 0, RolloutStatus::Aborted, 0);
        assert!(users.iter().all(|u| t.choose(u, |_| true).unwrap().0 == 0));
        assert_eq!(dial.status(), (RolloutStatus::Aborted, 0));
        assert_eq!(dial.pick().epoch, 2);
    }

    #[test]
    fn share_text() {
        let p = |bp| {
            Pick {
                epoch: 0,
                share_bp: bp,
            }
            .share_text()
        };
        assert_eq!(p(100), "1");
        assert_eq!(p(250), "2.5");
        assert_eq!(p(10_000), "100");
    }
}
