//! `kiln validate recipe.yaml [--json] [--config FILE]`: every diagnostic,
//! rustc-style with source snippets (or as JSON); non-zero exit when there are
//! errors. It judges the recipe as the configured server would: agent names
//! against the configured profiles (built-in ones overridden by
//! `gateway.profiles_dir`); unknown agent names and a missing model provider
//! are warnings here (a server refuses agent steps without a provider at
//! submission).

use std::path::PathBuf;

use recipe::diagnostic::{Diagnostic, Severity};

use super::exit;
use crate::config::Config;
use crate::gateway::config::GatewayConfigError;

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The recipe YAML file.
    pub recipe: PathBuf,
    /// Print the diagnostics as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// The server configuration to judge against (model providers, agent profiles).
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn validate(args: &ValidateArgs) -> u8 {
    let source = match std::fs::read_to_string(&args.recipe) {
        Ok(source) => source,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.recipe.display());
            return exit::CONFIG;
        }
    };
    let config = match Config::from_process(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };
    let file_name = args.recipe.display().to_string();
    let diagnostics = match judge(&source, &file_name, &config) {
        Ok(diagnostics) => diagnostics,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&diagnostics) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: cannot encode diagnostics: {error}");
                return exit::INTERNAL;
            }
        }
    } else if diagnostics.is_empty() {
        println!("{}: ok", args.recipe.display());
    } else {
        print!(
            "{}",
            crate::intake::render_diagnostics(&source, &file_name, &diagnostics)
        );
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        exit::INVALID
    } else {
        exit::OK
    }
}

/// Every diagnostic of the recipe `source` (named `file_name`), as the server
/// configured by `config` would judge it: agent names against its profiles
/// (built-in ones overridden by `gateway.profiles_dir`), and a missing model
/// provider as a warning.
pub fn judge(
    source: &str,
    file_name: &str,
    config: &Config,
) -> Result<Vec<Diagnostic>, GatewayConfigError> {
    let profiles = config.gateway.load_profiles()?;
    let options = recipe::CheckOptions {
        known_agents: Some(profiles.known_agents()),
        available_recipes: None,
    };
    let mut diagnostics = recipe::check(source, &options).diagnostics;
    if !config.gateway.has_providers() {
        diagnostics.extend(
            crate::intake::no_model_provider_diagnostics(
                file_name,
                source,
                &std::collections::BTreeMap::new(),
                Severity::Warning,
            )
            .into_iter()
            .map(|file_diagnostic| file_diagnostic.diagnostic),
        );
    }
    Ok(diagnostics)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
