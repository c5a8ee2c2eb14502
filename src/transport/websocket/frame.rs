//! RFC 6455 framing for the server side, without I/O: reassembles a client's masked frames
//! into messages and builds the headers of the server's unmasked frames. Buffers exist only
//! while a frame or a fragmented message is incomplete, so an idle socket holds none.

use bytes::{Buf, Bytes, BytesMut};

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Close codes the server sends (RFC 6455 §7.4.1).
pub(super) mod close {
    /// Normal closure: the client was destroyed.
    pub(crate) const NORMAL: u16 = 1000;
    /// Going away: the server shuts down.
    pub(crate) const AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// A frame Faye clients never send (a batch over the limit).
    pub(crate) const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// Why the peer's bytes end the socket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The peer broke the framing rules.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or a close reason) that is not UTF-8.
    #[error("websocket text that is not UTF-8")]
    InvalidUtf8,
    /// A frame or message larger than the limit.
    #[error("websocket message of {size} bytes, over the limit of {max}")]
    TooBig {
        /// Bytes claimed so far.
        size: u64,
        /// The limit.
        max: usize,
    },
}

impl FrameError {
    /// The close code that tells the peer why.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL,
            FrameError::InvalidUtf8 => close::INVALID_DATA,
            FrameError::TooBig { .. } => close::TOO_BIG,
        }
    }
}

/// One complete thing from the peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A whole text or binary message (a text one is valid UTF-8).
    Message(Bytes),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// Reassembles messages from the bytes the peer sends, across reads.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// Bytes read but not parsed yet; `None` when there are none (freed at once).
    buf: Option<BytesMut>,
    /// A fragmented message in progress (boxed: rare, and kept off the idle state).
    fragments: Option<Box<Fragments>>,
}

impl Reader {
    /// Adds bytes read from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match &mut self.buf {
            Some(buf) => buf.extend_from_slice(bytes),
            None => self.buf = Some(BytesMut::from(bytes)),
        }
    }

    /// True while nothing read is left unparsed and no message is half-assembled.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.buf.is_none() && self.fragments.is_none()
    }

    /// The next complete item, if the bytes pushed so far hold one. Pongs are consumed
    /// silently. `max` bounds a message's size (over it: [`FrameError::TooBig`], detected
    /// from the frame header before the payload arrives).
    pub(crate) fn next(&mut self, max: usize) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(buf) = self.buf.as_mut() else { return Ok(None) };
            let Some(header) = Header::parse(buf)? else { return Ok(None) };
            let control = header.opcode & 0x8 != 0;
            match header.opcode {
                OP_CONTINUATION if self.fragments.is_none() => {
                    return Err(FrameError::Protocol("a continuation frame with nothing to continue"));
                }
                OP_TEXT | OP_BINARY if self.fragments.is_some() => {
                    return Err(FrameError::Protocol("a new message inside a fragmented one"));
                }
                OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(FrameError::Protocol("reserved opcode")),
            }
            if control && (!header.fin || header.len > 125) {
                return Err(FrameError::Protocol("a control frame fragmented or over 125 bytes"));
            }
            if !control {
                let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len()) as u64;
                let size = so_far.saturating_add(header.len);
                if size > max as u64 {
                    return Err(FrameError::TooBig { size, max });
                }
            }
            // Within `max` (or 125) here, so it fits a usize.
            let len = header.len as usize;
            let total = header.size + len;
            let Some(mask) = header.mask else { return Ok(None) };
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            buf.advance(header.size);
            let mut payload = buf.split_to(len);
            if buf.is_empty() {
                self.buf = None;
            }
            unmask(&mut payload, mask);
            match header.opcode {
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => continue,
                OP_CLOSE => return close_frame(&payload).map(|code| Some(Incoming::Close(code))),
                OP_TEXT | OP_BINARY if header.fin => {
                    return finish_message(header.opcode == OP_TEXT, payload).map(Some);
                }
                OP_TEXT | OP_BINARY => {
                    self.fragments = Some(Box::new(Fragments { text: header.opcode == OP_TEXT, data: payload }));
                }
                _ => {
                    // A continuation, checked above to have a message to continue.
                    let Some(fragments) = self.fragments.as_mut() else { continue };
                    fragments.data.extend_from_slice(&payload);
                    if header.fin
                        && let Some(done) = self.fragments.take()
                    {
                        return finish_message(done.text, done.data).map(Some);
                    }
                }
            }
        }
    }
}

fn finish_message(text: bool, data: BytesMut) -> Result<Incoming, FrameError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(Incoming::Message(data.freeze()))
}

