//! Stage: start-up and shutdown. `kiln serve` (and the embedded controller of
//! `kiln run`) in the order the style guide asks for:
//!
//! 1. configuration, read and validated by the caller before anything else,
//!    then the model gateway (provider keys loaded, one HTTP client each);
//! 2. the data and run directories, the store, migrations;
//! 3. the admin token on first start (shown once, only its hash is stored);
//! 4. Docker, and the host preflight (Docker, runc, kernel and runsc versions
//!    against known escapes; `--strict` refuses to start on a critical finding);
//! 5. restart reconciliation (take back, finish, reap);
//! 6. the queue and the periodic reaper;
//! 7. the API on its listener.
//!
//! Shutdown (SIGTERM/SIGINT or the caller's token): cancel → the queue stops
//! claiming, sessions detach from their agents (containers keep running and
//! the next start takes them back) → drain with a grace period → log what
//! did not finish.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, ReadinessCheck};
use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use crate::launcher::{Control, Launcher, Tasks};
use crate::queue::Slots;
use crate::reconcile::ReconcileReport;
use crate::relay::{Hub, Relay};
use crate::sandbox::{Sandbox, SandboxError, preflight};
use crate::store::{Store, StoreError};

/// How long shutdown waits for tasks to finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open the store")]
    OpenStore(#[source] StoreError),
    #[error("create the admin token")]
    BootstrapToken(#[source] StoreError),
    #[error("load the model usage recorded so far")]
    SeedModelUsage(#[source] StoreError),
    #[error("record a model call the previous run left open")]
    RecordInterruptedCall(#[source] crate::relay::RelayError),
    #[error("connect to docker")]
    ConnectDocker(#[source] SandboxError),
    #[error("read or write the instance id {path}")]
    InstanceId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host preflight")]
    Preflight(#[source] crate::sandbox::preflight::PreflightError),
    #[error("reconcile after restart")]
    Reconcile(#[source] crate::reconcile::ReconcileError),
    #[error("set up the model gateway")]
    Gateway(#[source] GatewayError),
}

/// A started controller: everything runs except the API listener.
pub struct Controller {
    pub state: AppState,
    pub launcher: Launcher,
    pub tasks: Tasks,
    /// The admin token, when this start created it (show it once).
    pub new_admin_token: Option<String>,
    pub reconciled: ReconcileReport,
}

/// How to start, beyond the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Refuse to start when the host preflight has a critical finding.
    pub strict_preflight: bool,
}

/// [`start_with`] with the default options (preflight findings are logged only).
pub async fn start(
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<Controller, StartError> {
    start_with(config, shutdown, StartOptions::default()).await
}

/// Steps 2-6 of the start-up story. `config` is already validated; the
/// gateway's keys are read from the process environment (or their files).
pub async fn start_with(
    config: Arc<Config>,
    shutdown: CancellationToken,
    options: StartOptions,
) -> Result<Controller, StartError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let gateway = build_gateway(&config, &env)?;
    start_with_gateway(config, shutdown, options, gateway).await
}

/// The model gateway of `config`: keys loaded from `env` or their files, one
/// HTTP client per provider, the configured agent profiles. Built once, before
/// Docker; every execution's session shares it.
pub fn build_gateway(
    config: &Config,
    env: &BTreeMap<String, String>,
) -> Result<Arc<Gateway>, StartError> {
    let profiles = config
        .gateway
        .load_profiles()
        .map_err(|error| StartError::Gateway(GatewayError::Config(error)))?;
    Gateway::new(config.gateway.clone(), profiles, env)
        .map(Arc::new)
        .map_err(StartError::Gateway)
}

/// Model calls a previous run left open (it was killed) are marked
/// `interrupted`, with a `model_call_finished` event for those of unfinished
/// executions, so no call stays open in the store or in the events (an agent
/// taken back resends its unanswered requests, which start new calls). Then
/// the budget ledger gets every user's usage and that of every unfinished
/// execution, so a restart never resets a budget.
async fn seed_model_usage(
    store: &Store,
    hub: &Hub<protocol::ExecutionEvent>,
    gateway: &Gateway,
) -> Result<(), StartError> {
    let interrupted = store
        .interrupt_running_model_calls(crate::store::now_ms())
        .await
        .map_err(StartError::SeedModelUsage)?;
    let unfinished = store
        .list_unfinished()
        .await
        .map_err(StartError::SeedModelUsage)?;
    if !interrupted.is_empty() {
        tracing::info!(
            n_interrupted = interrupted.len(),
            "model calls of the previous run marked interrupted"
        );
    }
    for call in interrupted {
        if !unfinished
            .iter()
            .any(|execution| execution.id == call.execution_id)
        {
            continue;
        }
        let mut relay = Relay::open(store.clone(), hub.clone(), &call.execution_id, 0)
            .await
            .map_err(StartError::RecordInterruptedCall)?;
        let event = protocol::ControllerEvent::ModelCallFinished {
            step_id: call.step_id,
            request_id: call.request_id,
            outcome: protocol::ModelCallOutcome::Interrupted,
            provider: call.provider,
            model: call.model,
            code: None,
            message: Some("the controller stopped during the call".to_owned()),
            input_tokens: 0,
            output_tokens: 0,
            duration_ms: 0,
        };
        relay
            .record_controller(event)
            .await
            .map_err(StartError::RecordInterruptedCall)?;
    }
    let by_user = store
        .model_usage_by_user()
        .await
        .map_err(StartError::SeedModelUsage)?;
    let mut by_execution = Vec::new();
    for execution in unfinished {
        let (total, _) = store
            .model_usage_of_execution(&execution.id)
            .await
            .map_err(StartError::SeedModelUsage)?;
        by_execution.push((execution.id, total));
    }
    let mut ledger = gateway
        .ledger()
        .lock()
        .expect("budget ledger lock poisoned");
    for (user, usage) in by_user {
        ledger.load_user(&user, budget_usage(usage));
    }
    for (execution, usage) in by_execution {
        ledger.load_execution(&execution, budget_usage(usage));
    }
    Ok(())
}

fn budget_usage(usage: crate::store::ModelUsage) -> crate::gateway::BudgetUsage {
    crate::gateway::BudgetUsage {
        requests: usage.requests,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    }
}

/// [`start_with`] with a gateway the caller built (tests pass a canary key
/// through a map instead of the process environment).
pub async fn start_with_gateway(
    config: Arc<Config>,
    shutdown: CancellationToken,
    options: StartOptions,
    gateway: Arc<Gateway>,
) -> Result<Controller, StartError> {
    let data_dir = &config.server.data_dir;
    create_dir(data_dir, 0o700)?;
    // The agent only needs `x` on the run dir to reach its own socket dir.
    create_dir(&config.server.run_dir, 0o711)?;
    let instance = instance_id(data_dir)?;

    let store = Store::open_sqlite(&config.database_path(), config.limits.max_artifact_bytes)
        .await
        .map_err(StartError::OpenStore)?;
    let new_admin_token = store
        .bootstrap_admin_token()
        .await
        .map_err(StartError::BootstrapToken)?;

    let hub = Hub::default();
    seed_model_usage(&store, &hub, &gateway).await?;

    let sandbox = Sandbox::connect()
        .await
        .map_err(StartError::ConnectDocker)?;
    let is_runsc_configured = config
        .sandbox
        .classes
        .values()
        .any(|class| class.runtime == crate::config::RuntimeKind::Runsc);
    let host = preflight::gather(&sandbox, is_runsc_configured).await;
    let findings = preflight::assess(&host);
    preflight::log_findings(&findings);
    preflight::decide(&findings, options.strict_preflight).map_err(StartError::Preflight)?;
    let control = Control::new();
    let launcher = Launcher::new(
        Arc::clone(&config),
        store.clone(),
        sandbox.clone(),
        hub.clone(),
        control.clone(),
        instance.clone(),
        Arc::clone(&gateway),
    );
    let tasks = Tasks::new(shutdown);
    let slots = Slots::new(config.queue.concurrency);

    let reconciled = crate::reconcile::reconcile(&launcher, &slots, &tasks)
        .await
        .map_err(StartError::Reconcile)?;
    tracing::info!(
        queued = reconciled.n_queued,
        taken_back = reconciled.taken_back.len(),
        finished = reconciled.finished.len(),
        containers_reaped = reconciled.n_containers_reaped,
        socket_dirs_reaped = reconciled.n_socket_dirs_reaped,
        "reconciled"
    );

    tasks.spawn(
        tracing::info_span!("queue"),
        crate::queue::run(launcher.clone(), slots, tasks.clone()),
    );
    tasks.spawn(
        tracing::info_span!("reaper"),
        crate::reconcile::reap_periodically(launcher.clone(), tasks.clone()),
    );

    let readiness_sandbox = sandbox.clone();
    let readiness_instance = instance.clone();
    let docker_ready: ReadinessCheck = Arc::new(move || {
        let sandbox = readiness_sandbox.clone();
        let instance = readiness_instance.clone();
        async move {
            sandbox
                .list_labelled(&instance)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
        .boxed()
    });
    // Live watchers close with 1012 and their resume point on shutdown.
    let state = AppState::new(config, store, hub, control, docker_ready)
        .with_shutdown(tasks.shutdown_token())
        .with_gateway(gateway);
    Ok(Controller {
        state,
        launcher,
        tasks,
        new_admin_token,
        reconciled,
    })
}

/// Step 7 and the shutdown: serve the API on `listener` until `shutdown` is
/// cancelled, then drain.
pub async fn serve(
    controller: Controller,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let shutdown = controller.tasks.shutdown_token();
    let app = crate::api::app(controller.state.clone());
    let server_shutdown = shutdown.clone();
    // No Nagle: live events are small WebSocket frames that must not wait
    // for the previous one's ACK (up to 40 ms with delayed ACKs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
        .await;
    shutdown.cancel();
    drain(&controller.tasks).await;
    served
}

/// Wait for the tasks with [`DRAIN_GRACE`]; log what did not finish.
pub async fn drain(tasks: &Tasks) {
    if tasks.drain(DRAIN_GRACE).await {
        tracing::info!("all tasks finished");
    } else {
        tracing::warn!(
            unfinished = tasks.n_running(),
            "tasks still running after the grace period; the next start reconciles them"
        );
    }
}

/// Cancel `shutdown` on SIGTERM or SIGINT.
pub fn cancel_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
}

fn create_dir(path: &Path, mode: u32) -> Result<(), StartError> {
    let error = |source| StartError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)
}

/// This controller's `kiln.instance` label: random once, kept in the data dir,
/// so a restart recognises its own containers.
fn instance_id(data_dir: &Path) -> Result<String, StartError> {
    let path = data_dir.join("instance-id");
    let error = |source| StartError::InstanceId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(error(std::io::Error::other("empty instance id file"))),
        Err(read_error) if read_error.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("kiln-{}", &hex::encode(rand::random::<[u8; 8]>()));
            std::fs::write(&path, &id).map_err(error)?;
            Ok(id)
        }
        Err(read_error) => Err(error(read_error)),
    }
}
