//! Sockets and HTTP connections: accept, cap, time out, serve (HTTP/1.1 and h2c, or TLS with
//! ALPN h2/http1.1), drain on shutdown. Generic over the service so the dialog and admin
//! listeners share it. Every connection is bounded in time; every table is bounded in size.
//!
//! - `max_connections`: a semaphore; a connection over the cap is closed at accept and counted
//!   (`graygate_rejected_connections_total{reason="max_connections"}`), never queued. With
//!   `evict_idle_at_cap` (the admin listener) the longest-idle connection is closed instead, so
//!   a crowd of idle connections cannot keep probes out.
//! - `max_connections_per_ip`: open connections per client address (a table with one entry
//!   per address that has a connection open); over it, closed at accept (`reason="per_ip"`).
//! - One watchdog per connection (in `serve_conn`, over [`guard::ConnState`]) wakes a few
//!   times per smallest limit and applies:
//!   - `header_read_timeout`: the first request's head (and TLS handshake) must arrive within
//!     it from accept; a later HTTP/1 head within it from its first byte (`header_timeout`);
//!   - `idle_timeout`: no request in flight for this long, HTTP/1 or HTTP/2 (PINGs do not
//!     count): closed gracefully (`idle`);
//!   - `send_timeout`: a response body, or a socket write, waiting on the client this long:
//!     closed at once, dropping the response and so its upstream connection (`send_timeout`);
//!   - `max_connection_age`: asked to close gracefully (GOAWAY / `Connection: close`), then
//!     dropped after `grace`.
//! - Closing lingers (`guard::linger`): half-close, drain what the client still sends (bounded
//!   in bytes and time), then close, so an early answer (413, 400) is not lost to a reset.
//! - `listen_proxy_protocol`: the PROXY header is read first, within the same
//!   `header_read_timeout`, and its source address becomes the connection's peer
//!   (`proxy_protocol.rs`; `max_connections_per_ip` then counts that address); a connection
//!   without a valid one is closed and counted (`reason="proxy_protocol"`).
//! - Shutdown: stop accepting, ask every connection to finish its in-flight requests
//!   (graceful), and give them `grace` before returning.
//!
//! Another engine serving the dialog port (e.g. an HTTP/1 fast path) reads the same
//! `snapshot::Limits` and should hold its connections to the same [`guard::ConnLimits`].

pub mod guard;
pub mod prefixed;
pub mod proxy_protocol;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;
use guard::{ConnLimits, ConnState, Guarded, Tracked, Verdict};

/// Connection-level settings.
#[derive(Clone)]
pub struct ListenOptions {
    /// `dialog` or `admin`: the `listener` label.
    pub name: &'static str,
    pub max_connections: usize,
    /// Spare descriptors held open and given up, one at a time, to accept a connection when
    /// the process has run out (`EMFILE`); retaken when descriptors are free again.
    pub reserve_fds: usize,
    /// 0 = unbounded.
    pub max_connections_per_ip: usize,
    pub limits: ConnLimits,
    /// At the connection cap, close the longest-idle connection to make room for the new one
    /// instead of refusing it (the admin listener: probes must get in past idle hoarders).
    pub evict_idle_at_cap: bool,
    /// How long in-flight requests may take to finish after shutdown begins (and after a
    /// connection past `max_connection_age` was asked to close).
    pub grace: Duration,
    pub tls: Option<Arc<tls::TlsAcceptor>>,
    /// Every connection starts with a PROXY protocol header; its source address is the peer.
    pub proxy_protocol: bool,
    /// An engine that serves plain-TCP connections ahead of hyper (the dialog fast path).
    pub front: Option<Arc<dyn Front>>,
}

/// A plain-TCP connection as an engine ahead of hyper gets it: the socket wrapped with the
/// connection's bookkeeping (so the same watchdog holds it to the same [`ConnLimits`]), and
/// the watchdog's request to close gracefully.
pub struct FrontConn {
    pub stream: Guarded,
    pub peer: SocketAddr,
    /// [`ConnState::begin`] when a request's head has arrived, the [`guard::InFlight`] held
    /// until its answer has been written.
    pub state: Arc<ConnState>,
    pub close: Arc<CloseAsk>,
}

/// What an engine ahead of hyper gives back: the stream and the bytes it read and did not
/// serve, for hyper to read the connection from there as if from the start.
pub struct Handover {
    pub stream: Guarded,
    pub read: bytes::BytesMut,
}

