//! Postroom's broker domain: virtual hosts, exchanges, bindings, queues, consumers and the
//! delivery state of channels.
//!
//! Deterministic and free of I/O: it knows AMQP's data types (`postroom-amqp`) but not its
//! framing, and nothing of sockets, tasks or files. What must reach a client is handed to an
//! [`Outlet`] that the server implements. Errors are [`BrokerError`]s; the server maps them
//! to reply codes in one place.
//!
//! Layout:
//! - [`broker`]: [`Broker`], the whole state, and connection/channel lifecycle.
//! - [`clock`]: the injected [`clock::Clock`].
//! - [`definitions`]: declaring, binding and deleting exchanges and queues.
//! - [`delivery`]: publish, consume, get, ack/nack/reject, recover, dispatch.
//! - `delays`: holding and releasing the messages of delayed exchanges ([`DueReads`],
//!   [`read_due`], [`ReadBack`]: a release round read off the broker lock).
//! - [`exchange`]: exchanges and bindings; one file per exchange type.
//! - [`queue`]: queues and consumers.
//! - [`policy`]: what queue arguments ask for (dead-lettering, limits), validated.
//! - `deadletter`: republishing to a dead-letter exchange with `x-death`.
//! - [`dedup`]: deduplication windows of queues and exchanges.
//! - [`backlog`]: a queue's ready messages, in memory up to a limit, then in the store.
//! - [`settlement`]: ack/nack/reject, transaction checks, recover, returning messages.
//! - [`session`]: channel delivery state, [`Outlet`] and [`Outbound`] events.
//! - [`vhost`]: virtual hosts and routing across exchanges.
//! - [`message`]: messages and their delivery history.
//! - [`persist`]: durable definitions and messages across restarts.
//! - [`error`]: the [`BrokerError`] type.

pub mod backlog;
pub mod broker;
pub mod clock;
mod deadletter;
pub mod dedup;
pub mod definitions;
mod delays;
pub mod delivery;
pub mod error;
pub mod exchange;
pub mod message;
pub mod persist;
pub mod policy;
pub mod queue;
pub mod session;
pub mod settlement;
pub mod vhost;

/// Identifies a client connection for the life of the broker.
pub type ConnectionId = u64;

pub use broker::Broker;
pub use definitions::{ExchangeSpec, QueueDeclared, QueueSpec};
pub use delays::{DueReads, ReadBack, read_due};
pub use delivery::{DIRECT_REPLY_TO, Got, Published, RouteResult};
pub use error::BrokerError;
pub use exchange::{Destination, ExchangeKind};
pub use message::{Message, QueuedMessage};
pub use persist::RestoreSummary;
pub use session::{ChannelKey, Outbound, Outlet};
pub use settlement::{Settlement, TxStep};
