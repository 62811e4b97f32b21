//! Looking at queues from outside the SDK: take the next message (polling, bounded) and read
//! why a message was dead-lettered.
//!
//! Shared by the SDK's and the examples' test suites (`#[path]`-included), so it uses only
//! `postroom_client`'s lapin and tokio.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use postroom_client::lapin::Channel;
use postroom_client::lapin::message::BasicGetMessage;
use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::lapin::types::AMQPValue;

/// How long [`get`] waits for a message.
pub const GET_WAIT: Duration = Duration::from_secs(20);

/// Takes the next message from `queue` (acknowledged by the get), polling until one is
/// there; fails the test after [`GET_WAIT`].
pub async fn get(channel: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = Instant::now() + GET_WAIT;
    loop {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        if let Some(message) = got {
            return message;
        }
        assert!(Instant::now() < deadline, "no message in {queue} within {GET_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `reason` of the latest `x-death` entry (`rejected`, `expired`, `delivery_limit`…).
pub fn death_reason(message: &BasicGetMessage) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else { return None };
    match latest.inner().get("reason")? {
        AMQPValue::LongString(reason) => Some(reason.to_string()),
        AMQPValue::ShortString(reason) => Some(reason.to_string()),
        _ => None,
    }
}
