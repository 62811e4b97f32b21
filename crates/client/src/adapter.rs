//! The ConsumerAdapter: runs a handler on one message (with a timeout, catching panics) and
//! maps what happened to an AMQP acknowledgement, in exactly one function
//! ([`acknowledgement`]).

use std::sync::Arc;
use std::time::Duration;

use crate::handler::Handler;
use crate::incoming::Incoming;
use crate::result::CommandResult;

/// What happened when the handler ran.
///
/// ```
/// use postroom_client::{CommandResult, Outcome};
/// let outcome = Outcome::Completed(CommandResult::Success);
/// assert_eq!(outcome.kind(), "success");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned.
    Completed(CommandResult),
    /// The handler panicked; the panic message.
    Panicked(String),
    /// The handler ran past the per-message timeout and was cancelled (and has stopped,
    /// unless it blocked a thread; see [`ConsumerAdapter::process`]).
    TimedOut(Duration),
}

impl Outcome {
    /// `success`, `retry`, `drop`, `dead_letter`, `panic` or `timeout`.
    ///
    /// ```
    /// assert_eq!(postroom_client::Outcome::Panicked("boom".into()).kind(), "panic");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed(result) => result.kind(),
            Outcome::Panicked(_) => "panic",
            Outcome::TimedOut(_) => "timeout",
        }
    }
}

/// How the broker is told.
///
/// ```
/// use postroom_client::{Acknowledgement, CommandResult, Outcome, acknowledgement};
/// let outcome = Outcome::Completed(CommandResult::dropped("stale"));
/// assert_eq!(acknowledgement(&outcome), Acknowledgement::Ack);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgement {
    /// `basic.ack`: the message is gone.
    Ack,
    /// `basic.nack` with `requeue=true`: the queue's retry policy brings it back (on
    /// Postroom after its backoff; on RabbitMQ at once), counting toward `x-delivery-limit`.
    Requeue {
        /// The command's delay hint, if any.
        after: Option<Duration>,
    },
    /// `basic.reject` with `requeue=false`: to the dead-letter exchange, or dropped by the
    /// broker when the queue has none.
    Reject,
}

/// The one mapping from outcome to acknowledgement.
///
/// | outcome | acknowledgement |
/// |---|---|
/// | `Success` | ack |
/// | `Retry { after }` | nack, requeue |
/// | `Drop { .. }` | ack |
/// | `DeadLetter { .. }` (invalid payloads included) | reject, no requeue |
/// | panic | nack, requeue (bounded by the queue's `x-delivery-limit`) |
/// | timeout | nack, requeue |
///
/// ```
/// use postroom_client::{Acknowledgement, CommandResult, Outcome, acknowledgement};
/// assert_eq!(acknowledgement(&Outcome::Completed(CommandResult::invalid("bad json"))), Acknowledgement::Reject);
/// assert_eq!(acknowledgement(&Outcome::Panicked("boom".into())), Acknowledgement::Requeue { after: None });
/// ```
pub fn acknowledgement(outcome: &Outcome) -> Acknowledgement {
    match outcome {
        Outcome::Completed(CommandResult::Success | CommandResult::Drop { .. }) => {
            Acknowledgement::Ack
        }
        Outcome::Completed(CommandResult::Retry { after }) => {
            Acknowledgement::Requeue { after: *after }
        }
        Outcome::Completed(CommandResult::DeadLetter { .. }) => Acknowledgement::Reject,
        // A panic may be a bug that a redeployed worker fixes, or a poison message: requeue,
        // and let the queue's delivery limit move a poison message to the dead-letter queue.
        Outcome::Panicked(_) | Outcome::TimedOut(_) => Acknowledgement::Requeue { after: None },
    }
}

