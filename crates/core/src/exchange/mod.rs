//! Exchanges and bindings. One file per exchange type holds its matching rule; this file
//! holds what they share: the exchange record, bindings, and argument checks.

pub mod delayed;
pub mod direct;
pub mod fanout;
pub mod headers;
pub mod topic;

use postroom_amqp::{FieldTable, ShortStr};
use postroom_store::QueueId;

use crate::error::{BrokerError, Result};

/// The argument naming an exchange's alternate exchange (RabbitMQ's name).
pub const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// The routing rule of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every binding.
    Fanout,
    /// Dot-separated words with `*` and `#` wildcards.
    Topic,
    /// Message headers against binding arguments (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// Parses an AMQP exchange type name.
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        Some(match name {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    /// The AMQP type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding sends matching messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue.
    Queue(ShortStr),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(ShortStr),
}

/// A binding from an exchange to a destination.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: ShortStr,
    /// Binding arguments (headers exchanges match on these).
    pub arguments: FieldTable,
    /// The binding key compiled for its exchange type.
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Direct,
    Fanout,
    Topic(topic::Pattern),
    Headers(headers::HeaderMatch),
}

impl Binding {
    /// A binding compiled for an exchange of `kind`.
    ///
    /// # Errors
    /// `PreconditionFailed` for headers-exchange arguments RabbitMQ refuses (bad `x-match`).
    pub fn new(
        kind: ExchangeKind,
        destination: Destination,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Result<Binding> {
        let matcher = match kind {
            ExchangeKind::Direct => Matcher::Direct,
            ExchangeKind::Fanout => Matcher::Fanout,
            ExchangeKind::Topic => Matcher::Topic(topic::Pattern::compile(&routing_key)),
            ExchangeKind::Headers => Matcher::Headers(headers::HeaderMatch::compile(&arguments)?),
        };
        Ok(Binding { destination, routing_key, arguments, matcher })
    }

    /// Whether this binding is the same as one made with these parameters (AMQP identifies a
    /// binding by source, destination, key and arguments).
    pub fn is(&self, destination: &Destination, routing_key: &str, arguments: &FieldTable) -> bool {
        self.destination == *destination
            && self.routing_key == routing_key
            && self.arguments == *arguments
    }
}

/// An exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Its name; empty for the default exchange.
    pub name: ShortStr,
    /// Its routing rule.
    pub kind: ExchangeKind,
    /// Whether it survives a restart.
    pub durable: bool,
    /// Whether it is deleted when its last binding (as a source) is removed.
    pub auto_delete: bool,
    /// Whether clients may not publish to it directly.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Its bindings, in the order they were made.
    pub bindings: Vec<Binding>,
    /// What it holds back, if it is a delayed exchange.
    pub delayed: Option<delayed::Delayed>,
    /// The keys it saw lately, if it deduplicates (`x-message-deduplication`).
    pub dedup: Option<crate::dedup::DedupWindow>,
    /// Whether it was declared with the deduplication plugin's type (so that is its type
    /// name; it routes as `fanout`).
    pub dedup_type: bool,
}

/// A store id an exchange owns (for a delayed hold or a deduplication window): released
/// when the exchange goes, and returned to the transient pool then unless it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedStoreId {
    /// The id.
    pub id: QueueId,
    /// Whether it came from the durable ids (saved with the definitions).
    pub durable: bool,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: Vec::new(),
            delayed: None,
            dedup: None,
            dedup_type: false,
        }
    }

    /// The store ids it owns.
    pub fn owned_store_ids(&self) -> Vec<OwnedStoreId> {
        let mut ids = Vec::new();
        if let Some(held) = &self.delayed {
            ids.push(OwnedStoreId { id: held.store_id, durable: self.durable });
        }
        if let Some(id) = self.dedup.as_ref().and_then(|d| d.store_id) {
            ids.push(OwnedStoreId { id, durable: true });
        }
        ids
    }

    /// The type it was declared with.
    pub fn type_name(&self) -> &'static str {
        match &self.delayed {
            _ if self.dedup_type => crate::dedup::DEDUP_EXCHANGE_TYPE,
            Some(delayed) if delayed.plugin_type => delayed::DELAYED_TYPE,
            _ => self.kind.as_str(),
        }
    }

    /// The alternate exchange named in the arguments, if any.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments.get(ALTERNATE_EXCHANGE).and_then(|v| v.as_str())
    }

    /// Appends the destinations of every binding matching the message to `out`.
    pub fn route_into(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let topic_words = match self.kind {
            ExchangeKind::Topic => topic::split(routing_key),
            _ => Vec::new(),
        };
        for binding in &self.bindings {
            let hit = match &binding.matcher {
                Matcher::Direct => direct::matches(&binding.routing_key, routing_key),
                Matcher::Fanout => fanout::matches(),
                Matcher::Topic(pattern) => pattern.matches(&topic_words),
                Matcher::Headers(rule) => rule.matches(headers),
            };
            if hit {
                out.push(binding.destination.clone());
            }
        }
    }
}

/// Checks the declare arguments RabbitMQ validates for exchanges.
///
/// # Errors
/// `PreconditionFailed` naming the argument when its type is wrong.
pub fn validate_arguments(arguments: &FieldTable) -> Result<()> {
    if let Some(value) = arguments.get(ALTERNATE_EXCHANGE)
        && value.as_str().is_none()
    {
        return Err(BrokerError::PreconditionFailed(format!(
            "invalid arg '{ALTERNATE_EXCHANGE}': expected a string, got {value:?}"
        )));
    }
    Ok(())
}
