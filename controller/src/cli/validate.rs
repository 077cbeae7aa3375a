//! `kiln validate recipe.yaml [--json] [--config FILE]`: every diagnostic,
//! rustc-style with source snippets (or as JSON); non-zero exit when there are
//! errors. It judges the recipe as the configured server would: unknown agent
//! names and a missing model provider are warnings here (a server refuses
//! agent steps without a provider at submission).

use std::path::PathBuf;

use super::exit;

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The recipe YAML file.
    pub recipe: PathBuf,
    /// Print the diagnostics as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// The server configuration to judge against (model providers).
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
    let config = match crate::config::Config::from_process(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };
    let options = recipe::CheckOptions {
        known_agents: Some(crate::intake::known_agents()),
        available_recipes: None,
    };
    let mut checked = recipe::check(&source, &options);
    if !config.gateway.has_providers() {
        let file_name = args.recipe.display().to_string();
        checked.diagnostics.extend(
            crate::intake::no_model_provider_diagnostics(
                &file_name,
                &source,
                &std::collections::BTreeMap::new(),
                recipe::diagnostic::Severity::Warning,
            )
            .into_iter()
            .map(|file_diagnostic| file_diagnostic.diagnostic),
        );
    }
    if args.json {
        match serde_json::to_string_pretty(&checked.diagnostics) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: cannot encode diagnostics: {error}");
                return exit::INTERNAL;
            }
        }
    } else if checked.diagnostics.is_empty() {
        println!("{}: ok", args.recipe.display());
    } else {
        let file_name = args.recipe.display().to_string();
        print!(
            "{}",
            crate::intake::render_diagnostics(&source, &file_name, &checked.diagnostics)
        );
    }
    if checked.has_errors() {
        exit::INVALID
    } else {
        exit::OK
    }
}
