//! `kiln token create --name NAME [--admin]`: a new API token, printed once.

use std::path::PathBuf;

use super::exit;
use crate::config::Config;
use crate::store::Store;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token in the server's store (run on the server host).
    Create {
        #[arg(long)]
        name: String,
        /// May see and act on every execution.
        #[arg(long)]
        admin: bool,
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub async fn token(command: TokenCommand) -> u8 {
    let TokenCommand::Create {
        name,
        admin,
        config,
    } = command;
    let config = match Config::from_process(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };
    let store =
        match Store::open_sqlite(&config.database_path(), config.limits.max_artifact_bytes).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("error: {}", super::error_chain(&error));
                return exit::UNAVAILABLE;
            }
        };
    match store.create_token(&name, admin).await {
        Ok(created) => {
            println!("{}", created.token);
            exit::OK
        }
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            exit::INTERNAL
        }
    }
}
