//! Unit tests for the relay's hub.
#![allow(clippy::unwrap_used)]

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::Hub;

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