/// Runs a [`Handler`] on messages, each in its own task so that a panic or a timeout is
/// contained.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{CommandResult, ConsumerAdapter, Incoming, Outcome, handler_fn};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let adapter = ConsumerAdapter::new(
///     handler_fn(|_| async { CommandResult::Success }),
///     Duration::from_secs(1),
/// );
/// let outcome = adapter.process(Incoming::new(b"{}".to_vec())).await;
/// assert_eq!(outcome, Outcome::Completed(CommandResult::Success));
/// # }
/// ```
pub struct ConsumerAdapter<H> {
    handler: Arc<H>,
    timeout: Duration,
}

impl<H> std::fmt::Debug for ConsumerAdapter<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerAdapter").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl<H: Handler> ConsumerAdapter<H> {
    /// An adapter giving each message at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use postroom_client::{CommandResult, ConsumerAdapter, handler_fn};
    /// let adapter = ConsumerAdapter::new(handler_fn(|_| async { CommandResult::Success }), Duration::from_secs(5));
    /// # drop(adapter);
    /// ```
    pub fn new(handler: H, timeout: Duration) -> ConsumerAdapter<H> {
        ConsumerAdapter { handler: Arc::new(handler), timeout }
    }

    /// The handler.
    ///
    /// ```
    /// use std::time::Duration;
    /// use postroom_client::{CommandResult, ConsumerAdapter, Handler, Incoming, handler_fn};
    /// let adapter = ConsumerAdapter::new(handler_fn(|_| async { CommandResult::Success }), Duration::from_secs(5));
    /// let direct = futures_lite::future::block_on(adapter.handler().handle(&Incoming::new(vec![])));
    /// assert_eq!(direct, CommandResult::Success);
    /// ```
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Runs the handler on `message` in a new task. Must be called within a tokio runtime.
    ///
    /// A handler still running at the timeout is cancelled, and `process` returns only once
    /// it has stopped, so the requeue never races the handler. Cancelling takes effect at
    /// the handler's next `.await`: blocking work (a CPU loop, a synchronous call) cannot be
    /// cancelled, and after a 5 s grace the message is requeued while it still runs. Run
    /// such work with `tokio::task::spawn_blocking` and keep it shorter than the timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use postroom_client::{ConsumerAdapter, Incoming, Outcome, handler_fn};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let adapter = ConsumerAdapter::new(
    ///     handler_fn(|_| async { panic!("bug") }),
    ///     Duration::from_secs(5),
    /// );
    /// assert_eq!(adapter.process(Incoming::new(vec![])).await, Outcome::Panicked("bug".into()));
    /// # }
    /// ```
    pub async fn process(&self, message: Incoming) -> Outcome {
        let handler = Arc::clone(&self.handler);
        let mut task = tokio::spawn(async move { handler.handle(&message).await });
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(result)) => Outcome::Completed(result),
            Ok(Err(error)) if error.is_panic() => Outcome::Panicked(panic_message(error)),
            // Cancelled from outside: the runtime is shutting down under us.
            Ok(Err(_)) => Outcome::Panicked("handler task cancelled".into()),
            Err(_) => {
                task.abort();
                // The nack must not go out while the handler still runs, or its redelivery
                // could be handled beside it. An aborted task stops at its next `.await`;
                // one blocking a thread stops only when that code returns, so the wait is
                // bounded.
                match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
                    // It finished before the abort took hold: its result stands.
                    Ok(Ok(result)) => Outcome::Completed(result),
                    Ok(Err(_)) => Outcome::TimedOut(self.timeout),
                    Err(_) => {
                        tracing::error!(
                            grace = ?CANCEL_GRACE,
                            "a handler past its timeout did not stop when cancelled (blocking \
                             code?); requeueing while it still runs"
                        );
                        Outcome::TimedOut(self.timeout)
                    }
                }
            }
        }
    }
}

