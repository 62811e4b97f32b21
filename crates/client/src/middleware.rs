//! Ready-made middleware: [`Tracing`] (a span per message, continuing the sender's trace) and
//! [`Metrics`] (results and durations to a [`MetricsRecorder`] port).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::handler::{Handler, Middleware};
use crate::incoming::Incoming;
use crate::result::CommandResult;

/// Runs the handler in a `postroom.handle` span carrying the message id, type, routing key,
/// delivery count and the sender's `traceparent` (so that, with
/// [`TraceContextLayer`](crate::TraceContextLayer), the span continues the sender's trace
/// and messages published inside it carry this trace on), and logs the result.
///
/// ```
/// use postroom_client::{CommandResult, HandlerExt, Tracing, handler_fn};
/// let handler = handler_fn(|_| async { CommandResult::Success }).with(Tracing);
/// # drop(handler);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

/// The handler [`Tracing`] makes.
///
/// ```
/// use postroom_client::{CommandResult, HandlerExt, Traced, Tracing, handler_fn};
/// let traced: Traced<_> = handler_fn(|_| async { CommandResult::Success }).with(Tracing);
/// # drop(traced);
/// ```
#[derive(Debug, Clone)]
pub struct Traced<H>(H);

impl<H: Handler> Middleware<H> for Tracing {
    type Output = Traced<H>;
    fn wrap(self, inner: H) -> Traced<H> {
        Traced(inner)
    }
}

impl<H: Handler> Handler for Traced<H> {
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let envelope = &message.envelope;
        let span = tracing::info_span!(
            "postroom.handle",
            message_id = %envelope.message_id,
            message_type = envelope.message_type.as_deref(),
            routing_key = %message.routing_key,
            delivery_count = message.delivery_count,
            traceparent = envelope.traceparent.as_deref(),
        );
        async {
            let result = self.0.handle(message).await;
            match &result {
                CommandResult::Success => tracing::debug!("handled"),
                CommandResult::Retry { after } => tracing::info!(?after, "retry requested"),
                other => tracing::warn!(outcome = %other, "message not processed"),
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// Where [`Metrics`] reports: implement it for your metrics system (Prometheus, StatsD…).
///
/// Called once per handled message, from many tasks at once.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{CommandResult, MetricsRecorder};
/// struct Log;
/// impl MetricsRecorder for Log {
///     fn record(&self, message_type: &str, result: &CommandResult, elapsed: Duration) {
///         println!("{message_type} {} in {elapsed:?}", result.kind());
///     }
/// }
/// ```
pub trait MetricsRecorder: Send + Sync + 'static {
    /// One message of `message_type` (`"unknown"` when untyped) ended with `result` after
    /// `elapsed`.
    fn record(&self, message_type: &str, result: &CommandResult, elapsed: Duration);
}

/// Counts results and total handling time with atomics; read with
/// [`snapshot`](CountingMetrics::snapshot).
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{CommandResult, CountingMetrics, MetricsRecorder};
/// let metrics = CountingMetrics::default();
/// metrics.record("t", &CommandResult::Success, Duration::from_millis(3));
/// assert_eq!(metrics.snapshot().success, 1);
/// ```
#[derive(Debug, Default)]
pub struct CountingMetrics {
    success: AtomicU64,
    retry: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    nanos: AtomicU64,
}

/// A copy of [`CountingMetrics`]' counters.
///
/// ```
/// let snapshot = postroom_client::CountingMetrics::default().snapshot();
/// assert_eq!(snapshot, postroom_client::MetricsSnapshot::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// `Success` results.
    pub success: u64,
    /// `Retry` results.
    pub retry: u64,
    /// `Drop` results.
    pub dropped: u64,
    /// `DeadLetter` results.
    pub dead_lettered: u64,
    /// Time spent in the handler, all messages together.
    pub total_time: Duration,
}

impl CountingMetrics {
    /// The counters now.
    ///
    /// ```
    /// let metrics = postroom_client::CountingMetrics::default();
    /// assert_eq!(metrics.snapshot().dead_lettered, 0);
    /// ```
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            success: self.success.load(Ordering::Relaxed),
            retry: self.retry.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            total_time: Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        }
    }
}

