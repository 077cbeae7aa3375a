//! `check`: load + validate in one call; the entry point the controller's
//! intake and the sandbox agent use. Never panics; returns every diagnostic,
//! sorted by position and deduplicated.

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, Severity, Sink};
use crate::load;
use crate::model::Recipe;
use crate::validate;

/// What the host knows about its environment. `None` skips the related check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Agents the host can run; unknown agents are warnings (agent steps only).
    pub known_agents: Option<Vec<String>>,
    /// Sub-recipe paths that can be resolved (submitted files + gallery); a
    /// literal `recipe:` path outside this list is an error.
    pub available_recipes: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// Some whenever the YAML could be turned into a model, even with errors.
    pub recipe: Option<Recipe>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|diagnostic| diagnostic.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|diagnostic| diagnostic.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|diagnostic| diagnostic.severity == Severity::Warning)
    }
}

pub fn check(source: &str, options: &CheckOptions) -> Checked {
    let mut sink = Sink::new(source);
    let loaded = load::load_into(source, &mut sink);
    if let Some(recipe) = &loaded.recipe {
        validate::validate(recipe, &loaded.source_map, options, &mut sink);
    }
    Checked {
        recipe: loaded.recipe,
        diagnostics: sink.finish(),
    }
}
