//! Frame Streams, the transport dnstap rides on (as NSD and Knot write it to a Unix socket):
//! a data frame is a 32-bit big-endian length and that many bytes; a control frame is a zero
//! length (the escape), a 32-bit control length, a 32-bit control type and fields (32-bit field
//! type, 32-bit length, bytes; type 1 is a content type). On a bidirectional connection the
//! writer (the DNS daemon) sends READY with the content types it offers, the reader (us)
//! answers ACCEPT with the one it takes, the writer sends START and data frames, then STOP, and
//! the reader answers FINISH.
//!
//! [`Decoder`] turns bytes as they arrive into frames, refusing anything malformed or oversized
//! with a reason (the connection is then closed); [`control`] builds the reader's answers.

/// The content type dnstap is sent as.
pub const DNSTAP: &[u8] = b"protobuf:dnstap.Dnstap";
/// Largest data frame taken (a DNS message over TCP is at most 64 KiB, plus dnstap's fields).
pub const MAX_DATA: usize = 256 << 10;
/// Largest control frame taken (the protocol's own limit).
pub const MAX_CONTROL: usize = 512;
/// Field type of a content type.
const FIELD_CONTENT_TYPE: u32 = 1;

/// Control frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Reader -> writer: the content type taken.
    Accept,
    /// Writer -> reader: data follows.
    Start,
    /// Writer -> reader: no more data.
    Stop,
    /// Writer -> reader: the content types offered.
    Ready,
    /// Reader -> writer: the answer to STOP.
    Finish,
}

impl Control {
    fn code(self) -> u32 {
        match self {
            Control::Accept => 1,
            Control::Start => 2,
            Control::Stop => 3,
            Control::Ready => 4,
            Control::Finish => 5,
        }
    }

    fn from_code(c: u32) -> Option<Control> {
        Some(match c {
            1 => Control::Accept,
            2 => Control::Start,
            3 => Control::Stop,
            4 => Control::Ready,
            5 => Control::Finish,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A data frame's payload.
    Data(Vec<u8>),
    /// A control frame with its content types.
    Control(Control, Vec<Vec<u8>>),
}

/// The stream is not Frame Streams (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A data frame longer than [`MAX_DATA`].
    #[error("data frame of {0} bytes (at most {MAX_DATA})")]
    TooLong(usize),
    /// A control frame longer than [`MAX_CONTROL`] or too short for its type.
    #[error("control frame of {0} bytes (4 to {MAX_CONTROL})")]
    BadControlLength(usize),
    /// An unknown control type.
    #[error("unknown control frame type {0}")]
    UnknownControl(u32),
    /// Fields that do not fit the control frame.
    #[error("control frame fields run past its end")]
    BadFields,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Bytes in, frames out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let b = &self.buf[self.start..];
        if b.len() < 4 {
            return Ok(None);
        }
        let len = be32(b) as usize;
        if len > 0 {
            if len > MAX_DATA {
                return Err(FrameError::TooLong(len));
            }
            if b.len() < 4 + len {
                return Ok(None);
            }
            let data = b[4..4 + len].to_vec();
            self.consume(4 + len);
            return Ok(Some(Frame::Data(data)));
        }
        if b.len() < 8 {
            return Ok(None);
        }
        let clen = be32(&b[4..]) as usize;
        if !(4..=MAX_CONTROL).contains(&clen) {
            return Err(FrameError::BadControlLength(clen));
        }
        if b.len() < 8 + clen {
            return Ok(None);
        }
        let c = &b[8..8 + clen];
        let kind = Control::from_code(be32(c)).ok_or(FrameError::UnknownControl(be32(c)))?;
        let mut types = Vec::new();
        let mut at = 4;
        while at < c.len() {
            if c.len() - at < 8 {
                return Err(FrameError::BadFields);
            }
            let ftype = be32(&c[at..]);
            let flen = be32(&c[at + 4..]) as usize;
            at += 8;
            if flen > c.len() - at {
                return Err(FrameError::BadFields);
            }
            if ftype == FIELD_CONTENT_TYPE {
                types.push(c[at..at + flen].to_vec());
            }
            at += flen;
        }
        self.consume(8 + clen);
        Ok(Some(Frame::Control(kind, types)))
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        // Keep the buffer from growing without bound on a long connection.
        if self.start > 64 << 10 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// A control frame of `kind` carrying `content_type` (if any), as bytes to send.
pub fn control(kind: Control, content_type: Option<&[u8]>) -> Vec<u8> {
    let mut body = kind.code().to_be_bytes().to_vec();
    if let Some(t) = content_type {
        body.extend(FIELD_CONTENT_TYPE.to_be_bytes());
        body.extend((t.len() as u32).to_be_bytes());
        body.extend_from_slice(t);
    }
    let mut out = vec![0, 0, 0, 0];
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// A data frame carrying `payload`, as bytes (what a writer sends; for tests and tools).
pub fn data(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writers_session_decodes_in_any_pieces() {
        let mut stream = control(Control::Ready, Some(DNSTAP));
        stream.extend(control(Control::Start, Some(DNSTAP)));
        stream.extend(data(b"one"));
        stream.extend(data(&[7u8; 70_000]));
        stream.extend(control(Control::Stop, None));
        for piece in [1, 3, 7, 4096, stream.len()] {
            let mut d = Decoder::default();
            let mut frames = Vec::new();
            for chunk in stream.chunks(piece) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Control(Control::Ready, vec![DNSTAP.to_vec()]),
                    Frame::Control(Control::Start, vec![DNSTAP.to_vec()]),
                    Frame::Data(b"one".to_vec()),
                    Frame::Data(vec![7u8; 70_000]),
                    Frame::Control(Control::Stop, vec![]),
                ],
                "in pieces of {piece}"
            );
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let refuse = |bytes: &[u8]| {
            let mut d = Decoder::default();
            d.push(bytes);
            d.next_frame().unwrap_err()
        };
        assert_eq!(
            refuse(&((MAX_DATA + 1) as u32).to_be_bytes()),
            FrameError::TooLong(MAX_DATA + 1)
        );
        assert_eq!(
            refuse(&[0, 0, 0, 0, 0, 0, 4, 0]),
            FrameError::BadControlLength(1024)
        );
        assert_eq!(
            refuse(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0]),
            FrameError::BadControlLength(2)
        );
        assert_eq!(
            refuse(&[0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 9]),
            FrameError::UnknownControl(9)
        );
        // A content-type field claiming more bytes than the frame has.
        let mut c = control(Control::Ready, Some(DNSTAP));
        let n = c.len();
        c[19] = 200;
        assert_eq!(refuse(&c[..n]), FrameError::BadFields);
        // Truncated: nothing yet, no error.
        let mut d = Decoder::default();
        d.push(&data(b"abcdef")[..7]);
        assert_eq!(d.next_frame(), Ok(None));
    }
}
