//! Keep-alive HTTP/1.1 connections to one plain `http://` endpoint.
//!
//! Every dialog turn goes through here, so this is the gateway's own small pool rather than a
//! general client: one bounded stack of idle connections per endpoint, no pool map keyed by
//! scheme and authority, no dispatch task between the turn and its connection, no task spawned
//! per answer to wait for the connection to become free again. A turn takes the most recently
//! used idle connection (the others age out), sends on it, and the connection goes back when
//! the answer's body has been read to its end ([`UpstreamBody`]). An answer dropped half read
//! closes its connection: HTTP/1.1 cannot reuse it.
//!
//! `https://` endpoints (TLS, HTTP/2 by ALPN) use the cluster's general client instead.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::client::{error_chain, ReqBody, UpstreamError};
use super::gate::ConnectGate;
#[cfg(test)]
use super::gate::MAX_CONNECTING;

/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed instead of used (ODFS and most servers close
/// theirs after 60–75 s; this only matters for servers that keep them longer).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a returned connection may take to become ready for its next request before it is
/// given up (it normally is ready at once).
const READY_WAIT: Duration = Duration::from_secs(5);

struct IdleConn {
    tx: SendRequest<ReqBody>,
    since: Instant,
}

/// The idle connections of one endpoint.
#[derive(Default)]
pub struct Conns {
    /// Back = most recently returned. The lock is held for a push or a pop, never across I/O.
    idle: Mutex<VecDeque<IdleConn>>,
    /// Connects in progress and the turns waiting for one.
    gate: ConnectGate,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Conns {
    /// Idle connections now (for views and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// The most recently used idle connection that is still open and ready.
    fn take(&self) -> Option<SendRequest<ReqBody>> {
        loop {
            let conn = self.idle.lock().ok()?.pop_back()?;
            // Closed by the server (or broken) while idle, or idle too long: drop it (which
            // closes it) and look at the next one.
            if conn.tx.is_ready() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.tx);
            }
        }
    }

    /// Give a connection back after its answer was read to the end.
    fn put(self: &Arc<Self>, mut tx: SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.push(tx);
            return;
        }
        // The connection task has not yet seen the end of the answer (possible on a
        // multi-thread runtime): wait for it off the turn's path, briefly.
        let home = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, tx.ready()).await {
                home.push(tx);
            }
        });
    }

    fn push(&self, tx: SendRequest<ReqBody>) {
        let Ok(mut q) = self.idle.lock() else {
            return;
        };
        // The oldest idle connection goes when the stack is full or it has aged out. Dropping
        // it here, under the lock, is cheap: it only tells its connection task to close.
        if q.len() >= MAX_IDLE || q.front().is_some_and(|c| c.since.elapsed() >= IDLE_TIMEOUT) {
            q.pop_front();
        }
        q.push_back(IdleConn {
            tx,
            since: Instant::now(),
        });
        drop(q);
        self.gate.returned();
    }

    /// An idle connection, or a freshly opened one, or (when [`MAX_CONNECTING`](super::gate::MAX_CONNECTING) connects are
    /// already under way) the first of those to become free. `Ok(kept)` says whether the
    /// connection was idle in the pool (it may have been closed under us) or is new.
    async fn checkout(
        &self,
        endpoint: &Arc<str>,
        authority: &str,
        connect_timeout: Duration,
    ) -> Result<(SendRequest<ReqBody>, bool), UpstreamError> {
        let give_up = Instant::now() + connect_timeout;
        self.gate
            .checkout(
                endpoint,
                give_up,
                connect_timeout,
                || self.take(),
                || connect(endpoint, authority, give_up, connect_timeout),
            )
            .await
    }
}

