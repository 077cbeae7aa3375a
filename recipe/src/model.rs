//! The typed recipe model that loading produces and the engine runs.
//!
//! Templates (`prompt`, `command`, `condition`, ...) stay raw strings here:
//! rendering happens at run time. Every node keeps the [`Span`] of its YAML
//! node so later stages can point back into the source. Defaults follow the
//! reference executor (Part A item 1 of the format spec): step timeout 600 s,
//! retry 1 attempt, foreach max 100, while max 100, recursion 5 / 100.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::diagnostic::Span;

pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_MAX_ITERATIONS: u64 = 100;
pub const DEFAULT_MAX_WHILE_ITERATIONS: u64 = 100;
pub const DEFAULT_LOOP_VARIABLE: &str = "item";

/// Variable names a step output may never take.
pub const RESERVED_NAMES: [&str; 3] = ["recipe", "session", "step"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub version: String,
    pub author: Option<String>,
    pub created: Option<String>,
    pub updated: Option<String>,
    pub tags: Vec<String>,
    /// Initial variables; caller inputs override them key by key.
    pub context: Map<String, Value>,
    /// The root's limits (defaults 5 / 100). Only the root recipe's block counts.
    pub recursion: RecursionLimits,
    pub rate_limiting: Option<RateLimiting>,
    pub orchestrator: Option<Orchestrator>,
    pub body: Body,
    pub span: Span,
}

impl Recipe {
    pub fn is_staged(&self) -> bool {
        matches!(self.body, Body::Staged(_))
    }

    /// Top-level steps in execution order (all stages concatenated).
    pub fn all_steps(&self) -> Vec<&Step> {
        match &self.body {
            Body::Flat(steps) => steps.iter().collect(),
            Body::Staged(stages) => stages.iter().flat_map(|stage| stage.steps.iter()).collect(),
        }
    }
}

/// Flat mode (`steps:`) or staged mode (`stages:` non-empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Flat(Vec<Step>),
    Staged(Vec<Stage>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub steps: Vec<Step>,
    pub approval: Option<Approval>,
    pub span: Span,
}

/// An approval gate at the *end* of a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub required: bool,
    pub prompt: String,
    /// 0 = wait forever.
    pub timeout_secs: u64,
    pub default: ApprovalDefault,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDefault {
    Approve,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Fail,
    Continue,
    SkipRemaining,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub output: Option<String>,
    /// Expression (section 12), raw text.
    pub condition: Option<String>,
    pub timeout_secs: u64,
    pub retry: Option<Retry>,
    pub on_error: OnError,
    /// A string in YAML is accepted as a one-element list.
    pub depends_on: Vec<String>,
    pub parse_json: bool,
    pub kind: StepKind,
    pub looping: Option<Loop>,
    /// Nested loop body (`steps:` / `while_steps:` under a foreach or while
    /// step). When non-empty, each iteration runs these steps and `kind` is
    /// not run (a compound container may leave `agent`/`prompt` empty).
    pub body: Vec<Step>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    Agent(AgentStep),
    Bash(BashStep),
    Recipe(RecipeStep),
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent(_) => "agent",
            StepKind::Bash(_) => "bash",
            StepKind::Recipe(_) => "recipe",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStep {
    /// Empty only for compound loop containers.
    pub agent: String,
    /// Template. Empty only for compound loop containers.
    pub prompt: String,
    pub mode: Option<String>,
    /// Passed to the model gateway as-is.
    pub agent_config: Option<Map<String, Value>>,
    /// Template (Part A item 9: provider/model are substituted).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub provider_preferences: Option<Vec<ProviderPreference>>,
    pub model_role: Option<String>,
    pub spawn_mode: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderPreference {
    Provider {
        provider: String,
        model: Option<String>,
    },
    /// `- class: reasoning` entries (documented by the format, crash the reference).
    Class { class: String },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BashStep {
    /// Template; run as a script, never as one argv element.
    pub command: String,
    pub cwd: Option<String>,
    /// Values are templates when strings; other scalars are stringified at run time.
    pub env: Map<String, Value>,
    pub output_exit_code: Option<String>,
    /// Spec-only fields from the format's bash spec, implemented by Kiln.
    pub shell: Option<String>,
    pub output_stderr: bool,
    pub max_output_size: Option<u64>,
    /// Milliseconds between foreach iterations.
    pub delay_between_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecipeStep {
    /// Path template.
    pub recipe: String,
    /// Values substituted recursively; a lone `{{ref}}` keeps the value's type.
    pub context: Map<String, Value>,
    /// Overrides both limits for the child subtree.
    pub recursion: Option<RecursionLimits>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loop {
    Foreach(Foreach),
    While(While),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Foreach {
    /// `{{path}}` reference to a list.
    pub foreach: String,
    /// Loop variable (`as`), default `item`.
    pub as_name: String,
    pub collect: Option<String>,
    pub max_iterations: u64,
    pub parallel: Parallel,
    pub checkpoint_iterations: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallel {
    Sequential,
    Unbounded,
    Limit(u32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct While {
    /// Expression, or the literal `true`.
    pub condition: String,
    pub max_while_iterations: u64,
    pub break_when: Option<String>,
    /// Applied after each iteration, in declaration order.
    pub update_context: Vec<ContextUpdate>,
    /// Receives the list of all iteration results (section 5.6 "Body").
    #[serde(default)]
    pub collect: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextUpdate {
    pub name: String,
    /// Template, rendered to text.
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Exponential,
    Linear,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Default 1 (the reference code; its docs say 3).
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub initial_delay_secs: f64,
    pub max_delay_secs: f64,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            max_attempts: 1,
            backoff: Backoff::Exponential,
            initial_delay_secs: 5.0,
            max_delay_secs: 300.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecursionLimits {
    pub max_depth: u32,
    pub max_total_steps: u32,
}

impl Default for RecursionLimits {
    fn default() -> RecursionLimits {
        RecursionLimits {
            max_depth: 5,
            max_total_steps: 100,
        }
    }
}

/// LLM rate limiting (section 10); only agent calls are affected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimiting {
    /// None = unlimited.
    pub max_concurrent_llm: Option<u32>,
    pub min_delay_ms: u64,
    pub backoff: RateBackoff,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateBackoff {
    pub enabled: bool,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    pub reset_after_success: u32,
}

impl Default for RateBackoff {
    fn default() -> RateBackoff {
        RateBackoff {
            enabled: true,
            initial_delay_ms: 1000,
            max_delay_ms: 60000,
            multiplier: 2.0,
            reset_after_success: 3,
        }
    }
}

/// Only `config` is read; it is passed as-is to every agent call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Orchestrator {
    pub config: Map<String, Value>,
}
