//! Idle keep-alive TCP connections to one plain `http://` endpoint, for the dialog fast path
//! (which writes and reads HTTP/1.1 bytes itself, without a hyper connection task).
//!
//! A bounded stack per endpoint, most recently used first; the lock is held for a push or a
//! pop, never across I/O. A connection is given back only after its answer was read to the
//! last byte with nothing after it; before one is used again a non-blocking read checks that
//! the server has not closed it (or sent bytes nobody asked for) while it was idle.

use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::UpstreamError;
use super::conn::{IDLE_TIMEOUT, MAX_IDLE};

/// The idle raw connections of one endpoint.
#[derive(Default)]
pub struct RawConns {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
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

    /// The most recently used idle connection that is still open and quiet.
    pub fn take(&self) -> Option<TcpStream> {
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
    }
}

/// Open a connection to `authority` within `connect_timeout` (and `deadline`).
pub async fn connect(
    endpoint: &std::sync::Arc<str>,
    authority: &str,
    connect_timeout: Duration,
    deadline: Instant,
) -> Result<TcpStream, UpstreamError> {
    let by = deadline.min(Instant::now() + connect_timeout);
    super::conn::open_tcp(endpoint, authority, by, connect_timeout).await
}
