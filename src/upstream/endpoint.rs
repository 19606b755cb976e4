//! One ODFS node of a cluster (`Endpoint`: its address, connections, health and in-flight
//! count, kept across reloads by URL) and the endpoint URL of the config (`EndpointUrl`; its
//! parsing and validation live with the other config values in `config::value`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// An endpoint URL: `http://host:port` or `https://host:port`, no path beyond `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub text: String,
    pub https: bool,
    pub authority: http::uri::Authority,
}

/// One ODFS node of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// `http://host:port` as written (or the embedded loopback address).
    pub url: Arc<str>,
    pub https: bool,
    /// Scheme and authority for building request URIs (parsed once).
    pub authority: Option<http::uri::Authority>,
    /// `host:port` to connect to (port 80 when the URL has none), for plain `http://`.
    pub connect_to: Arc<str>,
    /// Idle keep-alive connections (plain `http://` only), kept with the endpoint across
    /// reloads.
    pub conns: Arc<super::conn::Conns>,
    /// Idle raw connections for the dialog fast path (plain `http://` only).
    pub raw: Arc<super::raw::RawConns>,
    /// Rendezvous seed for `userid_hash`.
    pub seed: u64,
    pub(super) inflight: AtomicU32,
    /// The active check's verdict.
    pub(super) checked_healthy: AtomicBool,
    /// Active checks in a row that passed / failed (kept across reloads with the endpoint).
    pub(super) check_passes: AtomicU32,
    pub(super) check_failures: AtomicU32,
    pub(super) consecutive_failures: AtomicU32,
    /// Ejected until this many ms after the pool's epoch (0 = not ejected).
    pub(super) ejected_until: AtomicU64,
    pub(super) ejections_in_a_row: AtomicU32,
    /// Why the active check marked it down, for /admin/config.
    pub(super) check_reason: std::sync::Mutex<Option<String>>,
    /// Why live traffic ejected it, for /admin/config.
    pub(super) eject_reason: std::sync::Mutex<Option<String>>,
}

impl Endpoint {
    pub fn new(url: &str, https: bool) -> Self {
        let authority = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().cloned());
        let connect_to = match &authority {
            Some(a) => format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)),
            None => String::new(),
        };
        Endpoint {
            url: Arc::from(url),
            https,
            authority,
            connect_to: Arc::from(connect_to),
            conns: Arc::default(),
            raw: Arc::default(),
            seed: crate::router::split::seed("endpoint", url),
            inflight: AtomicU32::new(0),
            checked_healthy: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            check_reason: std::sync::Mutex::new(None),
            eject_reason: std::sync::Mutex::new(None),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Record the active check's verdict (and why, when it is down). Returns true when the
    /// verdict changed.
    pub fn set_checked_healthy(&self, healthy: bool) -> bool {
        let was = self.checked_healthy.swap(healthy, Ordering::Relaxed);
        was != healthy
    }

    /// Why the active check says the endpoint is down (`None` clears it).
    pub fn set_check_reason(&self, r: Option<String>) {
        if let Ok(mut g) = self.check_reason.lock() {
            *g = r;
        }
    }

    pub(super) fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    pub(super) fn set_eject_reason(&self, r: Option<String>) {
        if let Ok(mut g) = self.eject_reason.lock() {
            *g = r;
        }
    }

    /// Why the endpoint takes no new calls: the check's reason and the ejection's, joined.
    pub(super) fn reason(&self, now_ms: u64) -> Option<String> {
        let mut parts = Vec::new();
        if !self.checked_healthy() {
            let r = self.check_reason.lock().ok().and_then(|g| g.clone());
            parts.push(r.unwrap_or_else(|| "health check failed".into()));
        }
        if self.ejected(now_ms) {
            let r = self.eject_reason.lock().ok().and_then(|g| g.clone());
            parts.push(r.unwrap_or_else(|| "ejected".into()));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}
