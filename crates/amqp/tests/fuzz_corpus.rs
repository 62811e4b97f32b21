//! A deterministic fuzz corpus for stable CI: mutations of valid frames and tables from a
//! seeded xorshift generator, replayed through the same entry points and invariants as the
//! cargo-fuzz targets in `fuzz/` (which need nightly and are run by hand).
//!
//! Mutations: bit flips, interesting bytes (0, 0xff, frame end, type letters), truncation,
//! random tails, corrupted length fields (the frame size and any 32-bit or 8-bit length
//! inside), duplicated and deleted chunks, and splices of two inputs.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use postroom_amqp::frame;
use postroom_amqp::method::*;
use postroom_amqp::wire::Reader;
use postroom_amqp::{
    BasicProperties, ContentHeader, Decimal, DecodeError, FieldTable, FieldValue, Frame, Method,
};

/// Inputs per test; four tests, so 200k inputs in all.
const INPUTS: usize = 50_000;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

fn sample_table() -> FieldTable {
    let mut caps = FieldTable::new();
    caps.insert("publisher_confirms", true);
    caps.insert("consumer_cancel_notify", true);
    FieldTable(vec![
        ("product".into(), FieldValue::string("postroom")),
        ("i8".into(), FieldValue::I8(-1)),
        ("u8".into(), FieldValue::U8(7)),
        ("i16".into(), FieldValue::I16(-300)),
        ("u16".into(), FieldValue::U16(300)),
        ("i32".into(), FieldValue::I32(-70_000)),
        ("u32".into(), FieldValue::U32(70_000)),
        ("i64".into(), FieldValue::I64(-1 << 40)),
        ("f32".into(), FieldValue::F32(1.5)),
        ("f64".into(), FieldValue::F64(-0.25)),
        ("dec".into(), FieldValue::Decimal(Decimal { scale: 2, value: 12345 })),
        ("bin".into(), FieldValue::Bytes(Bytes::from_static(b"\0\x01"))),
        (
            "arr".into(),
            FieldValue::Array(vec![
                FieldValue::Void,
                FieldValue::Bool(false),
                FieldValue::Array(vec![FieldValue::Timestamp(1_700_000_000)]),
                FieldValue::Table(caps.clone()),
            ]),
        ),
        ("capabilities".into(), FieldValue::Table(caps)),
        ("void".into(), FieldValue::Void),
    ])
}

fn x_args() -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("x-message-ttl", FieldValue::I32(60_000));
    t.insert("x-dead-letter-exchange", "dlx");
    t.insert("x-max-length", 10_i64);
    t
}