/// The code of a close frame's payload, checked as RFC 6455 §7.4 asks.
fn close_frame(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("a close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(FrameError::Protocol("an invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4.1 and the IANA registry; 3000-4999 for applications).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A parsed frame header.
#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: u8,
    /// `None` while the mask has not arrived.
    mask: Option<[u8; 4]>,
    /// Payload length as claimed.
    len: u64,
    /// Header bytes, mask included.
    size: usize,
}

impl Header {
    /// `None` until the length has arrived. The size limit is checked by the caller as soon
    /// as the length is known, so a huge claim is refused before its payload.
    fn parse(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("an unmasked frame from a client"));
        }
        let (len, len_size) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(FrameError::Protocol("a 64-bit length with its high bit set"));
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        let size = 2 + len_size + 4;
        // Known before the mask arrives: the caller checks the size limit first.
        let mask = buf.get(2 + len_size..size).map(|m| [m[0], m[1], m[2], m[3]]);
        Ok(Some(Header { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, mask, len, size }))
    }
}

/// XORs the payload with the client's mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The header of an unmasked server frame (FIN set) carrying `len` payload bytes.
pub(super) fn header(opcode: u8, len: usize) -> ([u8; 10], u8) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A close frame's payload: the code and a short reason.
pub(super) fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    // A control frame carries at most 125 bytes; reasons here are short ASCII.
    out.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    #[test]
    fn a_message_split_anywhere_is_reassembled_and_nothing_is_kept_after() {
        let payload: Vec<u8> = br#"[{"channel":"/meta/connect"}]"#.repeat(20);
        let bytes = client_frame(true, OP_TEXT, &payload);
        for split in 0..bytes.len() {
            let mut reader = Reader::default();
            reader.push(&bytes[..split]);
            assert_eq!(reader.next(1 << 20), Ok(None), "split at {split}");
            reader.push(&bytes[split..]);
            assert_eq!(reader.next(1 << 20), Ok(Some(Incoming::Message(Bytes::from(payload.clone())))));
            assert!(reader.is_idle(), "no buffer is kept once the message is out");
        }
    }

    #[test]
    fn fragments_and_interleaved_pings_make_one_message() {
        let mut reader = Reader::default();
        reader.push(&client_frame(false, OP_TEXT, b"[1,"));
        reader.push(&client_frame(true, OP_PING, b"hi"));
        reader.push(&client_frame(false, OP_CONTINUATION, b"2,"));
        reader.push(&client_frame(true, OP_PONG, b""));
        reader.push(&client_frame(true, OP_CONTINUATION, b"3]"));
        assert_eq!(reader.next(100), Ok(Some(Incoming::Ping(Bytes::from_static(b"hi")))));
        assert_eq!(reader.next(100), Ok(Some(Incoming::Message(Bytes::from_static(b"[1,2,3]")))));
        assert_eq!(reader.next(100), Ok(None));
        assert!(reader.is_idle());
    }

    #[test]
    fn violations_map_to_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(true, OP_TEXT, b"\xff"), close::INVALID_DATA),
            (client_frame(true, 0x3, b"x"), close::PROTOCOL),
            (client_frame(true, OP_CONTINUATION, b"x"), close::PROTOCOL),
            (client_frame(false, OP_PING, b"x"), close::PROTOCOL),
            (client_frame(true, OP_CLOSE, &999u16.to_be_bytes()), close::PROTOCOL),
            (client_frame(true, OP_CLOSE, b"\x03"), close::PROTOCOL),
            (client_frame(true, OP_TEXT, &[b' '; 101]), close::TOO_BIG),
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], close::PROTOCOL), // unmasked
            (vec![0xc1, 0x80, 0, 0, 0, 0], close::PROTOCOL),                   // RSV1
        ];
        for (bytes, code) in cases {
            let mut reader = Reader::default();
            reader.push(&bytes);
            let err = reader.next(100).expect_err("a violation");
            assert_eq!(err.close_code(), code, "{err}");
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_from_the_header_alone() {
        let mut reader = Reader::default();
        reader.push(&[0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]); // 4 GiB claimed, no mask yet
        assert!(matches!(reader.next(1 << 20), Err(FrameError::TooBig { .. })));
    }

    #[test]
    fn close_frames_carry_their_code() {
        let mut reader = Reader::default();
        reader.push(&client_frame(true, OP_CLOSE, &1001u16.to_be_bytes()));
        assert_eq!(reader.next(100), Ok(Some(Incoming::Close(Some(1001)))));
        let (h, n) = header(OP_TEXT, 70_000);
        assert_eq!(&h[..n as usize], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
