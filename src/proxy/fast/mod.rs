//! The dialog fast path (`engine: fast`): an HTTP/1.1 engine of our own, on httparse, for the
//! common case — plain-TCP dialog turns with a `Content-Length` body to plain-`http://`
//! endpoints — that calls the same phases as the general engine ([`super::turn::TurnCtx`]).
//!
//! One read buffer per connection: the head is parsed where it lies ([`head::parse`]), the
//! body is probed where it lies, and the upstream request is one vectored write of the
//! original bytes (minus the hop-by-hop `Connection` line, `x-forwarded-for` rewritten) plus
//! our headers. The answer's head is parsed in place, its body read (≤ 64 KiB) to see
//! `outaction`, and everything written back with one more vectored write; larger answers are
//! copied through with their framing (`Content-Length`, or chunked, read by [`chunk`]).
//!
//! What it does not fully understand it does not touch: any other head (other paths and
//! methods, HTTP/1.0, h2c and the HTTP/2 preface, `Expect`, `Upgrade`, chunked requests,
//! duplicate or odd `Content-Length`, bare LF, obs-fold, …) is handed to hyper together with
//! the bytes already read ([`Handover`]), so hyper sees the connection as if from the start,
//! and refuses or serves it exactly as `engine: hyper` would. One refusal is the fast path's
//! own: a chunked dialog body whose chunk sizes already pass `max_body` gets its 413 as soon as
//! that size line arrives ([`chunked_sizes`]); a chunked body within the limit goes to hyper
//! once it has all arrived. A turn located on a cluster with
//! an `https://` endpoint is handed over the same way (its bytes still untouched in the buffer):
//! hyper serves and records it from its first byte.
//!
//! Limits are the listener's, exactly as for hyper: the connection runs under the same
//! watchdog over the same [`crate::listener::guard::ConnState`] (`header_read_timeout` for the first head from accept
//! and for a later one from its first byte, `idle_timeout`, `send_timeout` on every write to
//! the client, `max_connection_age` and shutdown as a graceful close, lingering close). The
//! body must arrive within `request_timeout` of the head, and may not exceed `max_body` (a
//! larger one goes to hyper, which answers 413).

pub mod chunk;
pub mod head;
mod upstream;

pub use upstream::{parse_answer, Framing, ParsedAnswer};

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Peer, Proxy, TurnCtx, ANSWER_PEEK_MAX};
use crate::listener::guard::Guarded;
use crate::listener::{CloseAsk, Front, FrontConn, Handover};
use crate::respond::GatewayError;
use crate::vocab::Engine;
use head::{DialogHead, Head};
use upstream::{Answer, FastAttempt};

/// Largest head the fast path reads before it hands the connection to hyper (which applies its
/// own limit to it: the same 64 KiB buffer).
pub const MAX_HEAD: usize = 64 * 1024;

/// The fast path as the dialog listener's engine ahead of hyper. The `engine:` key is read per
/// connection: with `hyper`, the connection goes to hyper before a byte is read.
pub struct FastFront {
    proxy: Arc<Proxy>,
}

impl FastFront {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        FastFront { proxy }
    }
}

impl Front for FastFront {
    fn serve(&self, conn: FrontConn) -> Pin<Box<dyn Future<Output = Option<Handover>> + Send>> {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            if proxy.live.load().engine == Engine::Hyper {
                return Some(Handover {
                    stream: conn.stream,
                    read: BytesMut::new(),
                });
            }
            serve_conn(proxy, conn).await
        })
    }
}

