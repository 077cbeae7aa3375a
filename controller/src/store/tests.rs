//! Store tests: a fresh temp-file SQLite database per test.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};

use protocol::{ControllerEvent, EventBody, ExecutionEvent, FinalStatus};

use super::*;

struct TestStore {
    store: Store,
    _dir: tempfile::TempDir,
}

async fn fresh() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that does not exist yet is created.
    let store = Store::open_sqlite(&dir.path().join("data/kiln.db"), 1024)
        .await
        .unwrap();
    TestStore { store, _dir: dir }
}

fn new_execution(owner: &str) -> NewExecution {
    let mut inputs = serde_json::Map::new();
    inputs.insert("name".to_string(), serde_json::json!("world"));
    NewExecution {
        owner_token_id: owner.to_string(),
        recipe_source: "name: hello\nsteps: []\n".to_string(),
        gallery_name: None,
        inputs,
        files: BTreeMap::from([("sub.yaml".to_string(), "name: sub\n".to_string())]),
        class: "default".to_string(),
    }
}

fn event(seq: u64, body: ControllerEvent) -> ExecutionEvent {
    ExecutionEvent {
        seq,
        at_ms: 1_000 + seq,
        body: EventBody::Controller(body),
    }
}

fn seqs(events: &[ExecutionEvent]) -> Vec<u64> {
    events.iter().map(|event| event.seq).collect()
}

#[tokio::test]
async fn execution_round_trips() {
    let t = fresh().await;
    let created = t
        .store
        .create_execution(new_execution("tok1"))
        .await
        .unwrap();
    assert_eq!(created.status, ExecutionStatus::Queued);
    assert!(created.id.starts_with("ex_"));
    let fetched = t
        .store
        .get_execution(&created.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched, created);
    assert_eq!(fetched.inputs["name"], serde_json::json!("world"));
    assert_eq!(fetched.files["sub.yaml"], "name: sub\n");
}

