//! Unit tests of the budget ledger.

#![allow(clippy::unwrap_used)]

use super::*;

fn budget(requests: Option<u64>, input: Option<u64>, output: Option<u64>) -> Budget {
    Budget {
        max_requests: requests,
        max_input_tokens: input,
        max_output_tokens: output,
    }
}

#[test]
fn unlimited_never_exhausts() {
    let mut ledger = BudgetLedger::default();
    for _ in 0..1000 {
        ledger.begin_call("u", "e", "s").unwrap();
        ledger.record("u", "e", "s", 1_000_000, 1_000_000);
    }
    assert_eq!(
        ledger.execution_usage("e"),
        BudgetUsage {
            requests: 1000,
            input_tokens: 1_000_000_000,
            output_tokens: 1_000_000_000
        }
    );
    assert_eq!(ledger.output_allowance("u", "e"), None);
}

#[test]
fn each_limit_is_named() {
    // (per_user, per_execution, calls of (input, output), expected error)
    let cases = [
        (
            Budget::default(),
            budget(Some(2), None, None),
            vec![(1, 1), (1, 1)],
            (BudgetScope::Execution, BudgetLimit::Requests, 2, 2),
        ),
        (
            Budget::default(),
            budget(None, Some(100), None),
            vec![(60, 1), (40, 1)],
            (BudgetScope::Execution, BudgetLimit::InputTokens, 100, 100),
        ),
        (
            Budget::default(),
            budget(None, None, Some(10)),
            vec![(1, 12)],
            (BudgetScope::Execution, BudgetLimit::OutputTokens, 10, 12),
        ),
        (
            budget(Some(1), None, None),
            budget(Some(1), None, None),
            vec![(1, 1)],
            (BudgetScope::User, BudgetLimit::Requests, 1, 1),
        ),
        (
            budget(None, None, Some(5)),
            Budget::default(),
            vec![(0, 3), (0, 3)],
            (BudgetScope::User, BudgetLimit::OutputTokens, 5, 6),
        ),
    ];
    for (idx, (per_user, per_execution, calls, expected)) in cases.into_iter().enumerate() {
        let mut ledger = BudgetLedger::new(per_user, per_execution);
        for (input, output) in calls {
            ledger.begin_call("u", "e", "s").unwrap();
            ledger.record("u", "e", "s", input, output);
        }
        let err = ledger.begin_call("u", "e", "s").unwrap_err();
        assert_eq!(
            (err.scope, err.limit, err.max, err.used),
            expected,
            "case {idx}"
        );
        // A refused call is not counted.
        assert_eq!(ledger.check("u", "e").unwrap_err(), err);
    }
}

#[test]
fn error_text_is_precise() {
    let err = BudgetExhausted {
        scope: BudgetScope::Execution,
        limit: BudgetLimit::OutputTokens,
        max: 10,
        used: 12,
    };
    assert_eq!(
        err.to_string(),
        "budget_exhausted: execution max_output_tokens is 10, used 12"
    );
    assert_eq!(BudgetExhausted::STATUS, "budget_exhausted");
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        serde_json::json!({"scope": "execution", "limit": "output_tokens", "max": 10, "used": 12})
    );
}

#[test]
fn user_budget_spans_executions_and_steps_are_separate() {
    let mut ledger = BudgetLedger::new(budget(Some(3), None, None), Budget::default());
    ledger.load_user(
        "u",
        BudgetUsage {
            requests: 1,
            input_tokens: 5,
            output_tokens: 5,
        },
    );
    ledger.begin_call("u", "e1", "a").unwrap();
    ledger.record("u", "e1", "a", 10, 20);
    ledger.begin_call("u", "e2", "b").unwrap();
    ledger.record("u", "e2", "b", 1, 2);
    assert_eq!(
        ledger.begin_call("u", "e3", "c").unwrap_err().scope,
        BudgetScope::User
    );
    ledger.begin_call("other", "e3", "c").unwrap();
    assert_eq!(
        ledger.user_usage("u"),
        BudgetUsage {
            requests: 3,
            input_tokens: 16,
            output_tokens: 27
        }
    );
    assert_eq!(
        ledger.step_usage("e1", "a"),
        BudgetUsage {
            requests: 1,
            input_tokens: 10,
            output_tokens: 20
        }
    );
    assert_eq!(ledger.step_usage("e1", "b"), BudgetUsage::default());
    ledger.forget_execution("e1");
    assert_eq!(ledger.execution_usage("e1"), BudgetUsage::default());
    assert_eq!(ledger.user_usage("u").requests, 3);
}

#[test]
fn output_allowance_is_the_smaller_remainder() {
    let mut ledger = BudgetLedger::new(budget(None, None, Some(100)), budget(None, None, Some(50)));
    ledger.load_execution(
        "e",
        BudgetUsage {
            requests: 0,
            input_tokens: 0,
            output_tokens: 20,
        },
    );
    assert_eq!(ledger.output_allowance("u", "e"), Some(30));
    ledger.load_user(
        "u",
        BudgetUsage {
            requests: 0,
            input_tokens: 0,
            output_tokens: 90,
        },
    );
    assert_eq!(ledger.output_allowance("u", "e"), Some(10));
    assert_eq!(ledger.output_allowance("u", "new"), Some(10));
}

#[test]
fn execution_steps_lists_only_that_executions_steps() {
    let mut ledger = BudgetLedger::default();
    for (execution, step, input, output) in [("e", "a", 3, 1), ("e", "b", 5, 2), ("f", "a", 7, 3)] {
        ledger.begin_call("u", execution, step).unwrap();
        ledger.record("u", execution, step, input, output);
    }
    let usage = |requests, input_tokens, output_tokens| BudgetUsage {
        requests,
        input_tokens,
        output_tokens,
    };
    assert_eq!(
        ledger.execution_steps("e"),
        BTreeMap::from([
            ("a".to_string(), usage(1, 3, 1)),
            ("b".to_string(), usage(1, 5, 2))
        ])
    );
    assert!(ledger.execution_steps("g").is_empty());
}
