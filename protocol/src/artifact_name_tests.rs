//! One-line cases for artifact name validation (catalogue case 43).

use super::*;

#[test]
fn accepted_and_rejected_names() {
    let long = "a".repeat(256);
    let deep = vec!["d"; 17].join("/");
    let cases: &[(&str, Result<(), ArtifactNameError>)] = &[
        ("report.txt", Ok(())),
        ("sub/dir/file.json", Ok(())),
        (".hidden", Ok(())),
        ("a..b", Ok(())),
        ("ünïcode ☃.txt", Ok(())),
        ("", Err(ArtifactNameError::Empty)),
        (&long, Err(ArtifactNameError::TooLong)),
        (&deep, Err(ArtifactNameError::TooDeep)),
        ("/etc/passwd", Err(ArtifactNameError::Absolute)),
        ("../../etc/passwd", Err(ArtifactNameError::BadComponent)),
        ("a/../../x", Err(ArtifactNameError::BadComponent)),
        ("..", Err(ArtifactNameError::BadComponent)),
        (".", Err(ArtifactNameError::BadComponent)),
        ("a/./b", Err(ArtifactNameError::BadComponent)),
        ("a//b", Err(ArtifactNameError::BadComponent)),
        ("a/", Err(ArtifactNameError::BadComponent)),
        ("a\0b", Err(ArtifactNameError::ControlCharacter)),
        ("a\nb", Err(ArtifactNameError::ControlCharacter)),
        ("a\rb", Err(ArtifactNameError::ControlCharacter)),
        ("a\u{7f}b", Err(ArtifactNameError::ControlCharacter)),
        ("C:\\x", Err(ArtifactNameError::Backslash)),
        ("a\\..\\b", Err(ArtifactNameError::Backslash)),
        ("C:x", Err(ArtifactNameError::Colon)),
    ];
    for (name, expected) in cases {
        assert_eq!(validate_artifact_name(name), *expected, "name {name:?}");
    }
    assert_eq!(validate_artifact_name(&"a".repeat(255)), Ok(()));
}
