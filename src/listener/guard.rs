//! What one client connection is doing, as the listener's watchdog sees it: requests in
//! flight, when it went idle, whether the client is taking what it is sent, and bytes of a
//! next request head. Shared by the socket wrapper ([`Guarded`]), the service (one
//! [`InFlight`] per request) and the response bodies ([`Tracked`]); read by the watchdog in
//! `serve_conn`, which turns it into a [`Verdict`] a few times per smallest limit.
//!
//! Every field is an atomic except the table of response bodies, a per-connection mutex (one
//! connection's own tasks are the only ones that touch it; at most `max_concurrent_streams`
//! entries).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A free slot of the body table.
const FREE: u64 = u64::MAX;

/// The limits one connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Zero: none.
    pub max_connection_age: Duration,
    pub send_timeout: Duration,
}

impl ConnLimits {
    /// How often the watchdog looks: a quarter of the smallest limit, within 10ms..1s.
    pub fn period(&self) -> Duration {
        let mut m = self
            .header_read_timeout
            .min(self.idle_timeout)
            .min(self.send_timeout);
        if !self.max_connection_age.is_zero() {
            m = m.min(self.max_connection_age);
        }
        (m / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What the watchdog should do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// A response (or a write) has waited on the client for `send_timeout`: close at once.
    SendTimeout,
    /// An HTTP/1 request head has been arriving for `header_read_timeout`: close at once.
    HeaderTimeout,
    /// No request in flight for `idle_timeout`: close gracefully.
    Idle,
    /// Older than `max_connection_age`: close gracefully.
    Aged,
}

pub struct ConnState {
    born: Instant,
    /// Requests whose response has not ended (or been dropped).
    inflight: AtomicUsize,
    /// Requests seen.
    requests: AtomicU64,
    /// ms since `born` when `inflight` last went to 0.
    idle_since: AtomicU64,
    /// ms since `born` + 1 of the first byte read while idle (a next head arriving); 0 = none.
    head_since: AtomicU64,
    /// ms since `born` + 1 when a write went pending and has not completed since; 0 = none.
    write_blocked: AtomicU64,
    /// The connection speaks HTTP/2 (its reads while idle are PINGs and window updates, not a
    /// request head).
    h2: AtomicBool,
    /// The client closed its side (a read returned 0 bytes).
    read_eof: AtomicBool,
    /// Close without draining what the client still sends (it is not reading anyway).
    abort: AtomicBool,
    /// Per open response body: ms since `born` + 1 since it has been waiting for the client
    /// to take it, 0 while it waits on its own source, `FREE` for an unused slot.
    bodies: Mutex<Vec<u64>>,
    /// Asks the watchdog to close this connection now (the admin listener's eviction).
    pub kill: Notify,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            born: Instant::now(),
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            read_eof: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            bodies: Mutex::new(Vec::new()),
            kill: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// A request's head has arrived.
    pub fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// No request in flight: since when (ms on this connection's clock).
    pub fn idle_for(&self, now_ms: u64) -> Option<u64> {
        (self.inflight.load(Ordering::Acquire) == 0)
            .then(|| now_ms.saturating_sub(self.idle_since.load(Ordering::Relaxed)))
    }

    /// Idle for how long now, if idle (for the admin listener's eviction).
    pub fn idle_now(&self) -> Option<u64> {
        self.idle_for(self.now_ms())
    }

    pub fn abort_on_close(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    pub fn verdict(&self, l: &ConnLimits) -> Verdict {
        let now = self.now_ms();
        let over = |since_plus_one: u64, limit: Duration| {
            since_plus_one != 0
                && since_plus_one != FREE
                && now.saturating_sub(since_plus_one - 1) >= limit.as_millis() as u64
        };
        if over(self.write_blocked.load(Ordering::Relaxed), l.send_timeout) {
            return Verdict::SendTimeout;
        }
        if let Ok(b) = self.bodies.lock() {
            if b.iter().any(|&s| over(s, l.send_timeout)) {
                return Verdict::SendTimeout;
            }
        }
        if let Some(idle) = self.idle_for(now) {
            if self.requests() > 0 {
                if !self.h2.load(Ordering::Relaxed)
                    && over(
                        self.head_since.load(Ordering::Relaxed),
                        l.header_read_timeout,
                    )
                {
                    return Verdict::HeaderTimeout;
                }
                if idle >= l.idle_timeout.as_millis() as u64 {
                    return Verdict::Idle;
                }
            }
        }
        if !l.max_connection_age.is_zero() && now >= l.max_connection_age.as_millis() as u64 {
            return Verdict::Aged;
        }
        Verdict::Fine
    }

    fn open_body(&self) -> usize {
        let now = self.now_ms() + 1;
        let Ok(mut b) = self.bodies.lock() else {
            return usize::MAX;
        };
        if let Some(i) = b.iter().position(|&s| s == FREE) {
            b[i] = now;
            return i;
        }
        b.push(now);
        b.len() - 1
    }

    fn set_body(&self, slot: usize, v: u64) {
        if let Ok(mut b) = self.bodies.lock() {
            if let Some(s) = b.get_mut(slot) {
                *s = v;
            }
        }
    }
}

/// One request in flight; dropped when its response has ended or was abandoned.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Relaxed);
        s.head_since.store(0, Ordering::Relaxed);
        s.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that tells its connection whether it waits on the client: from when it is
/// handed over (or yields a frame) until it is polled again, the client has not taken it.
pub struct Tracked<B> {
    inner: B,
    state: Arc<ConnState>,
    slot: usize,
    _inflight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, inflight: InFlight) -> Self {
        let state = inflight.0.clone();
        let slot = state.open_body();
        Tracked {
            inner,
            state,
            slot,
            _inflight: inflight,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.state.set_body(self.slot, FREE);
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.state.set_body(this.slot, 0);
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) => this.state.set_body(this.slot, this.state.now_ms() + 1),
            Poll::Ready(_) => this.state.set_body(this.slot, FREE),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket with the connection's bookkeeping: write stalls, reads while idle, the
/// client's end of stream. When dropped it hands the socket back for a lingering close.
pub struct Guarded {
    stream: Option<TcpStream>,
    state: Arc<ConnState>,
    back: Option<tokio::sync::oneshot::Sender<TcpStream>>,
}

impl Guarded {
    pub fn new(
        stream: TcpStream,
        state: Arc<ConnState>,
    ) -> (Self, tokio::sync::oneshot::Receiver<TcpStream>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Guarded {
                stream: Some(stream),
                state,
                back: Some(tx),
            },
            rx,
        )
    }

    fn io(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn wrote<T>(&self, r: &Poll<io::Result<T>>) {
        let s = &self.state;
        match r {
            Poll::Pending => {
                if s.write_blocked.load(Ordering::Relaxed) == 0 {
                    s.write_blocked.store(s.now_ms() + 1, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                if s.write_blocked.load(Ordering::Relaxed) != 0 {
                    s.write_blocked.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let (Some(tx), Some(s)) = (self.back.take(), self.stream.take()) {
            let _ = tx.send(s);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match this.io() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Poll::Ready(Ok(())) = r {
            let s = &this.state;
            if buf.filled().len() == before {
                s.read_eof.store(true, Ordering::Relaxed);
            } else if s.inflight.load(Ordering::Acquire) == 0
                && s.head_since.load(Ordering::Relaxed) == 0
            {
                s.head_since.store(s.now_ms() + 1, Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.io() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.io() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = match this.io() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.wrote(&r);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Most bytes read and thrown away after the gateway's last answer on a connection.
pub const LINGER_BYTES: usize = 256 * 1024;
/// Longest a closing connection keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// A lingering close (as nginx's `lingering_close`): half-close, then read and drop what the
/// client still sends, at most [`LINGER_BYTES`] for at most [`LINGER_TIME`], then close. A
/// client that was still sending its body when the gateway answered (413, 400) then reads the
/// answer instead of a connection reset. Skipped when the client has already closed its side,
/// or when the connection is cut because the client does not read.
pub async fn linger(state: &ConnState, stream: Option<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut s) = stream else { return };
    if state.read_eof.load(Ordering::Relaxed) || state.abort.load(Ordering::Relaxed) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), s.shutdown()).await;
    let mut buf = [0u8; 8192];
    let mut left = LINGER_BYTES;
    let end = Instant::now() + LINGER_TIME;
    while left > 0 {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}
