//! Unit tests for the relay's hub, and for the relay over a real store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use protocol::{ControllerEvent, EventBody};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{Hub, Relay};
use crate::store::{NewExecution, Store};

#[test]
fn subscriber_sees_published_events_in_order_then_closed_after_finish() {
    let hub: Hub<u64> = Hub::new(8);
    let mut receiver = hub.subscribe("e1");
    for seq in 1..=3 {
        hub.publish("e1", seq);
    }
    hub.finish("e1");
    assert_eq!(receiver.try_recv().unwrap(), 1);
    assert_eq!(receiver.try_recv().unwrap(), 2);
    assert_eq!(receiver.try_recv().unwrap(), 3);
    assert_eq!(receiver.try_recv(), Err(TryRecvError::Closed));
}

#[test]
fn executions_do_not_see_each_others_events() {
    let hub: Hub<u64> = Hub::new(8);
    let mut first = hub.subscribe("e1");
    let mut second = hub.subscribe("e2");
    hub.publish("e1", 1);
    hub.publish("e2", 2);
    assert_eq!(first.try_recv().unwrap(), 1);
    assert_eq!(first.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(second.try_recv().unwrap(), 2);
}

#[test]
fn slow_watcher_lags_instead_of_blocking_the_publisher() {
    let hub: Hub<u64> = Hub::new(2);
    let mut slow = hub.subscribe("e1");
    for seq in 1..=5 {
        hub.publish("e1", seq);
    }
    assert_eq!(slow.try_recv(), Err(TryRecvError::Lagged(3)));
    assert_eq!(slow.try_recv().unwrap(), 4);
}

#[test]
fn channels_without_watchers_are_forgotten() {
    let hub: Hub<u64> = Hub::new(2);
    drop(hub.subscribe("finished-long-ago"));
    let _live = hub.subscribe("e1");
    assert_eq!(hub.n_channels(), 1);
    hub.publish("nobody-listens", 1);
    assert_eq!(hub.n_channels(), 1);
}

#[tokio::test]
async fn finish_wakes_a_waiting_watcher() {
    let hub: Hub<u64> = Hub::new(2);
    let mut receiver = hub.subscribe("e1");
    let waiter = tokio::spawn(async move { receiver.recv().await });
    tokio::task::yield_now().await;
    hub.finish("e1");
    assert_eq!(waiter.await.unwrap(), Err(RecvError::Closed));
}

/// A relay over a fresh store with one execution.
async fn relay_over_store() -> (tempfile::TempDir, Store, String, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("kiln.db"), 1024)
        .await
        .unwrap();
    let execution = store
        .create_execution(NewExecution {
            owner_token_id: "tok".to_string(),
            recipe_source: "name: x\n".to_string(),
            gallery_name: None,
            inputs: serde_json::Map::new(),
            files: BTreeMap::new(),
            class: "default".to_string(),
        })
        .await
        .unwrap();
    let relay = Relay::open(store.clone(), Hub::new(8), &execution.id, 1 << 20)
        .await
        .unwrap();
    (dir, store, execution.id, relay)
}

async fn acked_seq(store: &Store, execution_id: &str) -> u64 {
    store
        .get_execution(execution_id, None)
        .await
        .unwrap()
        .unwrap()
        .last_acked_seq
}

#[tokio::test]
async fn record_and_ack_stores_the_events_with_the_agent_position() {
    let (_dir, store, id, mut relay) = relay_over_store().await;
    let bodies = vec![
        EventBody::Controller(ControllerEvent::AgentConnected {}),
        EventBody::Controller(ControllerEvent::Queued {}),
    ];
    assert_eq!(relay.record_and_ack(bodies, Some(4)).await.unwrap(), 2);
    assert_eq!(acked_seq(&store, &id).await, 4);
    let stored = store.events_after(&id, 0, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|event| event.seq).collect::<Vec<_>>(),
        [1, 2]
    );

    // No event to store: the position alone moves (never backwards).
    assert_eq!(relay.record_and_ack(vec![], Some(6)).await.unwrap(), 0);
    assert_eq!(acked_seq(&store, &id).await, 6);
    assert_eq!(relay.record_and_ack(vec![], Some(5)).await.unwrap(), 0);
    assert_eq!(acked_seq(&store, &id).await, 6);

    // `record` leaves the position alone; seqs continue without a gap.
    let body = EventBody::Controller(ControllerEvent::AgentConnected {});
    assert_eq!(relay.record(vec![body]).await.unwrap(), 1);
    assert_eq!(acked_seq(&store, &id).await, 6);
    assert_eq!(store.last_event_seq(&id).await.unwrap(), 3);
}

#[tokio::test]
async fn live_model_text_over_the_cap_is_dropped_after_one_warning() {
    let (_dir, store, id, _) = relay_over_store().await;
    let mut relay = Relay::open(store.clone(), Hub::new(8), &id, 10)
        .await
        .unwrap();
    let tokens = |text: &str| {
        EventBody::Controller(ControllerEvent::ModelOutput {
            step_id: "ask".to_string(),
            request_id: 1,
            text: text.to_string(),
        })
    };
    let bodies = vec![tokens("12345"), tokens("67890"), tokens("x"), tokens("y")];
    assert_eq!(relay.record(bodies).await.unwrap(), 3);
    let stored: Vec<serde_json::Value> = store
        .events_after(&id, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| serde_json::to_value(event.body).unwrap()["event"].clone())
        .collect();
    assert_eq!(
        stored,
        vec![
            serde_json::json!({"type": "model_output", "step_id": "ask", "request_id": 1, "text": "12345"}),
            serde_json::json!({"type": "model_output", "step_id": "ask", "request_id": 1, "text": "67890"}),
            serde_json::json!({"type": "warning", "step_id": "ask",
                "message": "live model output is no longer shown: the execution's output cap of 10 bytes is reached"}),
        ]
    );
}
