//! LLM rate limiting (section 10): one limiter per run, shared by every
//! sub-recipe; wraps each agent call attempt.
//!
//! * `max_concurrent_llm`: a semaphore (unlimited when absent).
//! * `min_delay_ms`: minimum gap between the end of one call and the start of
//!   the next; call starts are serialised through a lock.
//! * backoff: a call that failed with a rate-limit error (429) raises the delay
//!   (initial, then × multiplier, capped); `reset_after_success` successes in a
//!   row reset it. The delay is slept before every call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::model::RateLimiting;
use crate::runner::StepRunner;

#[derive(Default)]
struct LimiterState {
    last_end_ms: Option<u64>,
    backoff_ms: u64,
    successes_in_row: u32,
}

pub(crate) struct RateLimiter {
    config: Option<RateLimiting>,
    semaphore: Option<Arc<Semaphore>>,
    state: Mutex<LimiterState>,
}

impl RateLimiter {
    pub fn new(config: Option<&RateLimiting>) -> RateLimiter {
        let semaphore = config
            .and_then(|c| c.max_concurrent_llm)
            .map(|n| Arc::new(Semaphore::new(usize::try_from(n.max(1)).unwrap_or(1))));
        RateLimiter {
            config: config.cloned(),
            semaphore,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Wait for a slot and for the configured delays.
    pub async fn acquire(&self, runner: &dyn StepRunner) -> Option<OwnedSemaphorePermit> {
        let permit = match &self.semaphore {
            Some(semaphore) => Arc::clone(semaphore).acquire_owned().await.ok(),
            None => None,
        };
        if let Some(config) = &self.config {
            let state = self.state.lock().await;
            let now = runner.now_ms();
            let gap_wait = state.last_end_ms.map_or(0, |end| {
                end.saturating_add(config.min_delay_ms).saturating_sub(now)
            });
            let wait_ms = gap_wait.max(state.backoff_ms);
            if wait_ms > 0 {
                runner.sleep(Duration::from_millis(wait_ms)).await;
            }
        }
        permit
    }

    /// Record the end of a call.
    pub async fn finish(&self, now_ms: u64, is_rate_limited: bool, succeeded: bool) {
        let Some(config) = &self.config else {
            return;
        };
        let mut state = self.state.lock().await;
        state.last_end_ms = Some(now_ms);
        let backoff = &config.backoff;
        if !backoff.enabled {
            return;
        }
        if is_rate_limited {
            state.successes_in_row = 0;
            state.backoff_ms = if state.backoff_ms == 0 {
                backoff.initial_delay_ms
            } else {
                let raised = (state.backoff_ms as f64 * backoff.multiplier.max(1.0)) as u64;
                raised.min(backoff.max_delay_ms)
            };
        } else if succeeded {
            state.successes_in_row += 1;
            if state.successes_in_row >= backoff.reset_after_success.max(1) {
                state.backoff_ms = 0;
                state.successes_in_row = 0;
            }
        }
    }
}