impl MetricsRecorder for CountingMetrics {
    fn record(&self, _message_type: &str, result: &CommandResult, elapsed: Duration) {
        let counter = match result {
            CommandResult::Success => &self.success,
            CommandResult::Retry { .. } => &self.retry,
            CommandResult::Drop { .. } => &self.dropped,
            CommandResult::DeadLetter { .. } => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Reports every result and its duration to a [`MetricsRecorder`].
///
/// ```
/// use std::sync::Arc;
/// use postroom_client::{CommandResult, CountingMetrics, Handler, HandlerExt, Incoming, Metrics, handler_fn};
/// let metrics = Arc::new(CountingMetrics::default());
/// let handler = handler_fn(|_| async { CommandResult::retry() }).with(Metrics::new(Arc::clone(&metrics)));
/// futures_lite::future::block_on(handler.handle(&Incoming::new(vec![])));
/// assert_eq!(metrics.snapshot().retry, 1);
/// ```
#[derive(Debug)]
pub struct Metrics<R>(Arc<R>);

impl<R> Metrics<R> {
    /// Reports to `recorder`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let metrics = postroom_client::Metrics::new(Arc::new(postroom_client::CountingMetrics::default()));
    /// # drop(metrics);
    /// ```
    pub fn new(recorder: Arc<R>) -> Metrics<R> {
        Metrics(recorder)
    }
}

/// The handler [`Metrics`] makes.
///
/// ```
/// use std::sync::Arc;
/// use postroom_client::{CommandResult, CountingMetrics, HandlerExt, Metered, Metrics, handler_fn};
/// let metered: Metered<_, CountingMetrics> =
///     handler_fn(|_| async { CommandResult::Success }).with(Metrics::new(Arc::new(CountingMetrics::default())));
/// # drop(metered);
/// ```
#[derive(Debug)]
pub struct Metered<H, R> {
    inner: H,
    recorder: Arc<R>,
}

impl<H: Handler, R: MetricsRecorder> Middleware<H> for Metrics<R> {
    type Output = Metered<H, R>;
    fn wrap(self, inner: H) -> Metered<H, R> {
        Metered { inner, recorder: self.0 }
    }
}

impl<H: Handler, R: MetricsRecorder> Handler for Metered<H, R> {
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let started = Instant::now();
        let result = self.inner.handle(message).await;
        let message_type = message.envelope.message_type.as_deref().unwrap_or("unknown");
        self.recorder.record(message_type, &result, started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::envelope::Envelope;
    use crate::handler::{HandlerExt, handler_fn};
    use crate::trace::{TraceContext, TraceContextLayer};

    #[tokio::test]
    async fn the_tracing_span_continues_the_senders_trace() {
        let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
        let _guard = tracing::subscriber::set_default(subscriber);
        let sender = TraceContext::new_root();
        let handler = handler_fn(|_| async {
            match TraceContext::current() {
                Some(context) => CommandResult::dropped(format!("{:032x}", context.trace_id())),
                None => CommandResult::Success,
            }
        })
        .with(Tracing);
        let envelope = Envelope::new().with_traceparent(sender.to_traceparent());
        let result = handler.handle(&Incoming::new(vec![]).with_envelope(envelope)).await;
        assert_eq!(result.reason(), Some(format!("{:032x}", sender.trace_id()).as_str()));
    }

    #[tokio::test]
    async fn metrics_count_each_kind_of_result() {
        let metrics = Arc::new(CountingMetrics::default());
        let handler = handler_fn(|message: Incoming| async move {
            match message.body.first() {
                Some(b's') => CommandResult::Success,
                Some(b'r') => CommandResult::retry(),
                Some(b'd') => CommandResult::dropped("x"),
                _ => CommandResult::dead_letter("y"),
            }
        })
        .with(Metrics::new(Arc::clone(&metrics)));
        for body in ["s", "s", "r", "d", "x"] {
            handler.handle(&Incoming::new(body.as_bytes().to_vec())).await;
        }
        let snapshot = metrics.snapshot();
        assert_eq!(
            (snapshot.success, snapshot.retry, snapshot.dropped, snapshot.dead_lettered),
            (2, 1, 1, 1)
        );
    }
}
