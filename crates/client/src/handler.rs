//! The application side of a worker: [`Handler`] (message → command), [`Command`] (the use
//! case, returning a [`CommandResult`]) and [`Middleware`] (`Handler → Handler`).
//!
//! A handler decodes and validates, turns the message into the command's input and calls the
//! command. It never acknowledges anything: the [`ConsumerAdapter`](crate::ConsumerAdapter)
//! does that from the result.

use std::future::Future;
use std::marker::PhantomData;

use crate::codec::{Codec, Json};
use crate::envelope::Envelope;
use crate::incoming::Incoming;
use crate::result::CommandResult;

/// Turns one message into a [`CommandResult`].
///
/// Implementations are shared by concurrent deliveries (`&self`) and must not panic on bad
/// input: an undecodable or invalid payload is [`CommandResult::invalid`]. (A panic is still
/// caught by the adapter and becomes a requeue.)
///
/// ```
/// use postroom_client::{CommandResult, Handler, Incoming};
///
/// struct Echo;
/// impl Handler for Echo {
///     async fn handle(&self, message: &Incoming) -> CommandResult {
///         match std::str::from_utf8(&message.body) {
///             Ok(_) => CommandResult::Success,
///             Err(error) => CommandResult::invalid(error),
///         }
///     }
/// }
/// # let result = futures_lite::future::block_on(Echo.handle(&Incoming::new(vec![0xff])));
/// # assert!(matches!(result, CommandResult::DeadLetter { .. }));
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`.
    fn handle(&self, message: &Incoming) -> impl Future<Output = CommandResult> + Send;
}

/// A use case: takes an application input, classifies the outcome.
///
/// The command decides whether a failure is transient (`Retry`) or permanent (`Drop`,
/// `DeadLetter`); it knows nothing about AMQP.
///
/// ```
/// use postroom_client::{Command, CommandResult};
///
/// struct CountWords;
/// impl Command<String> for CountWords {
///     async fn execute(&self, text: String) -> CommandResult {
///         if text.is_empty() { CommandResult::dropped("empty") } else { CommandResult::Success }
///     }
/// }
/// # let result = futures_lite::future::block_on(CountWords.execute(String::new()));
/// # assert_eq!(result, CommandResult::dropped("empty"));
/// ```
pub trait Command<Input>: Send + Sync + 'static {
    /// Runs the use case.
    fn execute(&self, input: Input) -> impl Future<Output = CommandResult> + Send;
}

/// Checks a decoded message beyond what its type says (the schema validation step).
///
/// ```
/// use postroom_client::Validate;
/// struct Quantity(i64);
/// impl Validate for Quantity {
///     fn validate(&self) -> Result<(), String> {
///         if self.0 > 0 { Ok(()) } else { Err(format!("quantity {} must be positive", self.0)) }
///     }
/// }
/// assert!(Quantity(0).validate().is_err());
/// ```
pub trait Validate {
    /// `Err(reason)` when the message must not be processed.
    ///
    /// # Errors
    /// The reason the message is invalid; it is dead-lettered, never retried.
    fn validate(&self) -> Result<(), String>;
}

/// A decoded message with its envelope: the input [`CommandHandler`] gives its command.
///
/// ```
/// use postroom_client::{Command, CommandResult, Received};
/// struct Show;
/// impl Command<Received<String>> for Show {
///     async fn execute(&self, input: Received<String>) -> CommandResult {
///         println!("{} (message {})", input.message, input.envelope.message_id);
///         CommandResult::Success
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Received<M> {
    /// The decoded body.
    pub message: M,
    /// Its metadata.
    pub envelope: Envelope,
    /// How many times it was returned before.
    pub delivery_count: u64,
}

