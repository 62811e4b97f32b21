//! What the broker keeps across restarts: durable definitions (as one encoded field table
//! saved through the store) and persistent messages on durable queues (in the journal).
//!
//! Persisted: durable exchanges other than the predeclared ones, durable non-exclusive
//! queues (exclusive queues die with their connection, as in RabbitMQ), and bindings whose
//! source and destination are both persisted or predeclared.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use postroom_amqp::wire::Reader;
use postroom_amqp::{FieldTable, FieldValue, ShortStr};
use postroom_store::{QueueId, Recovered};

use crate::broker::Broker;
use crate::dedup::{DedupPolicy, DedupWindow};
use crate::error::{BrokerError, Result};
use crate::exchange::delayed::{self, Delayed};
use crate::exchange::{Binding, Destination, Exchange};

use crate::queue::Queue;
use crate::vhost::{PREDECLARED_EXCHANGES, VHost};

/// Counts of what a restart brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Durable exchanges.
    pub exchanges: usize,
    /// Durable queues.
    pub queues: usize,
    /// Bindings.
    pub bindings: usize,
    /// Queue entries (a message on two queues counts twice).
    pub messages: usize,
}

fn is_predeclared(name: &str) -> bool {
    name.is_empty() || PREDECLARED_EXCHANGES.iter().any(|(n, _)| *n == name)
}

fn persisted_exchange(vhost: &VHost, name: &str) -> bool {
    is_predeclared(name) || vhost.exchanges.get(name).is_some_and(|x| x.durable)
}

fn persisted_queue(queue: &Queue) -> bool {
    queue.durable && queue.exclusive_owner.is_none()
}

/// Whether a binding from `source` to `destination` is saved with the definitions.
pub(crate) fn binding_is_persisted(vhost: &VHost, source: &str, destination: &Destination) -> bool {
    persisted_exchange(vhost, source)
        && match destination {
            Destination::Queue(q) => vhost.queues.get(q).is_some_and(persisted_queue),
            Destination::Exchange(e) => persisted_exchange(vhost, e),
        }
}

fn table(entries: Vec<(&str, FieldValue)>) -> FieldValue {
    FieldValue::Table(entries.into_iter().map(|(k, v)| (ShortStr::from(k), v)).collect())
}

fn text(value: &str) -> FieldValue {
    FieldValue::string(value)
}

/// The store id of a deduplication window, as saved (-1: none).
fn dedup_id(window: Option<&DedupWindow>) -> FieldValue {
    FieldValue::I64(window.and_then(|w| w.store_id).map_or(-1, i64::from))
}

impl Broker {
    /// Encodes every persisted definition.
    pub fn encode_definitions(&self) -> Bytes {
        let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
        for vhost in self.vhosts.values() {
            for x in vhost.exchanges.values() {
                if x.durable && !is_predeclared(&x.name) {
                    exchanges.push(table(vec![
                        ("vhost", text(&vhost.name)),
                        ("name", text(&x.name)),
                        ("type", text(x.type_name())),
                        ("auto_delete", x.auto_delete.into()),
                        ("internal", x.internal.into()),
                        ("arguments", FieldValue::Table(x.arguments.clone())),
                        (
                            "delay_id",
                            FieldValue::I64(x.delayed.as_ref().map_or(-1, |d| d.store_id.into())),
                        ),
                        ("dedup_id", dedup_id(x.dedup.as_ref())),
                    ]));
                }
                if !persisted_exchange(vhost, &x.name) {
                    continue;
                }
                for b in &x.bindings {
                    let (kind, destination) = match &b.destination {
                        Destination::Queue(q) => {
                            if !vhost.queues.get(q).is_some_and(persisted_queue) {
                                continue;
                            }
                            ("queue", q)
                        }
                        Destination::Exchange(e) => {
                            if !persisted_exchange(vhost, e) {
                                continue;
                            }
                            ("exchange", e)
                        }
                    };
                    bindings.push(table(vec![
                        ("vhost", text(&vhost.name)),
                        ("source", text(&x.name)),
                        ("destination", text(destination)),
                        ("destination_type", text(kind)),
                        ("routing_key", text(&b.routing_key)),
                        ("arguments", FieldValue::Table(b.arguments.clone())),
                    ]));
                }
            }
            for q in vhost.queues.values().filter(|q| persisted_queue(q)) {
                queues.push(table(vec![
                    ("vhost", text(&vhost.name)),
                    ("name", text(&q.name)),
                    ("id", FieldValue::I64(q.store_id.map_or(-1, i64::from))),
                    ("dedup_id", dedup_id(q.dedup.as_ref())),
                    ("auto_delete", q.auto_delete.into()),
                    ("arguments", FieldValue::Table(q.arguments.clone())),
                ]));
            }
        }
        let mut root = FieldTable::new();
        root.insert("version", FieldValue::I64(1));
        root.insert("next_queue_id", FieldValue::I64(self.next_queue_id.into()));
        root.insert("exchanges", FieldValue::Array(exchanges));
        root.insert("queues", FieldValue::Array(queues));
        root.insert("bindings", FieldValue::Array(bindings));
        let mut buf = BytesMut::new();
        root.encode_into(&mut buf);
        buf.freeze()
    }

