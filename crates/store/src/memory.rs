//! [`MemoryStore`]: the store contract without files. Everything is "durable" at once;
//! nothing survives the process. Used for tests of the contract and for brokers run with
//! no data directory.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::ranges::RangeSet;
use crate::{DeliveryState, Lsn, Progress, QueueId, Recovered, Seq, Store};

#[derive(Default)]
struct State {
    next_seq: Seq,
    next_lsn: Lsn,
    messages: BTreeMap<Seq, (Vec<QueueId>, Bytes)>,
    definitions: Option<Bytes>,
    delivered: std::collections::HashMap<QueueId, Seq>,
    /// Delivery states of referenced messages, by queue and message.
    states: BTreeMap<(QueueId, Seq), DeliveryState>,
    /// Spilled (transient) messages, which a restart does not bring back.
    spilled: std::collections::HashSet<Seq>,
    closed: bool,
    /// Whether `take_recovered` ran since the store was (re)opened.
    taken: bool,
}

/// An in-memory store.
pub struct MemoryStore {
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        let state = State { next_seq: 1, next_lsn: 1, ..State::default() };
        MemoryStore { state: Mutex::new(state), progress: watch::channel(Progress::default()).0 }
    }

    /// What a restart of a broker on this store would recover (the store stays usable).
    pub fn snapshot(&self) -> Recovered {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut queues: std::collections::HashMap<QueueId, RangeSet> = Default::default();
        for (seq, (refs, _)) in st.messages.iter().filter(|(seq, _)| !st.spilled.contains(seq)) {
            for queue in refs {
                queues.entry(*queue).or_default().insert(*seq);
            }
        }
        let mut states: std::collections::HashMap<QueueId, BTreeMap<Seq, DeliveryState>> =
            Default::default();
        for (&(queue, seq), state) in &st.states {
            if !st.spilled.contains(&seq) {
                states.entry(queue).or_default().insert(seq, *state);
            }
        }
        Recovered {
            definitions: st.definitions.clone(),
            queues,
            delivered: st.delivered.clone(),
            states,
        }
    }

    /// Reopens after a simulated clean restart: appends work again and
    /// `take_recovered` returns what the store holds.
    pub fn reopen(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.closed = false;
        st.taken = false;
    }
}

impl Store for MemoryStore {
    fn take_recovered(&self) -> Recovered {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::replace(&mut st.taken, true) {
            return Recovered::default();
        }
        drop(st);
        self.snapshot()
    }

    fn append(&self, queues: &[QueueId], payload: &[u8]) -> Result<(Seq, Lsn), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(StoreError::Closed);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        st.messages.insert(seq, (queues.to_vec(), Bytes::copy_from_slice(payload)));
        drop(st);
        self.progress.send_modify(|p| p.durable = lsn);
        Ok((seq, lsn))
    }

    fn spill(&self, queues: &[QueueId], payload: &[u8]) -> Result<Seq, StoreError> {
        let (seq, _) = self.append(queues, payload)?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).spilled.insert(seq);
        Ok(seq)
    }

    fn release_from(&self, queue: QueueId, from: Seq) -> Result<u64, StoreError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(StoreError::Closed);
        }
        let held: Vec<Seq> = st
            .messages
            .range(from..)
            .filter(|(_, (q, _))| q.contains(&queue))
            .map(|(s, _)| *s)
            .collect();
        drop(st);
        self.ack(queue, &held)?;
        Ok(held.len() as u64)
    }

    fn ack(&self, queue: QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(StoreError::Closed);
        }
        for seq in seqs {
            st.states.remove(&(queue, *seq));
            if let Some((queues, _)) = st.messages.get_mut(seq) {
                if let Some(i) = queues.iter().position(|q| *q == queue) {
                    queues.remove(i);
                }
                if queues.is_empty() {
                    st.messages.remove(seq);
                    st.spilled.remove(seq);
                }
            }
        }
        Ok(())
    }

    fn read(
        &self,
        queue: QueueId,
        from: Seq,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, (queues, payload)) in st.messages.range(from..) {
            if out.len() >= max_messages || bytes >= max_bytes {
                break;
            }
            if queues.contains(&queue) {
                bytes += payload.len();
                out.push((*seq, payload.clone()));
            }
        }
        Ok(out)
    }

    fn delivered(&self, queue: QueueId, seq: Seq) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mark = st.delivered.entry(queue).or_insert(seq);
        *mark = (*mark).max(seq);
    }

    fn set_state(&self, queue: QueueId, seq: Seq, state: DeliveryState) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.messages.get(&seq).is_some_and(|(queues, _)| queues.contains(&queue)) {
            st.states.insert((queue, seq), state);
        }
    }

    fn save_definitions(&self, data: &[u8]) -> Result<(), StoreError> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).definitions =
            Some(Bytes::copy_from_slice(data));
        Ok(())
    }

    fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn close(&self) -> Result<(), StoreError> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        Ok(())
    }
}
