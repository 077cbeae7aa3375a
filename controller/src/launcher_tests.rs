//! Unit tests for the launcher's control registry.
#![allow(clippy::unwrap_used)]

use super::{ApprovalError, CancelOutcome, Command, Control, Decision};

fn approve(by: &str) -> Decision {
    Decision {
        approve: true,
        message: None,
        by: by.to_owned(),
    }
}

#[tokio::test]
async fn cancel_reaches_a_running_execution() {
    let control = Control::new();
    let (mut commands, was_cancelled) = control.register("e1");
    assert!(!was_cancelled);
    assert_eq!(control.cancel("e1").await, CancelOutcome::Signalled);
    assert_eq!(
        commands.recv().await.unwrap(),
        Command::Cancel {
            reason: "cancelled by request".to_owned()
        }
    );
}

#[tokio::test]
async fn cancel_before_start_is_remembered_once() {
    let control = Control::new();
    assert_eq!(control.cancel("e1").await, CancelOutcome::NotRunning);
    let (_commands, was_cancelled) = control.register("e1");
    assert!(was_cancelled);
    control.unregister("e1");
    let (_commands, was_cancelled) = control.register("e1");
    assert!(!was_cancelled);
}

#[tokio::test]
async fn approval_is_forwarded_once_and_then_refused() {
    let control = Control::new();
    let (mut commands, _) = control.register("e1");
    assert_eq!(
        control
            .decide_approval("e1", "review", approve("alice"))
            .await,
        Err(ApprovalError::NotPending {
            execution_id: "e1".into(),
            stage: "review".into()
        })
    );
    control.gate_opened("e1", "review");
    assert!(control.is_gate_pending("e1", "review"));
    control
        .decide_approval("e1", "review", approve("alice"))
        .await
        .unwrap();
    assert_eq!(
        commands.recv().await.unwrap(),
        Command::Approval {
            stage: "review".into(),
            decision: approve("alice")
        }
    );
    assert_eq!(
        control
            .decide_approval("e1", "review", approve("bob"))
            .await,
        Err(ApprovalError::AlreadyDecided {
            execution_id: "e1".into(),
            stage: "review".into()
        })
    );
    // The agent asking again does not reopen a decided gate.
    control.gate_opened("e1", "review");
    assert!(!control.is_gate_pending("e1", "review"));
}

#[tokio::test]
async fn gate_closed_by_timeout_refuses_late_decisions() {
    let control = Control::new();
    let (_commands, _) = control.register("e1");
    control.gate_opened("e1", "review");
    control.gate_closed("e1", "review");
    assert_eq!(
        control
            .decide_approval("e1", "review", approve("alice"))
            .await,
        Err(ApprovalError::AlreadyDecided {
            execution_id: "e1".into(),
            stage: "review".into()
        })
    );
}

#[tokio::test]
async fn wake_is_not_lost_when_nobody_waits_yet() {
    let control = Control::new();
    control.wake();
    tokio::time::timeout(std::time::Duration::from_secs(5), control.woken())
        .await
        .unwrap();
}

#[tokio::test]
async fn early_cancels_of_finished_executions_are_forgotten() {
    let control = Control::new();
    assert_eq!(control.cancel("queued").await, CancelOutcome::NotRunning);
    assert_eq!(control.cancel("gone").await, CancelOutcome::NotRunning);
    control.retain_early_cancels(&std::collections::HashSet::from(["queued".to_owned()]));
    assert!(control.register("queued").1);
    assert!(!control.register("gone").1);
}
