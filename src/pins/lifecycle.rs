//! What an answer does to a pin: a pure function of the turn, the pin kind and the answer.
//!
//! - A new call (or a routed orphan) is pinned on its first 2xx answer.
//! - `outaction` 10 answering `input=hangup` ends the call: the pin goes at once.
//! - Any other `outaction` 10 (the ODFS ordering a hang-up) keeps the pin for `end_grace`, so
//!   the caller's final hangup report still reaches the same cluster.
//! - Every other answer leaves the pin as it is (the lookup already refreshed it).
//!
//! And what a call's turns add up to when its pin goes (spec §11): the turns leave [`Facts`]
//! on the pin, and [`call_outcome`] turns them into exactly one [`CallOutcome`], in this order
//! of precedence:
//!
//! | outcome | when |
//! |---|---|
//! | `failed` | any turn got a 5xx (the gateway's own, or the upstream's) or an answer with `ret` ≠ 0 |
//! | `transferred` | otherwise, the call got an `outaction` 11 |
//! | `completed` | otherwise, the call ended with `outaction` 10 (hangup release, or end grace passed) |
//! | `abandoned` | otherwise: the pin expired idle, an operator released it, or it was evicted |
//!
//! A new call whose first turn is not pinned (no 2xx, or a one-turn call that ended at once)
//! is settled at that turn, from that turn's facts.

use super::Pin;
use crate::protocol::Outaction;
use crate::vocab::{CallOutcome, PinKind, ReleaseReason};

/// The store operation an answer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAction {
    Nothing,
    /// Pin the call; `ending` when the first answer already ordered a hang-up.
    Create {
        ending: bool,
    },
    /// Keep the pin for `end_grace` only.
    End,
    /// The call is over.
    ReleaseHangup,
}

/// Decide the pin action for one answered turn.
pub fn on_answer(
    kind: PinKind,
    status: u16,
    hangup_report: bool,
    outaction: Option<Outaction>,
) -> PinAction {
    let ok = (200..300).contains(&status);
    let end = outaction.is_some_and(Outaction::is_end);
    match kind {
        PinKind::New | PinKind::Orphan => match (ok, end, hangup_report) {
            (false, _, _) => PinAction::Nothing,
            (true, true, true) => PinAction::Nothing,
            (true, true, false) => PinAction::Create { ending: true },
            (true, false, _) => PinAction::Create { ending: false },
        },
        PinKind::Kept => match (ok, end, hangup_report) {
            (true, true, true) => PinAction::ReleaseHangup,
            (true, true, false) => PinAction::End,
            _ => PinAction::Nothing,
        },
    }
}

/// What one turn tells about its call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub failed: bool,
    pub transferred: bool,
}

impl Facts {
    /// From the turn's HTTP status, the answer's `ret` and `outaction` (when read).
    pub fn of(status: u16, ret: Option<i64>, outaction: Option<Outaction>) -> Facts {
        Facts {
            failed: status >= 500 || ret.is_some_and(|r| r != 0),
            transferred: outaction == Some(Outaction::TRANSFER),
        }
    }

    /// Does this add anything the pin does not already carry?
    pub fn adds_to(self, pin: &Pin) -> bool {
        (self.failed && !pin.failed) || (self.transferred && !pin.transferred)
    }

    pub fn any(self) -> bool {
        self.failed || self.transferred
    }
}

/// How a pin went away, for its call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Released for one of the §5 reasons.
    Released(ReleaseReason),
    /// Pushed out of a full table (`pins.max_pins`). Nothing ended the call: unless its turns
    /// already made it failed, transferred or completed, it is **abandoned**, like a pin that
    /// expired idle (its caller's later turns, if any, become orphan turns; the call as judged
    /// is lost to the gateway, which is what "abandoned" counts).
    Evicted,
}

/// The outcome of a call from what its turns showed (`failed`, `transferred`), whether it got
/// an outaction 10 (`ended`), and how its pin went.
pub fn outcome(failed: bool, transferred: bool, ended: bool, gone: Gone) -> CallOutcome {
    let ended = ended
        || matches!(
            gone,
            Gone::Released(ReleaseReason::Hangup | ReleaseReason::EndGrace)
        );
    if failed {
        CallOutcome::Failed
    } else if transferred {
        CallOutcome::Transferred
    } else if ended {
        CallOutcome::Completed
    } else {
        CallOutcome::Abandoned
    }
}

