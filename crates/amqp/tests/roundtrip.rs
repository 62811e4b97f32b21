//! Property tests: everything the codec encodes decodes back to the same value, frames are
//! measured exactly by `frame::check`, and content is split to fit `frame_max`.

use bytes::{Bytes, BytesMut};
use postroom_amqp::constants::{CLASS_BASIC, FRAME_BODY, FRAME_HEADER, FRAME_OVERHEAD};
use postroom_amqp::frame::{self, encode_content};
use postroom_amqp::method::*;
use postroom_amqp::wire::Reader;
use postroom_amqp::{
    BasicProperties, ContentHeader, Decimal, DecodeError, FieldTable, FieldValue, Frame, LongStr,
    Method, ShortStr,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Any `shortstr`, including multi-byte characters and strings longer than 255 bytes (which
/// `ShortStr::from` cuts at a character boundary).
fn short_str() -> impl Strategy<Value = ShortStr> {
    // Vectors of chars rather than regexes: generation dominates the run time in debug.
    prop_oneof![
        4 => proptest::collection::vec(proptest::char::range('-', 'z'), 0..24),
        2 => proptest::collection::vec(any::<char>(), 0..40),
        1 => proptest::collection::vec(any::<char>(), 60..120),
    ]
    .prop_map(|chars| ShortStr::from(chars.into_iter().collect::<String>()))
}

fn long_str() -> impl Strategy<Value = LongStr> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..40)
            .prop_map(|chars| LongStr::from(chars.into_iter().collect::<String>().as_str())),
        noise(300).prop_map(LongStr::from),
    ]
}

fn raw_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

/// Up to `max` bytes of seeded pseudo-random noise: much cheaper to generate than a vector
/// of `any::<u8>()`, and the contents of a body never matter to the codec.
fn noise(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..max, any::<u64>()).prop_map(|(len, seed)| {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

/// Every scalar variant. Floats come from arbitrary bit patterns (NaNs, infinities, -0.0 and
/// subnormals included) and are compared bitwise by [`same_value`].
fn scalar_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u32>().prop_map(|b| FieldValue::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| FieldValue::F64(f64::from_bits(b))),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        long_str().prop_map(FieldValue::LongStr),
        raw_bytes().prop_map(FieldValue::Bytes),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ]
}

/// Any value, nesting arrays and tables inside each other.
fn field_value() -> impl Strategy<Value = FieldValue> {
    scalar_value().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            proptest::collection::vec((short_str(), inner), 0..6)
                .prop_map(|entries| FieldValue::Table(FieldTable(entries))),
        ]
    })
}

/// Any table. Keys may repeat: the wire keeps every entry in order.
fn field_table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec((short_str(), field_value()), 0..8).prop_map(FieldTable)
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    use proptest::option::of;
    (
        (of(short_str()), of(short_str()), of(field_table())),
        (of(any::<u8>()), of(any::<u8>()), of(short_str())),
        (of(short_str()), of(short_str()), of(short_str())),
        (of(any::<u64>()), of(short_str()), of(short_str())),
        (of(short_str()), of(short_str())),
    )
        .prop_map(|(a, b, c, d, e)| BasicProperties {
            content_type: a.0,
            content_encoding: a.1,
            headers: a.2,
            delivery_mode: b.0,
            priority: b.1,
            correlation_id: b.2,
            reply_to: c.0,
            expiration: c.1,
            message_id: c.2,
            timestamp: d.0,
            kind: d.1,
            user_id: d.2,
            app_id: e.0,
            cluster_id: e.1,
        })
}

fn small_table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec((short_str(), scalar_value()), 0..4).prop_map(FieldTable)
}

