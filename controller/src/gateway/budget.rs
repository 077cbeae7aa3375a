//! Model budgets: limits on requests, input tokens and output tokens, per
//! user and per execution, and the in-memory ledger that checks them before a
//! call and records usage after it.
//!
//! Pure bookkeeping. Persistence is the caller's: [`BudgetLedger::load_user`]
//! / [`BudgetLedger::load_execution`] seed usage read from the store, and
//! [`BudgetLedger::user_usage`] / [`BudgetLedger::execution_usage`] /
//! [`BudgetLedger::step_usage`] give the figures to save. A call is counted
//! once however many HTTP attempts the retry wrapper makes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Limits of one scope. `None` = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    pub max_requests: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

/// Usage so far of one scope (or of one call, for [`BudgetLedger::record`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetUsage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Which scope a budget belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    User,
    Execution,
}

/// Which limit ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetLimit {
    Requests,
    InputTokens,
    OutputTokens,
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetScope::User => "user",
            BudgetScope::Execution => "execution",
        })
    }
}

impl fmt::Display for BudgetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetLimit::Requests => "max_requests",
            BudgetLimit::InputTokens => "max_input_tokens",
            BudgetLimit::OutputTokens => "max_output_tokens",
        })
    }
}

/// A call was refused because a budget is used up. The stable status is
/// [`BudgetExhausted::STATUS`]; `scope` and `limit` say which one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("budget_exhausted: {scope} {limit} is {max}, used {used}")]
pub struct BudgetExhausted {
    pub scope: BudgetScope,
    pub limit: BudgetLimit,
    pub max: u64,
    pub used: u64,
}

impl BudgetExhausted {
    /// The step status for an exhausted budget.
    pub const STATUS: &'static str = "budget_exhausted";
}

impl Budget {
    /// The first limit `usage` has reached, in the order requests, input, output.
    pub fn exhausted_limit(&self, usage: &BudgetUsage) -> Option<(BudgetLimit, u64, u64)> {
        let checks = [
            (BudgetLimit::Requests, self.max_requests, usage.requests),
            (
                BudgetLimit::InputTokens,
                self.max_input_tokens,
                usage.input_tokens,
            ),
            (
                BudgetLimit::OutputTokens,
                self.max_output_tokens,
                usage.output_tokens,
            ),
        ];
        checks.into_iter().find_map(|(limit, max, used)| match max {
            Some(max) if used >= max => Some((limit, max, used)),
            _ => None,
        })
    }

    /// Output tokens still allowed, if limited.
    pub fn remaining_output_tokens(&self, usage: &BudgetUsage) -> Option<u64> {
        self.max_output_tokens
            .map(|max| max.saturating_sub(usage.output_tokens))
    }
}

impl BudgetUsage {
    fn add(&mut self, other: &BudgetUsage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// In-memory usage per user, per execution and per step.
#[derive(Clone, Debug, Default)]
pub struct BudgetLedger {
    per_user: Budget,
    per_execution: Budget,
    users: BTreeMap<String, BudgetUsage>,
    executions: BTreeMap<String, BudgetUsage>,
    steps: BTreeMap<(String, String), BudgetUsage>,
}

impl BudgetLedger {
    pub fn new(per_user: Budget, per_execution: Budget) -> BudgetLedger {
        BudgetLedger {
            per_user,
            per_execution,
            ..BudgetLedger::default()
        }
    }

    /// Seed a user's usage (read from the store at startup or first use).
    pub fn load_user(&mut self, user: &str, usage: BudgetUsage) {
        self.users.insert(user.to_string(), usage);
    }

    /// Seed an execution's usage (after a controller restart).
    pub fn load_execution(&mut self, execution: &str, usage: BudgetUsage) {
        self.executions.insert(execution.to_string(), usage);
    }

    /// Would a new call be allowed? The user's budget is checked first.
    pub fn check(&self, user: &str, execution: &str) -> Result<(), BudgetExhausted> {
        let user_usage = self.user_usage(user);
        if let Some((limit, max, used)) = self.per_user.exhausted_limit(&user_usage) {
            return Err(BudgetExhausted {
                scope: BudgetScope::User,
                limit,
                max,
                used,
            });
        }
        let execution_usage = self.execution_usage(execution);
        if let Some((limit, max, used)) = self.per_execution.exhausted_limit(&execution_usage) {
            return Err(BudgetExhausted {
                scope: BudgetScope::Execution,
                limit,
                max,
                used,
            });
        }
        Ok(())
    }

    /// Check, then count the request. Call right before the provider call.
    pub fn begin_call(
        &mut self,
        user: &str,
        execution: &str,
        step_id: &str,
    ) -> Result<(), BudgetExhausted> {
        self.check(user, execution)?;
        self.add(
            user,
            execution,
            step_id,
            &BudgetUsage {
                requests: 1,
                input_tokens: 0,
                output_tokens: 0,
            },
        );
        Ok(())
    }

    /// Record the tokens of a finished call ([`BudgetLedger::begin_call`]
    /// already counted the request).
    pub fn record(
        &mut self,
        user: &str,
        execution: &str,
        step_id: &str,
        input_tokens: u64,
        output_tokens: u64,
    ) {
        self.add(
            user,
            execution,
            step_id,
            &BudgetUsage {
                requests: 0,
                input_tokens,
                output_tokens,
            },
        );
    }

    /// The most output tokens the next call may produce without passing
    /// either budget (`None` = unlimited). Use it to cap `max_tokens`.
    pub fn output_allowance(&self, user: &str, execution: &str) -> Option<u64> {
        let by_user = self
            .per_user
            .remaining_output_tokens(&self.user_usage(user));
        let by_execution = self
            .per_execution
            .remaining_output_tokens(&self.execution_usage(execution));
        match (by_user, by_execution) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn user_usage(&self, user: &str) -> BudgetUsage {
        self.users.get(user).copied().unwrap_or_default()
    }

    pub fn execution_usage(&self, execution: &str) -> BudgetUsage {
        self.executions.get(execution).copied().unwrap_or_default()
    }

    pub fn step_usage(&self, execution: &str, step_id: &str) -> BudgetUsage {
        self.steps
            .get(&(execution.to_string(), step_id.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Usage of each step of `execution` that made a call, by step id.
    pub fn execution_steps(&self, execution: &str) -> BTreeMap<String, BudgetUsage> {
        self.steps
            .iter()
            .filter(|((exec, _), _)| exec == execution)
            .map(|((_, step_id), usage)| (step_id.clone(), *usage))
            .collect()
    }

    /// Forget an execution's figures (after they were saved).
    pub fn forget_execution(&mut self, execution: &str) {
        self.executions.remove(execution);
        self.steps.retain(|(exec, _), _| exec != execution);
    }

    fn add(&mut self, user: &str, execution: &str, step_id: &str, usage: &BudgetUsage) {
        self.users.entry(user.to_string()).or_default().add(usage);
        self.executions
            .entry(execution.to_string())
            .or_default()
            .add(usage);
        self.steps
            .entry((execution.to_string(), step_id.to_string()))
            .or_default()
            .add(usage);
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
