//! Unit tests of the backoff computation.

use std::time::Duration;

use super::*;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_millis(3000),
        max_retry_after: Duration::from_secs(60),
    }
}

#[test]
fn delays() {
    let ms = Duration::from_millis;
    // (retry number, retry_after, jitter, expected)
    let cases = [
        (1, None, 1.0, Some(ms(500))),
        (2, None, 1.0, Some(ms(1000))),
        (3, None, 1.0, Some(ms(2000))),
        (4, None, 1.0, Some(ms(3000))),
        (30, None, 1.0, Some(ms(3000))),
        (1, None, 0.0, Some(ms(250))),
        (2, None, 0.5, Some(ms(750))),
        (1, None, 7.0, Some(ms(500))),
        (1, Some(Duration::from_secs(2)), 1.0, Some(ms(2000))),
        (3, Some(Duration::from_secs(1)), 1.0, Some(ms(2000))),
        (1, Some(Duration::from_secs(60)), 1.0, Some(ms(60_000))),
        (1, Some(Duration::from_secs(61)), 1.0, None),
    ];
    for (retry, retry_after, jitter, expected) in cases {
        assert_eq!(
            policy().delay(retry, retry_after, jitter),
            expected,
            "retry {retry} after {retry_after:?} jitter {jitter}"
        );
    }
}

#[test]
fn from_config() {
    let policy = RetryPolicy::from(&crate::gateway::config::RetryConfig::default());
    assert_eq!(policy.max_attempts, 4);
    assert_eq!(policy.initial_backoff, Duration::from_millis(500));
    assert_eq!(policy.max_backoff, Duration::from_secs(30));
    assert_eq!(policy.max_retry_after, Duration::from_secs(120));
}
