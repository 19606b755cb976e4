//! Weighted rendezvous hashing over `(salt, userid)` — a contract, not an implementation detail.
//!
//! Every gateway replica, every restart and every platform must pick the same cluster for the
//! same userid, so the hash is fixed and versioned here:
//!
//! **split hash v1**: for each candidate cluster `c` with weight `w`,
//! `seed = XXH3-64(salt ‖ 0x00 ‖ c)` (seed 0), `h = XXH3-64-with-seed(userid, seed)`,
//! `u = ((h >> 11) + 0.5) / 2^53` (a uniform number in (0, 1)), `score = -w / ln(u)`.
//! The cluster with the highest score wins; ties (never seen in practice) go to the cluster
//! listed first. The probability that `c` wins is `w / Σw`.
//!
//! Rendezvous hashing moves only what it must: raising one weight moves new calls only *to* that
//! cluster, and removing a cluster that did not win moves nobody. The golden-value test below
//! fails if any of this changes.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One candidate of a split: its cluster index, weight and precomputed seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub cluster: usize,
    pub weight: f64,
    pub seed: u64,
}

/// A compiled `split:` (candidates in the file's order).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub candidates: Vec<Candidate>,
}

impl Split {
    /// `clusters`: (cluster index, cluster name, weight).
    pub fn new<'a>(salt: &str, clusters: impl IntoIterator<Item = (usize, &'a str, f64)>) -> Split {
        let candidates = clusters
            .into_iter()
            .map(|(cluster, name, weight)| Candidate {
                cluster,
                weight,
                seed: seed(salt, name),
            })
            .collect();
        Split { candidates }
    }

    /// The winning cluster for `userid` among candidates that `eligible` accepts.
    pub fn choose(&self, userid: &str, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for c in &self.candidates {
            if !eligible(c.cluster) {
                continue;
            }
            let s = score(userid.as_bytes(), c.seed, c.weight);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, c.cluster));
            }
        }
        best.map(|(_, c)| c)
    }
}

/// The per-(salt, cluster) seed of split hash v1.
pub fn seed(salt: &str, cluster: &str) -> u64 {
    let mut buf = Vec::with_capacity(salt.len() + 1 + cluster.len());
    buf.extend_from_slice(salt.as_bytes());
    buf.push(0);
    buf.extend_from_slice(cluster.as_bytes());
    xxh3_64(&buf)
}

/// The rendezvous score of one key for one candidate.
#[inline]
pub fn score(key: &[u8], seed: u64, weight: f64) -> f64 {
    let h = xxh3_64_with_seed(key, seed);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(w_canary: f64, w_stable: f64) -> Split {
        Split::new(
            "rollout",
            [(0, "canary", w_canary), (1, "stable", w_stable)],
        )
    }

    #[test]
    fn choices_match_golden_values() {
        // Fixed expected clusters for fixed userids: a changed hash or formula fails here.
        let s = split(50.0, 50.0);
        let got: Vec<usize> = (0..16)
            .map(|i| s.choose(&format!("call-{i}"), |_| true).unwrap())
            .collect();
        assert_eq!(
            got, GOLDEN,
            "split hash v1 changed: every replica would disagree"
        );
    }
    const GOLDEN: [usize; 16] = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0];

    #[test]
    fn shares_follow_weights() {
        let s = split(10.0, 90.0);
        let n = 20_000;
        let canary = (0..n)
            .filter(|i| s.choose(&format!("u-{i}"), |_| true) == Some(0))
            .count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.01, "share {share}");
    }

    #[test]
    fn weight_change_moves_only_the_needed_share() {
        let (a, b) = (split(10.0, 90.0), split(50.0, 50.0));
        let n = 20_000;
        let (mut to_canary, mut to_stable) = (0, 0);
        for i in 0..n {
            let k = format!("u-{i}");
            match (a.choose(&k, |_| true), b.choose(&k, |_| true)) {
                (Some(1), Some(0)) => to_canary += 1,
                (Some(0), Some(1)) => to_stable += 1,
                _ => {}
            }
        }
        assert_eq!(
            to_stable, 0,
            "raising the canary must never move a call to stable"
        );
        let moved = to_canary as f64 / n as f64;
        assert!((moved - 0.40).abs() < 0.015, "moved {moved}");
    }

    #[test]
    fn removing_a_non_winner_moves_nobody() {
        let three = Split::new("s", [(0, "a", 1.0), (1, "b", 1.0), (2, "c", 1.0)]);
        for i in 0..5_000 {
            let k = format!("u-{i}");
            let before = three.choose(&k, |_| true).unwrap();
            let after = three.choose(&k, |c| c != 2).unwrap();
            if before != 2 {
                assert_eq!(before, after);
            }
        }
    }
}