/// A representative method of every shape: tables, long strings, each run of packed bits
/// (1, 2, 3, 4 and 5 bits, before and after other fields), 64-bit tags.
fn method() -> impl Strategy<Value = Method> {
    let s = short_str;
    prop_oneof![
        (any::<u8>(), any::<u8>(), field_table(), long_str(), long_str()).prop_map(
            |(version_major, version_minor, server_properties, mechanisms, locales)| {
                ConnectionStart {
                    version_major,
                    version_minor,
                    server_properties,
                    mechanisms,
                    locales,
                }
                .into()
            }
        ),
        (field_table(), s(), long_str(), s()).prop_map(
            |(client_properties, mechanism, response, locale)| ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            }
            .into()
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            }
            .into()
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
            }
            .into()
        ),
        (s(), s(), any::<bool>()).prop_map(|(virtual_host, capabilities, insist)| {
            ConnectionOpen { virtual_host, capabilities, insist }.into()
        }),
        (any::<u16>(), s(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| ConnectionClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            }
            .into()
        ),
        (any::<u16>(), s(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| ChannelClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            }
            .into()
        ),
        (s(), any::<[bool; 5]>()).prop_map(|(realm, b)| AccessRequest {
            realm,
            exclusive: b[0],
            passive: b[1],
            active: b[2],
            write: b[3],
            read: b[4],
        }
        .into()),
        (any::<u16>(), s(), s(), any::<[bool; 5]>(), small_table()).prop_map(
            |(ticket, exchange, kind, b, arguments)| ExchangeDeclare {
                ticket,
                exchange,
                kind,
                passive: b[0],
                durable: b[1],
                auto_delete: b[2],
                internal: b[3],
                nowait: b[4],
                arguments,
            }
            .into()
        ),
        (any::<u16>(), s(), any::<[bool; 2]>()).prop_map(|(ticket, exchange, b)| {
            ExchangeDelete { ticket, exchange, if_unused: b[0], nowait: b[1] }.into()
        }),
        (any::<u16>(), s(), s(), s(), any::<bool>(), small_table()).prop_map(
            |(ticket, destination, source, routing_key, nowait, arguments)| ExchangeBind {
                ticket,
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            }
            .into()
        ),
        (any::<u16>(), s(), any::<[bool; 5]>(), field_table()).prop_map(
            |(ticket, queue, b, arguments)| QueueDeclare {
                ticket,
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            }
            .into()
        ),
        (s(), any::<u32>(), any::<u32>()).prop_map(|(queue, message_count, consumer_count)| {
            QueueDeclareOk { queue, message_count, consumer_count }.into()
        }),
        (any::<u16>(), s(), any::<[bool; 3]>()).prop_map(|(ticket, queue, b)| QueueDelete {
            ticket,
            queue,
            if_unused: b[0],
            if_empty: b[1],
            nowait: b[2],
        }
        .into()),
        (any::<u32>(), any::<u16>(), any::<bool>()).prop_map(
            |(prefetch_size, prefetch_count, global)| BasicQos {
                prefetch_size,
                prefetch_count,
                global,
            }
            .into()
        ),
        (any::<u16>(), s(), s(), any::<[bool; 4]>(), small_table()).prop_map(
            |(ticket, queue, consumer_tag, b, arguments)| BasicConsume {
                ticket,
                queue,
                consumer_tag,
                no_local: b[0],
                no_ack: b[1],
                exclusive: b[2],
                nowait: b[3],
                arguments,
            }
            .into()
        ),
        (any::<u16>(), s(), s(), any::<[bool; 2]>()).prop_map(
            |(ticket, exchange, routing_key, b)| BasicPublish {
                ticket,
                exchange,
                routing_key,
                mandatory: b[0],
                immediate: b[1],
            }
            .into()
        ),
        (s(), any::<u64>(), any::<bool>(), s(), s()).prop_map(
            |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            }
            .into()
        ),
        (any::<u64>(), any::<bool>(), s(), s(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, routing_key, message_count)| BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count,
            }
            .into()
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| BasicAck {
            delivery_tag,
            multiple
        }
        .into()),
        (any::<u64>(), any::<[bool; 2]>()).prop_map(|(delivery_tag, b)| BasicNack {
            delivery_tag,
            multiple: b[0],
            requeue: b[1],
        }
        .into()),
        any::<bool>().prop_map(|nowait| ConfirmSelect { nowait }.into()),
        Just(Method::from(ChannelCloseOk {})),
        Just(Method::from(TxCommit {})),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Structural equality with floats compared bitwise (so NaN == NaN and 0.0 != -0.0).
