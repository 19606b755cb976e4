//! What an answer does to a pin: a pure function of the turn, the pin kind and the answer.
//!
//! - A new call (or a routed orphan) is pinned on its first 2xx answer.
//! - `outaction` 10 answering `input=hangup` ends the call: the pin goes at once.
//! - Any other `outaction` 10 (the ODFS ordering a hang-up) keeps the pin for `end_grace`, so
//!   the caller's final hangup report still reaches the same cluster.
//! - Every other answer leaves the pin as it is (the lookup already refreshed it).

use crate::protocol::Outaction;
use crate::vocab::PinKind;

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
}
