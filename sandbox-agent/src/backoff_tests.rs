//! The reconnect schedule, exactly.

use super::*;

#[test]
fn doubles_to_the_ceiling_and_resets() {
    let mut backoff = Backoff::for_reconnect();
    let delays: Vec<u128> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    backoff.reset();
    assert_eq!(backoff.next_delay(), Duration::from_millis(100));
}
