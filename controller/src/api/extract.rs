//! Request extractors whose failures use the API's error shape, never axum's
//! plain-text rejections: JSON bodies, query strings, and the bearer token.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::store::TokenInfo;

/// A JSON body. Too large → 413 `payload_too_large`; not JSON → 400
/// `malformed_json`; unknown field → 422 `unknown_field`; wrong type or missing
/// field → 422 `invalid_field`, each naming the field's path.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            let is_json = content_type
                .to_str()
                .ok()
                .and_then(|value| value.split(';').next())
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON (Content-Type: application/json)",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("the request body is over the size limit")
            } else {
                ApiError::bad_request("malformed_request", "the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body with the field path of any error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = match parsed {
        Ok(value) => value,
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            return Err(json_error(&path, &inner));
        }
    };
    deserializer.end().map_err(|err| json_error(".", &err))?;
    Ok(value)
}

fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let position = json!({ "line": err.line(), "column": err.column() });
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {err}"),
        )
        .with_details(position),
        Category::Data => {
            let text = err.to_string();
            let message = text.split(" at line ").next().unwrap_or(&text).to_string();
            let field = if path == "." {
                String::new()
            } else {
                path.to_string()
            };
            let code = if message.starts_with("unknown field") {
                "unknown_field"
            } else {
                "invalid_field"
            };
            ApiError::unprocessable(
                code,
                if field.is_empty() {
                    message.clone()
                } else {
                    format!("{field}: {message}")
                },
            )
            .with_details(json!({ "field": field, "reason": message }))
        }
    }
}

/// A query string; a bad one → 400 `invalid_query`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// Path parameters; a bad one (say, invalid UTF-8 in `%FF`) → 400 `invalid_path`.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::bad_request("invalid_path", rejection.body_text()))
    }
}

/// The authenticated caller: a valid `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: TokenInfo,
}

impl Caller {
    /// The owner filter for reads: admins see every execution, others their own.
    pub fn owner_scope(&self) -> Option<&str> {
        if self.token.is_admin {
            None
        } else {
            Some(&self.token.id)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing bearer token (Authorization: Bearer <token>)",
            ));
        };
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or_default();
        match state.store().verify_token(presented).await? {
            Some(token) => Ok(Caller { token }),
            None => {
                // Not written to the audit log: unauthenticated callers must not be able to grow it.
                tracing::info!(method = %parts.method, path = parts.uri.path(), "rejected an invalid bearer token");
                Err(ApiError::unauthorized("invalid bearer token"))
            }
        }
    }
}
