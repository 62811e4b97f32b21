//! Fuzzes `FieldTable::decode` on arbitrary bytes.
//!
//! Besides "no panic, no crash": a table that decodes re-encodes to exactly as many bytes
//! as were consumed, and the re-encoding decodes and re-encodes to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use postroom_amqp::FieldTable;
use postroom_amqp::wire::Reader;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let mut r = Reader::new(&data);
    if let Ok(table) = FieldTable::decode(&mut r) {
        let consumed = data.len() - r.remaining();
        let once = encode(&table);
        assert_eq!(once.len(), consumed, "re-encoded size differs from consumed size");
        let again = FieldTable::decode(&mut Reader::new(&once)).expect("re-encoded table decodes");
        assert_eq!(encode(&again), once, "re-encoding is not stable");
    }
});

fn encode(table: &FieldTable) -> Bytes {
    let mut buf = BytesMut::new();
    table.encode_into(&mut buf);
    buf.freeze()
}
