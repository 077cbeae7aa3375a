//! Runs catalogue cases against a live server and checks, for each run:
//!
//! - the case's own expectation (final status, output lines, events);
//! - the base invariants of catalogue section 3: a concurrent victim
//!   execution succeeds; `/healthz` answers throughout (latency measured,
//!   never asserted); the data dir and Docker's per-container directory
//!   (where json-file logs would land) each grow < 10 MB; the statvfs delta
//!   of Docker's filesystem is recorded (shared with every build on this
//!   machine, so it is reported, not asserted);
//!   no container labelled with the execution and no socket dir remains;
//!   the stored events are contiguous from seq 1 and equal what a WebSocket
//!   watcher saw from the first event.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_e2e::server::{KilnServer, used_bytes};
use serde_json::Value;

use super::Runtime;
use super::cases::{Case, Expect, OnRunsc, WALL_DEADLINE_CASES};

/// The victim started next to every case: it must succeed.
const VICTIM: &str = "name: victim\ndescription: a trivial neighbour of a hostile case\nversion: 1.0.0\nsteps:\n  - id: hello\n    type: bash\n    command: echo victim-ok\n";

/// The data dir (store, artifacts) and Docker's containers dir may each grow
/// by less than this per case (catalogue section 3).
const DISK_GROWTH_BYTES: u64 = 10 * 1024 * 1024;
/// Docker's data root: its filesystem is shared with every build on this
/// machine (a neighbour's cargo build moved it by 500 MB during one case),
/// so its statvfs delta is recorded only.
const DOCKER_ROOT: &str = "/var/lib/docker";
/// Where Docker keeps per-container files, json-file logs included: the
/// 595 MB host-disk DoS of catalogue finding 1 would land here.
const DOCKER_CONTAINERS: &str = "/var/lib/docker/containers";

/// One run of a case on one runtime.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: String,
    /// What was observed, for the table (status + notable values).
    pub observed: String,
    pub problems: Vec<String>,
    pub healthz_max_ms: u128,
    pub docker_disk_delta_bytes: i64,
    pub data_dir_growth_bytes: u64,
}

#[derive(Debug, Clone)]
pub enum RuntimeResult {
    Ran(RunOutcome),
    NotApplicable(&'static str),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: Case,
    pub runc: RuntimeResult,
    pub runsc: RuntimeResult,
}

impl CaseResult {
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (runtime, result) in [("runc", &self.runc), ("runsc", &self.runsc)] {
            if let RuntimeResult::Ran(outcome) = result
                && !outcome.problems.is_empty()
            {
                failures.push(format!(
                    "case {} ({}) on {runtime}: observed {}\n  - {}",
                    self.case.number,
                    self.case.name,
                    outcome.observed,
                    outcome.problems.join("\n  - ")
                ));
            }
        }
        failures
    }

    pub fn n_runs(&self) -> usize {
        [&self.runc, &self.runsc]
            .iter()
            .filter(|result| matches!(result, RuntimeResult::Ran(_)))
            .count()
    }
}

/// The expectation of `case` on `runtime`, or why it does not run there.
pub fn expectation(case: &Case, runtime: Runtime) -> Result<Expect, &'static str> {
    match (runtime, case.runsc) {
        (Runtime::Runc, _) | (Runtime::Runsc, OnRunsc::Same) => Ok(case.runc),
        (Runtime::Runsc, OnRunsc::Differs(expect)) => Ok(expect),
        (Runtime::Runsc, OnRunsc::NotApplicable(reason)) => Err(reason),
    }
}

/// The recipe of a case: one bash step running its script.
pub fn recipe_of(case: &Case) -> String {
    let mut recipe = format!(
        "name: security-case-{}\ndescription: \"hostile catalogue case {}\"\nversion: 1.0.0\nsteps:\n  - id: hostile\n    type: bash\n    timeout: {}\n    command: |\n",
        case.number, case.number, case.step_timeout_secs
    );
    for line in case.script.lines() {
        recipe.push_str("      ");
        recipe.push_str(line);
        recipe.push('\n');
    }
    recipe
}

