//! Server-to-client websocket frames (RFC 6455 section 5.2), encoded once.
//!
//! A server's frames are not masked, so the bytes of a change's frame are the same for
//! every subscriber: the fan-out encodes each change once and every connection writes
//! the same shared bytes.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest payload of a control frame (ping, pong, close).
const CONTROL_MAX: usize = 125;

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(FIN | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A whole text message in one frame.
pub fn text(payload: &str) -> Bytes {
    frame(TEXT, payload.as_bytes())
}

/// A close frame with a status code and a reason (cut at a character boundary to fit
/// the 125 bytes a control frame may carry).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(CONTROL_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &payload)
}

/// The status code of a close frame made by [`close`]; `None` for any other frame.
pub fn close_code(frame: &[u8]) -> Option<u16> {
    match frame {
        [b0, len, hi, lo, ..] if *b0 == FIN | CLOSE && *len >= 2 && *len < 126 => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        _ => None,
    }
}

pub fn ping(payload: &[u8]) -> Bytes {
    frame(PING, &payload[..payload.len().min(CONTROL_MAX)])
}

pub fn pong(payload: &[u8]) -> Bytes {
    frame(PONG, &payload[..payload.len().min(CONTROL_MAX)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame};

    /// Decode with actix-http's own client-side codec: an independent reading of the
    /// bytes we write.
    fn decode(bytes: &Bytes) -> Frame {
        let mut codec = Codec::new().client_mode().max_size(1 << 20);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = codec.decode(&mut buf).unwrap().expect("a whole frame");
        assert!(buf.is_empty(), "bytes left over after the frame");
        frame
    }

    #[test]
    fn text_frames_of_every_length_class_decode() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
            let s = "x".repeat(len);
            match decode(&text(&s)) {
                Frame::Text(b) => assert_eq!(b.len(), len),
                other => panic!("{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_code_of_a_close_frame_is_read_back() {
        assert_eq!(close_code(&close(4008, "slow consumer")), Some(4008));
        assert_eq!(close_code(&close(1000, "")), Some(1000));
        assert_eq!(close_code(&close(1011, &"x".repeat(300))), Some(1011));
        assert_eq!(close_code(&text("{}")), None);
        assert_eq!(close_code(&ping(b"12")), None);
    }

    #[test]
    fn close_carries_code_and_a_reason_cut_to_fit() {
        match decode(&close(4008, "slow consumer")) {
            Frame::Close(Some(r)) => {
                assert_eq!(u16::from(r.code), 4008);
                assert_eq!(r.description.as_deref(), Some("slow consumer"));
            }
            other => panic!("{other:?}"),
        }
        // 200 two-byte characters: cut to 123 bytes would split one; 122 is kept.
        let long = "é".repeat(200);
        match decode(&close(4008, &long)) {
            Frame::Close(Some(r)) => assert_eq!(r.description.unwrap().len(), 122),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping_and_pong_keep_their_payload() {
        assert!(matches!(decode(&ping(b"hi")), Frame::Ping(b) if &b[..] == b"hi"));
        assert!(matches!(decode(&pong(b"yo")), Frame::Pong(b) if &b[..] == b"yo"));
    }
}
