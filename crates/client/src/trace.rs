//! W3C trace context (`traceparent`) carried by `tracing` spans.
//!
//! `tracing` spans have no trace ids of their own. [`TraceContextLayer`] gives every span one:
//! a span created with a `traceparent` field continues that trace (this is how a worker makes
//! its handling span a child of the publisher's), a span inside another continues its parent's
//! trace, and any other span starts a new trace. [`TraceContext::current`] reads the current
//! span's context, and the publisher writes it to the `traceparent` header. Without the layer
//! installed there is no current context and messages carry no `traceparent` (unless one is
//! set explicitly on the [`Envelope`](crate::Envelope)).

use std::fmt;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The name of the span field (and the message header) carrying a W3C `traceparent`.
///
/// ```
/// assert_eq!(postroom_client::TRACEPARENT, "traceparent");
/// ```
pub const TRACEPARENT: &str = "traceparent";

/// A W3C trace context: trace id, parent span id and the sampled flag.
///
/// ```
/// use postroom_client::TraceContext;
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let context = TraceContext::parse(header).unwrap();
/// assert_eq!(context.to_traceparent(), header);
/// let child = context.child();
/// assert_eq!(child.trace_id(), context.trace_id());
/// assert_ne!(child.span_id(), context.span_id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl TraceContext {
    /// A new trace with random ids, sampled.
    ///
    /// ```
    /// let context = postroom_client::TraceContext::new_root();
    /// assert_ne!(context.trace_id(), 0);
    /// ```
    pub fn new_root() -> TraceContext {
        TraceContext { trace_id: nonzero_u128(), span_id: nonzero_u64(), sampled: true }
    }

    /// A new span in the same trace.
    ///
    /// ```
    /// let root = postroom_client::TraceContext::new_root();
    /// assert_eq!(root.child().trace_id(), root.trace_id());
    /// ```
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: nonzero_u64(), ..*self }
    }

    /// Parses a `traceparent` header (version `00` layout; later versions are read by their
    /// first four fields, as the W3C spec asks). Returns `None` for anything malformed,
    /// including all-zero ids and version `ff`.
    ///
    /// ```
    /// use postroom_client::TraceContext;
    /// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    /// assert!(TraceContext::parse("garbage").is_none());
    /// ```
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let well_formed = version.len() == 2
            && trace.len() == 32
            && span.len() == 16
            && flags.len() == 2
            && [version, trace, span, flags].iter().all(|part| is_lower_hex(part));
        if !well_formed || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The `traceparent` header value (version `00`).
    ///
    /// ```
    /// let header = postroom_client::TraceContext::new_root().to_traceparent();
    /// assert!(header.starts_with("00-") && header.ends_with("-01"));
    /// ```
    pub fn to_traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// The 128-bit trace id.
    ///
    /// ```
    /// let context = postroom_client::TraceContext::parse("00-0000000000000000000000000000000a-000000000000000b-01").unwrap();
    /// assert_eq!(context.trace_id(), 10);
    /// ```
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The 64-bit id of the span this context names.
    ///
    /// ```
    /// let context = postroom_client::TraceContext::parse("00-0000000000000000000000000000000a-000000000000000b-01").unwrap();
    /// assert_eq!(context.span_id(), 11);
    /// ```
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Whether the trace is sampled (flag `01`).
    ///
    /// ```
    /// let context = postroom_client::TraceContext::parse("00-0000000000000000000000000000000a-000000000000000b-00").unwrap();
    /// assert!(!context.sampled());
    /// ```
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The context of the current `tracing` span, if [`TraceContextLayer`] is installed and a
    /// span is entered.
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    /// use postroom_client::{TraceContext, TraceContextLayer};
    /// let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
    /// tracing::subscriber::with_default(subscriber, || {
    ///     assert!(TraceContext::current().is_none());
    ///     let span = tracing::info_span!("work");
    ///     let _entered = span.enter();
    ///     assert!(TraceContext::current().is_some());
    /// });
    /// ```
    pub fn current() -> Option<TraceContext> {
        tracing::Span::current()
            .with_subscriber(|(id, dispatch)| {
                let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
                let span = registry.span(id)?;
                let extensions = span.extensions();
                extensions.get::<TraceContext>().copied()
            })
            .flatten()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

/// A `tracing_subscriber` layer that gives every span a [`TraceContext`].
///
/// Install it next to your formatter:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let subscriber = tracing_subscriber::registry()
///     .with(postroom_client::TraceContextLayer)
///     .with(tracing_subscriber::fmt::layer());
/// # drop(subscriber);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = TraceparentField(None);
        attrs.record(&mut visitor);
        let parent = visitor.0.or_else(|| {
            span.parent().and_then(|parent| parent.extensions().get::<TraceContext>().copied())
        });
        let context = parent.map_or_else(TraceContext::new_root, |parent| parent.child());
        span.extensions_mut().insert(context);
    }
}

struct TraceparentField(Option<TraceContext>);

impl Visit for TraceparentField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACEPARENT {
            self.0 = TraceContext::parse(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` and `?value` fields arrive here; a traceparent formats as itself.
        if field.name() == TRACEPARENT {
            self.0 = TraceContext::parse(format!("{value:?}").trim_matches('"'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        assert_eq!(TraceContext::parse(HEADER).unwrap().to_traceparent(), HEADER);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let context = TraceContext::parse(later).unwrap();
        assert!(!context.sampled());
    }

    #[test]
    fn spans_continue_a_traceparent_field_and_their_parents_trace() {
        let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
        tracing::subscriber::with_default(subscriber, || {
            let remote = TraceContext::parse(HEADER).unwrap();
            let outer = tracing::info_span!("handle", traceparent = HEADER);
            let _outer = outer.enter();
            let outer_context = TraceContext::current().unwrap();
            assert_eq!(outer_context.trace_id(), remote.trace_id());
            assert_ne!(outer_context.span_id(), remote.span_id());
            let inner = tracing::info_span!("store");
            let _inner = inner.enter();
            let inner_context = TraceContext::current().unwrap();
            assert_eq!(inner_context.trace_id(), remote.trace_id());
            assert_ne!(inner_context.span_id(), outer_context.span_id());
        });
    }

    #[test]
    fn unrelated_root_spans_start_different_traces() {
        let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
        tracing::subscriber::with_default(subscriber, || {
            let first = tracing::info_span!("a").in_scope(TraceContext::current).unwrap();
            let second = tracing::info_span!("b").in_scope(TraceContext::current).unwrap();
            assert_ne!(first.trace_id(), second.trace_id());
        });
    }
}
