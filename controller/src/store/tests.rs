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
    let outcome = t.store.append_events(&ex.id, &batch).await.unwrap();
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
        .append_events("ex_nope", &[event(1, ControllerEvent::Queued {})])
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
