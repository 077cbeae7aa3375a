//! Stage: user/web → **api** → intake → store → queue (via [`Control::wake`]).
//!
//! The HTTP and WebSocket API, `/api/v1`, documented route by route in
//! `docs/api.md`. Only this module knows HTTP status codes. Every route but
//! the health checks needs `Authorization: Bearer <token>` (`/metrics` an
//! admin one); an execution is visible only to the token that submitted it
//! (and to admin tokens), and to anyone else it does not exist (404).

pub mod error;
pub mod executions;
pub mod extract;
pub mod stream;
pub mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use futures::future::BoxFuture;
use protocol::ExecutionEvent;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::intake::Gallery;
use crate::launcher::Control;
use crate::relay::Hub;
use crate::store::Store;

pub use error::ApiError;
pub use executions::{
    ApprovalBody, EventsPage, ExecutionLinks, ExecutionList, ExecutionView, SubmitBody, Submitted,
    ValidateBody, Validated,
};
pub use stream::{CLOSE_LAGGED, StreamMessage};
pub use usage::{ModelCallList, ModelCallView, UsageLimits, UsageView};

/// Checks that Docker answers, for `/readyz`. `Err` carries a cause for the log only.
/// Built by `serve` around `controller::sandbox`, so the API never imports bollard.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    config: Arc<Config>,
    store: Store,
    hub: Hub<ExecutionEvent>,
    control: Control,
    gallery: Gallery,
    docker_ready: ReadinessCheck,
    /// Cancelled when the server stops: live watchers then close with 1012.
    shutdown: CancellationToken,
    /// The model gateway, when one is configured.
    gateway: Option<Arc<Gateway>>,
}

impl AppState {
    /// `config` must be validated already; the gallery is `config.server.gallery_dir`.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        hub: Hub<ExecutionEvent>,
        control: Control,
        docker_ready: ReadinessCheck,
    ) -> AppState {
        let gallery = Gallery::new(config.server.gallery_dir.clone());
        AppState {
            inner: Arc::new(StateInner {
                config,
                store,
                hub,
                control,
                gallery,
                docker_ready,
                shutdown: CancellationToken::new(),
                gateway: None,
            }),
        }
    }

    /// The same state, whose live WebSocket watchers close with code 1012
    /// ("server stopping; resume with after=N") when `shutdown` is cancelled.
    /// (axum's graceful shutdown does not wait for upgraded connections.)
    pub fn with_shutdown(self, shutdown: CancellationToken) -> AppState {
        let inner = &self.inner;
        AppState {
            inner: Arc::new(StateInner {
                config: Arc::clone(&inner.config),
                store: inner.store.clone(),
                hub: inner.hub.clone(),
                control: inner.control.clone(),
                gallery: inner.gallery.clone(),
                docker_ready: Arc::clone(&inner.docker_ready),
                shutdown,
                gateway: inner.gateway.clone(),
            }),
        }
    }

    /// The same state, with the model gateway (usage figures come from the
    /// store, not from the gateway's in-memory ledger).
    pub fn with_gateway(self, gateway: Arc<Gateway>) -> AppState {
        let inner = &self.inner;
        AppState {
            inner: Arc::new(StateInner {
                config: Arc::clone(&inner.config),
                store: inner.store.clone(),
                hub: inner.hub.clone(),
                control: inner.control.clone(),
                gallery: inner.gallery.clone(),
                docker_ready: Arc::clone(&inner.docker_ready),
                shutdown: inner.shutdown.clone(),
                gateway: Some(gateway),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hub(&self) -> &Hub<ExecutionEvent> {
        &self.inner.hub
    }

    pub fn control(&self) -> &Control {
        &self.inner.control
    }

    pub fn gallery(&self) -> &Gallery {
        &self.inner.gallery
    }

    pub fn gateway(&self) -> Option<&Arc<Gateway>> {
        self.inner.gateway.as_ref()
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    fn shared_config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.config)
    }
}

/// The whole API as a router (serve it with `axum::serve`).
pub fn app(state: AppState) -> Router {
    let body_limit = state.config().limits.request_body_bytes();
    Router::new()
        .route("/healthz", get(executions::healthz))
        .route("/readyz", get(executions::readyz))
        .route(
            "/api/v1/executions",
            post(executions::submit).get(executions::list),
        )
        .route("/api/v1/executions/{id}", get(executions::get_one))
        .route("/api/v1/executions/{id}/events", get(executions::events))
        .route("/api/v1/executions/{id}/stream", get(executions::stream))
        .route("/api/v1/executions/{id}/cancel", post(executions::cancel))
        .route(
            "/api/v1/executions/{id}/approvals/{stage}",
            post(executions::decide_approval),
        )
        .route(
            "/api/v1/executions/{id}/artifacts",
            get(executions::list_artifacts),
        )
        .route(
            "/api/v1/executions/{id}/artifacts/{*name}",
            get(executions::get_artifact),
        )
        .route(
            "/api/v1/executions/{id}/model-calls",
            get(usage::model_calls),
        )
        .route("/api/v1/usage", get(usage::usage))
        .route("/api/v1/validate", post(executions::validate))
        .route("/metrics", get(usage::metrics))
        .fallback(executions::no_route)
        .method_not_allowed_fallback(executions::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