fn same_value(a: &FieldValue, b: &FieldValue) -> bool {
    match (a, b) {
        (FieldValue::F32(x), FieldValue::F32(y)) => x.to_bits() == y.to_bits(),
        (FieldValue::F64(x), FieldValue::F64(y)) => x.to_bits() == y.to_bits(),
        (FieldValue::Array(x), FieldValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (FieldValue::Table(x), FieldValue::Table(y)) => same_table(x, y),
        _ => a == b,
    }
}

fn same_table(a: &FieldTable, b: &FieldTable) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn encode_table(t: &FieldTable) -> Bytes {
    let mut buf = BytesMut::new();
    t.encode_into(&mut buf);
    buf.freeze()
}

fn encode_method(m: &Method, channel: u16) -> Bytes {
    let mut buf = BytesMut::new();
    m.encode_frame(channel, &mut buf);
    buf.freeze()
}

/// Splits `buf` into frames with `frame::check` and parses each.
fn parse_all(mut buf: Bytes, frame_max: u32) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let len = frame::check(&buf, frame_max).expect("check");
        frames.push(Frame::parse(buf.split_to(len)).expect("parse"));
    }
    frames
}

/// An encoded frame of any kind, for the `check` properties.
fn any_frame() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        (method(), any::<u16>()).prop_map(|(m, ch)| encode_method(&m, ch)),
        (properties(), any::<u64>(), any::<u16>()).prop_map(|(p, size, ch)| {
            let mut buf = BytesMut::new();
            Frame::Header { channel: ch, header: ContentHeader::new(size, p) }.encode(&mut buf);
            buf.freeze()
        }),
        (noise(3000), any::<u16>()).prop_map(|(b, ch)| {
            let mut buf = BytesMut::new();
            frame::encode_body_frame(ch, &b, &mut buf);
            buf.freeze()
        }),
        Just(()).prop_map(|_| {
            let mut buf = BytesMut::new();
            frame::encode_heartbeat(&mut buf);
            buf.freeze()
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// (a) field tables
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn field_table_round_trips(table in field_table(), trailing in raw_bytes()) {
        let encoded = encode_table(&table);
        // Trailing bytes after the table must be left for the next field.
        let mut with_trailing = BytesMut::from(&encoded[..]);
        with_trailing.extend_from_slice(&trailing);
        let with_trailing = with_trailing.freeze();
        let mut r = Reader::new(&with_trailing);
        let decoded = FieldTable::decode(&mut r).expect("decode");
        prop_assert_eq!(r.remaining(), trailing.len());
        prop_assert!(same_table(&table, &decoded), "{:?} != {:?}", table, decoded);
        // Re-encoding what was decoded gives the same bytes.
        prop_assert_eq!(encode_table(&decoded), encoded);
    }

    #[test]
    fn field_table_length_prefix_is_exact(table in field_table()) {
        let encoded = encode_table(&table);
        let declared = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
        prop_assert_eq!(declared as usize, encoded.len() - 4);
    }

    #[test]
    fn truncated_field_table_is_an_error(table in field_table(), cut in any::<prop::sample::Index>()) {
        let encoded = encode_table(&table);
        let cut = cut.index(encoded.len());
        let short = encoded.slice(..cut);
        let mut r = Reader::new(&short);
        let result = FieldTable::decode(&mut r);
        prop_assert!(
            matches!(result, Err(DecodeError::Truncated(_))),
            "prefix of {} / {} bytes gave {:?}", cut, encoded.len(), result
        );
    }
}

#[test]
fn field_table_every_type_letter_on_the_wire() {
    // The RabbitMQ letters, checked against hand-written bytes rather than the codec itself.
    let cases: Vec<(FieldValue, &[u8])> = vec![
        (FieldValue::Bool(true), b"t\x01"),
        (FieldValue::I8(-1), b"b\xff"),
        (FieldValue::U8(200), b"B\xc8"),
        (FieldValue::I16(-2), b"s\xff\xfe"),
        (FieldValue::U16(0x0102), b"u\x01\x02"),
        (FieldValue::I32(-3), b"I\xff\xff\xff\xfd"),
        (FieldValue::U32(7), b"i\x00\x00\x00\x07"),
        (FieldValue::I64(-4), b"l\xff\xff\xff\xff\xff\xff\xff\xfc"),
        (FieldValue::F32(1.0), b"f\x3f\x80\x00\x00"),
        (FieldValue::F64(-2.0), b"d\xc0\x00\x00\x00\x00\x00\x00\x00"),
        (FieldValue::Decimal(Decimal { scale: 2, value: 5 }), b"D\x02\x00\x00\x00\x05"),
        (FieldValue::string("hi"), b"S\x00\x00\x00\x02hi"),
        (FieldValue::Bytes(Bytes::from_static(b"\x00\xff")), b"x\x00\x00\x00\x02\x00\xff"),
        (FieldValue::Array(vec![FieldValue::Void, FieldValue::U8(1)]), b"A\x00\x00\x00\x03VB\x01"),
        (FieldValue::Timestamp(9), b"T\x00\x00\x00\x00\x00\x00\x00\x09"),
        (
            FieldValue::Table(FieldTable(vec![("k".into(), FieldValue::Void)])),
            b"F\x00\x00\x00\x03\x01kV",
        ),
        (FieldValue::Void, b"V"),
    ];
    for (value, wire) in cases {
        let table = FieldTable(vec![("key".into(), value.clone())]);
        let mut expected = Vec::new();
        expected.extend_from_slice(&((4 + wire.len()) as u32).to_be_bytes());
        expected.extend_from_slice(b"\x03key");
        expected.extend_from_slice(wire);
        assert_eq!(&encode_table(&table)[..], &expected[..], "{value:?}");
        let bytes = Bytes::from(expected);
        let decoded = FieldTable::decode(&mut Reader::new(&bytes)).unwrap();
        assert!(same_table(&decoded, &table), "{value:?}");
    }
}

#[test]
fn field_table_of_100_nested_levels_round_trips() {
    let mut value = FieldValue::Void;
    for i in 0..100 {
        value = if i % 2 == 0 {
            FieldValue::Array(vec![value, FieldValue::U8(i)])
        } else {
            FieldValue::Table(FieldTable(vec![("n".into(), value)]))
        };
    }
    let table = FieldTable(vec![("deep".into(), value)]);
    let encoded = encode_table(&table);
    let decoded = FieldTable::decode(&mut Reader::new(&encoded)).unwrap();
    assert_eq!(decoded, table);
}

// ---------------------------------------------------------------------------------------------
// (b) properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn properties_round_trip(p in properties()) {
        let raw = p.to_bytes();
        let mut r = Reader::new(&raw);
        let decoded = BasicProperties::decode(&mut r).expect("decode");
        prop_assert_eq!(r.remaining(), 0);
        match (&p.headers, &decoded.headers) {
            (Some(a), Some(b)) => prop_assert!(same_table(a, b)),
            (None, None) => {}
            (a, b) => prop_assert!(false, "headers {:?} != {:?}", a, b),
        }
        let strip = |p: &BasicProperties| BasicProperties { headers: None, ..p.clone() };
        prop_assert_eq!(strip(&decoded), strip(&p));
        prop_assert_eq!(decoded.to_bytes(), raw);
    }

    #[test]
    fn content_header_frame_round_trips(p in properties(), size in any::<u64>(), ch in any::<u16>()) {
        let header = ContentHeader::new(size, p);
        let mut buf = BytesMut::new();
        Frame::Header { channel: ch, header: header.clone() }.encode(&mut buf);
        let buf = buf.freeze();
        prop_assert_eq!(buf[0], FRAME_HEADER);
        let frames = parse_all(buf, 0);
        prop_assert_eq!(frames.len(), 1);
        let Frame::Header { channel, header: got } = &frames[0] else {
            return Err(TestCaseError::fail(format!("not a header: {:?}", frames[0])));
        };
        prop_assert_eq!(*channel, ch);
        prop_assert_eq!(got.class_id, CLASS_BASIC);
        prop_assert_eq!(got.body_size, size);
        // Raw properties are kept byte for byte, and decode to what was encoded.
        prop_assert_eq!(&got.raw_properties, &header.raw_properties);
        prop_assert_eq!(got.properties.to_bytes(), header.raw_properties.clone());
    }
}

