//! Tests of the event sink's numbering and closing.

use super::*;

fn warning(message: &str) -> Event {
    Event::Warning {
        step_id: None,
        message: message.to_string(),
    }
}

#[tokio::test]
async fn closing_any_clone_ends_the_receiver_after_what_was_sent() {
    let (sink, mut receiver) = EventSink::channel(8);
    let kept = sink.clone();
    sink.emit(warning("one")).await;
    sink.emit(warning("two")).await;
    kept.close().await;
    // Numbered, but not delivered: the channel is closed.
    sink.emit(warning("three")).await;
    assert_eq!(sink.next_seq().await, 3);
    let mut seqs = Vec::new();
    while let Some(sequenced) = receiver.recv().await {
        seqs.push(sequenced.seq);
    }
    // The receiver ended although `sink` and `kept` are still alive.
    assert_eq!(seqs, vec![0, 1]);
}
