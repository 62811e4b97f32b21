//! The domain's errors. The server turns each into an AMQP channel or connection close in
//! exactly one place (`postroom-server`'s `reply` module); texts follow RabbitMQ's wording so
//! that clients and people see familiar messages.

/// What went wrong, independent of the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A queue, exchange or virtual host that does not exist.
    #[error("no {kind} '{name}' in vhost '{vhost}'")]
    NotFound {
        /// "queue", "exchange" or "vhost".
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The virtual host.
        vhost: String,
    },
    /// The operation is refused on this entity (reserved names, internal exchanges,
    /// exclusive consumers, the default exchange).
    #[error("{0}")]
    AccessRefused(String),
    /// An exclusive queue owned by another connection.
    #[error(
        "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be \
         originally declared on another connection or the exclusive property value does not match \
         that of the original declaration."
    )]
    ResourceLocked {
        /// The queue.
        queue: String,
        /// The virtual host.
        vhost: String,
    },
    /// A redeclare that does not match, an unknown delivery tag, a non-empty or in-use entity,
    /// an invalid argument.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A method that is not valid in this state (connection-level in AMQP).
    #[error("{0}")]
    CommandInvalid(String),
    /// Not allowed for this connection (connection-level), e.g. a reused consumer tag.
    #[error("{0}")]
    NotAllowed(String),
    /// A feature the broker does not implement (connection-level).
    #[error("{0}")]
    NotImplemented(String),
    /// The store failed to write; persistent messages cannot be accepted.
    #[error("message store failed: {0}")]
    StoreFailed(String),
}

impl BrokerError {
    pub(crate) fn queue_not_found(name: &str, vhost: &str) -> BrokerError {
        BrokerError::NotFound { kind: "queue", name: name.into(), vhost: vhost.into() }
    }

    pub(crate) fn exchange_not_found(name: &str, vhost: &str) -> BrokerError {
        BrokerError::NotFound { kind: "exchange", name: name.into(), vhost: vhost.into() }
    }

    pub(crate) fn locked(queue: &str, vhost: &str) -> BrokerError {
        BrokerError::ResourceLocked { queue: queue.into(), vhost: vhost.into() }
    }
}

/// Result alias for domain operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
