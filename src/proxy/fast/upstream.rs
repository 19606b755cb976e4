//! The fast path's side of the upstream exchange: one request written as one vectored write
//! over a raw keep-alive connection of the endpoint, the answer's head parsed in place.

use std::fmt::Write as _;
use std::io::IoSlice;
use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use compact_str::CompactString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::chunk::Chunked;
use super::head::DialogHead;
use super::{write_all_vectored, MAX_HEAD};
use crate::listener::guard::Guarded;
use crate::proxy::turn::Attempt;
use crate::proxy::Peer;
use crate::respond::GatewayError;
use crate::upstream::pool::PoolState;
use crate::upstream::raw::RawConns;
use crate::upstream::{Endpoint, UpstreamError};

/// The request of one fast turn: ranges of the client's bytes and the headers we add.
pub struct FastAttempt<'a> {
    read: &'a [u8],
    dh: &'a DialogHead,
    total: usize,
    /// The client's `tracestate` lines go on (the turn continues its trace).
    tracestate: bool,
    /// `x-forwarded-for`, `x-forwarded-proto`, `traceparent`, `x-request-id` as needed, then
    /// the blank line.
    extra: Vec<u8>,
}

impl<'a> FastAttempt<'a> {
    /// The same headers as the general engine's request (`forward::upstream_headers` and
    /// `TraceContext::apply`).
    pub fn new(
        read: &'a [u8],
        dh: &'a DialogHead,
        total: usize,
        peer: Peer,
        request_id: &str,
        trace: Option<crate::trace::TraceContext>,
    ) -> Self {
        let mut extra = Vec::with_capacity(192);
        extra.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = &dh.forwarded_for {
            extra.extend_from_slice(&read[prev.clone()]);
            extra.extend_from_slice(b", ");
        }
        let mut ip = CompactString::default();
        let _ = write!(ip, "{}", peer.addr.ip());
        extra.extend_from_slice(ip.as_bytes());
        extra.extend_from_slice(b"\r\n");
        // Always the gateway's own view (plain TCP here); a client's value is not passed on.
        extra.extend_from_slice(b"x-forwarded-proto: http\r\n");
        if let Some(t) = &trace {
            extra.extend_from_slice(b"traceparent: ");
            extra.extend_from_slice(t.traceparent().as_bytes());
            extra.extend_from_slice(b"\r\n");
        }
        if dh.request_id.is_none() {
            extra.extend_from_slice(b"x-request-id: ");
            extra.extend_from_slice(request_id.as_bytes());
            extra.extend_from_slice(b"\r\n");
        }
        extra.extend_from_slice(b"\r\n");
        FastAttempt {
            read,
            dh,
            total,
            // Without a context of its own (none was made) the client's lines go on as they
            // came, as the general engine leaves them.
            tracestate: trace.is_none_or(|t| t.continued()),
            extra,
        }
    }

    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut v = Vec::with_capacity(self.dh.keep.len() + self.dh.tracestate.len() + 2);
        for r in &self.dh.keep {
            v.push(IoSlice::new(&self.read[r.clone()]));
        }
        if self.tracestate {
            for r in &self.dh.tracestate {
                v.push(IoSlice::new(&self.read[r.clone()]));
            }
        }
        v.push(IoSlice::new(&self.extra));
        v.push(IoSlice::new(&self.read[self.dh.len..self.total]));
        v
    }
}

/// How the rest of an answer's body is framed.
pub enum Framing {
    /// This many bytes (in an [`Answer`]: after what is in its buffer).
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes (the client connection closes after it too).
    UntilClose,
}

/// An upstream answer on the fast path.
pub struct Answer {
    /// The parsed head, its ranges into `buf`; its `framing` says how much of the body is
    /// still to come (for `Length`: bytes not yet in `buf`).
    pub head: ParsedAnswer,
    /// The upstream connection's read buffer: the head, then what arrived of the body.
    pub buf: BytesMut,
    /// The body ends when the upstream closes: the client connection closes after it.
    pub until_close: bool,
    /// Bytes of `buf` already given to the chunk reader.
    fed: usize,
    /// A chunked body read whole, decoded (for `outaction`).
    decoded: Vec<u8>,
    stream: Option<TcpStream>,
    home: Arc<RawConns>,
    endpoint: Arc<str>,
}

