//! Envelope framing of streaming bodies: `flags: u8`, `length: u32` big-endian, then `length`
//! bytes of payload.
//!
//! Flag `0x01` marks a compressed payload (never produced or accepted here: compression is not
//! negotiated), flag `0x02` the end-of-stream frame that closes a response stream.

use crate::{Error, MAX_MESSAGE_BYTES, error};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Flag bit: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit: this is the end-of-stream frame.
pub const FLAG_END_STREAM: u8 = 0x02;
const HEADER_LEN: usize = 5;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    /// Whether this frame ends the stream.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }

    /// For an end-of-stream frame: `Ok(())` if the stream succeeded, else its error.
    pub fn end_stream_result(&self) -> Result<(), Error> {
        error::parse_end_stream(&self.payload)
    }
}

/// Encodes one message frame.
pub fn encode(payload: &[u8]) -> Bytes {
    encode_with_flags(0, payload)
}

/// Encodes the end-of-stream frame: `{}`, or `{"error":…}` when the stream failed.
pub fn encode_end_stream(error: Option<&Error>) -> Bytes {
    encode_with_flags(FLAG_END_STREAM, &error::end_stream_payload(error))
}

fn encode_with_flags(flags: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.put_u8(flags);
    // Payloads are bounded by MAX_MESSAGE_BYTES far below u32::MAX; saturate rather than wrap.
    buf.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    buf.put_slice(payload);
    buf.freeze()
}

/// An incremental frame decoder: feed it body chunks as they arrive, take frames out.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_MESSAGE_BYTES)
    }
}

impl Decoder {
    /// A decoder refusing frames whose payload exceeds `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_payload,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. An oversized length is
    /// `resource_exhausted` as soon as its header arrives (nothing is buffered for it); a
    /// compressed frame is `internal`, since no compression was negotiated.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_payload {
            return Err(Error::new(
                crate::Code::ResourceExhausted,
                format!(
                    "message of {len} bytes exceeds the limit of {} bytes",
                    self.max_payload
                ),
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(Error::internal(
                "compressed frame, but no compression was negotiated",
            ));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Call at end of body: bytes left over mean the stream was cut inside a frame.
    pub fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!(
                "stream ended inside a frame ({} bytes left over)",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Decoder, FLAG_END_STREAM, encode, encode_end_stream};
    use crate::Code;

    #[test]
    fn matches_the_observed_wire_bytes() {
        let frame = encode(br#"{"event":{"start":{"pid":25081}}}"#);
        assert_eq!(&frame[..5], &[0, 0, 0, 0, 0x21]);
        assert_eq!(&encode_end_stream(None)[..], &[2, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut wire = encode(b"one").to_vec();
        wire.extend_from_slice(&encode(b""));
        wire.extend_from_slice(&encode_end_stream(None));
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for byte in wire {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0].payload[..], b"one");
        assert!(frames[1].payload.is_empty());
        assert_eq!(frames[2].flags, FLAG_END_STREAM);
        assert!(frames[2].end_stream_result().is_ok());
    }

    #[test]
    fn refuses_oversized_and_compressed_frames() {
        let mut decoder = Decoder::new(4);
        decoder.push(&[0, 0, 0, 0, 5]);
        assert_eq!(
            decoder.next_frame().unwrap_err().code,
            Code::ResourceExhausted
        );

        let mut decoder = Decoder::new(u32::MAX as usize);
        decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decoder.next_frame().unwrap(),
            None,
            "a huge frame is only refused by the cap"
        );

        let mut decoder = Decoder::default();
        decoder.push(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(decoder.next_frame().unwrap_err().code, Code::Internal);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut decoder = Decoder::default();
        decoder.push(&encode(b"abc")[..6]);
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(decoder.finish().unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes in random chunk sizes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut decoder = Decoder::new(1024);
            for _ in 0..(next() % 8) {
                let chunk: Vec<u8> = (0..(next() % 12)).map(|_| next() as u8).collect();
                decoder.push(&chunk);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let _ = frame.end_stream_result();
                }
            }
            let _ = decoder.finish();
        }
    }
}