/// An engine that serves a plain-TCP connection as long as it fully understands what comes,
/// and hands the rest of it to hyper ([`Handover`]); `None` when it closed the connection.
/// Limits are the watchdog's: it drops the future to cut the connection, and asks through
/// [`FrontConn::close`] for a graceful close (idle, aged, shutdown).
pub trait Front: Send + Sync + 'static {
    fn serve(&self, conn: FrontConn) -> Pin<Box<dyn Future<Output = Option<Handover>> + Send>>;
}

/// The watchdog's request that a connection close gracefully: an idle one at once, a busy one
/// after the answer in flight (with `Connection: close`).
#[derive(Default)]
pub struct CloseAsk {
    asked: AtomicBool,
    notify: Notify,
}

impl CloseAsk {
    pub fn ask(&self) {
        self.asked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// Resolves once a close has been asked for.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_asked() {
                return;
            }
            n.await;
        }
    }
}

/// Open connections per client address, for `max_connections_per_ip`. One entry per address
/// with at least one open connection, so the table is bounded by `max_connections`.
struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut m = self.counts.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.counts.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

/// Counters of the cuts, by reason.
#[derive(Clone)]
struct Cuts {
    header_timeout: prometheus::IntCounter,
    idle: prometheus::IntCounter,
    send_timeout: prometheus::IntCounter,
    tls: prometheus::IntCounter,
}