impl Attempt for FastAttempt<'_> {
    type Answer = Answer;

    fn status(answer: &Answer) -> u16 {
        answer.head.status
    }

    fn can_resend(&self) -> bool {
        true
    }

    async fn send(
        &mut self,
        endpoint: &Arc<Endpoint>,
        state: &PoolState,
        deadline: Instant,
    ) -> Result<Answer, UpstreamError> {
        let timeout = state.spec.timeout;
        match tokio::time::timeout_at(deadline, self.exchange(endpoint, state, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: endpoint.url.clone(),
                timeout,
            }),
        }
    }
}

impl FastAttempt<'_> {
    async fn exchange(
        &mut self,
        endpoint: &Arc<Endpoint>,
        state: &PoolState,
        deadline: Instant,
    ) -> Result<Answer, UpstreamError> {
        let broken = |reason: String| UpstreamError::Broken {
            endpoint: endpoint.url.clone(),
            reason,
        };
        // A kept connection that fails while the request is being written never delivered
        // it (a CL-framed request is not served until its last byte): try a fresh one.
        let mut stream = loop {
            let (mut s, kept) = endpoint
                .raw
                .checkout(
                    &endpoint.url,
                    &endpoint.connect_to,
                    state.spec.connect_timeout,
                    deadline,
                )
                .await?;
            match write_all_vectored(&mut s, &mut self.slices()).await {
                Ok(()) => break s,
                Err(_) if kept => continue,
                Err(e) => {
                    return Err(UpstreamError::Connect {
                        endpoint: endpoint.url.clone(),
                        reason: format!("write on a fresh connection failed: {e}"),
                    })
                }
            }
        };
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if !buf.is_empty() {
                match parse_answer(&buf) {
                    Ok(Some(a)) if a.informational => {
                        // 1xx: skipped, as hyper's client does.
                        let _ = buf.split_to(a.head_len);
                        continue;
                    }
                    Ok(Some(mut a)) => {
                        let have = (buf.len() - a.head_len) as u64;
                        match a.framing {
                            Framing::Length(n) if have > n => {
                                return Err(broken("more bytes than its content-length".into()))
                            }
                            Framing::Length(n) => a.framing = Framing::Length(n - have),
                            _ => {}
                        }
                        return Ok(Answer {
                            fed: a.head_len,
                            decoded: Vec::new(),
                            until_close: matches!(a.framing, Framing::UntilClose),
                            head: a,
                            buf,
                            stream: Some(stream),
                            home: endpoint.raw.clone(),
                            endpoint: endpoint.url.clone(),
                        });
                    }
                    Ok(None) if buf.len() < MAX_HEAD => {}
                    Ok(None) => return Err(broken("the answer's head is over 64 KiB".into())),
                    Err(why) => return Err(broken(why.into())),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| broken(format!("reading the answer: {e}")))?;
            if n == 0 {
                return Err(broken("the connection closed before an answer".into()));
            }
        }
    }
}

/// What [`Answer::read_whole`] found.
enum Whole {
    /// The body is all in the buffer, after the head.
    InBuffer,
    /// The chunked body, decoded.
    Decoded(Vec<u8>),
    /// Larger than asked for: it streams through.
    TooLarge,
}

/// A parsed answer head.
pub struct ParsedAnswer {
    pub status: u16,
    pub head_len: usize,
    /// Ranges of the buffer written to the client after `HTTP/1.1 `: the rest of the status
    /// line and every header line but the hop-by-hop ones (`Connection`, `Keep-Alive`) and
    /// `x-graygate-route`.
    pub keep: Vec<Range<usize>>,
    /// The upstream's own `x-graygate-route` lines (each with its CRLF): passed on only when
    /// the gateway adds none (`decision_header: false`), as the general engine's `insert` does.
    pub route: Vec<Range<usize>>,
    pub has_request_id: bool,
    pub framing: Framing,
    /// The upstream may keep the connection (no `Connection: close`, HTTP/1.1).
    pub reusable: bool,
    pub informational: bool,
}

