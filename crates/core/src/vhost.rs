//! Virtual hosts: the exchanges and queues of one namespace, and routing across them.

use std::collections::{HashMap, HashSet};

use postroom_amqp::{FieldTable, ShortStr};

use crate::error::{BrokerError, Result};
use crate::exchange::{Destination, Exchange, ExchangeKind, OwnedStoreId};
use crate::queue::Queue;

/// The exchanges every virtual host starts with (besides the default exchange).
pub const PREDECLARED_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Its name.
    pub name: ShortStr,
    /// Exchanges by name; the default exchange is the one named "".
    pub exchanges: HashMap<ShortStr, Exchange>,
    /// Queues by name.
    pub queues: HashMap<ShortStr, Queue>,
    /// Store ids of exchanges removed since the broker last released them
    /// ([`crate::Broker::tick`] does): however an exchange goes (deleted, or auto-deleted
    /// with its last binding), what it held in the store goes with it.
    pub(crate) orphaned: Vec<OwnedStoreId>,
}

impl VHost {
    /// A virtual host with the default and predeclared exchanges.
    pub fn new(name: &str) -> VHost {
        let mut exchanges = HashMap::new();
        let mut add = |name: &str, kind| {
            let exchange = Exchange::new(name.into(), kind, true, false, false, FieldTable::new());
            exchanges.insert(exchange.name.clone(), exchange);
        };
        add("", ExchangeKind::Direct);
        for (name, kind) in PREDECLARED_EXCHANGES {
            add(name, *kind);
        }
        VHost { name: name.into(), exchanges, queues: HashMap::new(), orphaned: Vec::new() }
    }

    /// The exchange `name`.
    ///
    /// # Errors
    /// `NotFound` if there is none.
    pub fn exchange(&self, name: &str) -> Result<&Exchange> {
        self.exchanges.get(name).ok_or_else(|| BrokerError::exchange_not_found(name, &self.name))
    }

    /// The queue `name`.
    ///
    /// # Errors
    /// `NotFound` if there is none.
    pub fn queue(&self, name: &str) -> Result<&Queue> {
        self.queues.get(name).ok_or_else(|| BrokerError::queue_not_found(name, &self.name))
    }

    /// The queue `name`, mutably.
    ///
    /// # Errors
    /// `NotFound` if there is none.
    pub fn queue_mut(&mut self, name: &str) -> Result<&mut Queue> {
        let vhost = &self.name;
        self.queues.get_mut(name).ok_or_else(|| BrokerError::queue_not_found(name, vhost))
    }

    /// Routes a message published to `exchange`, appending the names of the queues it
    /// reaches to `queues` (each at most once). Follows exchange-to-exchange bindings
    /// (each exchange visited once, so cycles end) and alternate exchanges, which take a
    /// message their exchange had no binding for (as RabbitMQ does).
    ///
    /// # Errors
    /// `NotFound` if the exchange published to does not exist.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        queues: &mut Vec<ShortStr>,
    ) -> Result<()> {
        let first = self.exchange(exchange)?;
        if first.name.is_empty() {
            if let Some((name, _)) = self.queues.get_key_value(routing_key) {
                queues.push(name.clone());
            }
            return Ok(());
        }
        let mut work = vec![first];
        let mut seen: Vec<&str> = vec![&first.name];
        let mut destinations = Vec::new();
        let mut seen_queues: Option<HashSet<ShortStr>> = None;
        while let Some(exchange) = work.pop() {
            destinations.clear();
            exchange.route_into(routing_key, headers, &mut destinations);
            if destinations.is_empty()
                && let Some(alternate) = exchange.alternate_exchange()
            {
                destinations.push(Destination::Exchange(alternate.into()));
            }
            for destination in destinations.drain(..) {
                match destination {
                    Destination::Queue(name) => {
                        if !self.queues.contains_key(&name) {
                            continue;
                        }
                        // Linear for the few targets most messages have; a set once a
                        // fanout reaches many queues, so routing stays O(targets).
                        let duplicate = match &mut seen_queues {
                            Some(set) => !set.insert(name.clone()),
                            None => queues.contains(&name),
                        };
                        if !duplicate {
                            queues.push(name);
                            if seen_queues.is_none() && queues.len() > 32 {
                                seen_queues = Some(queues.iter().cloned().collect());
                            }
                        }
                    }
                    Destination::Exchange(name) => {
                        if let Some(next) = self.exchanges.get(&name)
                            && !seen.contains(&next.name.as_str())
                        {
                            seen.push(&next.name);
                            work.push(next);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every binding to `destination`; auto-delete exchanges left without bindings
    /// are deleted too, and the bindings to them, and so on. Iterative: a chain of
    /// auto-delete exchanges as long as a client cares to build must not exhaust the stack.
    pub fn remove_bindings_to(&mut self, destination: &Destination) {
        let mut pending = vec![destination.clone()];
        while let Some(destination) = pending.pop() {
            let mut emptied = Vec::new();
            for exchange in self.exchanges.values_mut() {
                let before = exchange.bindings.len();
                exchange.bindings.retain(|b| b.destination != destination);
                if before != exchange.bindings.len()
                    && exchange.bindings.is_empty()
                    && exchange.auto_delete
                {
                    emptied.push(exchange.name.clone());
                }
            }
            for name in emptied {
                if let Some(exchange) = self.exchanges.remove(&name) {
                    self.orphaned.extend(exchange.owned_store_ids());
                    pending.push(Destination::Exchange(exchange.name));
                }
            }
        }
    }

    /// Deletes an exchange and every binding to it.
    pub fn delete_exchange(&mut self, name: &str) {
        if let Some(exchange) = self.exchanges.remove(name) {
            self.orphaned.extend(exchange.owned_store_ids());
            self.remove_bindings_to(&Destination::Exchange(exchange.name));
        }
    }

    /// Whether any exchange has a binding to `destination`.
    pub fn has_bindings_to(&self, destination: &Destination) -> bool {
        self.exchanges.values().any(|x| x.bindings.iter().any(|b| b.destination == *destination))
    }
}
