//! `WS /api/v1/executions/{id}/stream?after=SEQ`: one watcher's live view.
//!
//! Gap-free and duplicate-free by construction: subscribe to the relay's
//! [`Hub`](crate::relay::Hub) FIRST, then replay from the store everything
//! after `after`, then forward live events, skipping any `seq` already sent
//! (and filling any hole from the store). The relay persists before it
//! publishes, so an event is either in the replay or in the subscription.
//!
//! A watcher never slows anything: the hub's channel is bounded and never
//! waits; a watcher that falls behind gets `Lagged` and is closed with code
//! 4008 and the reason `lagged; resume with after=<last seq sent>`. A watcher
//! whose socket stops draining is treated the same way after a send timeout.
//! The socket is split in two tasks: this one writes, a reader drains the
//! client (pings, close) and reports when the client is gone.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use protocol::ExecutionEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::store::ExecutionStatus;

/// Close code for a watcher that fell behind (private-use range 4000-4999).
pub const CLOSE_LAGGED: u16 = 4008;
/// Normal close after the `end` message.
pub const CLOSE_NORMAL: u16 = 1000;
/// The server is going away while the execution still runs: resume later.
pub const CLOSE_RESTART: u16 = 1012;
/// Something failed on the server; resume later.
pub const CLOSE_INTERNAL: u16 = 1011;

/// Events replayed per store query.
const REPLAY_BATCH: u32 = 500;
/// Largest message accepted from a watcher (it has nothing to say).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4096;

/// What the server sends on the stream, one JSON text frame each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMessage {
    /// One stored event, in `seq` order.
    Event { event: ExecutionEvent },
    /// Sent every `server.ws_heartbeat_secs`; `last_seq` is the last event sent.
    Heartbeat { last_seq: u64 },
    /// The execution is finished and every event was sent; the server closes next.
    End {
        status: ExecutionStatus,
        detail: Option<String>,
        last_seq: u64,
    },
}

/// Why the stream ended, and so which close frame it gets.
enum Ending {
    Finished,
    Lagged { last_seq: u64 },
    ServerStopping { last_seq: u64 },
    ClientGone,
    Failed { last_seq: u64 },
}

type Sink = SplitSink<WebSocket, Message>;

struct Watcher<'a> {
    state: &'a AppState,
    execution_id: &'a str,
    last_sent: u64,
    sink: Sink,
    send_timeout: Duration,
}

/// Runs one watcher until the execution ends, it lags, or the client leaves.
pub async fn watch(state: AppState, execution_id: String, after: u64, socket: WebSocket) {
    let heartbeat_secs = state.config().server.ws_heartbeat_secs;
    let (sink, mut stream) = socket.split();
    let client_gone = CancellationToken::new();
    // Keep reading until the stream ends, even after a Close: that is what
    // flushes our close reply (see engineering-facts, "two deadlocks").
    let reader = tokio::spawn({
        let client_gone = client_gone.clone();
        async move {
            while let Some(Ok(_message)) = stream.next().await {}
            client_gone.cancel();
        }
    });
    let mut watcher = Watcher {
        state: &state,
        execution_id: &execution_id,
        last_sent: after,
        sink,
        send_timeout: Duration::from_secs(heartbeat_secs.saturating_mul(2).max(5)),
    };
    let ending = watcher
        .run(Duration::from_secs(heartbeat_secs), &client_gone)
        .await;
    let close = match ending {
        Ending::Finished => Some((CLOSE_NORMAL, "finished".to_string())),
        Ending::Lagged { last_seq } => Some((
            CLOSE_LAGGED,
            format!("lagged; resume with after={last_seq}"),
        )),
        Ending::ServerStopping { last_seq } => Some((
            CLOSE_RESTART,
            format!("server stopping; resume with after={last_seq}"),
        )),
        Ending::Failed { last_seq } => Some((
            CLOSE_INTERNAL,
            format!("internal error; resume with after={last_seq}"),
        )),
        Ending::ClientGone => None,
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let _ = tokio::time::timeout(
            watcher.send_timeout,
            watcher.sink.send(Message::Close(Some(frame))),
        )
        .await;
        // Give the client a moment to answer the close, then drop the socket.
        let _ = tokio::time::timeout(watcher.send_timeout, client_gone.cancelled()).await;
    }
    reader.abort();
}

