//! Command lines, one per line.

#![allow(clippy::unwrap_used)]

use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn defaults_are_the_container_paths() {
    let Mode::Agent(parsed) = parse(&[]).unwrap() else {
        panic!("not agent mode")
    };
    assert_eq!(parsed, AgentArgs::default());
    assert_eq!(parsed.socket, PathBuf::from("/run/kiln/agent.sock"));
    assert_eq!(parsed.token_file, PathBuf::from("/run/kiln/token"));
    assert_eq!(parsed.work_dir, PathBuf::from("/work"));
    assert!(!parsed.is_no_drop);
}

#[test]
fn flags_override_defaults() {
    let line = "--socket /tmp/s --token-file /tmp/t --work-dir /tmp/w --execution-id ex --no-drop --kill-grace-ms 10 --heartbeat-ms 20 --heartbeat-timeout-ms 30 --give-up-ms 40";
    let Mode::Agent(parsed) = parse(&args(line)).unwrap() else {
        panic!("not agent mode")
    };
    assert_eq!(parsed.socket, PathBuf::from("/tmp/s"));
    assert_eq!(parsed.execution_id.as_deref(), Some("ex"));
    assert!(parsed.is_no_drop);
    assert_eq!(parsed.kill_grace, Duration::from_millis(10));
    assert_eq!(parsed.heartbeat_interval, Duration::from_millis(20));
    assert_eq!(parsed.heartbeat_timeout, Duration::from_millis(30));
    assert_eq!(parsed.give_up_after, Duration::from_millis(40));
}

#[test]
fn modes_and_errors() {
    assert_eq!(parse(&args("--exec-step")).unwrap(), Mode::ExecStep);
    assert_eq!(
        parse(&args("--collect-artifacts")).unwrap(),
        Mode::CollectArtifacts
    );
    assert_eq!(parse(&args("--version")).unwrap(), Mode::Version);
    assert_eq!(
        parse(&args("--exec-step --no-drop")),
        Err(UsageError::NotAlone("--exec-step"))
    );
    assert_eq!(
        parse(&args("--socket")),
        Err(UsageError::MissingValue("--socket"))
    );
    assert_eq!(
        parse(&args("--bogus")),
        Err(UsageError::Unknown("--bogus".to_string()))
    );
    assert!(matches!(
        parse(&args("--kill-grace-ms 0")),
        Err(UsageError::BadMillis { .. })
    ));
    assert!(matches!(
        parse(&args("--heartbeat-ms x")),
        Err(UsageError::BadMillis { .. })
    ));
}
