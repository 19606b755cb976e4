//! Observed shares of new calls (spec §12): per rule and cluster, how many calls began in each
//! of the last 300 seconds, so `/admin/config` and the console can put "observed 9.7% over
//! 5 min" beside "configured 10%".
//!
//! The table is fixed when the process starts: `MAX_PAIRS` (rule, cluster) slots found by open
//! addressing on the pair's interned ids. A slot's ring of per-second counters is allocated the
//! first time its pair is seen (once per pair for the life of the process, like the interned
//! names), so counting a call is a hash, a probe and one compare-and-swap, and never allocates
//! after that. Each counter packs the second it belongs to with its count, so a slot left over
//! from an earlier lap of the ring is recognised as stale and restarted, not added to.
//!
//! When more pairs than `MAX_PAIRS` appear (a process that has seen hundreds of rules), calls of
//! the pairs that found no slot are counted in `unplaced` and left out of the shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio::time::Instant;

use crate::ids::NameId;

/// Seconds the ring covers: the longest window a share can be observed over.
pub const WINDOW_SECONDS: usize = 300;
/// (rule, cluster) pairs the table can hold.
pub const MAX_PAIRS: usize = 1024;

const EMPTY: u64 = u64::MAX;
const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

type Ring = [AtomicU64; WINDOW_SECONDS];

struct Slot {
    /// `rule << 32 | cluster`, or `EMPTY`.
    key: AtomicU64,
    /// Per second `s`: at index `s % WINDOW_SECONDS`, `s << 32 | calls`.
    ring: OnceLock<Box<Ring>>,
}

pub struct ObservedShares {
    slots: Box<[Slot]>,
    origin: Instant,
    unplaced: AtomicU64,
}

/// The calls of one (rule, cluster) pair within a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCount {
    pub rule: NameId,
    pub cluster: NameId,
    pub calls: u64,
}

impl Default for ObservedShares {
    fn default() -> Self {
        Self::new()
    }
}

fn key_of(rule: NameId, cluster: NameId) -> u64 {
    (u64::from(rule.0) << 32) | u64::from(cluster.0)
}

fn home(key: u64) -> usize {
    // Fibonacci hashing: interned ids are small and dense, spread them over the table.
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % MAX_PAIRS
}

impl ObservedShares {
    pub fn new() -> Self {
        let slots = (0..MAX_PAIRS)
            .map(|_| Slot {
                key: AtomicU64::new(EMPTY),
                ring: OnceLock::new(),
            })
            .collect();
        ObservedShares {
            slots,
            origin: Instant::now(),
            unplaced: AtomicU64::new(0),
        }
    }

    /// Seconds since this table was made (the ring's clock).
    pub fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// A new call of `rule` was pinned to `cluster` now.
    pub fn count(&self, rule: NameId, cluster: NameId) {
        self.count_at(rule, cluster, self.now_second());
    }

