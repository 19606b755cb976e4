//! The audit trail of spec §12: what the gateway applied, refused and decided, newest first.
//!
//! A bounded ring (200 events by default) of applied generations, failed reloads and rollout
//! transitions. Each event is numbered (`seq`, from 1, never reused within the process), stamped
//! with the wall time (`at`, RFC 3339 UTC) and written to the log as it is recorded, so the log
//! keeps what the ring has forgotten. Events are rare (reloads, rollout steps): a mutex around
//! the ring is fine here, nothing on the turn path touches it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many events `/admin/history` keeps.
pub const DEFAULT_CAPACITY: usize = 200;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// A generation was published (at start or by a reload).
    Applied,
    /// A reload was refused; the running config stayed.
    ReloadFailed,
    /// A rollout changed state.
    Rollout,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Applied => "applied",
            HistoryKind::ReloadFailed => "reload_failed",
            HistoryKind::Rollout => "rollout",
        }
    }
}

struct Ring {
    next_seq: u64,
    /// Oldest at the front.
    events: VecDeque<serde_json::Value>,
}

pub struct History {
    capacity: usize,
    ring: Mutex<Ring>,
}

impl Default for History {
    fn default() -> Self {
        History::new(DEFAULT_CAPACITY)
    }
}

impl History {
    /// A ring of at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        History {
            capacity,
            ring: Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(capacity),
            }),
        }
    }

    /// Record an event now. `detail` is an object whose keys become the event's; `seq`, `at`
    /// and `kind` are the History's own and win over keys of the same name. A detail that is
    /// not an object is kept under `detail`.
    pub fn record(&self, kind: HistoryKind, detail: serde_json::Value) {
        self.record_at(kind, detail, SystemTime::now());
    }

    fn record_at(&self, kind: HistoryKind, detail: serde_json::Value, at: SystemTime) {
        let mut event = match detail {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        let at = humantime::format_rfc3339_millis(at).to_string();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
        event.insert("seq".into(), seq.into());
        event.insert("at".into(), at.into());
        event.insert("kind".into(), kind.as_str().into());
        let event = serde_json::Value::Object(event);
        // Logged under the lock so the log's order is the ring's order.
        tracing::info!(target: "graygate::history", seq, kind = kind.as_str(), event = %event, "history");
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event);
    }

    /// `{"capacity": N, "events": [newest first]}`.
    pub fn view(&self) -> serde_json::Value {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let events: Vec<serde_json::Value> = ring.events.iter().rev().cloned().collect();
        serde_json::json!({ "capacity": self.capacity, "events": events })
    }

    /// The events, newest first (for tests and views that filter).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.events.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn newest_first_numbered_and_stamped() {
        let h = History::new(10);
        h.record(
            HistoryKind::Applied,
            json!({"generation": 1, "trigger": "start"}),
        );
        h.record(HistoryKind::ReloadFailed, json!({"errors": []}));
        h.record(HistoryKind::Rollout, json!({"rule": "r", "to": "aborted"}));
        let v = h.view();
        let ev = v["events"].as_array().unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0]["kind"], "rollout");
        assert_eq!(ev[0]["seq"], 3);
        assert_eq!(ev[0]["rule"], "r");
        assert_eq!(ev[1]["kind"], "reload_failed");
        assert_eq!(ev[2]["kind"], "applied");
        assert_eq!(ev[2]["generation"], 1);
        assert_eq!(ev[2]["seq"], 1);
        let at = ev[2]["at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
        assert!(at.ends_with('Z'), "{at}");
        assert_eq!(v["capacity"], 10);
    }

    #[test]
    fn bounded_drops_the_oldest_and_keeps_numbering() {
        let h = History::new(3);
        for g in 1..=5 {
            h.record(HistoryKind::Applied, json!({ "generation": g }));
        }
        let ev = h.events();
        let gens: Vec<i64> = ev
            .iter()
            .map(|e| e["generation"].as_i64().unwrap())
            .collect();
        assert_eq!(gens, vec![5, 4, 3]);
        let seqs: Vec<i64> = ev.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, vec![5, 4, 3]);
    }

    #[test]
    fn own_keys_win_and_non_objects_are_kept() {
        let h = History::new(2);
        h.record(
            HistoryKind::Applied,
            json!({"seq": 99, "kind": "forged", "x": 1}),
        );
        h.record(HistoryKind::Rollout, json!("plain"));
        let ev = h.events();
        assert_eq!(ev[0]["detail"], "plain");
        assert_eq!(ev[0]["kind"], "rollout");
        assert_eq!(ev[1]["seq"], 1);
        assert_eq!(ev[1]["kind"], "applied");
        assert_eq!(ev[1]["x"], 1);
    }

    #[test]
    fn capacity_zero_means_one() {
        let h = History::new(0);
        h.record(HistoryKind::Applied, json!({}));
        h.record(HistoryKind::Applied, json!({}));
        assert_eq!(h.events().len(), 1);
    }
}
