//! In-cluster balancing: pick one endpoint among those a filter accepts.
//!
//! The filter carries health, capacity and "already tried" checks, so each strategy is a few
//! lines: `round_robin` walks from a shared counter, `least_request` takes the endpoint with
//! the fewest requests in flight (ties by position, starting from the counter so ties spread),
//! `userid_hash` is rendezvous hashing of the userid over endpoint URLs, so a call's turns reach
//! the same node when the cluster's nodes do not share call state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::endpoint::Endpoint;
use crate::router::split::score;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    UseridHash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::UseridHash => "userid_hash",
        }
    }

    /// The index of the chosen endpoint.
    pub fn pick(
        self,
        endpoints: &[Arc<Endpoint>],
        counter: &AtomicUsize,
        userid: &str,
        accept: impl Fn(usize, &Endpoint) -> bool,
    ) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        match self {
            Balance::RoundRobin => {
                let start = counter.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| accept(i, &endpoints[i]))
            }
            Balance::LeastRequest => {
                let start = counter.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| accept(i, &endpoints[i]))
                    .min_by_key(|&i| endpoints[i].inflight())
            }
            Balance::UseridHash => (0..n)
                .filter(|&i| accept(i, &endpoints[i]))
                .map(|i| (score(userid.as_bytes(), endpoints[i].seed, 1.0), i))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, i)| i),
        }
    }
}