/// Serve one connection until it closes, or until a request comes that is hyper's: then the
/// connection is returned, with the bytes read and not served, for hyper to serve from there.
pub async fn serve_conn(proxy: Arc<Proxy>, conn: FrontConn) -> Option<Handover> {
    let FrontConn {
        mut stream,
        peer: addr,
        state,
        close,
    } = conn;
    let peer = Peer { addr, https: false };
    let mut read = BytesMut::with_capacity(8192);
    loop {
        let max_body = proxy.live.load().limits.max_body;
        // Bytes of `read` when the head was last parsed: a head dripping in is parsed again only
        // when what came may have ended it (not once per byte).
        let mut parsed = 0;
        let (dh, chunked) = loop {
            if !read.is_empty() && (parsed == 0 || head::may_end(&read, parsed)) {
                parsed = read.len();
                match head::parse(&read, max_body) {
                    Head::Dialog(d) => break (d, false),
                    Head::Chunked(d) => break (d, true),
                    Head::Other => return Some(Handover { stream, read }),
                    Head::Partial => {}
                }
            }
            if read.len() >= MAX_HEAD {
                return Some(Handover { stream, read });
            }
            // Asked to close (idle, aged, shutdown) with no request under way: close, as
            // hyper does with a connection between requests.
            if close.is_asked() {
                return None;
            }
            if read.capacity() - read.len() < 4096 {
                read.reserve(8192);
            }
            // No timer here: the watchdog times heads (and idleness) from the ConnState the
            // socket wrapper keeps, and drops this future to cut the connection.
            tokio::select! {
                r = stream.read_buf(&mut read) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = close.wait() => return None,
            }
        };
        let inflight = state.begin(http::Version::HTTP_11);
        let next = if chunked {
            chunked_sizes(&proxy, &mut stream, &mut read, &dh, peer, max_body).await
        } else {
            turn(&proxy, &mut stream, &mut read, &dh, peer, &close).await
        };
        drop(inflight);
        match next {
            Ok(Next::Request) => {}
            Ok(Next::Hyper) => return Some(Handover { stream, read }),
            Ok(Next::Close) | Err(_) => return None,
        }
    }
}

/// What a connection does after a turn.
#[derive(Debug)]
enum Next {
    /// Read the next request.
    Request,
    /// Close.
    Close,
    /// The turn is hyper's after all (its cluster has `https://` endpoints): the request is
    /// still in the buffer, untouched, and the connection goes to hyper with it.
    Hyper,
}

/// A turn's context from its head in `read`.
fn begin<'p>(proxy: &'p Proxy, read: &BytesMut, dh: &DialogHead, peer: Peer) -> TurnCtx<'p> {
    let path = std::str::from_utf8(&read[dh.path.clone()]).unwrap_or("/");
    let theirs = dh
        .request_id
        .clone()
        .filter(|_| dh.request_id_usable)
        .and_then(|r| std::str::from_utf8(&read[r]).ok());
    let mut t = TurnCtx::begin(proxy, peer, Method::POST, path, theirs);
    t.trace_from_traceparent(dh.traceparent.clone().map(|r| &read[r]));
    t
}

/// Read more of the request's body into `read`, within the turn's `request_timeout`. A client
/// that closes or stalls mid-body gets the gateway's 400, and `Ok(false)` says the connection
/// closes.
async fn read_more(
    client: &mut Guarded,
    read: &mut BytesMut,
    t: &mut TurnCtx<'_>,
    dh: &DialogHead,
) -> std::io::Result<bool> {
    let why = match tokio::time::timeout_at(t.deadline, client.read_buf(read)).await {
        Ok(Ok(n)) if n > 0 => return Ok(true),
        Ok(_) => "the client closed the connection mid-body",
        Err(_) => "the client did not send the body within request_timeout",
    };
    t.rec.vdn = dh.dialog.vdn();
    answer_error(client, t, GatewayError::BodyRead(why.into()), true).await?;
    Ok(false)
}

/// Framing bytes a chunked body may bring beyond `max_body` of data while its sizes are read
/// (size lines, extensions, trailers); past them the request is hyper's as it stands.
const CHUNK_FRAMING_SLACK: usize = 64 * 1024;