/// How long a timed-out handler may take to stop once cancelled.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::handler::handler_fn;

    /// A handler that answers whatever the body names, and counts its calls.
    struct MockHandler {
        calls: AtomicUsize,
    }

    impl Handler for MockHandler {
        async fn handle(&self, message: &Incoming) -> CommandResult {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match message.body.as_slice() {
                b"ok" => CommandResult::Success,
                b"retry" => CommandResult::retry_after(Duration::from_secs(3)),
                b"drop" => CommandResult::dropped("duplicate"),
                b"dead" => CommandResult::dead_letter("rule violated"),
                b"panic" => panic!("handler bug"),
                b"slow" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    CommandResult::Success
                }
                other => CommandResult::invalid(format!("{} unexpected bytes", other.len())),
            }
        }
    }

    fn adapter() -> ConsumerAdapter<MockHandler> {
        ConsumerAdapter::new(MockHandler { calls: AtomicUsize::new(0) }, Duration::from_secs(5))
    }

    async fn ack_for(adapter: &ConsumerAdapter<MockHandler>, body: &[u8]) -> Acknowledgement {
        acknowledgement(&adapter.process(Incoming::new(body.to_vec())).await)
    }

    #[tokio::test]
    async fn each_command_result_maps_to_its_acknowledgement() {
        let adapter = adapter();
        assert_eq!(ack_for(&adapter, b"ok").await, Acknowledgement::Ack);
        assert_eq!(
            ack_for(&adapter, b"retry").await,
            Acknowledgement::Requeue { after: Some(Duration::from_secs(3)) }
        );
        assert_eq!(ack_for(&adapter, b"drop").await, Acknowledgement::Ack);
        assert_eq!(ack_for(&adapter, b"dead").await, Acknowledgement::Reject);
        assert_eq!(adapter.handler().calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_invalid_payload_is_rejected_never_requeued() {
        assert_eq!(ack_for(&adapter(), b"\xff garbage").await, Acknowledgement::Reject);
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_requeue_and_the_adapter_keeps_working() {
        let adapter = adapter();
        let outcome = adapter.process(Incoming::new(b"panic".to_vec())).await;
        assert_eq!(outcome, Outcome::Panicked("handler bug".into()));
        assert_eq!(acknowledgement(&outcome), Acknowledgement::Requeue { after: None });
        assert_eq!(ack_for(&adapter, b"ok").await, Acknowledgement::Ack);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_the_timeout_is_cancelled_and_requeued() {
        let adapter = ConsumerAdapter::new(
            MockHandler { calls: AtomicUsize::new(0) },
            Duration::from_millis(50),
        );
        let outcome = adapter.process(Incoming::new(b"slow".to_vec())).await;
        assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(50)));
        assert_eq!(acknowledgement(&outcome), Acknowledgement::Requeue { after: None });
    }

    // Regression: the timeout was reported (and the message nacked) while the aborted
    // handler could still run, so its redelivery could be handled beside it.
    #[tokio::test]
    async fn a_timed_out_handler_has_stopped_when_the_timeout_is_reported() {
        /// Counts the handler runs still alive: incremented on entry, decremented on drop.
        struct Alive(Arc<AtomicUsize>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let alive = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&alive);
        let adapter = ConsumerAdapter::new(
            handler_fn(move |_| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _alive = Alive(counter);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    CommandResult::Success
                }
            }),
            Duration::from_millis(50),
        );
        let outcome = adapter.process(Incoming::new(vec![])).await;
        assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(50)));
        assert_eq!(alive.load(Ordering::SeqCst), 0, "the handler still runs");
    }

    #[tokio::test]
    async fn handlers_see_the_message_as_sent() {
        let adapter = ConsumerAdapter::new(
            handler_fn(|message: Incoming| async move {
                if message.routing_key == "k" && message.delivery_count == 2 {
                    CommandResult::Success
                } else {
                    CommandResult::dead_letter("wrong message")
                }
            }),
            Duration::from_secs(1),
        );
        let message = Incoming::new(vec![]).with_routing("e", "k").with_delivery_count(2);
        assert_eq!(adapter.process(message).await, Outcome::Completed(CommandResult::Success));
    }
}
