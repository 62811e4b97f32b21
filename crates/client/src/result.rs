//! [`CommandResult`]: the application's verdict on one message, in its own language.
//!
//! The command decides *whether* a failure is worth retrying; the adapter decides *how*
//! (see [`acknowledgement`](crate::acknowledgement) for the one mapping to ack/nack/reject).

use std::fmt;
use std::time::Duration;

/// What became of a message, as the command sees it.
///
/// | result | meaning | AMQP |
/// |---|---|---|
/// | `Success` | done | `basic.ack` |
/// | `Retry { after }` | a transient failure (timeout, connection refused) | `basic.nack` requeue=true: the queue's retry policy schedules the redelivery |
/// | `Drop { reason }` | a permanent failure not worth keeping (duplicate, obsolete) | `basic.ack`, reason logged |
/// | `DeadLetter { reason }` | a permanent failure someone should look at (invalid payload, rule violation) | `basic.reject` requeue=false: to the queue's dead-letter exchange |
///
/// ```
/// use std::time::Duration;
/// use postroom_client::CommandResult;
/// let result = CommandResult::retry_after(Duration::from_secs(5));
/// assert_eq!(result, CommandResult::Retry { after: Some(Duration::from_secs(5)) });
/// assert_eq!(result.kind(), "retry");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// The message was handled.
    Success,
    /// A transient failure: handle the message again later. `after` is the command's hint;
    /// by default the queue's retry policy alone decides the delay (see
    /// [`WorkerConfig::max_retry_hold`](crate::WorkerConfig::max_retry_hold)).
    Retry {
        /// How long the command would like to wait.
        after: Option<Duration>,
    },
    /// A permanent failure; the message is acknowledged and forgotten.
    Drop {
        /// Why, for the log.
        reason: String,
    },
    /// A permanent failure; the message goes to the dead-letter exchange.
    DeadLetter {
        /// Why, for the log.
        reason: String,
    },
}

impl CommandResult {
    /// `Retry` with no delay hint.
    ///
    /// ```
    /// assert_eq!(postroom_client::CommandResult::retry(), postroom_client::CommandResult::Retry { after: None });
    /// ```
    pub fn retry() -> CommandResult {
        CommandResult::Retry { after: None }
    }

    /// `Retry` after about `delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let result = postroom_client::CommandResult::retry_after(Duration::from_secs(2));
    /// assert!(!result.is_final());
    /// ```
    pub fn retry_after(delay: Duration) -> CommandResult {
        CommandResult::Retry { after: Some(delay) }
    }

    /// `Drop` with a reason.
    ///
    /// ```
    /// let result = postroom_client::CommandResult::dropped("already revoked");
    /// assert_eq!(result.reason(), Some("already revoked"));
    /// ```
    pub fn dropped(reason: impl Into<String>) -> CommandResult {
        CommandResult::Drop { reason: reason.into() }
    }

    /// `DeadLetter` with a reason.
    ///
    /// ```
    /// let result = postroom_client::CommandResult::dead_letter("negative quantity");
    /// assert_eq!(result.to_string(), "dead_letter: negative quantity");
    /// ```
    pub fn dead_letter(reason: impl Into<String>) -> CommandResult {
        CommandResult::DeadLetter { reason: reason.into() }
    }

    /// The result for a payload that cannot be decoded or fails validation: dead-lettered,
    /// never retried (retrying would fail the same way).
    ///
    /// ```
    /// use postroom_client::CommandResult;
    /// let result = CommandResult::invalid("missing field `jti`");
    /// assert!(matches!(result, CommandResult::DeadLetter { .. }));
    /// ```
    pub fn invalid(error: impl fmt::Display) -> CommandResult {
        CommandResult::DeadLetter { reason: format!("invalid payload: {error}") }
    }

    /// A short name: `success`, `retry`, `drop` or `dead_letter` (for logs and metrics).
    ///
    /// ```
    /// assert_eq!(postroom_client::CommandResult::Success.kind(), "success");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            CommandResult::Success => "success",
            CommandResult::Retry { .. } => "retry",
            CommandResult::Drop { .. } => "drop",
            CommandResult::DeadLetter { .. } => "dead_letter",
        }
    }

    /// The reason of a `Drop` or `DeadLetter`.
    ///
    /// ```
    /// assert_eq!(postroom_client::CommandResult::Success.reason(), None);
    /// ```
    pub fn reason(&self) -> Option<&str> {
        match self {
            CommandResult::Drop { reason } | CommandResult::DeadLetter { reason } => Some(reason),
            CommandResult::Success | CommandResult::Retry { .. } => None,
        }
    }

    /// Whether the message is finished with (anything but `Retry`).
    ///
    /// ```
    /// use postroom_client::CommandResult;
    /// assert!(CommandResult::dropped("x").is_final());
    /// assert!(!CommandResult::retry().is_final());
    /// ```
    pub fn is_final(&self) -> bool {
        !matches!(self, CommandResult::Retry { .. })
    }
}

impl fmt::Display for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}
