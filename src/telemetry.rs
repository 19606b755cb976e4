//! Logging: the tracing subscriber (text or JSON) and the one access-log line per turn (spec §8).
//!
//! Writes go through a non-blocking, bounded writer thread: a slow terminal or log collector
//! must never stall a dialog turn. When the queue is full, lines are dropped (and counted by
//! tracing-appender) rather than blocking the runtime.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::protocol::Masked;
use crate::record::TurnRecord;

/// Keep this alive for the life of the process: dropping it flushes the log queue.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Install the global subscriber. `json`: `None` = JSON unless stderr is a terminal.
/// Filtering follows `RUST_LOG` (default `info`).
pub fn init(json: Option<bool>) -> Option<LogGuard> {
    let json = json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        .finish(std::io::stderr());
    let result = if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_writer(writer))
            .try_init()
    };
    result.ok().map(|_| guard)
}

/// The access-log line of one turn.
pub fn access_log(rec: &TurnRecord) {
    if !tracing::enabled!(target: "graygate::access", tracing::Level::INFO) {
        return;
    }
    let userid = rec.userid.as_deref().map(Masked);
    tracing::info!(
        target: "graygate::access",
        request_id = %rec.request_id,
        method = %rec.method,
        path = %rec.path,
        vdn = rec.vdn,
        userid = userid.map(tracing::field::display),
        inaction = rec.inaction.map(|i| i.0),
        rule = rec.rule.as_deref(),
        cluster = rec.cluster.as_deref(),
        endpoint = rec.endpoint.as_deref(),
        pin = rec.pin,
        status = rec.status,
        outaction = rec.outaction.map(|o| o.0),
        error = rec.error_code,
        fallback_from = rec.fallback_from.as_deref(),
        total_us = rec.total.as_micros() as u64,
        upstream_us = rec.upstream.map(|d| d.as_micros() as u64),
        "turn"
    );
}