/// Runs every case on both runtimes, `parallel` runs at a time.
pub async fn run_all(server: &KilnServer, cases: &[Case], parallel: usize) -> Vec<CaseResult> {
    let mut jobs = Vec::new();
    for (case_idx, case) in cases.iter().enumerate() {
        for runtime in [Runtime::Runc, Runtime::Runsc] {
            jobs.push((case_idx, *case, runtime));
        }
    }
    let outcomes: Vec<(usize, Runtime, RuntimeResult)> = futures::stream::iter(jobs)
        .map(|(case_idx, case, runtime)| async move {
            let result = match expectation(&case, runtime) {
                Err(reason) => RuntimeResult::NotApplicable(reason),
                Ok(expect) => RuntimeResult::Ran(run_one(server, &case, runtime, &expect).await),
            };
            eprintln!(
                "security case {} ({}) on {}: {}",
                case.number,
                case.name,
                runtime.name(),
                match &result {
                    RuntimeResult::Ran(outcome) if outcome.problems.is_empty() =>
                        format!("ok ({})", outcome.observed),
                    RuntimeResult::Ran(outcome) =>
                        format!("FAILED ({}): {:?}", outcome.observed, outcome.problems),
                    RuntimeResult::NotApplicable(reason) => format!("n/a ({reason})"),
                }
            );
            (case_idx, runtime, result)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut results: Vec<CaseResult> = cases
        .iter()
        .map(|case| CaseResult {
            case: *case,
            runc: RuntimeResult::NotApplicable("not run"),
            runsc: RuntimeResult::NotApplicable("not run"),
        })
        .collect();
    for (case_idx, runtime, result) in outcomes {
        match runtime {
            Runtime::Runc => results[case_idx].runc = result,
            Runtime::Runsc => results[case_idx].runsc = result,
        }
    }
    results
}

/// Pings `/healthz` until stopped; returns (answers, failures, slowest).
fn spawn_health_pinger(
    server: &KilnServer,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u32, u32, Duration)> {
    let http = server.http.clone();
    let url = format!("{}/healthz", server.base_url);
    tokio::spawn(async move {
        let (mut n_ok, mut n_failed, mut slowest) = (0_u32, 0_u32, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let ok = http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map(|response| response.status().is_success())
                .unwrap_or(false);
            slowest = slowest.max(started.elapsed());
            if ok {
                n_ok += 1;
            } else {
                n_failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (n_ok, n_failed, slowest)
    })
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Step output (stdout and stderr, in order) from stored events.
pub fn step_output(events: &[Value]) -> String {
    events
        .iter()
        .filter(|event| event["body"]["event"]["type"] == "step_output")
        .filter_map(|event| event["body"]["event"]["text"].as_str())
        .collect()
}

/// `body.event.type` of every event.
pub fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| event["body"]["event"]["type"].as_str())
        .map(str::to_owned)
        .collect()
}

/// The value of a probe `info <name> <value>` line.
pub fn probe_info<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("info {name} ");
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
}

/// Artifact names a case must never deliver.
fn forbidden_artifacts(case: &Case) -> &'static [&'static str] {
    match case.number {
        43 => &["a/..evil", "new\nline", "C:\\x"],
        44 => &["env", "shadow", "fifo"],
        45 => &["sparse"],
        _ => &[],
    }
}

/// Runs one case on one runtime with the base invariants.
pub async fn run_one(
    server: &KilnServer,
    case: &Case,
    runtime: Runtime,
    expect: &Expect,
) -> RunOutcome {
    let mut problems = Vec::new();
    let data_before = dir_bytes(&server.data_dir);
    let docker_before = used_bytes(Path::new(DOCKER_ROOT)).unwrap_or(0);
    let containers_before = dir_bytes(Path::new(DOCKER_CONTAINERS));
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = spawn_health_pinger(server, Arc::clone(&stop));

    // Case 46: a neighbour holding processes runs first.
    let neighbour = if case.number == 46 {
        let script = "i=0; while [ $i -lt 40 ]; do sleep 15 & i=$((i+1)); done; wait";
        let neighbour_case = Case { script, ..*case };
        let id = server
            .submit(&recipe_of(&neighbour_case), runtime.class())
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        id.ok()
    } else {
        None
    };

    let class = if WALL_DEADLINE_CASES.contains(&case.number) {
        runtime.deadline_class()
    } else {
        runtime.class()
    };
    let id = match server.submit(&recipe_of(case), class).await {
        Ok(id) => id,
        Err(error) => {
            stop.store(true, Ordering::Relaxed);
            return RunOutcome {
                status: "not submitted".into(),
                observed: format!("submission failed: {error:#}"),
                problems: vec![format!("submission failed: {error:#}")],
                healthz_max_ms: 0,
                docker_disk_delta_bytes: 0,
                data_dir_growth_bytes: 0,
            };
        }
    };
    let watcher = server.watch(&id);
    let victim = server.submit(VICTIM, Runtime::Runc.class()).await;

    let wait_limit = Duration::from_secs(case.step_timeout_secs + 150);
    let execution = server.wait(&id, wait_limit).await;
    let status = match &execution {
        Ok(execution) => execution["status"].as_str().unwrap_or("?").to_owned(),
        Err(error) => {
            problems.push(format!("no final status: {error:#}"));
            "not final".to_owned()
        }
    };
    match victim {
        Ok(victim_id) => match server.wait(&victim_id, Duration::from_secs(150)).await {
            Ok(victim) if victim["status"] == "succeeded" => {}
            Ok(victim) => problems.push(format!(
                "victim execution ended {} ({})",
                victim["status"], victim["status_detail"]
            )),
            Err(error) => problems.push(format!("victim execution: {error:#}")),
        },
        Err(error) => problems.push(format!("victim submission: {error:#}")),
    }
    if let Some(neighbour_id) = neighbour {
        let _ = server.wait(&neighbour_id, Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (n_health_ok, n_health_failed, slowest) = pinger.await.unwrap_or_default();
    if n_health_failed > 0 || n_health_ok == 0 {
        problems.push(format!(
            "/healthz failed {n_health_failed} times ({n_health_ok} answers)"
        ));
    }

    // Events: contiguous from 1, and exactly what the live watcher saw.
    let events = match server.events(&id).await {
        Ok(events) => events,
        Err(error) => {
            problems.push(format!("events: {error:#}"));
            Vec::new()
        }
    };
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|event| event["seq"].as_u64())
        .collect();
    let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
    if seqs != contiguous {
        problems.push(format!("stored seqs are not 1..=n: {seqs:?}"));
    }
    match tokio::time::timeout(Duration::from_secs(30), watcher).await {
        Ok(Ok(Ok(seen))) => {
            if seen != events {
                let seen_seqs: Vec<u64> = seen
                    .iter()
                    .filter_map(|event| event["seq"].as_u64())
                    .collect();
                problems.push(format!(
                    "the WebSocket watcher saw seqs {seen_seqs:?}, the store has {seqs:?} (or bodies differ)"
                ));
            }
        }
        Ok(Ok(Err(error))) => problems.push(format!("WebSocket watcher: {error:#}")),
        Ok(Err(error)) => problems.push(format!("WebSocket watcher task: {error}")),
        Err(_) => problems.push("WebSocket watcher did not end within 30 s".into()),
    }
    let last_type = events
        .last()
        .and_then(|event| event["body"]["event"]["type"].as_str())
        .unwrap_or_default();
    if last_type != "finished" {
        problems.push(format!("the last event is {last_type:?}, not finished"));
    }

    // The case's own expectation.
    if !expect.status.split('|').any(|accepted| accepted == status) {
        let detail = execution
            .as_ref()
            .map(|execution| execution["status_detail"].to_string())
            .unwrap_or_default();
        problems.push(format!(
            "status {status} ({detail}), expected {}",
            expect.status
        ));
    }
    let output = step_output(&events);
    for wanted in expect.output {
        if !output.contains(wanted) {
            problems.push(format!("output lacks {wanted:?}"));
        }
    }
    for unwanted in expect.absent {
        if output.contains(unwanted) {
            problems.push(format!("output contains {unwanted:?}"));
        }
    }
    let types = event_types(&events);
    for wanted in expect.events {
        if !types.iter().any(|found| found == wanted) {
            problems.push(format!("no {wanted} event (events: {types:?})"));
        }
    }
    let forbidden = forbidden_artifacts(case);
    if !forbidden.is_empty() {
        match server.artifacts(&id).await {
            Ok(artifacts) => {
                for artifact in &artifacts {
                    let name = artifact["name"].as_str().unwrap_or_default();
                    if forbidden.contains(&name) {
                        problems.push(format!("artifact {name:?} was stored"));
                    }
                }
            }
            Err(error) => problems.push(format!("artifacts: {error:#}")),
        }
    }

    // Nothing left behind by this execution.
    if let Err(error) = wait_for_gone(server, &id, Duration::from_secs(30)).await {
        problems.push(error);
    }
    let data_growth = dir_bytes(&server.data_dir).saturating_sub(data_before);
    if data_growth >= DISK_GROWTH_BYTES {
        problems.push(format!("data dir grew by {data_growth} bytes"));
    }
    let containers_growth =
        dir_bytes(Path::new(DOCKER_CONTAINERS)).saturating_sub(containers_before);
    if containers_growth >= DISK_GROWTH_BYTES {
        problems.push(format!(
            "{DOCKER_CONTAINERS} grew by {containers_growth} bytes"
        ));
    }
    let docker_after = used_bytes(Path::new(DOCKER_ROOT)).unwrap_or(0);
    let docker_delta = i64::try_from(docker_after).unwrap_or(i64::MAX)
        - i64::try_from(docker_before).unwrap_or(i64::MAX);

    if !problems.is_empty() {
        problems.push(format!("step output was:\n{}", excerpt(&output)));
    }
    let mut observed = status.clone();
    for name in ["fork.children", "nofile.opened", "mem.touched_mib"] {
        if let Some(value) = probe_info(&output, name) {
            observed.push_str(&format!("; {name} {value}"));
        }
    }
    for special in ["output_truncated", "artifact_rejected", "step_killed"] {
        let n = types.iter().filter(|found| *found == special).count();
        if n > 0 {
            observed.push_str(&format!("; {special} ×{n}"));
        }
    }
    RunOutcome {
        status,
        observed,
        problems,
        healthz_max_ms: slowest.as_millis(),
        docker_disk_delta_bytes: docker_delta,
        data_dir_growth_bytes: data_growth,
    }
}

/// The start and end of a long text.
fn excerpt(text: &str) -> String {
    const KEEP: usize = 2000;
    if text.len() <= 2 * KEEP {
        return text.to_owned();
    }
    let head: String = text.chars().take(KEEP).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(KEEP)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}\n[... {} bytes ...]\n{tail}", text.len())
}

/// Waits until no container carries `kiln.execution=<id>` and the socket dir is gone.
pub async fn wait_for_gone(server: &KilnServer, id: &str, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let socket_dir = server.run_dir.join(id);
    loop {
        let output = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=kiln.execution={id}"),
            ])
            .output()
            .map_err(|error| format!("docker ps: {error}"))?;
        let containers = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let dir_left = socket_dir.exists();
        if containers.is_empty() && !dir_left {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "left behind after {timeout:?}: containers [{containers}], socket dir present: {dir_left}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
