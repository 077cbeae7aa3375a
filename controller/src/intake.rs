//! Stage: api → **intake** → store (queued).
//!
//! Intake decides whether a submission may run. It bounds every size, resolves
//! a gallery name to its source, runs `recipe::check` on the recipe and on each
//! submitted sub-recipe (with the submitted files and the gallery as the only
//! resolvable sub-recipes), refuses anything with an error diagnostic, and keeps
//! the warnings. It does no HTTP: the API maps [`IntakeError`] to statuses.
//!
//! Agent names are checked against the server's agent profiles, which the
//! caller passes (the gateway's: the built-in ones overridden by the
//! operator's `gateway.profiles_dir`; see [`known_agents_of`]). An unknown
//! one is a warning: it runs with the default profile. When the operator
//! configured no model provider, a submission with agent steps (in the recipe
//! or in any sub-recipe it carries) is refused at once with
//! `no-model-provider`, rather than accepted only to fail later; validation
//! reports the same finding as a warning.
//!
//! It also renders diagnostics rustc-style for `kiln validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::LazyLock;

use crate::gateway::{AgentProfiles, Gateway};

use recipe::diagnostic::{Diagnostic, LineIndex, Severity, Span};
use recipe::model::{Body, Step, StepKind};
use serde::Serialize;

use crate::config::Config;
use crate::store::NewExecution;

/// What a user submits (already parsed from JSON by the API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// Recipe YAML text; exactly one of `recipe` and `gallery` is set.
    pub recipe: Option<String>,
    /// Name of a gallery recipe (`hello-world`), instead of `recipe`.
    pub gallery: Option<String>,
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Extra files by name, e.g. sub-recipes (`lib.yaml` → YAML text).
    pub files: BTreeMap<String, String>,
    /// Execution class; the configured default when None.
    pub class: Option<String>,
}

/// A diagnostic and the file it is about (`recipe` for the submitted recipe).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileDiagnostic {
    pub file: String,
    #[serde(flatten)]
    pub diagnostic: Diagnostic,
}

/// A submission intake accepted: ready for [`crate::store::Store::create_execution`].
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub execution: NewExecution,
    pub warnings: Vec<FileDiagnostic>,
}

/// Why intake refused a submission.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntakeError {
    #[error("{what} is {size} bytes, over the limit of {max} bytes")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("{count} files submitted, over the limit of {max}")]
    TooManyFiles { count: usize, max: u32 },
    #[error("give exactly one of `recipe` and `gallery`")]
    RecipeSourceAmbiguous,
    #[error("no gallery recipe named {name:?}")]
    UnknownGalleryRecipe { name: String },
    #[error("no execution class named {name:?}")]
    UnknownClass {
        name: String,
        available: Vec<String>,
    },
    #[error("invalid file name {name:?}: {reason}")]
    InvalidFileName { name: String, reason: String },
    #[error("the recipe has {} error(s)", count_errors(.diagnostics))]
    InvalidRecipe { diagnostics: Vec<FileDiagnostic> },
    #[error("cannot read the gallery at {path}: {message}")]
    ReadGallery { path: String, message: String },
}

fn count_errors(diagnostics: &[FileDiagnostic]) -> usize {
    diagnostics
        .iter()
        .filter(|item| item.diagnostic.is_error())
        .count()
}

/// The operator's curated recipes: `<dir>/<name>.yaml`.
#[derive(Debug, Clone)]
pub struct Gallery {
    dir: PathBuf,
}

impl Gallery {
    pub fn new(dir: impl Into<PathBuf>) -> Gallery {
        Gallery { dir: dir.into() }
    }

    /// File names (`hello-world.yaml`) of every gallery recipe; empty when the directory is missing.
    pub fn file_names(&self) -> Result<Vec<String>, IntakeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(self.read_error(&err)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| self.read_error(&err))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".yaml") && is_valid_gallery_name(name.trim_end_matches(".yaml")) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The source of gallery recipe `name` (`hello-world` or `hello-world.yaml`).
    pub fn read(&self, name: &str) -> Result<Option<String>, IntakeError> {
        let stem = name.strip_suffix(".yaml").unwrap_or(name);
        // The name chooses a host path, so it is checked before it touches the disk.
        if !is_valid_gallery_name(stem) {
            return Ok(None);
        }
        match std::fs::read_to_string(self.dir.join(format!("{stem}.yaml"))) {
            Ok(source) => Ok(Some(source)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.read_error(&err)),
        }
    }

    fn read_error(&self, err: &std::io::Error) -> IntakeError {
        IntakeError::ReadGallery {
            path: self.dir.display().to_string(),
            message: err.to_string(),
        }
    }
}

