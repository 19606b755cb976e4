//! Sockets and HTTP connections: accept, cap, time out, serve (HTTP/1.1 and h2c, or TLS with
//! ALPN h2/http1.1), drain on shutdown. Generic over the service so the dialog and admin
//! listeners share it.
//!
//! - `max_connections`: a semaphore; a connection over the cap is closed at accept and counted
//!   (`graygate_rejected_connections_total{reason="max_connections"}`), never queued.
//! - `header_read_timeout`: from accept, a connection has this long to complete its TLS
//!   handshake and deliver its first request's headers (our watchdog: hyper's protocol
//!   detection and HTTP/2 have no header timer of their own, so a client that connects and
//!   sends nothing, or a byte now and then, would otherwise hold its slot forever); later
//!   requests on a kept-alive HTTP/1 connection are bounded by hyper's header timer. Every cut
//!   is counted (`reason="header_timeout"`).
//! - `listen_proxy_protocol`: the PROXY header is read first, within the same
//!   `header_read_timeout`, and its source address becomes the connection's peer
//!   (`proxy_protocol.rs`); a connection without a valid one is closed and counted
//!   (`reason="proxy_protocol"`).
//! - Shutdown: stop accepting, ask every connection to finish its in-flight requests
//!   (graceful), and give them `grace` before returning.

pub mod proxy_protocol;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;

/// Connection-level settings.
#[derive(Clone)]
pub struct ListenOptions {
    /// `dialog` or `admin`: the `listener` label.
    pub name: &'static str,
    pub max_connections: usize,
    /// Spare descriptors held open and given up, one at a time, to accept a connection when
    /// the process has run out (`EMFILE`); retaken when descriptors are free again.
    pub reserve_fds: usize,
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub grace: Duration,
    pub tls: Option<Arc<tls::TlsAcceptor>>,
    /// Every connection starts with a PROXY protocol header; its source address is the peer.
    pub proxy_protocol: bool,
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
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let gauge = metrics.connections.with_label_values(&[opts.name]);
    let rejected_cap = metrics
        .rejected_connections
        .with_label_values(&["max_connections"]);
    let rejected_tls = metrics.rejected_connections.with_label_values(&["tls"]);
    let rejected_hdr = metrics
        .rejected_connections
        .with_label_values(&["header_timeout"]);
    let rejected_pp = opts.proxy_protocol.then(|| {
        metrics
            .rejected_connections
            .with_label_values(&["proxy_protocol"])
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            rejected_cap.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        gauge.inc();
        let gauge = gauge.clone();
        let builder = builder.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let tls = opts.tls.clone();
        let rejected_tls = rejected_tls.clone();
        let rejected_hdr = rejected_hdr.clone();
        let rejected_pp = rejected_pp.clone();
        let first_by = tokio::time::Instant::now() + opts.header_read_timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let (mut stream, mut peer) = (stream, peer);
            if let Some(rejected_pp) = &rejected_pp {
                match proxy_protocol::accept(&mut stream, peer, first_by, rejected_pp, &rejected_hdr)
                    .await
                {
                    Some(client) => peer = client,
                    None => {
                        gauge.dec();
                        return;
                    }
                }
            }
            let https = tls.is_some();
            let started = Arc::new(AtomicBool::new(false));
            let watch = Watchdog {
                first_by,
                started: started.clone(),
                rejected_hdr,
            };
            let svc = hyper::service::service_fn(move |req| {
                started.store(true, Ordering::Relaxed);
                let h = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(h(req, peer, https).await) }
            });
            match tls {
                Some(acceptor) => {
                    let hs = tokio::time::timeout_at(first_by, acceptor.accept(stream)).await;
                    match hs {
                        Ok(Ok(tls_stream)) => {
                            let io = TokioIo::new(tls_stream);
                            serve_conn(&builder, io, svc, &shutdown, &watch).await;
                        }
                        Ok(Err(e)) => {
                            rejected_tls.inc();
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            watch.rejected_hdr.inc();
                            tracing::debug!(peer = %peer, "TLS handshake not done within header_read_timeout");
                        }
                    }
                }
                None => serve_conn(&builder, TokioIo::new(stream), svc, &shutdown, &watch).await,
            }
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

/// The first-request deadline of one connection.
struct Watchdog {
    first_by: tokio::time::Instant,
    /// Set by the service when the first request's headers have arrived.
    started: Arc<AtomicBool>,
    rejected_hdr: prometheus::IntCounter,
}

async fn serve_conn<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    svc: S,
    shutdown: &Shutdown,
    watch: &Watchdog,
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
    let deadline = tokio::time::sleep_until(watch.first_by);
    tokio::pin!(deadline);
    let (mut draining, mut watching) = (false, true);
    let result = loop {
        tokio::select! {
            // Fixed order: the connection first (polled on every wake-up of this task; the
            // other two branches fire at most once each), and no random draw per poll.
            biased;
            r = conn.as_mut() => break r,
            _ = shutdown.wait(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut deadline, if watching => {
                watching = false;
                if !watch.started.load(Ordering::Relaxed) {
                    // Dropping the connection closes the socket.
                    watch.rejected_hdr.inc();
                    tracing::debug!("no request headers within header_read_timeout: connection closed");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        if is_header_timeout(&*e) {
            watch.rejected_hdr.inc();
        }
        tracing::debug!(error = %e, "connection ended with an error");
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
