//! Stage: agent_link → **gateway** → model provider, and back to the step.
//!
//! The model gateway: agent steps call models through the controller, which
//! holds the API keys, so no key, provider URL or network access is ever
//! inside a sandbox. An agent's model request is resolved against its agent
//! profile and the operator's configuration (`resolve`), checked against the
//! user's and the execution's budgets (`budget`), sent to the provider as a
//! streamed call with retries (`client`, `retry`, over `openai` / `anthropic`
//! and `sse`), and the usage is recorded.
//!
//! [`Gateway`] ties these together; the agent link calls
//! [`Gateway::call`] for each model request and relays the chunks.

pub mod anthropic;
pub mod budget;
pub mod client;
pub mod config;
pub mod live;
pub mod openai;
pub mod profiles;
pub mod resolve;
pub mod retry;
pub mod sse;

mod service;

pub use budget::{Budget, BudgetExhausted, BudgetLedger, BudgetLimit, BudgetScope, BudgetUsage};
pub use client::{
    ChatMessage, ChatRole, Completion, Parameters, ProviderClient, ProviderError, ResolvedRequest,
    Usage,
};
pub use config::{ApiKey, GatewayConfig, ProviderConfig, ProviderKind};
pub use live::ChunkBatcher;
pub use profiles::{AgentProfile, AgentProfiles};
pub use resolve::{Resolution, ResolveError, ResolveInput, StepSelection, resolve};
pub use retry::{RetryClock, RetryPolicy, TokioRetryClock};
pub use service::{CallError, CallOutcome, CallScope, Gateway, GatewayError};
