//! Stage: agent_link → **relay** → store + user WebSocket.
//!
//! The relay is the only road from a sandbox to a user. It persists events in
//! the order the agent sent them (batched: one store transaction per batch),
//! THEN fans them out to live watchers through the [`Hub`], THEN lets the link
//! acknowledge them to the agent. So an acknowledged event is always durable,
//! and a watcher never sees an event the store does not have. The agent
//! position being acknowledged is stored in the same transaction as the
//! events ([`Relay::record_and_ack`]), so a crash cannot keep the events and
//! lose the position (the agent would re-send them and they would be stored
//! twice, under new seqs).
//!
//! The [`Hub`] is deliberately lossy for watchers: each execution has one
//! bounded `broadcast` channel. A watcher that falls behind gets
//! `RecvError::Lagged`; the API then drops it with a reason and it resumes from
//! the store with `after=SEQ`. A slow watcher never slows the agent or other
//! watchers, because `broadcast::Sender::send` never waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use protocol::{ControllerEvent, EventBody, ExecutionEvent};
use tokio::sync::broadcast;

use crate::store::{Store, StoreError};

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

/// Slack above the class output cap before the controller's backstop cuts
/// output: the agent enforces the cap itself and reports its own truncation
/// event, which must still get through.
pub const OUTPUT_CAP_SLACK_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("persist events of execution {execution_id}")]
    Persist {
        execution_id: String,
        #[source]
        source: StoreError,
    },
}

/// The durable, ordered writer of one execution's events.
///
/// Seqs are assigned here (1, 2, 3, ... without gaps, agent and controller
/// events in one sequence); the agent's own wire seqs never reach users.
pub struct Relay {
    store: Store,
    hub: Hub<ExecutionEvent>,
    execution_id: String,
    next_seq: u64,
    output_cap_bytes: u64,
    output_bytes: u64,
    is_output_truncated: bool,
    /// Live model text counts against its own cap of the same size.
    model_output_bytes: u64,
    is_model_output_truncated: bool,
}

impl Relay {
    /// A writer that continues after the events already stored.
    pub async fn open(
        store: Store,
        hub: Hub<ExecutionEvent>,
        execution_id: &str,
        output_cap_bytes: u64,
    ) -> Result<Relay, RelayError> {
        let last_seq =
            store
                .last_event_seq(execution_id)
                .await
                .map_err(|source| RelayError::Persist {
                    execution_id: execution_id.to_owned(),
                    source,
                })?;
        Ok(Relay {
            store,
            hub,
            execution_id: execution_id.to_owned(),
            next_seq: last_seq + 1,
            output_cap_bytes,
            output_bytes: 0,
            is_output_truncated: false,
            model_output_bytes: 0,
            is_model_output_truncated: false,
        })
    }

    /// Persist `bodies` in order in one transaction, then publish them.
    /// Returns how many events were stored (output over the cap is dropped,
    /// replaced once by an `output_truncated` event).
    pub async fn record(&mut self, bodies: Vec<EventBody>) -> Result<usize, RelayError> {
        self.record_and_ack(bodies, None).await
    }

    /// [`Relay::record`], and with `acked_seq: Some`, the agent position
    /// acknowledged for these events in the SAME transaction (the position
    /// only moves forward). The link may send the ack once this returns.
    /// With no event to store, the position alone is recorded.
    pub async fn record_and_ack(
        &mut self,
        bodies: Vec<EventBody>,
        acked_seq: Option<u64>,
    ) -> Result<usize, RelayError> {
        let at_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        let mut events = Vec::with_capacity(bodies.len());
        for body in bodies {
            let Some(body) = self.apply_output_cap(body) else {
                continue;
            };
            events.push(ExecutionEvent {
                seq: self.next_seq + events.len() as u64,
                at_ms,
                body,
            });
        }
        if events.is_empty() && acked_seq.is_none() {
            return Ok(0);
        }
        self.store
            .append_events(&self.execution_id, &events, acked_seq)
            .await
            .map_err(|source| RelayError::Persist {
                execution_id: self.execution_id.clone(),
                source,
            })?;
        self.next_seq += events.len() as u64;
        let n_events = events.len();
        for event in events {
            self.hub.publish(&self.execution_id, event);
        }
        Ok(n_events)
    }

    /// Persist and publish one controller event.
    pub async fn record_controller(&mut self, event: ControllerEvent) -> Result<(), RelayError> {
        self.record(vec![EventBody::Controller(event)])
            .await
            .map(|_| ())
    }

    /// The controller's backstop for the per-execution output cap, and the
    /// cap itself for live model text (which only the controller sees):
    /// past it, `model_output` events are dropped after one warning; the
    /// answers still reach their steps.
    fn apply_output_cap(&mut self, body: EventBody) -> Option<EventBody> {
        if let EventBody::Controller(ControllerEvent::ModelOutput { step_id, text, .. }) = &body {
            if self.is_model_output_truncated {
                return None;
            }
            self.model_output_bytes += text.len() as u64;
            if self.model_output_bytes <= self.output_cap_bytes {
                return Some(body);
            }
            self.is_model_output_truncated = true;
            return Some(EventBody::Engine(protocol::EngineEvent::Warning {
                step_id: Some(step_id.clone()),
                message: format!(
                    "live model output is no longer shown: the execution's output cap of {} bytes is reached",
                    self.output_cap_bytes
                ),
            }));
        }
        let Some((step_id, stream, n_bytes)) = step_output_of(&body) else {
            return Some(body);
        };
        if self.is_output_truncated {
            return None;
        }
        self.output_bytes += n_bytes;
        if self.output_bytes <= self.output_cap_bytes + OUTPUT_CAP_SLACK_BYTES {
            return Some(body);
        }
        self.is_output_truncated = true;
        let truncated = serde_json::json!({
            "type": "output_truncated",
            "step_id": step_id,
            "stream": stream,
            "limit_bytes": self.output_cap_bytes,
        });
        match serde_json::from_value(truncated) {
            Ok(event) => Some(EventBody::Engine(event)),
            Err(error) => {
                tracing::warn!(%error, "cannot build the output_truncated event");
                None
            }
        }
    }
}

/// `(step_id, stream, text bytes)` of an engine `step_output` event.
fn step_output_of(body: &EventBody) -> Option<(String, String, u64)> {
    let EventBody::Engine(event) = body else {
        return None;
    };
    let value = serde_json::to_value(event).ok()?;
    if value.get("type")?.as_str()? != "step_output" {
        return None;
    }
    let text = value.get("text")?.as_str()?;
    Some((
        value.get("step_id")?.as_str()?.to_owned(),
        value.get("stream")?.as_str()?.to_owned(),
        text.len() as u64,
    ))
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
