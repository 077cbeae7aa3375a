//! `kiln validate recipe.yaml [--json]`: every diagnostic, rustc-style with
//! source snippets (or as JSON); non-zero exit when there are errors.

use std::path::PathBuf;

use super::exit;

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The recipe YAML file.
    pub recipe: PathBuf,
    /// Print the diagnostics as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn validate(args: &ValidateArgs) -> u8 {
    let source = match std::fs::read_to_string(&args.recipe) {
        Ok(source) => source,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.recipe.display());
            return exit::CONFIG;
        }
    };
    let checked = recipe::check(&source, &recipe::CheckOptions::default());
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
