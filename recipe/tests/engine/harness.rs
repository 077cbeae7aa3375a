//! A scripted fake `StepRunner` on paused tokio time, plus helpers that run a
//! recipe and turn its events into one short line each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recipe::engine::{self, Checkpoint, RunOutcome};
use recipe::event::{Decision, Event, EventSink, SkipReason};
use recipe::model::Recipe;
use recipe::runner::{
    AgentOutcome, AgentRequest, ApprovalDecision, ApprovalRequest, BashOutcome, BashRequest,
    BoxFuture, RunnerError, SessionInfo, StepIo, StepRunner,
};
use recipe::{CheckOptions, check};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub const HEADER: &str = "name: test-recipe\ndescription: a test\nversion: 1.0.0\n";

/// Parse a recipe that must be free of errors.
pub fn load(source: &str) -> Recipe {
    let checked = check(source, &CheckOptions::default());
    let errors: Vec<String> = checked
        .errors()
        .map(|d| format!("{} {}", d.path, d.message))
        .collect();
    assert!(
        errors.is_empty(),
        "recipe has errors: {errors:#?}\n{source}"
    );
    checked.recipe.expect("a recipe without errors has a model")
}

/// Parse a recipe whose validation errors are deliberate (runtime checks).
pub fn load_lenient(source: &str) -> Recipe {
    check(source, &CheckOptions::default())
        .recipe
        .expect("the YAML must still produce a model")
}

pub fn flat(steps: &str) -> Recipe {
    load(&format!("{HEADER}steps:\n{steps}"))
}

pub fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => panic!("not a mapping: {other}"),
    }
}

/// A scripted reply.
pub struct Reply<T> {
    pub result: Result<T, RunnerError>,
    pub delay: Duration,
    /// Chunks streamed as stdout before the result.
    pub chunks: Vec<String>,
}

impl<T> Reply<T> {
    pub fn ok(value: T) -> Reply<T> {
        Reply {
            result: Ok(value),
            delay: Duration::ZERO,
            chunks: Vec::new(),
        }
    }

    pub fn err(message: &str) -> Reply<T> {
        Reply {
            result: Err(RunnerError::Failed {
                message: message.to_string(),
            }),
            delay: Duration::ZERO,
            chunks: Vec::new(),
        }
    }

    pub fn after(mut self, secs: f64) -> Reply<T> {
        self.delay = Duration::from_secs_f64(secs);
        self
    }
}

pub fn text(value: &str) -> Reply<AgentOutcome> {
    Reply::ok(AgentOutcome {
        output: Value::String(value.to_string()),
    })
}

pub fn exit(code: i32, stdout: &str) -> Reply<BashOutcome> {
    Reply::ok(BashOutcome {
        exit_code: code,
        stdout: stdout.to_string(),
        stderr: if code == 0 {
            String::new()
        } else {
            "boom".to_string()
        },
        ..BashOutcome::default()
    })
}

type AgentFn = Box<dyn Fn(&AgentRequest, usize) -> Reply<AgentOutcome> + Send + Sync>;
type BashFn = Box<dyn Fn(&BashRequest, usize) -> Reply<BashOutcome> + Send + Sync>;

/// How the fake answers an approval request.
#[derive(Clone)]
pub enum Plan {
    Decide(ApprovalDecision, Duration),
    Never,
}

pub fn approve(message: &str) -> Plan {
    Plan::Decide(
        ApprovalDecision {
            decision: Decision::Approve,
            by: "alice".into(),
            message: message.into(),
        },
        Duration::from_secs(1),
    )
}

pub fn deny(message: &str) -> Plan {
    Plan::Decide(
        ApprovalDecision {
            decision: Decision::Deny,
            by: "bob".into(),
            message: message.into(),
        },
        Duration::from_secs(1),
    )
}

pub struct Fake {
    agent_fn: AgentFn,
    bash_fn: BashFn,
    pub recipes: Mutex<BTreeMap<String, String>>,
    pub plans: Mutex<VecDeque<Plan>>,
    pub agent_calls: Mutex<Vec<AgentRequest>>,
    pub bash_calls: Mutex<Vec<BashRequest>>,
    pub approval_requests: Mutex<Vec<ApprovalRequest>>,
    pub checkpoints: Mutex<Vec<Checkpoint>>,
    pub cancelled_steps: Mutex<Vec<String>>,
    /// Every step's cancellation token, by step id.
    pub tokens: Mutex<Vec<(String, CancellationToken)>>,
    pub agent_start_ms: Mutex<Vec<u64>>,
    running: AtomicUsize,
    pub max_running: AtomicUsize,
    start: tokio::time::Instant,
}