#[test]
fn property_flags_are_in_spec_order() {
    let p = BasicProperties {
        content_type: Some("a".into()),
        delivery_mode: Some(2),
        cluster_id: Some("z".into()),
        ..Default::default()
    };
    // content-type bit 15, delivery-mode bit 12, cluster-id bit 2.
    assert_eq!(&p.to_bytes()[..], b"\x90\x04\x01a\x02\x01z");
    assert!(BasicProperties::default().to_bytes()[..] == [0, 0]);
}

// ---------------------------------------------------------------------------------------------
// (c) methods
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn method_frame_round_trips(m in method(), ch in any::<u16>()) {
        let buf = encode_method(&m, ch);
        prop_assert_eq!(frame::check(&buf, 0), Ok(buf.len()));
        prop_assert_eq!(frame::check(&buf, buf.len() as u32), Ok(buf.len()));
        // `Frame::encode` and `Method::encode_frame` agree.
        let mut via_frame = BytesMut::new();
        Frame::Method { channel: ch, method: m.clone() }.encode(&mut via_frame);
        prop_assert_eq!(&via_frame[..], &buf[..]);

        let parsed = Frame::parse(buf.clone()).expect("parse");
        let Frame::Method { channel, method } = parsed else {
            return Err(TestCaseError::fail(format!("not a method: {parsed:?}")));
        };
        prop_assert_eq!(channel, ch);
        prop_assert_eq!(method.class_id(), m.class_id());
        prop_assert_eq!(method.method_id(), m.method_id());
        // Bitwise for float table values; re-encoding must be identical either way.
        prop_assert_eq!(encode_method(&method, ch), buf);
        if format!("{m:?}").contains("NaN") {
            return Ok(());
        }
        prop_assert_eq!(method, m);
    }
}

