//! The route handlers and their JSON bodies. Request bodies deny unknown
//! fields; response bodies are the documented shapes of `docs/api.md` (the
//! CLI deserializes the same types).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use protocol::ExecutionEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{AppState, stream};
use crate::intake::{self, FileDiagnostic, Submission};
use crate::launcher::{ApprovalError, CancelOutcome, Decision};
use crate::store::{
    ApprovalDecision, ApprovalRecord, ArtifactInfo, AuditEntry, Execution, ExecutionFilter,
    ExecutionStatus, ModelUsage, StoreError,
};

/// Default and largest page sizes.
const DEFAULT_PAGE: u32 = 50;
const DEFAULT_EVENTS_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Longest approval message kept.
const MAX_APPROVAL_MESSAGE_BYTES: usize = 4096;

/// `POST /api/v1/executions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Recipe YAML text. Exactly one of `recipe` and `gallery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Name of a gallery recipe, e.g. `hello-world`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gallery: Option<String>,
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Extra files (sub-recipes) by name.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// `202` answer to a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: String,
    pub status: ExecutionStatus,
    pub stream_url: String,
    pub events_url: String,
    /// Warning diagnostics (errors would have given 422).
    pub warnings: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionLinks {
    #[serde(rename = "self")]
    pub self_url: String,
    pub events: String,
    pub stream: String,
    pub artifacts: String,
}

/// An execution as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub id: String,
    pub status: ExecutionStatus,
    pub status_detail: Option<String>,
    pub class: String,
    pub gallery: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub deadline_at_ms: Option<i64>,
    pub links: ExecutionLinks,
    /// Only on `GET /executions/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<ApprovalView>>,
    /// Only on `GET /executions/{id}`: the model calls of the execution's
    /// agent steps, from the store (every admitted call counts as a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_usage: Option<ModelUsageView>,
}

/// Model usage of one execution, in total and per step (steps that made a call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelUsageView {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub steps: BTreeMap<String, ModelUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub stage: String,
    pub prompt: String,
    pub timeout_secs: Option<u64>,
    pub default: Option<ApprovalDecision>,
    pub requested_at_ms: i64,
    pub pending: bool,
    pub decision: Option<ApprovalDecision>,
    pub decided_by: Option<String>,
    pub message: Option<String>,
    pub decided_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub after: Option<u64>,
}

/// `GET /executions/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<ExecutionEvent>,
    /// Pass as `after` for the next page (the last seq returned, or the `after` given).
    pub next_after: u64,
    /// Status when the page was read; when final and `events` is shorter than `limit`, the log is complete.
    pub status: ExecutionStatus,
}

/// `POST /executions/{id}/approvals/{stage}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    pub decision: ApprovalDecision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /validate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    pub recipe: String,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validated {
    pub valid: bool,
    /// Every diagnostic, each with `file`, `code`, `severity`, `message`, `path`, `line`, `column`, `span`.
    pub diagnostics: Vec<serde_json::Value>,
}

fn links(id: &str) -> ExecutionLinks {
    let base = format!("/api/v1/executions/{id}");
    ExecutionLinks {
        events: format!("{base}/events"),
        stream: format!("{base}/stream"),
        artifacts: format!("{base}/artifacts"),
        self_url: base,
    }
}

fn view(execution: Execution) -> ExecutionView {
    ExecutionView {
        links: links(&execution.id),
        id: execution.id,
        status: execution.status,
        status_detail: execution.status_detail,
        class: execution.class,
        gallery: execution.gallery_name,
        created_at_ms: execution.created_at_ms,
        started_at_ms: execution.started_at_ms,
        finished_at_ms: execution.finished_at_ms,
        deadline_at_ms: execution.deadline_at_ms,
        recipe: None,
        inputs: None,
        files: None,
        approvals: None,
        model_usage: None,
    }
}

