//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in `postroom-client`.
///
/// Broker-side refusals keep lapin's error as the `source`, so the AMQP reply code and text
/// stay available for logging.
///
/// ```
/// use postroom_client::Error;
/// let error = Error::Config("prefetch must be at least 1".into());
/// assert_eq!(error.to_string(), "invalid configuration: prefetch must be at least 1");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value failed `validate()`.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A value cannot be sent as given, e.g. a routing key or id longer than AMQP's 255-byte
    /// short strings.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The broker could not be reached after every reconnect attempt.
    #[error("could not connect to the broker after {attempts} attempts")]
    Connect {
        /// How many connection attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed (channel or connection closed, broker refusal).
    #[error("AMQP {operation} failed")]
    Amqp {
        /// What was being done, e.g. `basic.publish`.
        operation: &'static str,
        /// lapin's error, with the broker's reply code when there is one.
        #[source]
        source: lapin::Error,
    },
    /// The broker answered a publish with `basic.nack`: it did not take the message.
    #[error("the broker refused message {message_id} (basic.nack)")]
    Nacked {
        /// The refused message's id.
        message_id: String,
    },
    /// A `mandatory` publish matched no queue and was returned.
    #[error("message {message_id} was unroutable: {reply_code} {reply_text}")]
    Unroutable {
        /// The returned message's id.
        message_id: String,
        /// The broker's reply code (312 NO_ROUTE).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// Encoding or decoding a body failed.
    #[error("{content_type} codec failed: {message}")]
    Codec {
        /// The codec's content type.
        content_type: &'static str,
        /// What the codec reported.
        message: String,
    },
    /// A request-reply call got no answer in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A request-reply responder answered with an error.
    #[error("the responder failed: {0}")]
    Remote(String),
    /// A processed-message store (idempotent receiver) failed.
    #[error("processed-message store failed: {message}")]
    Store {
        /// What the store reported.
        message: String,
    },
    /// The component was shut down.
    #[error("shut down")]
    Closed,
}

impl Error {
    pub(crate) fn amqp(operation: &'static str) -> impl FnOnce(lapin::Error) -> Error {
        move |source| Error::Amqp { operation, source }
    }

    /// Whether retrying the same operation on a new connection may succeed.
    ///
    /// ```
    /// use postroom_client::Error;
    /// assert!(!Error::Config("x".into()).is_transient());
    /// assert!(Error::Nacked { message_id: "m-1".into() }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Amqp { .. } | Error::Nacked { .. } | Error::Timeout(_)
        )
    }
}

/// The crate's result type.
///
/// ```
/// fn parse(text: &str) -> postroom_client::Result<u32> {
///     text.parse().map_err(|_| postroom_client::Error::Config(format!("{text:?} is not a number")))
/// }
/// assert!(parse("x").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
