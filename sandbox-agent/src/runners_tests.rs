//! Pure parts of the bash runner: cwd, variable names, environment.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn cwd_stays_under_the_work_dir() {
    let work = Path::new("/work");
    let cases: &[(Option<&str>, Result<&str, ()>)] = &[
        (None, Ok("/work")),
        (Some(""), Ok("/work")),
        (Some("src"), Ok("/work/src")),
        (Some("a/b"), Ok("/work/a/b")),
        (Some("/work"), Ok("/work")),
        (Some("/work/x"), Ok("/work/x")),
        (Some("/workshop"), Err(())),
        (Some("/etc"), Err(())),
        (Some(".."), Err(())),
        (Some("a/../../etc"), Err(())),
        (Some("/work/../etc"), Err(())),
        (Some("a\0b"), Err(())),
    ];
    for (cwd, expected) in cases {
        let got = resolve_cwd(work, *cwd)
            .map(|path| path.display().to_string())
            .map_err(|_| ());
        assert_eq!(got, expected.map(str::to_string), "cwd {cwd:?}");
    }
}

#[test]
fn variable_names_map_to_files_and_env() {
    assert!(is_var_file_name("step1.output"));
    assert!(!is_var_file_name("a/b"));
    assert!(!is_var_file_name(".."));
    assert!(!is_var_file_name(""));
    assert_eq!(
        var_env_name("step1.output").as_deref(),
        Some("KILN_VAR_step1__output")
    );
    assert_eq!(var_env_name("name").as_deref(), Some("KILN_VAR_name"));
    assert_eq!(var_env_name("with-dash"), None);
    assert_eq!(var_env_name("ünï"), None);
}

#[test]
fn step_env_is_clean_and_kiln_vars_win() {
    let recipe_env = BTreeMap::from([
        ("GREETING".to_string(), "hi".to_string()),
        ("KILN_VAR_x".to_string(), "forged".to_string()),
    ]);
    let vars = BTreeMap::from([
        ("x".to_string(), "real".to_string()),
        ("big".to_string(), "b".repeat(MAX_ENV_VAR_VALUE_BYTES + 1)),
    ]);
    let env = step_env(
        Path::new("/work"),
        &recipe_env,
        Path::new("/work/.kiln/vars/1"),
        &vars,
    )
    .unwrap();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "GREETING",
            "HOME",
            "KILN_VARS",
            "KILN_VAR_x",
            "LANG",
            "PATH"
        ]
    );
    assert_eq!(env["KILN_VAR_x"], "real");
    assert_eq!(env["HOME"], "/work");
    let bad = BTreeMap::from([("A=B".to_string(), "x".to_string())]);
    assert!(step_env(Path::new("/work"), &bad, Path::new("/v"), &BTreeMap::new()).is_err());
}
