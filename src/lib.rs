//! graygate: a gray-routing (canary) gateway for the ODFS dialog interfaces.
//!
//! # Layout
//!
//! Every dialog turn travels one way:
//!
//! ```text
//! listener ──► probe ──► decide ──────────► upstream ──► answer ──► client
//!  (TCP/TLS,    (vdn from   (pin? follow it;    (cluster pool,  (read outaction:
//!   hyper h1/h2) URL; userid, else rules on the   endpoint pick,  create / keep /
//!                inaction,   request's snapshot) timeouts)       release the pin)
//!                fields)                                         metrics + one log line
//! ```
//!
//! The configuration travels a side path, never through a request:
//! `routes.yaml → config::raw → config::compile → Snapshot → ArcSwap` (see `config::reload`).
//!
//! - [`protocol`]: ODFS vocabulary. [`located`]: `file:line:column` errors.
//! - [`config`]: the side path. [`snapshot`]: the compiled config of one generation.
//! - [`probe`], [`router`], [`pins`], [`upstream`]: the stages of a turn; [`proxy`] runs them
//!   in order; [`respond`] turns errors into the answers of spec §3.
//! - [`record`], [`metrics`], [`shares`], [`telemetry`], [`trace`]: what a turn leaves behind.
//! - [`listener`], [`admin`], [`lifecycle`], [`app`]: sockets, the admin surface, shutdown,
//!   and the composition root. [`history`]: the audit trail of applied and refused configs and
//!   rollout decisions. [`backend`]: the reference ODFS, a separate wing.
//! - [`cli`]: the commands.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod backend;
pub mod civil;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fdlimit;
pub mod history;
pub mod ids;
pub mod lifecycle;
pub mod listener;
pub mod located;
pub mod metrics;
pub mod pins;
pub mod probe;
#[cfg(target_os = "linux")]
pub mod process_metrics;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod respond;
pub mod rollout;
pub mod router;
pub mod shares;
pub mod snapshot;
pub mod telemetry;
pub mod tlsfiles;
pub mod trace;
pub mod upstream;
pub mod vocab;
