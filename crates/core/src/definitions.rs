//! Declaring, binding and deleting exchanges and queues, with RabbitMQ's checks and texts.

use postroom_amqp::{FieldTable, FieldValue, ShortStr};

use crate::ConnectionId;
use crate::broker::Broker;
use crate::dedup::{self, DedupPolicy, DedupWindow};
use crate::error::{BrokerError, Result};
use crate::exchange::delayed::{self, Delayed};
use crate::exchange::{self, Binding, Destination, Exchange};
use crate::policy::QueuePolicy;
use crate::queue::{EQUIVALENCE_ARGUMENTS, Queue};
use crate::session::{ChannelKey, Outbound};

/// Names starting with this are reserved for the broker.
pub const RESERVED_PREFIX: &str = "amq.";

/// What `exchange.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExchangeSpec {
    /// Name.
    pub name: ShortStr,
    /// Type name (`direct`, `fanout`, `topic`, `headers`).
    pub kind: ShortStr,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// What `queue.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// Name; empty asks the broker to generate one.
    pub name: ShortStr,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by the declaring connection and deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// The answer to `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (generated if none was given).
    pub name: ShortStr,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    got: String,
    current: String,
) -> BrokerError {
    BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received {got} but \
         current is {current}"
    ))
}

fn describe(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_int(), v.as_bool()) {
            (Some(s), _, _) => format!("'{s}'"),
            (_, Some(i), _) => format!("'{i}'"),
            (_, _, Some(b)) => format!("'{b}'"),
            _ => format!("'{v:?}'"),
        },
    }
}

/// Argument values are equal if they are the same value, integers compared numerically
/// (clients pick different integer widths for the same number).
fn same_argument(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match (a.as_int(), b.as_int()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        (a, b) => a == b,
    }
}

fn check_arguments(
    keys: &[&str],
    current: &FieldTable,
    given: &FieldTable,
    kind: &str,
    name: &str,
    vhost: &str,
) -> Result<()> {
    for key in keys {
        let (now, got) = (current.get(key), given.get(key));
        if !same_argument(now, got) {
            return Err(inequivalent(key, kind, name, vhost, describe(got), describe(now)));
        }
    }
    Ok(())
}

