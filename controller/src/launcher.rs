//! Stage: queue → **launcher** → sandbox → agent_link → relay.
//!
//! The launcher turns one claimed execution into one container and back into
//! a final status. [`Control`] is how the API reaches a running execution
//! (cancel, approval decisions) and wakes the queue.

mod control;

pub use control::{ApprovalError, CancelOutcome, Command, Control, Decision};

#[cfg(test)]
#[path = "launcher_tests.rs"]
mod tests;