/// The packed-bit octet of a method, found by hand from the spec's field layout.
fn octet_at(m: &Method, offset_after_strings: impl Fn(&Bytes) -> usize) -> u8 {
    let buf = encode_method(m, 1);
    let payload = buf.slice(7..buf.len() - 1);
    payload[offset_after_strings(&payload)]
}

proptest! {
    #[test]
    fn exchange_declare_bits_match_the_spec(b in any::<[bool; 5]>(), ex in short_str(), kind in short_str()) {
        let m: Method = ExchangeDeclare {
            ticket: 0,
            exchange: ex.clone(),
            kind: kind.clone(),
            passive: b[0],
            durable: b[1],
            auto_delete: b[2],
            internal: b[3],
            nowait: b[4],
            arguments: FieldTable::new(),
        }
        .into();
        // class, method, ticket, exchange, type, then one octet for all five bits.
        let at = 4 + 2 + 1 + ex.len() + 1 + kind.len();
        let expected = b.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | (u8::from(v) << i));
        prop_assert_eq!(octet_at(&m, |_| at), expected);
        // The table follows the bit octet directly.
        let buf = encode_method(&m, 1);
        prop_assert_eq!(buf.len(), 7 + at + 1 + 4 + 1);
    }

    #[test]
    fn basic_nack_and_consume_bits_match_the_spec(b in any::<[bool; 4]>(), tag in any::<u64>()) {
        let nack: Method = BasicNack { delivery_tag: tag, multiple: b[0], requeue: b[1] }.into();
        prop_assert_eq!(octet_at(&nack, |_| 4 + 8), u8::from(b[0]) | u8::from(b[1]) << 1);
        let consume: Method = BasicConsume {
            ticket: 0,
            queue: "q".into(),
            consumer_tag: "c".into(),
            no_local: b[0],
            no_ack: b[1],
            exclusive: b[2],
            nowait: b[3],
            arguments: FieldTable::new(),
        }
        .into();
        let expected = b.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | (u8::from(v) << i));
        prop_assert_eq!(octet_at(&consume, |_| 4 + 2 + 2 + 2), expected);
    }
}