impl Broker {
    /// `exchange.declare`.
    ///
    /// # Errors
    /// `NotFound` (passive, missing), `AccessRefused` (default exchange, `amq.` prefix),
    /// `CommandInvalid` (unknown type), `PreconditionFailed` (inequivalent redeclare or
    /// bad argument).
    pub fn exchange_declare(&mut self, connection: ConnectionId, spec: ExchangeSpec) -> Result<()> {
        let vhost_name = self.vhost_of(connection)?;
        let vhost = self.vhost_mut(&vhost_name)?;
        if spec.passive {
            return vhost.exchange(&spec.name).map(|_| ());
        }
        let what = format!("exchange '{}' in vhost '{vhost_name}'", spec.name);
        let (routing, dedup) = DedupPolicy::for_exchange(&spec.kind, &spec.arguments, &what)?;
        let (kind, delayed) = delayed::parse_declaration(routing, &spec.arguments)?;
        if spec.name.is_empty() {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        exchange::validate_arguments(&spec.arguments)?;
        if let Some(existing) = vhost.exchanges.get(&spec.name) {
            let name = &spec.name;
            let check = |arg: &str, now: &str, got: &str| {
                if now == got {
                    Ok(())
                } else {
                    Err(inequivalent(
                        arg,
                        "exchange",
                        name,
                        &vhost_name,
                        format!("'{got}'"),
                        format!("'{now}'"),
                    ))
                }
            };
            check("type", existing.type_name(), &spec.kind)?;
            check("durable", &existing.durable.to_string(), &spec.durable.to_string())?;
            check("auto_delete", &existing.auto_delete.to_string(), &spec.auto_delete.to_string())?;
            check("internal", &existing.internal.to_string(), &spec.internal.to_string())?;
            return check_arguments(
                &[
                    exchange::ALTERNATE_EXCHANGE,
                    delayed::DELAYED_TYPE_ARGUMENT,
                    delayed::DELAYED_EXCHANGE_ARGUMENT,
                    dedup::MESSAGE_DEDUPLICATION,
                    dedup::CACHE_TTL,
                    dedup::CACHE_SIZE,
                    dedup::CACHE_PERSISTENCE,
                ],
                &existing.arguments,
                &spec.arguments,
                "exchange",
                name,
                &vhost_name,
            );
        }
        if spec.name.starts_with(RESERVED_PREFIX) {
            return Err(BrokerError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let dedup_type = spec.kind == dedup::DEDUP_EXCHANGE_TYPE;
        let mut exchange = Exchange::new(
            spec.name,
            kind,
            spec.durable,
            spec.auto_delete,
            spec.internal,
            spec.arguments,
        );
        exchange.dedup_type = dedup_type;
        if let Some(plugin_type) = delayed {
            // Held messages live in the store under the exchange's own id, persisted with
            // it when it is durable.
            let store_id =
                if exchange.durable { self.durable_store_id() } else { self.transient_queue_id() };
            exchange.delayed = Some(Delayed::new(plugin_type, store_id, self.unique_id()));
            self.timed_exchanges.insert((vhost_name.clone(), exchange.name.clone()));
        }
        if let Some(policy) = dedup {
            // A durable exchange's window is persisted under an id of its own.
            let store_id = exchange.durable.then(|| self.durable_store_id());
            exchange.dedup = Some(DedupWindow::new(policy, store_id));
        }
        let vhost = self.vhost_mut(&vhost_name)?;
        let (name, durable) = (exchange.name.clone(), exchange.durable);
        vhost.exchanges.insert(name.clone(), exchange);
        if durable && let Err(e) = self.save_definitions() {
            self.vhost_mut(&vhost_name)?.exchanges.remove(&name);
            return Err(e);
        }
        Ok(())
    }

    /// `exchange.delete`. Deleting a missing exchange succeeds, as in RabbitMQ 3.x+.
    ///
    /// # Errors
    /// `AccessRefused` for the default and `amq.` exchanges; `PreconditionFailed` when
    /// `if_unused` and the exchange has bindings.
    pub fn exchange_delete(
        &mut self,
        connection: ConnectionId,
        name: &str,
        if_unused: bool,
    ) -> Result<()> {
        let vhost_name = self.vhost_of(connection)?;
        let vhost = self.vhost_mut(&vhost_name)?;
        if name.is_empty() || name.starts_with(RESERVED_PREFIX) {
            return Err(BrokerError::AccessRefused(format!(
                "operation not permitted on exchange '{name}' in vhost '{vhost_name}'"
            )));
        }
        let Some(exchange) = vhost.exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && !exchange.bindings.is_empty() {
            return Err(BrokerError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{vhost_name}' in use"
            )));
        }
        let durable = exchange.durable;
        // A delayed exchange's held messages go with it, released by the next tick (which
        // also catches the exchanges that auto-delete).
        vhost.delete_exchange(name);
        if durable {
            self.save_definitions()?;
        }
        Ok(())
    }

    /// `queue.bind` (destination a queue) and `exchange.bind` (destination an exchange).
    /// Binding twice is a no-op.
    ///
    /// # Errors
    /// `NotFound` for a missing source or destination, `AccessRefused` for the default
    /// exchange, `ResourceLocked` for another connection's exclusive queue,
    /// `PreconditionFailed` for bad headers-binding arguments.
    pub fn bind(
        &mut self,
        connection: ConnectionId,
        source: &str,
        destination: Destination,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Result<()> {
        let vhost_name = self.vhost_of(connection)?;
        let vhost = self.vhost_mut(&vhost_name)?;
        check_binding_ends(vhost, connection, source, &destination)?;
        let persisted = crate::persist::binding_is_persisted(vhost, source, &destination);
        let Some(exchange) = vhost.exchanges.get_mut(source) else {
            return Err(BrokerError::exchange_not_found(source, &vhost_name));
        };
        if exchange.bindings.iter().any(|b| b.is(&destination, &routing_key, &arguments)) {
            return Ok(());
        }
        let binding = Binding::new(exchange.kind, destination, routing_key, arguments)?;
        exchange.bindings.push(binding);
        if persisted {
            self.save_definitions()?;
        }
        Ok(())
    }

    /// `queue.unbind` and `exchange.unbind`. Removing a binding that does not exist succeeds.
    ///
    /// # Errors
    /// As [`Broker::bind`], for missing or inaccessible ends.
    pub fn unbind(
        &mut self,
        connection: ConnectionId,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let vhost_name = self.vhost_of(connection)?;
        let vhost = self.vhost_mut(&vhost_name)?;
        check_binding_ends(vhost, connection, source, &destination)?;
        let persisted = crate::persist::binding_is_persisted(vhost, source, &destination);
        let Some(exchange) = vhost.exchanges.get_mut(source) else {
            return Ok(());
        };
        let before = exchange.bindings.len();
        exchange.bindings.retain(|b| !b.is(&destination, routing_key, arguments));
        let removed = before != exchange.bindings.len();
        if removed && exchange.bindings.is_empty() && exchange.auto_delete {
            vhost.delete_exchange(source);
        }
        if removed && persisted {
            self.save_definitions()?;
        }
        Ok(())
    }

    /// `queue.declare`.
    ///
    /// # Errors
    /// `NotFound` (passive, missing), `ResourceLocked` (another connection's exclusive
    /// queue), `PreconditionFailed` (inequivalent redeclare), `AccessRefused` (`amq.` prefix).
    pub fn queue_declare(
        &mut self,
        connection: ConnectionId,
        spec: QueueSpec,
    ) -> Result<QueueDeclared> {
        let vhost_name = self.vhost_of(connection)?;
        let name = if spec.name.is_empty() && !spec.passive {
            self.generate_name("amq.gen-")
        } else {
            spec.name.clone()
        };
        let now = self.clock.now_ms();
        let vhost = self.vhost_mut(&vhost_name)?;
        if let Some(queue) = vhost.queues.get_mut(&name) {
            if !queue.accessible_by(connection) {
                return Err(BrokerError::locked(&name, &vhost_name));
            }
            if !spec.passive {
                check_queue_equivalence(queue, &spec, &vhost_name)?;
            }
            // Any declare renews an `x-expires` lease, a passive one too (as RabbitMQ).
            queue.last_used = now;
            return Ok(QueueDeclared {
                name,
                message_count: queue.message_count(),
                consumer_count: queue.consumer_count(),
            });
        }
        if spec.passive {
            return Err(BrokerError::queue_not_found(&name, &vhost_name));
        }
        if name.starts_with(RESERVED_PREFIX) && !spec.name.is_empty() {
            return Err(BrokerError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let owner = spec.exclusive.then_some(connection);
        QueuePolicy::from_arguments(&spec.arguments, &name, &vhost_name)?;
        let mut queue =
            Queue::new(name.clone(), spec.durable, owner, spec.auto_delete, spec.arguments);
        queue.incarnation = self.unique_id();
        // Every queue gets a store identity (to spill past its memory limit); only durable,
        // non-exclusive ones persist messages and are saved with the definitions.
        let persisted = queue.persists_messages();
        queue.store_id =
            Some(if persisted { self.durable_store_id() } else { self.transient_queue_id() });
        if persisted && let Some(window) = &mut queue.dedup {
            // Its keys are persisted under an id of their own, so a restart keeps them.
            window.store_id = Some(self.durable_store_id());
        }
        queue.last_used = now;
        queue.ready.share_gauge(&self.memory);
        if queue.needs_timer() {
            self.timed.insert((vhost_name.clone(), name.clone()));
        }
        self.vhost_mut(&vhost_name)?.queues.insert(name.clone(), queue);
        if persisted && let Err(e) = self.save_definitions() {
            self.vhost_mut(&vhost_name)?.queues.remove(&name);
            return Err(e);
        }
        Ok(QueueDeclared { name, message_count: 0, consumer_count: 0 })
    }

    /// `queue.purge`: removes the ready messages, returning how many.
    ///
    /// # Errors
    /// `NotFound`, `ResourceLocked`.
    pub fn queue_purge(&mut self, connection: ConnectionId, name: &str) -> Result<u32> {
        let vhost_name = self.vhost_of(connection)?;
        let store = self.store.clone();
        let queue = self.vhost_mut(&vhost_name)?.queue_mut(name)?;
        if !queue.accessible_by(connection) {
            return Err(BrokerError::locked(name, &vhost_name));
        }
        let (count, released) = queue.purge(&*store);
        released.map_err(|e| BrokerError::StoreFailed(e.to_string()))?;
        Ok(count)
    }

    /// `queue.delete`, returning the number of ready messages deleted. A missing queue
    /// deletes nothing and succeeds, as in RabbitMQ 3.x+.
    ///
    /// # Errors
    /// `ResourceLocked`; `PreconditionFailed` for `if_unused` with consumers or `if_empty`
    /// with messages.
    pub fn queue_delete(
        &mut self,
        connection: ConnectionId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32> {
        let vhost_name = self.vhost_of(connection)?;
        let vhost = self.vhost_mut(&vhost_name)?;
        let Some(queue) = vhost.queues.get(name) else {
            return Ok(0);
        };
        if !queue.accessible_by(connection) {
            return Err(BrokerError::locked(name, &vhost_name));
        }
        if if_unused && !queue.consumers.is_empty() {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost_name}' in use"
            )));
        }
        if if_empty && !queue.ready.is_empty() {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost_name}' not empty"
            )));
        }
        Ok(self.remove_queue(&vhost_name, name))
    }

    /// Removes a queue with its bindings; its consumers get a broker-initiated cancel.
    /// Returns how many ready messages it held.
    pub(crate) fn remove_queue(&mut self, vhost_name: &str, name: &str) -> u32 {
        let Some(vhost) = self.vhosts.get_mut(vhost_name) else {
            return 0;
        };
        let Some(mut queue) = vhost.queues.remove(name) else {
            return 0;
        };
        let exchanges = vhost.exchanges.len();
        vhost.remove_bindings_to(&Destination::Queue(queue.name.clone()));
        // Auto-delete exchanges may have gone with the bindings.
        let cascaded = vhost.exchanges.len() != exchanges;
        // Release its messages, ready and unacked alike; an ack arriving later for an
        // unacked one then has nothing left to release. On failure the references stay;
        // recovery releases them (their queue is gone).
        let (count, _) = queue.purge(&*self.store);
        if let Some(id) = queue.store_id {
            let mut stored = Vec::new();
            for connection in self.connections.values_mut() {
                for channel in connection.channels.values_mut() {
                    for unacked in channel
                        .unacked
                        .values_mut()
                        .filter(|u| u.queue == queue.name && u.incarnation == queue.incarnation)
                    {
                        stored.extend(unacked.message.stored.take());
                    }
                }
            }
            // On failure the references stay; recovery releases them (their queue is gone).
            let _ = self.store.ack(id, &stored);
        }
        if let Some(id) = queue.dedup.as_ref().and_then(|d| d.store_id) {
            let _ = self.store.release_from(id, 0);
        }
        // Only a change to what is saved needs a save (every queue has a store id, and
        // exclusive queues come and go with every RPC client).
        if queue.persists_messages() || cascaded {
            let _ = self.save_definitions();
        } else if let Some(id) = queue.store_id {
            // Everything it referenced was released above; the id can serve again.
            self.free_transient_ids.push(id);
        }
        for consumer in &queue.consumers {
            let Some(connection) = self.connections.get_mut(&consumer.channel.connection) else {
                continue;
            };
            if let Some(channel) = connection.channels.get_mut(&consumer.channel.channel) {
                channel.consumers.remove(&consumer.tag);
            }
            connection.outlet.send(Outbound::Cancel {
                channel: consumer.channel.channel,
                consumer_tag: consumer.tag.clone(),
            });
        }
        count
    }

    /// Detaches a consumer from its queue, deleting the queue if it is auto-delete and this
    /// was its last consumer.
    pub(crate) fn detach_consumer(
        &mut self,
        vhost: &str,
        queue: &str,
        channel: ChannelKey,
        tag: &str,
    ) {
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) else {
            return;
        };
        q.remove_consumer(channel, tag);
        if q.should_auto_delete() {
            self.remove_queue(vhost, queue);
        }
    }
}

