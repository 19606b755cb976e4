//! The reference ODFS dialog backend (spec §7): the token API, V1 and V2 dialog paths, a call
//! instance per userid, and dialog flows from YAML. It shares only `protocol` and `located` with
//! the gateway, which talks to it over loopback HTTP like to any upstream.
//!
//! Map of the tree:
//! - `mod.rs` — [`BackendOptions`], [`Backend`] (shared state) and [`BackendError`];
//! - `server.rs` — accept loop and request handling (routes, body limits, envelope checks);
//! - `token.rs` — the token API and `auth_token` checks (JWT HS256);
//! - `calls.rs` — the call store (sharded, idle expiry, sweeper);
//! - `flow/` — flow files (`raw` → `compile` → `Flows`) and the `engine` that steps a call;
//! - `answers.rs` — answer bodies, error bodies, headers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::located::LocatedErrors;

pub mod answers;
pub mod calls;
pub mod flow;
mod server;
pub mod token;

pub use server::MAX_BODY;

use calls::CallStore;
use flow::Flows;
use token::TokenKeys;

/// How to build a [`Backend`].
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Reported in `x-odfs-instance` on every answer.
    pub label: String,
    /// The flow file; `None` = the built-in demo flow.
    pub flows: Option<PathBuf>,
    /// The tenants file; `None` = accept any token.
    pub tenants: Option<PathBuf>,
    /// Calls with no turn for this long are forgotten.
    pub idle_timeout: Duration,
    /// Consecutive `sys_err` turns after which the call is released (outaction 10, reason 1).
    pub sys_err_cap: u32,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            label: "odfs".to_string(),
            flows: None,
            tenants: None,
            idle_timeout: Duration::from_secs(600),
            sys_err_cap: 3,
        }
    }
}

/// Why a backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The flow file is unreadable or invalid; one `file:line:column: message` per line.
    #[error("{0}")]
    Flows(LocatedErrors),
    /// The tenants file is unreadable or invalid.
    #[error("{0}")]
    Tenants(LocatedErrors),
    #[error("invalid backend label `{0}`: it must be a valid HTTP header value")]
    Label(String),
}

impl BackendError {
    /// The located errors, when the error is about a file.
    pub fn located(&self) -> Option<&LocatedErrors> {
        match self {
            BackendError::Flows(e) | BackendError::Tenants(e) => Some(e),
            BackendError::Label(_) => None,
        }
    }
}

/// One backend: compiled flows, token keys and one call store, shared by every listener it
/// serves (so N listeners behave like the N nodes of one ODFS cluster).
#[derive(Debug)]
pub struct Backend {
    label: String,
    instance: HeaderValue,
    flows: Flows,
    keys: TokenKeys,
    calls: Arc<CallStore>,
    sys_err_cap: u32,
    sweeper_started: AtomicBool,
}

impl Backend {
    /// Load and validate flows/tenants; errors carry file:line:column.
    pub fn new(opts: BackendOptions) -> Result<Arc<Backend>, BackendError> {
        let instance = HeaderValue::from_str(&opts.label)
            .ok()
            .filter(|_| !opts.label.is_empty())
            .ok_or_else(|| BackendError::Label(opts.label.clone()))?;
        let flows = match &opts.flows {
            Some(p) => Flows::load(p),
            None => Flows::demo(),
        }
        .map_err(BackendError::Flows)?;
        let keys = match &opts.tenants {
            Some(p) => TokenKeys::load(p).map_err(BackendError::Tenants)?,
            None => TokenKeys::open(),
        };
        Ok(Arc::new(Backend {
            label: opts.label,
            instance,
            flows,
            keys,
            calls: Arc::new(CallStore::new(opts.idle_timeout)),
            sys_err_cap: opts.sys_err_cap.max(1),
            sweeper_started: AtomicBool::new(false),
        }))
    }

    /// Serve HTTP/1.1 (and h2c via hyper-util auto) on an already-bound listener until
    /// `shutdown` resolves. Several `serve` calls on one `Arc<Backend>` share one call store.
    /// The first call also starts the idle-expiry sweeper.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.spawn_sweeper();
        server::serve(self, listener, shutdown).await
    }

    /// Spawn the idle-expiry sweeper of the call store, once per backend (later calls do
    /// nothing). It stops by itself when the backend is dropped. Needs a tokio runtime.
    pub fn spawn_sweeper(&self) {
        if !self.sweeper_started.swap(true, Ordering::SeqCst) {
            calls::spawn_sweeper(Arc::downgrade(&self.calls));
        }
    }

    /// The label reported in `x-odfs-instance`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Calls currently held (including idle ones not yet swept).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// The access codes of the loaded flows.
    pub fn flow_codes(&self) -> Vec<&str> {
        self.flows.flows.iter().map(|f| f.code.as_str()).collect()
    }
}