/// Serve `listener` until `shutdown`, then drain. `make` builds the per-request service from
/// the peer address and whether the connection is TLS.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    opts: ListenOptions,
    metrics: Metrics,
    shutdown: Shutdown,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr, bool) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let gauge = metrics.connections.with_label_values(&[opts.name]);
    let rejected = |r: &str| metrics.rejected_connections.with_label_values(&[r]);
    let rejected_cap = rejected("max_connections");
    let rejected_ip = rejected("per_ip");
    let cuts = Cuts {
        header_timeout: rejected("header_timeout"),
        idle: rejected("idle"),
        send_timeout: rejected("send_timeout"),
        tls: rejected("tls"),
    };
    let per_ip = (opts.max_connections_per_ip > 0).then(|| {
        Arc::new(PerIp {
            max: opts.max_connections_per_ip,
            counts: Mutex::new(HashMap::new()),
        })
    });
    // Live connections, for eviction at the cap (admin listener only).
    let mut open: Vec<Weak<ConnState>> = Vec::new();
    let rejected_pp = opts.proxy_protocol.then(|| rejected("proxy_protocol"));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header timer: the watchdog times request heads itself (from their first byte,
    // so that an idle keep-alive connection is bounded by idle_timeout, not by it).
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let tasks = tokio_util_tasks::Tracker::default();
    let mut spares = Spares::new(opts.reserve_fds);
    let mut accept_errors = AcceptErrors::default();
    let mut retake = true;
    loop {
        if retake {
            spares.refill();
        }
        retake = true;
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                let local = crate::fdlimit::is_local(&e);
                if local && spares.give_one() {
                    // A spare descriptor is free now: take the waiting connection with it
                    // (not retaking the spare first).
                    retake = false;
                    continue;
                }
                accept_errors.log(opts.name, &e, local);
                // EMFILE and friends: back off briefly instead of spinning (the connection
                // waits in the kernel's backlog).
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip_slot = match per_ip.as_ref().filter(|_| !opts.proxy_protocol) {
            Some(t) => match t.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    rejected_ip.inc();
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if opts.evict_idle_at_cap => {
                open.retain(|w| w.strong_count() > 0);
                let victim = open
                    .iter()
                    .filter_map(|w| w.upgrade())
                    .filter_map(|c| c.idle_now().map(|idle| (idle, c)))
                    .max_by_key(|(idle, _)| *idle);
                let Some((_, victim)) = victim else {
                    rejected_cap.inc();
                    continue;
                };
                victim.kill.notify_one();
                // The victim's task ends at its next poll; wait briefly for its slot.
                match tokio::time::timeout(
                    Duration::from_millis(500),
                    permits.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        rejected_cap.inc();
                        continue;
                    }
                }
            }
            Err(_) => {
                rejected_cap.inc();
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        gauge.inc();
        let state = ConnState::new();
        if opts.evict_idle_at_cap {
            if open.len() >= 2 * opts.max_connections {
                open.retain(|w| w.strong_count() > 0);
            }
            open.push(Arc::downgrade(&state));
        }
        let gauge = gauge.clone();
        let builder = builder.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let tls = opts.tls.clone();
        let front = opts.front.clone();
        let cuts = cuts.clone();
        let rejected_pp = rejected_pp.clone();
        let (per_ip, rejected_ip) = (per_ip.clone(), rejected_ip.clone());
        let limits = opts.limits;
        let grace = opts.grace;
        let first_by = tokio::time::Instant::now() + limits.header_read_timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let (mut stream, mut peer) = (stream, peer);
            let mut ip_slot = ip_slot;
            if let Some(rejected_pp) = &rejected_pp {
                match proxy_protocol::accept(
                    &mut stream,
                    peer,
                    first_by,
                    rejected_pp,
                    &cuts.header_timeout,
                )
                .await
                {
                    Some(client) => peer = client,
                    None => {
                        gauge.dec();
                        return;
                    }
                }
                // Behind a PROXY-protocol balancer the client's address is known only now.
                if let Some(t) = &per_ip {
                    match t.admit(peer.ip()) {
                        Some(slot) => ip_slot = Some(slot),
                        None => {
                            rejected_ip.inc();
                            gauge.dec();
                            return;
                        }
                    }
                }
            }
            let _ip_slot = ip_slot;
            let https = tls.is_some();
            let st = state.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let inflight = st.begin(req.version());
                let h = handler.clone();
                async move {
                    let resp = h(req, peer, https).await;
                    Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, inflight)))
                }
            });
            let (io, back) = Guarded::new(stream, state.clone());
            let watch = Watch {
                first_by,
                limits,
                grace,
                state: state.clone(),
                cuts: cuts.clone(),
            };
            match tls {
                Some(acceptor) => {
                    let hs = tokio::time::timeout_at(first_by, acceptor.accept(io)).await;
                    match hs {
                        Ok(Ok(tls_stream)) => {
                            let io = TokioIo::new(tls_stream);
                            serve_conn(&builder, io, svc, &shutdown, &watch).await;
                        }
                        Ok(Err(e)) => {
                            cuts.tls.inc();
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            cuts.header_timeout.inc();
                            tracing::debug!(peer = %peer, "TLS handshake not done within header_read_timeout");
                        }
                    }
                }
                None => match front {
                    Some(front) => {
                        let close = Arc::new(CloseAsk::default());
                        let fut = front.serve(FrontConn {
                            stream: io,
                            peer,
                            state: state.clone(),
                            close: close.clone(),
                        });
                        tokio::pin!(fut);
                        let ask = |_: Pin<&mut _>| close.ask();
                        if let Some(Some(h)) = watchdog(fut, ask, &shutdown, &watch).await {
                            // hyper reads the connection from the bytes already read on.
                            let io = TokioIo::new(prefixed::Prefixed::new(h.read, h.stream));
                            serve_conn(&builder, io, svc, &shutdown, &watch).await;
                        }
                    }
                    None => serve_conn(&builder, TokioIo::new(io), svc, &shutdown, &watch).await,
                },
            }
            // Every part of the connection is gone by now, the socket wrapper too.
            guard::linger(&state, back.await.ok()).await;
            gauge.dec();
        });
    }
    drop(listener);
    if !tasks.wait_idle(opts.grace).await {
        tracing::warn!(
            listener = opts.name,
            "grace period over; closing the connections that are left"
        );
    }
}

/// Spare descriptors (`/dev/null` opened read-only) a listener can give up to accept.
struct Spares {
    want: usize,
    held: Vec<std::fs::File>,
}

impl Spares {
    fn new(want: usize) -> Spares {
        let mut s = Spares {
            want,
            held: Vec::with_capacity(want),
        };
        s.refill();
        s
    }

    /// Retake spares while descriptors are available (cheap when none is missing).
    fn refill(&mut self) {
        while self.held.len() < self.want {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.held.push(f),
                Err(_) => break,
            }
        }
    }

    /// Close one spare; false when none is left.
    fn give_one(&mut self) -> bool {
        self.held.pop().is_some()
    }
}

/// Accept errors, logged at most once a second with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl AcceptErrors {
    fn log(&mut self, listener: &str, e: &std::io::Error, local: bool) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let n = std::mem::take(&mut self.since);
        self.last = Some(tokio::time::Instant::now());
        if local {
            tracing::warn!(listener, error = %e, errors = n, "accept failed: this process is out of descriptors or memory (backing off)");
        } else {
            tracing::warn!(listener, error = %e, errors = n, "accept failed");
        }
    }
}

