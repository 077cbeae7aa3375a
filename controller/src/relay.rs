//! Stage: agent_link → **relay** → store + user WebSocket.
//!
//! The relay is the only road from a sandbox to a user. It persists events in
//! the order the agent sent them (batched: one store transaction per batch),
//! THEN fans them out to live watchers through the [`Hub`], THEN lets the link
//! acknowledge them to the agent. So an acknowledged event is always durable,
//! and a watcher never sees an event the store does not have.
//!
//! The [`Hub`] is deliberately lossy for watchers: each execution has one
//! bounded `broadcast` channel. A watcher that falls behind gets
//! `RecvError::Lagged`; the API then drops it with a reason and it resumes from
//! the store with `after=SEQ`. A slow watcher never slows the agent or other
//! watchers, because `broadcast::Sender::send` never waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Default number of events a watcher may fall behind before it is dropped.
pub const DEFAULT_WATCHER_BUFFER: usize = 1024;

/// Live fan-out of execution events to watchers, one channel per execution.
///
/// How a watcher gets a gap-free, duplicate-free stream:
/// 1. `subscribe(id)` FIRST,
/// 2. then replay from the store (`events_after(id, after)`), remembering the
///    last seq replayed,
/// 3. then read the receiver, skipping events with `seq <= last replayed`.
///
/// The launcher stores the final status before it calls [`Hub::finish`], so a
/// watcher that subscribed and then read a non-final status from the store is
/// guaranteed to see the channel close (`RecvError::Closed`) after the last
/// event. A watcher that reads a final status is complete after the replay.
#[derive(Clone)]
pub struct Hub<E> {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<E>>>>,
    watcher_buffer: usize,
}

impl<E: Clone + Send + 'static> Hub<E> {
    /// A hub whose watchers may fall `watcher_buffer` events behind.
    pub fn new(watcher_buffer: usize) -> Self {
        Self {
            channels: Arc::new(Mutex::new(HashMap::new())),
            watcher_buffer: watcher_buffer.max(1),
        }
    }

    /// Receive the events published for `execution_id` from now on.
    pub fn subscribe(&self, execution_id: &str) -> broadcast::Receiver<E> {
        let mut channels = self.channels.lock().expect("hub lock is never poisoned");
        // Forget channels nobody listens to, so subscribing to finished or
        // unknown executions cannot grow the map without bound.
        channels.retain(|_, sender| sender.receiver_count() > 0);
        channels
            .entry(execution_id.to_owned())
            .or_insert_with(|| broadcast::channel(self.watcher_buffer).0)
            .subscribe()
    }

    /// Send one (already persisted) event to the current watchers. Never waits.
    pub fn publish(&self, execution_id: &str, event: E) {
        let mut channels = self.channels.lock().expect("hub lock is never poisoned");
        if let Some(sender) = channels.get(execution_id) {
            if sender.receiver_count() == 0 {
                channels.remove(execution_id);
            } else {
                // An error only means every receiver went away meanwhile.
                let _ = sender.send(event);
            }
        }
    }

    /// The execution will publish nothing more: watchers drain what is
    /// buffered and then see `RecvError::Closed`.
    pub fn finish(&self, execution_id: &str) {
        self.channels
            .lock()
            .expect("hub lock is never poisoned")
            .remove(execution_id);
    }

    /// Number of executions with at least one channel (for tests and metrics).
    pub fn n_channels(&self) -> usize {
        self.channels
            .lock()
            .expect("hub lock is never poisoned")
            .len()
    }
}

impl<E: Clone + Send + 'static> Default for Hub<E> {
    fn default() -> Self {
        Self::new(DEFAULT_WATCHER_BUFFER)
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