/// The common handler pipeline: decode `M` with a codec, [`Validate`] it, call the command
/// with a [`Received<M>`]. Decoding or validation failures are [`CommandResult::invalid`].
///
/// ```
/// use postroom_client::{Command, CommandHandler, CommandResult, Handler, Incoming, Received, Validate};
///
/// #[derive(serde::Deserialize)]
/// struct Ping { n: u32 }
/// impl Validate for Ping {
///     fn validate(&self) -> Result<(), String> { Ok(()) }
/// }
/// struct Pong;
/// impl Command<Received<Ping>> for Pong {
///     async fn execute(&self, input: Received<Ping>) -> CommandResult {
///         if input.message.n > 0 { CommandResult::Success } else { CommandResult::dropped("zero") }
///     }
/// }
///
/// let handler = CommandHandler::<Ping, _>::new(Pong);
/// let result = futures_lite::future::block_on(handler.handle(&Incoming::new(br#"{"n":1}"#.to_vec())));
/// assert_eq!(result, CommandResult::Success);
/// ```
pub struct CommandHandler<M, K, C = Json> {
    command: K,
    codec: C,
    _message: PhantomData<fn() -> M>,
}

impl<M, K> CommandHandler<M, K, Json> {
    /// A JSON handler calling `command`.
    ///
    /// ```
    /// use postroom_client::{Command, CommandHandler, CommandResult, Received, Validate};
    /// #[derive(serde::Deserialize)]
    /// struct Job { id: u64 }
    /// impl Validate for Job { fn validate(&self) -> Result<(), String> { Ok(()) } }
    /// struct Run;
    /// impl Command<Received<Job>> for Run {
    ///     async fn execute(&self, _: Received<Job>) -> CommandResult { CommandResult::Success }
    /// }
    /// let handler = CommandHandler::<Job, _>::new(Run);
    /// # drop(handler);
    /// ```
    pub fn new(command: K) -> CommandHandler<M, K, Json> {
        CommandHandler { command, codec: Json, _message: PhantomData }
    }
}

impl<M, K, C> CommandHandler<M, K, C> {
    /// A handler decoding with `codec`.
    ///
    /// ```
    /// use postroom_client::{Command, CommandHandler, CommandResult, Json, Received};
    /// struct Run;
    /// impl Command<Received<u64>> for Run {
    ///     async fn execute(&self, _: Received<u64>) -> CommandResult { CommandResult::Success }
    /// }
    /// let handler = CommandHandler::<u64, _, _>::with_codec(Run, Json);
    /// # drop(handler);
    /// ```
    pub fn with_codec(command: K, codec: C) -> CommandHandler<M, K, C> {
        CommandHandler { command, codec, _message: PhantomData }
    }

    /// The command.
    ///
    /// ```
    /// use postroom_client::{Command, CommandHandler, CommandResult, Received};
    /// struct Run(&'static str);
    /// impl Command<Received<u64>> for Run {
    ///     async fn execute(&self, _: Received<u64>) -> CommandResult { CommandResult::Success }
    /// }
    /// let handler = CommandHandler::<u64, _>::new(Run("jobs"));
    /// assert_eq!(handler.command().0, "jobs");
    /// ```
    pub fn command(&self) -> &K {
        &self.command
    }
}

impl<M, K, C> Handler for CommandHandler<M, K, C>
where
    M: serde::de::DeserializeOwned + Validate + Send + 'static,
    K: Command<Received<M>>,
    C: Codec,
{
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let decoded: M = match self.codec.decode(&message.body) {
            Ok(decoded) => decoded,
            Err(error) => return CommandResult::invalid(error),
        };
        if let Err(reason) = decoded.validate() {
            return CommandResult::invalid(reason);
        }
        let input = Received {
            message: decoded,
            envelope: message.envelope.clone(),
            delivery_count: message.delivery_count,
        };
        self.command.execute(input).await
    }
}

/// A handler from an async closure over an owned message (handy for tests and small
/// workers).
///
/// ```
/// use postroom_client::{CommandResult, Handler, Incoming, handler_fn};
/// let handler = handler_fn(|message: Incoming| async move {
///     if message.body.is_empty() { CommandResult::dropped("empty") } else { CommandResult::Success }
/// });
/// let result = futures_lite::future::block_on(handler.handle(&Incoming::new(vec![])));
/// assert_eq!(result.kind(), "drop");
/// ```
pub fn handler_fn<F, Fut>(function: F) -> FnHandler<F>
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CommandResult> + Send,
{
    FnHandler(function)
}

