//! Model usage routes: an execution's model calls, the caller's own usage
//! against their per-user budget, and the Prometheus `/metrics` scrape. Every
//! figure is read from the store (the `model_calls` rows), so it is exact and
//! survives restarts.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::executions::visible;
use super::extract::{ApiPath, Caller};
use crate::gateway::Budget;
use crate::metrics::{self, MetricsSnapshot};
use crate::store::{ModelCallRow, ModelCallStatus, ModelUsage};

/// One model call as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCallView {
    pub id: i64,
    pub request_id: u64,
    pub step_id: String,
    pub provider: String,
    pub model: String,
    pub profile: String,
    pub status: ModelCallStatus,
    pub error_code: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// `GET /executions/{id}/model-calls`: oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCallList {
    pub model_calls: Vec<ModelCallView>,
}

/// Figures per budget dimension; `null` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimits {
    pub requests: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// `GET /usage`: the caller's own model usage and per-user budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageView {
    /// The caller's token id (the user budgets are kept per token).
    pub user_id: String,
    pub usage: ModelUsage,
    pub limits: UsageLimits,
    /// `limit - used`, never below 0; `null` where unlimited.
    pub remaining: UsageLimits,
}

fn call_view(row: ModelCallRow) -> ModelCallView {
    ModelCallView {
        id: row.id,
        request_id: row.request_id,
        step_id: row.step_id,
        provider: row.provider,
        model: row.model,
        profile: row.profile,
        status: row.status,
        error_code: row.error_code,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        started_at_ms: row.started_at_ms,
        finished_at_ms: row.finished_at_ms,
    }
}

fn limits_and_remaining(budget: &Budget, usage: &ModelUsage) -> (UsageLimits, UsageLimits) {
    let left = |max: Option<u64>, used: u64| max.map(|max| max.saturating_sub(used));
    let limits = UsageLimits {
        requests: budget.max_requests,
        input_tokens: budget.max_input_tokens,
        output_tokens: budget.max_output_tokens,
    };
    let remaining = UsageLimits {
        requests: left(budget.max_requests, usage.requests),
        input_tokens: left(budget.max_input_tokens, usage.input_tokens),
        output_tokens: left(budget.max_output_tokens, usage.output_tokens),
    };
    (limits, remaining)
}

pub async fn model_calls(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModelCallList>, ApiError> {
    visible(&state, &caller, &id).await?;
    let rows = state.store().model_calls(&id).await?;
    Ok(Json(ModelCallList {
        model_calls: rows.into_iter().map(call_view).collect(),
    }))
}

pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<UsageView>, ApiError> {
    let usage = state.store().model_usage_of_user(&caller.token.id).await?;
    let (limits, remaining) =
        limits_and_remaining(&state.config().gateway.budgets.per_user, &usage);
    Ok(Json(UsageView {
        user_id: caller.token.id,
        usage,
        limits,
        remaining,
    }))
}

/// `GET /metrics`, admin tokens only (the figures span every user).
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if !caller.token.is_admin {
        return Err(ApiError::forbidden("metrics need an admin token"));
    }
    let snapshot = MetricsSnapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        executions: state.store().count_executions_by_status().await?,
        model_calls: state.store().model_call_totals().await?,
    };
    let mut response = metrics::render(&snapshot).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    Ok(response)
}
