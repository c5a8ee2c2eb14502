//! The clients held in this process: their subscriptions, their queues, and the channel index
//! that fans a message out to them. The memory engine is this plus expiry; the native redis
//! engine keeps the clients it owns here and fans out what its inbox brings.

use super::{SharedEnvelope, SubscribeOutcome};
use dashmap::DashMap;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// Removes repeated ids. Every index entry of a client shares the one `Arc` of its id, so the
/// allocation's address identifies it: no string hashing on the delivery path.
pub(crate) fn dedup_ids(ids: &mut Vec<Arc<str>>) {
    ids.sort_unstable_by_key(|id| Arc::as_ptr(id).cast::<u8>() as usize);
    ids.dedup_by(|a, b| Arc::ptr_eq(a, b));
}

/// One client held here.
struct LocalClient {
    last_seen: Instant,
    subscriptions: HashSet<Arc<str>>,
    queue: VecDeque<SharedEnvelope>,
    /// Encoded size of everything in `queue`.
    queued_bytes: usize,
    /// While true, messages are queued but not handed out (a moved session waits for what its
    /// previous node still held, which must be delivered first).
    held: bool,
    /// The native layout's session epoch (bumped by every move); `0` while a move to this
    /// node is under way and its subscriptions have not arrived yet.
    epoch: u64,
}

impl LocalClient {
    fn new(held: bool, epoch: u64) -> Self {
        Self {
            last_seen: Instant::now(),
            subscriptions: HashSet::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            held,
            epoch,
        }
    }
}

/// What [`LocalClients::remove`] took away with a client.
pub(crate) struct Removed {
    /// The client's id, shared.
    pub(crate) id: Arc<str>,
    /// The channels it was subscribed to.
    pub(crate) subscriptions: Vec<Arc<str>>,
    /// Messages it had not been handed yet, oldest first.
    pub(crate) queue: Vec<SharedEnvelope>,
}

/// Clients, subscriptions and queues of one process, with a channel → clients index.
pub(crate) struct LocalClients {
    clients: DashMap<Arc<str>, LocalClient>,
    channels: DashMap<Arc<str>, HashSet<Arc<str>>>,
    /// A client whose queue holds more than this many bytes is reported as a slow consumer.
    max_queue_bytes: usize,
}

impl LocalClients {
    /// An empty set; `max_queue_bytes == 0` leaves queues unbounded.
    pub(crate) fn new(max_queue_bytes: usize) -> Self {
        Self {
            clients: DashMap::new(),
            channels: DashMap::new(),
            max_queue_bytes: if max_queue_bytes == 0 { usize::MAX } else { max_queue_bytes },
        }
    }

    /// Adds a new client (epoch 1); false when the id is taken.
    pub(crate) fn insert(&self, id: &str) -> bool {
        self.insert_with(id, LocalClient::new(false, 1))
    }

    /// Adds a client that is moving here: held, epoch `0` until [`LocalClients::activate`].
    pub(crate) fn insert_moving(&self, id: &str) -> bool {
        self.insert_with(id, LocalClient::new(true, 0))
    }