/// A chunked dialog body ([`Head::Chunked`]): its chunk sizes read as they arrive, and a body
/// declared larger than `max_body` refused at once with 413 (the connection then closes with a
/// lingering close, so the client still sending sees the answer). A body that stays within it
/// is hyper's with every byte read so far, once it has all arrived (hyper then serves it at
/// once); so is framing this reader refuses, which hyper refuses in its own words. Nothing is
/// decoded or forwarded here: hyper serves (and records) the turn from its first byte.
async fn chunked_sizes(
    proxy: &Arc<Proxy>,
    client: &mut Guarded,
    read: &mut BytesMut,
    dh: &DialogHead,
    peer: Peer,
    max_body: u64,
) -> std::io::Result<Next> {
    let mut t = begin(proxy, read, dh, peer);
    let mut sizes = chunk::Chunked::new();
    let (mut fed, mut data) = (dh.len, 0u64);
    let most = dh.len + usize::try_from(max_body).unwrap_or(usize::MAX) + CHUNK_FRAMING_SLACK;
    loop {
        match sizes.feed(&read[fed..], |d| data += d.len() as u64) {
            Ok(n) => fed += n,
            Err(_) => return Ok(Next::Hyper),
        }
        if data.saturating_add(sizes.remaining_in_chunk()) > max_body {
            t.rec.vdn = dh.dialog.vdn();
            answer_error(client, &mut t, GatewayError::BodyTooLarge(max_body), true).await?;
            return Ok(Next::Close);
        }
        if sizes.is_done() || read.len() >= most {
            return Ok(Next::Hyper);
        }
        if read.capacity() - read.len() < 4096 {
            read.reserve(8192);
        }
        if !read_more(client, read, &mut t, dh).await? {
            return Ok(Next::Close);
        }
    }
}

/// One dialog turn on the fast path.
async fn turn(
    proxy: &Arc<Proxy>,
    client: &mut Guarded,
    read: &mut BytesMut,
    dh: &DialogHead,
    peer: Peer,
    close: &CloseAsk,
) -> std::io::Result<Next> {
    let mut t = begin(proxy, read, dh, peer);
    let total = dh.len + dh.content_length as usize;
    // The body, where it lies: after the head in the same buffer.
    if read.len() < total {
        read.reserve(total - read.len());
    }
    while read.len() < total {
        if !read_more(client, read, &mut t, dh).await? {
            return Ok(Next::Close);
        }
    }
    let result = dialog(&mut t, read, dh, total).await;
    let keep = match result {
        Ok(Some(answer)) => {
            let close = dh.close || close.is_asked();
            write_answer(client, &mut t, answer, close).await?
        }
        // Not recorded: hyper serves (and records) the same request from its first byte.
        Ok(None) => return Ok(Next::Hyper),
        Err(e) => {
            let close = dh.close || close.is_asked();
            answer_error(client, &mut t, e, close).await?;
            !close
        }
    };
    // The next request's bytes (pipelining) stay at the front of the buffer.
    let _ = read.split_to(total);
    Ok(if keep { Next::Request } else { Next::Close })
}

/// The phases over the bytes in `read`; the answer's head and first bytes for the client, or
/// `None` when the turn's cluster (or its fallback) has `https://` endpoints, which the
/// general client serves.
async fn dialog(
    t: &mut TurnCtx<'_>,
    read: &BytesMut,
    dh: &DialogHead,
    total: usize,
) -> Result<Option<Answer>, GatewayError> {
    let body = &read[dh.len..total];
    t.probe(dh.dialog, body)?;
    // Rules with `headers:` conditions need the request's headers as a map; most configs have
    // none, and then no map is built.
    let headers = if t.gen.routing.needs_headers() {
        header_map(read, dh)
    } else {
        HeaderMap::new()
    };
    t.locate(&headers).await?;
    if t.route_has_https() {
        return Ok(None);
    }
    let mut attempt = FastAttempt::new(read, dh, total, t.peer, &t.rec.request_id, t.rec.trace);
    let mut answer = t.forward(&mut attempt).await?;
    drop(attempt);
    let peek = if (200..300).contains(&answer.head.status) {
        answer
            .read_whole(t.deadline, ANSWER_PEEK_MAX)
            .await?
            .map(crate::respond::peek_answer)
            .unwrap_or_default()
    } else {
        Default::default()
    };
    t.settle_pin(answer.head.status, peek).await;
    Ok(Some(answer))
}

