//! The one place where errors become AMQP closes: each [`BrokerError`] maps to a reply code
//! and a scope (channel or connection), and texts get RabbitMQ's `CODE_NAME - ` prefix.

use postroom_amqp::constants::reply;
use postroom_core::BrokerError;

/// Whether an error closes the channel or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `channel.close`.
    Channel,
    /// `connection.close`.
    Connection,
}

/// A close to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Channel or connection.
    pub scope: Scope,
    /// Reply code.
    pub code: u16,
    /// Reply text, prefixed with the code's name.
    pub text: String,
}

/// The spec name of a reply code, as RabbitMQ prefixes it to reply texts.
pub fn code_name(code: u16) -> &'static str {
    match code {
        reply::REPLY_SUCCESS => "OK",
        reply::CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        reply::NO_ROUTE => "NO_ROUTE",
        reply::NO_CONSUMERS => "NO_CONSUMERS",
        reply::CONNECTION_FORCED => "CONNECTION_FORCED",
        reply::INVALID_PATH => "INVALID_PATH",
        reply::ACCESS_REFUSED => "ACCESS_REFUSED",
        reply::NOT_FOUND => "NOT_FOUND",
        reply::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        reply::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        reply::FRAME_ERROR => "FRAME_ERROR",
        reply::SYNTAX_ERROR => "SYNTAX_ERROR",
        reply::COMMAND_INVALID => "COMMAND_INVALID",
        reply::CHANNEL_ERROR => "CHANNEL_ERROR",
        reply::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        reply::RESOURCE_ERROR => "RESOURCE_ERROR",
        reply::NOT_ALLOWED => "NOT_ALLOWED",
        reply::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

impl Close {
    /// A close with `code`; the scope follows from the code (spec 1.3: codes 3xx/4xx are
    /// channel errors, 5xx connection errors, except `CONNECTION_FORCED` and `INVALID_PATH`).
    pub fn new(code: u16, text: impl std::fmt::Display) -> Close {
        let scope = match code {
            reply::CONNECTION_FORCED | reply::INVALID_PATH => Scope::Connection,
            c if c < 500 => Scope::Channel,
            _ => Scope::Connection,
        };
        Close { scope, code, text: format!("{} - {text}", code_name(code)) }
    }

    /// The close a domain error calls for.
    pub fn from_error(error: &BrokerError) -> Close {
        let code = match error {
            BrokerError::NotFound { .. } => reply::NOT_FOUND,
            BrokerError::AccessRefused(_) => reply::ACCESS_REFUSED,
            BrokerError::ResourceLocked { .. } => reply::RESOURCE_LOCKED,
            BrokerError::PreconditionFailed(_) => reply::PRECONDITION_FAILED,
            BrokerError::CommandInvalid(_) => reply::COMMAND_INVALID,
            BrokerError::NotAllowed(_) => reply::NOT_ALLOWED,
            BrokerError::NotImplemented(_) => reply::NOT_IMPLEMENTED,
            BrokerError::StoreFailed(_) => reply::INTERNAL_ERROR,
            _ => reply::INTERNAL_ERROR,
        };
        Close::new(code, error)
    }
}

impl From<BrokerError> for Close {
    fn from(error: BrokerError) -> Close {
        Close::from_error(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_errors_close_the_channel_and_5xx_the_connection() {
        assert_eq!(Close::new(404, "x").scope, Scope::Channel);
        assert_eq!(Close::new(530, "x").scope, Scope::Connection);
        assert_eq!(Close::new(320, "x").scope, Scope::Connection);
        assert_eq!(Close::new(406, "bad").text, "PRECONDITION_FAILED - bad");
    }
}