/// Parse an answer head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_answer(buf: &[u8]) -> Result<Option<ParsedAnswer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("the answer's head is not HTTP/1.1"),
    };
    let status = resp.code.ok_or("no status")?;
    if status == 101 {
        return Err("the upstream switched protocols");
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| -> Option<usize> {
        let at = (s.as_ptr() as usize).checked_sub(base)?;
        (at.checked_add(s.len())? <= head_len).then_some(at)
    };
    let head = &buf[..head_len];
    // CRLF only: a bare LF is passed on to the client by no engine of ours.
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err("a bare LF in the answer's head");
    }
    let first_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no status line")?;
    // "HTTP/1.x " is 9 bytes; the rest of the status line goes as it is.
    let mut keep = Vec::with_capacity(resp.headers.len() + 1);
    keep.push(9.min(first_end)..first_end + 1);
    let (mut length, mut lengths, mut chunked, mut other_te) = (0u64, 0, false, false);
    let mut reusable = resp.version == Some(1);
    let mut has_request_id = false;
    let mut route = Vec::new();
    for h in resp.headers.iter() {
        let (Some(start), Some(vstart)) = (offset(h.name.as_bytes()), offset(h.value)) else {
            return Err("malformed header line");
        };
        let vend = vstart + h.value.len();
        let nl = head[vend..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("malformed header line")?;
        let line = start..vend + nl + 1;
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            if h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                reusable = false;
            }
            continue;
        }
        if name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let v = std::str::from_utf8(h.value).map_err(|_| "bad content-length")?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 18 {
                return Err("bad content-length");
            }
            let n: u64 = v.parse().map_err(|_| "bad content-length")?;
            if lengths > 1 && n != length {
                return Err("two different content-lengths");
            }
            length = n;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") && !chunked {
                chunked = true;
            } else {
                other_te = true;
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            has_request_id = true;
        } else if name.eq_ignore_ascii_case(crate::respond::DECISION_HEADER) {
            route.push(line);
            continue;
        }
        super::head::keep_range(&mut keep, line);
    }
    // Strip the final CRLF of the blank line: our headers go before it.
    let informational = (100..200).contains(&status);
    let framing = if informational || status == 204 || status == 304 {
        Framing::Length(0)
    } else if other_te {
        return Err("an answer transfer-encoding other than chunked");
    } else if chunked {
        if lengths > 0 {
            return Err("an answer with both content-length and chunked");
        }
        Framing::Chunked(Chunked::new())
    } else if lengths > 0 {
        Framing::Length(length)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    Ok(Some(ParsedAnswer {
        status,
        head_len,
        keep,
        route,
        has_request_id,
        framing,
        reusable,
        informational,
    }))
}