fn approval_view(record: ApprovalRecord) -> ApprovalView {
    ApprovalView {
        pending: record.decision.is_none(),
        stage: record.stage,
        prompt: record.prompt,
        timeout_secs: record.timeout_secs,
        default: record.default_decision,
        requested_at_ms: record.requested_at_ms,
        decision: record.decision,
        decided_by: record.decided_by,
        message: record.message,
        decided_at_ms: record.decided_at_ms,
    }
}

fn diagnostics_json(diagnostics: &[FileDiagnostic]) -> Vec<serde_json::Value> {
    diagnostics
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or_default())
        .collect()
}

/// The execution if the caller may see it; otherwise 404, exactly as if it did not exist.
pub(super) async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Execution, ApiError> {
    state
        .store()
        .get_execution(id, caller.owner_scope())
        .await?
        .ok_or_else(|| ApiError::not_found("execution").with_details(json!({ "id": id })))
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    execution_id: &str,
    detail: serde_json::Value,
) {
    let entry = AuditEntry {
        actor: caller.token.id.clone(),
        action: action.to_string(),
        execution_id: Some(execution_id.to_string()),
        detail: detail.to_string(),
    };
    if let Err(err) = state.store().audit(&entry).await {
        tracing::error!(error = %err, action, execution_id, "cannot write the audit log");
    }
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = match state.store().ping().await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "readyz: store unavailable");
            false
        }
    };
    let docker_ok = match (state.inner.docker_ready)().await {
        Ok(()) => true,
        Err(cause) => {
            tracing::warn!(%cause, "readyz: docker unavailable");
            false
        }
    };
    let word = |is_ok: bool| if is_ok { "ok" } else { "unavailable" };
    let is_ready = store_ok && docker_ok;
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if is_ready { "ready" } else { "not_ready" },
        "checks": { "store": word(store_ok), "docker": word(docker_ok) },
    });
    (status, Json(body)).into_response()
}

pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let submission = Submission {
        recipe: body.recipe,
        gallery: body.gallery,
        inputs: body.inputs,
        files: body.files,
        class: body.class,
    };
    let config = state.shared_config();
    let gallery = state.gallery().clone();
    let owner = caller.token.id.clone();
    let known_agents = intake::known_agents_of(state.gateway().map(AsRef::as_ref));
    // recipe::check and the gallery reads are CPU and file work: off the async threads.
    let accepted = tokio::task::spawn_blocking(move || {
        intake::check_submission_with_agents(&config, &gallery, &known_agents, submission, &owner)
    })
    .await
    .map_err(|err| ApiError::internal(&err))??;
    let execution = state.store().create_execution(accepted.execution).await?;
    audit(
        &state,
        &caller,
        "execution_submitted",
        &execution.id,
        json!({ "class": execution.class }),
    )
    .await;
    state.control().wake();
    let links = links(&execution.id);
    let submitted = Submitted {
        id: execution.id,
        status: execution.status,
        stream_url: links.stream,
        events_url: links.events,
        warnings: diagnostics_json(&accepted.warnings),
    };
    Ok((StatusCode::ACCEPTED, Json(submitted)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ExecutionList>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(ExecutionStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown status {text:?}")).with_details(json!({
                "field": "status",
                "allowed": ExecutionStatus::ALL.iter().map(|status| status.as_str()).collect::<Vec<_>>(),
            }))
        })?),
    };
    let filter = ExecutionFilter {
        owner_token_id: caller.owner_scope().map(str::to_string),
        status,
        cursor: query.cursor,
        limit: query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
    };
    let page = state.store().list_executions(&filter).await?;
    Ok(Json(ExecutionList {
        executions: page.items.into_iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ExecutionView>, ApiError> {
    let execution = visible(&state, &caller, &id).await?;
    let approvals = state.store().list_approvals(&id).await?;
    let recipe = execution.recipe_source.clone();
    let inputs = execution.inputs.clone();
    let files = execution.files.keys().cloned().collect();
    let mut view = view(execution);
    view.recipe = Some(recipe);
    view.inputs = Some(inputs);
    view.files = Some(files);
    view.approvals = Some(approvals.into_iter().map(approval_view).collect());
    let (total, steps) = state.store().model_usage_of_execution(&id).await?;
    view.model_usage = Some(ModelUsageView {
        requests: total.requests,
        input_tokens: total.input_tokens,
        output_tokens: total.output_tokens,
        steps,
    });
    Ok(Json(view))
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    // Status first: if it is final, every event is already stored.
    let execution = visible(&state, &caller, &id).await?;
    let after = query.after.unwrap_or(0);
    let limit = query
        .limit
        .unwrap_or(DEFAULT_EVENTS_PAGE)
        .clamp(1, MAX_PAGE);
    let events = state.store().events_after(&id, after, limit).await?;
    let next_after = events.last().map_or(after, |event| event.seq);
    Ok(Json(EventsPage {
        events,
        next_after,
        status: execution.status,
    }))
}

pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    visible(&state, &caller, &id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            rejection.body_text(),
        )
    })?;
    let after = query.after.unwrap_or(0);
    Ok(upgrade
        .max_message_size(stream::MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| stream::watch(state, id, after, socket)))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let execution = visible(&state, &caller, &id).await?;
    if execution.status.is_final() {
        return Err(ApiError::conflict(
            "execution_finished",
            format!("execution {id} already finished as {}", execution.status),
        ));
    }
    audit(
        &state,
        &caller,
        "execution_cancelled",
        &id,
        json!({ "status_before": execution.status }),
    )
    .await;
    let status = match state.control().cancel(&id).await {
        CancelOutcome::Signalled => execution.status,
        CancelOutcome::NotRunning => {
            // Still queued: it never gets a container. (If the launcher claimed
            // it meanwhile, Control cancels it before anything is created.)
            let detail = Some("cancelled before it started");
            if state
                .store()
                .transition_status(
                    &id,
                    ExecutionStatus::Queued,
                    ExecutionStatus::Cancelled,
                    detail,
                )
                .await?
            {
                state.hub().finish(&id);
                ExecutionStatus::Cancelled
            } else {
                current_status(&state, &id).await?
            }
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "status": status })),
    ))
}