/// The watchdog's view of one connection.
struct Watch {
    /// The first request's head must have arrived by then.
    first_by: tokio::time::Instant,
    limits: ConnLimits,
    grace: Duration,
    state: Arc<ConnState>,
    cuts: Cuts,
}

/// After a graceful close was asked for an idle connection, how long it may take.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

async fn serve_conn<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    svc: S,
    shutdown: &Shutdown,
    watch: &Watch,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let graceful = |c: Pin<&mut _>| {
        let c: Pin<&mut auto::Connection<'_, I, S, TokioExecutor>> = c;
        c.graceful_shutdown()
    };
    if let Some(Err(e)) = watchdog(conn.as_mut(), graceful, shutdown, watch).await {
        if is_header_timeout(&*e) {
            watch.cuts.header_timeout.inc();
        }
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Run `conn` under the connection's limits: `Some(output)` when it ended by itself, `None`
/// when the watchdog cut it (the caller drops it, which closes the socket). `graceful` asks it
/// to finish what is in flight and close (shutdown, idle, aged).
async fn watchdog<F: Future>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    shutdown: &Shutdown,
    watch: &Watch,
) -> Option<F::Output> {
    let deadline = tokio::time::sleep_until(watch.first_by);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(watch.limits.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = &watch.state;
    let (mut draining, mut watching) = (false, true);
    // Set once a graceful close was asked for: the connection is dropped if still open then.
    let mut close_by: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            // Fixed order: the connection first (polled on every wake-up of this task), and
            // no random draw per poll.
            biased;
            r = conn.as_mut() => return Some(r),
            _ = shutdown.wait(), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            _ = &mut deadline, if watching => {
                watching = false;
                if state.requests() == 0 {
                    // Dropping the connection closes the socket.
                    watch.cuts.header_timeout.inc();
                    tracing::debug!("no request headers within header_read_timeout: connection closed");
                    return None;
                }
            }
            _ = state.kill.notified() => {
                // No lingering: the slot is wanted now.
                state.abort_on_close();
                watch.cuts.idle.inc();
                tracing::debug!("idle connection closed to make room at the connection cap");
                return None;
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                if close_by.is_some_and(|t| now >= t) {
                    tracing::debug!("connection did not close in time after being asked: dropped");
                    state.abort_on_close();
                    return None;
                }
                match state.verdict(&watch.limits) {
                    Verdict::Fine => {}
                    Verdict::SendTimeout => {
                        watch.cuts.send_timeout.inc();
                        state.abort_on_close();
                        tracing::debug!("the client did not take a response within send_timeout: connection closed");
                        return None;
                    }
                    Verdict::HeaderTimeout => {
                        watch.cuts.header_timeout.inc();
                        tracing::debug!("request headers not complete within header_read_timeout: connection closed");
                        return None;
                    }
                    Verdict::Idle if close_by.is_none() => {
                        watch.cuts.idle.inc();
                        tracing::debug!("no request within idle_timeout: connection closed");
                        draining = true;
                        graceful(conn.as_mut());
                        close_by = Some(now + IDLE_CLOSE_GRACE);
                    }
                    Verdict::Aged if close_by.is_none() => {
                        tracing::debug!("connection older than max_connection_age: closing it gracefully");
                        draining = true;
                        graceful(conn.as_mut());
                        close_by = Some(now + watch.grace);
                    }
                    Verdict::Idle | Verdict::Aged => {}
                }
            }
        }
    }
}

/// hyper's HTTP/1 header timer fired (a later request's headers were too slow).
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A tiny task tracker: how many connection tasks are alive, and waiting for them to end.
mod tokio_util_tasks {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Tracker {
        inner: Arc<(AtomicUsize, Notify)>,
    }

    struct Token(Arc<(AtomicUsize, Notify)>);

    impl Drop for Token {
        fn drop(&mut self) {
            if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0 .1.notify_waiters();
            }
        }
    }

    impl Tracker {
        pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
            self.inner.0.fetch_add(1, Ordering::AcqRel);
            let token = Token(self.inner.clone());
            tokio::spawn(async move {
                let _t = token;
                f.await;
            });
        }

        /// Wait until no task is alive, at most `limit`. True when all ended.
        pub async fn wait_idle(&self, limit: Duration) -> bool {
            let wait = async {
                loop {
                    let notified = self.inner.1.notified();
                    if self.inner.0.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(limit, wait).await.is_ok()
        }
    }
}