/// Decrements the running counter even when the call's future is dropped.
struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fake {
    pub fn new() -> Fake {
        Fake {
            agent_fn: Box::new(|request, _| text(&request.prompt)),
            bash_fn: Box::new(|request, _| exit(0, &format!("{}\n", request.script))),
            recipes: Mutex::new(BTreeMap::new()),
            plans: Mutex::new(VecDeque::new()),
            agent_calls: Mutex::new(Vec::new()),
            bash_calls: Mutex::new(Vec::new()),
            approval_requests: Mutex::new(Vec::new()),
            checkpoints: Mutex::new(Vec::new()),
            cancelled_steps: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            agent_start_ms: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn agent(
        mut self,
        f: impl Fn(&AgentRequest, usize) -> Reply<AgentOutcome> + Send + Sync + 'static,
    ) -> Fake {
        self.agent_fn = Box::new(f);
        self
    }

    pub fn bash(
        mut self,
        f: impl Fn(&BashRequest, usize) -> Reply<BashOutcome> + Send + Sync + 'static,
    ) -> Fake {
        self.bash_fn = Box::new(f);
        self
    }

    pub fn recipe(self, name: &str, source: &str) -> Fake {
        self.recipes
            .lock()
            .unwrap()
            .insert(name.to_string(), source.to_string());
        self
    }

    pub fn plan(self, plan: Plan) -> Fake {
        self.plans.lock().unwrap().push_back(plan);
        self
    }

    pub fn arc(self) -> Arc<Fake> {
        Arc::new(self)
    }

    pub fn prompts(&self) -> Vec<String> {
        self.agent_calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.prompt.clone())
            .collect()
    }

    pub fn scripts(&self) -> Vec<String> {
        self.bash_calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.script.clone())
            .collect()
    }

    fn enter(&self) -> RunningGuard<'_> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        RunningGuard(&self.running)
    }

    /// Steps whose cancellation token fired (timeout or cancel).
    pub fn cancelled_tokens(&self) -> Vec<String> {
        let tokens = self.tokens.lock().unwrap();
        tokens
            .iter()
            .filter(|(_, t)| t.is_cancelled())
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn play<T>(&self, reply: Reply<T>, io: &StepIo) -> Result<T, RunnerError> {
        self.tokens
            .lock()
            .unwrap()
            .push((io.step_id().to_string(), io.cancel().clone()));
        for chunk in reply.chunks {
            io.output(recipe::event::OutputStream::Stdout, chunk).await;
        }
        tokio::select! {
            () = tokio::time::sleep(reply.delay) => reply.result,
            () = io.cancel().cancelled() => {
                self.cancelled_steps.lock().unwrap().push(io.step_id().to_string());
                Err(RunnerError::Cancelled)
            }
        }
    }
}

impl StepRunner for Fake {
    fn bash(
        &self,
        request: BashRequest,
        io: StepIo,
    ) -> BoxFuture<'_, Result<BashOutcome, RunnerError>> {
        Box::pin(async move {
            let _guard = self.enter();
            let n_call = {
                let mut calls = self.bash_calls.lock().unwrap();
                calls.push(request.clone());
                calls.len() - 1
            };
            let reply = (self.bash_fn)(&request, n_call);
            self.play(reply, &io).await
        })
    }

    fn agent(
        &self,
        request: AgentRequest,
        io: StepIo,
    ) -> BoxFuture<'_, Result<AgentOutcome, RunnerError>> {
        Box::pin(async move {
            let _guard = self.enter();
            self.agent_start_ms.lock().unwrap().push(self.now_ms());
            let n_call = {
                let mut calls = self.agent_calls.lock().unwrap();
                calls.push(request.clone());
                calls.len() - 1
            };
            let reply = (self.agent_fn)(&request, n_call);
            self.play(reply, &io).await
        })
    }

    fn load_recipe<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, RunnerError>> {
        Box::pin(async move {
            self.recipes
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .ok_or_else(|| RunnerError::RecipeNotFound {
                    name: name.to_string(),
                })
        })
    }

    fn wait_approval(&self, request: ApprovalRequest) -> BoxFuture<'_, ApprovalDecision> {
        Box::pin(async move {
            self.approval_requests.lock().unwrap().push(request);
            let plan = self
                .plans
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Plan::Never);
            match plan {
                Plan::Decide(decision, delay) => {
                    tokio::time::sleep(delay).await;
                    decision
                }
                Plan::Never => std::future::pending().await,
            }
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000 + u64::try_from(self.start.elapsed().as_millis()).unwrap()
    }

    fn session(&self) -> SessionInfo {
        SessionInfo {
            id: "sess-1".into(),
            started: "2026-01-01T00:00:00".into(),
            project: "/work".into(),
        }
    }

    fn save_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, ()> {
        self.checkpoints.lock().unwrap().push(checkpoint);
        Box::pin(async {})
    }
}

