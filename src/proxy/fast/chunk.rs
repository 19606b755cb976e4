//! A strict, incremental reader of `Transfer-Encoding: chunked` framing (RFC 9112 §7.1), for
//! upstream answers on the fast path: it finds where the body ends (so the upstream connection
//! can be used again) and hands out the data, while the framing bytes themselves are passed on
//! to the client unchanged.
//!
//! Strict where leniency is how smuggling starts: CRLF only, at most 16 hex digits of size,
//! chunk extensions and trailers bounded, no byte that is not allowed where it stands.

/// Longest chunk extension (`;name=value…`) read before the framing is refused.
pub const MAX_EXTENSION: usize = 1024;
/// Most trailer bytes read before the framing is refused.
pub const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the size's hex digits (`digits` so far).
    Size {
        digits: u8,
    },
    /// After the size: `;extension` bytes up to CR.
    Extension {
        len: usize,
    },
    /// CR seen after the size line; LF must follow.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, `at_line_start` when a line just began.
    Trailer {
        at_line_start: bool,
        total: usize,
    },
    TrailerLf {
        at_line_start: bool,
        total: usize,
    },
    Done,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size is not hex or is too large")]
    BadSize,
    #[error("chunk extension is too long or has a control byte")]
    BadExtension,
    #[error("chunk framing lacks a CRLF where one belongs")]
    BadLineEnd,
    #[error("trailers are too long or malformed")]
    BadTrailer,
}

/// The reader's state between reads.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Data bytes left in the current chunk.
    remaining: u64,
    size: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            remaining: 0,
            size: 0,
        }
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self::default()
    }

    /// Data bytes of the current chunk not read yet: its declared size less what came of it
    /// (0 between chunks).
    pub fn remaining_in_chunk(&self) -> u64 {
        match self.state {
            State::Data => self.remaining,
            _ => 0,
        }
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Read framing from `buf`, calling `data` with every piece of chunk data. Returns how many
    /// bytes of `buf` belong to the body: all of them until the end is found, then up to and
    /// including the final CRLF (the rest belongs to whatever follows).
    pub fn feed(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => return Ok(i),
                State::Size { digits } => match hex(b) {
                    Some(v) => {
                        if digits >= 16 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError::BadSize),
                    None if b == b'\r' => self.state = State::SizeLf,
                    None if b == b';' => self.state = State::Extension { len: 1 },
                    None => return Err(ChunkError::BadSize),
                },
                State::Extension { len } => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if len >= MAX_EXTENSION || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::BadExtension);
                    } else {
                        self.state = State::Extension { len: len + 1 };
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    if self.size == 0 {
                        self.state = State::Trailer {
                            at_line_start: true,
                            total: 0,
                        };
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                }
                State::Data => {
                    let n =
                        (buf.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    data(&buf[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::Trailer {
                    at_line_start,
                    total,
                } => {
                    if total >= MAX_TRAILERS {
                        return Err(ChunkError::BadTrailer);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf {
                            at_line_start,
                            total: total + 1,
                        };
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::BadTrailer);
                    } else {
                        self.state = State::Trailer {
                            at_line_start: false,
                            total: total + 1,
                        };
                    }
                }
                State::TrailerLf {
                    at_line_start,
                    total,
                } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    if at_line_start {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    self.state = State::Trailer {
                        at_line_start: true,
                        total: total + 1,
                    };
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; (data, consumed, done).
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = c.feed(piece, |d| out.extend_from_slice(d))?;
            used += n;
            if c.is_done() {
                break;
            }
        }
        Ok((out, used, c.is_done()))
    }

    #[test]
    fn reads_chunks_in_any_pieces_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, used, done) = run(body, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert!(done);
            assert_eq!(used, body.len() - 4, "step {step}");
        }
    }

    #[test]
    fn refuses_loose_framing() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"+5\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"5 \r\nhello\r\n",
            b"0\r\n\n",
            b"5\r\nhelloXX",
            b"1;a\x00b\r\n",
        ] {
            assert!(run(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
