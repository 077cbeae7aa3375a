//! `kiln image build [--kind minimal|standard|probe]`: build (or reuse, by
//! content hash) the runtime images, with progress on stderr.

use std::path::PathBuf;

use super::exit;
use crate::sandbox::Sandbox;
use crate::sandbox::image::{ImageInputs, ImageKind, ensure_image_with_progress};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build the images that are missing or out of date.
    Build {
        /// Which image; all of minimal and standard when omitted.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// The static agent binary to put in the images.
        #[arg(
            long,
            default_value = "target/x86_64-unknown-linux-gnu/release/kiln-agent"
        )]
        agent: PathBuf,
        /// The static probe binary (for `--kind probe`).
        #[arg(long)]
        probe: Option<PathBuf>,
        /// The `runtime-image/` directory of the source tree.
        #[arg(long, default_value = "runtime-image")]
        runtime_image_dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Minimal,
    Standard,
    Probe,
}

pub async fn image(command: ImageCommand) -> u8 {
    super::init_tracing(true);
    let ImageCommand::Build {
        kind,
        agent,
        probe,
        runtime_image_dir,
    } = command;
    let kinds = match kind {
        Some(Kind::Minimal) => vec![ImageKind::Minimal],
        Some(Kind::Standard) => vec![ImageKind::Standard],
        Some(Kind::Probe) => vec![ImageKind::Probe],
        None => vec![ImageKind::Minimal, ImageKind::Standard],
    };
    let sandbox = match Sandbox::connect().await {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            return exit::UNAVAILABLE;
        }
    };
    let mut inputs = ImageInputs::new(agent, runtime_image_dir);
    if let Some(probe) = probe {
        inputs = inputs.with_probe(probe);
    }
    for kind in kinds {
        let mut progress = |line: &str| eprintln!("{line}");
        match ensure_image_with_progress(sandbox.docker(), kind, &inputs, &mut progress).await {
            Ok(image) => println!("{} {}", image.tag, image.id),
            Err(error) => {
                eprintln!("error: {}", super::error_chain(&error));
                return exit::UNAVAILABLE;
            }
        }
    }
    exit::OK
}
