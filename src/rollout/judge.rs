//! The judge: is `to` worse than `from` in this step? Pure functions of the step's counts.
//!
//! **Share criteria** (failed, abandoned, transferred): a one-sided two-proportion z-test of
//! `H0: p_to − p_from ≤ margin` against `H1: p_to − p_from > margin`, with the unpooled standard
//! error (the null hypothesis does not say the two shares are equal, so there is nothing to pool):
//! `z = (p_to − p_from − margin) / sqrt(p_to(1−p_to)/n_to + p_from(1−p_from)/n_from)`,
//! `p = 1 − Φ(z)`. The criterion holds when `p < 1 − confidence`, which implies that `to`'s share
//! is above `from`'s by more than the margin. When both shares are 0 or 1 the standard error is
//! 0 and the difference is exact: it holds when it exceeds the margin (p = 0), else p = 1.
//! Φ is `statrs`'s standard normal.
//!
//! **turn_p99**: the p99 of the step's turn times on each side, from a fixed log-bucketed
//! histogram ([`TurnHistogram`], 128 buckets of ×1.125 from 100 µs, so memory does not grow
//! with traffic); holds when `to`'s p99 exceeds `ratio ×` `from`'s. No p-value.
//!
//! Nothing is judged before both sides have `min_calls` ended calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use statrs::distribution::{ContinuousCDF, Normal};

use super::spec::{Criteria, RolloutSpec};

/// Outcome counts of one side within a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub completed: u64,
    pub transferred: u64,
    pub failed: u64,
    pub abandoned: u64,
}

impl Counts {
    pub fn ended(&self) -> u64 {
        self.completed + self.transferred + self.failed + self.abandoned
    }

    fn share(&self, k: u64) -> f64 {
        let n = self.ended();
        if n == 0 {
            0.0
        } else {
            k as f64 / n as f64
        }
    }
}

/// The p-value of the one-sided test that `to`'s share `k_to/n_to` exceeds `from`'s
/// `k_from/n_from` by more than `margin`. `None` when a side has no calls.
pub fn p_value(k_to: u64, n_to: u64, k_from: u64, n_from: u64, margin: f64) -> Option<f64> {
    if n_to == 0 || n_from == 0 {
        return None;
    }
    let (pt, pf) = (k_to as f64 / n_to as f64, k_from as f64 / n_from as f64);
    let diff = pt - pf - margin;
    let se = (pt * (1.0 - pt) / n_to as f64 + pf * (1.0 - pf) / n_from as f64).sqrt();
    if se == 0.0 || !se.is_finite() {
        return Some(if diff > 0.0 { 0.0 } else { 1.0 });
    }
    let normal = Normal::standard();
    Some(1.0 - normal.cdf(diff / se))
}

/// Buckets of [`TurnHistogram`].
pub const BUCKETS: usize = 128;
/// Upper bound of bucket 0, in microseconds.
const FIRST_US: f64 = 100.0;
const GROWTH: f64 = 1.125;

