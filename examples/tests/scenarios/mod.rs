//! The example scenarios, each a function of the broker's URL: the per-example test files run
//! them against Postroom, `rabbitmq.rs` against RabbitMQ when it is installed.
#![allow(dead_code)]

pub mod allocation;
pub mod auth_worker;
#[path = "../../../crates/client/tests/common/probe.rs"]
pub mod probe;
pub mod scan_pipeline;
