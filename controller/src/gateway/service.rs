//! The [`Gateway`]: configured providers, profiles, retry policy and the
//! budget ledger behind one `call` per model request.
//!
//! Order of one call: resolve (profile + configuration) → budget check, which
//! counts the request → `max_tokens` capped to the output tokens still
//! allowed → streamed provider call with retries (then the same level's
//! fallback targets while a provider is down, failing or rate limiting and
//! nothing was streamed yet) → usage recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::budget::{BudgetExhausted, BudgetLedger};
use super::client::{BuildClientError, Completion, ProviderClient, ProviderError};
use super::config::{GatewayConfig, GatewayConfigError, LoadKeyError, load_api_keys};
use super::profiles::AgentProfiles;
use super::resolve::{Resolution, ResolveError, ResolveInput, Target, resolve};
use super::retry::{RetryClock, RetryNotice, RetryPolicy, TokioRetryClock, stream_with_retry};

/// Setting up the gateway failed (at startup, before any port is bound).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] GatewayConfigError),
    #[error(transparent)]
    LoadKey(#[from] LoadKeyError),
    #[error(transparent)]
    BuildClient(#[from] BuildClientError),
}

/// Who a call is billed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallScope {
    pub user: String,
    pub execution: String,
    pub step_id: String,
}

/// A finished call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOutcome {
    pub completion: Completion,
    pub resolution: Resolution,
}

impl CallOutcome {
    /// The final wire response for the agent.
    pub fn to_wire(&self) -> protocol::ModelResponseBody {
        protocol::ModelResponseBody::Completed {
            text: self.completion.text.clone(),
            provider: self.resolution.request.provider.clone(),
            model: self.completion.model.clone(),
            usage: protocol::ModelUsage {
                input_tokens: self.completion.usage.input_tokens,
                output_tokens: self.completion.usage.output_tokens,
            },
            finish_reason: self.completion.finish_reason.clone(),
        }
    }
}

/// A model call failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    #[error("model call to provider `{provider}` failed: {error}")]
    Provider {
        provider: String,
        /// The model id last tried at `provider`.
        model: String,
        error: ProviderError,
    },
}

impl CallError {
    /// The wire code the agent receives.
    pub fn code(&self) -> protocol::ModelErrorCode {
        use protocol::ModelErrorCode;
        match self {
            CallError::Resolve(ResolveError::NoProviders) => ModelErrorCode::Unavailable,
            CallError::Resolve(ResolveError::NoUsableModel { .. }) => ModelErrorCode::NoProvider,
            CallError::Budget(_) => ModelErrorCode::QuotaExceeded,
            CallError::Provider { error, .. } => error.code(),
        }
    }

