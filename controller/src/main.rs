//! The `kiln` binary: `serve`, `run`, `validate`, `image build`, `token create`.
//!
//! `main` reads as the start-up story of `kiln serve`: configuration first
//! (exit 64 naming the key, before Docker or any port), then the store, the
//! admin token, Docker, reconciliation, the queue, and the API; SIGTERM or
//! SIGINT drains it. The other commands live in `controller::cli`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use controller::cli::{self, exit};
use controller::config::Config;
use controller::serve;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run untrusted multi-step recipes in hardened containers"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: HTTP + WebSocket API, queue, launcher.
    Serve {
        /// TOML configuration file (environment overrides: KILN_SECTION__KEY).
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
        /// Refuse to start when the host preflight finds a critical problem
        /// (a Docker, runc, kernel or runsc version with a known escape).
        #[arg(long, env = "KILN_STRICT")]
        strict: bool,
    },
    /// Run a recipe and watch it live, on a server or on an embedded controller.
    Run(cli::run::RunArgs),
    /// Check a recipe and print every diagnostic.
    Validate(cli::validate::ValidateArgs),
    /// Build the runtime images, or prune old ones.
    Image {
        #[command(subcommand)]
        command: cli::image::ImageCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: cli::token::TokenCommand,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(async {
        match args.command {
            Command::Serve { config, strict } => serve_command(config, strict).await,
            Command::Run(run) => cli::run::run(run).await,
            Command::Validate(validate) => cli::validate::validate(&validate),
            Command::Image { command } => cli::image::image(command).await,
            Command::Token { command } => cli::token::token(command).await,
        }
    });
    ExitCode::from(code)
}

/// `kiln serve`: the start-up story.
async fn serve_command(config_path: Option<PathBuf>, strict: bool) -> u8 {
    cli::init_tracing(false);

    // 1. Configuration, validated in full before anything else happens.
    let config = match Config::from_process(config_path.as_deref()) {
        Ok(config) => Arc::new(config),
        Err(error) => {
            eprintln!("error: {error}");
            return exit::CONFIG;
        }
    };

    // 2-6. Store, admin token, Docker + host preflight, reconciliation,
    // queue and reaper.
    let shutdown = CancellationToken::new();
    serve::cancel_on_signals(shutdown.clone());
    let options = serve::StartOptions {
        strict_preflight: strict,
    };
    let controller = match serve::start_with(Arc::clone(&config), shutdown.clone(), options).await {
        Ok(controller) => controller,
        Err(error) => {
            eprintln!("error: {}", cli::error_chain(&error));
            return exit::UNAVAILABLE;
        }
    };
    if let Some(token) = &controller.new_admin_token {
        // Shown once; only its hash is stored.
        println!("admin token (shown once, keep it): {token}");
    }

    // 7. The API.
    let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", config.server.listen);
            shutdown.cancel();
            serve::drain(&controller.tasks).await;
            return exit::UNAVAILABLE;
        }
    };
    tracing::info!(listen = %config.server.listen, "serving");
    match serve::serve(controller, listener).await {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("error: the API server failed: {error}");
            exit::INTERNAL
        }
    }
}