    /// Saves the definitions through the store (durable when it returns).
    ///
    /// # Errors
    /// `StoreFailed` if the store cannot write them.
    pub(crate) fn save_definitions(&self) -> Result<()> {
        self.store
            .save_definitions(&self.encode_definitions())
            .map_err(|e| BrokerError::StoreFailed(e.to_string()))
    }

    /// Rebuilds durable definitions and messages from what the store recovered. Call once,
    /// on a fresh broker, before any connection.
    ///
    /// # Errors
    /// `StoreFailed` if the saved definitions or a message cannot be decoded.
    pub fn restore(&mut self, mut recovered: Recovered) -> Result<RestoreSummary> {
        let now = self.clock.now_ms();
        let mut summary = RestoreSummary::default();
        let bad = |what: &str| BrokerError::StoreFailed(format!("cannot decode saved {what}"));
        let mut by_id: HashMap<QueueId, (ShortStr, ShortStr)> = HashMap::new();
        if let Some(data) = &recovered.definitions {
            let root =
                FieldTable::decode(&mut Reader::new(data)).map_err(|_| bad("definitions"))?;
            let list = |key: &str| {
                root.get(key).and_then(FieldValue::as_array).unwrap_or_default().to_vec()
            };
            let get = |t: &FieldTable, k: &str| {
                t.get(k).and_then(FieldValue::as_str).unwrap_or_default().to_owned()
            };
            let flag =
                |t: &FieldTable, k: &str| t.get(k).and_then(FieldValue::as_bool).unwrap_or(false);
            let args = |t: &FieldTable| {
                t.get("arguments").and_then(FieldValue::as_table).cloned().unwrap_or_default()
            };
            if let Some(next) = root.get("next_queue_id").and_then(FieldValue::as_int) {
                self.next_queue_id = u32::try_from(next).unwrap_or(u32::MAX);
            }
            for x in list("exchanges") {
                let t = x.as_table().ok_or_else(|| bad("exchange"))?;
                let declared = get(t, "type");
                let vhost_name = get(t, "vhost");
                let what = format!("exchange '{}' in vhost '{vhost_name}'", get(t, "name"));
                let (routing, dedup) = DedupPolicy::for_exchange(&declared, &args(t), &what)
                    .map_err(|_| bad("exchange arguments"))?;
                let (kind, delayed) = delayed::parse_declaration(routing, &args(t))
                    .map_err(|_| bad("exchange type"))?;
                let id_of = |key: &str| {
                    t.get(key).and_then(FieldValue::as_int).and_then(|i| QueueId::try_from(i).ok())
                };
                let delay_id = id_of("delay_id");
                let dedup_id = id_of("dedup_id");
                let mut exchange = Exchange::new(
                    get(t, "name").into(),
                    kind,
                    true,
                    flag(t, "auto_delete"),
                    flag(t, "internal"),
                    args(t),
                );
                exchange.dedup_type = declared == crate::dedup::DEDUP_EXCHANGE_TYPE;
                if let (Some(plugin_type), Some(id)) = (delayed, delay_id) {
                    // Held messages come back without their due times: the tick reads
                    // them back in batches to learn them (arrival + `x-delay`).
                    let refs = recovered.queues.remove(&id).unwrap_or_default();
                    let incarnation = self.unique_id();
                    exchange.delayed = Some(Delayed::recovered(plugin_type, id, incarnation, refs));
                    self.timed_exchanges
                        .insert((vhost_name.as_str().into(), exchange.name.clone()));
                }
                if let (Some(policy), Some(id)) = (dedup, dedup_id) {
                    exchange.dedup = Some(self.restore_window(policy, id, &mut recovered, now));
                }
                let vhost = self.vhost_entry(&vhost_name);
                vhost.exchanges.insert(exchange.name.clone(), exchange);
                summary.exchanges += 1;
            }
            for q in list("queues") {
                let t = q.as_table().ok_or_else(|| bad("queue"))?;
                let vhost_name = get(t, "vhost");
                let mut queue =
                    Queue::new(get(t, "name").into(), true, None, flag(t, "auto_delete"), args(t));
                queue.incarnation = self.unique_id();
                let id = t
                    .get("id")
                    .and_then(FieldValue::as_int)
                    .and_then(|i| QueueId::try_from(i).ok());
                queue.store_id = id;
                let dedup_id = t
                    .get("dedup_id")
                    .and_then(FieldValue::as_int)
                    .and_then(|i| QueueId::try_from(i).ok());
                if let (Some(policy), Some(dedup_id)) = (queue.policy.dedup, dedup_id) {
                    queue.dedup = Some(self.restore_window(policy, dedup_id, &mut recovered, now));
                }
                if let Some(id) = id {
                    by_id.insert(id, (vhost_name.as_str().into(), queue.name.clone()));
                }
                queue.ready.share_gauge(&self.memory);
                self.vhost_entry(&vhost_name).queues.insert(queue.name.clone(), queue);
                summary.queues += 1;
            }
            for b in list("bindings") {
                let t = b.as_table().ok_or_else(|| bad("binding"))?;
                let vhost = self.vhost_entry(&get(t, "vhost"));
                let destination = match get(t, "destination_type").as_str() {
                    "queue" => Destination::Queue(get(t, "destination").into()),
                    _ => Destination::Exchange(get(t, "destination").into()),
                };
                if let Some(source) = vhost.exchanges.get_mut(get(t, "source").as_str()) {
                    let binding = Binding::new(
                        source.kind,
                        destination,
                        get(t, "routing_key").into(),
                        args(t),
                    )?;
                    source.bindings.push(binding);
                    summary.bindings += 1;
                }
            }
        }
        // Recovered messages wait in the store: queues read them back as they drain, so a
        // restart with a large backlog does not hold it in memory.
        for (id, refs) in &recovered.queues {
            let queue = by_id.get(id).and_then(|(vhost, name)| {
                self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(name))
            });
            let Some(queue) = queue else {
                // Its queue was deleted but the release did not reach the disk: release now.
                let _ = self.store.release_from(*id, 0);
                continue;
            };
            if let Some(first) = refs.iter().next() {
                queue.ready.push_cold_run(first, refs.len());
                summary.messages += refs.len() as usize;
            }
        }
        for (id, (vhost, name)) in &by_id {
            if let Some(queue) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(name)) {
                queue.ready.set_delivered_before(recovered.delivered.get(id).copied());
                if let Some(states) = recovered.states.remove(id) {
                    queue.ready.set_recovered_states(states);
                }
                // `x-expires` counts from the restart, as in RabbitMQ.
                queue.last_used = now;
                if queue.needs_timer() {
                    self.timed.insert((vhost.clone(), name.clone()));
                }
            }
        }
        Ok(summary)
    }

    /// A durable deduplication window as its records in the store left it.
    fn restore_window(
        &self,
        policy: DedupPolicy,
        id: QueueId,
        recovered: &mut Recovered,
        now: u64,
    ) -> DedupWindow {
        // Bounded by the window's size: its expired and pushed-out keys were acked.
        let records = match recovered.queues.remove(&id) {
            Some(_) => self.store.read(id, 0, usize::MAX, usize::MAX).unwrap_or_default(),
            None => Vec::new(),
        };
        DedupWindow::restore(policy, id, records, now, &*self.store)
    }

    fn vhost_entry(&mut self, name: &str) -> &mut VHost {
        let name = if name.is_empty() { "/" } else { name };
        self.vhosts.entry(name.into()).or_insert_with(|| VHost::new(name))
    }
}
