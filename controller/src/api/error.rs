//! API errors: the one place that turns failures into HTTP statuses.
//!
//! Every error body has the same shape:
//! `{"error": {"code": "not_found", "message": "...", "details": {...}}}`.
//! 4xx errors say precisely what was wrong; a 5xx says only "internal error"
//! and a request id, and the cause (SQL, Docker, I/O) goes to the log alone.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::intake::IntakeError;
use crate::store::StoreError;

/// An error response. Build 4xx with the constructors; 5xx with [`ApiError::internal`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// A 500 whose cause is logged under a fresh request id and never shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(%request_id, cause = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
        .with_details(json!({ "request_id": request_id }))
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
            .with_details(json!({ "reason": reason }))
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"kiln\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match &err {
            StoreError::ExecutionNotFound { .. } => ApiError::not_found("execution"),
            StoreError::InvalidCursor { .. } => ApiError::bad_request(
                "invalid_query",
                "invalid `cursor`: pass the `next_cursor` of a previous page",
            ),
            _ => ApiError::internal(&err),
        }
    }
}

impl From<IntakeError> for ApiError {
    fn from(err: IntakeError) -> ApiError {
        let message = err.to_string();
        match err {
            IntakeError::TooLarge { what, size, max } => ApiError::payload_too_large(message)
                .with_details(json!({ "field": what, "size_bytes": size, "max_bytes": max })),
            IntakeError::TooManyFiles { count, max } => ApiError::payload_too_large(message)
                .with_details(json!({ "field": "files", "count": count, "max": max })),
            IntakeError::RecipeSourceAmbiguous => {
                ApiError::unprocessable("invalid_request", message)
            }
            IntakeError::UnknownGalleryRecipe { name } => {
                ApiError::unprocessable("unknown_gallery_recipe", message)
                    .with_details(json!({ "gallery": name }))
            }
            IntakeError::UnknownClass { name, available } => {
                ApiError::unprocessable("unknown_class", message)
                    .with_details(json!({ "class": name, "available": available }))
            }
            IntakeError::InvalidFileName { name, reason } => {
                ApiError::unprocessable("invalid_file_name", message)
                    .with_details(json!({ "file": name, "reason": reason }))
            }
            IntakeError::InvalidRecipe { diagnostics } => {
                ApiError::unprocessable("invalid_recipe", message)
                    .with_details(json!({ "diagnostics": diagnostics }))
            }
            IntakeError::ReadGallery { .. } => ApiError::internal(&message),
        }
    }
}
