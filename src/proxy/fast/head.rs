//! Reading a request head in place, and deciding whether the fast path takes it.
//!
//! The fast path takes only what it fully understands; every other head goes to hyper with
//! the bytes already read, so refusing (or accepting) a strange shape is always hyper's call,
//! exactly as with `engine: hyper`. Taken: `POST` to the canonical V2 or V1 dialog path (no
//! query), `HTTP/1.1`, CRLF line endings only, exactly one `Host`, exactly one
//! `Content-Length` of plain digits no larger than `max_body`, at most one
//! `x-forwarded-for`, and no `Transfer-Encoding` (but see [`Head::Chunked`]), `Expect`, `Upgrade`, `TE`, `Trailer`,
//! `Keep-Alive`, `Proxy-Connection` or `Proxy-Authorization`; a `Connection` header only
//! with `close` or `keep-alive`. Header syntax is httparse's (hyper's own parser), with its
//! strict defaults: no obs-fold, no space before a colon, no bare CR.

use std::ops::Range;

use crate::probe::Dialog;
use crate::protocol::{parse_vdn, DialogPath};

/// Most header lines the fast path reads; a head with more goes to hyper.
pub const MAX_HEADERS: usize = 64;

/// What a buffer holds at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head has not all arrived.
    Partial,
    /// A dialog turn the fast path takes.
    Dialog(DialogHead),
    /// A dialog head the fast path would take but for its body being `Transfer-Encoding:
    /// chunked` (the only coding, no `Content-Length`): hyper's to serve, but the fast path
    /// first reads the chunk sizes as they arrive, to refuse at once a body declared larger
    /// than `max_body` (hyper only sees the bytes that came). `content_length` is 0.
    Chunked(DialogHead),
    /// Anything else: hyper's, with the bytes as they are.
    Other,
}

/// A dialog request head the fast path takes, as ranges into the buffer it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogHead {
    /// Bytes of the head, the blank line included; the body starts here.
    pub len: usize,
    pub dialog: Dialog,
    /// The request target (a dialog path, no query).
    pub path: Range<usize>,
    pub content_length: u64,
    /// `Connection: close`: answer, then close.
    pub close: bool,
    /// Ranges of the head forwarded as they are: the request line and every header line but
    /// `Connection`, `x-forwarded-for` and `x-forwarded-proto` (each with its CRLF), in order.
    pub keep: Vec<Range<usize>>,
    /// The value of the client's `x-forwarded-for`, if it sent one.
    pub forwarded_for: Option<Range<usize>>,
    /// The value of the client's only `traceparent` (`None` for none or several); the line is
    /// not forwarded (the upstream gets the gateway's own).
    pub traceparent: Option<Range<usize>>,
    /// `traceparent` lines seen.
    pub traceparents: u8,
    /// The client's `tracestate` lines (each with its CRLF): forwarded only when the turn
    /// continues the client's trace.
    pub tracestate: Vec<Range<usize>>,
    /// The value of the client's `x-request-id` (any), and whether it is usable as the turn's
    /// id (1–128 visible ASCII characters).
    pub request_id: Option<Range<usize>>,
    pub request_id_usable: bool,
}

