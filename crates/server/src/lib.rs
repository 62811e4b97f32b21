//! Postroom's server: tokio listeners, AMQP connections and channels, delivery, confirms,
//! heartbeats and shutdown, on top of the `postroom-core` domain.
//!
//! Ownership: each connection has a reader task (owns its channels, decodes frames, calls
//! the broker) and a writer task (owns the socket's write half). The broker state is one
//! [`postroom_core::Broker`] behind a `std::sync::Mutex`: every call into it is short and
//! has no `.await` inside, and emitting deliveries under the lock keeps them ordered. There
//! is no other lock, so there is no lock order to get wrong. The tick task (in [`server`])
//! reads delayed messages back from the store between two holds of it, not under it.
//!
//! Layout:
//! - [`server`]: [`Server`], which binds the listeners and runs until shut down.
//! - [`config`]: [`ServerConfig`] with defaults and validation.
//! - `connection`: handshake, frame loop, heartbeats, clean-up.
//! - `channel`: per-channel methods, content assembly, confirms, transactions.
//! - [`writer`]: the per-connection writer task and the broker's outlet.
//! - [`reply`]: the one mapping from errors to AMQP reply codes.
//! - [`auth`]: SASL PLAIN / AMQPLAIN and the user check.
//! - [`alarm`]: the disk alarm that blocks publishers.
//! - `http`: the HTTP listener (`/health`).

pub mod alarm;
pub mod auth;
mod channel;
pub mod config;
mod connection;
mod http;
pub mod reply;
pub mod server;
pub mod writer;

use std::sync::{Mutex, MutexGuard};

use postroom_core::Broker;

pub use config::ServerConfig;
pub use server::{Server, ServerError};

/// State shared by every connection.
pub(crate) struct Shared {
    broker: Mutex<Broker>,
    config: ServerConfig,
    store: std::sync::Arc<dyn postroom_store::Store>,
    alarms: std::sync::Arc<alarm::Alarms>,
}

impl Shared {
    /// Locks the broker. A panic while it was held (a bug) must not take every other
    /// connection down with it, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