/// The outcome of the call whose pin went away.
pub fn call_outcome(pin: &Pin, gone: Gone) -> CallOutcome {
    outcome(pin.failed, pin.transferred, pin.ending, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    const TEN: Option<Outaction> = Some(Outaction(10));
    const NINE: Option<Outaction> = Some(Outaction(9));

    #[test]
    fn table() {
        use PinAction::*;
        use PinKind::*;
        let rows = [
            (New, 200, false, NINE, Create { ending: false }),
            (New, 500, false, NINE, Nothing),
            (New, 200, false, TEN, Create { ending: true }),
            (New, 200, true, TEN, Nothing),
            (New, 200, false, None, Create { ending: false }),
            (Orphan, 200, false, NINE, Create { ending: false }),
            (Kept, 200, false, NINE, Nothing),
            (Kept, 200, true, TEN, ReleaseHangup),
            (Kept, 200, false, TEN, End),
            (Kept, 500, true, TEN, Nothing),
            (Kept, 200, true, NINE, Nothing),
        ];
        for (kind, status, hangup, out, want) in rows {
            assert_eq!(
                on_answer(kind, status, hangup, out),
                want,
                "{kind:?} {status} {hangup} {out:?}"
            );
        }
    }

    #[test]
    fn every_way_a_call_ends() {
        use CallOutcome::*;
        use Gone::*;
        use ReleaseReason::*;
        // (failed, transferred, ended with outaction 10, how the pin went) → outcome
        let rows = [
            // The caller hung up and the ODFS answered outaction 10.
            (false, false, false, Released(Hangup), Completed),
            (false, false, true, Released(Hangup), Completed),
            // The ODFS ordered the hang-up; the pin outlived end_grace.
            (false, false, true, Released(EndGrace), Completed),
            // Nobody ended it.
            (false, false, false, Released(Idle), Abandoned),
            (false, false, false, Released(Admin), Abandoned),
            (false, false, false, Evicted, Abandoned),
            // An operator released (or the table evicted) a call that had ended.
            (false, false, true, Released(Admin), Completed),
            (false, false, true, Evicted, Completed),
            // Handed to an agent, then ended any way.
            (false, true, true, Released(Hangup), Transferred),
            (false, true, true, Released(EndGrace), Transferred),
            (false, true, false, Released(Idle), Transferred),
            (false, true, false, Released(Admin), Transferred),
            (false, true, false, Evicted, Transferred),
            // Any failure wins over everything.
            (true, true, true, Released(Hangup), Failed),
            (true, false, true, Released(EndGrace), Failed),
            (true, false, false, Released(Idle), Failed),
            (true, false, false, Released(Admin), Failed),
            (true, false, false, Evicted, Failed),
        ];
        for (failed, transferred, ended, gone, want) in rows {
            assert_eq!(
                outcome(failed, transferred, ended, gone),
                want,
                "{failed} {transferred} {ended} {gone:?}"
            );
        }
    }

    #[test]
    fn facts_of_a_turn() {
        let f = |s, r, o: Option<i64>| Facts::of(s, r, o.map(Outaction));
        assert_eq!(f(200, Some(0), Some(9)), Facts::default());
        assert!(f(200, Some(-1), Some(9)).failed);
        assert!(f(502, None, None).failed, "a gateway 502");
        assert!(f(500, None, None).failed, "an upstream 500");
        assert!(!f(404, None, None).failed, "a 4xx is the client's");
        assert!(!f(200, None, Some(10)).any());
        let t = f(200, Some(0), Some(11));
        assert!(t.transferred && !t.failed);
        let pin = Pin {
            cluster: crate::ids::intern("c"),
            rule: crate::ids::intern("r"),
            generation: 1,
            created_at_ms: 0,
            ending: false,
            epoch: 0,
            failed: false,
            transferred: true,
        };
        assert!(!t.adds_to(&pin));
        assert!(f(503, None, None).adds_to(&pin));
    }
}
