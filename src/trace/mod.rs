//! W3C trace context (spec §13): every turn is a span of a trace.
//!
//! A turn that arrives with a valid `traceparent` continues that trace: the upstream gets a
//! `traceparent` with the same trace id and the gateway's own new span id (the client's span is
//! the parent), and `tracestate` goes on unchanged. A turn without one, or with one that does
//! not parse, starts a new trace (and an orphaned `tracestate` is not passed on). The access line
//! carries the trace and span ids; with `tracing.otlp` the span is exported ([`otlp`]).
//!
//! Parsing follows the W3C Trace Context recommendation: version `00` is exactly
//! `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex, neither id all zeros; a higher version is read
//! by its first four fields (and must not continue without a `-`); version `ff` is invalid;
//! two `traceparent` headers are invalid.
//!
//! Ids come from a per-thread SplitMix64 generator seeded from the OS's per-process hash keys:
//! unique enough for trace ids, and a few nanoseconds, with no lock and no system call per turn.

pub mod otlp;

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled flag of `trace-flags`.
pub const SAMPLED: u8 = 0x01;

/// One turn's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span (what the upstream sees as its parent).
    pub span_id: [u8; 8],
    /// The client's span, when the turn continued a trace.
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// The context of a turn with request headers `h`. `record`: the gateway exports spans, so a
    /// trace it starts is marked sampled.
    pub fn from_headers(h: &HeaderMap, record: bool) -> TraceContext {
        let mut all = h.get_all(&TRACEPARENT).iter();
        let only = match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        };
        Self::from_traceparent(only, record)
    }

    /// [`TraceContext::from_headers`] for an engine that reads header lines itself:
    /// `traceparent` is the value of the request's only `traceparent` header (`None` when it has
    /// none, or more than one).
    pub fn from_traceparent(traceparent: Option<&[u8]>, record: bool) -> TraceContext {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id: new_span_id(),
                parent_span_id: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent_span_id: None,
                flags: if record { SAMPLED } else { 0 },
            },
        }
    }

    /// True when the turn continued the client's trace.
    pub fn continued(&self) -> bool {
        self.parent_span_id.is_some()
    }

    /// The `traceparent` the upstream gets: this trace, the gateway's span.
    pub fn traceparent(&self) -> HeaderValue {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut b[3..35]);
        b[35] = b'-';
        hex_into(&self.span_id, &mut b[36..52]);
        b[52] = b'-';
        hex_into(&[self.flags], &mut b[53..55]);
        // Only ASCII digits, a–f and '-' were written.
        HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Set the trace headers of a request to the upstream: `traceparent` replaced by ours;
    /// `tracestate` kept as the client sent it when the trace continues, else removed.
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(TRACEPARENT, self.traceparent());
        if !self.continued() {
            h.remove(&TRACESTATE);
        }
    }
}

/// The ids as lower-case hex (for logs).
pub fn hex<const N: usize>(id: &[u8; N]) -> compact_str::CompactString {
    let mut buf = [0u8; 32];
    let out = &mut buf[..2 * N.min(16)];
    hex_into(&id[..N.min(16)], out);
    compact_str::CompactString::from_utf8(out).unwrap_or_default()
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(s[2 * i])? << 4 | nibble(s[2 * i + 1])?;
    }
    Some(out)
}

/// `(trace id, parent span id, flags)` of a valid `traceparent` value.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = unhex::<1>(&v[..2])?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        0 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let [flags] = unhex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::clock::wall_ms());
    h.write_u32(std::process::id());
    h.finish()
}

/// SplitMix64: the next 64 random bits of this thread's generator.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> [u8; 8] {
    loop {
        let v = next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let v = (u128::from(next_u64()) << 64) | u128::from(next_u64());
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_parse() {
        let (t, p, f) = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        // A future version with more fields is read by its first four.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        assert!(parse_traceparent(future.as_bytes()).is_some());
        assert!(parse_traceparent(format!(" {TP} ").as_bytes()).is_some());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_continued_trace_keeps_its_id_and_state_and_gets_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let ctx = TraceContext::from_headers(&h, false);
        assert!(ctx.continued());
        let mut out = h.clone();
        ctx.apply(&mut out);
        let tp = out.get(&TRACEPARENT).unwrap().to_str().unwrap().to_string();
        let (t, p, f) = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(p, ctx.span_id);
        assert_eq!(f, 1);
        assert_eq!(out.get(&TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn without_a_valid_parent_a_new_trace_starts() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let a = TraceContext::from_headers(&h, true);
        let b = TraceContext::from_headers(&HeaderMap::new(), false);
        assert!(!a.continued() && !b.continued());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!((a.flags, b.flags), (SAMPLED, 0));
        let mut out = h.clone();
        a.apply(&mut out);
        assert!(out.get(&TRACESTATE).is_none());
        // Two traceparent headers are invalid too.
        let mut two = HeaderMap::new();
        two.append(TRACEPARENT, HeaderValue::from_static(TP));
        two.append(TRACEPARENT, HeaderValue::from_static(TP));
        assert!(!TraceContext::from_headers(&two, false).continued());
    }
}