/// See [`handler_fn`].
///
/// ```
/// use postroom_client::{CommandResult, FnHandler, handler_fn};
/// let handler: FnHandler<_> = handler_fn(|_| async { CommandResult::Success });
/// # drop(handler);
/// ```
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CommandResult> + Send,
{
    fn handle(&self, message: &Incoming) -> impl Future<Output = CommandResult> + Send {
        (self.0)(message.clone())
    }
}

/// Wraps a handler in another: `Handler → Handler` (tracing, metrics, idempotency, …).
///
/// ```
/// use postroom_client::{CommandResult, Handler, HandlerExt, Incoming, Middleware, handler_fn};
///
/// /// Drops messages from a test tenant before they reach the handler.
/// struct SkipTests;
/// struct Skipping<H>(H);
/// impl<H: Handler> Middleware<H> for SkipTests {
///     type Output = Skipping<H>;
///     fn wrap(self, inner: H) -> Skipping<H> { Skipping(inner) }
/// }
/// impl<H: Handler> Handler for Skipping<H> {
///     async fn handle(&self, message: &Incoming) -> CommandResult {
///         if message.envelope.header_str("tenant").as_deref() == Some("test") {
///             return CommandResult::dropped("test tenant");
///         }
///         self.0.handle(message).await
///     }
/// }
///
/// let handler = handler_fn(|_| async { CommandResult::Success }).with(SkipTests);
/// let message = Incoming::new(vec![]);
/// assert_eq!(futures_lite::future::block_on(handler.handle(&message)), CommandResult::Success);
/// ```
pub trait Middleware<H: Handler> {
    /// The wrapped handler.
    type Output: Handler;
    /// Wraps `inner`.
    fn wrap(self, inner: H) -> Self::Output;
}

/// `.with(middleware)` on every handler.
///
/// ```
/// use postroom_client::{CommandResult, HandlerExt, Tracing, handler_fn};
/// let handler = handler_fn(|_| async { CommandResult::Success }).with(Tracing);
/// # drop(handler);
/// ```
pub trait HandlerExt: Handler + Sized {
    /// Wraps this handler in `middleware`; the last one added runs first.
    fn with<M: Middleware<Self>>(self, middleware: M) -> M::Output {
        middleware.wrap(self)
    }
}

impl<H: Handler> HandlerExt for H {}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Revoke {
        jti: String,
    }

    impl Validate for Revoke {
        fn validate(&self) -> Result<(), String> {
            if self.jti.is_empty() { Err("jti is empty".into()) } else { Ok(()) }
        }
    }

    /// A command that records its inputs and answers with a fixed result.
    struct MockCommand {
        answer: CommandResult,
        seen: Mutex<Vec<String>>,
    }

    impl Command<Received<Revoke>> for MockCommand {
        async fn execute(&self, input: Received<Revoke>) -> CommandResult {
            self.seen.lock().unwrap().push(input.message.jti);
            self.answer.clone()
        }
    }

    fn handler(answer: CommandResult) -> CommandHandler<Revoke, MockCommand> {
        CommandHandler::new(MockCommand { answer, seen: Mutex::new(Vec::new()) })
    }

    fn run<H: Handler>(handler: &H, body: &[u8]) -> CommandResult {
        futures_lite::future::block_on(handler.handle(&Incoming::new(body.to_vec())))
    }

    #[test]
    fn a_valid_message_reaches_the_command_and_its_result_comes_back() {
        let handler = handler(CommandResult::retry());
        assert_eq!(run(&handler, br#"{"jti":"a"}"#), CommandResult::retry());
        assert_eq!(*handler.command().seen.lock().unwrap(), ["a"]);
    }

    #[test]
    fn an_undecodable_body_is_dead_lettered_without_calling_the_command() {
        let handler = handler(CommandResult::Success);
        for body in [&b"not json"[..], br#"{"other":1}"#, b"", &[0xff, 0xfe]] {
            let result = run(&handler, body);
            assert!(matches!(result, CommandResult::DeadLetter { .. }), "{result}");
        }
        assert!(handler.command().seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_message_failing_validation_is_dead_lettered_with_the_reason() {
        let handler = handler(CommandResult::Success);
        let result = run(&handler, br#"{"jti":""}"#);
        assert_eq!(result, CommandResult::dead_letter("invalid payload: jti is empty"));
        assert!(handler.command().seen.lock().unwrap().is_empty());
    }
}
