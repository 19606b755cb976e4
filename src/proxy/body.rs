//! The response body type of the gateway: one enum instead of a boxed trait object, so a turn
//! does not allocate for its body wrapper.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::conn::UpstreamBody;

pub enum GatewayBody {
    /// A buffered answer (the gateway's own, or an upstream answer read to find `outaction`).
    Full(Full<Bytes>),
    /// An upstream answer streamed through unread.
    Stream(UpstreamBody),
    /// An answer whose first part was read (it outgrew the peek bound) and whose rest streams.
    Prefixed(Option<Bytes>, UpstreamBody),
}

impl From<Bytes> for GatewayBody {
    fn from(b: Bytes) -> Self {
        GatewayBody::Full(Full::new(b))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            GatewayBody::Stream(b) => Pin::new(b).poll_frame(cx),
            GatewayBody::Prefixed(prefix, rest) => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_end_stream(),
            GatewayBody::Stream(b) => b.is_end_stream(),
            GatewayBody::Prefixed(p, rest) => p.is_none() && rest.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(b) => b.size_hint(),
            GatewayBody::Stream(b) => b.size_hint(),
            GatewayBody::Prefixed(p, rest) => {
                let extra = p.as_ref().map(|b| b.len() as u64).unwrap_or(0);
                let h = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + extra);
                if let Some(u) = h.upper() {
                    out.set_upper(u + extra);
                }
                out
            }
        }
    }
}

/// What reading the start of an answer gave.
pub enum Peeked {
    /// The whole answer, buffered.
    Whole(Bytes),
    /// Too large to buffer: the part read, and the rest.
    Partial(Bytes, UpstreamBody),
}

/// Buffer an answer body up to `max` bytes.
pub async fn peek(
    mut body: UpstreamBody,
    declared: Option<u64>,
    max: usize,
) -> Result<Peeked, hyper::Error> {
    if declared.is_some_and(|n| n > max as u64) {
        return Ok(Peeked::Partial(Bytes::new(), body));
    }
    let mut buf: Option<bytes::BytesMut> = None;
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Most answers arrive in one frame: keep it without copying.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut b = bytes::BytesMut::with_capacity(f.len() + data.len());
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&data),
        }
        let len = first
            .as_ref()
            .map(|f| f.len())
            .or(buf.as_ref().map(|b| b.len()))
            .unwrap_or(0);
        if len > max {
            let read = first
                .take()
                .unwrap_or_else(|| buf.take().map(|b| b.freeze()).unwrap_or_default());
            return Ok(Peeked::Partial(read, body));
        }
    }
    Ok(Peeked::Whole(first.unwrap_or_else(|| {
        buf.map(|b| b.freeze()).unwrap_or_default()
    })))
}
