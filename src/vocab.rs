//! The gateway's small vocabularies: each enum's `as_str` is the metric label or the JSON
//! value, written once here so that the enum, the metrics and the logs cannot drift.
//!
//! A leaf: imports nothing from the crate, so every stage (pins, metrics, respond, record) can
//! name these without importing each other.

/// Why a pin went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The call's hangup report was answered with outaction 10.
    Hangup,
    /// No turn for `idle_ttl`.
    Idle,
    /// `DELETE /admin/pins/{userid}`.
    Admin,
    /// An ended call's `end_grace` passed.
    EndGrace,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Hangup => "hangup",
            ReleaseReason::Idle => "idle",
            ReleaseReason::Admin => "admin",
            ReleaseReason::EndGrace => "end_grace",
        }
    }
}

/// How a turn found its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// A new call routed by the rules.
    New,
    /// A turn that followed an existing pin.
    Kept,
    /// A later turn with no pin, routed by the rules (`orphan_turns: route`).
    Orphan,
}

impl PinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::New => "new",
            PinKind::Kept => "kept",
            PinKind::Orphan => "orphan",
        }
    }
}

/// The `errorCode` of an answer the gateway makes itself (spec §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadUrl,
    BadJson,
    MissingUserid,
    BadUserid,
    MissingInaction,
    BadInaction,
    Method,
    OrphanTurn,
    BodyTooLarge,
    Upstream,
    NoUpstream,
    UpstreamTimeout,
    /// The gateway's own shortage (descriptors): never blamed on an upstream.
    LocalResources,
    /// A request a careful proxy refuses outright (no `Host` or two on HTTP/1.1).
    BadRequest,
}

impl ErrorCode {
    /// Every code, in the order of the §3 table.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadUrl,
        ErrorCode::BadJson,
        ErrorCode::MissingUserid,
        ErrorCode::BadUserid,
        ErrorCode::MissingInaction,
        ErrorCode::BadInaction,
        ErrorCode::Method,
        ErrorCode::OrphanTurn,
        ErrorCode::BodyTooLarge,
        ErrorCode::Upstream,
        ErrorCode::NoUpstream,
        ErrorCode::UpstreamTimeout,
        ErrorCode::LocalResources,
        ErrorCode::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUrl => "GW.BAD_URL",
            ErrorCode::BadJson => "GW.BAD_JSON",
            ErrorCode::MissingUserid => "GW.MISSING_USERID",
            ErrorCode::BadUserid => "GW.BAD_USERID",
            ErrorCode::MissingInaction => "GW.MISSING_INACTION",
            ErrorCode::BadInaction => "GW.BAD_INACTION",
            ErrorCode::Method => "GW.METHOD",
            ErrorCode::OrphanTurn => "GW.ORPHAN_TURN",
            ErrorCode::BodyTooLarge => "GW.BODY_TOO_LARGE",
            ErrorCode::Upstream => "GW.UPSTREAM",
            ErrorCode::NoUpstream => "GW.NO_UPSTREAM",
            ErrorCode::UpstreamTimeout => "GW.UPSTREAM_TIMEOUT",
            ErrorCode::LocalResources => "GW.LOCAL_RESOURCES",
            ErrorCode::BadRequest => "GW.BAD_REQUEST",
        }
    }
}

/// The HTTP/1.1 engine for plain dialog connections (`engine:` in routes.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The dialog fast path on httparse; whatever it does not take goes to hyper.
    #[default]
    Fast,
    /// hyper serves every connection.
    Hyper,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Fast => "fast",
            Engine::Hyper => "hyper",
        }
    }
}

/// How a call ended (spec §11): exactly one per call, on the cluster it was pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A turn got a gateway error, an upstream 5xx, or an answer with `ret` other than 0.
    Failed,
    /// Otherwise, the call received outaction 11 (handed to an agent or another number).
    Transferred,
    /// Otherwise, the call ended with outaction 10.
    Completed,
    /// The pin expired idle without any of the above.
    Abandoned,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 4] = [
        CallOutcome::Failed,
        CallOutcome::Transferred,
        CallOutcome::Completed,
        CallOutcome::Abandoned,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Failed => "failed",
            CallOutcome::Transferred => "transferred",
            CallOutcome::Completed => "completed",
            CallOutcome::Abandoned => "abandoned",
        }
    }

    /// The position in [`CallOutcome::ALL`] (for per-outcome arrays of counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The status of a progressive rollout (spec §11): the `state` label of
/// `graygate_rollout_state` and the `status` of `/admin/rollouts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    Paused,
    Aborted,
    Completed,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 4] = [
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::Aborted,
        RolloutStatus::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::Completed => "completed",
        }
    }

    /// The position in [`RolloutStatus::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The status at `i` in [`RolloutStatus::ALL`] (`Running` for anything else).
    pub fn from_index(i: usize) -> RolloutStatus {
        RolloutStatus::ALL
            .get(i)
            .copied()
            .unwrap_or(RolloutStatus::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_the_spec_table() {
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "GW.BAD_URL",
                "GW.BAD_JSON",
                "GW.MISSING_USERID",
                "GW.BAD_USERID",
                "GW.MISSING_INACTION",
                "GW.BAD_INACTION",
                "GW.METHOD",
                "GW.ORPHAN_TURN",
                "GW.BODY_TOO_LARGE",
                "GW.UPSTREAM",
                "GW.NO_UPSTREAM",
                "GW.UPSTREAM_TIMEOUT",
                "GW.LOCAL_RESOURCES",
                "GW.BAD_REQUEST",
            ]
        );
    }
}
