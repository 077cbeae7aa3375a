//! Kiln's controller: the service that checks, queues, launches and relays
//! executions, and the `kiln` CLI on top of it.
//!
//! One execution flows through these modules in order:
//!
//! ```text
//! user/web → api → intake (recipe::check) → store → queue → launcher → sandbox (bollard)
//!   → container: sandbox-agent → link ──protocol──▶ agent_link → relay → store + user WS
//! ```

pub mod agent_link;
pub mod api;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod intake;
pub mod launcher;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod relay;
pub mod sandbox;
pub mod serve;
pub mod store;