async fn current_status(state: &AppState, id: &str) -> Result<ExecutionStatus, ApiError> {
    let execution = state.store().get_execution(id, None).await?;
    Ok(execution.map_or(ExecutionStatus::Cancelled, |execution| execution.status))
}

pub async fn decide_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, stage)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if body
        .message
        .as_ref()
        .is_some_and(|message| message.len() > MAX_APPROVAL_MESSAGE_BYTES)
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("message: longer than {MAX_APPROVAL_MESSAGE_BYTES} bytes"),
        )
        .with_details(json!({ "field": "message" })));
    }
    let execution = visible(&state, &caller, &id).await?;
    if let Some(ApprovalRecord {
        decision: Some(decision),
        ..
    }) = state.store().get_approval(&id, &stage).await?
    {
        return Err(already_decided(&id, &stage, decision));
    }
    if execution.status.is_final() {
        return Err(ApiError::conflict(
            "execution_finished",
            format!("execution {id} already finished as {}", execution.status),
        ));
    }
    let decision = Decision {
        approve: body.decision == ApprovalDecision::Approve,
        message: body.message.clone(),
        by: caller.token.id.clone(),
    };
    state
        .control()
        .decide_approval(&id, &stage, decision)
        .await
        .map_err(|err| match err {
            ApprovalError::NotPending { .. } => ApiError::conflict(
                "not_pending",
                format!("execution {id} has no approval gate waiting at stage {stage:?}"),
            ),
            ApprovalError::AlreadyDecided { .. } => ApiError::conflict(
                "already_decided",
                format!("approval gate {stage:?} of execution {id} was already decided"),
            ),
        })?;
    match state
        .store()
        .decide_approval(
            &id,
            &stage,
            body.decision,
            &caller.token.id,
            body.message.as_deref(),
        )
        .await
    {
        Ok(_) | Err(StoreError::ApprovalNotFound { .. }) => {}
        // The launcher's session records the same decision when it forwards it.
        Err(StoreError::ApprovalAlreadyDecided { decision, .. }) if decision == body.decision => {}
        Err(StoreError::ApprovalAlreadyDecided { decision, .. }) => {
            tracing::warn!(execution_id = %id, %stage, stored = %decision, "gate already decided otherwise in the store");
        }
        Err(err) => return Err(err.into()),
    }
    audit(
        &state,
        &caller,
        "approval_decided",
        &id,
        json!({ "stage": stage, "decision": body.decision, "message": body.message }),
    )
    .await;
    Ok(Json(
        json!({ "id": id, "stage": stage, "decision": body.decision, "by": caller.token.id }),
    ))
}

