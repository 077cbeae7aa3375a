//! Socket-directory selection of the reaper, on a temporary run dir. The
//! container half is tested against real Docker in `tests/sandbox.rs`.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;

use super::*;

#[test]
fn picks_orphan_dirs_and_skips_foreign_entries() {
    let run_dir = tempfile::tempdir().unwrap();
    let root = run_dir.path();
    for name in ["live-1", "orphan-1", "orphan-2"] {
        fs::create_dir(root.join(name)).unwrap();
    }
    fs::write(root.join("orphan-file"), "x").unwrap();
    fs::create_dir(root.join("with.dot")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("orphan-link")).unwrap();

    let live = HashSet::from(["live-1".to_string()]);
    let (orphans, skipped) = orphan_socket_dirs(root, &live).unwrap();
    assert_eq!(orphans, vec![root.join("orphan-1"), root.join("orphan-2")]);
    assert_eq!(
        skipped,
        vec![
            root.join("orphan-file"),
            root.join("orphan-link"),
            root.join("with.dot"),
        ]
    );
}

#[test]
fn missing_run_dir_has_nothing_to_reap() {
    let run_dir = tempfile::tempdir().unwrap();
    let (orphans, skipped) =
        orphan_socket_dirs(&run_dir.path().join("absent"), &HashSet::new()).unwrap();
    assert!(orphans.is_empty());
    assert!(skipped.is_empty());
}

#[test]
fn execution_id_names() {
    for good in ["0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41", "a", "exec_1"] {
        assert!(is_execution_id_like(good), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
        assert!(!is_execution_id_like(bad), "{bad}");
    }
}