/// Read the head at the start of `buf`.
pub fn parse(buf: &[u8], max_body: u64) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if req.method != Some("POST") || req.version != Some(1) {
        return Head::Other;
    }
    let Some(path) = req.path else {
        return Head::Other;
    };
    let dialog = match DialogPath::classify(path) {
        DialogPath::V1 => Dialog::V1,
        DialogPath::V2(seg) => match parse_vdn(seg) {
            Some(v) => Dialog::V2(v),
            None => return Head::Other,
        },
        DialogPath::Other | DialogPath::OtherSpelling => return Head::Other,
    };
    // Line endings: CRLF only (httparse also reads a bare LF; hyper would re-frame such a
    // request, so it is hyper's).
    let head = &buf[..len];
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Head::Other;
    }
    let base = buf.as_ptr() as usize;
    // Where a slice httparse handed out lies in `head` (None if it does not lie there, which
    // httparse never does, but then the head is hyper's rather than a panic).
    let offset = |s: &[u8]| -> Option<usize> {
        let at = (s.as_ptr() as usize).checked_sub(base)?;
        (at.checked_add(s.len())? <= len).then_some(at)
    };
    let Some(path_at) = offset(path.as_bytes()) else {
        return Head::Other;
    };
    let path = path_at..path_at + path.len();
    let mut out = DialogHead {
        len,
        dialog,
        path,
        content_length: 0,
        close: false,
        keep: Vec::with_capacity(req.headers.len() + 1),
        forwarded_for: None,
        traceparent: None,
        traceparents: 0,
        tracestate: Vec::new(),
        request_id: None,
        request_id_usable: false,
    };
    // The request line.
    let Some(first_end) = head.iter().position(|&b| b == b'\n') else {
        return Head::Other;
    };
    out.keep.push(0..first_end + 1);
    let (mut hosts, mut lengths, mut codings) = (0, 0, 0);
    let mut chunked = false;
    for h in req.headers.iter() {
        let (Some(start), Some(value_start)) = (offset(h.name.as_bytes()), offset(h.value)) else {
            return Head::Other;
        };
        let value = value_start..value_start + h.value.len();
        let Some(nl) = head[value.end..].iter().position(|&b| b == b'\n') else {
            return Head::Other;
        };
        let line = start..value.end + nl + 1;
        let name = h.name;
        let mut keep = true;
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match plain_digits(h.value) {
                Some(n) => out.content_length = n,
                None => return Head::Other,
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = false;
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    out.close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    return Head::Other;
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if out.forwarded_for.is_some() {
                return Head::Other;
            }
            keep = false;
            out.forwarded_for = Some(value);
        } else if name.eq_ignore_ascii_case("traceparent") {
            keep = false;
            out.traceparents = out.traceparents.saturating_add(1);
            out.traceparent = (out.traceparents == 1).then_some(value);
        } else if name.eq_ignore_ascii_case("tracestate") {
            keep = false;
            out.tracestate.push(line.clone());
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
            // Never passed on: the gateway writes its own (as the general engine does).
            keep = false;
        } else if name.eq_ignore_ascii_case("x-request-id") {
            if out.request_id.is_none() {
                // As the general engine reads it: a value `HeaderValue::to_str` accepts
                // (visible ASCII or tab), 1 to 128 bytes.
                out.request_id_usable = (1..=128).contains(&h.value.len())
                    && h.value
                        .iter()
                        .all(|&b| (32..127).contains(&b) || b == b'\t');
                out.request_id = Some(value);
            }
        } else if [
            "expect",
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Head::Other;
        }
        if keep {
            keep_range(&mut out.keep, line);
        }
    }
    if hosts != 1 {
        return Head::Other;
    }
    match (lengths, codings) {
        (1, 0) if out.content_length <= max_body => Head::Dialog(out),
        (0, 1) if chunked => Head::Chunked(out),
        _ => Head::Other,
    }
}