fn seed_methods() -> Vec<Method> {
    vec![
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: sample_table(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        }
        .into(),
        ConnectionStartOk {
            client_properties: sample_table(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        }
        .into(),
        ConnectionTune { channel_max: 2047, frame_max: 131_072, heartbeat: 60 }.into(),
        ConnectionOpen { virtual_host: "/".into(), capabilities: "".into(), insist: true }.into(),
        ConnectionClose {
            reply_code: 320,
            reply_text: "CONNECTION_FORCED".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
        ChannelClose {
            reply_code: 404,
            reply_text: "NOT_FOUND - no queue 'q'".into(),
            class_id: 50,
            method_id: 10,
        }
        .into(),
        ExchangeDeclare {
            ticket: 0,
            exchange: "logs".into(),
            kind: "topic".into(),
            passive: false,
            durable: true,
            auto_delete: true,
            internal: false,
            nowait: true,
            arguments: x_args(),
        }
        .into(),
        QueueDeclare {
            ticket: 0,
            queue: "tasks".into(),
            passive: false,
            durable: true,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: x_args(),
        }
        .into(),
        QueueDeclareOk { queue: "amq.gen-abc".into(), message_count: 3, consumer_count: 1 }.into(),
        QueueBind {
            ticket: 0,
            queue: "tasks".into(),
            exchange: "logs".into(),
            routing_key: "a.*.c".into(),
            nowait: false,
            arguments: FieldTable::new(),
        }
        .into(),
        BasicQos { prefetch_size: 0, prefetch_count: 10, global: false }.into(),
        BasicConsume {
            ticket: 0,
            queue: "tasks".into(),
            consumer_tag: "ctag-1".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: x_args(),
        }
        .into(),
        BasicPublish {
            ticket: 0,
            exchange: "logs".into(),
            routing_key: "a.b.c".into(),
            mandatory: true,
            immediate: false,
        }
        .into(),
        BasicDeliver {
            consumer_tag: "ctag-1".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "logs".into(),
            routing_key: "a.b.c".into(),
        }
        .into(),
        BasicGetOk {
            delivery_tag: 7,
            redelivered: false,
            exchange: "".into(),
            routing_key: "tasks".into(),
            message_count: 9,
        }
        .into(),
        BasicAck { delivery_tag: u64::MAX, multiple: true }.into(),
        BasicNack { delivery_tag: 5, multiple: false, requeue: true }.into(),
        ConfirmSelect { nowait: false }.into(),
        TxCommit {}.into(),
    ]
}

fn full_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        headers: Some(sample_table()),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("corr".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some("m-1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("event".into()),
        user_id: Some("guest".into()),
        app_id: Some("app".into()),
        cluster_id: Some("c".into()),
    }
}

/// Valid byte streams: single frames, and a publish with its content.
fn seed_streams() -> Vec<Bytes> {
    let mut seeds = Vec::new();
    for (i, m) in seed_methods().iter().enumerate() {
        let mut buf = BytesMut::new();
        m.encode_frame(i as u16 % 3, &mut buf);
        seeds.push(buf.freeze());
    }
    for (props, body) in [
        (full_properties(), &b"{\"hello\": \"world\"}"[..]),
        (BasicProperties::default(), &b""[..]),
        (BasicProperties { delivery_mode: Some(1), ..Default::default() }, &[0xce; 300][..]),
    ] {
        let mut buf = BytesMut::new();
        seed_methods()[12].encode_frame(1, &mut buf);
        frame::encode_content(1, &props.to_bytes(), body, 64, &mut buf);
        seeds.push(buf.freeze());
    }
    let mut buf = BytesMut::new();
    Frame::Header { channel: 3, header: ContentHeader::new(1 << 20, full_properties()) }
        .encode(&mut buf);
    frame::encode_heartbeat(&mut buf);
    seeds.push(buf.freeze());
    seeds
}

fn seed_tables() -> Vec<Bytes> {
    [sample_table(), x_args(), FieldTable::new()]
        .iter()
        .map(|t| {
            let mut buf = BytesMut::new();
            t.encode_into(&mut buf);
            buf.freeze()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

const INTERESTING_BYTES: &[u8] = b"\x00\x01\x02\x03\x08\x7f\x80\xce\xfftbBsuIilfdDSxATFVZ";

fn interesting_u32(rng: &mut XorShift, len: usize) -> u32 {
    match rng.below(8) {
        0 => 0,
        1 => 1,
        2 => len as u32,
        3 => (len as u32).wrapping_add(1),
        4 => (len as u32).wrapping_sub(1),
        5 => 0x7fff_ffff,
        6 => u32::MAX,
        _ => rng.next() as u32,
    }
}

fn mutate(input: &[u8], other: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(10) {
            0 | 1 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            2 if len > 0 => {
                let at = rng.below(len);
                data[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            3 => data.truncate(rng.below(len + 1)),
            4 => {
                for _ in 0..rng.below(16) {
                    data.push(rng.next() as u8);
                }
            }
            // The frame size field.
            5 if len >= 7 => {
                let v = interesting_u32(rng, len.saturating_sub(8));
                data[3..7].copy_from_slice(&v.to_be_bytes());
            }
            // Any 32-bit length inside (longstr, table, array).
            6 if len >= 4 => {
                let at = rng.below(len - 3);
                let v = interesting_u32(rng, len - at - 4);
                data[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            // Any 8-bit length inside (shortstr).
            7 if len > 0 => {
                let at = rng.below(len);
                data[at] = [0, 1, 254, 255, (len - at) as u8][rng.below(5)];
            }
            8 if len > 1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                if rng.chance(2) {
                    data.drain(start..end);
                } else {
                    let chunk = data[start..end].to_vec();
                    let at = rng.below(data.len() + 1);
                    data.splice(at..at, chunk);
                }
            }
            _ if !other.is_empty() => {
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------
// Entry points and invariants (the same as fuzz/fuzz_targets)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Outcomes(BTreeMap<String, usize>);

impl Outcomes {
    fn count(&mut self, result: Result<(), &DecodeError>) {
        let key = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                let debug = format!("{e:?}");
                debug.split(['(', ' ']).next().unwrap_or_default().to_string()
            }
        };
        *self.0.entry(key).or_default() += 1;
    }

    fn assert_saw(&self, kinds: &[&str]) {
        eprintln!("outcomes: {:?}", self.0);
        for kind in kinds {
            assert!(
                self.0.get(*kind).copied().unwrap_or(0) > 0,
                "the corpus never produced {kind}: {:?}",
                self.0
            );
        }
    }
}

fn encode_frame(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

fn encode_table(table: &FieldTable) -> Bytes {
    let mut buf = BytesMut::new();
    table.encode_into(&mut buf);
    buf.freeze()
}

/// The `frame` fuzz target's body: measure, parse, re-encode, frame after frame.
fn run_stream(data: &[u8], frame_max: u32, outcomes: &mut Outcomes) {
    let mut rest = Bytes::copy_from_slice(data);
    loop {
        match frame::check(&rest, frame_max) {
            Ok(len) => {
                assert!(len >= 8 && len <= rest.len(), "len {len} of {}", rest.len());
                assert!(frame_max == 0 || len <= frame_max as usize);
                match Frame::parse(rest.split_to(len)) {
                    Ok(parsed) => {
                        outcomes.count(Ok(()));
                        let once = encode_frame(&parsed);
                        assert_eq!(frame::check(&once, 0), Ok(once.len()));
                        let again = Frame::parse(once.clone()).expect("re-encoded frame parses");
                        assert_eq!(encode_frame(&again), once, "unstable: {parsed:?}");
                    }
                    Err(e) => outcomes.count(Err(&e)),
                }
            }
            Err(e) => {
                if let DecodeError::FrameTooLarge { size, .. } = e {
                    assert!(rest.len() >= 7 && size > frame_max as usize);
                }
                outcomes.count(Err(&e));
                break;
            }
        }
    }
}

/// The `table` fuzz target's body.
fn run_table(data: &[u8], outcomes: &mut Outcomes) {
    let data = Bytes::copy_from_slice(data);
    let mut r = Reader::new(&data);
    match FieldTable::decode(&mut r) {
        Ok(table) => {
            outcomes.count(Ok(()));
            let consumed = data.len() - r.remaining();
            let once = encode_table(&table);
            assert_eq!(once.len(), consumed, "size differs: {table:?}");
            let again = FieldTable::decode(&mut Reader::new(&once)).expect("re-encoded decodes");
            assert_eq!(encode_table(&again), once, "unstable: {table:?}");
        }
        Err(e) => outcomes.count(Err(&e)),
    }
}

fn frame_max_for(rng: &mut XorShift) -> u32 {
    match rng.below(5) {
        0 => 0,
        1 => 4096,
        2 => 131_072,
        3 => 64,
        _ => rng.below(1024) as u32,
    }
}

fn run_frames(seed: u64) -> Outcomes {
    let seeds = seed_streams();
    let mut rng = XorShift(seed);
    let mut outcomes = Outcomes::default();
    // The unmutated seeds parse whole.
    for s in &seeds {
        let mut ok = Outcomes::default();
        run_stream(s, 0, &mut ok);
        assert_eq!(ok.0.keys().collect::<Vec<_>>(), ["Incomplete", "ok"]);
    }
    for _ in 0..INPUTS {
        let input = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let data = mutate(input, other, &mut rng);
        let frame_max = frame_max_for(&mut rng);
        run_stream(&data, frame_max, &mut outcomes);
        // Method payloads and property lists straight to their decoders, too.
        if data.len() > 8 {
            let payload = Bytes::copy_from_slice(&data[7..data.len() - 1]);
            let _ = Method::decode(&payload);
            let _ = BasicProperties::decode(&mut Reader::new(&payload));
        }
    }
    outcomes
}

#[test]
fn mutated_frames_stream_a() {
    let outcomes = run_frames(0x5eed_0001);
    outcomes.assert_saw(&[
        "ok",
        "Incomplete",
        "FrameTooLarge",
        "BadFrameEnd",
        "UnknownFrameType",
        "UnknownMethod",
        "Truncated",
        "UnknownFieldType",
        "InvalidUtf8",
    ]);
}

#[test]
fn mutated_frames_stream_b() {
    let outcomes = run_frames(0xdead_beef_cafe_f00d);
    outcomes.assert_saw(&["ok", "Truncated", "BadFrameEnd", "Invalid"]);
}

fn run_tables(seed: u64) -> Outcomes {
    let seeds = seed_tables();
    let mut rng = XorShift(seed);
    let mut outcomes = Outcomes::default();
    for _ in 0..INPUTS {
        let input = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let data = mutate(input, other, &mut rng);
        run_table(&data, &mut outcomes);
    }
    outcomes
}

#[test]
fn mutated_tables_a() {
    run_tables(0x7ab1_e001).assert_saw(&["ok", "Truncated", "UnknownFieldType", "InvalidUtf8"]);
}

#[test]
fn mutated_tables_b() {
    run_tables(0x7ab1_e002).assert_saw(&["ok", "Truncated", "UnknownFieldType"]);
}