    fn insert_with(&self, id: &str, client: LocalClient) -> bool {
        match self.clients.entry(Arc::from(id)) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(client);
                true
            }
            dashmap::Entry::Occupied(_) => false,
        }
    }

    /// The client's epoch, if it is held here (`0`: its move is under way).
    pub(crate) fn epoch(&self, id: &str) -> Option<u64> {
        self.clients.get(id).map(|e| e.epoch)
    }

    /// Completes a move here: sets the epoch and the subscriptions the session brought.
    /// False if the client is not here or is no longer waiting for them.
    pub(crate) fn activate(&self, id: &str, epoch: u64, subscriptions: &[String]) -> bool {
        match self.clients.get_mut(id) {
            Some(mut entry) if entry.epoch == 0 => entry.epoch = epoch,
            _ => return false,
        }
        for channel in subscriptions {
            self.subscribe(id, channel, usize::MAX);
        }
        true
    }

    /// True if the client is held here.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.clients.contains_key(id)
    }

    /// Number of clients held here.
    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    /// Every client id held here.
    pub(crate) fn ids(&self) -> Vec<Arc<str>> {
        self.clients.iter().map(|e| e.key().clone()).collect()
    }

    /// The client's subscriptions, if it is held here.
    pub(crate) fn subscriptions(&self, id: &str) -> Option<Vec<Arc<str>>> {
        self.clients.get(id).map(|e| e.subscriptions.iter().cloned().collect())
    }

    /// Marks the client as seen now.
    pub(crate) fn touch(&self, id: &str) {
        if let Some(mut e) = self.clients.get_mut(id) {
            e.last_seen = Instant::now();
        }
    }

    /// Clients not seen since `cutoff`.
    pub(crate) fn unseen_since(&self, cutoff: Instant) -> Vec<Arc<str>> {
        self.clients.iter().filter(|e| e.last_seen < cutoff).map(|e| e.key().clone()).collect()
    }

    /// True if the client is held here and was not seen since `cutoff`.
    pub(crate) fn is_unseen_since(&self, id: &str, cutoff: Instant) -> bool {
        self.clients.get(id).is_some_and(|e| e.last_seen < cutoff)
    }

    /// Removes the client and its subscriptions from the index.
    pub(crate) fn remove(&self, id: &str) -> Option<Removed> {
        let (id, entry) = self.clients.remove(id)?;
        for channel in &entry.subscriptions {
            self.remove_from_channel(channel, &id);
        }
        Some(Removed { id, subscriptions: entry.subscriptions.into_iter().collect(), queue: entry.queue.into() })
    }

    fn remove_from_channel(&self, channel: &str, id: &str) {
        let now_empty = match self.channels.get_mut(channel) {
            Some(mut set) => {
                set.remove(id);
                set.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.channels.remove_if(channel, |_, set| set.is_empty());
        }
    }

    /// Subscribes unless the client holds `max` subscriptions already. A client not held
    /// here counts as [`SubscribeOutcome::Existing`] (nothing to do).
    pub(crate) fn subscribe(&self, id: &str, channel: &str, max: usize) -> SubscribeOutcome {
        // One allocation of the name per channel, shared by every subscriber and the index,
        // rather than one per subscription (looked up before the client's entry is locked).
        let known: Option<Arc<str>> = self.channels.get(channel).map(|set| set.key().clone());
        let (id, channel): (Arc<str>, Arc<str>) = {
            let Some(mut entry) = self.clients.get_mut(id) else {
                return SubscribeOutcome::Existing;
            };
            if entry.subscriptions.contains(channel) {
                return SubscribeOutcome::Existing;
            }
            if entry.subscriptions.len() >= max {
                return SubscribeOutcome::LimitReached;
            }
            let id = entry.key().clone();
            let channel: Arc<str> = known.unwrap_or_else(|| channel.into());
            entry.subscriptions.insert(channel.clone());
            (id, channel)
        };
        self.channels.entry(channel).or_default().insert(id);
        SubscribeOutcome::Added
    }

    /// Unsubscribes; true if the client held that subscription.
    pub(crate) fn unsubscribe(&self, id: &str, channel: &str) -> bool {
        let removed = match self.clients.get_mut(id) {
            Some(mut entry) => entry.subscriptions.remove(channel),
            None => false,
        };
        if removed {
            self.remove_from_channel(channel, id);
        }
        removed
    }

    /// Queues the message for every client subscribed to one of `patterns`, once each.
    /// Calls `waiting` for each client that has messages to hand out, and returns the clients
    /// whose queue passed the bound, with its size (the caller destroys them).
    pub(crate) fn fan_out(
        &self,
        envelope: &SharedEnvelope,
        patterns: &[String],
        mut waiting: impl FnMut(&Arc<str>),
    ) -> Vec<(Arc<str>, usize)> {
        let mut recipients: Vec<Arc<str>> = Vec::new();
        let mut matched = 0;
        for pattern in patterns {
            if let Some(set) = self.channels.get(pattern.as_str())
                && !set.is_empty()
            {
                matched += 1;
                recipients.extend(set.iter().cloned());
            }
        }
        if matched > 1 {
            // A client subscribed to several matching patterns gets the message once.
            dedup_ids(&mut recipients);
        }
        let size = envelope.encoded.len();
        let mut slow = Vec::new();
        for id in recipients {
            let ready = match self.clients.get_mut(&*id) {
                Some(mut entry) => {
                    entry.queue.push_back(envelope.clone());
                    entry.queued_bytes = entry.queued_bytes.saturating_add(size);
                    if entry.queued_bytes > self.max_queue_bytes {
                        slow.push((id.clone(), entry.queued_bytes));
                    }
                    !entry.held
                }
                None => false,
            };
            if ready {
                waiting(&id);
            }
        }
        slow
    }

    /// Removes and returns the client's queue, oldest first (nothing while it is held).
    pub(crate) fn take(&self, id: &str) -> Vec<SharedEnvelope> {
        match self.clients.get_mut(id) {
            Some(mut entry) if !entry.held => {
                entry.queued_bytes = 0;
                entry.queue.drain(..).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Puts messages back at the head of the client's queue; false if it is not held here.
    pub(crate) fn requeue(&self, id: &str, envelopes: Vec<SharedEnvelope>) -> bool {
        match self.clients.get_mut(id) {
            Some(mut entry) => {
                for env in envelopes.into_iter().rev() {
                    entry.queued_bytes = entry.queued_bytes.saturating_add(env.encoded.len());
                    entry.queue.push_front(env);
                }
                true
            }
            None => false,
        }
    }

    /// Ends the hold of a client that moved here at `epoch`: `earlier` (what its previous
    /// node held) goes ahead of what was queued here meanwhile. False if the client is not
    /// here at that epoch, or not held.
    pub(crate) fn release(&self, id: &str, epoch: u64, earlier: Vec<SharedEnvelope>) -> bool {
        match self.clients.get_mut(id) {
            Some(mut entry) if entry.held && entry.epoch == epoch => {
                for env in earlier.into_iter().rev() {
                    entry.queued_bytes = entry.queued_bytes.saturating_add(env.encoded.len());
                    entry.queue.push_front(env);
                }
                entry.held = false;
                true
            }
            _ => false,
        }
    }

    /// True while the client's messages are held (see [`LocalClients::release`]).
    pub(crate) fn is_held(&self, id: &str) -> bool {
        self.clients.get(id).is_some_and(|e| e.held)
    }

    /// Messages queued for every client held here.
    pub(crate) fn queued_messages(&self) -> u64 {
        self.clients.iter().map(|e| e.queue.len() as u64).sum()
    }
}