fn already_decided(id: &str, stage: &str, decision: ApprovalDecision) -> ApiError {
    ApiError::conflict(
        "already_decided",
        format!("approval gate {stage:?} of execution {id} was already decided: {decision}"),
    )
    .with_details(json!({ "reason": "already_decided", "decision": decision }))
}

pub async fn list_artifacts(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    visible(&state, &caller, &id).await?;
    let artifacts = state.store().list_artifacts(&id).await?;
    let items: Vec<_> = artifacts
        .iter()
        .map(|artifact: &ArtifactInfo| {
            json!({
                "name": artifact.name,
                "size_bytes": artifact.size_bytes,
                "sha256": artifact.sha256,
                "created_at_ms": artifact.created_at_ms,
                "url": format!("/api/v1/executions/{id}/artifacts/{}", artifact.name),
            })
        })
        .collect();
    Ok(Json(json!({ "artifacts": items })))
}

pub async fn get_artifact(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    visible(&state, &caller, &id).await?;
    let Some((info, content)) = state.store().get_artifact(&id, &name).await? else {
        return Err(ApiError::not_found("artifact").with_details(json!({ "id": id, "name": name })));
    };
    let mut response = content.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let disposition = format!("attachment; filename=\"{}\"", download_name(&info.name));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&info.sha256) {
        headers.insert("x-kiln-sha256", value);
    }
    Ok(response)
}

/// The last path segment with anything but `[A-Za-z0-9._-]` replaced, so a
/// hostile artifact name cannot shape the header.
fn download_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "artifact".to_string()
    } else {
        cleaned
    }
}

pub async fn validate(
    State(state): State<AppState>,
    _caller: Caller,
    ApiJson(body): ApiJson<ValidateBody>,
) -> Result<Json<Validated>, ApiError> {
    intake::check_sizes(state.config(), Some(&body.recipe), None, &body.files)?;
    let gallery = state.gallery().clone();
    let has_providers = state.config().gateway.has_providers();
    let known_agents = intake::known_agents_of(state.gateway().map(AsRef::as_ref));
    let diagnostics = tokio::task::spawn_blocking(
        move || -> Result<Vec<FileDiagnostic>, intake::IntakeError> {
            let gallery_files = gallery.file_names()?;
            let mut diagnostics = intake::check_recipe_files_with_agents(
                "recipe",
                &body.recipe,
                &body.files,
                &gallery_files,
                &known_agents,
            );
            if !has_providers {
                // Validation judges the recipe; the server's missing
                // provider is only a warning here (submitting refuses it).
                diagnostics.extend(intake::no_model_provider_diagnostics(
                    "recipe",
                    &body.recipe,
                    &body.files,
                    recipe::diagnostic::Severity::Warning,
                ));
            }
            Ok(diagnostics)
        },
    )
    .await
    .map_err(|err| ApiError::internal(&err))??;
    let valid = !diagnostics.iter().any(|item| item.diagnostic.is_error());
    Ok(Json(Validated {
        valid,
        diagnostics: diagnostics_json(&diagnostics),
    }))
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found("route")
        .with_details(json!({ "method": method.as_str(), "path": uri.path() }))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
