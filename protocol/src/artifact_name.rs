//! Lexical validation of artifact names.
//!
//! An artifact name comes from inside the sandbox, so it is hostile. It is
//! checked as text only, never by resolving anything on a filesystem: the
//! agent checks it before sending, the controller checks it again on receipt,
//! and a name that passes can be joined under a storage directory without
//! escaping it.

use crate::limits::{MAX_ARTIFACT_NAME_BYTES, MAX_ARTIFACT_PATH_COMPONENTS};

/// Why an artifact name is refused. `reason()` is stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactNameError {
    #[error("artifact name is empty")]
    Empty,
    #[error("artifact name is longer than {MAX_ARTIFACT_NAME_BYTES} bytes")]
    TooLong,
    #[error("artifact name has more than {MAX_ARTIFACT_PATH_COMPONENTS} components")]
    TooDeep,
    #[error("artifact name is absolute")]
    Absolute,
    #[error("artifact name has an empty, '.' or '..' component")]
    BadComponent,
    #[error("artifact name contains a control character")]
    ControlCharacter,
    #[error("artifact name contains a backslash")]
    Backslash,
    #[error("artifact name contains a colon")]
    Colon,
}

impl ArtifactNameError {
    /// Stable snake_case reason.
    pub fn reason(self) -> &'static str {
        match self {
            ArtifactNameError::Empty => "empty",
            ArtifactNameError::TooLong => "too_long",
            ArtifactNameError::TooDeep => "too_deep",
            ArtifactNameError::Absolute => "absolute",
            ArtifactNameError::BadComponent => "bad_component",
            ArtifactNameError::ControlCharacter => "control_character",
            ArtifactNameError::Backslash => "backslash",
            ArtifactNameError::Colon => "colon",
        }
    }
}

/// Checks that `name` is a safe relative path: `/`-separated components, none
/// empty, `.` or `..`; no NUL or other control character, no backslash, no
/// colon (Windows drive letters and streams); bounded length and depth.
pub fn validate_artifact_name(name: &str) -> Result<(), ArtifactNameError> {
    if name.is_empty() {
        return Err(ArtifactNameError::Empty);
    }
    if name.len() > MAX_ARTIFACT_NAME_BYTES {
        return Err(ArtifactNameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(ArtifactNameError::ControlCharacter);
    }
    if name.contains('\\') {
        return Err(ArtifactNameError::Backslash);
    }
    if name.contains(':') {
        return Err(ArtifactNameError::Colon);
    }
    if name.starts_with('/') {
        return Err(ArtifactNameError::Absolute);
    }
    let mut n_components = 0usize;
    for component in name.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(ArtifactNameError::BadComponent);
        }
        n_components += 1;
    }
    if n_components > MAX_ARTIFACT_PATH_COMPONENTS {
        return Err(ArtifactNameError::TooDeep);
    }
    Ok(())
}

#[cfg(test)]
#[path = "artifact_name_tests.rs"]
mod tests;