    /// The slot of a pair, claiming a free one on first sight.
    fn slot(&self, key: u64, claim: bool) -> Option<&Slot> {
        let start = home(key);
        for i in 0..MAX_PAIRS {
            let slot = &self.slots[(start + i) % MAX_PAIRS];
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                return Some(slot);
            }
            if k == EMPTY {
                if !claim {
                    return None;
                }
                match slot
                    .key
                    .compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(slot),
                    // Another thread claimed it first, maybe for this very pair.
                    Err(other) if other == key => return Some(slot),
                    Err(_) => continue,
                }
            }
        }
        None
    }

    /// Count one call at second `now` (of [`now_second`](Self::now_second)'s clock).
    pub fn count_at(&self, rule: NameId, cluster: NameId, now: u64) {
        let Some(slot) = self.slot(key_of(rule, cluster), true) else {
            self.unplaced.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ring = slot
            .ring
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        let cell = &ring[(now % WINDOW_SECONDS as u64) as usize];
        let stamp = now << COUNT_BITS;
        let mut cur = cell.load(Ordering::Relaxed);
        loop {
            let next = if cur >> COUNT_BITS == now && cur != 0 {
                // Saturate rather than carry into the stamp.
                if cur & COUNT_MASK == COUNT_MASK {
                    return;
                }
                cur + 1
            } else {
                // A stale second of an earlier lap (or a never-used cell): start over.
                stamp | 1
            };
            match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Calls of one pair in the `window` seconds ending with second `now` (included).
    pub fn calls_at(&self, rule: NameId, cluster: NameId, now: u64, window: usize) -> u64 {
        self.slot(key_of(rule, cluster), false)
            .map_or(0, |s| Self::sum(s, now, window))
    }

    fn sum(slot: &Slot, now: u64, window: usize) -> u64 {
        let Some(ring) = slot.ring.get() else {
            return 0;
        };
        let window = window.clamp(1, WINDOW_SECONDS) as u64;
        let oldest = now.saturating_sub(window - 1);
        ring.iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|v| *v != 0 && (oldest..=now).contains(&(v >> COUNT_BITS)))
            .map(|v| v & COUNT_MASK)
            .sum()
    }

    /// Every pair with calls in the window ending now, in no particular order.
    pub fn window(&self, window: usize) -> Vec<PairCount> {
        self.window_at(self.now_second(), window)
    }

    pub fn window_at(&self, now: u64, window: usize) -> Vec<PairCount> {
        self.slots
            .iter()
            .filter_map(|s| {
                let k = s.key.load(Ordering::Acquire);
                if k == EMPTY {
                    return None;
                }
                let calls = Self::sum(s, now, window);
                (calls > 0).then_some(PairCount {
                    rule: NameId((k >> 32) as u32),
                    cluster: NameId(k as u32),
                    calls,
                })
            })
            .collect()
    }

    /// Calls of pairs that found no slot, since start.
    pub fn unplaced(&self) -> u64 {
        self.unplaced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: NameId = NameId(7);
    const A: NameId = NameId(1);
    const B: NameId = NameId(2);

    #[test]
    fn counts_within_the_window_only() {
        let s = ObservedShares::new();
        for _ in 0..9 {
            s.count_at(R, A, 100);
        }
        s.count_at(R, B, 100);
        s.count_at(R, A, 150);
        assert_eq!(s.calls_at(R, A, 150, 300), 10);
        assert_eq!(s.calls_at(R, B, 150, 300), 1);
        // A one-minute window ending at 150 starts at 91: all of them.
        assert_eq!(s.calls_at(R, A, 150, 60), 10);
        // Ending at 200: second 100 is out of a 60 s window, 150 is in.
        assert_eq!(s.calls_at(R, A, 200, 60), 1);
        // The window includes its first second and its last.
        assert_eq!(s.calls_at(R, A, 399, 300), 10);
        assert_eq!(s.calls_at(R, A, 400, 300), 1);
        assert_eq!(s.calls_at(R, A, 449, 300), 1);
        assert_eq!(s.calls_at(R, A, 450, 300), 0);
        assert_eq!(s.calls_at(NameId(99), A, 150, 300), 0);
    }

    #[test]
    fn wraparound_restarts_stale_slots() {
        let s = ObservedShares::new();
        for _ in 0..5 {
            s.count_at(R, A, 10);
        }
        // Second 310 uses the same cell as second 10 (one lap later): the 5 are stale.
        s.count_at(R, A, 310);
        assert_eq!(s.calls_at(R, A, 310, 300), 1);
        // Read long after: nothing, though the cells still hold old stamps.
        assert_eq!(s.calls_at(R, A, 10_000, 300), 0);
        // Many laps later the same cell starts again from 1.
        s.count_at(R, A, 310 + 300 * 40);
        assert_eq!(s.calls_at(R, A, 310 + 300 * 40, 300), 1);
        // A full lap of one call a second sums to the window.
        let t = ObservedShares::new();
        for sec in 1000..1600 {
            t.count_at(R, B, sec);
        }
        assert_eq!(t.calls_at(R, B, 1599, 300), 300);
        assert_eq!(t.calls_at(R, B, 1599, 10), 10);
    }

    #[test]
    fn second_zero_counts() {
        let s = ObservedShares::new();
        s.count_at(R, A, 0);
        s.count_at(R, A, 0);
        assert_eq!(s.calls_at(R, A, 0, 300), 2);
        assert_eq!(s.calls_at(R, A, 299, 300), 2);
        assert_eq!(s.calls_at(R, A, 300, 300), 0);
    }

    #[test]
    fn window_lists_the_pairs() {
        let s = ObservedShares::new();
        s.count_at(R, A, 5);
        s.count_at(R, B, 5);
        s.count_at(R, B, 6);
        let mut w = s.window_at(6, 300);
        w.sort_by_key(|p| p.cluster);
        assert_eq!(
            w,
            vec![
                PairCount {
                    rule: R,
                    cluster: A,
                    calls: 1
                },
                PairCount {
                    rule: R,
                    cluster: B,
                    calls: 2
                },
            ]
        );
        assert!(s.window_at(1000, 300).is_empty());
    }

    #[test]
    fn a_full_table_counts_the_rest_as_unplaced() {
        let s = ObservedShares::new();
        for r in 0..MAX_PAIRS as u32 {
            s.count_at(NameId(r), A, 1);
        }
        assert_eq!(s.unplaced(), 0);
        s.count_at(NameId(5000), A, 1);
        assert_eq!(s.unplaced(), 1);
        // Known pairs still count.
        s.count_at(NameId(3), A, 1);
        assert_eq!(s.calls_at(NameId(3), A, 1, 300), 2);
        assert_eq!(s.window_at(1, 300).len(), MAX_PAIRS);
    }

    #[test]
    fn concurrent_counts_are_not_lost() {
        let s = std::sync::Arc::new(ObservedShares::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        s.count_at(R, A, 42);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.calls_at(R, A, 42, 1), 40_000);
    }
}