fn is_valid_gallery_name(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A submitted file name: a relative path (the protocol's artifact-name rules)
/// of letters, digits, `.`, `-`, `_` and `/`, at most 128 bytes.
fn check_file_name(name: &str) -> Result<(), IntakeError> {
    let reject = |reason: String| {
        Err(IntakeError::InvalidFileName {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() > 128 {
        return reject("must be at most 128 bytes".to_string());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
    {
        return reject("only letters, digits, `.`, `-`, `_` and `/` are allowed".to_string());
    }
    match protocol::validate_artifact_name(name) {
        Ok(()) => Ok(()),
        Err(err) => reject(err.to_string()),
    }
}

fn check_size(what: &str, size: usize, max: u64) -> Result<(), IntakeError> {
    let size = size as u64;
    if size > max {
        return Err(IntakeError::TooLarge {
            what: what.to_string(),
            size,
            max,
        });
    }
    Ok(())
}

/// Checks sizes only (cheap, before any parsing). Used by submit and validate.
pub fn check_sizes(
    config: &Config,
    recipe: Option<&str>,
    inputs: Option<&serde_json::Map<String, serde_json::Value>>,
    files: &BTreeMap<String, String>,
) -> Result<(), IntakeError> {
    let limits = &config.limits;
    if let Some(recipe) = recipe {
        check_size("recipe", recipe.len(), limits.max_recipe_bytes)?;
    }
    if let Some(inputs) = inputs {
        let inputs_len = serde_json::to_string(inputs)
            .map(|text| text.len())
            .unwrap_or(usize::MAX);
        check_size("inputs", inputs_len, limits.max_inputs_bytes)?;
    }
    if files.len() > limits.max_files as usize {
        return Err(IntakeError::TooManyFiles {
            count: files.len(),
            max: limits.max_files,
        });
    }
    for (name, text) in files {
        check_size(&format!("file {name}"), text.len(), limits.max_file_bytes)?;
    }
    Ok(())
}

/// Checks the recipe and its sub-recipe files. Returns every diagnostic, each
/// tagged with its file; `main_file` names the recipe itself. Agent names
/// outside `known_agents` get an `unknown-agent` warning.
pub fn check_recipe_files_with_agents(
    main_file: &str,
    source: &str,
    files: &BTreeMap<String, String>,
    gallery_files: &[String],
    known_agents: &[String],
) -> Vec<FileDiagnostic> {
    let mut available: BTreeSet<String> = gallery_files.iter().cloned().collect();
    available.extend(files.keys().cloned());
    let options = recipe::CheckOptions {
        known_agents: Some(known_agents.to_vec()),
        available_recipes: Some(available.into_iter().collect()),
    };
    let mut all = Vec::new();
    let tag = |file: &str, diagnostics: Vec<Diagnostic>| {
        diagnostics
            .into_iter()
            .map(|diagnostic| FileDiagnostic {
                file: file.to_string(),
                diagnostic,
            })
            .collect::<Vec<_>>()
    };
    all.extend(tag(main_file, recipe::check(source, &options).diagnostics));
    for (name, text) in files {
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            all.extend(tag(name, recipe::check(text, &options).diagnostics));
        }
    }
    all
}

/// The agent names the built-in profiles answer to.
static BUILTIN_AGENTS: LazyLock<Vec<String>> =
    LazyLock::new(|| AgentProfiles::builtin().known_agents());

/// The agent names a server knows: its gateway's profiles (the built-in
/// ones overridden by `gateway.profiles_dir`), or the built-in ones when it
/// runs without a gateway.
pub fn known_agents_of(gateway: Option<&Gateway>) -> Vec<String> {
    match gateway {
        Some(gateway) => gateway.profiles().known_agents(),
        None => BUILTIN_AGENTS.clone(),
    }
}

/// Diagnostic code of an agent step on a controller with no model provider.
pub const NO_MODEL_PROVIDER: &str = "no-model-provider";

/// One `no-model-provider` diagnostic (of `severity`) per recipe file with
/// agent steps, naming them. `main_file`/`source` is the recipe; `files` holds
/// its sub-recipes (only `.yaml`/`.yml` files are recipes).
pub fn no_model_provider_diagnostics(
    main_file: &str,
    source: &str,
    files: &BTreeMap<String, String>,
    severity: Severity,
) -> Vec<FileDiagnostic> {
    let recipe_files = std::iter::once((main_file, source)).chain(
        files
            .iter()
            .filter(|(name, _)| name.ends_with(".yaml") || name.ends_with(".yml"))
            .map(|(name, text)| (name.as_str(), text.as_str())),
    );
    let mut all = Vec::new();
    for (file, text) in recipe_files {
        let agent_steps = agent_steps(text);
        let Some((first_path, first_span)) = agent_steps
            .first()
            .map(|(_, path, span)| (path.clone(), *span))
        else {
            continue;
        };
        let names: Vec<String> = agent_steps
            .iter()
            .map(|(step_id, _, _)| format!("`{step_id}`"))
            .collect();
        let (line, column) = LineIndex::new(text).line_col(text, first_span.start);
        all.push(FileDiagnostic {
            file: file.to_string(),
            diagnostic: Diagnostic {
                code: NO_MODEL_PROVIDER.to_string(),
                severity,
                message: format!(
                    "no model provider is configured on this server, so agent step(s) {} cannot run",
                    names.join(", ")
                ),
                path: first_path,
                line,
                column,
                span: first_span,
            },
        });
    }
    all
}

/// `(step id, YAML path, span)` of every agent step, nested loop bodies
/// included, in source order.
fn agent_steps(source: &str) -> Vec<(String, String, Span)> {
    let checked = recipe::check(source, &recipe::CheckOptions::default());
    let Some(model) = checked.recipe else {
        return Vec::new();
    };
    let mut found = Vec::new();
    match &model.body {
        Body::Flat(steps) => collect_agent_steps(steps, "steps", &mut found),
        Body::Staged(stages) => {
            for (stage_idx, stage) in stages.iter().enumerate() {
                collect_agent_steps(
                    &stage.steps,
                    &format!("stages[{stage_idx}].steps"),
                    &mut found,
                );
            }
        }
    }
    found
}

fn collect_agent_steps(steps: &[Step], prefix: &str, found: &mut Vec<(String, String, Span)>) {
    for (step_idx, step) in steps.iter().enumerate() {
        let path = format!("{prefix}[{step_idx}]");
        if !step.body.is_empty() {
            collect_agent_steps(&step.body, &format!("{path}.steps"), found);
        } else if let StepKind::Agent(_) = &step.kind {
            found.push((step.id.clone(), path, step.span));
        }
    }
}

/// Checks a submission for `owner_token_id`: sizes, class, gallery, recipe
/// (agent names against `known_agents`, see [`known_agents_of`]).
pub fn check_submission_with_agents(
    config: &Config,
    gallery: &Gallery,
    known_agents: &[String],
    submission: Submission,
    owner_token_id: &str,
) -> Result<Accepted, IntakeError> {
    check_sizes(
        config,
        submission.recipe.as_deref(),
        Some(&submission.inputs),
        &submission.files,
    )?;
    for name in submission.files.keys() {
        check_file_name(name)?;
    }
    let class = match config.class(submission.class.as_deref()) {
        Some((name, _)) => name.to_string(),
        None => {
            return Err(IntakeError::UnknownClass {
                name: submission.class.unwrap_or_default(),
                available: config.sandbox.classes.keys().cloned().collect(),
            });
        }
    };
    let (main_file, source, gallery_name) = match (submission.recipe, submission.gallery) {
        (Some(source), None) => ("recipe".to_string(), source, None),
        (None, Some(name)) => {
            let Some(source) = gallery.read(&name)? else {
                return Err(IntakeError::UnknownGalleryRecipe { name });
            };
            let stem = name.strip_suffix(".yaml").unwrap_or(&name).to_string();
            (format!("{stem}.yaml"), source, Some(stem))
        }
        _ => return Err(IntakeError::RecipeSourceAmbiguous),
    };
    let gallery_files = gallery.file_names()?;
    let mut diagnostics = check_recipe_files_with_agents(
        &main_file,
        &source,
        &submission.files,
        &gallery_files,
        known_agents,
    );
    if diagnostics.iter().any(|item| item.diagnostic.is_error()) {
        return Err(IntakeError::InvalidRecipe { diagnostics });
    }
    let files = with_gallery_sub_recipes(gallery, &source, submission.files)?;
    if !config.gateway.has_providers() {
        // The gallery sub-recipes it pulls in count too: they would fail later.
        let missing = no_model_provider_diagnostics(&main_file, &source, &files, Severity::Error);
        if !missing.is_empty() {
            diagnostics.extend(missing);
            return Err(IntakeError::InvalidRecipe { diagnostics });
        }
    }
    Ok(Accepted {
        execution: NewExecution {
            owner_token_id: owner_token_id.to_string(),
            recipe_source: source,
            gallery_name,
            inputs: submission.inputs,
            files,
            class,
        },
        warnings: diagnostics,
    })
}

/// Adds the gallery recipes the recipe (transitively) names and the user did
/// not submit, so the agent can load every sub-recipe from the job's files alone.
fn with_gallery_sub_recipes(
    gallery: &Gallery,
    source: &str,
    mut files: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, IntakeError> {
    let mut pending = referenced_recipes(source);
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let text = match files.get(&name) {
            Some(text) => text.clone(),
            None => match gallery.read(&name)? {
                Some(text) if name.ends_with(".yaml") => {
                    files.insert(name.clone(), text.clone());
                    text
                }
                _ => continue,
            },
        };
        pending.extend(referenced_recipes(&text));
    }
    Ok(files)
}

/// Literal (template-free) `recipe:` paths of every recipe step, nested ones included.
fn referenced_recipes(source: &str) -> Vec<String> {
    let checked = recipe::check(source, &recipe::CheckOptions::default());
    let Some(model) = checked.recipe else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let top: Vec<&Step> = match &model.body {
        Body::Flat(steps) => steps.iter().collect(),
        Body::Staged(stages) => stages.iter().flat_map(|stage| stage.steps.iter()).collect(),
    };
    let mut stack = top;
    while let Some(step) = stack.pop() {
        if let StepKind::Recipe(recipe_step) = &step.kind
            && !recipe_step.recipe.contains("{{")
        {
            names.push(recipe_step.recipe.clone());
        }
        stack.extend(step.body.iter());
    }
    names
}

/// Renders diagnostics rustc-style, with the source line and carets under the span:
///
/// ```text
/// error[unknown-step-field]: unknown field `timout`
///  --> recipe.yaml:4:5
///   |
/// 4 |     timout: 3
///   |     ^^^^^^
///   = at steps[0].timout
/// ```
pub fn render_diagnostics(source: &str, file_name: &str, diags: &[Diagnostic]) -> String {
    let index = LineIndex::new(source);
    let lines: Vec<&str> = source.split('\n').collect();
    let max_line = diags.iter().map(|diag| diag.line).max().unwrap_or(1);
    let gutter = max_line.to_string().len();
    let pad = " ".repeat(gutter);
    let mut out = String::new();
    for diag in diags {
        let _ = writeln!(
            out,
            "{}[{}]: {}",
            diag.severity.as_str(),
            diag.code,
            diag.message
        );
        let _ = writeln!(out, "{pad}--> {file_name}:{}:{}", diag.line, diag.column);
        let line_idx = diag.line.saturating_sub(1) as usize;
        if let Some(line_text) = lines.get(line_idx) {
            let line_text = line_text.trim_end_matches('\r');
            let (start_line, start_col) = index.line_col(source, diag.span.start);
            let (end_line, end_col) = index.line_col(source, diag.span.end);
            let caret_start = diag.column.saturating_sub(1) as usize;
            let line_chars = line_text.chars().count();
            let caret_len = if end_line == start_line && end_col > start_col {
                (end_col - start_col) as usize
            } else if end_line > start_line {
                line_chars.saturating_sub(caret_start).max(1)
            } else {
                1
            };
            let marker = match diag.severity {
                Severity::Error => "^",
                Severity::Warning => "-",
            };
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{:>gutter$} | {line_text}", diag.line);
            let _ = writeln!(
                out,
                "{pad} | {}{}",
                " ".repeat(caret_start),
                marker.repeat(caret_len)
            );
        }
        if !diag.path.is_empty() {
            let _ = writeln!(out, "{pad} = at {}", diag.path);
        }
        out.push('\n');
    }
    let n_errors = diags.iter().filter(|diag| diag.is_error()).count();
    let n_warnings = diags.len() - n_errors;
    let plural = |count: usize, word: &str| {
        if count == 1 {
            format!("1 {word}")
        } else {
            format!("{count} {word}s")
        }
    };
    if n_errors > 0 {
        let _ = writeln!(
            out,
            "error: {file_name} has {} and {}",
            plural(n_errors, "error"),
            plural(n_warnings, "warning")
        );
    } else if n_warnings > 0 {
        let _ = writeln!(
            out,
            "warning: {file_name} has {}",
            plural(n_warnings, "warning")
        );
    }
    out
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
