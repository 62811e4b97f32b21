//! What each publish of `postroom bench` carries in its properties: the delivery mode and,
//! through a delayed exchange, an `x-delay` header drawn per message from a seeded PRNG.
//! Depends only on the codec; used by the producers in `mod.rs`.

use bytes::BytesMut;
use postroom_amqp::{BasicProperties, FieldTable, FieldValue, ShortStr};

use super::BenchArgs;

/// The header a delayed exchange reads a message's delay from, in ms.
const DELAY_HEADER: &str = "x-delay";

/// The `x-delay` of successive messages: fixed, or uniform in `min..=max` from a seeded
/// xorshift64* (cheap, and deterministic for a seed, so runs can be repeated exactly).
#[derive(Debug, Clone)]
struct DelayDraw {
    min: u64,
    /// `max - min + 1`, or 0 for the full `u64` range (never in practice).
    span: u64,
    state: u64,
}

impl DelayDraw {
    /// Delays in `min..=max` for producer `stream` of a run seeded with `seed`.
    fn new(min: u64, max: u64, seed: u64, stream: u64) -> DelayDraw {
        // splitmix64 of the seed and stream: distinct, well-mixed, never-zero states.
        let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let span = max.saturating_sub(min).wrapping_add(1);
        DelayDraw { min, span, state: z.max(1) }
    }

    /// Whether every draw is the same delay.
    fn is_fixed(&self) -> bool {
        self.span == 1
    }

    /// The next delay in ms.
    fn next_delay(&mut self) -> u64 {
        if self.is_fixed() {
            return self.min;
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let draw = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // The modulo bias is below 2^-40 for any delay range in ms that matters here.
        match self.span {
            0 => draw,
            span => self.min + draw % span,
        }
    }
}

/// The encoded properties of successive publishes: fixed, or with a fresh `x-delay` each,
/// re-encoded into one buffer (no allocation per message).
pub struct PublishProperties {
    properties: BasicProperties,
    delays: Option<DelayDraw>,
    raw: BytesMut,
}

impl PublishProperties {
    /// The properties producer number `producer` publishes with: persistent or not, and
    /// with an `x-delay` when `--delay` is given (its own PRNG stream of `--seed`).
    pub fn new(args: &BenchArgs, producer: usize) -> PublishProperties {
        let delays = args.delay.map(|min| {
            DelayDraw::new(min, args.delay_max.unwrap_or(min), args.seed, producer as u64)
        });
        let mut properties = BasicProperties {
            delivery_mode: Some(if args.persistent { 2 } else { 1 }),
            ..Default::default()
        };
        if let Some(delays) = &delays {
            let mut headers = FieldTable::new();
            headers.insert(DELAY_HEADER, delay_value(delays.min));
            properties.headers = Some(headers);
        }
        let mut raw = BytesMut::with_capacity(64);
        properties.encode(&mut raw);
        PublishProperties { properties, delays: delays.filter(|d| !d.is_fixed()), raw }
    }

    /// The raw properties of the next publish.
    pub fn next_raw(&mut self) -> &[u8] {
        if let (Some(delays), Some(headers)) = (&mut self.delays, &mut self.properties.headers) {
            headers.insert(ShortStr::from_static(DELAY_HEADER), delay_value(delays.next_delay()));
            self.raw.clear();
            self.properties.encode(&mut self.raw);
        }
        &self.raw
    }
}

fn delay_value(delay: u64) -> FieldValue {
    FieldValue::I64(i64::try_from(delay).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use postroom_amqp::wire::Reader;

    use super::*;
    use crate::bench::tests::bench_args;

    fn delay_of(raw: &[u8]) -> Option<i64> {
        let raw = Bytes::copy_from_slice(raw);
        let properties = BasicProperties::decode(&mut Reader::new(&raw)).ok()?;
        properties.headers?.get(DELAY_HEADER)?.as_int()
    }

    #[test]
    fn random_delays_stay_within_the_range_and_cover_it() {
        let mut draw = DelayDraw::new(600_000, 3_600_000, 7, 0);
        let delays: Vec<u64> = (0..100_000).map(|_| draw.next_delay()).collect();
        assert!(delays.iter().all(|d| (600_000..=3_600_000).contains(d)));
        let low = delays.iter().filter(|d| **d < 2_100_000).count();
        assert!((45_000..55_000).contains(&low), "{low} of 100000 in the lower half");
        assert!(delays.iter().any(|d| *d < 601_000) && delays.iter().any(|d| *d > 3_599_000));
    }

    #[test]
    fn a_seed_and_stream_replay_the_same_delays_and_streams_differ() {
        let draws = |stream| {
            let mut draw = DelayDraw::new(0, 1_000_000, 42, stream);
            (0..16).map(|_| draw.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(draws(0), draws(0));
        assert_ne!(draws(0), draws(1));
    }

    #[test]
    fn a_zero_seed_still_draws_varied_delays() {
        let mut draw = DelayDraw::new(1, 1000, 0, u64::MAX);
        let first = draw.next_delay();
        assert!((0..64).map(|_| draw.next_delay()).any(|d| d != first));
    }

    #[test]
    fn each_publish_carries_its_own_delay_when_a_range_is_given() {
        let args = bench_args(&["--delayed-exchange", "x", "--delay", "10", "--delay-max", "20"]);
        let mut properties = PublishProperties::new(&args, 0);
        let delays: Vec<i64> = (0..200).filter_map(|_| delay_of(properties.next_raw())).collect();
        assert_eq!(delays.len(), 200);
        assert!(delays.iter().all(|d| (10..=20).contains(d)));
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn a_fixed_delay_and_no_delay_encode_once() {
        let args = bench_args(&["--delayed-exchange", "x", "--delay", "3600000", "--persistent"]);
        let mut properties = PublishProperties::new(&args, 3);
        assert_eq!(delay_of(properties.next_raw()), Some(3_600_000));
        assert_eq!(delay_of(properties.next_raw()), Some(3_600_000));
        let mut plain = PublishProperties::new(&bench_args(&[]), 0);
        let raw = Bytes::copy_from_slice(plain.next_raw());
        let decoded = BasicProperties::decode(&mut Reader::new(&raw)).ok();
        assert!(decoded.is_some_and(|p| p.headers.is_none() && p.delivery_mode == Some(1)));
    }
}