#[tokio::test]
async fn owner_scoping_hides_other_tokens_executions() {
    let t = fresh().await;
    let mine = t
        .store
        .create_execution(new_execution("alice"))
        .await
        .unwrap();
    assert!(
        t.store
            .get_execution(&mine.id, Some("alice"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        t.store
            .get_execution(&mine.id, Some("bob"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        t.store
            .get_execution("ex_missing", Some("alice"))
            .await
            .unwrap()
            .is_none()
    );
    let bobs = t
        .store
        .list_executions(&ExecutionFilter {
            owner_token_id: Some("bob".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(bobs.items.is_empty());
}

#[tokio::test]
async fn events_are_ordered_and_paged() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    let batch: Vec<_> = (1..=5)
        .map(|seq| event(seq, ControllerEvent::AgentConnected {}))
        .collect();
    let outcome = t.store.append_events(&ex.id, &batch, None).await.unwrap();
    assert_eq!(
        outcome,
        AppendOutcome {
            n_inserted: 5,
            n_duplicates: 0
        }
    );
    assert_eq!(
        seqs(&t.store.events_after(&ex.id, 0, 100).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&t.store.events_after(&ex.id, 2, 2).await.unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        seqs(&t.store.events_after(&ex.id, 5, 100).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(t.store.last_event_seq(&ex.id).await.unwrap(), 5);
    assert_eq!(
        t.store.events_after(&ex.id, 0, 100).await.unwrap()[0],
        batch[0]
    );
}

#[tokio::test]
async fn identical_duplicates_are_ignored_and_conflicts_rejected_whole() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    t.store
        .append_events(
            &ex.id,
            &[
                event(1, ControllerEvent::Queued {}),
                event(2, ControllerEvent::AgentConnected {}),
            ],
            None,
        )
        .await
        .unwrap();
    let resent = t
        .store
        .append_events(
            &ex.id,
            &[
                event(2, ControllerEvent::AgentConnected {}),
                event(3, ControllerEvent::Queued {}),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        resent,
        AppendOutcome {
            n_inserted: 1,
            n_duplicates: 1
        }
    );
    let conflicting = t
        .store
        .append_events(
            &ex.id,
            &[
                event(4, ControllerEvent::Queued {}),
                event(3, ControllerEvent::AgentConnected {}),
            ],
            None,
        )
        .await;
    assert!(
        matches!(
            conflicting,
            Err(StoreError::ConflictingEvent { seq: 3, .. })
        ),
        "{conflicting:?}"
    );
    // The batch was all-or-nothing: event 4 was rolled back.
    assert_eq!(
        seqs(&t.store.events_after(&ex.id, 0, 100).await.unwrap()),
        vec![1, 2, 3]
    );
    let unknown = t
        .store
        .append_events("ex_nope", &[event(1, ControllerEvent::Queued {})], None)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::ExecutionNotFound { .. })),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn final_status_is_never_overwritten() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    let running = t
        .store
        .set_status(&ex.id, ExecutionStatus::Running, None)
        .await
        .unwrap();
    assert!(running.started_at_ms.is_some());
    let done = t
        .store
        .set_status(&ex.id, ExecutionStatus::Cancelled, Some("by user"))
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Cancelled);
    assert!(done.finished_at_ms.is_some());
    for status in [
        ExecutionStatus::Succeeded,
        ExecutionStatus::Running,
        ExecutionStatus::Queued,
    ] {
        let again = t.store.set_status(&ex.id, status, None).await;
        assert!(
            matches!(
                again,
                Err(StoreError::AlreadyFinal {
                    status: ExecutionStatus::Cancelled,
                    ..
                })
            ),
            "{again:?}"
        );
    }
    let stored = t.store.get_execution(&ex.id, None).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.status_detail.as_deref()),
        (ExecutionStatus::Cancelled, Some("by user"))
    );
    let missing = t
        .store
        .set_status("ex_nope", ExecutionStatus::Failed, None)
        .await;
    assert!(matches!(missing, Err(StoreError::ExecutionNotFound { .. })));
}

#[tokio::test]
async fn claims_are_fifo_and_atomic_under_concurrency() {
    let t = fresh().await;
    let mut created = Vec::new();
    for _ in 0..20 {
        created.push(
            t.store
                .create_execution(new_execution("tok"))
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(ex) = store.claim_next_queued().await.unwrap() {
                assert_eq!(ex.status, ExecutionStatus::Running);
                claimed.push(ex.id);
            }
            claimed
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), 20);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        20,
        "an execution was claimed twice"
    );
    assert!(t.store.claim_next_queued().await.unwrap().is_none());

    let t = fresh().await;
    let first = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    let second = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    assert_eq!(
        t.store.claim_next_queued().await.unwrap().unwrap().id,
        first.id
    );
    assert_eq!(
        t.store.claim_next_queued().await.unwrap().unwrap().id,
        second.id
    );
}

#[tokio::test]
async fn list_pages_newest_first_with_filters() {
    let t = fresh().await;
    let mut ids = Vec::new();
    for idx in 0..7 {
        let owner = if idx % 2 == 0 { "alice" } else { "bob" };
        ids.push(
            t.store
                .create_execution(new_execution(owner))
                .await
                .unwrap()
                .id,
        );
    }
    t.store
        .set_status(&ids[6], ExecutionStatus::Failed, None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = t
            .store
            .list_executions(&ExecutionFilter {
                cursor,
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|ex| ex.id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let alice = t
        .store
        .list_executions(&ExecutionFilter {
            owner_token_id: Some("alice".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.items.len(), 4);
    assert!(alice.next_cursor.is_none());
    let failed = t
        .store
        .list_executions(&ExecutionFilter {
            status: Some(ExecutionStatus::Failed),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failed
            .items
            .iter()
            .map(|ex| ex.id.clone())
            .collect::<Vec<_>>(),
        vec![ids[6].clone()]
    );
    let bad = t
        .store
        .list_executions(&ExecutionFilter {
            cursor: Some("zzz".into()),
            limit: 3,
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidCursor { .. })));
    assert_eq!(t.store.list_unfinished().await.unwrap().len(), 6);
}

#[tokio::test]
async fn tokens_verify_only_with_the_exact_secret() {
    let t = fresh().await;
    let admin = t
        .store
        .bootstrap_admin_token()
        .await
        .unwrap()
        .expect("first start creates a token");
    assert!(
        t.store.bootstrap_admin_token().await.unwrap().is_none(),
        "only on first start"
    );
    let info = t.store.verify_token(&admin).await.unwrap().unwrap();
    assert!(info.is_admin);
    let user = t.store.create_token("ci", false).await.unwrap();
    let audit = t.store.list_audit(None, 10).await.unwrap();
    let created: Vec<_> = audit
        .iter()
        .map(|entry| (entry.action.as_str(), entry.detail.contains(&user.info.id)))
        .collect();
    assert_eq!(
        created,
        vec![("token_created", true), ("token_created", false)]
    );
    assert_eq!(
        t.store.verify_token(&user.token).await.unwrap(),
        Some(user.info.clone())
    );
    let mut tampered = user.token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    for bad in [
        tampered.as_str(),
        "",
        "kiln_",
        "Bearer x",
        &user.token[..user.token.len() - 1],
        "kiln_0000000000000000_00",
    ] {
        assert_eq!(t.store.verify_token(bad).await.unwrap(), None, "{bad:?}");
    }
}

#[tokio::test]
async fn approvals_decide_once() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    let gate = NewApproval {
        stage: "deploy".into(),
        prompt: "ship it?".into(),
        timeout_secs: Some(60),
        default_decision: Some(ApprovalDecision::Deny),
    };
    let pending = t.store.request_approval(&ex.id, &gate).await.unwrap();
    assert_eq!(pending.decision, None);
    assert!(matches!(
        t.store.request_approval(&ex.id, &gate).await,
        Err(StoreError::ApprovalExists { .. })
    ));
    let decided = t
        .store
        .decide_approval(&ex.id, "deploy", ApprovalDecision::Deny, "tok", Some("no"))
        .await
        .unwrap();
    assert_eq!(
        (decided.decision, decided.decided_by.as_deref()),
        (Some(ApprovalDecision::Deny), Some("tok"))
    );
    let again = t
        .store
        .decide_approval(&ex.id, "deploy", ApprovalDecision::Approve, "tok", None)
        .await;
    assert!(matches!(
        again,
        Err(StoreError::ApprovalAlreadyDecided {
            decision: ApprovalDecision::Deny,
            ..
        })
    ));
    let missing = t
        .store
        .decide_approval(&ex.id, "other", ApprovalDecision::Approve, "tok", None)
        .await;
    assert!(matches!(missing, Err(StoreError::ApprovalNotFound { .. })));
    assert_eq!(t.store.list_approvals(&ex.id).await.unwrap(), vec![decided]);
}

#[tokio::test]
async fn artifacts_are_bounded_and_named_safely() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    let info = t
        .store
        .put_artifact(&ex.id, "out/report.txt", b"hello")
        .await
        .unwrap();
    assert_eq!(info.size_bytes, 5);
    assert_eq!(
        info.sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let (got, bytes) = t
        .store
        .get_artifact(&ex.id, "out/report.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got, bytes), (info.clone(), b"hello".to_vec()));
    assert_eq!(t.store.list_artifacts(&ex.id).await.unwrap(), vec![info]);
    let too_big = t.store.put_artifact(&ex.id, "big", &[0u8; 1025]).await;
    assert!(matches!(
        too_big,
        Err(StoreError::ArtifactTooLarge {
            size: 1025,
            max: 1024,
            ..
        })
    ));
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a//b",
        "a/./b",
        "c:/x",
        "back\\slash",
        "new\nline",
    ] {
        let result = t.store.put_artifact(&ex.id, bad, b"x").await;
        assert!(
            matches!(result, Err(StoreError::InvalidArtifactName { .. })),
            "{bad:?}: {result:?}"
        );
    }
    assert!(
        t.store
            .get_artifact(&ex.id, "missing")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn audit_and_launch_records() {
    let t = fresh().await;
    let ex = t
        .store
        .create_execution(new_execution("tok"))
        .await
        .unwrap();
    t.store
        .audit(&AuditEntry {
            actor: "tok".into(),
            action: "execution_cancelled".into(),
            execution_id: Some(ex.id.clone()),
            detail: "{}".into(),
        })
        .await
        .unwrap();
    let entries = t.store.list_audit(Some(&ex.id), 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "execution_cancelled");
    t.store
        .record_launch(
            &ex.id,
            &LaunchRecord {
                container_id: "c1".into(),
                step_uid: 200_001,
                deadline_at_ms: 99,
            },
        )
        .await
        .unwrap();
    t.store.record_acked_seq(&ex.id, 7).await.unwrap();
    t.store.record_acked_seq(&ex.id, 3).await.unwrap();
    t.store.record_agent_session(&ex.id, "abcd").await.unwrap();
    let stored = t.store.get_execution(&ex.id, None).await.unwrap().unwrap();
    assert_eq!(stored.container_id.as_deref(), Some("c1"));
    assert_eq!(stored.step_uid, Some(200_001));
    assert_eq!(stored.last_acked_seq, 7, "acked seq never decreases");
    assert_eq!(stored.agent_session_sha256.as_deref(), Some("abcd"));
    assert!(matches!(
        t.store.record_acked_seq("ex_nope", 1).await,
        Err(StoreError::ExecutionNotFound { .. })
    ));
}

#[tokio::test]
async fn purge_removes_only_old_or_excess_finished_executions() {
    let t = fresh().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            t.store
                .create_execution(new_execution("tok"))
                .await
                .unwrap()
                .id,
        );
    }
    t.store
        .append_events(
            &ids[0],
            &[event(
                1,
                ControllerEvent::Finished {
                    status: FinalStatus::Succeeded,
                    reason: None,
                },
            )],
            None,
        )
        .await
        .unwrap();
    for id in &ids[..3] {
        t.store
            .set_status(id, ExecutionStatus::Succeeded, None)
            .await
            .unwrap();
    }
    // Keep at most 2 finished: the oldest finished (ids[0]) goes, with its events.
    let report = t.store.purge(0, 2).await.unwrap();
    assert_eq!(report.n_executions, 1);
    assert!(
        t.store
            .get_execution(&ids[0], None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        t.store
            .events_after(&ids[0], 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Retention by config: one day of age keeps what just finished.
    let config = crate::config::RetentionConfig {
        days: 1,
        max_executions: 100,
    };
    assert_eq!(
        t.store.apply_retention(&config).await.unwrap().n_executions,
        0
    );
    // Everything finished before "far future" goes; the queued one stays.
    let report = t.store.purge(i64::MAX, 100).await.unwrap();
    assert_eq!(report.n_executions, 2);
    assert!(
        t.store
            .get_execution(&ids[3], None)
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn statuses_round_trip_and_match_protocol_names() {
    for status in ExecutionStatus::ALL {
        assert_eq!(ExecutionStatus::parse(status.as_str()), Some(status));
        if let Some(final_status) = status.final_status() {
            assert_eq!(final_status.as_str(), status.as_str());
            assert_eq!(ExecutionStatus::from(final_status), status);
        }
    }
}

// ---------------------------------------------------------------- model calls

impl TestStore {
    async fn execution(&self, owner: &str) -> Execution {
        self.store
            .create_execution(new_execution(owner))
            .await
            .unwrap()
    }
}

fn model_call(
    execution_id: &str,
    request_id: u64,
    step_id: &str,
    user_id: &str,
    provider: &str,
    model: &str,
) -> NewModelCall {
    NewModelCall {
        execution_id: execution_id.to_string(),
        request_id,
        step_id: step_id.to_string(),
        user_id: user_id.to_string(),
        provider: provider.to_string(),
        model: model.to_string(),
        profile: "foundation:explorer".to_string(),
        started_at_ms: 1_000 + i64::try_from(request_id).unwrap(),
    }
}

fn call_end(
    status: ModelCallStatus,
    error_code: Option<&str>,
    input_tokens: u64,
    output_tokens: u64,
) -> ModelCallEnd {
    ModelCallEnd {
        status,
        provider: None,
        model: None,
        error_code: error_code.map(str::to_string),
        input_tokens,
        output_tokens,
        finished_at_ms: 2_000,
    }
}

fn usage(requests: u64, input_tokens: u64, output_tokens: u64) -> ModelUsage {
    ModelUsage {
        requests,
        input_tokens,
        output_tokens,
    }
}

/// Begins a call and, unless `end` is None, finishes it. Returns the row id.
async fn record_call(store: &Store, call: NewModelCall, end: Option<ModelCallEnd>) -> i64 {
    let id = store.begin_model_call(&call).await.unwrap();
    if let Some(end) = end {
        store.finish_model_call(id, &end).await.unwrap();
    }
    id
}

#[tokio::test]
async fn model_usage_is_exact_per_execution_step_and_user() {
    let t = fresh().await;
    let first = t.execution("alice").await;
    let second = t.execution("alice").await;
    let bobs = t.execution("bob").await;
    use ModelCallStatus::{Cancelled, Completed, Failed};
    let ask_ok = record_call(
        &t.store,
        model_call(&first.id, 1, "ask", "alice", "openai", "gpt-x"),
        Some(call_end(Completed, None, 10, 3)),
    )
    .await;
    let ask_failed = record_call(
        &t.store,
        model_call(&first.id, 2, "ask", "alice", "openai", "gpt-x"),
        Some(call_end(Failed, Some("provider_unavailable"), 0, 0)),
    )
    .await;
    let summarise = record_call(
        &t.store,
        model_call(&first.id, 3, "summarise", "alice", "anthropic", "claude-y"),
        Some(call_end(Completed, None, 7, 2)),
    )
    .await;
    // Still running: counted as a request, with no tokens yet.
    let ask_running = record_call(
        &t.store,
        model_call(&first.id, 4, "ask", "alice", "openai", "gpt-x"),
        None,
    )
    .await;
    record_call(
        &t.store,
        model_call(&second.id, 1, "ask", "alice", "openai", "gpt-x"),
        Some(call_end(Cancelled, Some("cancelled"), 100, 50)),
    )
    .await;
    record_call(
        &t.store,
        model_call(&bobs.id, 1, "ask", "bob", "openai", "gpt-x"),
        Some(call_end(Completed, None, 1, 1)),
    )
    .await;

    let rows = t.store.model_calls(&first.id).await.unwrap();
    let row =
        |id, request_id, step: &str, provider: &str, model: &str, end: Option<ModelCallEnd>| {
            ModelCallRow {
                id,
                execution_id: first.id.clone(),
                request_id,
                step_id: step.to_string(),
                user_id: "alice".to_string(),
                provider: provider.to_string(),
                model: model.to_string(),
                profile: "foundation:explorer".to_string(),
                status: end
                    .as_ref()
                    .map_or(ModelCallStatus::Running, |end| end.status),
                error_code: end.as_ref().and_then(|end| end.error_code.clone()),
                input_tokens: end.as_ref().map_or(0, |end| end.input_tokens),
                output_tokens: end.as_ref().map_or(0, |end| end.output_tokens),
                started_at_ms: 1_000 + i64::try_from(request_id).unwrap(),
                finished_at_ms: end.as_ref().map(|end| end.finished_at_ms),
            }
        };
    assert_eq!(
        rows,
        vec![
            row(
                ask_ok,
                1,
                "ask",
                "openai",
                "gpt-x",
                Some(call_end(Completed, None, 10, 3))
            ),
            row(
                ask_failed,
                2,
                "ask",
                "openai",
                "gpt-x",
                Some(call_end(Failed, Some("provider_unavailable"), 0, 0))
            ),
            row(
                summarise,
                3,
                "summarise",
                "anthropic",
                "claude-y",
                Some(call_end(Completed, None, 7, 2))
            ),
            row(ask_running, 4, "ask", "openai", "gpt-x", None),
        ]
    );

    assert_eq!(
        t.store.model_usage_of_execution(&first.id).await.unwrap(),
        (
            usage(4, 17, 5),
            BTreeMap::from([
                ("ask".to_string(), usage(3, 10, 3)),
                ("summarise".to_string(), usage(1, 7, 2)),
            ])
        )
    );
    assert_eq!(
        t.store.model_usage_of_execution(&second.id).await.unwrap(),
        (
            usage(1, 100, 50),
            BTreeMap::from([("ask".to_string(), usage(1, 100, 50))])
        )
    );
    assert_eq!(
        t.store.model_usage_of_execution("ex_none").await.unwrap(),
        (usage(0, 0, 0), BTreeMap::new())
    );
    assert_eq!(
        t.store.model_usage_of_user("alice").await.unwrap(),
        usage(5, 117, 55)
    );
    assert_eq!(
        t.store.model_usage_of_user("carol").await.unwrap(),
        usage(0, 0, 0)
    );
    assert_eq!(
        t.store.model_usage_by_user().await.unwrap(),
        vec![
            ("alice".to_string(), usage(5, 117, 55)),
            ("bob".to_string(), usage(1, 1, 1)),
        ]
    );
    let totals = |provider: &str, model: &str, status, usage| ModelCallTotals {
        provider: provider.to_string(),
        model: model.to_string(),
        status,
        usage,
    };
    assert_eq!(
        t.store.model_call_totals().await.unwrap(),
        vec![
            totals("anthropic", "claude-y", Completed, usage(1, 7, 2)),
            totals("openai", "gpt-x", Cancelled, usage(1, 100, 50)),
            totals("openai", "gpt-x", Completed, usage(2, 11, 4)),
            totals("openai", "gpt-x", Failed, usage(1, 0, 0)),
            totals("openai", "gpt-x", ModelCallStatus::Running, usage(1, 0, 0)),
        ]
    );
}

#[tokio::test]
async fn a_model_call_ends_once_and_only_with_a_final_status() {
    let t = fresh().await;
    let ex = t.execution("alice").await;
    let id = record_call(
        &t.store,
        model_call(&ex.id, 1, "ask", "alice", "openai", "gpt-x"),
        None,
    )
    .await;
    let running = call_end(ModelCallStatus::Running, None, 1, 1);
    assert!(matches!(
        t.store.finish_model_call(id, &running).await,
        Err(StoreError::ModelCallEndRunning { id: got }) if got == id
    ));
    let completed = call_end(ModelCallStatus::Completed, None, 4, 2);
    t.store.finish_model_call(id, &completed).await.unwrap();
    let again = call_end(ModelCallStatus::Failed, Some("timeout"), 9, 9);
    let refused = t.store.finish_model_call(id, &again).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::ModelCallAlreadyEnded { id: got, status: ModelCallStatus::Completed }) if got == id
        ),
        "{refused:?}"
    );
    assert_eq!(
        t.store.model_usage_of_execution(&ex.id).await.unwrap().0,
        usage(1, 4, 2),
        "the first end stays"
    );
    assert!(matches!(
        t.store.finish_model_call(id + 100, &completed).await,
        Err(StoreError::ModelCallNotFound { id: got }) if got == id + 100
    ));
    let orphan = t
        .store
        .begin_model_call(&model_call("ex_nope", 1, "ask", "alice", "openai", "gpt-x"))
        .await;
    assert!(
        matches!(orphan, Err(StoreError::ExecutionNotFound { ref execution_id }) if execution_id == "ex_nope"),
        "{orphan:?}"
    );
}

#[tokio::test]
async fn a_fallback_provider_at_the_end_replaces_the_one_the_call_started_with() {
    let t = fresh().await;
    let ex = t.execution("alice").await;
    let kept = record_call(
        &t.store,
        model_call(&ex.id, 1, "ask", "alice", "openai", "gpt-x"),
        Some(call_end(ModelCallStatus::Completed, None, 1, 1)),
    )
    .await;
    let fell_back = record_call(
        &t.store,
        model_call(&ex.id, 2, "ask", "alice", "openai", "gpt-x"),
        None,
    )
    .await;
    let mut end = call_end(ModelCallStatus::Completed, None, 2, 3);
    end.provider = Some("backup".to_string());
    end.model = Some("small".to_string());
    t.store.finish_model_call(fell_back, &end).await.unwrap();
    let rows = t.store.model_calls(&ex.id).await.unwrap();
    let named: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|row| (row.id, row.provider.as_str(), row.model.as_str()))
        .collect();
    assert_eq!(
        named,
        vec![(kept, "openai", "gpt-x"), (fell_back, "backup", "small")]
    );
}

#[tokio::test]
async fn interrupting_marks_only_the_running_calls() {
    let t = fresh().await;
    let ex = t.execution("alice").await;
    let done = record_call(
        &t.store,
        model_call(&ex.id, 1, "ask", "alice", "openai", "gpt-x"),
        Some(call_end(ModelCallStatus::Completed, None, 3, 4)),
    )
    .await;
    for request_id in 2..=3 {
        record_call(
            &t.store,
            model_call(&ex.id, request_id, "ask", "alice", "openai", "gpt-x"),
            None,
        )
        .await;
    }
    let interrupted: Vec<u64> = t
        .store
        .interrupt_running_model_calls(9_999)
        .await
        .unwrap()
        .iter()
        .map(|row| row.request_id)
        .collect();
    assert_eq!(interrupted, vec![2, 3]);
    let rows = t.store.model_calls(&ex.id).await.unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.request_id,
                row.status,
                row.finished_at_ms,
                row.input_tokens,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, ModelCallStatus::Completed, Some(2_000), 3),
            (2, ModelCallStatus::Interrupted, Some(9_999), 0),
            (3, ModelCallStatus::Interrupted, Some(9_999), 0),
        ]
    );
    assert_eq!(rows[0].id, done);
    assert!(
        t.store
            .interrupt_running_model_calls(10_000)
            .await
            .unwrap()
            .is_empty()
    );
    // Interrupted calls still count as requests.
    assert_eq!(
        t.store.model_usage_of_user("alice").await.unwrap(),
        usage(3, 3, 4)
    );
}

#[tokio::test]
async fn purging_an_execution_removes_its_model_calls() {
    let t = fresh().await;
    let old = t.execution("alice").await;
    let live = t.execution("alice").await;
    for ex in [&old, &live] {
        record_call(
            &t.store,
            model_call(&ex.id, 1, "ask", "alice", "openai", "gpt-x"),
            Some(call_end(ModelCallStatus::Completed, None, 5, 6)),
        )
        .await;
    }
    t.store
        .set_status(&old.id, ExecutionStatus::Succeeded, None)
        .await
        .unwrap();
    assert_eq!(t.store.purge(i64::MAX, 100).await.unwrap().n_executions, 1);
    assert_eq!(t.store.model_calls(&old.id).await.unwrap(), vec![]);
    assert_eq!(t.store.model_calls(&live.id).await.unwrap().len(), 1);
    assert_eq!(
        t.store.model_usage_by_user().await.unwrap(),
        vec![("alice".to_string(), usage(1, 5, 6))]
    );
}

#[tokio::test]
async fn executions_are_counted_by_status_with_zeros() {
    let t = fresh().await;
    for _ in 0..3 {
        t.execution("alice").await;
    }
    let claimed = t.store.claim_next_queued().await.unwrap().unwrap();
    t.store
        .set_status(&claimed.id, ExecutionStatus::Failed, None)
        .await
        .unwrap();
    t.store.claim_next_queued().await.unwrap().unwrap();
    let counts = t.store.count_executions_by_status().await.unwrap();
    let expected: Vec<_> = ExecutionStatus::ALL
        .into_iter()
        .map(|status| {
            let n = match status {
                ExecutionStatus::Queued | ExecutionStatus::Running | ExecutionStatus::Failed => 1,
                _ => 0,
            };
            (status, n)
        })
        .collect();
    assert_eq!(counts, expected);
}

#[test]
fn model_call_statuses_round_trip() {
    let names: Vec<_> = ModelCallStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .collect();
    assert_eq!(
        names,
        ["running", "completed", "failed", "cancelled", "interrupted"]
    );
    for status in ModelCallStatus::ALL {
        assert_eq!(ModelCallStatus::parse(status.as_str()), Some(status));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::json!(status.as_str())
        );
    }
    assert_eq!(ModelCallStatus::parse("Running"), None);
}

// ---------------------------------------------------------------- events + ack

#[tokio::test]
async fn events_and_the_acked_position_are_stored_together() {
    let t = fresh().await;
    let ex = t.execution("alice").await;
    let acked = |store: Store, id: String| async move {
        store
            .get_execution(&id, None)
            .await
            .unwrap()
            .unwrap()
            .last_acked_seq
    };
    let outcome = t
        .store
        .append_events(
            &ex.id,
            &[
                event(1, ControllerEvent::Queued {}),
                event(2, ControllerEvent::AgentConnected {}),
            ],
            Some(7),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        AppendOutcome {
            n_inserted: 2,
            n_duplicates: 0
        }
    );
    assert_eq!(acked(t.store.clone(), ex.id.clone()).await, 7);

    // The position only moves forward.
    t.store
        .append_events(&ex.id, &[event(3, ControllerEvent::Queued {})], Some(5))
        .await
        .unwrap();
    assert_eq!(acked(t.store.clone(), ex.id.clone()).await, 7);

    // A failing insert rolls back the ack of its batch: neither is stored.
    let conflicting = t
        .store
        .append_events(
            &ex.id,
            &[
                event(4, ControllerEvent::Queued {}),
                event(2, ControllerEvent::Queued {}),
            ],
            Some(20),
        )
        .await;
    assert!(
        matches!(
            conflicting,
            Err(StoreError::ConflictingEvent { seq: 2, .. })
        ),
        "{conflicting:?}"
    );
    assert_eq!(acked(t.store.clone(), ex.id.clone()).await, 7);
    assert_eq!(
        seqs(&t.store.events_after(&ex.id, 0, 100).await.unwrap()),
        vec![1, 2, 3]
    );

    // A position with no event to store is recorded alone.
    let outcome = t.store.append_events(&ex.id, &[], Some(9)).await.unwrap();
    assert_eq!(
        outcome,
        AppendOutcome {
            n_inserted: 0,
            n_duplicates: 0
        }
    );
    assert_eq!(acked(t.store.clone(), ex.id.clone()).await, 9);

    // An unknown execution stores neither.
    let unknown = t.store.append_events("ex_nope", &[], Some(1)).await;
    assert!(
        matches!(unknown, Err(StoreError::ExecutionNotFound { .. })),
        "{unknown:?}"
    );
}
