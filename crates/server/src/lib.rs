//! Postroom's server: tokio listeners, AMQP connections and channels, delivery, confirms,
//! heartbeats and shutdown, on top of the `postroom-core` domain.
//!
//! Ownership: each connection has a reader task (owns its channels, decodes frames, calls
//! the broker) and a writer task (owns the socket's write half). The broker state is one
//! [`postroom_core::Broker`] behind a `std::sync::Mutex`: every call into it is short and
//! has no `.await` inside, and emitting deliveries under the lock keeps them ordered. The
//! one other lock, `definitions_saved`, serialises saves of the definitions; lock order:
//! `definitions_saved` before `broker`, never the reverse (saves run after the broker lock
//! is released, and take it again only to encode).
//!
//! Layout:
//! - [`server`]: [`Server`], which binds the listeners and runs until shut down.
//! - [`config`]: [`ServerConfig`] with defaults and validation.
//! - `connection`: handshake, frame loop, heartbeats, clean-up.
//! - `channel`: per-channel methods, content assembly, confirms, transactions.
//! - [`writer`]: the per-connection writer task and the broker's outlet.
//! - [`reply`]: the one mapping from errors to AMQP reply codes.
//! - [`auth`]: SASL PLAIN / AMQPLAIN and the user check.
//! - `http`: the HTTP listener (`/health`).

pub mod auth;
mod channel;
pub mod config;
mod connection;
mod http;
pub mod reply;
pub mod server;
pub mod writer;

use std::sync::{Mutex, MutexGuard};

use postroom_core::{Broker, BrokerError};

pub use config::ServerConfig;
pub use server::{Server, ServerError};

/// State shared by every connection.
pub(crate) struct Shared {
    broker: Mutex<Broker>,
    config: ServerConfig,
    store: std::sync::Arc<dyn postroom_store::Store>,
    /// The definitions version last saved. Held while saving, so saves never overtake one
    /// another; taken before the broker lock, never after it.
    definitions_saved: Mutex<u64>,
}

impl Shared {
    /// Locks the broker. A panic while it was held (a bug) must not take every other
    /// connection down with it, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a broker operation that may change persisted definitions and, if it did,
    /// saves them before returning — after releasing the broker lock, so that other
    /// connections do not wait for the fsync.
    ///
    /// # Errors
    /// The operation's error, or `StoreFailed` if the definitions cannot be saved.
    fn define<T>(
        &self,
        op: impl FnOnce(&mut Broker) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let (result, changed) = {
            let mut broker = self.lock();
            let before = broker.definitions_version();
            let result = op(&mut broker);
            let after = broker.definitions_version();
            (result, (after > before).then_some(after))
        };
        if let Some(version) = changed {
            self.save_definitions(version).map_err(|e| BrokerError::StoreFailed(e.to_string()))?;
        }
        result
    }

    /// As [`Shared::define`] for clean-up paths with nobody to answer: a failed save is
    /// logged (the next successful save includes the change).
    fn define_quietly(&self, op: impl FnOnce(&mut Broker)) {
        if let Err(error) = self.define(|broker| {
            op(broker);
            Ok(())
        }) {
            tracing::error!(%error, "saving definitions");
        }
    }

    /// Saves the definitions unless `version` or a later one is saved already.
    fn save_definitions(&self, version: u64) -> Result<(), postroom_store::StoreError> {
        let mut saved = self.definitions_saved.lock().unwrap_or_else(|p| p.into_inner());
        if *saved >= version {
            return Ok(());
        }
        let (current, encoded) = {
            let broker = self.lock();
            (broker.definitions_version(), broker.encode_definitions())
        };
        self.store.save_definitions(&encoded)?;
        *saved = current;
        Ok(())
    }
}
