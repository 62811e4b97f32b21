//! Postroom's in-process message bus, with a transactional outbox to the broker.
//!
//! Commands ask for a change and have one handler; events say what happened and have any
//! number. A command handler does its work in a [`UnitOfWork`] and commits; the events the
//! committed work raised (recorded by aggregates) then go to their handlers, which may commit
//! work of their own and raise more, until none are left. Events that leave the service are
//! written by the unit of work into an outbox table in the *same* database transaction as
//! the state change ([`SqliteUnitOfWork`]), and the [`OutboxRelay`] publishes them to the
//! broker with confirms (at-least-once, in order per aggregate).
//!
//! Depends on `postroom-client` for publishing; knows nothing of the broker's internals.
//!
//! Layout:
//! - `error`: [`BusError`], the crate's one error type.
//! - `message`: [`Command`], [`Event`], [`ExternalEvent`].
//! - `bus`: [`MessageBus`], [`CommandHandler`], [`EventHandler`].
//! - `uow`: [`UnitOfWork`], [`InMemoryUnitOfWork`], [`SqliteUnitOfWork`].
//! - [`outbox`]: the outbox table (schema, append, read, mark).
//! - `relay`: [`OutboxRelay`], [`RelayConfig`].

mod bus;
mod error;
mod message;
pub mod outbox;
mod relay;
mod uow;

pub use bus::{CommandHandler, DEFAULT_EVENT_LIMIT, EventHandler, MessageBus};
pub use error::BusError;
pub use message::{Command, Event, ExternalEvent};
pub use relay::{OutboxRelay, RelayConfig};
pub use uow::{InMemoryUnitOfWork, SqliteUnitOfWork, UnitOfWork};