/// The bucket of a turn time: bucket `i` holds times up to `100µs × 1.125^i`; the last one
/// holds everything above (about 340 s).
pub fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    let i = ((us / FIRST_US).ln() / GROWTH.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
pub fn bucket_upper_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

/// A fixed-size histogram of turn times, updated with atomics from any thread.
pub struct TurnHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for TurnHistogram {
    fn default() -> Self {
        TurnHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl TurnHistogram {
    pub fn observe(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bucket(&self, i: usize, n: u64) {
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Read and reset every bucket (what was added since the last take).
    pub fn take(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect()
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// The q-quantile (0..1) of a bucket vector, as the upper bound of its bucket, in ms.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    Some(bucket_upper_ms(buckets.len().saturating_sub(1)))
}

/// What one side of a step looks like to the judge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideView {
    pub counts: Counts,
    pub turn_p99_ms: Option<f64>,
}

/// The verdict of one criterion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub criterion: &'static str,
    pub threshold: String,
    pub from_value: f64,
    pub to_value: f64,
    pub p_value: Option<f64>,
    pub holds: bool,
}

/// A share criterion: its name, its margin (`None`: off) and the count it looks at.
type ShareCriterion = (&'static str, Option<f64>, fn(&Counts) -> u64);

/// Judge a step. Every enabled criterion gets a verdict (so the operator sees the figures as
/// they build up); none holds before both sides have `min_calls` ended calls.
pub fn judge(spec: &RolloutSpec, from: &SideView, to: &SideView) -> Vec<Verdict> {
    let enough = from.counts.ended() >= spec.min_calls && to.counts.ended() >= spec.min_calls;
    let alpha = 1.0 - spec.confidence;
    let Criteria {
        failed,
        abandoned,
        transferred,
        turn_p99,
    } = spec.criteria;
    let mut out = Vec::new();
    let shares: [ShareCriterion; 3] = [
        ("failed", failed, |c| c.failed),
        ("abandoned", abandoned, |c| c.abandoned),
        ("transferred", transferred, |c| c.transferred),
    ];
    for (criterion, margin, pick) in shares {
        let Some(margin) = margin else { continue };
        let (kf, nf) = (pick(&from.counts), from.counts.ended());
        let (kt, nt) = (pick(&to.counts), to.counts.ended());
        let p = p_value(kt, nt, kf, nf, margin);
        out.push(Verdict {
            criterion,
            threshold: format!("+{}%", trim(margin * 100.0)),
            from_value: from.counts.share(kf),
            to_value: to.counts.share(kt),
            p_value: p,
            holds: enough && p.is_some_and(|p| p < alpha),
        });
    }
    if let Some(ratio) = turn_p99 {
        let (f, t) = (from.turn_p99_ms, to.turn_p99_ms);
        out.push(Verdict {
            criterion: "turn_p99",
            threshold: format!("{}x", trim(ratio)),
            from_value: f.unwrap_or(0.0),
            to_value: t.unwrap_or(0.0),
            p_value: None,
            holds: enough
                && match (f, t) {
                    (Some(f), Some(t)) => t > ratio * f,
                    _ => false,
                },
        });
    }
    out
}

/// `1.0` → `1`, `2.5` → `2.5`.
fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::spec::{Advance, Criteria};
    use std::sync::Arc;

    fn spec(min_calls: u64, criteria: Criteria) -> RolloutSpec {
        RolloutSpec {
            name: Arc::from("r"),
            from: Arc::from("stable"),
            to: Arc::from("canary"),
            steps: vec![100, 10000],
            step_min: Duration::from_secs(1),
            min_calls,
            advance: Advance::Auto,
            confidence: 0.95,
            criteria,
            key: 0,
        }
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    #[test]
    fn p_values_of_fixed_counts() {
        // 80/1000 against 50/1000 with a 1-point margin:
        // se = sqrt(.08·.92/1000 + .05·.95/1000) = 0.0110045, z = 0.02/se = 1.81743,
        // 1 − Φ(1.81743) = 0.034576.
        close(p_value(80, 1000, 50, 1000, 0.01).unwrap(), 0.034576, 1e-5);
        // No margin, 60/500 against 40/500: se = sqrt(.12·.88/500 + .08·.92/500) = 0.0189315,
        // z = 2.11289, p = 0.017305.
        close(p_value(60, 500, 40, 500, 0.0).unwrap(), 0.017305, 1e-5);
        // A canary no worse than the baseline: z ≤ 0, p ≥ 0.5.
        close(p_value(50, 1000, 50, 1000, 0.0).unwrap(), 0.5, 1e-12);
        assert!(p_value(40, 1000, 50, 1000, 0.01).unwrap() > 0.5);
        // 20% transferred against none, margin 5 points: se = sqrt(.2·.8/200) = 0.0282843,
        // z = 0.15/se = 5.30330, p = 5.69e-8.
        close(p_value(40, 200, 0, 200, 0.05).unwrap(), 5.69e-8, 1e-9);
        // Exact shares (se = 0): the difference decides.
        assert_eq!(p_value(0, 100, 0, 100, 0.01), Some(1.0));
        assert_eq!(p_value(100, 100, 0, 100, 0.01), Some(0.0));
        assert_eq!(p_value(1, 0, 0, 10, 0.01), None);
    }

    #[test]
    fn a_clearly_worse_canary_fails_and_an_equal_one_passes() {
        let s = spec(200, Criteria::default());
        let from = SideView {
            counts: Counts {
                completed: 990,
                failed: 10,
                ..Counts::default()
            },
            turn_p99_ms: Some(20.0),
        };
        let worse = SideView {
            counts: Counts {
                completed: 160,
                failed: 40,
                ..Counts::default()
            },
            turn_p99_ms: Some(20.0),
        };
        let v = judge(&s, &from, &worse);
        let failed = v.iter().find(|v| v.criterion == "failed").unwrap();
        assert!(failed.holds, "{failed:?}");
        assert_eq!(failed.threshold, "+1%");
        close(failed.to_value, 0.2, 1e-12);
        assert!(failed.p_value.unwrap() < 1e-6);
        assert!(v
            .iter()
            .filter(|v| v.criterion != "failed")
            .all(|v| !v.holds));
        let same = judge(&s, &from, &from);
        assert!(same.iter().all(|v| !v.holds), "{same:?}");
        // The same figures below min_calls: shown, never holding.
        let v = judge(&spec(5000, Criteria::default()), &from, &worse);
        assert!(v.iter().all(|v| !v.holds));
        assert!(v[0].p_value.unwrap() < 1e-6);
    }

    #[test]
    fn turn_p99_compares_the_ratio() {
        let s = spec(1, Criteria::default());
        let side = |p99| SideView {
            counts: Counts {
                completed: 10,
                ..Counts::default()
            },
            turn_p99_ms: Some(p99),
        };
        let v = judge(&s, &side(10.0), &side(16.0));
        let t = v.iter().find(|v| v.criterion == "turn_p99").unwrap();
        assert!(t.holds && t.threshold == "1.5x" && t.p_value.is_none());
        let v = judge(&s, &side(10.0), &side(14.0));
        assert!(!v.iter().find(|v| v.criterion == "turn_p99").unwrap().holds);
        // Switched off: no verdict at all.
        let off = spec(
            1,
            Criteria {
                turn_p99: None,
                ..Criteria::default()
            },
        );
        assert!(judge(&off, &side(10.0), &side(99.0))
            .iter()
            .all(|v| v.criterion != "turn_p99"));
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = TurnHistogram::default();
        for _ in 0..990 {
            h.observe(Duration::from_millis(2));
        }
        for _ in 0..10 {
            h.observe(Duration::from_millis(500));
        }
        let b = h.snapshot();
        let p99 = quantile_ms(&b, 0.99).unwrap();
        assert!((2.0..2.3).contains(&p99), "{p99}");
        let p999 = quantile_ms(&b, 0.999).unwrap();
        assert!((500.0..563.0).contains(&p999), "{p999}");
        assert_eq!(quantile_ms(&[0; BUCKETS], 0.99), None);
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(100_000)), BUCKETS - 1);
    }
}
