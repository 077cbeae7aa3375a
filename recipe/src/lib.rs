//! The recipe language: load, check and run Amplifier-format recipes.
//!
//! This crate is the pure core of Kiln. It does no process, file or network
//! I/O: the controller uses it to check a recipe before anything runs, and the
//! sandbox agent uses it to run the recipe, supplying real step runners.
//!
//! Pipeline: YAML text → [`load`] (typed model + diagnostics) → [`validate`]
//! (cross-step checks) → [`engine`] (drives a [`runner::StepRunner`]).

pub mod check;
pub mod diagnostic;
pub mod engine;
pub mod event;
pub mod expr;
pub mod extract;
pub mod load;
pub mod model;
pub mod runner;
pub mod template;
pub mod validate;
pub use check::{CheckOptions, Checked, check};
