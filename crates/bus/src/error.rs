//! The crate's one error type.

/// Everything that can go wrong in `postroom-bus`.
///
/// ```
/// use postroom_bus::BusError;
/// let error = BusError::handler("sku LAMP does not exist");
/// assert_eq!(error.to_string(), "handler failed: sku LAMP does not exist");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No handler is registered for a command.
    #[error("no handler for command {0}")]
    NoHandler(&'static str),
    /// A second handler was registered for a command (commands have exactly one).
    #[error("command {0} already has a handler")]
    DuplicateHandler(&'static str),
    /// A handler failed; the application's error is the source.
    #[error("handler failed: {0}")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Handling one command raised more events than the limit (an event cycle?).
    #[error("more than {0} events from one command; is there an event cycle?")]
    EventLimit(usize),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// An event could not be encoded for the outbox.
    #[error("encoding event {message_type}: {message}")]
    Encode {
        /// The event's type.
        message_type: String,
        /// What the codec reported.
        message: String,
    },
    /// The unit of work was used out of order (e.g. commit without a transaction).
    #[error("unit of work: {0}")]
    UnitOfWork(&'static str),
    /// A setting cannot work (e.g. a relay given a publisher without confirms).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Publishing to the broker failed.
    #[error("publishing to the broker failed")]
    Publish(#[source] postroom_client::Error),
}

impl BusError {
    /// Wraps an application error (or a message) from a handler.
    ///
    /// ```
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("sku {0} does not exist")]
    /// struct InvalidSku(String);
    /// let error = postroom_bus::BusError::handler(InvalidSku("LAMP".into()));
    /// assert!(matches!(error, postroom_bus::BusError::Handler(e) if e.is::<InvalidSku>()));
    /// ```
    pub fn handler(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BusError {
        BusError::Handler(error.into())
    }
}