#[test]
fn basic_ack_matches_a_known_frame() {
    // basic.ack(delivery-tag=1, multiple=true) on channel 1, as RabbitMQ clients send it.
    let wire: &[u8] = b"\x01\x00\x01\x00\x00\x00\x0d\x00\x3c\x00\x50\
                        \x00\x00\x00\x00\x00\x00\x00\x01\x01\xce";
    let m: Method = BasicAck { delivery_tag: 1, multiple: true }.into();
    assert_eq!(&encode_method(&m, 1)[..], wire);
    assert_eq!(
        Frame::parse(Bytes::from_static(wire)).unwrap(),
        Frame::Method { channel: 1, method: m }
    );
}

// ---------------------------------------------------------------------------------------------
// (d) content
// ---------------------------------------------------------------------------------------------

fn content_frame_max() -> impl Strategy<Value = u32> {
    // 0 = no limit; tiny limits (still above one byte of body); the negotiable range.
    prop_oneof![
        1 => Just(0u32),
        2 => 9u32..64,
        2 => 64u32..1024,
        3 => 4096u32..140_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn content_is_split_to_fit_frame_max(
        body in noise(20_000),
        frame_max in content_frame_max(),
        p in properties(),
        ch in any::<u16>(),
    ) {
        let raw = p.to_bytes();
        let mut buf = BytesMut::new();
        encode_content(ch, &raw, &body, frame_max, &mut buf);
        let mut buf = buf.freeze();

        // The header frame: its size is not limited by the encoder (properties cannot be
        // split), so it is checked against frame_max only when it fits.
        let header_len = frame::check(&buf, 0).expect("header frame");
        prop_assert_eq!(header_len, FRAME_OVERHEAD + 12 + raw.len());
        if frame_max == 0 || header_len <= frame_max as usize {
            prop_assert_eq!(frame::check(&buf, frame_max), Ok(header_len));
        }
        match Frame::parse(buf.split_to(header_len)).expect("parse header") {
            Frame::Header { channel, header } => {
                prop_assert_eq!(channel, ch);
                prop_assert_eq!(header.body_size, body.len() as u64);
                prop_assert_eq!(&header.raw_properties[..], &raw[..]);
            }
            other => prop_assert!(false, "expected a header, got {:?}", other),
        }

        let mut body_frames = 0usize;
        let mut reassembled = Vec::with_capacity(body.len());
        while !buf.is_empty() {
            prop_assert_eq!(buf[0], FRAME_BODY);
            let len = frame::check(&buf, frame_max).expect("body frame fits frame_max");
            match Frame::parse(buf.split_to(len)).expect("parse body") {
                Frame::Body { channel, payload } => {
                    prop_assert_eq!(channel, ch);
                    prop_assert!(!payload.is_empty(), "empty body frame");
                    reassembled.extend_from_slice(&payload);
                }
                other => prop_assert!(false, "expected a body frame, got {:?}", other),
            }
            body_frames += 1;
        }
        prop_assert_eq!(&reassembled, &body);
        let expected_frames = match frame_max {
            0 => usize::from(!body.is_empty()),
            max => body.len().div_ceil(max as usize - FRAME_OVERHEAD),
        };
        prop_assert_eq!(body_frames, expected_frames);
    }
}

// ---------------------------------------------------------------------------------------------
// (e) frame::check
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn check_prefixes_are_incomplete_or_too_large(
        frame in any_frame(),
        limit in prop_oneof![Just(None), (0.0f64..2.0).prop_map(Some)],
        trailing in raw_bytes(),
    ) {
        let size = frame.len();
        // frame_max: no limit, or anywhere from far below to far above the frame's size.
        let frame_max = match limit {
            None => 0,
            Some(f) => ((size as f64 * f) as u32).max(1),
        };
        let too_large = frame_max != 0 && size > frame_max as usize;
        for cut in 0..size {
            let result = frame::check(&frame[..cut], frame_max);
            if too_large && cut >= 7 {
                prop_assert_eq!(
                    result,
                    Err(DecodeError::FrameTooLarge { size, frame_max }),
                    "prefix {}/{}", cut, size
                );
            } else {
                prop_assert_eq!(result, Err(DecodeError::Incomplete), "prefix {}/{}", cut, size);
            }
        }
        let mut whole = BytesMut::from(&frame[..]);
        whole.extend_from_slice(&trailing);
        let expected = if too_large {
            Err(DecodeError::FrameTooLarge { size, frame_max })
        } else {
            Ok(size)
        };
        prop_assert_eq!(frame::check(&frame, frame_max), expected.clone());
        // Whatever follows the frame does not change its measure.
        prop_assert_eq!(frame::check(&whole, frame_max), expected);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_stream_of_frames_splits_back_into_the_same_frames(
        frames in proptest::collection::vec(any_frame(), 1..12),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            stream.extend_from_slice(f);
        }
        let mut stream = stream.freeze();
        for f in &frames {
            let len = frame::check(&stream, 0).expect("check");
            prop_assert_eq!(len, f.len());
            let got = stream.split_to(len);
            prop_assert_eq!(&got, f);
            Frame::parse(got).expect("parse");
        }
        prop_assert!(stream.is_empty());
    }
}