impl Answer {
    /// Read the body whole if it is at most `max` bytes, by `deadline`: `Some(body)` (decoded
    /// from chunks when chunked; else where it lies, in the buffer), or `None` when it is
    /// larger (it then streams through).
    pub async fn read_whole(
        &mut self,
        deadline: Instant,
        max: usize,
    ) -> Result<Option<&[u8]>, GatewayError> {
        match tokio::time::timeout_at(deadline, self.read_whole_inner(max)).await {
            Ok(Ok(Whole::InBuffer)) => Ok(Some(&self.buf[self.head.head_len..])),
            Ok(Ok(Whole::Decoded(d))) => {
                self.decoded = d;
                Ok(Some(&self.decoded))
            }
            Ok(Ok(Whole::TooLarge)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(GatewayError::UpstreamTimeout(
                "the answer body did not arrive within the cluster's timeout".into(),
            )),
        }
    }

    async fn read_whole_inner(&mut self, max: usize) -> Result<Whole, GatewayError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Whole::TooLarge);
        };
        let broke = |e: String| GatewayError::Upstream(format!("the answer broke off: {e}"));
        match &mut self.head.framing {
            Framing::Length(n) => {
                let have = self.buf.len() - self.head.head_len;
                if have as u64 + *n > max as u64 {
                    return Ok(Whole::TooLarge);
                }
                self.buf.reserve(*n as usize);
                while *n > 0 {
                    let before = self.buf.len();
                    let k = stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| broke(e.to_string()))?;
                    if k == 0 {
                        return Err(broke("the upstream closed mid-body".into()));
                    }
                    if (self.buf.len() - before) as u64 > *n {
                        return Err(broke("more bytes than its content-length".into()));
                    }
                    *n -= k as u64;
                }
                Ok(Whole::InBuffer)
            }
            Framing::Chunked(c) => {
                let mut data = Vec::new();
                loop {
                    let used = c
                        .feed(&self.buf[self.fed..], |d| data.extend_from_slice(d))
                        .map_err(|e| broke(e.to_string()))?;
                    self.fed += used;
                    if c.is_done() {
                        if self.fed != self.buf.len() {
                            return Err(broke("bytes after the last chunk".into()));
                        }
                        return Ok(Whole::Decoded(data));
                    }
                    if self.buf.len() - self.head.head_len > max {
                        return Ok(Whole::TooLarge);
                    }
                    self.buf.reserve(4096);
                    let k = stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| broke(e.to_string()))?;
                    if k == 0 {
                        return Err(broke("the upstream closed mid-body".into()));
                    }
                }
            }
            Framing::UntilClose => loop {
                if self.buf.len() - self.head.head_len > max {
                    return Ok(Whole::TooLarge);
                }
                self.buf.reserve(4096);
                let k = stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| broke(e.to_string()))?;
                if k == 0 {
                    self.stream = None;
                    self.head.framing = Framing::Length(0);
                    return Ok(Whole::InBuffer);
                }
            },
        }
    }

    /// Copy what is left of the body from the upstream to the client, with its framing, the
    /// upstream by `deadline` (the cluster's timeout, to the last byte, as for the general
    /// engine); a client that does not take it is the watchdog's (`send_timeout`).
    /// `Ok(true)` when the body ended as framed.
    pub async fn copy_rest(
        &mut self,
        client: &mut Guarded,
        deadline: Instant,
    ) -> std::io::Result<bool> {
        let Some(up) = self.stream.as_mut() else {
            return Ok(matches!(self.head.framing, Framing::Length(0)));
        };
        let mut chunk = vec![0u8; 16 * 1024];
        // What is in the buffer was written already; a chunk reader that has not seen all of
        // it reads it first, to know where it stands.
        if let Framing::Chunked(c) = &mut self.head.framing {
            let used = c
                .feed(&self.buf[self.fed..], |_| {})
                .map_err(std::io::Error::other)?;
            self.fed += used;
            if c.is_done() {
                return Ok(self.fed == self.buf.len());
            }
        }
        loop {
            let want = match &self.head.framing {
                Framing::Length(0) => return Ok(true),
                Framing::Length(n) => (*n).min(chunk.len() as u64) as usize,
                _ => chunk.len(),
            };
            let k = match tokio::time::timeout_at(deadline, up.read(&mut chunk[..want])).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the answer body did not arrive within the cluster's timeout",
                    ))
                }
            };
            if k == 0 {
                let ended = matches!(self.head.framing, Framing::UntilClose);
                self.stream = None;
                return Ok(ended);
            }
            let mut end = k;
            match &mut self.head.framing {
                Framing::Length(n) => *n -= k as u64,
                Framing::Chunked(c) => {
                    end = c.feed(&chunk[..k], |_| {}).map_err(std::io::Error::other)?;
                }
                Framing::UntilClose => {}
            }
            client.write_all(&chunk[..end]).await?;
            if let Framing::Chunked(c) = &self.head.framing {
                if c.is_done() {
                    return Ok(end == k);
                }
            }
        }
    }

    /// The answer has been handled: the upstream connection goes back to its endpoint when
    /// the body ended as framed and the upstream keeps connections; else it is closed.
    pub fn finish(mut self, ended: bool) {
        let complete = match &self.head.framing {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(c) => c.is_done(),
            Framing::UntilClose => false,
        };
        if let Some(s) = self.stream.take() {
            if ended && complete && self.head.reusable {
                self.home.put(s);
            } else {
                tracing::trace!(endpoint = %self.endpoint, "upstream connection not kept");
            }
        }
    }
}