fn check_binding_ends(
    vhost: &crate::vhost::VHost,
    connection: ConnectionId,
    source: &str,
    destination: &Destination,
) -> Result<()> {
    let default_exchange_refused = || {
        BrokerError::AccessRefused(format!(
            "operation not permitted on the default exchange (vhost '{}')",
            vhost.name
        ))
    };
    if source.is_empty() {
        return Err(default_exchange_refused());
    }
    match destination {
        Destination::Queue(name) => {
            let queue = vhost.queue(name)?;
            if !queue.accessible_by(connection) {
                return Err(BrokerError::locked(name, &vhost.name));
            }
        }
        Destination::Exchange(name) => {
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            vhost.exchange(name)?;
        }
    }
    vhost.exchange(source)?;
    Ok(())
}

fn check_queue_equivalence(queue: &Queue, spec: &QueueSpec, vhost: &str) -> Result<()> {
    let flag = |arg: &str, now: bool, got: bool| {
        if now == got {
            Ok(())
        } else {
            Err(inequivalent(
                arg,
                "queue",
                &queue.name,
                vhost,
                format!("'{got}'"),
                format!("'{now}'"),
            ))
        }
    };
    flag("durable", queue.durable, spec.durable)?;
    flag("exclusive", queue.exclusive_owner.is_some(), spec.exclusive)?;
    flag("auto_delete", queue.auto_delete, spec.auto_delete)?;
    check_arguments(
        EQUIVALENCE_ARGUMENTS,
        &queue.arguments,
        &spec.arguments,
        "queue",
        &queue.name,
        vhost,
    )
}