#[test]
fn oversized_frame_is_refused_from_its_7_byte_header() {
    // A body frame announcing 1 MiB, refused at frame_max 4096 with only the header read.
    let header = [FRAME_BODY, 0, 1, 0, 0x10, 0, 0];
    for cut in 0..7 {
        assert_eq!(frame::check(&header[..cut], 4096), Err(DecodeError::Incomplete));
    }
    assert_eq!(
        frame::check(&header, 4096),
        Err(DecodeError::FrameTooLarge { size: 0x10_0000 + FRAME_OVERHEAD, frame_max: 4096 })
    );
    // The largest size field at no limit just waits for more bytes.
    let huge = [FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(frame::check(&huge, 0), Err(DecodeError::Incomplete));
    assert!(matches!(frame::check(&huge, u32::MAX), Err(DecodeError::FrameTooLarge { .. })));
}

/// `ShortStr::from_static` enforces the 255-byte limit that `From<&str>` enforces: a longer
/// static string would otherwise encode a wrong length octet and garble the frame.
#[test]
#[should_panic(expected = "at most 255 bytes")]
fn a_static_shortstr_longer_than_255_bytes_is_refused() {
    const LONG: &str = concat!(
        "0123456789012345678901234567890123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
    );
    let _ = ShortStr::from_static(std::hint::black_box(LONG));
}