/// The events of a run, and its outcome.
pub struct Ran {
    pub outcome: RunOutcome,
    pub events: Vec<Event>,
}

impl Ran {
    pub fn lines(&self) -> Vec<String> {
        self.events.iter().map(brief).collect()
    }

    pub fn ctx(&self, key: &str) -> Option<&Value> {
        self.outcome.context.get(key)
    }

    pub fn error(&self) -> String {
        self.outcome.error.clone().unwrap_or_default()
    }
}

fn drain(
    mut receiver: tokio::sync::mpsc::Receiver<recipe::event::SequencedEvent>,
    first_seq: u64,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut expected = first_seq;
    while let Ok(sequenced) = receiver.try_recv() {
        assert_eq!(sequenced.seq, expected, "sequence numbers are consecutive");
        expected += 1;
        events.push(sequenced.event);
    }
    events
}

pub async fn run_with(
    recipe: &Recipe,
    inputs: Value,
    fake: &Arc<Fake>,
    cancel: CancellationToken,
) -> Ran {
    let (sink, receiver) = EventSink::channel(100_000);
    let runner: Arc<dyn StepRunner> = fake.clone();
    let outcome = engine::run(recipe, map(inputs), runner, sink, cancel).await;
    Ran {
        outcome,
        events: drain(receiver, 0),
    }
}

pub async fn run(recipe: &Recipe, inputs: Value, fake: &Arc<Fake>) -> Ran {
    run_with(recipe, inputs, fake, CancellationToken::new()).await
}

pub async fn resume(recipe: &Recipe, checkpoint: Checkpoint, fake: &Arc<Fake>) -> Ran {
    let first_seq = checkpoint.next_seq;
    let (sink, receiver) = EventSink::channel_from(100_000, first_seq);
    let runner: Arc<dyn StepRunner> = fake.clone();
    let outcome = engine::resume(recipe, checkpoint, runner, sink, CancellationToken::new()).await;
    Ran {
        outcome,
        events: drain(receiver, first_seq),
    }
}

/// One short line per event.
pub fn brief(event: &Event) -> String {
    match event {
        Event::ExecutionStarted { mode, resumed, .. } => {
            format!("start {mode}{}", if *resumed { " resumed" } else { "" })
        }
        Event::StageStarted { stage, .. } => format!("stage {stage}"),
        Event::StageCompleted { stage, .. } => format!("stage_done {stage}"),
        Event::StepStarted { step_id, .. } => format!("run {step_id}"),
        Event::StepOutput { step_id, text, .. } => format!("out {step_id} {text}"),
        Event::OutputTruncated { step_id, .. } => format!("truncated {step_id}"),
        Event::StepCompleted { step_id, .. } => format!("done {step_id}"),
        Event::StepFailed {
            step_id, handling, ..
        } => format!("fail {step_id} {handling:?}"),
        Event::StepSkipped { step_id, reason } => {
            let why = match reason {
                SkipReason::ConditionFalse { .. } => "condition".to_string(),
                SkipReason::EmptyList => "empty".to_string(),
                SkipReason::SkipRemaining { by_step } => format!("by {by_step}"),
            };
            format!("skip {step_id} {why}")
        }
        Event::SubRecipeStarted { step_id, .. } => format!("sub {step_id}"),
        Event::SubRecipeCompleted {
            step_id, status, ..
        } => format!("sub_done {step_id} {status:?}"),
        Event::LoopIteration {
            step_id, iteration, ..
        } => format!("iter {step_id} {iteration}"),
        Event::LoopCompleted {
            step_id, ended_by, ..
        } => format!("loop_done {step_id} {ended_by:?}"),
        Event::IterationFailed {
            step_id, iteration, ..
        } => format!("iter_fail {step_id} {iteration}"),
        Event::RetryScheduled {
            step_id,
            attempt,
            delay_ms,
            ..
        } => format!("retry {step_id} {attempt} {delay_ms}"),
        Event::ApprovalRequested { stage, .. } => format!("gate {stage}"),
        Event::ApprovalDecided {
            stage,
            decision,
            timed_out,
            ..
        } => format!(
            "decided {stage} {decision:?}{}",
            if *timed_out { " timeout" } else { "" }
        ),
        Event::Warning { step_id, .. } => format!("warn {}", step_id.clone().unwrap_or_default()),
        Event::ExecutionCompleted { status, .. } => format!("end {status:?}"),
    }
}
