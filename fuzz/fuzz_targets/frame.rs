//! Fuzzes the server's read loop: `frame::check` then `Frame::parse`, frame after frame.
//!
//! Input: a big-endian `frame_max` in the first 4 bytes, then the byte stream. Besides "no
//! panic, no crash", it checks that `check` measures within bounds and that every frame
//! that parses re-encodes to bytes that parse and re-encode to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use postroom_amqp::{DecodeError, Frame, frame};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let frame_max = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let mut rest = Bytes::copy_from_slice(&data[4..]);
    let _ = frame::check_protocol_header(&rest);
    loop {
        match frame::check(&rest, frame_max) {
            Ok(len) => {
                assert!(len >= 8 && len <= rest.len(), "len {len} of {}", rest.len());
                assert!(frame_max == 0 || len <= frame_max as usize);
                if let Ok(parsed) = Frame::parse(rest.split_to(len)) {
                    let once = encode(&parsed);
                    assert_eq!(frame::check(&once, 0), Ok(once.len()));
                    let again = Frame::parse(once.clone()).expect("re-encoded frame parses");
                    assert_eq!(encode(&again), once, "re-encoding is not stable");
                }
            }
            Err(DecodeError::Incomplete) => break,
            Err(DecodeError::FrameTooLarge { size, .. }) => {
                assert!(rest.len() >= 7 && size > frame_max as usize);
                break;
            }
            Err(_) => break,
        }
    }
});

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}
