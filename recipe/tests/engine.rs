//! Engine tests with a scripted fake `StepRunner` on paused tokio time.
//!
//! Grouped like `recipe-behaviours.md` (test_executor*.py, conditions, loops,
//! composition, on_error, json extraction/parsing, cancellation, foreach
//! checkpointing, hook integration). Where Kiln deliberately differs from the
//! reference (Part A of the format spec), the test asserts Kiln's behaviour and
//! a comment names the reference behaviour it replaces.
#![allow(clippy::unwrap_used)]

#[path = "engine/harness.rs"]
mod harness;

#[path = "engine/flow.rs"]
mod flow;

#[path = "engine/loops.rs"]
mod loops;

#[path = "engine/composition.rs"]
mod composition;

#[path = "engine/errors.rs"]
mod errors;

#[path = "engine/cancel.rs"]
mod cancel;

#[path = "engine/json.rs"]
mod json;

#[path = "engine/checkpoint.rs"]
mod checkpoint;

#[path = "engine/gallery.rs"]
mod gallery;
