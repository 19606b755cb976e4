//! The PROXY protocol header (v1 text and v2 binary, as HAProxy's `send-proxy` and
//! `send-proxy-v2`, NGINX stream and cloud load balancers send it) at the start of a dialog
//! connection with `listen_proxy_protocol: true` (spec §13).
//!
//! The header is read off the socket before TLS or HTTP see it, and not one byte more: the
//! bytes that follow belong to the client's TLS handshake or first request. A v2 header says its
//! own length (16 bytes, then a length field), so it is read exactly; a v1 line ends at its
//! `\r\n`, so it is read by peeking and consuming up to and including the line end. Both are
//! bounded ([`V1_MAX`], [`V2_MAX`]); the caller bounds the wait with `header_read_timeout`.
//! Parsing is the `ppp` crate's.
//!
//! What the header gives: the client's address (`PROXY` command, TCP over IPv4 or IPv6). A v2
//! `LOCAL` command (the balancer's own health check), a v1 `UNKNOWN` and a v2 header of an
//! unspecified or UNIX family keep the socket's peer address, as HAProxy does.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 line, `\r\n` included (the protocol's own limit).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16-byte fixed part and up to 2 KiB of addresses and TLVs
/// (a TCP/IPv6 header is 52 bytes; balancers' TLVs add a few hundred at most). The protocol
/// allows 64 KiB; a header past this is refused rather than buffered.
pub const V2_MAX: usize = 16 + 2048;

/// The listener's side: read the header of a new connection by `deadline`. The client's
/// address (the header's, or `peer` when the header names none), or `None` when the connection
/// must be closed: counted in `rejected` (no valid header) or `timed_out` (too slow).
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    rejected: &prometheus::IntCounter,
    timed_out: &prometheus::IntCounter,
) -> Option<SocketAddr> {
    match tokio::time::timeout_at(deadline, read_header(stream)).await {
        Ok(Ok(addr)) => Some(addr.unwrap_or(peer)),
        Ok(Err(e)) => {
            rejected.inc();
            tracing::debug!(peer = %peer, error = %e, "PROXY header refused: connection closed");
            None
        }
        Err(_) => {
            timed_out.inc();
            tracing::debug!(peer = %peer, "no PROXY header within header_read_timeout: connection closed");
            None
        }
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before a PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY protocol signature")]
    NoSignature,
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v2 header of {0} bytes is over the {V2_MAX}-byte limit")]
    V2TooLong(usize),
    #[error("invalid PROXY v1 header: {0}")]
    V1(v1::ParseError),
    #[error("invalid PROXY v2 header: {0}")]
    V2(v2::ParseError),
}

/// Read the PROXY header at the start of `stream`. `Ok(Some(addr))`: the client's address
/// from the header; `Ok(None)`: a valid header that names no client (LOCAL, UNKNOWN,
/// unspecified or UNIX family), so the socket's peer stands.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(ProxyHeaderError::Closed);
    }
    match first[0] {
        b'P' => read_v1(stream).await,
        b'\r' => read_v2(stream).await,
        _ => Err(ProxyHeaderError::NoSignature),
    }
}

async fn read_v1(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut line = [0u8; V1_MAX];
    let mut len = 0;
    loop {
        // Peek at what has arrived; consume it up to the line end, or all of it when the line
        // end has not arrived yet (every byte before it is part of the header).
        let n = stream.peek(&mut line[len..]).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let end = line[len..len + n].iter().position(|&b| b == b'\n');
        let take = end.map_or(n, |i| i + 1);
        stream.read_exact(&mut line[len..len + take]).await?;
        len += take;
        if end.is_some() {
            break;
        }
        if len == V1_MAX {
            return Err(ProxyHeaderError::V1TooLong);
        }
    }
    parse_v1(&line[..len])
}

/// Parse one complete v1 line (`PROXY … \r\n`).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = v1::Header::try_from(line).map_err(|e| match e {
        v1::BinaryParseError::Parse(p) => ProxyHeaderError::V1(p),
        v1::BinaryParseError::InvalidUtf8(_) => ProxyHeaderError::NoSignature,
    })?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v1::Addresses::Unknown => None,
    })
}

async fn read_v2(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head).await?;
    if &head[..12] != v2::PROTOCOL_PREFIX {
        return Err(ProxyHeaderError::NoSignature);
    }
    let total = 16 + usize::from(u16::from_be_bytes([head[14], head[15]]));
    if total > V2_MAX {
        return Err(ProxyHeaderError::V2TooLong(total));
    }
    head.resize(total, 0);
    stream.read_exact(&mut head[16..]).await?;
    parse_v2(&head)
}

/// Parse one complete v2 header (fixed part and the length it announces).
pub fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = v2::Header::try_from(bytes).map_err(ProxyHeaderError::V2)?;
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_bytes(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = v2::PROTOCOL_PREFIX.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b
    }

    #[test]
    fn v1_gives_the_source_address() {
        let a = parse_v1(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 8080\r\n").unwrap();
        assert_eq!(a, Some("192.0.2.7:51234".parse().unwrap()));
        let a = parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 8080\r\n").unwrap();
        assert_eq!(a, Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 300.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP9 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2_gives_the_source_address_and_local_keeps_the_peer() {
        let mut addr = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addr.extend_from_slice(&40000u16.to_be_bytes());
        addr.extend_from_slice(&8080u16.to_be_bytes());
        let a = parse_v2(&v2_bytes(1, 0x11, &addr)).unwrap();
        assert_eq!(a, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(parse_v2(&v2_bytes(0, 0x11, &addr)).unwrap(), None);
        assert_eq!(parse_v2(&v2_bytes(0, 0x00, &[])).unwrap(), None);
        assert_eq!(parse_v2(&v2_bytes(1, 0x00, &[])).unwrap(), None);
    }

    #[test]
    fn v2_garbage_is_refused() {
        // IPv4 family with too few address bytes; version 1 in the binary form.
        assert!(parse_v2(&v2_bytes(1, 0x11, &[1, 2, 3])).is_err());
        let mut b = v2_bytes(1, 0x11, &[0; 12]);
        b[12] = 0x11;
        assert!(parse_v2(&b).is_err());
    }
}