impl Watcher<'_> {
    async fn run(&mut self, heartbeat: Duration, client_gone: &CancellationToken) -> Ending {
        let shutdown = self.state.shutdown().clone();
        let mut live = self.state.hub().subscribe(self.execution_id);
        match self.replay_and_check_end().await {
            Ok(Some(ending)) => return ending,
            Ok(None) => {}
            Err(ending) => return ending,
        }
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.seq <= self.last_sent {
                            continue; // already replayed
                        }
                        if event.seq > self.last_sent + 1 {
                            // A hole (should not happen): the store has it.
                            if let Err(ending) = self.replay_until(event.seq - 1).await {
                                return ending;
                            }
                        }
                        if let Err(ending) = self.send_event(event).await {
                            return ending;
                        }
                    }
                    Err(RecvError::Lagged(n_missed)) => {
                        tracing::info!(execution_id = self.execution_id, n_missed, last_seq = self.last_sent, "watcher lagged");
                        return Ending::Lagged { last_seq: self.last_sent };
                    }
                    Err(RecvError::Closed) => {
                        return match self.replay_and_check_end().await {
                            Ok(Some(ending)) | Err(ending) => ending,
                            Ok(None) => Ending::ServerStopping { last_seq: self.last_sent },
                        };
                    }
                },
                _ = ticks.tick() => {
                    let heartbeat = StreamMessage::Heartbeat { last_seq: self.last_sent };
                    if let Err(ending) = self.send(&heartbeat).await {
                        return ending;
                    }
                }
                () = client_gone.cancelled() => return Ending::ClientGone,
                () = shutdown.cancelled() => return Ending::ServerStopping { last_seq: self.last_sent },
            }
        }
    }

    /// Replays everything stored; if the execution is final, replays the
    /// stragglers, sends `end` and returns the ending.
    async fn replay_and_check_end(&mut self) -> Result<Option<Ending>, Ending> {
        self.replay_until(u64::MAX).await?;
        let execution = self
            .state
            .store()
            .get_execution(self.execution_id, None)
            .await
            .map_err(|err| self.failed(&err))?;
        let Some(execution) = execution else {
            // Purged while watching.
            return Ok(Some(Ending::Finished));
        };
        if !execution.status.is_final() {
            return Ok(None);
        }
        // The final status is stored after the last event, so this catches everything.
        self.replay_until(u64::MAX).await?;
        let end = StreamMessage::End {
            status: execution.status,
            detail: execution.status_detail,
            last_seq: self.last_sent,
        };
        self.send(&end).await?;
        Ok(Some(Ending::Finished))
    }

    /// Sends stored events with `last_sent < seq <= until`.
    async fn replay_until(&mut self, until: u64) -> Result<(), Ending> {
        loop {
            let batch = self
                .state
                .store()
                .events_after(self.execution_id, self.last_sent, REPLAY_BATCH)
                .await
                .map_err(|err| self.failed(&err))?;
            let n_events = batch.len();
            for event in batch {
                if event.seq > until {
                    return Ok(());
                }
                self.send_event(event).await?;
            }
            if n_events < REPLAY_BATCH as usize {
                return Ok(());
            }
        }
    }

    async fn send_event(&mut self, event: ExecutionEvent) -> Result<(), Ending> {
        let seq = event.seq;
        self.send(&StreamMessage::Event { event }).await?;
        self.last_sent = seq;
        Ok(())
    }

    async fn send(&mut self, message: &StreamMessage) -> Result<(), Ending> {
        let text = serde_json::to_string(message).map_err(|err| self.failed(&err))?;
        match tokio::time::timeout(
            self.send_timeout,
            self.sink.send(Message::Text(Utf8Bytes::from(text))),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::ClientGone),
            // The client stopped draining its socket: same as lagging.
            Err(_elapsed) => Err(Ending::Lagged {
                last_seq: self.last_sent,
            }),
        }
    }

    fn failed(&self, err: &dyn std::fmt::Display) -> Ending {
        tracing::error!(execution_id = self.execution_id, error = %err, "watcher failed");
        Ending::Failed {
            last_seq: self.last_sent,
        }
    }
}