    /// The wire error for the agent (the message never holds a key:
    /// provider messages are redacted by the client).
    pub fn to_wire(&self) -> protocol::ModelResponseBody {
        protocol::ModelResponseBody::Error {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Providers, profiles, retry policy and budgets.
pub struct Gateway {
    config: GatewayConfig,
    profiles: AgentProfiles,
    clients: BTreeMap<String, ProviderClient>,
    policy: RetryPolicy,
    clock: Arc<dyn RetryClock>,
    ledger: Mutex<BudgetLedger>,
}

impl Gateway {
    /// Validate the configuration, load every key (from `env` or files) and
    /// build one HTTP client per provider.
    pub fn new(
        config: GatewayConfig,
        profiles: AgentProfiles,
        env: &BTreeMap<String, String>,
    ) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let mut keys = load_api_keys(&config, env)?;
        let mut clients = BTreeMap::new();
        for provider in &config.providers {
            let key = keys.remove(&provider.name);
            let client =
                ProviderClient::new(provider.clone(), key, config.response_limits.clone())?;
            clients.insert(provider.name.clone(), client);
        }
        let ledger = BudgetLedger::new(config.budgets.per_user, config.budgets.per_execution);
        Ok(Gateway {
            policy: RetryPolicy::from(&config.retry),
            config,
            profiles,
            clients,
            clock: Arc::new(TokioRetryClock),
            ledger: Mutex::new(ledger),
        })
    }

    /// Replace the sleep/jitter source (tests).
    pub fn with_clock(mut self, clock: Arc<dyn RetryClock>) -> Gateway {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn profiles(&self) -> &AgentProfiles {
        &self.profiles
    }

    pub fn client(&self, provider: &str) -> Option<&ProviderClient> {
        self.clients.get(provider)
    }

    /// The ledger, for loading and saving usage figures. Never hold the
    /// guard across an `.await`.
    pub fn ledger(&self) -> &Mutex<BudgetLedger> {
        &self.ledger
    }

    /// One model call for an agent step: [`Gateway::admit`] then
    /// [`Gateway::stream`].
    pub async fn call(
        &self,
        scope: &CallScope,
        input: &ResolveInput<'_>,
        cancel: &CancellationToken,
        on_chunk: &mut (dyn FnMut(&str) + Send),
        on_retry: &mut (dyn FnMut(&RetryNotice) + Send),
    ) -> Result<CallOutcome, CallError> {
        let resolution = self.admit(scope, input)?;
        self.stream(scope, resolution, cancel, on_chunk, on_retry)
            .await
    }

    /// Resolve the call and check the budgets, which count it as one
    /// request from here on; `max_tokens` is capped to the output tokens
    /// still allowed. Nothing is sent yet.
    pub fn admit(
        &self,
        scope: &CallScope,
        input: &ResolveInput<'_>,
    ) -> Result<Resolution, CallError> {
        let mut resolution = resolve(&self.config, &self.profiles, input)?;
        let allowance = {
            let mut ledger = self.ledger.lock().expect("budget ledger lock poisoned");
            ledger.begin_call(&scope.user, &scope.execution, &scope.step_id)?;
            ledger.output_allowance(&scope.user, &scope.execution)
        };
        if let Some(allowance) = allowance {
            let allowance = u32::try_from(allowance).unwrap_or(u32::MAX).max(1);
            let params = &mut resolution.request.parameters;
            params.max_tokens = Some(params.max_tokens.map_or(allowance, |n| n.min(allowance)));
        }
        Ok(resolution)
    }

    /// Send an admitted call: the chosen target, then the same level's
    /// fallbacks while the provider is down or failing and nothing was
    /// streamed yet; the usage is recorded in the ledger.
    pub async fn stream(
        &self,
        scope: &CallScope,
        mut resolution: Resolution,
        cancel: &CancellationToken,
        on_chunk: &mut (dyn FnMut(&str) + Send),
        on_retry: &mut (dyn FnMut(&RetryNotice) + Send),
    ) -> Result<CallOutcome, CallError> {
        let mut targets = std::iter::once(Target {
            provider: resolution.request.provider.clone(),
            model: resolution.request.model.clone(),
        })
        .chain(resolution.fallbacks.clone())
        .peekable();
        let completion = loop {
            let target = targets
                .next()
                .expect("the first target is always there; later ones are peeked");
            resolution.request.provider = target.provider.clone();
            resolution.request.model = target.model.clone();
            let client = self
                .clients
                .get(&target.provider)
                .expect("resolve only chooses configured providers, and each has a client");
            let mut streamed = false;
            let mut forward = |text: &str| {
                streamed = true;
                on_chunk(text);
            };
            let result = stream_with_retry(
                client,
                &resolution.request,
                cancel,
                &self.policy,
                self.clock.as_ref(),
                &mut forward,
                on_retry,
            )
            .await;
            match result {
                Ok(completion) => break completion,
                Err(error) => {
                    let can_fall_back = !streamed
                        && matches!(
                            error,
                            ProviderError::Unreachable { .. }
                                | ProviderError::Server { .. }
                                | ProviderError::RateLimited { .. }
                        );
                    if can_fall_back && targets.peek().is_some() {
                        resolution.notes.push(format!(
                            "provider `{}` failed ({error}); trying the next preference",
                            target.provider
                        ));
                        continue;
                    }
                    return Err(CallError::Provider {
                        provider: target.provider,
                        model: target.model,
                        error,
                    });
                }
            }
        };
        self.ledger
            .lock()
            .expect("budget ledger lock poisoned")
            .record(
                &scope.user,
                &scope.execution,
                &scope.step_id,
                completion.usage.input_tokens,
                completion.usage.output_tokens,
            );
        Ok(CallOutcome {
            completion,
            resolution,
        })
    }
}
