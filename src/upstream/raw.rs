//! Idle keep-alive TCP connections to one plain `http://` endpoint, for the dialog fast path
//! (which writes and reads HTTP/1.1 bytes itself, without a hyper connection task).
//!
//! A bounded stack per endpoint, most recently used first; the lock is held for a push or a
//! pop, never across I/O. A connection is given back only after its answer was read to the
//! last byte with nothing after it; before one is used again a non-blocking read checks that
//! the server has not closed it (or sent bytes nobody asked for) while it was idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::UpstreamError;
use super::conn::{IDLE_TIMEOUT, MAX_IDLE};
use super::gate::ConnectGate;

/// The idle raw connections of one endpoint.
#[derive(Default)]
pub struct RawConns {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    /// Connects in progress and the turns waiting for one.
    gate: ConnectGate,
}

impl std::fmt::Debug for RawConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConns")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl RawConns {
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// An idle connection, or a freshly opened one (by `deadline` and within
    /// `connect_timeout`), or (when [`MAX_CONNECTING`](super::gate::MAX_CONNECTING) connects are
    /// under way) the first of those to become free. `Ok((s, true))`: the connection was idle
    /// (the server may have closed it under us); `Ok((s, false))`: it is new.
    pub async fn checkout(
        &self,
        endpoint: &Arc<str>,
        authority: &str,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<(TcpStream, bool), UpstreamError> {
        let by = deadline.min(Instant::now() + connect_timeout);
        self.gate
            .checkout(
                endpoint,
                by,
                connect_timeout,
                || self.take(),
                || super::conn::open_tcp(endpoint, authority, by, connect_timeout),
            )
            .await
    }

    /// The most recently used idle connection that is still open and quiet.
    fn take(&self) -> Option<TcpStream> {
        loop {
            let (s, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                // Nothing to read: open and idle, as it should be.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(s),
                // Closed, reset, or bytes nobody asked for: not usable.
                _ => continue,
            }
        }
    }

    /// Give back a connection whose answer was read to its end.
    pub fn put(&self, s: TcpStream) {
        let Ok(mut v) = self.idle.lock() else {
            return;
        };
        if v.len() >= MAX_IDLE {
            v.remove(0);
        }
        v.push((s, Instant::now()));
        drop(v);
        self.gate.returned();
    }
}