/// Add `r` to ranges that are written out in order, merged with the last one when the two
/// touch: the lines between the removed ones go as one slice of one vectored write (each slice
/// costs the kernel a copy setup of its own).
pub fn keep_range(v: &mut Vec<Range<usize>>, r: Range<usize>) {
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

/// Whether the bytes of `buf` from `from` on end a line: a head that did not parse before
/// cannot have been completed (nor a header line it had broken) by bytes without a line end.
/// The fast path parses a dripping head once per line, not once per read (hyper parses once
/// per read).
pub fn may_end(buf: &[u8], from: usize) -> bool {
    buf.get(from..).is_some_and(|new| new.contains(&b'\n'))
}

/// `Content-Length` as the fast path takes it: 1 to 18 ASCII digits, nothing else.
fn plain_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse(s.as_bytes(), 65536)
    }

    const OK: &str = "POST /oifde/rest/v2/crs/process/101 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\n\r\n{}";

    #[test]
    fn a_plain_dialog_head_is_taken_with_its_ranges() {
        let Head::Dialog(d) = head(OK) else {
            panic!("not taken")
        };
        assert_eq!(d.dialog, Dialog::V2(101));
        assert_eq!(d.content_length, 2);
        assert!(!d.close);
        assert_eq!(d.len, OK.len() - 2);
        let kept: String = d.keep.iter().map(|r| &OK[r.clone()]).collect();
        assert_eq!(
            kept,
            "POST /oifde/rest/v2/crs/process/101 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
        );
        // Adjacent lines go as one slice.
        assert_eq!(d.keep.len(), 1, "{:?}", d.keep);
        assert_eq!(&OK[d.forwarded_for.unwrap()], "10.0.0.1");
    }

    #[test]
    fn a_partial_head_waits() {
        assert_eq!(head(&OK[..30]), Head::Partial);
    }

    #[test]
    fn a_head_is_looked_at_again_once_per_line() {
        let b = OK.as_bytes();
        let lines = b[..OK.find("\r\n\r\n").unwrap() + 4]
            .iter()
            .filter(|&&c| c == b'\n')
            .count();
        // Fed a byte at a time: parsed again only when a line has ended.
        let mut parses = 0;
        let mut n = 1;
        while n <= b.len() {
            if may_end(&b[..n], n - 1) {
                parses += 1;
                if head(&OK[..n]) != Head::Partial {
                    break;
                }
            }
            n += 1;
        }
        assert_eq!(parses, lines);
        assert!(!may_end(b"POST / HTTP/1.1", 0));
    }

    #[test]
    fn every_shape_it_does_not_fully_understand_goes_to_hyper() {
        let cl = "Content-Length: 2\r\n";
        for bad in [
            format!("GET /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.0\r\nHost: a\r\n{cl}\r\n"),
            format!("POST /other HTTP/1.1\r\nHost: a\r\n{cl}\r\n"),
            format!("POST /oifde/rest/crs/process?x=1 HTTP/1.1\r\nHost: a\r\n{cl}\r\n"),
            format!("POST /oifde/rest/v2/crs/process/x1 HTTP/1.1\r\nHost: a\r\n{cl}\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\n{cl}\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\nHost: b\r\n{cl}\r\n"),
            "POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}{cl}\r\n"),
            "POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n"
                .to_string(),
            "POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n"
                .to_string(),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}Transfer-Encoding: chunked\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}Expect: 100-continue\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}Connection: x-secret\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}X-Forwarded-For: 1\r\nX-Forwarded-For: 2\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\nHost: a\n{cl}\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{cl}X-A: 1\r\n 2\r\n\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost : a\r\n{cl}\r\n"),
            format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\rb\r\n{cl}\r\n"),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
            "POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n"
                .to_string(),
        ] {
            assert_eq!(head(&bad), Head::Other, "{bad:?}");
        }
    }

    #[test]
    fn a_chunked_dialog_head_is_kept_apart_and_only_the_plain_shape() {
        let h = "POST /oifde/rest/v2/crs/process/7 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\n";
        let Head::Chunked(d) = head(h) else {
            panic!("not seen as chunked: {:?}", head(h))
        };
        assert_eq!(d.dialog, Dialog::V2(7));
        assert_eq!(d.len, h.len() - 3);
        assert_eq!(d.content_length, 0);
        for other in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
            "Transfer-Encoding: chunked\r\nHost: b\r\n",
        ] {
            let h = format!("POST /oifde/rest/crs/process HTTP/1.1\r\nHost: a\r\n{other}\r\n");
            assert_eq!(head(&h), Head::Other, "{h:?}");
        }
    }
}
