//! Retrying a provider call on 429 and 5xx: exponential backoff with "equal
//! jitter" (half the delay fixed, half random), a bounded number of attempts,
//! and `Retry-After` honoured (a longer wait than the operator allows ends the
//! call with `rate_limited` instead). A call that already streamed text is
//! never retried, so watchers never see an answer twice.
//!
//! Sleeping and randomness go through [`RetryClock`], so tests record the
//! exact delays instead of waiting.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Completion, ProviderClient, ProviderError, ResolvedRequest};
use super::config::RetryConfig;

/// Sleep and jitter source.
pub trait RetryClock: Send + Sync {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// A number in `[0, 1]`: 0 waits half the backoff, 1 the full backoff.
    fn jitter(&self) -> f64;
}

/// Real time and `rand` jitter.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioRetryClock;

impl RetryClock for TokioRetryClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn jitter(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// When to retry and how long to wait.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            max_retry_after: Duration::from_secs(config.max_retry_after_secs),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 = the first retry), or `None`
    /// when the provider asks for a longer wait than allowed.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let exponent = retry.saturating_sub(1).min(30);
        let backoff = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let jitter = jitter.clamp(0.0, 1.0);
        let jittered = backoff / 2 + backoff.mul_f64(jitter) / 2;
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// A retry about to happen (for events and logs).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryNotice {
    /// The attempt that failed (1-based).
    pub attempt: u32,
    pub delay: Duration,
    pub error: ProviderError,
}

/// [`ProviderClient::stream`] with retries on 429 and 5xx.
pub async fn stream_with_retry(
    client: &ProviderClient,
    request: &ResolvedRequest,
    cancel: &CancellationToken,
    policy: &RetryPolicy,
    clock: &dyn RetryClock,
    on_chunk: &mut (dyn FnMut(&str) + Send),
    on_retry: &mut (dyn FnMut(&RetryNotice) + Send),
) -> Result<Completion, ProviderError> {
    let mut attempt = 1u32;
    loop {
        let mut streamed = false;
        let mut forward = |text: &str| {
            streamed = true;
            on_chunk(text);
        };
        let error = match client.stream(request, cancel, &mut forward).await {
            Ok(completion) => return Ok(completion),
            Err(error) => error,
        };
        if !error.is_retryable() || streamed || attempt >= policy.max_attempts {
            return Err(error);
        }
        let retry_after = match &error {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        let Some(delay) = policy.delay(attempt, retry_after, clock.jitter()) else {
            return Err(error);
        };
        on_retry(&RetryNotice {
            attempt,
            delay,
            error,
        });
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ProviderError::Cancelled),
            () = clock.sleep(delay) => {}
        }
        attempt += 1;
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