/// A TCP connection to `authority` by `by`, with the socket options every upstream connection
/// gets (no Nagle: the head and body go in one write; keepalive probes). A connect that fails
/// for our own shortage (EMFILE and friends) is [`UpstreamError::Local`], never the endpoint's
/// fault. Used by the hyper client's connections and by the fast path's raw ones.
pub(super) async fn open_tcp(
    endpoint: &Arc<str>,
    authority: &str,
    by: Instant,
    connect_timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let failed = |reason: String| UpstreamError::Connect {
        endpoint: endpoint.clone(),
        reason,
    };
    let stream = match tokio::time::timeout_at(by, tokio::net::TcpStream::connect(authority)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if crate::fdlimit::is_local(&e) => {
            return Err(UpstreamError::Local {
                endpoint: endpoint.clone(),
                reason: format!("tcp connect: {e}"),
            })
        }
        Ok(Err(e)) => return Err(failed(format!("tcp connect error: {e}"))),
        Err(_) => {
            return Err(failed(format!(
                "tcp connect timed out after {connect_timeout:?}"
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    Ok(stream)
}

/// Open a connection to `authority` (`host:port`) by `deadline` (the turn's `connect_timeout`,
/// counted from when it began to look for a connection) and start its HTTP/1.1 task.
async fn connect(
    endpoint: &Arc<str>,
    authority: &str,
    deadline: Instant,
    connect_timeout: Duration,
) -> Result<SendRequest<ReqBody>, UpstreamError> {
    let stream = open_tcp(endpoint, authority, deadline, connect_timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake::<_, ReqBody>(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect {
            endpoint: endpoint.clone(),
            reason: error_chain(&e),
        })?;
    tokio::spawn(async move {
        // Ends when the connection closes: the server closed it, or every handle was dropped.
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}

/// Send `req` (origin-form URI, `Host` set) to an endpoint over one of its keep-alive
/// connections, opening one when none is idle. A kept connection the server closed before the
/// request was written is passed over and the request sent on the next; a request that may
/// have been written is never sent again here.
pub async fn send(
    conns: &Arc<Conns>,
    endpoint: &Arc<str>,
    authority: &str,
    connect_timeout: Duration,
    mut req: Request<ReqBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    loop {
        let (mut tx, kept) = conns.checkout(endpoint, authority, connect_timeout).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let lease = Lease {
                    tx,
                    home: Arc::clone(conns),
                };
                let mut resp = resp.map(|inner| UpstreamBody {
                    inner,
                    lease: Some(lease),
                });
                // No body at all (204, 304, `Content-Length: 0`): nobody will poll it.
                if resp.body().inner.is_end_stream() {
                    resp.body_mut().give_back();
                }
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                // Never written: a kept connection went away under us; try the next one.
                Some(back) if kept => req = back,
                // Never written on a fresh connection: the endpoint was not reached.
                Some(_) => {
                    return Err(UpstreamError::Connect {
                        endpoint: endpoint.clone(),
                        reason: error_chain(e.error()),
                    })
                }
                None => {
                    return Err(UpstreamError::Broken {
                        endpoint: endpoint.clone(),
                        reason: error_chain(e.error()),
                    })
                }
            },
        }
    }
}

/// A connection lent to one answer; it goes back to its endpoint's idle stack when the answer
/// has been read to the end, and is closed if the answer is dropped before that.
struct Lease {
    tx: SendRequest<ReqBody>,
    home: Arc<Conns>,
}

/// An upstream answer's body. For the gateway's own pool it carries the connection, returned
/// at the end of the body; for the general client (`https://`) it is the body alone.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl From<Incoming> for UpstreamBody {
    fn from(inner: Incoming) -> Self {
        UpstreamBody { inner, lease: None }
    }
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(l) = self.lease.take() {
            l.home.put(l.tx);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            // A server answering with a body length stops being polled at its last frame
            // (`is_end_stream`), so the connection goes back then rather than at `None`.
            None => this.give_back(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.lease = None,
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A listener whose accept queue is full and never drained: further SYNs are dropped, so a
    /// connect to it neither succeeds nor fails until its timeout.
    fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sock.bind(&any.into()).expect("bind");
        sock.listen(0).expect("listen");
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let mut fill = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fill.push(s),
                Err(_) => break,
            }
        }
        (sock, fill, addr)
    }

    #[tokio::test(start_paused = true)]
    async fn turns_waiting_for_a_connect_slot_give_up_with_the_connect_timeout() {
        let (_sock, _fill, addr) = blackhole();
        let conns = Arc::new(Conns::default());
        let endpoint: Arc<str> = Arc::from(format!("http://{addr}"));
        let authority = addr.to_string();
        let start = Instant::now();
        let mut tasks = Vec::new();
        // More turns than connect slots: the ones beyond wait, and must not wait for a slot
        // and then a connect of their own (2 × connect_timeout).
        for _ in 0..MAX_CONNECTING + 8 {
            let (conns, endpoint, authority) = (conns.clone(), endpoint.clone(), authority.clone());
            tasks.push(tokio::spawn(async move {
                let r = conns
                    .checkout(&endpoint, &authority, Duration::from_secs(1))
                    .await;
                (r.is_err(), Instant::now())
            }));
        }
        let mut waited_out = 0;
        for t in tasks {
            let (failed, at) = t.await.unwrap();
            assert!(failed, "a connect to the blackhole succeeded");
            assert!(
                at.duration_since(start) <= Duration::from_millis(1100),
                "a turn was held {:?}, past connect_timeout",
                at.duration_since(start)
            );
            waited_out += 1;
        }
        assert_eq!(waited_out, MAX_CONNECTING + 8);
        assert_eq!(
            conns.gate.free_slots(),
            MAX_CONNECTING,
            "every connect slot is given back"
        );
    }
}