/// The request's headers as a map (only for rules with `headers:` conditions).
fn header_map(read: &[u8], dh: &DialogHead) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&read[..dh.len]).is_ok() {
        for h in req.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
    }
    map
}

/// Write the upstream's answer to the client and copy the rest of its body through.
/// `Ok(true)`: the client connection may carry the next request.
async fn write_answer(
    client: &mut Guarded,
    t: &mut TurnCtx<'_>,
    mut answer: Answer,
    close: bool,
) -> std::io::Result<bool> {
    let close = close || answer.until_close;
    let mut extra = Vec::with_capacity(160);
    if !answer.head.has_request_id {
        extra.extend_from_slice(b"x-request-id: ");
        extra.extend_from_slice(t.rec.request_id.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    // Ours replaces the upstream's (as the general engine's `insert`); without ours, the
    // upstream's lines go on as they came.
    let ours = t.decision_header();
    end_head(&mut extra, ours.as_ref(), close);
    // As the general engine: the turn is recorded when its answer's head is handed over.
    t.record(answer.head.status);
    {
        let mut slices: Vec<IoSlice<'_>> =
            Vec::with_capacity(answer.head.keep.len() + answer.head.route.len() + 3);
        slices.push(IoSlice::new(b"HTTP/1.1 "));
        for r in &answer.head.keep {
            slices.push(IoSlice::new(&answer.buf[r.clone()]));
        }
        if ours.is_none() {
            for r in &answer.head.route {
                slices.push(IoSlice::new(&answer.buf[r.clone()]));
            }
        }
        slices.push(IoSlice::new(&extra));
        slices.push(IoSlice::new(&answer.buf[answer.head.head_len..]));
        write_all_vectored(client, &mut slices).await?;
    }
    // The rest of a body too large (or too slow) to have been read whole, each read from the
    // upstream within the turn's deadline.
    let done = answer.copy_rest(client, t.deadline).await?;
    answer.finish(done);
    Ok(done && !close)
}

/// The last lines of every head the fast path writes to a client: the decision header (when
/// `decision_header` is on), `connection: close` when the connection ends after this answer,
/// and the blank line.
fn end_head(head: &mut Vec<u8>, route: Option<&HeaderValue>, close: bool) {
    if let Some(v) = route {
        head.extend_from_slice(b"x-graygate-route: ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// The gateway's own answer (§3), on the fast path: the same head and body as the general
/// engine's ([`GatewayError::response`]).
async fn answer_error(
    client: &mut Guarded,
    t: &mut TurnCtx<'_>,
    e: GatewayError,
    close: bool,
) -> std::io::Result<()> {
    let e = t.fail(e);
    t.settle_failure().await;
    let (status, _) = e.row();
    let body = e.body(t.rec.userid.as_deref());
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\ncontent-type: application/json;charset=UTF-8\r\ncontent-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if matches!(e, GatewayError::Method) {
        head.extend_from_slice(b"\r\nallow: POST");
    }
    head.extend_from_slice(b"\r\nx-request-id: ");
    head.extend_from_slice(t.rec.request_id.as_bytes());
    head.extend_from_slice(b"\r\n");
    end_head(&mut head, t.decision_header().as_ref(), close);
    t.record(status.as_u16());
    let mut slices = [IoSlice::new(&head), IoSlice::new(&body)];
    write_all_vectored(client, &mut slices).await
}

/// Write every slice, in as few calls as the socket allows.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    s: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = s.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
